"""The 2025–26 MICL analyses on the shipped organisms: copy rate, induction heads and their knockout against random
head sets (Huang et al., ICML 2026), uniform attention and Mapping-Guided Inference (Wang & Li, ACL 2026).

    python -m experiments.papers --out figures     # figures/papers_table.md, papers_results.json, papers_*.png|pdf

An experiment driver (run from the repository root), not part of the library: it only calls micl_probe's API. Per
organism and task, on the "query" split (n per cell, seed 0), paired with 4-shot on the same queries:
  4-shot, no-image (TrueMICL's control), the copy rate at 4 shots (answers that repeat a demo's answer, against
  how often a guess would), MGI (k = 1.5, λ = 2, the paper's synthetic setting; layer of least entropy on the
  calibration episodes), uniform attention of the answer row in every layer and in the first, knockout (zero, at
  the answer row) of the top-3 heads by induction score (chosen on 16 support episodes) against `draws` random sets
  of 3 heads. Each cell: accuracy with its 95% Wilson interval, and the exact McNemar p against 4-shot.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from micl_probe import RunConfig, run
from micl_probe.core.provenance import versions
from micl_probe.evaluation import Accuracy, mcnemar_p
from micl_probe.evaluation.compare import query_id
from micl_probe.evaluation.copying import copy_chance, copy_rate
from micl_probe.interventions.named import build
from micl_probe.measure import head_scores
from micl_probe.tasks import sample_episodes
from micl_probe.viz import plots

from .common import load_model, write_outputs

TASKS = ("novel_binding", "clock_math", "palindrome")
COLUMNS = {"mgi=1.5,2": "MGI (k 1.5, λ 2)", "uniform=all": "uniform, all layers", "uniform=0": "uniform, layer 0",
           "knockout=top-3:induction": "knockout top-3 induction"}


def conditions(draws: int) -> list[str]:
    return (["4-shot", "no-image"] + [f"4-shot+{name}" for name in COLUMNS]
            + [f"4-shot+knockout=random-3:{seed}" for seed in range(draws)])


def papers_experiment(organisms=("true-micl", "partial"), tasks=TASKS, n: int = 200, draws: int = 10,
                      calibration: int = 16, seed: int = 0, results: Path | None = None) -> dict:
    """{"records", "scores": {organism: {task: head scores}}, "chosen": {organism: {name: {task: what}}}}."""
    out = {"records": [], "scores": {}, "chosen": {}}
    names = [c.partition("+")[2] for c in conditions(draws) if "+" in c]
    for organism in organisms:
        loaded = load_model(organism)
        calib = {t: sample_episodes(t, 4, calibration, seed=seed, split="support") for t in tasks}
        interventions, chosen = {}, {}
        for name in names:
            built = {t: build(loaded, name, t, calib[t]) for t in tasks}
            interventions[name] = {t: b[0] for t, b in built.items()}
            chosen[name] = {t: b[1] for t, b in built.items()}
        out["records"] += run(loaded, list(tasks), conditions(draws), RunConfig(n=n, seed=seed, batch_size=25),
                              results=results, interventions=interventions)
        out["scores"][loaded.name] = {t: {**head_scores(loaded, calib[t], progress=False).as_dict(), "shots": 4}
                                      for t in tasks}
        out["chosen"][loaded.name] = chosen
    return out


def _cell(records: list[dict], model: str, task: str, condition: str) -> dict[tuple, bool]:
    return {query_id(r): bool(r["correct"]) for r in records
            if r["model"] == model and r["task"] == task and r["condition"] == condition}


def papers_table(records: list[dict], draws: int) -> tuple[list[dict], str]:
    """(rows, Markdown): per model and task, every column against 4-shot on the same queries."""
    rows, md = [], []
    head = ["4-shot", "no-image", "copies (guess)"] + list(COLUMNS.values()) + [f"{draws} random 3-head sets"]
    md += ["| model | task | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
    for model in dict.fromkeys(r["model"] for r in records):
        for task in dict.fromkeys(r["task"] for r in records if r["model"] == model):
            base = _cell(records, model, task, "4-shot")
            keys = sorted(base)
            row = {"model": model, "task": task, "4-shot": Accuracy(sum(base.values()), len(base)).as_dict()}
            cells = [str(Accuracy(sum(base.values()), len(base)))]
            for name in ["no-image"] + [f"4-shot+{c}" for c in COLUMNS]:
                other = _cell(records, model, task, name)
                x = [other[k] for k in keys]
                p = mcnemar_p([base[k] for k in keys], x)
                row[name] = {**Accuracy(sum(x), len(x)).as_dict(), "p": p}
                cells.append(f"{Accuracy(sum(x), len(x))} (p {p:.1g})")
                if name == "no-image":
                    k_shot = [r for r in records if r["model"] == model and r["task"] == task
                              and r["condition"] == "4-shot"]
                    copies = copy_rate(k_shot)
                    row["copy_rate"], row["copy_chance"] = copies.as_dict(), copy_chance(k_shot)
                    cells.append(f"{copies} ({100 * row['copy_chance']:.0f})")
            rand = []
            for s in range(draws):
                other = _cell(records, model, task, f"4-shot+knockout=random-3:{s}")
                rand.append(sum(other[k] for k in keys) / len(keys))
            top = row["4-shot+knockout=top-3:induction"]["acc"]
            row["random"] = {"acc": rand, "at_or_below_top": sum(a <= top for a in rand)}
            cells.append(f"{100 * np.mean(rand):.1f} [{100 * min(rand):.1f}, {100 * max(rand):.1f}]; "
                         f"{row['random']['at_or_below_top']} of {draws} at or below the top-3")
            md.append(f"| {model} | {task} | " + " | ".join(cells) + " |")
            rows.append(row)
    return rows, "\n".join(md) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="figures")
    ap.add_argument("--organisms", nargs="+", default=["true-micl", "partial"])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--draws", type=int, default=10, help="random head sets for the knockout comparison")
    ap.add_argument("--results", default=None, help="a results.jsonl to resume from (default: none)")
    args = ap.parse_args(argv)
    res = papers_experiment(args.organisms, n=args.n, draws=args.draws,
                            results=Path(args.results) if args.results else None)
    rows, md = papers_table(res["records"], args.draws)
    figures = {f"papers_head_scores_{m.split(':')[-1]}": plots.head_score_panels(s, m)
               for m, s in res["scores"].items()}
    intro = ("Accuracy in % [95% Wilson]; p: exact McNemar against 4-shot on the same queries; copies: the 4-shot "
             "answers that repeat a demo's answer (% of a uniform guess that would). n = "
             f"{args.n} queries a cell.\n\n")
    made = {"settings": {"organisms": args.organisms, "tasks": list(TASKS), "n": args.n, "draws": args.draws,
                         "seed": 0, "calibration": 16, "conditions": conditions(args.draws)},
            "versions": versions(), "weights": {r["model"]: r["weights"] for r in res["records"]}}
    write_outputs(Path(args.out), "papers", {**made, "rows": rows, "chosen": res["chosen"], "scores": res["scores"]},
                  figures, intro + md)
    print(intro + md)


if __name__ == "__main__":
    main()
