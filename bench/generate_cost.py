"""Benchmark: the harness's generated-answer path (attention + answers) against `generate` alone, in one run.

    python bench/generate_cost.py [--families llava qwen2_vl gemma3] [--new-tokens 8] [--repeats 2]

Per family, a random-weight model at a published checkpoint's real widths (`bench/real_shapes.py`: 2 decoder layers,
1 vision layer), one MICL episode of 640x480 images (8 demos, fewer where the prompt would pass --max-tokens), and
greedy generation of --new-tokens tokens (random weights rarely stop early; every method generates the same tokens,
checked). Three methods, best of --repeats after a warm-up, in the same process:

- generate: `scoring.generate_tokens` alone (no attention);
- one prefill: what the harness runs now (`score_and_capture(..., generate=...)`: generate traced, its prefill
  measured);
- two passes: what it ran before (a forward that measures, then `generate`, whose prefill repeats the forward).

Target (issue 32): one prefill / generate <= 1.10. Time it on an idle machine. The last line is the summary.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from real_shapes import FAMILIES, episode
from timing import best


def measure(family: str, new_tokens: int, max_tokens: int, repeats: int) -> dict:
    from micl_probe import Loaded
    from micl_probe.core import adapter_for
    from micl_probe.evaluation.scoring import generate_tokens, generation_kwargs
    from micl_probe.measure import score_and_capture

    torch.manual_seed(0)
    model, processor = FAMILIES[family][1]()
    model.eval()
    loaded = Loaded(model, processor, adapter_for(model), name=family)
    demos = 8
    while demos and len(loaded.prepare(episode(demos)).layout) > max_tokens:
        demos -= 1
    batch = loaded.prepare_batch([episode(demos)], padding_side="left")
    prompt = batch.inputs["input_ids"].shape[1]

    alone = lambda: generate_tokens(loaded, batch, new_tokens)  # noqa: E731
    fused = lambda: score_and_capture(loaded, batch, generate=generation_kwargs(loaded, new_tokens))  # noqa: E731

    def two_passes():
        score_and_capture(loaded, batch)
        return generate_tokens(loaded, batch, new_tokens)

    assert torch.equal(fused()[1][:, prompt:], alone()), "the one-prefill path generated other tokens"
    times = {name: best(fn, repeats) for name, fn in (("generate", alone), ("one prefill", fused),
                                                      ("two passes", two_passes))}
    return {"demos": demos, "prompt": prompt, "new": int(alone().shape[1])} | times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", default=["llava", "qwen2_vl", "gemma3"], choices=list(FAMILIES))
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=2048, help="fewer demos where the prompt would be longer")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    print(f"640x480 images; decoder 2 layers, vision tower 1; {args.new_tokens} new tokens; "
          f"threads={torch.get_num_threads()}")
    head = f"{'family':16s} {'demos':>5s} {'prompt':>6s} {'new':>4s} {'generate s':>10s} {'one prefill s':>13s} " \
           f"{'two passes s':>12s} {'one/generate':>12s} {'two/generate':>12s}"
    print(head + "\n" + "-" * len(head), flush=True)
    ratios = []
    for family in args.families:
        r = measure(family, args.new_tokens, args.max_tokens, args.repeats)
        one, two = r["one prefill"] / r["generate"], r["two passes"] / r["generate"]
        ratios.append(one)
        print(f"{family:16s} {r['demos']:5d} {r['prompt']:6d} {r['new']:4d} {r['generate']:10.2f} "
              f"{r['one prefill']:13.2f} {r['two passes']:12.2f} {one:12.2f} {two:12.2f}", flush=True)
    print(f"summary: one prefill / generate median {np.median(ratios):.2f}, max {max(ratios):.2f} "
          f"(target <= 1.10) over {len(ratios)} families")


if __name__ == "__main__":
    main()
