"""MMICT against plain fine-tuning and vanilla in-context tuning on an organism: the same data, the same steps.

    python -m experiments.mmict --out figures      # figures/mmict_*.png|pdf, mmict_results.json, mmict_table.md

An experiment driver (run from the repository root), not part of the library: it only calls micl_probe's API.

Three trainers on one base organism (default `partial`: it uses its demo images less than `true-micl`), each from
the base weights, on one stream of training batches: each of the three true-MICL tasks in turn, 1..4 demos a batch
(`fitting.any_shot_batches`, the support split, seed 0), `--steps` steps with a batch of 16 and learning rate 1e-3,
the parameters of the best validation loss kept (no early stop: every trainer runs every step):

  finetune  plain fine-tuning: the batches' queries without their demos, LoRA rank 8 on every layer, the query's answer
  icl-tune  vanilla in-context tuning (Doveh et al.): the batches as they are, LoRA rank 8 on every layer, every demo
            answer after the first and the query's
  mmict     MMICT's M-Hub (`interventions.mmict`; the model frozen), the query's answer: its outputs as new prompt
            tokens (MMICT's structure; "mmict-tokens") and added onto each demo's text and the query's image tokens
            ("mmict-residual")

Scored by the harness (`evaluation.run`, teacher-forced, attention captured) on the query split, `--n` queries a
task, 4-shot and no-image (the same queries and demo text without the demo images), base model included; paired
McNemar tests on the same queries; where the answer row looks (demo images, demo text, demo hub tokens, query).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from micl_probe import RunConfig, run
from micl_probe.core.provenance import made_for
from micl_probe.evaluation import Accuracy, mcnemar_p, paired_difference
from micl_probe.interventions import FitConfig, train_lora, train_mmict
from micl_probe.viz import plots

from .common import load_model, write_outputs

TASKS = ("novel_binding", "clock_math", "palindrome")
METHODS = ("base", "finetune", "icl-tune", "mmict-tokens", "mmict-residual")
CONDITIONS = ("4-shot", "no-image")


def trained(method: str, organism: str, tasks, fit: FitConfig, out: Path):
    """(loaded, intervention or None, trainable parameters, history) of `method` trained from `organism`."""
    loaded = load_model(organism)
    if method == "base":
        return loaded, None, 0, []
    if method.startswith("mmict"):
        placement = method.removeprefix("mmict-")
        hub, history = train_mmict(loaded, list(tasks), 4, fit, placement=placement)
        hub.save(out / "artifacts" / f"mmict_{placement}_{organism}",
                 **made_for(loaded, tasks=list(tasks), shots=4, training={"command": "mmict", "steps": fit.steps,
                                                                         "lr": fit.lr, "batch": fit.batch}),
                 history=history)
        return loaded, hub.on(loaded), sum(p.numel() for p in hub.parameters()), history
    objective = {"finetune": "plain", "icl-tune": "any-shot"}[method]
    peft_model, history = train_lora(loaded, list(tasks), 4, layers=None, rank=8, fit_config=fit,
                                     objective=objective)
    params = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    loaded.model = peft_model.merge_and_unload()  # the LoRA folded into the weights: a plain model to measure
    return loaded, None, params, history


def mmict_experiment(organism: str = "partial", tasks=TASKS, n: int = 200, steps: int = 300,
                     out: str | Path = "figures", seed: int = 0) -> dict:
    out = Path(out)
    fit = FitConfig(steps=steps, lr=1e-3, batch=16, seed=seed, patience=10**6)
    results = {"organism": organism, "tasks": list(tasks), "n": n, "steps": steps, "batch": fit.batch, "lr": fit.lr,
               "shots": "1..4 in training, 4 in evaluation", "methods": {}}
    verdicts = {}
    for method in METHODS:
        loaded, intervention, params, history = trained(method, organism, tasks, fit, out)
        suffix = "+mmict" if intervention is not None else ""
        records = run(loaded, list(tasks), [c + suffix for c in CONDITIONS], RunConfig(n=n, seed=seed),
                      interventions={"mmict": intervention} if intervention is not None else None)
        res = results["methods"][method] = {"params": params, "history": history, "tasks": {}}
        for task in tasks:
            for cond in CONDITIONS:
                mine = sorted((r for r in records if r["task"] == task and r["condition"] == cond + suffix),
                              key=lambda r: r["index"])
                right = torch.tensor([r["correct"] for r in mine])
                verdicts[method, task, cond] = right
                looks = {p: float(np.mean([r["looks_at"].get(p, 0.0) for r in mine]))
                         for p in plots.PART_LABELS}
                res["tasks"].setdefault(task, {})[cond] = {**Accuracy(int(right.sum()), len(right)).as_dict(),
                                                           "looks_at": looks}
        print(f"{method} (4-shot / no-image): " + ", ".join(
            f"{t} {res['tasks'][t]['4-shot']['acc']:.2f} / {res['tasks'][t]['no-image']['acc']:.2f}" for t in tasks),
            flush=True)
    for task in tasks:  # paired tests on the same queries
        tests = results.setdefault("tests", {}).setdefault(task, {})
        pairs = tuple((m, other, "4-shot") for m in ("mmict-tokens", "mmict-residual")
                      for other in ("base", "finetune", "icl-tune")) + (("icl-tune", "finetune", "4-shot"),) + \
            tuple((m, m, "gap") for m in METHODS)
        for a, b, cond in pairs:
            if cond == "gap":  # 4-shot against no-image within one method: does it use the demo images?
                x, y = verdicts[a, task, "4-shot"], verdicts[a, task, "no-image"]
                name = f"{a}: 4-shot vs no-image"
            else:
                x, y = verdicts[a, task, cond], verdicts[b, task, cond]
                name = f"{a} vs {b}, {cond}"
            diff, ci = paired_difference(x, y)
            tests[name] = {"difference": diff, "ci": ci, "mcnemar_p": mcnemar_p(y, x)}
    write_outputs(out, "mmict", results, {"mmict_accuracy": plots.mmict_figure(results)}, mmict_markdown(results))
    return results


LABELS = {**plots.MMICT_LABELS, "base": "base (no training)"}


def mmict_markdown(results: dict) -> str:
    methods, tasks = results["methods"], results["tasks"]

    def cell(c):
        return str(Accuracy(c["correct"], c["n"]))

    md = [f"Organism `{results['organism']}`; {results['steps']} steps of {results['batch']} episodes (1..4 demos), "
          f"learning rate {results['lr']:g}, the same batches for every trainer; n = {results['n']} queries a cell "
          "(query split, seed 0), accuracy % [95% Wilson].", "",
          "| method | trained parameters | " + " | ".join(f"{t} 4-shot | {t} no-image" for t in tasks) + " |",
          "|---|---|" + "---|---|" * len(tasks)]
    for m, res in methods.items():
        md.append(f"| {LABELS[m]} | {res['params']:,} | " + " | ".join(
            f"{cell(res['tasks'][t]['4-shot'])} | {cell(res['tasks'][t]['no-image'])}" for t in tasks) + " |")
    md += ["", "Paired on the same queries: difference in points [Newcombe 95%], exact McNemar p.", "",
           "| task | comparison | difference | p |", "|---|---|---|---|"]
    for t, tests in results["tests"].items():
        for name, r in tests.items():
            lo, hi = r["ci"]
            md.append(f"| {t} | {name} | {100 * r['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | "
                      f"{r['mcnemar_p']:.2g} |")
    parts = plots.parts_present(c["looks_at"] for res in methods.values() for ts in res["tasks"].values()
                                for c in ts.values() if any(v > 0 for v in c["looks_at"].values()))
    md += ["", "Where the answer row looks at 4 shots, % of its attention (mean over layers, heads, the three tasks "
           "and the queries):", "", "| method | " + " | ".join(plots.PART_LABELS[p] for p in parts) + " |",
           "|---|" + "---|" * len(parts)]
    for m, res in methods.items():
        md.append(f"| {LABELS[m]} | " + " | ".join(
            f"{100 * np.mean([res['tasks'][t]['4-shot']['looks_at'][p] for t in tasks]):.1f}" for p in parts) + " |")
    return "\n".join(md) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="figures")
    ap.add_argument("--organism", default="partial")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    args = ap.parse_args(argv)
    mmict_experiment(args.organism, args.tasks, args.n, args.steps, args.out)


if __name__ == "__main__":
    main()
