"""Benchmark: cost of MTV injection vs a zero-shot forward and vs k-shot ICL, on the organism architecture.

    python bench/mtv_cost.py [--model organism:true-micl] [--batch 25] [--repeats 20]

Times one batched forward pass (best of --repeats after warm-up) of: zero-shot prompts; zero-shot + MTV injected
into 8 heads at the last token; 4-shot and 8-shot ICL prompts. Ratios are against zero-shot in the same run.
Timing does not depend on the weights: without a shipped organism a freshly initialised one is used.
"""

from __future__ import annotations

import argparse

import torch
from timing import best

from micl_probe import Loaded, load, sample_episodes
from micl_probe.core import get_adapter
from micl_probe.interventions import inject
from micl_probe.organisms import build, shipped


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(2)
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
