"""Conditions: how one base episode becomes the prompt of a condition.

    "zero-shot"            no demos
    "no-image"             k demos without their images (TrueMICL's control; k from the largest k-shot asked, else 4)
    "<k>-shot"             the episode's first k demos
    "retrieved-<k>-shot"   the k demos whose images are most like the query's (base episodes carry >= 2k demos)
    "shuffled-answers"     k demos, answers permuted among them
    "<condition>+<name>"   any of these under the intervention called <name> (see harness)

A shot is `episode.meta["demos_per_shot"]` demos (1, or 2 for VL-ICL's open_mi and matching_mi: one per class, a
same + a diff pair), so "4-shot" of open_mi is 8 demos, as VL-ICL counts.
"""

from __future__ import annotations

import re
from dataclasses import replace

_BASE = re.compile(r"zero-shot|no-image|shuffled-answers|\d+-shot|retrieved-[1-9]\d*-shot")
KNOWN = "zero-shot, no-image, shuffled-answers, <k>-shot or retrieved-<k>-shot, each optionally +<intervention>"


def parse_condition(condition: str) -> tuple[str, str]:
    """(base condition, intervention name or ""): "4-shot+dara" -> ("4-shot", "dara"); ValueError if unknown."""
    base, _, name = condition.partition("+")
    if not _BASE.fullmatch(base) or (condition.endswith("+") and not name):
        raise ValueError(f"unknown condition {condition!r}; use {KNOWN}")
    return base, name


def condition_episode(episode, condition: str, k_default: int = 4):
    """`episode` as condition `condition` (its base part; an intervention is the harness's business) prescribes."""
    condition, _ = parse_condition(condition)
    per = episode.meta.get("demos_per_shot", 1)
    if condition.startswith("retrieved-") and condition.endswith("-shot"):
        return episode.with_retrieved_shots(int(condition.split("-")[1]) * per)
    if condition == "zero-shot":
        return episode.zero_shot()
    if condition == "no-image":
        return episode.with_shots(k_default * per).without_demo_images()
    if condition == "shuffled-answers":
        return episode.with_shots(k_default * per).with_shuffled_answers()
    k = int(condition.split("-")[0])
    out = episode.with_shots(k * per)
    return out if per == 1 else replace(out, meta={**out.meta, "condition": f"{k}-shot"})


def pool_size(conditions: list[str]) -> tuple[int, int]:
    """(k for no-image / shuffled-answers, demos each base episode carries)."""
    bases = [c.partition("+")[0] for c in conditions]
    shots = [int(c.split("-")[0]) for c in bases if c.endswith("-shot") and c[0].isdigit()]
    retrieved = [2 * int(c.split("-")[1]) for c in bases if c.startswith("retrieved-")]
    k_default = max(shots) if shots else 4
    return k_default, max([k_default] + shots + retrieved)
