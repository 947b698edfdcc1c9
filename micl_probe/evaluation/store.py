"""Where harness records live: per-episode scalars in an append-only JSON-lines file, per-head arrays in columnar
files beside it, shards of a split run, and reading them back.

    results.jsonl             one line per episode: key fields, verdict, scalars, per-layer lists
    results.heads/part-*.parquet
                              the [layer][head] arrays (`HEAD_ARRAYS`) of the same episodes, one row each, keyed by
                              the record's key; written before the lines, so a line always has its arrays
    results.shard<r>of<w>.jsonl (+ .heads/)
                              shard r of a w-way run (`merge_shards` folds them into results.jsonl)

    records = load_records("runs/x/results.jsonl")               # scalars only: small and fast
    records = load_records("runs/x/results.jsonl", heads=True)   # + numpy [layer, head] arrays, read for these keys

A line that is not a record (cut short by a crash, not JSON, or JSON without a valid key field) is skipped with a
warning that names its line number and what is wrong; every other line is kept. Older files with the arrays inline
in the JSON lines read as before.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

RECORD_KEY = ("model", "task", "condition", "index")  # with the weights and the setup: what makes a record unique
SETUP = {"metric": "teacher-forced", "style": "turns", "instruction": "nothing"}  # (absent in old records: these)
HEAD_ARRAYS = ("visual_share_by_head", "demo_image_by_head")  # [layer][head] per record: in the columnar files
COMPACT_AFTER = 64  # parts in a heads folder before `compact_heads` folds them into one


def record_key(r: dict) -> tuple:
    """What makes a record unique: model, weights, task, condition, index and the setup (metric, style,
    instruction)."""
    return (r["model"], r.get("weights"), r["task"], r["condition"], r["index"]) + \
        tuple(r.get(k, v) for k, v in SETUP.items())


def _key_text(r: dict) -> str:
    return json.dumps(record_key(r))


def heads_dir(results: Path) -> Path:
    """The folder of a results file's columnar per-head arrays."""
    return results.with_name(results.stem + ".heads")


def _problem(r) -> str | None:
    """Why a parsed line is not a record, or None."""
    if not isinstance(r, dict):
        return f"a JSON {type(r).__name__}, not an object"
    missing = [k for k in RECORD_KEY if k not in r]
    if missing:
        return f"no {', '.join(repr(k) for k in missing)}"
    if not isinstance(r["index"], int) or isinstance(r["index"], bool):
        return f"'index' is {r['index']!r}, not an integer"
    bad = [k for k in ("model", "task", "condition") if not isinstance(r[k], str)]
    return f"{', '.join(repr(k) for k in bad)} not a string" if bad else None


def load_records(results: str | Path, heads: bool = False) -> list[dict]:
    """The records of a results file, one per key (the first of a repeated key), read line by line; a line that is
    not a record is skipped with a warning naming it (and recomputed by a rerun). `heads`: attach the per-head
    arrays as numpy [layer, head] arrays, read from the columnar files for these records only."""
    results = Path(results)
    records, seen, skipped = [], set(), []
    with results.open() as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                skipped.append(f"line {number} (not JSON: cut short?)")
                continue
            why = _problem(r)
            if why:
                skipped.append(f"line {number} ({why})")
                continue
            key = record_key(r)
            if key not in seen:
                seen.add(key)
                records.append(r)
    if skipped:
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.warn(f"{results}: skipped unreadable line(s): {'; '.join(skipped[:5])}{more}; those episodes are "
                      "recomputed by a rerun", stacklevel=2)
    if heads:
        attach_heads(results, records)
    return records


def attach_heads(results: Path, records: list[dict]) -> None:
    """Into each record (in place), its per-head arrays from the columnar files: only these records' rows are read
    (the last row of a key wins); records written inline by older versions keep their lists."""
    folder = heads_dir(results)
    if not records or not folder.is_dir() or not any(folder.glob("*.parquet")):
        return
    import pyarrow.dataset as ds

    wanted = {_key_text(r): r for r in records}
    table = ds.dataset(str(folder), format="parquet").to_table(filter=ds.field("key").isin(list(wanted)))
    keys = table.column("key").to_pylist()
    layers, n_heads = table.column("layers").to_numpy(), table.column("heads").to_numpy()
    for name in HEAD_ARRAYS:
        if name not in table.column_names:
            continue
        column = table.column(name).combine_chunks()
        values, offsets = column.values.to_numpy(zero_copy_only=False), column.offsets.to_numpy()
        for i, key in enumerate(keys):
            wanted[key][name] = values[offsets[i]:offsets[i + 1]].reshape(layers[i], n_heads[i])


def append_records(results: Path, chunk: list[dict]) -> None:
    """Append a chunk of records: their per-head arrays first, as one columnar part (taken out of the records),
    then one JSON line per record. A crash between the two leaves arrays without a line: ignored, recomputed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = [{k: np.asarray(r.pop(k), dtype=np.float32) for k in HEAD_ARRAYS if k in r} for r in chunk]
    with_arrays = [(r, a) for r, a in zip(chunk, arrays) if a]
    if with_arrays:
        folder = heads_dir(results)
        folder.mkdir(parents=True, exist_ok=True)
        first = with_arrays[0][1]
        columns = {"key": [_key_text(r) for r, _ in with_arrays],
                   "layers": pa.array([next(iter(a.values())).shape[0] for _, a in with_arrays], pa.int32()),
                   "heads": pa.array([next(iter(a.values())).shape[1] for _, a in with_arrays], pa.int32())}
        for name in first:
            columns[name] = pa.array([a[name].ravel() for _, a in with_arrays], pa.list_(pa.float32()))
        part = folder / f"part-{time.time_ns()}-{os.getpid()}.parquet"
        pq.write_table(pa.table(columns), str(part.with_suffix(".tmp")))
        part.with_suffix(".tmp").rename(part)  # a part is whole or absent
    end_line(results)
    with results.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in chunk)


def compact_heads(results: Path, after: int = COMPACT_AFTER) -> None:
    """Fold the parts of a heads folder into one file once there are more than `after` (one part a chunk would
    otherwise leave thousands): streamed part by part, the new file complete before the old parts go."""
    folder = heads_dir(results)
    parts = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    if len(parts) <= after:
        return
    import pyarrow.parquet as pq

    schema = pq.read_schema(str(parts[0]))
    same = [p for p in parts if pq.read_schema(str(p)).equals(schema)]  # (a part of another shape stays as it is)
    target = folder / f"part-{time.time_ns()}-{os.getpid()}-compact.parquet"
    with pq.ParquetWriter(str(target.with_suffix(".tmp")), schema) as writer:
        for part in same:  # one part in memory at a time
            writer.write_table(pq.read_table(str(part)))
    target.with_suffix(".tmp").rename(target)
    for part in same:
        part.unlink()


def end_line(path: Path) -> None:
    """A line cut short by a crash: new records start on a line of their own."""
    if path.is_file() and path.stat().st_size:
        with path.open("rb+") as f:
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                f.write(b"\n")


def done_keys(results: Path | None) -> set[tuple]:
    if results is None or not results.is_file():
        return set()
    return {record_key(r) for r in load_records(results)}


# --- shards ---------------------------------------------------------------------------------------------------------
def shard_file(results: Path, rank: int, world: int) -> Path:
    """Where shard `rank` of a `world`-way run writes its records, beside the results file."""
    return results.with_name(f"{results.stem}.shard{rank}of{world}{results.suffix}")


def shard_files(results: Path, world: int | None = None) -> list[Path]:
    """The shard files beside `results` (of a `world`-way run, or of any)."""
    pattern = f"{results.stem}.shard*of{world if world else '*'}{results.suffix}"
    return sorted(results.parent.glob(pattern))


def merge_shards(results: Path) -> int:
    """Fold the shard files into `results`: their columnar parts move into its heads folder, then the records it
    does not hold yet are appended, then the shards go (a merge cut short is finished by the next: nothing is
    lost, nothing is added twice). Returns the records added."""
    shards = shard_files(results)
    if not shards:
        return 0
    for shard in shards:
        parts = heads_dir(shard)
        if parts.is_dir():
            heads_dir(results).mkdir(parents=True, exist_ok=True)
            for part in parts.glob("part-*.parquet"):
                part.rename(heads_dir(results) / part.name)
    have = done_keys(results)
    new = []
    for shard in shards:
        for r in load_records(shard):
            if record_key(r) not in have:
                have.add(record_key(r))
                new.append(r)
    end_line(results)
    with results.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in new)
    for shard in shards:
        shard.unlink()
        if heads_dir(shard).is_dir():
            for leftover in heads_dir(shard).iterdir():
                leftover.unlink()
            heads_dir(shard).rmdir()
    return len(new)
