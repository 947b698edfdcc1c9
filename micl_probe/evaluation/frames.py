"""Harness records as tidy tables (pandas): one row per record, or one per record x layer x head.

    records = load_records("reports/attn_report")         # a results.jsonl, or the folder holding one
    df = records.to_frame()                               # one row per record: key, settings, outcome, attention
    heads = records.heads_frame()                         # one row per record x layer x head
    df.groupby(["model", "task", "condition"]).correct.mean()

`Records` is a list of record dicts (everything that takes the harness's records takes it) that knows the results
file it came from, so `heads_frame` reads the per-head arrays from the columnar files only when asked.

Columns of `to_frame()`: the record key (model, task, condition, index), the settings and digests that made it
(weights, setup, prompt_format, task_content, pool, seed, style, instruction, system, metric, max_new_tokens,
capture, intervention, shots), the outcome (correct, prediction, answer) and, when attention was captured, the
answer row's shares as fractions of the row: visual_share, special_share, `looks_at.<part>` (demo_image,
query_image, demo_text, query_text, special, other: they sum to 1), `image_share.<demo0..|query>` (each image's
share) and matching_demo_image / other_demo_image (novel binding). The per-layer and per-head lists stay out of it:
`heads_frame()` has them, one row per layer and head with columns visual_share (all image tokens) and
demo_image (the demo images'), and the record's key and settings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPREAD = ("looks_at", "image_share")  # dict fields spread into "<field>.<name>" columns
LISTS = ("visual_share_by_layer", "visual_share_by_head", "demo_image_by_head", "head_arrays")  # not in to_frame()
FIRST = ("model", "task", "condition", "index", "shots", "correct", "prediction", "answer")
HEADS = {"visual_share_by_head": "visual_share", "demo_image_by_head": "demo_image"}  # heads_frame's value columns


class Records(list):
    """Harness records (a list of dicts, one per episode) with tidy views: `to_frame()` (a row per record),
    `heads_frame()` (a row per record x layer x head). `source`: the results file they were read from (the
    per-head arrays are read from beside it when a record does not carry them)."""

    def __init__(self, records=(), source: str | Path | None = None):
        super().__init__(records)
        self.source = Path(source) if source else None

    def to_frame(self):
        """A pandas DataFrame, one row per record (columns: see `micl_probe.evaluation.frames`)."""
        import pandas as pd

        rows = []
        for r in self:
            row = {k: v for k, v in r.items() if k not in LISTS and k not in SPREAD}
            for name in SPREAD:
                row |= {f"{name}.{k}": v for k, v in (r.get(name) or {}).items()}
            rows.append(row)
        df = pd.DataFrame(rows)
        return df[[c for c in FIRST if c in df] + [c for c in df.columns if c not in FIRST]]

    def heads_frame(self):
        """A pandas DataFrame, one row per record x layer x head: the record's key and settings, layer, head,
        visual_share (the head's answer-row attention on all image tokens) and demo_image (on the demo images),
        as fractions of the row. NaN: a layer without softmax attention (hybrid decoders). Records without
        captured attention have no rows."""
        import pandas as pd

        self._attach()
        frames = []
        for r in self:
            arrays = {col: np.asarray(r[name], dtype=float) for name, col in HEADS.items() if name in r}
            if not arrays:
                continue
            layers, heads = next(iter(arrays.values())).shape
            cols = {k: v for k, v in r.items() if k not in LISTS and k not in SPREAD and k != "prediction"}
            frame = pd.DataFrame({"layer": np.repeat(np.arange(layers), heads), "head": np.tile(np.arange(heads),
                                                                                                  layers)}
                                 | {col: a.reshape(-1) for col, a in arrays.items()})
            frames.append(frame.assign(**cols))
        if not frames:
            return pd.DataFrame(columns=["model", "task", "condition", "index", "layer", "head", *HEADS.values()])
        out = pd.concat(frames, ignore_index=True)
        first = ["model", "task", "condition", "index", "layer", "head", *[c for c in HEADS.values() if c in out]]
        return out[first + [c for c in out.columns if c not in first]]

    def _attach(self) -> None:
        """Read the per-head arrays of the records that lack them from the results file's columnar files."""
        from .store import attach_heads

        lacking = [r for r in self if "visual_share" in r and not all(n in r for n in HEADS)]
        if lacking and self.source is not None and self.source.is_file():
            attach_heads(self.source, lacking)


def results_file(path: str | Path) -> Path:
    """A results file, or the results.jsonl in a report folder."""
    path = Path(path)
    return path / "results.jsonl" if path.is_dir() else path
