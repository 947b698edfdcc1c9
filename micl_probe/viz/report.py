"""The report folder: figures (PNG + PDF), report.md, a self-contained report.html (figures inline) and results.json.

    write_report(out, records, settings, seconds, table, attention_stats, verdict_rows)

Rendering only: the verdicts (`evaluation.verdicts`), the accuracy table (`evaluation.accuracy_table`) and the
accuracy-vs-attention statistics (`evaluation.accuracy_vs_attention`, `head_predictiveness`) are computed by the
caller. The page opens with the verdict per model and task. The HTML is the Markdown
rendered by markdown-it (CommonMark + tables), each figure's PNG inlined as a data URI.
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


def report_markdown(table: dict, attention_stats: dict, settings: dict, seconds: float, stems: list[str],
                    verdict_rows: list[dict] | None = None) -> str:
    conditions = settings["conditions"]
    md = ["# Does the model look at its demonstration images?", ""] + verdict_markdown(verdict_rows or []) + [
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


def write_report(out: Path, records: list[dict], settings: dict, seconds: float, table: dict,
                 attention_stats: dict, verdict_rows: list[dict] | None = None) -> Path:
    """Figures, results.json, report.md and report.html into `out`; returns the page's path.
    `attention_stats`: {model: (accuracy_vs_attention stats, head_predictiveness [layer, head])};
    `verdict_rows`: `evaluation.verdicts(records)`."""
    figures = report_figures(records, settings, attention_stats)
    for stem, fig in figures.items():
        plots.save(fig, out / stem)
    results = {"settings": settings | {"accuracy_vs_attention": {m: s for m, (s, _) in attention_stats.items()}},
               "seconds": round(seconds, 1), "verdicts": verdict_rows or [], "verdict_rule": RULE,
               "accuracy": table}
    if not attention_stats:
        results["settings"].pop("accuracy_vs_attention")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    md = report_markdown(table, attention_stats, settings, seconds, list(figures), verdict_rows)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(report_html(md, out))
    return out / "report.html"
