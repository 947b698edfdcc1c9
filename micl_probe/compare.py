"""python -m micl_probe.compare A B: two result folders side by side.

    python -m micl_probe.compare reports/seed0 reports/seed1
    python -m micl_probe.compare reports/base reports/finetuned --out reports/compare    # + compare.md/.json

A and B are report folders (`attn_report --out`) or results.jsonl files. Printed, as Markdown: the settings in which
the two runs differ (from their manifest.json), each model and task's verdict in A and in B, and per model, task and
condition both accuracies (95% Wilson), the difference A − B on the queries both scored (Newcombe's paired 95%
interval), the exact McNemar p of those paired verdicts, and the answer row's attention on the demo images (% of the
row). Queries are paired when they are the same query (task, index, seed, episode pool, task content); a cell whose
queries differ (another seed) has n = 0 and no test. Models are matched by name; when each folder holds one model and
the names differ, those two are compared.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .core.errors import Parser, UsageError, one_line_errors
from .core.provenance import dumps, write_atomic
from .evaluation.compare import compare_runs
from .evaluation.statistics import Accuracy
from .evaluation.store import load_records, read_manifest, results_file


def parse(argv=None):
    ap = Parser(prog="python -m micl_probe.compare", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", metavar="A", help="a report folder or results.jsonl")
    ap.add_argument("b", metavar="B", help="another")
    ap.add_argument("--out", metavar="FOLDER", help="also write compare.md and compare.json there")
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return ap.parse_args(argv)


def differing_settings(a: str | Path, b: str | Path) -> list[str]:
    """'key: A's value / B's value' for every manifest setting in which two report folders differ."""
    ma, mb = (read_manifest(results_file(p).parent) or {} for p in (a, b))
    sa = {**ma.get("settings", {}), "n": ma.get("n")}
    sb = {**mb.get("settings", {}), "n": mb.get("n")}
    short = lambda v: (t if len(t := json.dumps(v)) <= 50 else t[:47] + "...")  # noqa: E731
    return [f"{k}: {short(sa.get(k))} / {short(sb.get(k))}" for k in dict.fromkeys(list(sa) + list(sb))
            if sa.get(k) != sb.get(k)]


def _pct(x: float) -> str:
    return "–" if x != x else f"{100 * x:.1f}"


def compare_markdown(a, b, result: dict, settings: list[str]) -> str:
    """The comparison as Markdown (what the command prints)."""
    (ma, mb) = result["models"]
    md = [f"# {a} (A) vs {b} (B)", ""]
    if ma != mb:
        md += [f"Models: A {', '.join(ma)}; B {', '.join(mb)}.", ""]
    md += ["Settings that differ (A / B): " + ("; ".join(settings) if settings else "none (or no manifest.json)"), ""]
    if result["verdicts"]:
        md += ["| model | task | verdict A | verdict B |", "|---|---|---|---|"]
        md += [f"| {v['model']} | {v['task']} | {v['a'] or '–'} | {v['b'] or '–'} |" for v in result["verdicts"]]
        md.append("")
    md += ["| model | task | condition | A | B | A − B (95% CI) | McNemar p | paired n | demo images A "
           "| demo images B |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        acc = lambda s, r=r: str(Accuracy(r[s]["correct"], r[s]["n"])) if r["n"] else "–"  # noqa: E731
        if r["n"]:
            lo, hi = r["ci"]
            diff, p = f"{100 * r['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]", f"{r['p']:.2g}"
        else:
            diff, p = "no common queries", "–"
        md.append(f"| {r['model']} | {r['task']} | {r['condition']} | {acc('a')} | {acc('b')} | {diff} | {p} | "
                  f"{r['n']} | {_pct(r['demo_image_a'])} | {_pct(r['demo_image_b'])} |")
    md += ["", "Accuracy in % with 95% Wilson intervals on the paired queries; A − B in points with Newcombe's paired "
           "interval; demo images: the answer row's attention on the demo images, % of the row (mean over layers, "
           "heads and the paired queries)."]
    return "\n".join(md) + "\n"


def main(argv=None):
    args = parse(argv)
    with one_line_errors(args.debug):
        for flag, path in (("A", args.a), ("B", args.b)):
            if not results_file(path).is_file():
                raise UsageError(f"{flag} {path}: no results.jsonl there (give a report folder written by "
                                 "python -m micl_probe.attn_report --out, or a results.jsonl)")
        result = compare_runs(load_records(args.a), load_records(args.b))
        md = compare_markdown(args.a, args.b, result, differing_settings(args.a, args.b))
        print(md, end="")
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            write_atomic(out / "compare.md", md)
            write_atomic(out / "compare.json", dumps(result, indent=1))


if __name__ == "__main__":
    main()
