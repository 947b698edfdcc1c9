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
warning that names its line number and what is wrong; every other line is kept. A record whose per-head arrays are
gone (a part deleted or cut short) is not done: a rerun computes it again, and the newer line of a key wins. Lines
are strict JSON: a NaN (a layer a hybrid decoder does not measure) is written as null and read back as NaN. Older
files with the arrays inline in the JSON lines read as before.

One process writes a results file at a time (`writing`): a second run on the same file stops with one line.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np

from ..core.provenance import dumps
from .frames import HEADS, heads_frame, records_frame

RECORD_KEY = ("model", "task", "condition", "index")  # with the weights and the setup: what makes a record unique
HEAD_ARRAYS = tuple(HEADS)  # the [layer][head] arrays of a record: in the columnar files
COMPACT_AFTER = 64  # parts in a heads folder before `compact_heads` folds them into one
NUMBERS = ("visual_share", "visual_share_by_layer", "image_share", "special_share", "looks_at",
           "matching_demo_image", "other_demo_image")  # float fields: NaN is written as null and read back as NaN


def record_key(r: dict) -> tuple:
    """What makes a record unique: model, weights, task, condition, index and the digest of everything else that
    made it ("setup": the harness's settings, the prompt's shots, the intervention's artifact; see
    `evaluation.harness`). A record written before setups were digested has none and is never reused."""
    return (r["model"], r.get("weights"), r["task"], r["condition"], r["index"], r.get("setup"))


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


class Records(list):
    """Harness records (a list of dicts, one per episode) with tidy views (pandas): `to_frame()` (a row per record,
    settings as columns) and `heads_frame()` (a row per record x layer x head). `source`: the results file they
    were read from; `heads_frame` reads the per-head arrays from beside it for the records that do not carry them."""

    def __init__(self, records=(), source: str | Path | None = None):
        super().__init__(records)
        self.source = Path(source) if source else None

    def to_frame(self):
        """One row per record (`evaluation.frames.records_frame`)."""
        return records_frame(self)

    def heads_frame(self):
        """One row per record x layer x head (`evaluation.frames.heads_frame`), the arrays read when missing."""
        lacking = [r for r in self if "visual_share" in r and not all(n in r for n in HEAD_ARRAYS)]
        if lacking and self.source is not None and self.source.is_file():
            attach_heads(self.source, lacking)
        return heads_frame(self)


def results_file(path: str | Path) -> Path:
    """A results file, or the results.jsonl in a report folder."""
    path = Path(path)
    return path / "results.jsonl" if path.is_dir() else path


def load_records(results: str | Path, heads: bool = False) -> Records:
    """The records of a results file (or of the results.jsonl in a report folder), one per key (the last line of a
    repeated key), read line by line; a line that is not a record is skipped with a warning naming it (and
    recomputed by a rerun). `heads`: attach the per-head arrays as numpy [layer, head] arrays, read from the
    columnar files for these records only. A `Records` list: `.to_frame()`, `.heads_frame()` (pandas)."""
    results = results_file(results)
    if not results.is_file():
        raise FileNotFoundError(f"{results}: no results file there (a report folder holds results.jsonl; "
                                "python -m micl_probe.attn_report --out FOLDER writes one)")
    by_key, skipped = {}, []
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
            by_key[record_key(r)] = _nan_back(r)  # a recomputed record (newer line) replaces the older
    records = list(by_key.values())
    if skipped:
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.warn(f"{results}: skipped unreadable line(s): {'; '.join(skipped[:5])}{more}; those episodes are "
                      "recomputed by a rerun", stacklevel=2)
    if heads:
        attach_heads(results, records)
    return Records(records, source=results)


def attach_heads(results: Path, records: list[dict]) -> None:
    """Into each record (in place), its per-head arrays from the columnar files: only these records' rows are read
    (the last row of a key wins); records written inline by older versions keep their lists."""
    parts = _parts(results)
    if not records or not parts:
        return
    import pyarrow.dataset as ds

    wanted = {_key_text(r): r for r in records}
    table = ds.dataset(parts, format="parquet").to_table(filter=ds.field("key").isin(list(wanted)))
    keys = table.column("key").to_pylist()
    layers, n_heads = table.column("layers").to_numpy(), table.column("heads").to_numpy()
    for name in HEAD_ARRAYS:
        if name not in table.column_names:
            continue
        column = table.column(name).combine_chunks()
        values, offsets = column.values.to_numpy(zero_copy_only=False), column.offsets.to_numpy()
        for i, key in enumerate(keys):
            wanted[key][name] = values[offsets[i]:offsets[i + 1]].reshape(layers[i], n_heads[i])


def _parts(results: Path) -> list[str]:
    """The finished parquet parts of a results file (a `.tmp` left by a crash is not one)."""
    folder = heads_dir(results)
    return sorted(str(p) for p in folder.glob("part-*.parquet")) if folder.is_dir() else []


def head_keys(results: Path) -> set[str]:
    """The keys (as text) whose per-head arrays are in the columnar files: only the key column is read."""
    parts = _parts(results)
    if not parts:
        return set()
    import pyarrow.dataset as ds

    return set(ds.dataset(parts, format="parquet").to_table(columns=["key"]).column("key").to_pylist())


def _nan_back(r: dict) -> dict:
    """null -> NaN in a record's float fields (strict JSON has no NaN)."""
    def back(v):
        if v is None:
            return math.nan
        if isinstance(v, list):
            return [back(x) for x in v]
        if isinstance(v, dict):
            return {k: back(x) for k, x in v.items()}
        return v
    for name in NUMBERS + HEAD_ARRAYS:
        if name in r:
            r[name] = back(r[name])
    return r


def append_records(results: Path, chunk: list[dict]) -> None:
    """Append a chunk of records: their per-head arrays first, as one columnar part (taken out of the records),
    then one JSON line per record. A crash between the two leaves arrays without a line: ignored, recomputed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = [{k: np.asarray(r.pop(k), dtype=np.float32) for k in HEAD_ARRAYS if k in r} for r in chunk]
    with_arrays = [(r, a) for r, a in zip(chunk, arrays) if a]
    for r, _ in with_arrays:
        r["head_arrays"] = True  # a rerun checks they are there
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
        f.writelines(dumps(r) + "\n" for r in chunk)


def compact_heads(results: Path, after: int = COMPACT_AFTER) -> None:
    """Fold the parts of a heads folder into one file once there are more than `after` (one part a chunk would
    otherwise leave thousands): streamed part by part, the new file complete before the old parts go."""
    parts = [Path(p) for p in _parts(results)]
    if len(parts) <= after:
        return
    folder = heads_dir(results)
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
    """The keys of the finished records of a results file: a record whose per-head arrays are missing (a deleted or
    lost part) is not finished, so a rerun computes it again."""
    if results is None or not results.is_file():
        return set()
    records = load_records(results)
    have = head_keys(results) if any(r.get("head_arrays") for r in records) else set()
    return {record_key(r) for r in records if not r.get("head_arrays") or _key_text(r) in have}


@contextlib.contextmanager
def writing(results: Path):
    """Hold the lock that makes this process the only writer of `results` (a `.<name>.lock` file beside it, held
    with flock while the block runs): a second run on the same file stops with one line instead of interleaving
    its records with this one's."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    lock = results.with_name(f".{results.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            who = f.read().strip() or "another process"
            raise InUse(f"{results} is being written by {who}; wait for that run to finish, or write to another "
                        "folder") from None
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class InUse(ValueError):
    """A results file another process is writing."""


def check_idle(results: Path) -> None:
    """InUse unless nobody holds `results`' lock (a shard still running when its merge is asked for)."""
    with writing(results):
        pass


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
        check_idle(shard)
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
        f.writelines(dumps(r) + "\n" for r in new)
    for shard in shards:
        shard.unlink()
        shard.with_name(f".{shard.name}.lock").unlink(missing_ok=True)
        if heads_dir(shard).is_dir():
            for leftover in heads_dir(shard).iterdir():
                leftover.unlink()
            heads_dir(shard).rmdir()
    return len(new)


# --- the manifest of a report folder ---------------------------------------------------------------------------------
MANIFEST = "manifest.json"


def read_manifest(folder: Path) -> dict | None:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ValueError(f"{path} is not JSON (edited or cut short?); delete it, or the folder, to start over") \
            from None


def check_manifest(folder: Path, settings: dict, flag: str = "--out") -> None:
    """ValueError (one line) when `folder` holds a run made with other `settings` than these (the keys both
    name): its records would not be this run's, and its report would be overwritten by one of other settings."""
    old = read_manifest(folder)
    if old is None:
        return
    before = old.get("settings", {})
    changed = [k for k in settings if k in before and before[k] != settings[k]]
    if changed:
        said = "; ".join(f"{k}: {_short(before[k])} there, {_short(settings[k])} now" for k in changed[:3])
        raise ValueError(f"{flag} {folder} holds a run made with other settings ({said}"
                         f"{'; …' if len(changed) > 3 else ''}): write to another {flag}, or delete that folder "
                         "to start over")


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def write_manifest(folder: Path, manifest: dict) -> Path:
    """`folder/manifest.json`, written whole (strict JSON)."""
    from ..core.provenance import write_atomic

    return write_atomic(Path(folder) / MANIFEST, dumps(manifest, indent=1))
