"""Benchmark: attention capture vs a plain forward pass on one long MICL prompt.

    python bench/attention_capture.py [--layers 8] [--image 308] [--repeats 2]

One prompt: 8 demos + query, each with a 308x308 image (22x22 = 484 image tokens with 14 px patches): ~4.4k tokens,
on a randomly initialised LLaVA-architecture model (CLIP tower + Llama decoder with --layers layers). Each method
runs in its own subprocess; we report the best of --repeats timed runs after a warm-up, and peak extra memory =
peak RSS of that process minus its RSS after the model and inputs were built.

Methods: plain forward (sdpa) · HF output_attentions=True (eager) · TransformerLens run_with_cache of every
layer's pattern · micl_probe capture_attention (nnsight backend, answer row) · micl_probe transformer_lens backend.
Ratios are against the plain forward of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


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


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(method: str, layers: int, image: int, repeats: int):
    import gc

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

    gc.collect()
    base = rss_mb()
    once()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"method": method, "seconds": min(times), "peak_extra_mb": peak - base, "seq": seq}))


METHODS = ["forward_sdpa", "output_attentions_eager", "tl_run_with_cache", "capture_nnsight",
           "capture_transformer_lens"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--image", type=int, default=308)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.layers, args.image, args.repeats)
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
