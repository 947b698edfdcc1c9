"""Training-free interventions named in a condition: "<condition>+knockout=…", "+uniform=…", "+mgi=…".

    knockout=top-3:induction     the 3 heads of highest induction score knocked out (scores: induction,
                                 previous_token, demo_image), chosen per task on calibration episodes
    knockout=random-3:0          3 random heads (seed 0): the comparison set for a top-k knockout
    knockout=L3H2,L5H0           these heads
    uniform=0,1 | uniform=all    the answer row's attention uniform in these layers (`reweight.uniform`)
    mgi=1.5,2 | mgi=1.5,2,3      Mapping-Guided Inference with k = 1.5, λ = 2, at the layer of least attention
                                 entropy on calibration episodes (or at layer 3) (`reweight.mgi`)

`build(loaded, name, task, calibration)` makes one for one task: heads, layers and means that depend on the task are
chosen on `calibration` episodes (the task's support split, never the scored queries). `describe` says what was
chosen, for the report.
"""

from __future__ import annotations

import re

from ..core import Loaded
from ..measure import HeadScores, capture_attention, head_scores
from ..measure.heads import top_heads_of
from .knockout import AT, knockout, parse_heads, random_heads
from .reweight import least_entropy_layer, mgi, uniform

KINDS = ("knockout", "uniform", "mgi")
SCORES = ("induction", "previous_token", "demo_image")
ABLATIONS = ("zero", "mean")
_NUMBER = r"(\d+(?:\.\d+)?)"
FORMS = ("knockout=top-<k>:<score> | knockout=random-<k>:<seed> | knockout=L<layer>H<head>[,…] | "
         "uniform=<layer>[,…] | uniform=all | mgi=<k>,<λ>[,<layer>]")


def parse(name: str) -> tuple[str, dict] | None:
    """(kind, settings) of a named training-free intervention, None for a name that is not one (dara, mtv …);
    ValueError naming the forms for a malformed one."""
    kind, eq, value = name.partition("=")
    if kind not in KINDS:
        return None
    bad = ValueError(f"intervention {name!r}: write {FORMS}")
    if not eq or not value:
        raise bad
    if kind == "knockout":
        top = re.fullmatch(r"top-([1-9]\d*):(\w+)", value)
        rnd = re.fullmatch(r"random-([1-9]\d*):(\d+)", value)
        if top:
            if top.group(2) not in SCORES:
                raise ValueError(f"intervention {name!r}: rank heads by {', '.join(SCORES)}")
            return kind, {"select": "top", "k": int(top.group(1)), "score": top.group(2)}
        if rnd:
            return kind, {"select": "random", "k": int(rnd.group(1)), "seed": int(rnd.group(2))}
        try:
            return kind, {"select": "heads", "heads": parse_heads(value)}
        except ValueError:
            raise bad from None
    if kind == "uniform":
        if value == "all":
            return kind, {"layers": None}
        if not re.fullmatch(r"\d+(,\d+)*", value):
            raise bad
        return kind, {"layers": [int(x) for x in value.split(",")]}
    m = re.fullmatch(rf"{_NUMBER},{_NUMBER}(?:,(\d+))?", value)
    if not m or float(m.group(1)) <= 0 or float(m.group(2)) <= 0:
        raise bad
    return kind, {"k": float(m.group(1)), "lam": float(m.group(2)),
                  "layer": None if m.group(3) is None else int(m.group(3))}


def needs_calibration(name: str) -> bool:
    """Does building `name` draw on calibration episodes (a per-task choice)?"""
    kind, settings = parse(name) or (None, {})
    return (kind == "knockout" and settings["select"] == "top") or (kind == "mgi" and settings["layer"] is None)


def ranks_by_head_score(name: str) -> bool:
    """Does `name` choose its heads by a `head_scores` score (so precomputed scores can be handed to `build`)?"""
    kind, settings = parse(name) or (None, {})
    return kind == "knockout" and settings["select"] == "top" and settings["score"] != "demo_image"


def build(loaded: Loaded, name: str, task: str, calibration: list, ablation: str = "zero", at: str = "answer",
          scores: HeadScores | None = None, means=None) -> tuple:
    """(intervention, what was chosen: a line for the report) of the named intervention for one task; `calibration`:
    episodes of that task to choose heads, the MGI layer or the mean outputs on (`scores`: their `head_scores`, when
    already computed; `means`: their `mean_outputs`, likewise); `ablation` ("zero" | "mean") and `at` ("answer" |
    "all") for knockout."""
    kind, settings = parse(name)
    if kind == "uniform":
        return uniform(loaded, settings["layers"]), f"layers {settings['layers'] or 'all'}"
    if kind == "mgi":
        layer = settings["layer"]
        said = f"layer {layer} (given)"
        if layer is None:
            layer, _ = least_entropy_layer(loaded, calibration)
            said = f"layer {layer} (least entropy on {len(calibration)} calibration episodes)"
        return mgi(loaded, settings["k"], settings["lam"], layer), f"{said}, k {settings['k']:g}, λ {settings['lam']:g}"
    if ablation not in ABLATIONS or at not in AT:
        raise ValueError(f"knockout ablation {ablation!r} at {at!r}: use {ABLATIONS} at {AT}")
    if settings["select"] == "top":
        heads = top_heads(loaded, calibration, settings["score"], settings["k"], scores)
        chosen = f"top {settings['k']} by {settings['score']} on {len(calibration)} calibration episodes"
    elif settings["select"] == "random":
        heads = random_heads(loaded, settings["k"], settings["seed"])
        chosen = f"{settings['k']} random heads (seed {settings['seed']})"
    else:
        heads, chosen = settings["heads"], "given"
    if ablation == "mean" and means is None:
        means = mean_outputs(loaded, calibration)
    heads_text = ", ".join(f"L{layer}H{head}" for layer, head in heads)
    return knockout(loaded, heads, at, means if ablation == "mean" else None), \
        f"{heads_text} ({chosen}); {ablation} ablation at {at} positions"


def mean_outputs(loaded: Loaded, calibration: list):
    """Every head's mean output at the answer row over the calibration episodes (`mtv.extract`'s means): what a mean
    ablation puts in place of a knocked-out head."""
    from .mtv import extract

    return extract(loaded, iter(calibration), n_prompts=len(calibration)).mean


def top_heads(loaded: Loaded, episodes: list, score: str, k: int, scores: HeadScores | None = None
              ) -> list[tuple[int, int]]:
    """The `k` heads with the highest mean `score` (induction, previous_token or demo_image: the answer row's
    attention on the demo images) on `episodes`; `scores`: their `head_scores`, when already computed."""
    if score == "demo_image":
        share, _ = capture_attention(loaded, episodes, progress=False).demo_image_share()  # [E, L, H, owner]
        return top_heads_of(share[..., :-1].sum(-1).nanmean(0), k)  # the demos' images, not the query's
    return (scores or head_scores(loaded, episodes, progress=False)).top(score, k)


__all__ = ["FORMS", "KINDS", "build", "mean_outputs", "needs_calibration", "parse", "ranks_by_head_score",
           "top_heads"]
