"""Paired comparisons of records: an intervention against its base condition, and one run against another.

    effects = intervention_effects(records)        # "4-shot+dara" vs "4-shot", per model and task
    rows = compare_runs(load_records(a), load_records(b))   # two result folders, cell by cell

Two records are a pair when they scored the same query: the same task, query index, seed, episode pool and task
content (`query_id`). Each comparison reports both accuracies (95% Wilson), the difference on the paired queries
with Newcombe's paired 95% interval, the exact McNemar p of the paired verdicts, and the answer row's attention on
the images (visual share) and on the demo images, as fractions of the row (NaN where attention was not captured).
"""

from __future__ import annotations

import math

from .statistics import Accuracy, mcnemar_p, paired_difference
from .verdicts import verdicts


def query_id(r: dict) -> tuple:
    """What makes two records score the same query (their prompts may differ: condition, intervention, style)."""
    return (r["task"], r["index"], r.get("seed"), r.get("pool"), r.get("task_content"))


def _mean(values) -> float:
    values = [v for v in values if v is not None and v == v]
    return sum(values) / len(values) if values else math.nan


def paired(a: list[dict], b: list[dict]) -> dict:
    """Compare two cells of records on their common queries: {n, a, b (Accuracy.as_dict on the pairs), difference
    (a − b), ci, p (exact McNemar), visual_a, visual_b, demo_image_a, demo_image_b (mean shares), n_a, n_b (all
    records of each cell)}; n = 0 (and NaN statistics) when no query is in both."""
    by_a, by_b = {query_id(r): r for r in a}, {query_id(r): r for r in b}
    common = [q for q in by_a if q in by_b]
    x = [bool(by_a[q]["correct"]) for q in common]
    y = [bool(by_b[q]["correct"]) for q in common]
    out = {"n": len(common), "n_a": len(a), "n_b": len(b),
           "a": Accuracy(sum(x), len(x)).as_dict(), "b": Accuracy(sum(y), len(y)).as_dict()}
    if common:
        diff, ci = paired_difference(x, y)
        out |= {"difference": diff, "ci": list(ci), "p": mcnemar_p(y, x)}
    else:
        out |= {"difference": math.nan, "ci": [math.nan, math.nan], "p": math.nan}
    for side, cell in (("a", [by_a[q] for q in common]), ("b", [by_b[q] for q in common])):
        out[f"visual_{side}"] = _mean(r.get("visual_share") for r in cell)
        out[f"demo_image_{side}"] = _mean((r.get("looks_at") or {}).get("demo_image") for r in cell)
    return out


def _cells(records: list[dict]) -> dict:
    cells: dict = {}
    for r in records:
        cells.setdefault((r["model"], r["task"], r["condition"]), []).append(r)
    return cells


def intervention_effects(records: list[dict]) -> list[dict]:
    """Every condition run under an intervention ("<base>+<name>") against its base condition on the same
    queries, per model and task: [{model, task, condition, base, intervention, **paired(condition, base)}].
    A base condition that is not in the run gives n = 0."""
    cells = _cells(records)
    rows = []
    for (model, task, condition), mine in cells.items():
        base, _, name = condition.partition("+")
        if not name:
            continue
        rows.append({"model": model, "task": task, "condition": condition, "base": base, "intervention": name,
                     **paired(mine, cells.get((model, task, base), []))})
    return rows


def compare_runs(a: list[dict], b: list[dict]) -> dict:
    """Two runs' records side by side: {"rows": per (model, task, condition) in either run, `paired` of A's cell
    against B's (model names matched; when each run has one model and they differ, those two are compared),
    "verdicts": per (model, task) both runs' verdicts, "models": (A's, B's)}."""
    models_a = list(dict.fromkeys(r["model"] for r in a))
    models_b = list(dict.fromkeys(r["model"] for r in b))
    rename = {}
    if len(models_a) == 1 and len(models_b) == 1 and models_a != models_b:
        rename = {models_b[0]: models_a[0]}  # one model each: compare them
    b = [{**r, "model": rename.get(r["model"], r["model"])} for r in b]
    ca, cb = _cells(a), _cells(b)
    rows = [{"model": m, "task": t, "condition": c, **paired(ca.get((m, t, c), []), cb.get((m, t, c), []))}
            for m, t, c in dict.fromkeys(list(ca) + list(cb))]
    va = {(v["model"], v["task"]): v for v in verdicts(a)}
    vb = {(v["model"], v["task"]): v for v in verdicts(b)}
    both = [{"model": m, "task": t, "a": va.get((m, t), {}).get("verdict"), "b": vb.get((m, t), {}).get("verdict")}
            for m, t in dict.fromkeys(list(va) + list(vb))]
    return {"rows": rows, "verdicts": both, "models": (models_a, models_b)}
