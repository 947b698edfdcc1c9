"""Loaders for the released benchmark folder formats (TrueMICL, VL-ICL): episodes from `root/<task>/support.json`
and `query.json`.

    episodes = load_folder("/data/truemicl", "operator_induction", shots=4)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.episode import Demo, Episode, Query


def _load_images(paths, roots: list[Path]) -> tuple[Image.Image, ...]:
    if isinstance(paths, str):
        paths = [paths]
    out = []
    for p in paths:
        for root in roots:
            if (root / p).is_file():
                out.append(Image.open(root / p).convert("RGB"))
                break
        else:
            raise FileNotFoundError(f"image {p!r} not found under {[str(r) for r in roots]}")
    return tuple(out)


def load_folder(root: str | Path, task: str, shots: int, seed: int = 0, fmt: str = "truemicl",
                question: str | None = None) -> list[Episode]:
    """Episodes from a released benchmark folder: `root/<task>/support.json` and `query.json`.

    Both TrueMICL and VL-ICL store lists of {"image": path or [paths], "question": str, "answer": ...}, image
    paths relative to the task folder or to `root`. VL-ICL's operator_induction stores support answers as
    [plus, minus, times] and the query's operator in "operator"; that is handled. Each query gets `shots` demos
    drawn at random from the support set (seeded).
    """
    if fmt not in ("truemicl", "vlicl"):
        raise ValueError(f"fmt must be 'truemicl' or 'vlicl', got {fmt!r}")
    root = Path(root)
    folder = root / task
    support = json.loads((folder / "support.json").read_text())
    queries = json.loads((folder / "query.json").read_text())
    roots = [folder, root]
    rng = np.random.default_rng(seed)
    op_index = {"+": 0, "-": 1, "x": 2}
    episodes = []
    for q in queries:
        picks = rng.choice(len(support), size=shots, replace=False) if shots else []
        demos = []
        for i in picks:
            s = support[int(i)]
            answer = s["answer"]
            if isinstance(answer, list):
                if "operator" not in q:
                    raise ValueError(f"{folder}/support.json has list answers but the query has no 'operator'")
                answer = answer[op_index[q["operator"]]]
            demos.append(Demo(_load_images(s["image"], roots), question or s.get("question") or "What is it?",
                              str(answer)))
        query = Query(_load_images(q["image"], roots), question or q.get("question") or "What is it?",
                      str(q["answer"]))
        meta = {"source": fmt, "id": q.get("id", len(episodes))}
        if "operator" in q:
            meta["rule"] = q["operator"]
        episodes.append(Episode(tuple(demos), query, task=task, meta=meta))
    return episodes
