"""python -m micl_probe.attn_report: does the model look at its demonstration images?

With no arguments: every shipped organism, a default task set, conditions zero-shot / no-image / 4-shot,
40 queries each, on the CPU. Writes a self-contained report folder:

    reports/attn_report/
      report.html      figures inline, tables (open in a browser)
      report.md        the same in Markdown, figures linked
      results.json     accuracy table + settings
      results.jsonl    one record per episode (append-only: a rerun resumes where it stopped)
      fig_*.png/.pdf   every figure

Examples:
    python -m micl_probe.attn_report --model organism:text-shortcut --tasks outlier shape_count --n 100
    python -m micl_probe.attn_report --model /models/qwen2-vl-2b --device cuda --conditions zero-shot 4-shot 8-shot
    python -m micl_probe.attn_report --model organism:true-micl --tasks outlier --conditions 4-shot retrieved-4-shot \
        4-shot+dara 4-shot+alpha=2 zero-shot+mtv --dara runs/dara_outlier --mtv runs/mtv runs/mtv_heads --alphas 2

Interventions: a condition "<condition>+<name>" runs under the named intervention: "dara" (factors saved by
`DARA.save`, --dara), "mtv" (MTV means and head mask saved by `TaskVector.save`, --mtv), "alpha=<a>" (fixed factor a on
every demo image in the first decoder layer, --alphas). Artifacts are checked against the model they are used with.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .core import load
from .evaluation import RunConfig, accuracy_table, accuracy_vs_attention, head_predictiveness, run
from .organisms import shipped
from .tasks import task_names
from .viz import write_report

DEFAULT_TASKS = ["novel_binding", "outlier", "clock_math", "shape_count"]
DEFAULT_CONDITIONS = ["zero-shot", "no-image", "4-shot"]


def parse(argv=None):
    ap = argparse.ArgumentParser(prog="python -m micl_probe.attn_report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", help="hub ids, local folders or organism:NAME "
                    "(default: every shipped organism)")
    ap.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS, choices=task_names() + task_names(shortcut=True),
                    metavar="TASK", help=f"tasks (default: {' '.join(DEFAULT_TASKS)}); any of micl_probe.tasks")
    ap.add_argument("--conditions", nargs="+", default=DEFAULT_CONDITIONS,
                    help="zero-shot, no-image, shuffled-answers, <k>-shot, retrieved-<k>-shot, each optionally "
                         "+dara / +mtv / +alpha=<a> (default: %(default)s)")
    ap.add_argument("--n", type=int, default=40, help="query episodes per task and condition (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the query episodes (default: %(default)s)")
    ap.add_argument("--out", default="reports/attn_report", help="output folder (default: %(default)s)")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cpu)")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="model dtype")
    ap.add_argument("--batch-size", type=int, default=20, help="episodes per forward pass (default: %(default)s)")
    ap.add_argument("--no-attention", action="store_true", help="accuracy only")
    ap.add_argument("--dara", metavar="PATH", help="DARA factors (DARA.save) for +dara conditions")
    ap.add_argument("--mtv", nargs=2, metavar=("MEANS", "HEADS"), help="MTV means and head mask (TaskVector.save) "
                    "for +mtv conditions")
    ap.add_argument("--alphas", nargs="+", type=float, default=[], help="factors for +alpha=<a> conditions")
    return ap.parse_args(argv)


def interventions_for(loaded, args) -> dict:
    """The named interventions the flags ask for, checked against `loaded`."""
    from .interventions import DARA, TaskVector, alpha_sweep, injection

    found = alpha_sweep(loaded, args.alphas) if args.alphas else {}
    if args.dara:
        found["dara"] = DARA.load(args.dara, loaded).on(loaded.model, kernel="eager")
    if args.mtv:
        means, heads = (TaskVector.load(p, loaded) for p in args.mtv)
        found["mtv"] = injection(loaded, means.mean, heads.values)
    return found


def main(argv=None):
    args = parse(argv)
    models = args.model or [f"organism:{name}" for name in shipped()]
    if not models:
        raise SystemExit("no shipped organism found; pass --model or train one with "
                         "python -m micl_probe.organisms.train --recipe true-micl")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    settings = {"models": models, "tasks": args.tasks, "conditions": args.conditions, "n": args.n,
                "seed": args.seed, "device": args.device or "cpu"}
    config = RunConfig(n=args.n, seed=args.seed, batch_size=args.batch_size, attention=not args.no_attention)
    t0 = time.time()
    records = []
    for name in models:  # each model's episodes are drawn as it was trained (tasks.options_for)
        loaded = load(name, device=args.device, dtype=dtype)
        records += run(loaded, args.tasks, args.conditions, config, results=out / "results.jsonl",
                       interventions=interventions_for(loaded, args))
    stats = {}
    if not args.no_attention:
        for model in models:
            mine = [r for r in records if r["model"] == model]
            stats[model] = (accuracy_vs_attention(mine), head_predictiveness(mine))
    page = write_report(out, records, settings, time.time() - t0, accuracy_table(records), stats)
    print(f"report: {page}")


if __name__ == "__main__":
    main()
