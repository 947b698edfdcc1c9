"""What made a number: content digests of settings, tensors, folders and artifacts, the versions in use, and the
tag that lets an intervention say what it is.

    digest({"seed": 0, "shots": 4}, tensor)      # a short stable hash of settings and tensors
    folder_digest("/data/VL-ICL/clevr")          # a task folder's content
    tagged(factory, digest(...))                 # an intervention factory that knows which artifact it runs
    versions()                                   # {"micl_probe": …, "torch": …, "transformers": …, "python": …}

The harness keys every record by these (`evaluation.harness`), so a record is reused only when everything that made
it matches; artifacts (DARA, task vectors) store them beside their tensors.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import uuid
import warnings
from pathlib import Path

import torch

FINGERPRINT = "fingerprint"  # the attribute an intervention factory carries: what it runs, as a digest


def digest(*parts) -> str:
    """A 16-hex-digit hash of settings (JSON-able values, keys sorted), tensors (dtype, shape and bytes) and
    strings, in order."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            t = part.detach().cpu().contiguous()
            h.update(f"tensor{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def folder_digest(folder: str | Path, full: tuple[str, ...] = (".json", ".jsonl", ".txt")) -> str:
    """A folder's content: every file's relative path and size, and the bytes of its text files (`full`: the
    support and query lists, where answers and file names live). Images are hashed by path and size only, so a
    benchmark folder of gigabytes hashes in a moment; an image edited in place at the same size is not seen."""
    folder = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        h.update(f"{rel}\0{path.stat().st_size}\0".encode())
        if path.suffix.lower() in full:
            h.update(file_digest(path).encode())
    return h.hexdigest()[:16]


def tagged(factory, fingerprint: str):
    """`factory` (a `layouts -> context manager` intervention) carrying `fingerprint`: the harness keys records of
    conditions run under it by this, so records of another artifact are never reused."""
    setattr(factory, FINGERPRINT, fingerprint)
    return factory


def intervention_fingerprint(factory) -> str:
    """The fingerprint `tagged` gave `factory`; for an untagged one (a user's own), a fresh id each call: its records
    are never reused, since nothing says what it runs."""
    return getattr(factory, FINGERPRINT, None) or f"untagged-{uuid.uuid4().hex[:12]}"


@torch.no_grad()
def weights_fingerprint(model) -> str:
    """A short hash of the model's parameters: records of a retrained model under the same name are not reused. It
    hashes each parameter's name, shape, dtype, the bytes of 64 evenly spaced values and its float64 sum rounded to
    8 significant digits (any edit shows; the rounding keeps the hash independent of how the sum is parallelised:
    thread count, device), so every process of a sharded run computes the same one. The sum runs over chunks of
    2^24 values, so no float64 copy of a whole (embedding-sized) parameter is made on the model's device."""
    h = hashlib.sha1()
    for name, p in model.named_parameters():
        flat = p.detach().flatten()
        sample = flat[:: max(1, flat.numel() // 64)][:64]
        total = sum(float(chunk.sum(dtype=torch.float64)) for chunk in flat.split(2**24))
        h.update(f"{name}{tuple(p.shape)}{p.dtype}{total:.7e}".encode())
        h.update(sample.float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def made_for(loaded, **extra) -> dict:
    """What an artifact (DARA factors, a task vector, a LoRA adapter) records about the model it was made for, plus
    `extra` (task, shots, prompt style, instruction, training settings)."""
    adapter = loaded.adapter
    return {"model": loaded.name or type(loaded.model).__name__, "weights": weights_fingerprint(loaded.model),
            "family": adapter.family, "n_layers": adapter.n_layers(loaded.model), **extra}


def check_made_for(meta: dict, loaded, what: str) -> None:
    """ValueError (one line) when the artifact described by `meta` was made for another model than `loaded`: other
    weights under another name. The same name with other weights (retrained, or loaded in another dtype) warns."""
    weights = meta.get("weights")
    if not weights or weights == weights_fingerprint(loaded.model):
        return
    if meta.get("model") == loaded.name:
        warnings.warn(f"{what} was made for {meta.get('model')} with other weights ({weights}; now "
                      f"{weights_fingerprint(loaded.model)}: retrained, or another dtype); its effect may differ",
                      stacklevel=3)
        return
    raise ValueError(f"{what} was made for {meta.get('model')!r}, not {loaded.name!r} (other weights): train one "
                     f"for this model (python -m micl_probe.train … --model {loaded.name})")


def setting_mismatches(meta: dict, **now) -> list[str]:
    """The settings an artifact was made under that differ from `now` (task, prompt style, instruction …), one
    phrase each: using it there is allowed, but the user should know."""
    said = []
    for key, value in now.items():
        made = meta.get(key)
        if made is not None and value is not None and made != value:
            said.append(f"{key} {made!r} (used with {value!r})")
    return said


def versions() -> dict:
    import importlib.metadata

    import transformers

    try:
        ours = importlib.metadata.version("micl_probe")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        ours = "source"
    return {"micl_probe": ours, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def finite(values: torch.Tensor, what: str) -> torch.Tensor:
    """`values`, or ValueError naming `what` when any is NaN or infinite."""
    if values.is_floating_point() and not torch.isfinite(values).all():
        bad = int((~torch.isfinite(values)).sum())
        raise ValueError(f"{what}: {bad} of {values.numel()} values are NaN or infinite; retrain with a smaller "
                         "learning rate (or check the inputs it was computed from)")
    return values


def finite_number(value, what: str) -> float:
    """`value` as a float, or ValueError naming `what` unless it is a finite number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return number


def strict_json(value):
    """`value` with every NaN or infinity as None (JSON's null), so `json.dumps(..., allow_nan=False)` writes strict
    JSON that every parser reads."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def dumps(value, **kw) -> str:
    """Strict JSON (NaN and infinities as null)."""
    return json.dumps(strict_json(value), allow_nan=False, **kw)


def artifact_paths(path: str | Path) -> tuple[Path, Path]:
    """(PATH.json, PATH.safetensors) of an artifact saved at `path`: a name with dots keeps them ("dara_v0.1" ->
    dara_v0.1.json), and a path given with either suffix names the same pair."""
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".json"), path.with_name(path.name + ".safetensors")


def read_artifact(path: str | Path, tensor: str, info_keys: tuple[str, ...], saved_by: str, other: str
                  ) -> tuple[dict, torch.Tensor, Path]:
    """(the JSON, the tensor named `tensor`, the JSON's path) of an artifact saved at `path` (`artifact_paths`); one
    line naming the fix when a file is missing (`saved_by`: what writes it) or it holds another kind of artifact
    (`other`: where that one goes)."""
    from safetensors.torch import load_file

    info_path, tensor_path = artifact_paths(path)
    for f in (info_path, tensor_path):
        if not f.is_file():
            raise FileNotFoundError(f"no {f}: give the path {saved_by} was given")
    info = json.loads(info_path.read_text())
    tensors = load_file(str(tensor_path))
    if tensor not in tensors or any(k not in info for k in info_keys):
        raise ValueError(f"{tensor_path} holds no {tensor} ({other})")
    return info, tensors[tensor], info_path


def write_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` whole or not at all (a temporary file beside it, renamed over it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def unwritable(folder: str | Path) -> str | None:
    """Why files cannot be written into `folder` (or the folders that would be made for it), or None: checked
    before hours of work, by writing and removing a probe file in its nearest existing ancestor (nothing is
    created)."""
    folder = Path(folder).absolute()
    existing = next((p for p in [folder, *folder.parents] if p.exists()), None)
    if existing is None or not existing.is_dir():
        return f"{existing} is a file, not a folder"
    probe = existing / f".micl_probe_write_check_{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        return f"cannot write in {existing} ({e.strerror or e})"
    return None
