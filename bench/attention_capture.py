"""Benchmark: attention capture vs a plain forward pass on one long MICL prompt.

    python bench/attention_capture.py [--layers 8] [--image 308] [--repeats 2]
    python bench/attention_capture.py --tokens 2000 4000 8000 16000      # long contexts at real widths

One prompt: 8 demos + query, each with a 308x308 image (22x22 = 484 image tokens with 14 px patches): ~4.4k tokens,
on a randomly initialised LLaVA-architecture model (CLIP tower + Llama decoder with --layers layers). Each method
runs in its own subprocess; we report the best of --repeats timed runs after a warm-up, and peak extra memory =
peak RSS of that process minus its RSS after the model and inputs were built.

Methods: plain forward (sdpa) · HF output_attentions=True (eager) · TransformerLens run_with_cache of every
layer's pattern · micl_probe capture_attention (nnsight backend, answer row) · micl_probe transformer_lens backend.
Ratios are against the plain forward of the same run.

--tokens: long contexts at a published checkpoint's widths (Qwen2-VL-7B-Instruct: 3584-d, 28 heads of 128, 4 KV
heads; bench/real_shapes.py's builder, 2 decoder layers, 1 vision layer), an episode of as many 640x480 demos as
reach each length (391 image tokens a demo). Per length: capture / forward, the peak extra memory of both and of
HF output_attentions, and the memory both would need at the checkpoint's full depth (28 layers): output_attentions
keeps every layer's [heads, seq, seq] float32 weights (28 x per layer); the capture keeps [heads, segments] per layer
and recomputes one layer's rows at a time, so its peak does not grow with depth (the 2-layer peak stands for it).
Where output_attentions would need more than this machine's memory (--memory-gb) it is not run, and the table says
how much it would need.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from timing import best_and_peak


def build(layers: int, image: int):
    import numpy as np
    import torch
    from PIL import Image
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from micl_probe import Demo, Episode, Query
    from micl_probe.testing import tiny_tokenizer

    tok = tiny_tokenizer(["<s>", "</s>", "<image>"], bos="<s>", eos="</s>")
    cfg = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=2, image_size=image, patch_size=14, projection_dim=64),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=256, intermediate_size=1024,
                         num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
                         max_position_embeddings=8192, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default")
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg).eval()
    ip = CLIPImageProcessorPil(size={"shortest_edge": image}, crop_size={"height": image, "width": image})
    processor = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    rng = np.random.default_rng(0)
    img = lambda: Image.fromarray(rng.integers(0, 255, (image, image, 3), dtype=np.uint8))  # noqa: E731
    episode = Episode(tuple(Demo((img(),), f"What is {i}?", str(i)) for i in range(8)),
                      Query((img(),), "What is 9?", "9"), task="bench")
    return model, processor, episode


def long_worker(method: str, tokens: int, repeats: int):
    """One method at one prompt length on the Qwen2-VL-7B-width model."""
    import torch
    from real_shapes import _qwen_vl, episode, one_pass

    from micl_probe import Loaded
    from micl_probe.core import adapter_for

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    torch.manual_seed(0)
    model, processor = _qwen_vl("2")
    model.eval()
    loaded = Loaded(model, processor, adapter_for(model), name="qwen2-vl-7b widths")
    demos = max(0, round(tokens / 405) - 1)
    batch = loaded.prepare_batch([episode(demos)])

    kind = {"forward_sdpa": "forward", "output_attentions_eager": "output_attentions"}.get(method, "capture")
    # past 8k tokens a pass takes minutes and warms itself
    seconds, peak = best_and_peak(lambda: one_pass(loaded, batch, kind), repeats, warm_up=tokens < 8000)
    print(json.dumps({"method": method, "seconds": seconds, "peak_extra_mb": peak, "seq": batch.layouts[0].seq_len,
                      "demos": demos}))


def long_contexts(lengths: list[int], repeats: int, memory_gb: float):
    """The --tokens table."""
    heads, full_depth = 28, 28
    print(f"Qwen2-VL-7B widths (28 heads x 128, 4 KV heads), 2 decoder layers; threads "
          f"{os.environ.get('BENCH_THREADS', '2')}; best of {repeats}; full depth = {full_depth} layers", flush=True)
    head = (f"{'tokens':>7}{'demos':>6}{'fwd s':>8}{'capture/fwd':>12}{'capture MB':>11}{'eager MB':>10}"
            f"{'full depth: capture GB':>24}{'eager GB':>10}{'eager/capture':>14}")
    print(head + "\n" + "-" * len(head), flush=True)
    last = None
    for tokens in lengths:
        rows = {}
        for method in ("forward_sdpa", "capture_nnsight", "output_attentions_eager"):
            need_gb = heads * (tokens ** 2) * 4 * 2 / 2 ** 30  # the weights of one layer, twice (scores + softmax)
            if method == "output_attentions_eager" and need_gb * 2 > memory_gb:  # two layers kept
                rows[method] = None
                continue
            out = subprocess.run([sys.executable, __file__, "--long-worker", method, str(tokens), "--repeats",
                                  str(repeats)], capture_output=True, text=True)
            line = [x for x in out.stdout.splitlines() if x.startswith("{")]
            rows[method] = json.loads(line[-1]) if line and not out.returncode else {"error": out.stderr[-300:]}
        fwd, cap, eag = rows["forward_sdpa"], rows["capture_nnsight"], rows["output_attentions_eager"]
        if "error" in fwd or "error" in cap:
            print(f"{tokens:>7} failed: {(fwd.get('error') or cap.get('error')).strip().splitlines()[-1]}")
            continue
        seq = cap["seq"]
        eager_full = heads * seq ** 2 * 4 * full_depth / 2 ** 30  # every layer's float32 weights kept
        cap_full = cap["peak_extra_mb"] / 1024
        eager_mb = f"{eag['peak_extra_mb']:10.0f}" if eag and "error" not in eag else \
            f"{'> ' + str(int(memory_gb)) + ' GB':>10}" if eag is None else f"{'failed':>10}"
        ratio = cap["seconds"] / fwd["seconds"]
        print(f"{seq:>7}{cap['demos']:>6}{fwd['seconds']:8.1f}{ratio:12.2f}{cap['peak_extra_mb']:11.0f}{eager_mb}"
              f"{cap_full:24.2f}{eager_full:10.1f}{eager_full / max(cap_full, 1e-9):14.0f}", flush=True)
        last = (seq, ratio, eager_full / max(cap_full, 1e-9))
    if last:
        print(f"summary: at {last[0]} tokens capture costs {last[1]:.2f}x a forward (target <= 1.05) and, at full "
              f"depth, needs {last[2]:.0f}x less memory than output_attentions (target >= 20)")


def worker(method: str, layers: int, image: int, repeats: int):

    import torch

    from micl_probe import Loaded, capture_attention
    from micl_probe.core import adapter_for

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    model, processor, episode = build(layers, image)
    loaded = Loaded(model, processor, adapter_for(model), name="bench")
    prepared = loaded.prepare(episode)
    seq = prepared.input_ids.shape[1]
    bridge = None
    if method == "tl_run_with_cache":
        from micl_probe.measure.attention import _boot_bridge
        bridge = _boot_bridge(loaded)

    def once():
        with torch.no_grad():
            if method == "forward_sdpa":
                model(**prepared.inputs)
            elif method == "output_attentions_eager":
                model.set_attn_implementation("eager")
                out = model(**prepared.inputs, output_attentions=True)
                assert len(out.attentions) == layers
                model.set_attn_implementation("sdpa")
            elif method == "tl_run_with_cache":
                inputs = dict(prepared.inputs)
                _, cache = bridge.run_with_cache(inputs.pop("input_ids"), **inputs,
                                                 names_filter=lambda n: n.startswith("blocks.")
                                                 and n.endswith("hook_pattern"))
                assert len(cache) == layers
            elif method == "capture_nnsight":
                capture_attention(loaded, [episode], progress=False)
            elif method == "capture_transformer_lens":
                capture_attention(loaded, [episode], backend="transformer_lens", progress=False)

    seconds, peak = best_and_peak(once, repeats)
    print(json.dumps({"method": method, "seconds": seconds, "peak_extra_mb": peak, "seq": seq}))


METHODS = ["forward_sdpa", "output_attentions_eager", "tl_run_with_cache", "capture_nnsight",
           "capture_transformer_lens"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--image", type=int, default=308)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--tokens", type=int, nargs="+", help="long-context table at these prompt lengths")
    ap.add_argument("--memory-gb", type=float, default=22.0, help="--tokens: run output_attentions only below this")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--long-worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.layers, args.image, args.repeats)
    if args.long_worker:
        return long_worker(args.long_worker[0], int(args.long_worker[1]), args.repeats)
    if args.tokens:
        return long_contexts(args.tokens, args.repeats, args.memory_gb)
    rows = []
    for m in args.methods:
        out = subprocess.run([sys.executable, __file__, "--worker", m, "--layers", str(args.layers), "--image",
                              str(args.image), "--repeats", str(args.repeats)], capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("{")]
        if out.returncode or not line:
            print(f"{m}: failed\n{out.stderr[-2000:]}")
            continue
        rows.append(json.loads(line[-1]))
        print(f"  done {m}", flush=True)
    base = next(r for r in rows if r["method"] == "forward_sdpa")
    eager = next((r for r in rows if r["method"] == "output_attentions_eager"), None)
    print(f"\nprompt: {base['seq']} tokens, {args.layers} decoder layers, 8 heads (4 KV heads), "
          f"threads={os.environ.get('BENCH_THREADS', '2')}")
    print(f"{'method':<28}{'time s':>9}{'x forward':>11}{'peak extra MB':>15}{'eager mem / this':>18}")
    for r in rows:
        mem_ratio = eager["peak_extra_mb"] / max(r["peak_extra_mb"], 1e-9) if eager else float("nan")
        print(f"{r['method']:<28}{r['seconds']:>9.2f}{r['seconds'] / base['seconds']:>11.2f}"
              f"{r['peak_extra_mb']:>15.0f}{mem_ratio:>18.1f}")


if __name__ == "__main__":
    main()
