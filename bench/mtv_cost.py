"""Benchmark: cost of MTV injection vs a zero-shot forward and vs k-shot ICL, on the organism architecture; and
the head search's step with the prompt's prefix shared, at a long zero-shot prompt with a published model's widths.

    python bench/mtv_cost.py [--model organism:true-micl] [--batch 25] [--repeats 20] [--tokens 4096] [--masks 32]

Part 1 times one batched forward pass (best of --repeats after warm-up) of: zero-shot prompts; zero-shot + MTV
injected into 8 heads at the last token; 4-shot and 8-shot ICL prompts. Ratios are against zero-shot in the same run.
Timing does not depend on the weights: without a shipped organism a freshly initialised one is used.

Part 2: one REINFORCE step (--masks masks scored on one zero-shot prompt of about --tokens tokens: a 448x448 image
and a long task instruction) and one causal-indirect-effect pass (every head alone), on a random Qwen2-VL-2B-width
decoder (1536-d, 12 heads, 2 KV heads, M-RoPE; 2 layers, MLP width = hidden size, 1 vision layer): the whole prompt
once per mask (as before) against the prefix run once and the masks as one-token continuations. The losses of the
two paths are compared in the same run; the last line is the summary. Time it on an idle machine.
"""

from __future__ import annotations

import argparse

import torch
from timing import best

from micl_probe import Loaded, load, sample_episodes
from micl_probe.core import get_adapter
from micl_probe.interventions import inject
from micl_probe.organisms import build, shipped


def long_prompt_model():
    """A random decoder at Qwen2-VL-2B-Instruct's widths (config.json: hidden 1536, 12 heads, 2 KV heads, M-RoPE
    sections [16, 24, 24], theta 1e6), cut to 2 layers; its processor with a 28-px merged patch."""
    from real_shapes import QWEN_SPECIALS, _text, _tok
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from micl_probe.core import image_only
    tok = _tok(QWEN_SPECIALS, None, "<|im_end|>", "<|endoftext|>")
    ids = dict(zip(["image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"],
                   (tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                                           "<|vision_end|>"))))
    text = _text(tok, 1536, 12, 2, rope_parameters=dict(rope_type="default", mrope_section=[16, 24, 24],
                                                        rope_theta=1e6))
    model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(
        vision_config=dict(depth=1, embed_dim=1280, hidden_size=1536, num_heads=16, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2), text_config=text, **ids))
    ip = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                  size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280})
    return Loaded(model.eval(), image_only(Qwen2VLProcessor)(image_processor=ip, tokenizer=tok),
                  get_adapter("qwen2_vl"), name="Qwen2-VL-2B widths, 2 layers")


def head_search_step(tokens: int, n_masks: int):
    """Part 2: a REINFORCE step and a CIE pass, whole prompt per mask vs shared prefix."""
    import time

    import numpy as np
    from PIL import Image

    from micl_probe import Episode, Query
    from micl_probe.interventions import mtv

    loaded = long_prompt_model()
    a, m = loaded.adapter, loaded.model
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (448, 448, 3), dtype=np.uint8))
    words = "look at the picture and name the colour of the largest object in it".split()
    instruction = " ".join(words[i % len(words)] for i in range(tokens))
    ep = Episode(demos=(), query=Query([image], "What is it?", "red"), task="bench")
    b = loaded.prepare_batch([ep.with_style("turns", instruction)])
    while b.layouts[0].seq_len > tokens * 1.05:  # trim the instruction to about --tokens
        instruction = " ".join(instruction.split()[: int(len(instruction.split()) * tokens / b.layouts[0].seq_len)])
        b = loaded.prepare_batch([ep.with_style("turns", instruction)])
    seq = b.layouts[0].seq_len
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(a.n_layers(m), a.n_heads(m), a.head_dim(m), generator=gen)
    masks = torch.rand(n_masks, a.n_layers(m), a.n_heads(m), generator=gen) < 0.3
    target = b.answer_ids[0][0]

    def whole():  # the prompt repeated once per mask, 4 at a time (as many as memory allows at this length)
        out = []
        for i in range(0, n_masks, 4):
            rep = loaded.prepare_batch([ep.with_style("turns", instruction)] * len(masks[i:i + 4]))
            with torch.no_grad():
                out.append(mtv.first_token_ce(loaded, rep, means, masks[i:i + 4]))
        return torch.cat(out)

    def shared():
        logits = mtv.last_token_logits(loaded, b, means, masks, chunk=n_masks)
        return torch.nn.functional.cross_entropy(logits, target.expand(n_masks), reduction="none")

    t0 = time.perf_counter()
    slow = whole()
    t1 = time.perf_counter()
    fast = shared()
    t2 = time.perf_counter()
    tv = mtv.TaskVector(means, "mtv", {})
    cie_fast_t = time.perf_counter()
    mtv.indirect_effects(loaded, tv, [ep.with_style("turns", instruction)])
    cie_fast_t = time.perf_counter() - cie_fast_t
    one = time.perf_counter()  # the old CIE: one whole-prompt forward per head (+1 base); one forward timed
    with torch.no_grad():
        m(**b.inputs)
    one = time.perf_counter() - one
    n_heads = a.n_layers(m) * a.n_heads(m)
    print(f"\n{loaded.name}: zero-shot prompt of {seq} tokens, {n_masks} masks a REINFORCE step")
    print(f"{'path':<44}{'s':>10}")
    print(f"{'REINFORCE step, whole prompt per mask':<44}{t1 - t0:>10.2f}")
    print(f"{'REINFORCE step, shared prefix':<44}{t2 - t1:>10.2f}")
    print(f"{'CIE pass, one forward per head (1 timed x ' + str(n_heads + 1) + ')':<44}{one * (n_heads + 1):>10.2f}")
    print(f"{'CIE pass, shared prefix':<44}{cie_fast_t:>10.2f}")
    print(f"max |loss difference| {float((slow - fast).abs().max()):.2e}")
    print(f"summary: REINFORCE step {(t1 - t0) / (t2 - t1):.1f}x faster with the prefix shared at {seq} tokens "
          f"(target >= 10x); CIE {one * (n_heads + 1) / cie_fast_t:.1f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=4096, help="part 2: zero-shot prompt length (default: 4096)")
    ap.add_argument("--masks", type=int, default=32, help="part 2: masks a REINFORCE step (default: 32)")
    ap.add_argument("--part", choices=["1", "2", "both"], default="both")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.part in ("2", "both"):
        head_search_step(args.tokens, args.masks)
    if args.part == "2":
        return
    if args.model or "true-micl" in shipped():
        loaded = load(args.model or "organism:true-micl")
    else:
        model, processor = build()
        loaded = Loaded(model.eval(), processor, get_adapter("organism"), name="organism (untrained)")
    a, m = loaded.adapter, loaded.model
    eps = sample_episodes("outlier", 8, args.batch, seed=0)
    batches = {k: loaded.prepare_batch([e.with_shots(k) for e in eps]) for k in (0, 4, 8)}
    means = torch.randn(a.n_layers(m), a.n_heads(m), a.head_dim(m))
    mask = torch.zeros(a.n_layers(m), a.n_heads(m), dtype=torch.bool)
    mask.view(-1)[torch.randperm(mask.numel())[:8]] = True

    def forward(b):
        with torch.no_grad():
            m(**b.inputs)

    def mtv():
        with inject(loaded, means, mask, batches[0].layouts), torch.no_grad():
            m(**batches[0].inputs)

    rows = {"zero-shot": best(lambda: forward(batches[0]), args.repeats),
            "zero-shot + MTV (8 heads)": best(mtv, args.repeats),
            "4-shot ICL": best(lambda: forward(batches[4]), args.repeats),
            "8-shot ICL": best(lambda: forward(batches[8]), args.repeats)}
    base = rows["zero-shot"]
    print(f"{loaded.name}: batch {args.batch}, best of {args.repeats}; prompt tokens "
          f"{ {k: b.inputs['input_ids'].shape[1] for k, b in batches.items()} }")
    print(f"{'condition':<28}{'ms / batch':>12}{'x zero-shot':>14}")
    for name, t in rows.items():
        print(f"{name:<28}{1000 * t:>12.1f}{t / base:>14.2f}")


if __name__ == "__main__":
    main()
