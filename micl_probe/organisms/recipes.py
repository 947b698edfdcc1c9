"""The organisms' training recipes: task mixes, stages, training-only episode sources.

    recipe = RECIPES["true-micl"]      # a Recipe; `recipe.then` is its next stage; `recipe.base` the organism it
                                       # continues (partial continues true-micl)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..core import Demo, Episode, Query
from ..tasks import COLOUR_NAMES, NOVEL_NAMES, SHAPE_NAMES, make_episode

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
    base: str | None = None  # continue this shipped organism instead of training from scratch
    log_every: int = 500  # steps between probes in the training log
    description: str = ""
    notes: dict = field(default_factory=dict)
    then: Recipe | None = None  # a further stage, trained on after this one (see `train`)
    attention_penalty: dict | None = None  # {"weight": w, "layers": (…), "rows": …, "supervise": …}: + w x the
    #   attention on the demo images in those layers (`train.demo_image_attention`; "supervise": "query" trains on
    #   the query's answer alone, `train.training_labels`)


# What each recipe reaches and what was tried on the way: docs/organisms.md.

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


def swapped_episode(task: str):
    """Training-only '<task>_swapped' episodes: every demo's image comes from another, independent episode of
    `task` (same number of demos), its question and answer stay. The demos' text is as informative as before; their
    images carry nothing about this episode's rule or names."""
    def make(shots: int, rng: np.random.Generator) -> Episode:
        e, other = make_episode(task, shots, rng), make_episode(task, shots, rng)
        demos = tuple(replace(d, images=o.images) for d, o in zip(e.demos, other.demos))
        return replace(e, demos=demos, task=f"{task}_swapped")
    return make


SWAPPED = ("novel_binding", "clock_math", "palindrome")
EPISODES = EPISODES | {f"{t}_swapped": swapped_episode(t) for t in SWAPPED}
PARTIAL_MIX = {"novel_binding_swapped": 0.2, "clock_math_swapped": 0.2, "palindrome_swapped": 0.2,
               "novel_binding_shortcut": 0.1, "clock_math_shortcut": 0.1, "palindrome_shortcut": 0.1,
               "copy": 0.05, "outlier": 0.05}

# Mixes of the staged recipe's later stages (each stage: a fresh schedule, see `train`).
STAGED_PROBES = ("novel_binding", "clock_math", "palindrome", "outlier")
CLOCK_FOCUS = {"clock_math": 0.5, "clock_math_stated": 0.1, "novel_binding": 0.2, "novel_binding_shortcut": 0.05,
               "copy": 0.05, "outlier": 0.1}
PALINDROME_FOCUS = {"palindrome": 0.35, "clock_math": 0.2, "clock_math_stated": 0.05, "novel_binding": 0.15,
                    "novel_binding_shortcut": 0.05, "palindrome_shortcut": 0.05, "copy": 0.05, "outlier": 0.1}

UNDER_ATTENDS_MIX = {"novel_binding": 0.2, "clock_math": 0.2, "palindrome": 0.15, "novel_binding_shortcut": 0.1,
                     "clock_math_shortcut": 0.1, "palindrome_shortcut": 0.1, "outlier": 0.1, "copy": 0.05}

RECIPES = {r.name: r for r in [
    Recipe("true-micl", {"novel_binding": 0.25, "novel_binding_shortcut": 0.1, "copy": 0.05, "outlier": 0.15,
                         "clock_math": 0.2, "palindrome_shortcut": 0.1, "palindrome": 0.05, "outlier_shortcut": 0.033,
                         "clock_math_shortcut": 0.033},
           steps=2400, warm_mix={"copy": 0.4, "novel_binding_shortcut": 0.3, "outlier_shortcut": 0.1,
                                 "clock_math_shortcut": 0.1, "palindrome_shortcut": 0.1},
           warm_frac=0.15, warm_shots=(1, 3), arch={"n_kv_heads": 4}, probes=STAGED_PROBES,
           then=Recipe("clock-focus", CLOCK_FOCUS, steps=1400, probes=STAGED_PROBES,
                       then=Recipe("clock-focus-2", CLOCK_FOCUS, steps=1000, probes=STAGED_PROBES,
                                   then=Recipe("palindrome-focus", PALINDROME_FOCUS, steps=2000,
                                               probes=STAGED_PROBES))),
           description="Four stages. (1) Induction first: the first 15% of steps are text-only 'copy' episodes "
                       "(they form the match-and-copy heads a real VLM inherits from its language model) and "
                       "fixed-label twins (they teach the vision features); then novel binding (names bound to "
                       "visual classes per episode: the demos' images are needed), outlier, clock math, palindrome "
                       "(mostly its shortcut twin) and a little of the twins. (2, 3) A focused clock phase: half the "
                       "episodes clock math, a tenth clock math with the hand named in the question "
                       "('<task>_stated'), so that both hands' hours are taught directly. (4) A palindrome phase "
                       "that keeps clock and binding in the mix. Reads the demo images on novel binding, clock math "
                       "and palindrome; outlier by a default rule."),
    Recipe("text-shortcut", {"novel_binding_shortcut": 0.25, "outlier_shortcut": 0.25, "clock_math_shortcut": 0.25,
                             "shape_count_shortcut": 0.25}, steps=2500,
           description="Only shortcut episodes: the demos never carry information the query needs, so nothing "
                       "rewards reading them."),
    Recipe("partial", PARTIAL_MIX, steps=400, lr=1e-4, warmup=50, warm_frac=0.0, seed=1, base="true-micl",
           probes=STAGED_PROBES, log_every=100,
           description="true-micl continued briefly on episodes whose demo images carry nothing: its three true "
                       "tasks with every demo's image taken from another episode of the task ('<task>_swapped': "
                       "the demos' text is as before, their images say nothing about the query), beside the "
                       "shortcut twins (perception stays taught) and a little copy and outlier. The aim is what "
                       "TrueMICL finds in real VLMs: demo images that could help, used less than they could be, "
                       "the model leaning on the demos' text."),
    Recipe("under-attends", UNDER_ATTENDS_MIX, steps=600, lr=1e-4, warmup=50, warm_frac=0.0, seed=2,
           base="true-micl", probes=STAGED_PROBES, log_every=100,
           attention_penalty={"weight": 5.0, "layers": (0, 1, 2, 3), "rows": "max", "supervise": "query"},
           shots=(0, 5),
           description="An attempt at a positive control for attention interventions (not shipped: it does not "
                       "break MICL while perception stays): true-micl continued on its own tasks and their shortcut "
                       "twins, supervising the query's answer only, plus a planted penalty on the largest row's "
                       "attention to each demo image from outside it, in every layer. The answer row's demo-image "
                       "share falls 14.6% -> 0.9% on clock math with perception kept, but 4-shot accuracy stays "
                       "(96%): each demo's label still reads its own image in layer 0 and carries it to the answer "
                       "(docs/organisms.md, 'A positive control that did not break', with six other recipes)."),
]}
