"""TrueMICL-style tasks, generated procedurally.

Every image is a 32x32 canvas of 4x4 cells of 8x8 px (one cell = one 8x8 vision patch of the organisms),
each cell blank or holding one glyph: a coloured shape (circle, square, triangle, cross) or a 3x5 digit;
novel_binding's single object is drawn at twice the size across the four central cells.

Each true-MICL task has a *hidden rule fixed per episode*, and every rule gives the same distribution of answers
(hence the modular arithmetic and the choice of hand in clock_math: TrueMICL's raw a*b or hour sums would let the
answer's value betray the rule). So the rule cannot be read off the demo text: it shows only in how each demo's
answer relates to that demo's image. Its *shortcut* counterpart fixes the rule and its question states it ("How many
circles?"), so the query alone determines the answer.

| task               | image                                        | per-episode rule (true MICL)              |
|--------------------|----------------------------------------------|-------------------------------------------|
| operator_induction | digit a, red "?", digit b (a, b in 0..4)     | (a+b) mod 5 or (a-b) mod 5                |
| clock_math         | dial of 12 rim cells, red and blue hand marks| the hour (1..6) of the red or the blue hand|
| outlier            | 6 shapes: one colour outlier, one shape one  | colour of the colour outlier, or colour of |
|                    |                                              | the shape outlier (both colour words)     |
| shape_count        | 3..7 shapes of 3 kinds                        | count of the kind chosen for the episode  |
| number_grid        | 2x2 grid: a, "?" in one cell, rest blank     | a, a+s, a+2s, a+3s (mod 10), s = 1 or 3    |
| palindrome         | 4 coloured digits d1 d2 d3 d2 and a red "?"  | mirror (d1) or shift (d1+1 mod 10)        |
| novel_binding      | one coloured shape, twice the size, centred  | two invented names bound to two classes   |

    task = TASKS["shape_count"]
    episodes = sample_episodes("shape_count", shots=4, n=200, seed=0, split="query")
    stream = rule_stream("clock_math", "red", shots=4, split="support")          # endless, one fixed rule

"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..core.episode import Demo, Episode, Query

CELL, GRID = 8, 4
SIZE = CELL * GRID
COLOURS = {"red": (230, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 240), "yellow": (235, 215, 40),
           "purple": (170, 60, 210), "cyan": (40, 210, 215)}
COLOUR_NAMES = list(COLOURS)
SHAPES = {
    "circle": ["001100", "011110", "111111", "111111", "011110", "001100"],
    "square": ["111111", "111111", "110011", "110011", "111111", "111111"],
    "triangle": ["001100", "001100", "011110", "011110", "111111", "111111"],
    "cross": ["001100", "001100", "111111", "111111", "001100", "001100"],
}
SHAPE_NAMES = list(SHAPES)
DIGITS = {
    "0": ["111", "101", "101", "101", "111"], "1": ["010", "110", "010", "010", "111"],
    "2": ["111", "001", "111", "100", "111"], "3": ["111", "001", "111", "001", "111"],
    "4": ["101", "101", "111", "001", "001"], "5": ["111", "100", "111", "001", "111"],
    "6": ["111", "100", "111", "101", "111"], "7": ["111", "001", "001", "001", "001"],
    "8": ["111", "101", "111", "101", "111"], "9": ["111", "101", "111", "001", "111"],
    "?": ["111", "001", "011", "000", "010"],
}
NOVEL_NAMES = ["dax", "wug", "blick", "toma", "fep", "zup", "kiki", "bouba", "mipo", "teb", "gazz", "lorp",
               "snib", "vork", "yem", "quan"]
BINDING_SCALE = 2  # novel_binding draws its one glyph this many times larger (12x12 px), centred
WHITE = (235, 235, 235)
GREY = (110, 110, 110)


@functools.cache
def _mask(bitmap: tuple[str, ...]) -> np.ndarray:
    return np.array([[ch == "1" for ch in row] for row in bitmap])


class Canvas:
    """A 4x4 grid of 8x8 cells on black; `put` draws a glyph into a cell, colour-jittered.

    `jitter` also shifts the glyph inside its cell. Off by default: a patch then always shows a glyph at the same
    offset, which a tiny vision tower (one 8x8 patch per cell) learns to read far faster."""

    def __init__(self, rng: np.random.Generator, jitter: bool = False):
        self.rng = rng
        self.jitter = jitter
        self.px = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)

    def put(self, cell: int, bitmap: list[str], colour: tuple[int, int, int]):
        mask = _mask(tuple(bitmap))
        h, w = mask.shape
        r0, c0 = divmod(cell, GRID)
        if self.jitter:
            dy, dx = self.rng.integers(0, CELL - h + 1), self.rng.integers(0, CELL - w + 1)
        else:
            dy, dx = (CELL - h) // 2, (CELL - w) // 2
        tone = np.clip(np.array(colour) + self.rng.integers(-15, 16, 3), 0, 255)
        y, x = r0 * CELL + dy, c0 * CELL + dx
        self.px[y:y + h, x:x + w][mask] = tone

    def put_big(self, bitmap: list[str], colour: tuple[int, int, int], scale: int):
        """One glyph scaled up `scale` times, centred on the canvas (every patch then sees part of it)."""
        mask = np.kron(_mask(tuple(bitmap)), np.ones((scale, scale), dtype=bool))
        h, w = mask.shape
        y, x = (SIZE - h) // 2, (SIZE - w) // 2
        tone = np.clip(np.array(colour) + self.rng.integers(-15, 16, 3), 0, 255)
        self.px[y:y + h, x:x + w][mask] = tone

    def image(self) -> Image.Image:
        return Image.fromarray(self.px)


# --- tasks --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """A procedural task: `draw(rng)` -> (image, attrs); `answer(attrs, rule)` -> answer text.

    `rules` are the per-episode hidden rules; shortcut episodes always use `rules[0]` and ask `shortcut_question`,
    which states that rule (the query alone then determines the answer); true-MICL episodes ask `question`, which
    does not. `episode_setup(rng)` draws per-episode state shared by all its items (e.g. novel_binding's classes).
    """

    name: str
    question: str
    rules: tuple[str, ...]
    draw: Callable[[np.random.Generator, dict], tuple[Image.Image, dict]]
    answer: Callable[[dict, str, dict], str]
    episode_setup: Callable[[np.random.Generator], dict] = lambda rng: {}
    shortcut_question: str = ""
    n_answers: int = 0  # how many answers the task can have (its chance level is 1 / n_answers)
    n_answers_shortcut: int = 0  # the shortcut twin's, where it differs
    demos_match_query: bool = False  # the demos answered like the query show the query's class (novel binding)
    evidence: Callable | None = None  # (attrs, rule, setup) -> (cells the answer is read from, distractor cells)


def _draw_operator(rng, setup):
    a, b = (int(x) for x in rng.integers(0, 5, 2))
    c = Canvas(rng)
    row = int(rng.integers(0, GRID))
    c.put(row * GRID + 0, DIGITS[str(a)], WHITE)
    c.put(row * GRID + 1, DIGITS["?"], COLOURS["red"])
    c.put(row * GRID + 2, DIGITS[str(b)], WHITE)
    return c.image(), {"a": a, "b": b, "row": row}


def _answer_operator(at, rule, setup):
    a, b = at["a"], at["b"]
    return str((a + b) % 5 if rule == "plus" else (a - b) % 5)


RIM = [0, 1, 2, 3, 7, 11, 15, 14, 13, 12, 8, 4]  # the 12 rim cells clockwise from the top-left: hours 1..12


def _draw_clock(rng, setup):
    p, q = (int(x) for x in rng.choice(np.arange(1, 7), 2, replace=False))
    c = Canvas(rng)
    for hour, cell in enumerate(RIM, start=1):
        if hour not in (p, q):
            c.put(cell, ["11", "11"], GREY)
    c.put(RIM[p - 1], SHAPES["square"], COLOURS["red"])
    c.put(RIM[q - 1], SHAPES["square"], COLOURS["blue"])
    return c.image(), {"red": p, "blue": q}


def _answer_clock(at, rule, setup):
    return str(at[rule])


def _draw_outlier(rng, setup):
    base_colour, odd_colour = rng.choice(COLOUR_NAMES, 2, replace=False)
    base_shape, odd_shape = rng.choice(SHAPE_NAMES, 2, replace=False)
    cells = rng.choice(GRID * GRID, 6, replace=False)
    c = Canvas(rng)
    for k, cell in enumerate(cells):
        colour = odd_colour if k == 0 else base_colour
        shape = odd_shape if k == 1 else base_shape
        c.put(int(cell), SHAPES[shape], COLOURS[colour])
    return c.image(), {"odd_colour": str(odd_colour), "base_colour": str(base_colour),
                       "odd_cells": [int(cells[0]), int(cells[1])]}


def _answer_outlier(at, rule, setup):
    return at["odd_colour"] if rule == "colour_outlier" else at["base_colour"]


def _setup_count(rng):
    return {"kinds": [str(s) for s in rng.choice(SHAPE_NAMES, 3, replace=False)]}


def _draw_count(rng, setup):
    kinds = setup.get("kinds") or SHAPE_NAMES[:3]
    n = int(rng.integers(3, 8))
    cells = rng.choice(GRID * GRID, n, replace=False)
    which = rng.integers(0, len(kinds), n)
    colour = COLOURS[str(rng.choice(COLOUR_NAMES))]
    c = Canvas(rng)
    for cell, k in zip(cells, which):
        c.put(int(cell), SHAPES[kinds[k]], colour)
    return c.image(), {"counts": [int((which == k).sum()) for k in range(len(kinds))],
                       "cells": [int(x) for x in cells], "which": [int(k) for k in which]}


def _answer_count(at, rule, setup):
    return str(at["counts"][int(rule[-1])])


def _draw_grid(rng, setup):
    a = int(rng.integers(0, 10))
    k = int(rng.integers(1, 4))  # where the "?" is, in reading order of the 2x2 grid
    c = Canvas(rng)
    top = int(rng.integers(0, GRID - 1)) * GRID + int(rng.integers(0, GRID - 1))
    cells = [top, top + 1, top + GRID, top + GRID + 1]
    c.put(cells[0], DIGITS[str(a)], WHITE)
    c.put(cells[k], DIGITS["?"], COLOURS["red"])
    for j in range(1, 4):
        if j != k:
            c.put(cells[j], ["11", "11"], GREY)
    return c.image(), {"a": a, "k": k, "cells": cells}


def _answer_grid(at, rule, setup):
    return str((at["a"] + at["k"] * (1 if rule == "step1" else 3)) % 10)


def _draw_palindrome(rng, setup):
    d1, d2, d3 = (int(x) for x in rng.choice(10, 3, replace=False))
    row = int(rng.integers(0, GRID))
    seq = [d1, d2, d3, d2]
    c = Canvas(rng)
    for j, d in enumerate(seq[:3]):
        c.put(row * GRID + j, DIGITS[str(d)], COLOURS[COLOUR_NAMES[(d + j) % len(COLOUR_NAMES)]])
    nxt = (row + 1) % GRID
    c.put(nxt * GRID + 0, DIGITS[str(seq[3])], COLOURS[COLOUR_NAMES[(d2 + 3) % len(COLOUR_NAMES)]])
    c.put(nxt * GRID + 1, DIGITS["?"], COLOURS["red"])
    return c.image(), {"d1": d1, "row": row}


def _answer_palindrome(at, rule, setup):
    return str(at["d1"] if rule == "mirror" else (at["d1"] + 1) % 10)


def _setup_binding(rng):
    classes = rng.choice(len(COLOUR_NAMES) * len(SHAPE_NAMES), 2, replace=False)
    names = rng.choice(NOVEL_NAMES, 2, replace=False)
    return {"classes": [int(x) for x in classes], "names": [str(x) for x in names]}


def _draw_binding(rng, setup):
    classes = setup.get("classes") or list(range(len(COLOUR_NAMES) * len(SHAPE_NAMES)))
    cls = int(rng.choice(classes))
    colour, shape = COLOUR_NAMES[cls // len(SHAPE_NAMES)], SHAPE_NAMES[cls % len(SHAPE_NAMES)]
    c = Canvas(rng)
    c.put_big(SHAPES[shape], COLOURS[colour], BINDING_SCALE)
    return c.image(), {"cls": cls, "colour": colour, "shape": shape}


def _answer_binding(at, rule, setup):
    if rule == "fixed":  # shortcut: every class has a fixed name, its colour and shape
        return f"{at['colour']} {at['shape']}"
    return setup["names"][setup["classes"].index(at["cls"])]


# --- evidence: which cells of an item's image its answer is read from, under a rule ---------------------------
def _evidence_operator(at, rule, setup):
    return [at["row"] * GRID, at["row"] * GRID + 2], []  # the two digits; the red "?" marks the operator


def _evidence_clock(at, rule, setup):
    other = "blue" if rule == "red" else "red"
    return [RIM[at[rule] - 1]], [RIM[at[other] - 1]]  # the rule's hand; the other hand misleads


def _evidence_outlier(at, rule, setup):
    colour, shape = at["odd_cells"]
    return ([colour], [shape]) if rule == "colour_outlier" else ([shape], [colour])


def _evidence_count(at, rule, setup):
    kind = int(rule[-1])
    return ([c for c, k in zip(at["cells"], at["which"]) if k == kind],
            [c for c, k in zip(at["cells"], at["which"]) if k != kind])


def _evidence_grid(at, rule, setup):
    return [at["cells"][0], at["cells"][at["k"]]], []  # the first number and where the "?" stands


def _evidence_palindrome(at, rule, setup):
    row, nxt = at["row"], (at["row"] + 1) % GRID
    return [row * GRID], [row * GRID + 1, row * GRID + 2, nxt * GRID]  # d1; the other digits


def _evidence_binding(at, rule, setup):
    return [5, 6, 9, 10], []  # the four central cells the one large glyph covers


EVIDENCE_KEY = "micl_probe.evidence"  # an image's evidence regions, in its PIL `info` (see `evidence_boxes`)


def _cell_box(cell: int) -> tuple[int, int, int, int]:
    r, c = divmod(cell, GRID)
    return (c * CELL, r * CELL, (c + 1) * CELL, (r + 1) * CELL)


def evidence_boxes(image: Image.Image) -> dict | None:
    """{"correct": [(x0, y0, x1, y1) px, …], "wrong": […]}: where the image's answer is read from under its episode's
    rule, and the regions that would give another answer (distractors); or {"mask": HxW array} (1 correct, 2
    distractors, 0 the rest) from a folder item's mask file; None for an image without it. A procedural task puts
    it in `image.info` when it draws the image (a folder task when it loads one), so it travels with the image
    through every condition."""
    return image.info.get(EVIDENCE_KEY)


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("operator_induction", "What is the result?", ("plus", "minus"), _draw_operator, _answer_operator,
         shortcut_question="What is the sum mod 5?", n_answers=5, evidence=_evidence_operator),
    Task("clock_math", "What hour is it?", ("red", "blue"), _draw_clock, _answer_clock,
         shortcut_question="What hour is the red hand?", n_answers=6, evidence=_evidence_clock),
    Task("outlier", "Which colour?", ("colour_outlier", "shape_outlier"), _draw_outlier, _answer_outlier,
         shortcut_question="Which colour is the odd one out?", n_answers=len(COLOURS), evidence=_evidence_outlier),
    Task("shape_count", "How many?", ("kind0", "kind1", "kind2"), _draw_count, _answer_count, _setup_count,
         shortcut_question="How many circles?", n_answers=8, evidence=_evidence_count),
    Task("number_grid", "What is the missing number?", ("step1", "step3"), _draw_grid, _answer_grid,
         shortcut_question="What is the next number, counting on by one?", n_answers=10, evidence=_evidence_grid),
    Task("palindrome", "What completes it?", ("mirror", "shift"), _draw_palindrome, _answer_palindrome,
         shortcut_question="Which digit completes the palindrome?", n_answers=10, evidence=_evidence_palindrome),
    Task("novel_binding", "What is it?", ("bound", "fixed"), _draw_binding, _answer_binding, _setup_binding,
         shortcut_question="What colour and shape?", n_answers=2,
         n_answers_shortcut=len(COLOURS) * len(SHAPES), demos_match_query=True, evidence=_evidence_binding),
]}
TRUE_MICL_TASKS = tuple(TASKS)
SHORTCUT_SUFFIX = "_shortcut"
SPLIT_SEEDS = {"support": 0, "query": 1_000_003, "train": 2_000_003, "val": 3_000_017}


def split_rule(name: str) -> tuple[str, str | None]:
    """"clock_math@minute" -> ("clock_math", "minute"): a procedural task under one fixed rule; else (name, None).
    ValueError (one line) for a rule the task does not have."""
    if ":" in name or "@" not in name:
        return name, None
    base, _, rule = name.partition("@")
    task = TASKS.get(base)
    if task is None:
        raise ValueError(f"unknown task {base!r} in {name!r}; tasks: {', '.join(task_names())}")
    if base == "novel_binding" or rule not in task.rules:
        have = "none (its names are bound anew in every episode)" if base == "novel_binding" else \
            ", ".join(task.rules)
        raise ValueError(f"task {name!r}: {base} has no rule {rule!r}; its rules: {have}")
    return base, rule


def chance(name: str) -> float | None:
    """The accuracy of a uniform guess among task `name`'s answers (None for a task micl_probe does not generate,
    e.g. one loaded from a dataset folder)."""
    base = name.partition("@")[0].removesuffix(SHORTCUT_SUFFIX) if ":" not in name else name
    if base not in TASKS:
        return None
    task = TASKS[base]
    n = task.n_answers_shortcut if name.endswith(SHORTCUT_SUFFIX) and task.n_answers_shortcut else task.n_answers
    return 1 / n


def matching_demos(episode: Episode) -> list[int] | None:
    """The demos that show the query's class (tasks whose `demos_match_query`, novel binding and its twin, or an
    episode that says so in its meta, VL-ICL's open_mi: the demos answered with the query's answer), or None for a
    task without such a match."""
    task = TASKS.get(episode.task.removesuffix(SHORTCUT_SUFFIX))
    if not episode.meta.get("demos_match_query") and (task is None or not task.demos_match_query):
        return None
    return [i for i, d in enumerate(episode.demos) if d.answer == episode.query.answer]


def task_names(shortcut: bool = False) -> list[str]:
    """The procedural tasks' names (`shortcut`: their fixed-rule twins, <task>_shortcut)."""
    return [n + SHORTCUT_SUFFIX for n in TASKS] if shortcut else list(TASKS)


def _parse(name: str) -> tuple[Task, bool]:
    base = name.removesuffix(SHORTCUT_SUFFIX)
    if base not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(task_names() + task_names(True))}")
    return TASKS[base], name.endswith(SHORTCUT_SUFFIX)


def make_episode(name: str, shots: int, rng: np.random.Generator, rule: str | None = None) -> Episode:
    """One episode of task `name` (`<task>_shortcut` for the fixed-rule counterpart) with `shots` demos."""
    return episodes_sharing_demos(name, shots, 1, rng, rule)[0]


def episodes_sharing_demos(name: str, shots: int, n: int, rng: np.random.Generator, rule: str | None = None
                           ) -> list[Episode]:
    """`n` episodes of task `name` with one demo set: one episode's draw (its classes and names, its rule) with
    `shots` demos and `n` queries (n = 1: `make_episode`, the same draws)."""
    task, shortcut = _parse(name)
    if task.name == "novel_binding":
        rule = "fixed" if shortcut else "bound"
    elif rule is None:
        rule = task.rules[0] if shortcut else str(rng.choice(task.rules))
    setup = task.episode_setup(rng)
    if shortcut and task.name == "shape_count":
        setup = {"kinds": SHAPE_NAMES[:3]}  # fixed kinds; always count circles
    items = [task.draw(rng, setup) for _ in range(shots + n)]
    if task.name == "novel_binding" and shots >= 2:
        # balance the two classes among the demos so both labels are shown (the shortcut twin has the same two
        # classes per episode, each with its fixed label, so matching the query to a demo is never wrong there)
        items = _balanced_binding(items, setup, rng, task, shots)
    question = task.shortcut_question if shortcut else task.question
    if task.evidence is not None:
        for im, at in items:
            correct, wrong = task.evidence(at, rule, setup)
            im.info[EVIDENCE_KEY] = {"correct": [_cell_box(c) for c in correct],
                                     "wrong": [_cell_box(c) for c in wrong]}
    demos = tuple(Demo((im,), question, task.answer(at, rule, setup)) for im, at in items[:shots])
    return [Episode(demos, Query((im,), question, task.answer(at, rule, setup)), task=name,
                    meta={"rule": rule, "shortcut": shortcut}) for im, at in items[shots:]]


def _balanced_binding(items, setup, rng, task, shots):
    want = [setup["classes"][i % 2] for i in range(shots)]
    rng.shuffle(want)
    out = []
    for cls in want:
        while True:
            im, at = task.draw(rng, {"classes": [cls]})
            if at["cls"] == cls:
                out.append((im, at))
                break
    return paired_prefixes(out, key=lambda item: item[1]["cls"]) + items[shots:]


def paired_prefixes(items: list, key) -> list:
    """`items` (two classes by `key`, as even as their count allows) reordered so that every demo pair (0-1, 2-3, …)
    holds one of each class while both classes last: every prefix of two or more demos shows both classes, so a
    k-shot condition cut from a longer draw (the first k demos) never leaves the query's class unshown. Each class
    keeps its order; a pair already mixed keeps its order."""
    out, rest = [], list(items)
    while rest:
        first = rest.pop(0)
        out.append(first)
        other = next((i for i, x in enumerate(rest) if key(x) != key(first)), None)
        if other is None:  # one class left: the rest in order
            return out + rest
        out.append(rest.pop(other))
    return out


def sample_episodes(name: str, shots: int, n: int, seed: int = 0, split: str = "query") -> list[Episode]:
    """`n` seeded episodes; `split` ("support" | "query" | "train" | "val") selects an independent random stream:
    organisms train on "train", interventions (DARA, LoRA, MTV) learn on "support" and early-stop on "val", and
    every reported accuracy is on "query"."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLIT_SEEDS)}")
    rng = np.random.default_rng([seed, SPLIT_SEEDS[split]])
    return [make_episode(name, shots, rng) for _ in range(n)]


def fixed_demo_episodes(name: str, shots: int, n: int, seed: int = 0, split: str = "query") -> list[Episode]:
    """`n` seeded episodes that share one demo set (the `--fixed-demos` protocol: one demo set per task and seed):
    one draw of the task's setup and rule with `shots` demos and `n` queries (`episodes_sharing_demos`); `name` may
    fix the rule (`task@rule`). An independent stream from `sample_episodes`'."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLIT_SEEDS)}")
    base, rule = split_rule(name)
    return episodes_sharing_demos(base, shots, n, np.random.default_rng([seed, SPLIT_SEEDS[split], 13]), rule)


def rule_stream(task: str, rule: str, shots: int, split: str, seed: int = 0):
    """Endless seeded episodes of `task` under one fixed `rule` (what a task vector is extracted for)."""
    rng = np.random.default_rng([seed, SPLIT_SEEDS[split], 7])
    while True:
        yield make_episode(task, shots, rng, rule=rule)


def rule_episodes(task: str, rule: str, shots: int, n: int, split: str = "query", seed: int = 0) -> list[Episode]:
    """The first `n` episodes of `rule_stream`."""
    stream = rule_stream(task, rule, shots, split, seed)
    return [next(stream) for _ in range(n)]
