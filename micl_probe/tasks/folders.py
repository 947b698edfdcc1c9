"""Released benchmark folders as tasks: `truemicl:PATH/TASK` and `vlicl:PATH/TASK`.

    episodes = folder_episodes("vlicl:/data/VL-ICL/open_mi", shots=2, n=100, seed=0)
    episodes = folder_episodes("truemicl:/data/truemicl/operator_induction", shots=4)
    episodes = retrieved_episodes("vlicl:/data/VL-ICL/clevr", k=4)    # the 4 support items most like each query

Both formats are a task folder holding `support.json` (the pool demos are drawn from) and `query.json` (the queries,
in order), each a JSON list; image paths are relative to the task folder or to PATH (VL-ICL writes them relative
to its data root, e.g. "clevr/images/x.png").

**vlicl** reproduces VL-ICL Bench's own episodes (ys-zong/VL-ICL, `utils/ICL_utils.py`), for its image-to-text tasks:
  * clevr, textocr: support/query items {"image": path or [paths], "question", "answer"}; k demos drawn from
    support.json.
  * operator_induction, operator_induction_interleaved: support answers are [a+b, a-b, a*b]; each query names its
    "operator" (+, -, x) and its demos show the answer for that operator.
  * open_mi: 2-way: each query carries "classes" and its own "support" {class: {"images": [...]}}; a k-shot episode
    has k demos per class (the query's class and one other, chosen at random, in random order), question
    "This is a", answer the class name. support.json is not used.
  * matching_mi: support items hold a "same" and a "diff" sub-item (each {"image", "question", "answer"}); a k-shot
    episode has both of k items: 2k demos.
  Task instructions are VL-ICL's: "nothing" (default), "concise" or "detailed". Its metrics are
  `evaluation.metrics` "vlicl" (exact match after VL-ICL's truncation; first integer for the operator tasks; its
  yes/no rule for matching_mi). VL-ICL Bench writes every demo into one user turn ending "Answer:"; that is prompt
  style "single" (`Episode.with_style`), the default here is one chat turn per demo.
  Demos are drawn with a seeded generator per query, so episodes do not depend on query order; they are not
  VL-ICL's own random draws (which depend on the order of its loops).

**truemicl** reads TrueMICL-style folders: support/query items {"image": path or [paths], "question": str, "answer":
str or number} (an item without "question" gets "What is the answer?"); support items may give a list answer with
queries naming an "operator" (+, -, x), as VL-ICL does. k demos drawn from support.json.

Any item may carry "evidence" (where its answer is in its image, for `measure.evidence_attention`): a mask PNG of the
image's size (0 the rest, 1 correct evidence, 2 distractors) or {"correct": [[x0, y0, x1, y1], …], "wrong": […]}
in pixels; a list of them for an item with several images.

A folder or item that does not match its format is a one-line error naming the file, the item and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.episode import Demo, Episode, Query, image_feature
from .synthetic import EVIDENCE_KEY

SOURCES = ("truemicl", "vlicl")
VLICL_TASKS = ("open_mi", "clevr", "operator_induction", "operator_induction_interleaved", "textocr", "matching_mi")
OPERATORS = {"+": 0, "-": 1, "x": 2}
DEFAULT_QUESTION = "What is the answer?"

# VL-ICL Bench's task instructions (utils/ICL_utils.py: get_task_instruction), by level
VLICL_INSTRUCTIONS = {
    "textocr": ("Answer with the text inside the red box.",
                "An image will be provided where a red box is drawn around the text of interest. Answer with the text "
                "inside the red box. Ensure that the transcription is precise, reflecting the exact characters, "
                "including letters, numbers, symbols."),
    "operator_induction": ("Induce the mathematical operator and calculate the result.",
                           "The image contains two digit numbers and a ? representing the mathematical operator. "
                           "Induce the mathematical operator (addition, multiplication, minus) according to the "
                           "results of the in-context examples and calculate the result."),
    "operator_induction_interleaved": (
        "Induce the mathematical operator between the two images and calculate the result.",
        "There are two input images, each representing a single digit number. Induce the mathematical operator "
        "(addition, multiplication, minus) that is applied between the two images according to the results of the "
        "in-context examples. Calculate the result for the new query images."),
    "open_mi": ("Answer the question with a single word or phase.",
                "Induce the concept from the in-context examples. Answer the question with a single word or phase."),
    "clevr": ("Find objects of the given type, induce what operation to use and calculate the result.",
              "The image contains objects of different shapes, colors, sizes and materials. The question describes "
              "the attribute and its value. You need to find all objects within the image that satisfy the "
              "condition. You should induce what operation to use according to the results of the in-context "
              "examples and then calculate the result."),
    "matching_mi": ("Determine the output for the new pair of images.",
                    "According to the few-shot examples, induce what operation to do and determine the output for the "
                    "two new images. Answer with \"yes\" or \"no\"."),
}
LEVELS = ("nothing", "concise", "detailed")


class FolderError(ValueError):
    """A benchmark folder that does not match its format (the message names the file, item and field)."""


@dataclass(frozen=True)
class FolderTask:
    """A task read from a benchmark folder: `source:root/name`."""

    source: str  # "truemicl" | "vlicl"
    folder: Path  # the task folder (holding support.json and query.json)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def root(self) -> Path:
        return self.folder.parent

    @property
    def spec(self) -> str:
        return f"{self.source}:{self.folder}"

    @property
    def demos_per_shot(self) -> int:
        """Demos one 'shot' adds: 2 for VL-ICL's open_mi (one per class) and matching_mi (a same + a diff pair)."""
        return 2 if self.source == "vlicl" and self.name in ("open_mi", "matching_mi") else 1


def parse_task(spec: str) -> FolderTask | None:
    """`"vlicl:PATH/TASK"` or `"truemicl:PATH/TASK"` -> FolderTask (checked: the folder and its two files exist);
    None for anything else (a procedural task name)."""
    source, sep, path = spec.partition(":")
    if not sep or source not in SOURCES:
        return None
    folder = Path(path).expanduser()
    if not path or not folder.is_dir():
        raise FolderError(f"task {spec!r}: no folder {path!r}; give {source}:PATH/TASK, the task folder holding "
                          "support.json and query.json")
    for f in ("support.json", "query.json"):
        if not (folder / f).is_file():
            raise FolderError(f"task {spec!r}: {folder / f} is missing; a {source} task folder holds support.json "
                              "and query.json")
    if source == "vlicl" and folder.name not in VLICL_TASKS:
        raise FolderError(f"task {spec!r}: VL-ICL's image-to-text tasks are {', '.join(VLICL_TASKS)}; the folder's "
                          f"name says which (got {folder.name!r})")
    return FolderTask(source, folder)


def is_folder_task(spec: str) -> bool:
    return spec.partition(":")[0] in SOURCES and ":" in spec


def instruction_for(task: FolderTask, instruction: str = "nothing") -> str:
    """The instruction text: for vlicl, VL-ICL's own at `instruction` = nothing | concise | detailed; any other
    string is used as written."""
    if instruction in LEVELS:
        if instruction == "nothing" or task.source != "vlicl":
            return ""
        return VLICL_INSTRUCTIONS[task.name][LEVELS.index(instruction) - 1]
    return instruction


# --- reading the folder ---------------------------------------------------------------------------------------
def _at(task: FolderTask, file: str, index: int) -> str:
    return f"{task.folder / file}[{index}]"


def _read(task: FolderTask, file: str) -> list:
    path = task.folder / file
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FolderError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, list) or not data:
        raise FolderError(f"{path}: expected a non-empty JSON list of items")
    return data


def _field(item, name: str, where: str, kinds: tuple = (str, int, float, list)):
    if not isinstance(item, dict) or name not in item:
        raise FolderError(f"{where}: no field {name!r}")
    if not isinstance(item[name], kinds):
        raise FolderError(f"{where}: field {name!r} is a {type(item[name]).__name__}")
    return item[name]


def _images(task: FolderTask, paths, where: str) -> tuple[Image.Image, ...]:
    paths = [paths] if isinstance(paths, str) else paths
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise FolderError(f"{where}: field 'image' must be a path or a list of paths")
    out = []
    for p in paths:
        found = next((r / p for r in (task.folder, task.root) if (r / p).is_file()), None)
        if found is None:
            raise FolderError(f"{where}: image {p!r} not found under {task.folder} or {task.root}")
        out.append(Image.open(found).convert("RGB"))
    return tuple(out)


def _with_evidence(task: FolderTask, item: dict, images: tuple, where: str) -> tuple:
    """`images` with the item's optional "evidence" in each image's info (`synthetic.evidence_boxes`): a mask PNG
    path (0 the rest, 1 correct evidence, 2 distractors; the image's size) or {"correct": [[x0, y0, x1, y1], …],
    "wrong": […]} in pixels, one per image (a list when the item has several images)."""
    if "evidence" not in item:
        return images
    given = item["evidence"]
    given = given if isinstance(given, list) and len(images) > 1 else [given]
    if len(given) != len(images):
        raise FolderError(f"{where}: 'evidence' gives {len(given)} entries for {len(images)} images: one per image")
    for im, ev in zip(images, given):
        if isinstance(ev, str):
            found = next((r / ev for r in (task.folder, task.root) if (r / ev).is_file()), None)
            if found is None:
                raise FolderError(f"{where}: evidence mask {ev!r} not found under {task.folder} or {task.root}")
            mask = np.asarray(Image.open(found).convert("L"))
            if mask.shape != (im.height, im.width) or not set(np.unique(mask).tolist()) <= {0, 1, 2}:
                raise FolderError(f"{where}: evidence mask {ev!r} must be {im.width}x{im.height} with values 0 (the "
                                  "rest), 1 (correct evidence) and 2 (distractors)")
            im.info[EVIDENCE_KEY] = {"mask": mask}
        elif isinstance(ev, dict) and set(ev) <= {"correct", "wrong"} and all(
                isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)
                for boxes in ev.values() for b in boxes):
            im.info[EVIDENCE_KEY] = {k: [tuple(b) for b in ev.get(k, [])] for k in ("correct", "wrong")}
        else:
            raise FolderError(f"{where}: 'evidence' must be a mask path or {{\"correct\": [[x0, y0, x1, y1], …], "
                              "\"wrong\": […]}} in pixels")
    return images


def _answer(item, where: str, operator: str | None):
    answer = _field(item, "answer", where)
    if isinstance(answer, list):
        if operator is None:
            raise FolderError(f"{where}: a list answer needs the query to name its 'operator' (+, -, x)")
        if len(answer) != 3:
            raise FolderError(f"{where}: a list answer holds the results of [+, -, x]; got {len(answer)} values")
        answer = answer[OPERATORS[operator]]
    return str(answer)


def _item_demo(task, item, where, operator=None, images=None) -> Demo:
    if not isinstance(item, dict):
        raise FolderError(f"{where}: expected an object with 'image', 'question' and 'answer'")
    q = _field(item, "question", where, (str,)) if "question" in item or task.source == "vlicl" else DEFAULT_QUESTION
    images = images if images is not None else _images(task, _field(item, "image", where, (str, list)), where)
    return Demo(_with_evidence(task, item, images, where), q, _answer(item, where, operator))


def _operator(task, q, where) -> str | None:
    if "operator" not in q:
        return None
    if q["operator"] not in OPERATORS:
        raise FolderError(f"{where}: 'operator' must be one of + - x, got {q['operator']!r}")
    return q["operator"]


def _demo_pool(task: FolderTask, support: list, q: dict, shots: int, rng, where: str) -> list[Demo]:
    """`shots` shots of demos for query `q`, drawn the VL-ICL way for its task."""
    operator = _operator(task, q, where)
    if task.source == "vlicl" and task.name == "open_mi":
        cls, classes = str(_field(q, "answer", where)), _field(q, "classes", where, (list,))
        per_class = _field(q, "support", where, (dict,))
        others = [c for c in classes if c != cls]
        if not others:
            raise FolderError(f"{where}: 'classes' needs a class other than the query's {cls!r}")
        other = others[rng.integers(len(others))]
        order = [cls, other] if rng.integers(2) else [other, cls]
        demos = []
        for i in range(shots):
            for c in order:
                images = _field(per_class.get(c), "images", f"{where} support[{c!r}]", (list,))
                if i >= len(images):
                    raise FolderError(f"{where}: support[{c!r}] has {len(images)} images; {shots} shots need more")
                demos.append(Demo(_images(task, images[i], f"{where} support[{c!r}]"), "This is a", c))
        return demos
    if shots > len(support):
        raise FolderError(f"{task.folder / 'support.json'}: {len(support)} items; {shots} shots need more")
    picks = [int(i) for i in rng.choice(len(support), size=shots, replace=False)] if shots else []
    if task.source == "vlicl" and task.name == "matching_mi":
        return [_item_demo(task, _field(support[i], part, _at(task, "support.json", i), (dict,)),
                           _at(task, "support.json", i) + f".{part}") for i in picks for part in ("same", "diff")]
    return [_item_demo(task, support[i], _at(task, "support.json", i), operator) for i in picks]


def _query(task: FolderTask, q: dict, where: str) -> Query:
    question = _field(q, "question", where, (str,)) if "question" in q or task.source == "vlicl" \
        else DEFAULT_QUESTION
    images = _with_evidence(task, q, _images(task, _field(q, "image", where, (str, list)), where), where)
    return Query(images, question, str(_field(q, "answer", where, (str, int, float))))


def _episode(task, q, demos, index, instruction, condition=None) -> Episode:
    meta = {"source": task.source, "id": q.get("id", index), "demos_per_shot": task.demos_per_shot}
    if task.source == "vlicl" and task.name == "open_mi":  # demos of the query's class: matching-demo analysis
        meta["demos_match_query"] = True
    if condition:
        meta["condition"] = condition
    if "operator" in q:
        meta["rule"] = q["operator"]
    return Episode(tuple(demos), _query(task, q, _at(task, "query.json", index)), task=task.spec, meta=meta,
                   instruction=instruction)


FIXED_DEMOS = 2**31 - 1  # the demo generator's second seed under fixed demos (in place of the query index)


def folder_episodes(spec: str | FolderTask, shots: int, n: int | None = None, seed: int = 0,
                    instruction: str = "nothing", fixed_demos: bool = False) -> list[Episode]:
    """The first `n` queries of the folder task `spec` (all when None), each with `shots` shots of demos drawn
    from the support set (a generator seeded by (seed, query index)); see the module docstring for each format.
    `fixed_demos`: every query's generator seeded alike, so the queries share one demo set wherever the draw does
    not depend on the query (VL-ICL's open_mi and operator tasks keep each query's own)."""
    task = spec if isinstance(spec, FolderTask) else parse_task(spec)
    if task is None:
        raise FolderError(f"{spec!r} is not a folder task; use truemicl:PATH/TASK or vlicl:PATH/TASK")
    support, queries = _read(task, "support.json"), _read(task, "query.json")
    text = instruction_for(task, instruction)
    episodes = []
    for index, q in enumerate(queries[:n] if n is not None else queries):
        where = _at(task, "query.json", index)
        if not isinstance(q, dict):
            raise FolderError(f"{where}: expected an object with 'image', 'question' and 'answer'")
        rng = np.random.default_rng([seed, FIXED_DEMOS if fixed_demos else index])
        episodes.append(_episode(task, q, _demo_pool(task, support, q, shots, rng, where), index, text))
    return episodes


def folder_stream(spec: str | FolderTask, shots: int, split: str = "support", seed: int = 0,
                  instruction: str = "nothing"):
    """Endless seeded episodes for training an intervention on a folder task, from its support set only (query.json
    stays for evaluation): a fixed fifth of the support items (at least one) are the "val" queries, the rest the
    "support" (training) queries; demos always come from the training items, never the query itself. VL-ICL's
    operator tasks draw the operator per episode; matching_mi's query is an item's same or diff pair; open_mi has
    no training split (its demos come from each query's own support)."""
    task = spec if isinstance(spec, FolderTask) else parse_task(spec)
    if split not in ("support", "val"):
        raise ValueError(f"a folder task trains on split 'support' or 'val', got {split!r}")
    if task.source == "vlicl" and task.name == "open_mi":
        raise FolderError(f"{task.spec}: open_mi has no training split (VL-ICL builds each query's demos from its "
                          "own support); train on another task")
    support = _read(task, "support.json")
    order = [int(i) for i in np.random.default_rng(12345).permutation(len(support))]
    n_val = max(1, len(support) // 5)
    train, val = order[n_val:], order[:n_val]
    if len(support) < 2 or len(train) < shots + (split == "support"):
        raise FolderError(f"{task.folder / 'support.json'}: {len(support)} items are too few to train with "
                          f"{shots} shots and keep {n_val} for validation")
    text = instruction_for(task, instruction)
    rng = np.random.default_rng([seed, 0 if split == "support" else 1])
    lists = any(isinstance(support[i].get("answer"), list) for i in train if isinstance(support[i], dict))
    pair = task.source == "vlicl" and task.name == "matching_mi"
    for count in range(10**12):
        q_index = int(rng.choice(train if split == "support" else val))
        item = support[q_index]
        where = _at(task, "support.json", q_index)
        if pair:
            item, where = _field(item, ("same", "diff")[int(rng.integers(2))], where, (dict,)), where + ".pair"
        operator = "+-x"[int(rng.integers(3))] if lists else None
        query = {**item, "answer": _answer(item, where, operator)} if not pair else item
        pool = [i for i in train if i != q_index]
        picks = [int(i) for i in rng.choice(pool, size=shots, replace=False)] if shots else []
        if pair:
            demos = [_item_demo(task, _field(support[i], part, _at(task, "support.json", i), (dict,)),
                                _at(task, "support.json", i) + f".{part}") for i in picks for part in ("same", "diff")]
        else:
            demos = [_item_demo(task, support[i], _at(task, "support.json", i), operator) for i in picks]
        yield _episode(task, {**query, "id": f"{split}-{count}"} | ({"operator": operator} if operator else {}),
                       demos, count, text)


def retrieved_episodes(spec: str | FolderTask, k: int, n: int | None = None, instruction: str = "nothing"
                       ) -> list[Episode]:
    """Each query with the `k` support items whose images look most like its own (RICES-style: the cosine of
    `episode.image_feature`, as `Episode.with_retrieved_shots`) from the whole support set, most similar last."""
    task = spec if isinstance(spec, FolderTask) else parse_task(spec)
    if task.demos_per_shot > 1:
        raise FolderError(f"{task.spec}: retrieval does not apply to VL-ICL's {task.name} (its demos come in "
                          "class/pair structure); use <k>-shot")
    support, queries = _read(task, "support.json"), _read(task, "query.json")
    images = [_images(task, _field(s, "image", _at(task, "support.json", i), (str, list)), _at(task, "support.json", i))
              for i, s in enumerate(support)]
    features = np.stack([image_feature(x) for x in images])  # [support item, 3072]
    text = instruction_for(task, instruction)
    episodes = []
    for index, q in enumerate(queries[:n] if n is not None else queries):
        where = _at(task, "query.json", index)
        nearest = np.argsort(-(features @ image_feature(_query(task, q, where).images)), kind="stable")[:k][::-1]
        operator = _operator(task, q, where)
        demos = [_item_demo(task, support[i], _at(task, "support.json", i), operator, images[i]) for i in nearest]
        episodes.append(_episode(task, q, demos, index, text, condition=f"retrieved-{k}-shot"))
    return episodes


def load_folder(root: str | Path, task: str, shots: int, seed: int = 0, fmt: str = "truemicl",
                instruction: str = "nothing") -> list[Episode]:
    """`folder_episodes(f"{fmt}:{root}/{task}", shots, seed=seed)`: every query of a benchmark folder."""
    if fmt not in SOURCES:
        raise ValueError(f"fmt must be one of {', '.join(SOURCES)}, got {fmt!r}")
    return folder_episodes(f"{fmt}:{Path(root) / task}", shots, seed=seed, instruction=instruction)
