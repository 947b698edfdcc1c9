"""python -m micl_probe.attn_report: does the model look at its demonstration images?

With no arguments: every shipped organism, a default task set, conditions zero-shot / no-image / 4-shot,
40 queries each, on the CPU. Writes a self-contained report folder:

    reports/attn_report/
      report.html      figures inline, tables (open in a browser)
      report.md        the same in Markdown, figures linked
      results.json     accuracy table + settings
      results.jsonl    one record per episode (append-only: a rerun resumes where it stopped)
      fig_*.png/.pdf   every figure

Examples:
    python -m micl_probe.attn_report --model organism:text-shortcut --tasks outlier shape_count --n 100
    python -m micl_probe.attn_report --model /models/qwen2-vl-2b --device cuda --conditions zero-shot 4-shot 8-shot
    python -m micl_probe.attn_report --model organism:true-micl --tasks outlier --conditions 4-shot retrieved-4-shot \
        4-shot+dara 4-shot+alpha=2 zero-shot+mtv --dara runs/dara_outlier --mtv runs/mtv runs/mtv_heads --alphas 2

Interventions: a condition "<condition>+<name>" runs under the named intervention: "dara" (factors saved by
`DARA.save`, --dara), "mtv" (MTV means and head mask saved by `TaskVector.save`, --mtv), "alpha=<a>" (fixed factor a on
every demo image in the first decoder layer, --alphas). Artifacts are checked against the model they are used with.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import time
from pathlib import Path

import torch

from . import plots
from .analysis import accuracy_vs_attention, head_predictiveness
from .evaluate import Accuracy
from .harness import accuracy_table, run
from .loading import load
from .organisms import as_trained, shipped
from .tasks import task_names

DEFAULT_TASKS = ["novel_binding", "outlier", "clock_math", "shape_count"]
DEFAULT_CONDITIONS = ["zero-shot", "no-image", "4-shot"]


def parse(argv=None):
    ap = argparse.ArgumentParser(prog="python -m micl_probe.attn_report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", help="hub ids, local folders or organism:NAME "
                    "(default: every shipped organism)")
    ap.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS, choices=task_names() + task_names(shortcut=True),
                    metavar="TASK", help=f"tasks (default: {' '.join(DEFAULT_TASKS)}); any of micl_probe.tasks")
    ap.add_argument("--conditions", nargs="+", default=DEFAULT_CONDITIONS,
                    help="zero-shot, no-image, shuffled-answers, <k>-shot, retrieved-<k>-shot, each optionally "
                         "+dara / +mtv / +alpha=<a> (default: %(default)s)")
    ap.add_argument("--n", type=int, default=40, help="query episodes per task and condition (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the query episodes (default: %(default)s)")
    ap.add_argument("--out", default="reports/attn_report", help="output folder (default: %(default)s)")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cpu)")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="model dtype")
    ap.add_argument("--batch-size", type=int, default=20, help="episodes per forward pass (default: %(default)s)")
    ap.add_argument("--no-attention", action="store_true", help="accuracy only")
    ap.add_argument("--dara", metavar="PATH", help="DARA factors (DARA.save) for +dara conditions")
    ap.add_argument("--mtv", nargs=2, metavar=("MEANS", "HEADS"), help="MTV means and head mask (TaskVector.save) "
                    "for +mtv conditions")
    ap.add_argument("--alphas", nargs="+", type=float, default=[], help="factors for +alpha=<a> conditions")
    return ap.parse_args(argv)


def interventions_for(loaded, args) -> dict:
    """The named interventions the flags ask for, checked against `loaded`."""
    from .dara import DARA
    from .dara_train import alpha_sweep
    from .mtv import TaskVector, injection

    found = alpha_sweep(loaded, args.alphas) if args.alphas else {}
    if args.dara:
        found["dara"] = DARA.load(args.dara, loaded.model, loaded.adapter).on(loaded.model, kernel="eager")
    if args.mtv:
        means, heads = (TaskVector.load(p, loaded) for p in args.mtv)
        found["mtv"] = injection(loaded, means.mean, heads.values)
    return found


def _img(path: Path) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}" style="max-width:100%">'


def write_report(out: Path, records: list[dict], settings: dict, seconds: float) -> Path:
    table = accuracy_table(records)
    figures = {"fig_accuracy": plots.accuracy_bars(records)}
    if "visual_share" in records[0]:
        figures["fig_visual_share"] = plots.visual_share_bars(records)
        figures["fig_layer_share"] = plots.layer_share_curves(records)
        cond = next((c for c in settings["conditions"] if c.endswith("-shot") and c != "zero-shot"),
                    settings["conditions"][-1])
        figures["fig_head_heatmap"] = plots.head_heatmaps(records, cond)
        for model in settings["models"]:
            mine = [r for r in records if r["model"] == model]
            stats = accuracy_vs_attention(mine)
            settings.setdefault("accuracy_vs_attention", {})[model] = stats
            slug = model.replace("organism:", "").replace("/", "_")
            figures[f"fig_acc_vs_attention_{slug}"] = plots.accuracy_vs_attention(stats, head_predictiveness(mine),
                                                                                 title=None)
    for stem, fig in figures.items():
        plots.save(fig, out / stem)
    (out / "results.json").write_text(json.dumps({"settings": settings, "seconds": round(seconds, 1),
                                                  "accuracy": table}, indent=1))

    conditions = settings["conditions"]
    md = ["# Does the model look at its demonstration images?", "",
          f"Models: {', '.join(settings['models'])}. Tasks: {', '.join(settings['tasks'])}. "
          f"{settings['n']} query episodes per task and condition (seed {settings['seed']}). "
          f"Accuracy: greedy exact match, % with 95% Wilson CI. Visual share: attention of the answer position on "
          f"image tokens, mean over layers and heads. Run time {seconds:.0f} s.", ""]
    for model, tasks in table.items():
        md += [f"## {model}", "", "| task | " + " | ".join(conditions) + " |", "|---|" + "---|" * len(conditions)]
        for task, cells in tasks.items():
            row = [f"{Accuracy(cells[c]['correct'], cells[c]['n'])} · vis {cells[c]['visual_share']:.2f}"
                   if c in cells else "" for c in conditions]
            md.append(f"| {task} | " + " | ".join(row) + " |")
        md.append("")
    for model, stats in settings.get("accuracy_vs_attention", {}).items():
        sp, lg = stats["spearman"], stats["logistic"]
        md += [f"Accuracy vs visual attention, {model}: Spearman rho {sp['rho']:.2f} (p {sp['p']:.1e}, "
               f"n {stats['n']}), logistic slope {lg['slope']:.2f} per s.d. of visual share.", ""]
    md += ["## Figures", ""] + [f"![{stem}]({stem}.png)" for stem in figures]
    (out / "report.md").write_text("\n".join(md) + "\n")

    body = []
    for line in md:
        if line.startswith("!["):
            stem = line[line.index("(") + 1:-5]
            body.append(f"<figure>{_img(out / (stem + '.png'))}<figcaption>{stem}</figcaption></figure>")
        elif line.startswith("| ") and "---|" not in line:
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            tag = "th" if line.startswith("| task") else "td"
            body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line and "---|" not in line:
            body.append(f"<p>{html.escape(line)}</p>")
    page, in_table = [], False
    for b in body:
        if b.startswith("<tr>") and not in_table:
            page.append("<table>")
            in_table = True
        if not b.startswith("<tr>") and in_table:
            page.append("</table>")
            in_table = False
        page.append(b)
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "font-size:14px}th{background:#f3f3f3}figure{margin:1.5em 0}")
    (out / "report.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>micl_probe "
                                     f"report</title><style>{style}</style></head><body>"
                                     + "\n".join(page) + "</body></html>\n")
    return out / "report.html"


def main(argv=None):
    args = parse(argv)
    models = args.model or [f"organism:{name}" for name in shipped()]
    if not models:
        raise SystemExit("no shipped organism found; pass --model or train one with "
                         "python -m micl_probe.organisms.train --recipe true-micl")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    settings = {"models": models, "tasks": args.tasks, "conditions": args.conditions, "n": args.n,
                "seed": args.seed, "device": args.device or "cpu"}
    t0 = time.time()
    records = []
    for name in models:
        with as_trained(name):  # an organism sees novel_binding drawn as it was trained on it
            loaded = load(name, device=args.device, dtype=dtype)
            records += run(loaded, args.tasks, args.conditions, n=args.n, seed=args.seed,
                           batch_size=args.batch_size, attention=not args.no_attention,
                           results=out / "results.jsonl", interventions=interventions_for(loaded, args))
    page = write_report(out, records, settings, time.time() - t0)
    print(f"report: {page}")


if __name__ == "__main__":
    main()
