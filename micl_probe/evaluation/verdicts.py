"""Does the model read the demo images? One verdict per model and task, from the harness's paired records.

    rows = verdicts(records)          # needs a "<k>-shot" and the "no-image" condition on the same queries

Each query episode is scored with its k demos (k-shot) and with the same demos' text but no images (no-image,
TrueMICL's control). The verdict compares the two on the same queries:

  "reads the demo images"   k-shot beats no-image: exact McNemar p < 0.05 on the paired verdicts
  "imitates the demo text"  removing the demo images costs less than 10 points: the upper end of the 95% interval
                            of (k-shot − no-image) is below +0.10 (this includes demo images that mislead)
  "inconclusive"            neither: too few queries to tell

k is the largest plain k-shot condition of the run (the harness builds no-image from the same k demos).
"""

from __future__ import annotations

from ..tasks import chance
from .statistics import Accuracy, mcnemar_p, paired_difference

READS, IMITATES, INCONCLUSIVE = "reads the demo images", "imitates the demo text", "inconclusive"
ALPHA, MARGIN = 0.05, 0.10
RULE = (f"A model reads the demo images on a task when its k-shot accuracy beats the no-image control (the same "
        f"queries and demo text without the demo images) with an exact McNemar p < {ALPHA:g}; it imitates the demo "
        f"text when the 95% interval of (k-shot − no-image) stays below +{100 * MARGIN:.0f} points; otherwise the "
        "verdict is inconclusive.")


def verdicts(records: list[dict]) -> list[dict]:
    """[{model, task, k, n, k_shot, no_image, difference, ci, p, chance, verdict}] for every (model, task) that
    has both a k-shot and the no-image condition (accuracies as `Accuracy.as_dict()`, difference and CI as
    fractions)."""
    cells: dict[tuple, dict] = {}
    for r in records:
        cells.setdefault((r["model"], r["task"]), {}).setdefault(r["condition"], {})[r["index"]] = r
    rows = []
    for (model, task), by_condition in cells.items():
        blind = by_condition.get("no-image", {})
        ks = sorted(int(c.split("-")[0]) for c in by_condition if c.endswith("-shot") and c[0].isdigit())
        if not blind or not ks:
            continue
        k = ks[-1]
        sighted = by_condition[f"{k}-shot"]
        pairs = [i for i in sorted(sighted) if i in blind and blind[i].get("shots") == sighted[i].get("shots")]
        if not pairs:
            continue
        a = [sighted[i]["correct"] for i in pairs]
        b = [blind[i]["correct"] for i in pairs]
        diff, ci = paired_difference(a, b)
        p = mcnemar_p(b, a)
        verdict = READS if diff > 0 and p < ALPHA else IMITATES if ci[1] < MARGIN else INCONCLUSIVE
        rows.append({"model": model, "task": task, "k": k, "n": len(pairs),
                     "k_shot": Accuracy(sum(a), len(a)).as_dict(), "no_image": Accuracy(sum(b), len(b)).as_dict(),
                     "difference": diff, "ci": list(ci), "p": p, "chance": chance(task), "verdict": verdict})
    return rows
