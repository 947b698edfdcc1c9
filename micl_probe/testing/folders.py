"""Small benchmark folders in the released formats, written offline (for tests, benches and examples).

    root = vlicl_fixture(tmp_path)          # tmp_path/VL-ICL/<task>/{support,query}.json + images, all six tasks
    root = truemicl_fixture(tmp_path)       # tmp_path/truemicl/operator_induction/...

The images are the procedural tasks' (so a model organism can even answer some); the JSON follows VL-ICL Bench's
fields task by task (image paths relative to the data root, list answers for the operator tasks, per-query class
supports for open_mi, same/diff pairs for matching_mi).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..tasks.folders import VLICL_TASKS
from ..tasks.synthetic import sample_episodes


def _save(im, root: Path, rel: str) -> str:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    im.save(root / rel)
    return rel


def vlicl_fixture(where: str | Path, n_support: int = 6, n_query: int = 4) -> Path:
    """A VL-ICL data root with every image-to-text task, `n_support` support and `n_query` query items each."""
    root = Path(where) / "VL-ICL"
    eps = sample_episodes("operator_induction_shortcut", 0, n_support + n_query, seed=3)
    img = [e.query.images[0] for e in eps]
    rng = np.random.default_rng(0)
    for task in VLICL_TASKS:
        def im(i, tag="", task=task):
            return _save(img[i % len(img)], root, f"{task}/images/{tag}{i}.png")
        support, query = [], []
        if task == "open_mi":
            classes = ["dax", "wug", "blick"]
            for q in range(n_query):
                cls = classes[q % 3]
                query.append({"id": q, "image": [im(q, "q")], "question": "This is a", "answer": cls,
                              "classes": classes,
                              "support": {c: {"images": [im(5 * k + j, f"s{q}{c}") for j in range(5)]}
                                          for k, c in enumerate(classes)}})
            support = [{"image": [im(0, "unused")], "question": "This is a", "answer": "dax"}]
        elif task == "matching_mi":
            for i in range(n_support):
                support.append({"same": {"image": [im(i, "a"), im(i, "a")], "question": "Same shape?", "answer": "yes"},
                                "diff": {"image": [im(i, "a"), im(i + 1, "b")], "question": "Same shape?",
                                         "answer": "no"}})
            query = [{"id": q, "image": [im(q, "qa"), im(q + q % 2, "qb")], "question": "Same shape?",
                      "answer": "yes" if q % 2 == 0 else "no"} for q in range(n_query)]
        else:
            two = task == "operator_induction_interleaved"
            for i in range(n_support):
                a, b = (int(x) for x in rng.integers(0, 5, 2))
                answer = [a + b, a - b, a * b] if task.startswith("operator") else \
                    (str(i + 1) if task == "clevr" else f"WORD{i}")
                support.append({"id": i, "image": [im(i)] + ([im(i, "b")] if two else []),
                                "question": "What is the result?" if task.startswith("operator") else "How many?",
                                "answer": answer})
            for q in range(n_query):
                item = {"id": q, "image": [im(n_support + q)] + ([im(n_support + q, "b")] if two else []),
                        "question": "What is the result?" if task.startswith("operator") else "How many?",
                        "answer": q + 1 if task != "textocr" else f"WORD{q}"}
                if task.startswith("operator"):
                    item["operator"] = "+-x"[q % 3]
                query.append(item)
        (root / task).mkdir(parents=True, exist_ok=True)
        (root / task / "support.json").write_text(json.dumps(support))
        (root / task / "query.json").write_text(json.dumps(query))
    return root


def truemicl_fixture(where: str | Path, task: str = "operator_induction", n_support: int = 6,
                     n_query: int = 4) -> Path:
    """A TrueMICL-style root with one task folder: image paths relative to the task folder, string answers."""
    root = Path(where) / "truemicl"
    eps = sample_episodes("operator_induction_shortcut", 0, n_support + n_query, seed=4)
    items = [{"image": _save(e.query.images[0], root / task, f"imgs/{i}.png"), "question": e.query.question,
              "answer": e.query.answer} for i, e in enumerate(eps)]
    (root / task / "support.json").write_text(json.dumps(items[:n_support]))
    (root / task / "query.json").write_text(json.dumps(items[n_support:]))
    return root
