"""Harness records as tidy tables (pandas): one row per record, or one per record x layer x head.

    records = load_records("reports/attn_report")         # a results.jsonl, or the folder holding one
    df = records.to_frame()                               # one row per record: key, settings, outcome, attention
    heads = records.heads_frame()                         # one row per record x layer x head
    df.groupby(["model", "task", "condition"]).correct.mean()

`Records` (`evaluation.store`) is a list of record dicts (everything that takes the harness's records takes it) that
knows the results file it came from, so its `heads_frame` reads the per-head arrays from the columnar files only
when asked; `records_frame` / `heads_frame` here take any list of records.

Columns of `to_frame()`: the record key (model, task, condition, index), the settings and digests that made it
(weights, setup, prompt_format, task_content, pool, seed, style, instruction, system, metric, max_new_tokens,
capture, record_format, intervention, shots), the outcome (correct, prediction, answer), copying (cla, copied,
gold_in_demos: `evaluation.copying`) and, when attention was captured, the
answer row's shares as fractions of the row: visual_share, special_share, `looks_at.<part>` (demo_image,
query_image, demo_text, query_text, special, other: they sum to 1), `image_share.<demo0..|query>` (each image's
share) and matching_demo_image / other_demo_image (novel binding). The per-layer and per-head lists stay out of it:
`heads_frame()` has them, one row per layer and head with columns visual_share (all image tokens) and
demo_image (the demo images'), and the record's key and settings.
"""

from __future__ import annotations

import numpy as np

SPREAD = ("looks_at", "image_share")  # dict fields spread into "<field>.<name>" columns
LISTS = ("visual_share_by_layer", "visual_share_by_head", "demo_image_by_head", "head_arrays")  # not in to_frame()
FIRST = ("model", "task", "condition", "index", "shots", "correct", "prediction", "answer")
HEADS = {"visual_share_by_head": "visual_share", "demo_image_by_head": "demo_image"}  # heads_frame's value columns


def records_frame(records: list[dict]):
    """A pandas DataFrame, one row per record (columns: see the module docstring)."""
    import pandas as pd

    rows = []
    for r in records:
        row = {k: v for k, v in r.items() if k not in LISTS and k not in SPREAD}
        for name in SPREAD:
            row |= {f"{name}.{k}": v for k, v in (r.get(name) or {}).items()}
        rows.append(row)
    df = pd.DataFrame(rows)
    return df[[c for c in FIRST if c in df] + [c for c in df.columns if c not in FIRST]]


def heads_frame(records: list[dict]):
    """A pandas DataFrame, one row per record x layer x head: the record's key and settings, layer, head,
    visual_share (the head's answer-row attention on all image tokens) and demo_image (on the demo images), as
    fractions of the row. NaN: a layer without softmax attention (hybrid decoders). Records without their per-head
    arrays (no attention captured, or not read: `Records.heads_frame` reads them) have no rows."""
    import pandas as pd

    frames = []
    for r in records:
        arrays = {col: np.asarray(r[name], dtype=float) for name, col in HEADS.items() if name in r}
        if not arrays:
            continue
        layers, heads = next(iter(arrays.values())).shape
        cols = {k: v for k, v in r.items() if k not in LISTS and k not in SPREAD and k != "prediction"}
        frame = pd.DataFrame({"layer": np.repeat(np.arange(layers), heads), "head": np.tile(np.arange(heads), layers)}
                             | {col: a.reshape(-1) for col, a in arrays.items()})
        frames.append(frame.assign(**cols))
    if not frames:
        return pd.DataFrame(columns=["model", "task", "condition", "index", "layer", "head", *HEADS.values()])
    out = pd.concat(frames, ignore_index=True)
    first = ["model", "task", "condition", "index", "layer", "head", *[c for c in HEADS.values() if c in out]]
    return out[first + [c for c in out.columns if c not in first]]
