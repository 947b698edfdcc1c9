"""Benchmark: shared demo prefixes against whole prompts, in one run.

    python bench/prefix_cost.py [--family qwen2_vl] [--shots 8] [--queries 32] [--batch-size 8] [--new-tokens 0]

A random-weight model at a published checkpoint's real widths (`bench/real_shapes.py`; Qwen2-VL-7B by default:
3584-d, 28 heads, 4 KV heads, its ViT's 1280-d and 14-px patches; 2 decoder layers, 1 vision layer), and
--queries episodes sharing one set of --shots demos (the `--fixed-demos` protocol), every image 640x480. Scored and
measured as the harness does (`score_and_capture`, --batch-size episodes a batch): teacher-forced, or with
--new-tokens N > 0 generated (greedy, N tokens, the prefill measured):

- whole prompts: every prompt runs whole (as without fixed demos);
- shared prefix: each batch's prefix (the demos) runs once into a cache, the queries' suffixes after it
  (`core.prefix`).

Both give the same verdicts and attention (checked: to 1e-4 here, at real widths in float32); each path is timed on
that checked run (no warm-up: it would cost a batch). Target (issue 32):
>= 4x faster. Time it on an idle machine. The last line is the summary.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from PIL import Image
from real_shapes import FAMILIES
from timing import best


def episodes(shots: int, queries: int, seed: int = 0):
    from micl_probe import Demo, Episode, Query
    rng = np.random.default_rng(seed)
    img = lambda: Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))  # noqa: E731
    demos = tuple(Demo((img(),), "What is it?", str(i % 10)) for i in range(shots))
    return [Episode(demos, Query((img(),), "What is it?", str(q % 10)), task="bench") for q in range(queries)]


def main():
    from micl_probe import Loaded
    from micl_probe.core import adapter_for
    from micl_probe.core.prefix import split_prefix
    from micl_probe.evaluation.scoring import generation_kwargs, verdicts_from_logits
    from micl_probe.measure import score_and_capture

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="qwen2_vl", choices=list(FAMILIES))
    ap.add_argument("--shots", type=int, default=8)
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=0, help="0: teacher-forced scoring; N: generate N tokens")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    torch.manual_seed(0)
    checkpoint, build, _, _ = FAMILIES[args.family]
    model, processor = build()
    model.eval()
    loaded = Loaded(model, processor, adapter_for(model), name=args.family)
    eps = episodes(args.shots, args.queries)
    gen = None
    if args.new_tokens:
        gen = generation_kwargs(loaded, args.new_tokens)
        gen.pop("eos_token_id")  # random weights: every method generates all N tokens
    batches = [loaded.prepare_batch(eps[i:i + args.batch_size], with_answer=gen is None,
                                    padding_side="left" if gen else "right")
               for i in range(0, len(eps), args.batch_size)]

    def whole():
        return [score_and_capture(loaded, b, generate=gen) for b in batches]

    def shared():
        out = []
        for b in batches:
            split, why = split_prefix(loaded, b, with_answer=gen is None)
            assert split is not None, why
            out.append((split.length, *score_and_capture(loaded, b, generate=gen, prefix=split)))
        return out

    # no warm-up (it would cost a batch): each path is timed once, on the run that is also checked
    times = {}
    for name, fn in (("whole", whole), ("shared", shared)):
        start = time.perf_counter()
        times[name] = (fn(), time.perf_counter() - start)
    for b, (am, out), (p, am2, out2) in zip(batches, times["whole"][0], times["shared"][0]):
        if gen:  # the generated tokens
            prompt = b.inputs["input_ids"].shape[1]
            assert torch.equal(out[:, prompt:], out2[:, prompt:])
        else:  # the teacher-forced verdicts' first tokens
            assert torch.equal(verdicts_from_logits(out, b)[1], verdicts_from_logits(out2, b, p)[1])
        assert torch.allclose(am.mass, am2.mass, atol=1e-4, equal_nan=True)
    t_whole, t_shared = times["whole"][1], times["shared"][1]
    if args.repeats > 1:
        t_whole = min(t_whole, best(whole, args.repeats - 1, warm_up=False))
        t_shared = min(t_shared, best(shared, args.repeats - 1, warm_up=False))
    s = times["shared"][0]
    prompt = batches[0].inputs["input_ids"].shape[1]
    scoring = f"generating {args.new_tokens} tokens" if gen else "teacher-forced"
    print(f"{checkpoint} widths (decoder 2 layers, vision 1), {scoring}, {args.shots} shots + query of 640x480, "
          f"{args.queries} queries, {args.batch_size} a batch; prompt {prompt} tokens, prefix {s[0][0]}; "
          f"threads={torch.get_num_threads()}")
    print(f"whole prompts {t_whole:.1f} s, shared prefix {t_shared:.1f} s")
    print(f"summary: shared prefix {t_whole / t_shared:.2f}x faster than whole prompts (target >= 4)")


if __name__ == "__main__":
    main()
