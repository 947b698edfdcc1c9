"""What the experiment drivers share: loading an organism by bare name, accuracy cells, writing a result set."""

from __future__ import annotations

from pathlib import Path

from micl_probe import load
from micl_probe.core.provenance import dumps, write_atomic
from micl_probe.evaluation import Accuracy
from micl_probe.viz import plots


def load_model(name: str):
    """A shipped organism by its bare name ("true-micl"); folders, hub ids and "organism:..." as they are."""
    return load(name if "/" in name or ":" in name else f"organism:{name}")


def acc(verdicts) -> dict:
    """{"correct", "n", "acc", "ci"} of a bool[n] verdict tensor."""
    return Accuracy(int(verdicts.sum()), len(verdicts)).as_dict()


def write_outputs(out: Path, stem: str, results: dict, figures: dict, markdown: str) -> None:
    """`out/<stem>_results.json`, every figure {name: figure} as PNG + PDF, and `out/<stem>_table.md`."""
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / f"{stem}_results.json", dumps(results, indent=1))  # strict JSON: NaN as null
    for name, fig in figures.items():
        plots.save(fig, out / name)
    (out / f"{stem}_table.md").write_text(markdown)
