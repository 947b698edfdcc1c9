"""Does the model read the demo images? One verdict per model and task, from the harness's paired records.

    rows = verdicts(records)          # needs a "<k>-shot" and the "no-image" condition on the same queries

Each query episode is scored with its k demos (k-shot) and with the same demos' text but no images (no-image,
TrueMICL's control). The verdict compares the two on the same queries and, where the images change little, asks
what the answers are instead (the copy rate, `evaluation.copying`: the k-shot answer is one of its demos' answers):

  "reads the demo images"         k-shot beats no-image: exact McNemar p < 0.05 on the paired verdicts
  "worse with the demo images"    no-image beats k-shot: McNemar p < 0.05 (the demo images mislead it)
  otherwise, when removing the demo images changes accuracy by less than 10 points (the upper end of the 95%
  interval of k-shot − no-image below +0.10):
  "imitates the demo text"        the k-shot answers copy the demos' answers (at least half of them do, and more
                                  than a guess would: the lower end of the copy rate's 95% Wilson interval is above
                                  the copy chance) and k-shot accuracy is above chance (the lower end of its
                                  interval): it answers from the demo text, and that text carries the task
  "copies the demo answers"       they copy, accuracy not above chance: it repeats the demos' answers without the
                                  mapping (Huang et al.'s copying regime)
  "does not use the demo images"  no copying: the images change nothing, and the demo text is not what the answers
                                  come from either (more than a guess would)
  "inconclusive"                  neither: too few queries to tell (also when records carry no copy rate)

k is the largest plain k-shot condition of the run (the harness builds no-image from the same k demos). A task without
a known chance level (a benchmark folder) counts as chance 0.
"""

from __future__ import annotations

from ..tasks import chance
from .copying import copy_chance, copy_rate
from .statistics import Accuracy, mcnemar_p, paired_difference

READS, WORSE = "reads the demo images", "worse with the demo images"
IMITATES, COPIES, UNUSED = "imitates the demo text", "copies the demo answers", "does not use the demo images"
INCONCLUSIVE = "inconclusive"
OUTCOMES = (READS, WORSE, IMITATES, COPIES, UNUSED, INCONCLUSIVE)
ALPHA, MARGIN, COPYING = 0.05, 0.10, 0.5
RULE = (f"A model reads the demo images on a task when its k-shot accuracy beats the no-image control (the same "
        f"queries and demo text without the demo images) with an exact McNemar p < {ALPHA:g}, and is worse with them "
        f"when the control beats it so. When the 95% interval of (k-shot − no-image) stays below +{100 * MARGIN:.0f} "
        f"points, the copy rate decides: when at least {100 * COPYING:.0f}% of the k-shot answers repeat a demo's "
        "answer, more than a guess among the task's answers would (the copy chance), it imitates the demo text if "
        "its accuracy is above chance and copies the demo answers if not; without such copying it does not use the "
        "demo images. Otherwise the verdict is inconclusive.")


def decide(diff: float, ci: tuple[float, float], p: float, copy: Accuracy | None, guess_copies: float,
           k_shot: Accuracy, chance_level: float | None) -> str:
    """The verdict of one cell from its paired difference, McNemar p, copy rate (against `guess_copies`, the copy
    chance) and k-shot accuracy (see above)."""
    if p < ALPHA and diff != 0:
        return READS if diff > 0 else WORSE
    if ci[1] >= MARGIN or copy is None:
        return INCONCLUSIVE
    if copy.acc < COPYING or copy.ci[0] <= guess_copies:
        return UNUSED
    return IMITATES if k_shot.ci[0] > (chance_level or 0.0) else COPIES


def verdicts(records: list[dict]) -> list[dict]:
    """[{model, task, k, n, k_shot, no_image, difference, ci, p, chance, copy_rate, copy_chance, no_image_copy_rate,
    verdict}] for
    every (model, task) that has both a k-shot and the no-image condition (accuracies and copy rates as
    `Accuracy.as_dict()`, a copy rate None where the records carry none; difference and CI as fractions)."""
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
        k_shot, copy = Accuracy(sum(a), len(a)), copy_rate([sighted[i] for i in pairs])
        guess_copies = copy_chance([sighted[i] for i in pairs])
        verdict = decide(diff, ci, p, copy, guess_copies, k_shot, chance(task))
        rows.append({"model": model, "task": task, "k": k, "n": len(pairs), "k_shot": k_shot.as_dict(),
                     "no_image": Accuracy(sum(b), len(b)).as_dict(), "difference": diff, "ci": list(ci), "p": p,
                     "chance": chance(task), "copy_rate": _as_dict(copy), "copy_chance": guess_copies,
                     "no_image_copy_rate": _as_dict(copy_rate([blind[i] for i in pairs])), "verdict": verdict})
    return rows


def _as_dict(a: Accuracy | None) -> dict | None:
    return a.as_dict() if a else None
