"""Benchmark: the results store, old (per-head arrays inline in the JSON lines) against new (scalars in the JSON
lines, per-head arrays in parquet beside them), at a large model's shape.

    python bench/results_store.py [--records 10000] [--layers 80] [--heads 64]

Writes --records harness-like records (key fields, verdict, scalars, a per-layer list, per-demo shares, and the
two [layer][head] arrays, random float32) both ways into a temporary folder (the new one a chunk at a time, then
compacted as the harness does), then times reading them back: the old
file with `json.loads` per line (what reading it took before), the new one with `load_records` (scalars only) and
`load_records(heads=True)` (arrays attached), and one (task, condition) group's arrays alone. Prints bytes per
record and seconds; the last line is the summary. Time it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from micl_probe.evaluation.store import (
    HEAD_ARRAYS,
    append_records,
    attach_heads,
    compact_heads,
    heads_dir,
    load_records,
)


def records(n: int, layers: int, heads: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        yield {"model": "big", "weights": "0123456789ab", "task": f"task{i % 7}", "condition": f"{i % 3 * 4}-shot",
               "index": i, "metric": "exact", "style": "turns", "instruction": "nothing", "correct": bool(i % 2),
               "prediction": "red", "answer": "red", "shots": 4, "visual_share": float(rng.random()),
               "visual_share_by_layer": rng.random(layers).round(6).tolist(),
               "image_share": {f"demo{k}": float(rng.random()) for k in range(4)} | {"query": float(rng.random())},
               "special_share": float(rng.random()), "looks_at": {"demo_image": float(rng.random())},
               **{k: rng.random((layers, heads), dtype=np.float32) for k in HEAD_ARRAYS}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=10000)
    ap.add_argument("--layers", type=int, default=80)
    ap.add_argument("--heads", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=25, help="records a harness chunk (one parquet part each)")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="micl_probe_store_"))
    try:
        old, new = folder / "old.jsonl", folder / "new.jsonl"
        with old.open("w") as f:
            for r in records(args.records, args.layers, args.heads):
                f.write(json.dumps({k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in r.items()}) + "\n")
        chunk = []
        for r in records(args.records, args.layers, args.heads):
            chunk.append(r)
            if len(chunk) == args.chunk:
                append_records(new, chunk)
                chunk = []
        if chunk:
            append_records(new, chunk)
        n_parts = len(list(heads_dir(new).glob("*.parquet")))
        compact_heads(new)  # as the harness does at the end of a run
        parts = list(heads_dir(new).glob("*.parquet"))
        new_bytes = new.stat().st_size + sum(p.stat().st_size for p in parts)

        t = time.perf_counter()
        with old.open() as f:
            loaded_old = [json.loads(line) for line in f]
        t_old = time.perf_counter() - t
        t = time.perf_counter()
        scalars = load_records(new)
        t_scalars = time.perf_counter() - t
        t = time.perf_counter()
        full = load_records(new, heads=True)
        t_full = time.perf_counter() - t
        group = [r for r in scalars if r["task"] == "task0" and r["condition"] == "4-shot"]
        t = time.perf_counter()
        attach_heads(new, group)
        t_group = time.perf_counter() - t
        same = all(np.allclose(np.asarray(a[k], dtype=np.float32), b[k]) for a, b in zip(loaded_old, full)
                   for k in HEAD_ARRAYS)
        n = args.records
        print(f"{n} records, [{args.layers} x {args.heads}] x {len(HEAD_ARRAYS)} per-head arrays; new store: "
              f"{n_parts} parquet parts of {args.chunk} records, compacted into {len(parts)}")
        print(f"{'':<44}{'bytes / record':>16}{'s':>9}")
        print(f"{'old: JSON lines, arrays inline (json.loads)':<44}{old.stat().st_size / n:>16,.0f}{t_old:>9.2f}")
        print(f"{'new: scalars only (load_records)':<44}{new.stat().st_size / n:>16,.0f}{t_scalars:>9.2f}")
        print(f"{'new: with arrays (load_records heads=True)':<44}{new_bytes / n:>16,.0f}{t_full:>9.2f}")
        print(f"{'new: one task x condition group, arrays':<44}{'':>16}{t_group:>9.2f}  ({len(group)} records)")
        print(f"arrays read back equal: {same}")
        print(f"summary: {old.stat().st_size / new_bytes:.1f}x fewer bytes; scalars load {t_old / t_scalars:.0f}x "
              f"faster, everything {t_old / t_full:.1f}x faster than the old file")
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
