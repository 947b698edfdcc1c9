"""The report folder: figures (PNG + PDF), report.md, a self-contained report.html (figures inline) and results.json.

    write_report(out, records, settings, seconds, summarise(records))      # micl_probe.evaluation.summarise

Rendering only: every number comes from `evaluation.summarise` (verdicts, accuracy table, where the answer looks,
the right-demo test, accuracy vs attention). The page opens with the verdict per model and task. The HTML is the
Markdown rendered by markdown-it (CommonMark + tables), each figure's PNG inlined as a data URI.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from ..evaluation.statistics import Accuracy
from ..evaluation.verdicts import IMITATES, INCONCLUSIVE, READS, RULE
from . import plots

STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         ".reads{color:#1a7f37}.imitates{color:#b35900}.inconclusive{color:#666}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
         "font-size:14px}th{background:#f3f3f3}figure{margin:1.5em 0}img{max-width:100%}")


PART_NAMES = {"demo_image": "demo images", "query_image": "query image", "demo_text": "demo text",
              "query_text": "query text", "special": "special tokens", "other": "other"}


def report_figures(records: list[dict], settings: dict, attention_stats: dict) -> dict:
    """{stem: Figure} for the report: accuracy, and (when attention was recorded) visual share per condition, per
    layer, per head, and accuracy vs attention per model."""
    figures = {"fig_accuracy": plots.accuracy_bars(records)}
    if "visual_share" in records[0]:
        figures["fig_visual_share"] = plots.visual_share_bars(records)
        figures["fig_layer_share"] = plots.layer_share_curves(records)
        cond = next((c for c in settings["conditions"] if c.endswith("-shot") and c != "zero-shot"),
                    settings["conditions"][-1])
        figures["fig_head_heatmap"] = plots.head_heatmaps(records, cond)
        for model, (stats, head_rho) in attention_stats.items():
            slug = model.replace("organism:", "").replace("/", "_")
            figures[f"fig_acc_vs_attention_{slug}"] = plots.accuracy_vs_attention(stats, head_rho, title=None)
    return figures


def verdict_markdown(verdict_rows: list[dict]) -> list[str]:
    """The verdict table: one row per model and task, with the numbers behind it and the rule that decides it."""
    if not verdict_rows:
        return ["## Verdict", "", "No verdict: it needs a k-shot condition and the no-image control in the same run "
                "(e.g. `--conditions no-image 4-shot`).", ""]
    ks = {v["k"] for v in verdict_rows}
    k_head = f"{ks.pop()}-shot" if len(ks) == 1 else "k-shot"
    md = ["## Verdict", "", RULE, "",
          f"| model | task | verdict | {k_head} | no-image | difference (95% CI) | McNemar p | chance |",
          "|---|---|---|---|---|---|---|---|"]
    for v in verdict_rows:
        acc = lambda c: str(Accuracy(c["correct"], c["n"]))  # noqa: E731
        lo, hi = v["ci"]
        chance = "–" if v["chance"] is None else f"{100 * v['chance']:.1f}"
        k = "" if k_head != "k-shot" else f" ({v['k']}-shot)"
        md.append(f"| {v['model']} | {v['task']} | **{v['verdict']}** | {acc(v['k_shot'])}{k} "
                  f"| {acc(v['no_image'])} | {100 * v['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] "
                  f"| {v['p']:.2g} | {chance} |")
    n = {v["n"] for v in verdict_rows}
    return md + ["", "Accuracy and chance in %, with 95% Wilson intervals; difference: k-shot minus no-image on the "
                 "same queries, in points, with Newcombe's paired 95% interval"
                 + (f"; n = {n.pop()} paired queries per row." if len(n) == 1 else "."), ""]


def looks_markdown(where: dict, right: list[dict]) -> list[str]:
    """Where the answer row's attention goes, per model and condition; and, for novel binding, the demos of the
    query's class against the others."""
    if not where:
        return []
    parts = list(PART_NAMES)
    md = ["## Where the answer looks", "",
          "Attention of the answer position (the one whose logits give the first answer token), % of the row, mean "
          "over layers, heads, tasks and episodes.", "",
          "| model | condition | " + " | ".join(PART_NAMES[p] for p in parts) + " |", "|---|---|" + "---|" * len(parts)]
    for model, conditions in where.items():
        for condition, cell in conditions.items():
            md.append(f"| {model} | {condition} | " + " | ".join(f"{100 * cell.get(p, 0.0):.1f}" for p in parts)
                      + " |")
    md.append("")
    if right:
        md += ["### Does it look at the right demo?", "",
               "Novel binding: the image share (% of the answer row) of one demo of the query's class against one "
               "demo of the other class; p: Wilcoxon signed-rank test on the paired episodes.", "",
               "| model | task | condition | query's class | other class | p | n |", "|---|---|---|---|---|---|---|"]
        md += [f"| {r['model']} | {r['task']} | {r['condition']} | {100 * r['matching']:.2f} | "
               f"{100 * r['other']:.2f} | {r['p']:.2g} | {r['n']} |" for r in right]
        md.append("")
    return md


def report_markdown(summary: dict, settings: dict, seconds: float, stems: list[str]) -> str:
    conditions = settings["conditions"]
    table, attention_stats = summary["accuracy"], summary["accuracy_vs_attention"]
    md = ["# Does the model look at its demonstration images?", ""] + verdict_markdown(summary["verdicts"]) \
        + looks_markdown(summary["where_it_looks"], summary["right_demo"]) + [
          "## Accuracy and attention by condition", "",
          f"Models: {', '.join(settings['models'])}. Tasks: {', '.join(settings['tasks'])}. "
          f"{settings['n']} query episodes per task and condition (seed {settings['seed']}). "
          f"Accuracy: greedy exact match, % with 95% Wilson CI. Visual share: attention of the answer position on "
          f"image tokens, mean over layers and heads. Run time {seconds:.0f} s.", ""]
    for model, tasks in table.items():
        md += [f"### {model}", "", "| task | " + " | ".join(conditions) + " |", "|---|" + "---|" * len(conditions)]
        for task, cells in tasks.items():
            row = [f"{Accuracy(cells[c]['correct'], cells[c]['n'])} · vis {cells[c]['visual_share']:.2f}"
                   if c in cells else "" for c in conditions]
            md.append(f"| {task} | " + " | ".join(row) + " |")
        md.append("")
    for model, (stats, _) in attention_stats.items():
        sp, lg = stats["spearman"], stats["logistic"]
        md += [f"Accuracy vs visual attention, {model}: Spearman rho {sp['rho']:.2f} (p {sp['p']:.1e}, "
               f"n {stats['n']}), logistic slope {lg['slope']:.2f} per s.d. of visual share.", ""]
    md += ["## Figures", ""]
    for stem in stems:
        md += [f"![{stem}]({stem}.png)", ""]
    return "\n".join(md) + "\n"


def report_html(markdown: str, folder: Path) -> str:
    """`markdown` as one self-contained page: every image link to a PNG in `folder` inlined, under a caption."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown)

    def inline(m: re.Match) -> str:
        src, alt = m.group(1), m.group(2)
        data = base64.b64encode((folder / src).read_bytes()).decode()
        return f'<figure><img src="data:image/png;base64,{data}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'

    body = re.sub(r'<p><img src="([^"]+\.png)" alt="([^"]*)" /></p>', inline, body)
    for verdict, css in ((READS, "reads"), (IMITATES, "imitates"), (INCONCLUSIVE, "inconclusive")):
        body = body.replace(f"<strong>{verdict}</strong>", f'<strong class="{css}">{verdict}</strong>')
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>micl_probe report</title>"
            f"<style>{STYLE}</style></head><body>\n{body}</body></html>\n")


def write_report(out: Path, records: list[dict], settings: dict, seconds: float, summary: dict) -> Path:
    """Figures, results.json, report.md and report.html into `out`; returns the page's path.
    `summary`: `evaluation.summarise(records)`."""
    attention_stats = summary["accuracy_vs_attention"]
    figures = report_figures(records, settings, attention_stats)
    for stem, fig in figures.items():
        plots.save(fig, out / stem)
    results = {"settings": settings | {"accuracy_vs_attention": {m: s for m, (s, _) in attention_stats.items()}},
               "seconds": round(seconds, 1), "verdicts": summary["verdicts"], "verdict_rule": RULE,
               "where_it_looks": summary["where_it_looks"], "right_demo": summary["right_demo"],
               "accuracy": summary["accuracy"]}
    if not attention_stats:
        results["settings"].pop("accuracy_vs_attention")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    md = report_markdown(summary, settings, seconds, list(figures))
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(report_html(md, out))
    return out / "report.html"
