"""The organisms' training recipes: task mixes, stages, training-only episode sources.

    recipe = RECIPES["binding-clock-palindrome"]      # a Recipe; `recipe.then` is its next stage
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..core import Demo, Episode, Query
from ..tasks import COLOUR_NAMES, NOVEL_NAMES, SHAPE_NAMES, make_episode, task_names

TRUE, SHORTCUT = task_names(), task_names(shortcut=True)
PROBE_TASKS = ("novel_binding", "novel_binding_shortcut", "outlier", "clock_math", "shape_count")


@dataclass(frozen=True)
class Recipe:
    name: str
    mix: dict[str, float]  # task name -> sampling weight
    steps: int = 4000
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.01
    shots: tuple[int, int] = (1, 5)  # demos per training batch, uniform in [lo, hi] (one count a batch: no padding)
    warm_shots: tuple[int, int] = (0, 2)  # demos per batch during the first `warm_frac` of training (curriculum:
    warm_frac: float = 0.15  # few-demo batches teach the vision features first)
    warm_mix: dict[str, float] | None = None  # task mix during that warm phase (default: `mix`)
    seed: int = 0
    probes: tuple[str, ...] = PROBE_TASKS  # tasks probed (4-shot vs no-image) in the training log
    arch: dict = field(default_factory=dict)  # overrides of organisms.build's architecture arguments
    binding_scale: int = 2  # novel_binding's glyph size in training and in the card (tasks.options_for reads it)
    description: str = ""
    notes: dict = field(default_factory=dict)
    then: Recipe | None = None  # a further stage, trained on after this one (see `train`)


# The shipped organisms are trained on the colour/shape tasks (novel_binding, outlier, clock_math, shape_count); the
# digit tasks (operator_induction, number_grid, palindrome) are held out of their training and evaluated as they are
# (first attempt with all 14 tasks: no progress in 1,500 steps). Trained in later, once binding works, palindrome is
# read from the demos under both rules; operator induction and number grid were not (README: Model organisms).

def copy_episode(shots: int, rng: np.random.Generator) -> Episode:
    """Text-only 'copy' episode (training only): each turn's answer repeats its question, a string of 4-8 random
    task words. Every answer token is predictable by matching the previous token in the question and copying the
    next, so this forms induction heads within a few hundred steps, as language-model pretraining gives a real
    VLM's decoder before it ever sees images. Novel binding then needs only to match images instead of tokens."""
    words = NOVEL_NAMES + COLOUR_NAMES + SHAPE_NAMES
    items = [" ".join(rng.choice(words, int(rng.integers(4, 9)))) for _ in range(shots + 1)]
    return Episode(tuple(Demo((), w, w) for w in items[:-1]), Query((), items[-1], items[-1]), task="copy")


# Training-only '<task>_stated' episodes: the question names the episode's rule (its shortcut question for rules[0]),
# so every rule's answer is taught directly. Clock math's blue hand is otherwise taught only through true-MICL
# episodes, whose rule the model must first infer from the demos.
STATED = {"clock_math": {"red": "What hour is the red hand?", "blue": "What hour is the blue hand?"}}


def stated_episode(task: str):
    def make(shots: int, rng: np.random.Generator) -> Episode:
        rule = str(rng.choice(list(STATED[task])))
        e = make_episode(task, shots, rng, rule=rule)
        ask = STATED[task][rule]
        return replace(e, demos=tuple(replace(d, question=ask) for d in e.demos),
                       query=replace(e.query, question=ask), task=f"{task}_stated")
    return make


EPISODES = {"copy": copy_episode} | {f"{t}_stated": stated_episode(t) for t in STATED}  # training-only sources


# Mixes of the staged recipe's later stages (each stage: a fresh schedule, see `train`).
STAGED_PROBES = ("novel_binding", "clock_math", "palindrome", "outlier")
CLOCK_FOCUS = {"clock_math": 0.5, "clock_math_stated": 0.1, "novel_binding": 0.2, "novel_binding_shortcut": 0.05,
               "copy": 0.05, "outlier": 0.1}
PALINDROME_FOCUS = {"palindrome": 0.35, "clock_math": 0.2, "clock_math_stated": 0.05, "novel_binding": 0.15,
                    "novel_binding_shortcut": 0.05, "palindrome_shortcut": 0.05, "copy": 0.05, "outlier": 0.1}

RECIPES = {r.name: r for r in [
    Recipe("novel-binding", {"novel_binding": 0.25, "novel_binding_shortcut": 0.1, "copy": 0.05, "outlier": 0.15,
                             "clock_math": 0.2, "shape_count": 0.15, "outlier_shortcut": 0.033,
                             "clock_math_shortcut": 0.033, "shape_count_shortcut": 0.034}, steps=4500,
           warm_mix={"copy": 0.4, "novel_binding_shortcut": 0.3, "outlier_shortcut": 0.1, "clock_math_shortcut": 0.1,
                     "shape_count_shortcut": 0.1}, warm_frac=0.15, warm_shots=(1, 3), arch={"n_kv_heads": 4},
           description="Induction first: the first 15% of steps are text-only 'copy' episodes, which form the "
                       "match-and-copy (induction) heads that a real VLM inherits from its language model, with the "
                       "fixed-label twins, which teach the vision features. Then novel binding (names bound to "
                       "visual classes per episode: the demos' images are needed), its twin, the true-MICL outlier, "
                       "clock-math and shape-count tasks, a little of their shortcut twins, and some copy episodes; "
                       "4 KV heads. Without the copy episodes, novel binding stayed at chance for 4,500 steps."),
    Recipe("binding-clock-palindrome", {"novel_binding": 0.25, "novel_binding_shortcut": 0.1, "copy": 0.05,
                                        "outlier": 0.15, "clock_math": 0.2, "palindrome_shortcut": 0.1,
                                        "palindrome": 0.05, "outlier_shortcut": 0.033, "clock_math_shortcut": 0.033},
           steps=2400, warm_mix={"copy": 0.4, "novel_binding_shortcut": 0.3, "outlier_shortcut": 0.1,
                                 "clock_math_shortcut": 0.1, "palindrome_shortcut": 0.1},
           warm_frac=0.15, warm_shots=(1, 3), arch={"n_kv_heads": 4}, probes=STAGED_PROBES,
           then=Recipe("clock-focus", CLOCK_FOCUS, steps=1400, probes=STAGED_PROBES,
                       then=Recipe("clock-focus-2", CLOCK_FOCUS, steps=1000, probes=STAGED_PROBES,
                                   then=Recipe("palindrome-focus", PALINDROME_FOCUS, steps=2000,
                                               probes=STAGED_PROBES))),
           description="Four stages. (1) The novel-binding recipe with palindrome (mostly its shortcut twin) in "
                       "place of shape counting: induction from copy episodes, then binding. (2, 3) A focused clock "
                       "phase: half the episodes clock math, a tenth clock math with the hand named in the question "
                       "('<task>_stated'), so that both hands' hours are taught directly; a mixed curriculum "
                       "learned to read the hand from the demos only sometimes. (4) A palindrome phase that keeps "
                       "clock and binding in the mix. Over the 30-minute budget: it shows what the staged "
                       "curriculum reaches, not the issue's bar."),
    Recipe("true-micl", {"novel_binding": 0.35, "novel_binding_shortcut": 0.25, "outlier": 0.1, "clock_math": 0.1,
                         "shape_count": 0.1, "outlier_shortcut": 0.033, "clock_math_shortcut": 0.033,
                         "shape_count_shortcut": 0.034}, steps=4500, warm_mix={"novel_binding": 1.0},
           warm_shots=(2, 5), arch={"n_kv_heads": 4}, binding_scale=4,
           description="Novel-binding episodes (names bound to visual classes per episode: the demos' images are "
                       "needed) paired with their fixed-label twin (class -> 'colour shape', which teaches the "
                       "vision features), plus the true-MICL outlier, clock-math and shape-count tasks and a little "
                       "of their shortcut twins. The first 15% of steps are novel binding only (2-5 demos), so that "
                       "copying a name from the context forms before the fixed labels make the image pathway "
                       "dominant; 4 KV heads (no GQA)."),
    Recipe("text-shortcut", {"novel_binding_shortcut": 0.25, "outlier_shortcut": 0.25, "clock_math_shortcut": 0.25,
                             "shape_count_shortcut": 0.25}, steps=2500,
           description="Only shortcut episodes: the demos never carry information the query needs, so nothing "
                       "rewards reading them."),
    Recipe("partial", {"novel_binding": 0.05, "novel_binding_shortcut": 0.2, "outlier": 0.033, "clock_math": 0.033,
                       "shape_count": 0.034, "outlier_shortcut": 0.217, "clock_math_shortcut": 0.217,
                       "shape_count_shortcut": 0.216},
           description="Mostly shortcut episodes with a little true-MICL data: uses the demo images weakly."),
]}
