"""The report folder: figures (PNG + PDF), report.md, a self-contained report.html (figures inline) and results.json.

    write_report(out, records, settings, seconds, summarise(records))      # micl_probe.evaluation.summarise

Rendering only: every number comes from `evaluation.summarise` (verdicts, accuracy table, where the answer looks,
the right-demo test, the heads whose demo-image attention predicts a correct answer). The page opens with the
verdict per model and task. The HTML is the Markdown rendered by markdown-it (CommonMark + tables), each figure's
PNG inlined as a data URI.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np

from ..core.provenance import dumps, write_atomic
from ..evaluation.conditions import pool_size
from ..evaluation.statistics import Accuracy
from ..evaluation.verdicts import COPIES, IMITATES, INCONCLUSIVE, READS, RULE, UNUSED, WORSE
from ..tasks import chance
from . import plots

STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         ".reads{color:#1a7f37}.imitates,.copies{color:#b35900}.worse{color:#b3261e}.unused,.inconclusive{color:#666}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
         "font-size:14px}th{background:#f3f3f3}figure{margin:1.5em 0}img{max-width:100%}")


CAPTIONS = {
    "fig_accuracy": "Accuracy per task and condition, one panel per model, in % (95% Wilson intervals; dashed: "
                    "chance). A model that reads the demo images is far above its no-image bar at k shots.",
    "fig_looks_at": "Where the answer position looks, in % of its attention (mean over layers, heads, tasks and "
                    "episodes): the demo images apart from the query image, the demo text apart from the query text, "
                    "special tokens. Zero-shot has no demo parts; no-image has demo text only.",
    "fig_layer_share": "The same per layer, in %: the answer position's attention on the demo images (left) and on "
                       "the query image (right), one line per condition (95% bootstrap bands over episodes).",
    "fig_demo_position": "Attention on each demo's image by its position in the prompt (demo 1 is the first), then "
                         "on the query image, in % of the answer row: a recency effect shows as a rising line.",
    "fig_demo_heads": "{model} at k shots: each head's attention on the demo images (% of the answer row, mean over "
                      "episodes), per task: which heads look at the demos.",
    "fig_heads": "{model}: per task at k shots, each head's rank correlation between its attention on the demo images "
                 "and a correct answer; a dot marks heads significant at a 5% false discovery rate.",
    "fig_head_scores": "{model}: each head's induction score (top: the answer row's attention on the demos' answer "
                       "tokens minus its attention elsewhere) and previous-token score (bottom: each token's "
                       "attention on the token before it), per task, on the calibration episodes at k shots.",
    "fig_evidence": "{model}: where each demo's label tokens look in their own image, per layer (Wang & Li's "
                    "figure): on the correct evidence (where the answer is read from under the episode's rule), on "
                    "the distractors, elsewhere; % of the label rows' attention on that image (solid; dashed: the "
                    "answer row on the query image). Dotted: each region's share of the image tokens.",
    "fig_patch": "{model}: one episode at k shots: the answer position's attention on each image token, drawn over "
                 "the images (first row: mean over layers and heads; then the three heads that look most at the demo "
                 "images). The % is the share of the row on that image.",
}


def _slug(model: str) -> str:
    return model.replace("organism:", "").replace("/", "_")


def caption(stem: str) -> str:
    """A figure's caption from its stem (per-model figures end in the model's slug)."""
    for prefix in ("fig_demo_heads_", "fig_heads_", "fig_head_scores_", "fig_evidence_", "fig_patch_"):
        if stem.startswith(prefix):
            return CAPTIONS[prefix[:-1]].format(model=stem[len(prefix):])
    return CAPTIONS[stem]


def main_condition(conditions: list[str]) -> str:
    """The run's k-shot condition the per-head figures show: the k the verdicts and the patch maps use."""
    k_shot = f"{pool_size(conditions)[0]}-shot"
    return k_shot if k_shot in conditions else conditions[-1]


def report_figures(records: list[dict], settings: dict, head_rows: list[dict]) -> dict:
    """{stem: Figure} for the report: accuracy, and (when attention was recorded) where the answer looks split by
    segment family, per layer (demo images apart from the query image), by demo position, per head on the demo
    images, and per model the heads whose demo-image attention predicts a correct answer."""
    figures = {"fig_accuracy": plots.accuracy_bars(records, {t: chance(t) for t in settings["tasks"]})}
    if "visual_share" not in records[0]:
        return figures
    figures["fig_looks_at"] = plots.looks_at_bars(records)
    figures["fig_layer_share"] = plots.image_share_by_layer(records)
    by_position = plots.demo_position(records)
    if by_position is not None:
        figures["fig_demo_position"] = by_position
    cond = main_condition(settings["conditions"])
    for model in dict.fromkeys(r["model"] for r in records):
        mine = [r for r in records if r["model"] == model and r["condition"] == cond and "demo_image_by_head" in r
                and r.get("shots", 0) > 0]
        if mine:
            figures[f"fig_demo_heads_{_slug(model)}"] = plots.demo_image_heads(mine, cond)
    for model in dict.fromkeys(r["model"] for r in head_rows):
        figures[f"fig_heads_{_slug(model)}"] = plots.head_rho_panels([r for r in head_rows if r["model"] == model])
    return figures


def verdict_markdown(verdict_rows: list[dict]) -> list[str]:
    """The verdict table: one row per model and task, with the numbers behind it and the rule that decides it."""
    if not verdict_rows:
        return ["## Verdict", "", "No verdict: it needs a k-shot condition and the no-image control in the same run "
                "(e.g. `--conditions no-image 4-shot`).", ""]
    ks = {v["k"] for v in verdict_rows}
    k_head = f"{ks.pop()}-shot" if len(ks) == 1 else "k-shot"
    md = ["## Verdict", "", RULE, "",
          f"| model | task | verdict | {k_head} | no-image | difference (95% CI) | McNemar p | copies a demo answer "
          "| chance |", "|---|---|---|---|---|---|---|---|---|"]
    for v in verdict_rows:
        acc = lambda c: str(Accuracy(c["correct"], c["n"]))  # noqa: E731
        lo, hi = v["ci"]
        chance = "–" if v["chance"] is None else f"{100 * v['chance']:.1f}"
        k = "" if k_head != "k-shot" else f" ({v['k']}-shot)"
        md.append(f"| {v['model']} | {v['task']} | **{v['verdict']}** | {acc(v['k_shot'])}{k} "
                  f"| {acc(v['no_image'])} | {100 * v['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] "
                  f"| {v['p']:.2g} | {_copy_cell(v)} | {chance} |")
    n = {v["n"] for v in verdict_rows}
    return md + ["", "Accuracy and chance in %, with 95% Wilson intervals; difference: k-shot minus no-image on the "
                 "same queries, in points, with Newcombe's paired 95% interval; copies a demo answer: the share of "
                 "k-shot answers that repeat one of their demos' answers (no-image's after the slash; guess: how "
                 "often a uniform guess among the task's answers would, 0 where they are unknown), in %"
                 + (f"; n = {n.pop()} paired queries per row." if len(n) == 1 else "."), ""]


def _copy_cell(v: dict) -> str:
    """The verdict row's copy rates: k-shot's with its interval, no-image's after a slash ("–" when not recorded)."""
    if not v.get("copy_rate"):
        return "–"
    k, blind = Accuracy(v["copy_rate"]["correct"], v["copy_rate"]["n"]), v.get("no_image_copy_rate")
    return f"{k}" + (f" / {100 * blind['acc']:.0f}" if blind else "") + f" (guess {100 * v['copy_chance']:.0f})"


def looks_markdown(where: dict, right: list[dict]) -> list[str]:
    """Where the answer row's attention goes, per model and condition; and, for novel binding, the demos of the
    query's class against the others."""
    if not where:
        return []
    parts = plots.parts_present(cell for conditions in where.values() for cell in conditions.values())
    md = ["## Where the answer looks", "",
          "Attention of the answer position (the one whose logits give the first answer token), % of the row, mean "
          "over layers, heads, tasks and episodes.", "",
          "| model | condition | " + " | ".join(plots.PART_LABELS[p] for p in parts) + " |",
          "|---|---|" + "---|" * len(parts)]
    for model, conditions in where.items():
        for condition, cell in conditions.items():
            md.append(f"| {model} | {condition} | " + " | ".join(f"{100 * cell.get(p, 0.0):.1f}" for p in parts)
                      + " |")
    md.append("")
    if right:
        md += ["### Does it look at the right demo?", "",
               "Tasks whose demos show the query's class (novel binding, VL-ICL's open_mi): the image share (% of the "
               "answer row) of one demo of the query's class against one "
               "demo of the other class; p: Wilcoxon signed-rank test on the paired episodes.", "",
               "| model | task | condition | query's class | other class | p | n |", "|---|---|---|---|---|---|---|"]
        md += [f"| {r['model']} | {r['task']} | {r['condition']} | {100 * r['matching']:.2f} | "
               f"{100 * r['other']:.2f} | {r['p']:.2g} | {r['n']} |" for r in right]
        md.append("")
    return md


def _heads_list(heads: list[dict], most: int = 6) -> str:
    text = ", ".join(f"L{h['layer']}H{h['head']} ({h['rho']:+.2f})" for h in heads[:most]) or "none"
    return text + (f" and {len(heads) - most} more" if len(heads) > most else "")


def heads_markdown(rows: list[dict]) -> list[str]:
    """Per model, task and condition with demo images: demo-image attention against a correct answer, and the
    heads whose demo-image attention predicts a right answer (rho > 0) or a wrong one (rho < 0)."""
    if not rows:
        return []
    md = ["## Which heads predict a correct answer", "",
          "Per task and condition (never pooled): the answer row's attention on the demo images against a correct "
          "answer, over the episodes: Spearman rho (p) and the logistic slope per s.d. ± its standard error "
          "(\"separated\" when a threshold splits right from wrong: no finite slope; \"no test\" when every answer "
          "is right or every answer wrong); then the heads whose demo-image attention goes with a right answer "
          "(rho > 0) and with a wrong one (rho < 0) at a 5% false discovery rate (Benjamini-Hochberg over all "
          "heads), written as L3H2 for layer 3, head 2, with their rho. A head that predicts is not yet a head that "
          "matters: `notebooks/02_truemicl_finding.ipynb` goes on to ablate such heads and patch them between runs "
          "on the true-micl organism (`experiments/micl_heads.py` in the repository for the full run).", "",
          "| model | task | condition | right / n | rho (p) | logistic slope | heads: right answer | heads: wrong "
          "answer |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sp, lg = r["spearman"], r["logistic"]
        if r["correct"] in (0, r["n"]):
            rho = slope = f"no test: all {'wrong' if r['correct'] == 0 else 'right'}"
            right = wrong = "–"
        else:
            rho = "–" if sp["rho"] != sp["rho"] else f"{sp['rho']:+.2f} ({sp['p']:.2g})"
            slope = "separated" if lg["separated"] else f"{lg['slope']:+.2f} ± {lg['slope_se']:.2f}"
            right = _heads_list([h for h in r["heads"] if h["rho"] > 0])
            wrong = _heads_list([h for h in r["heads"] if h["rho"] < 0])
        md.append(f"| {r['model']} | {r['task']} | {r['condition']} | {r['correct']} / {r['n']} | {rho} | {slope} "
                  f"| {right} | {wrong} |")
    return md + [""]


def _top_text(scores: list, k: int = 3) -> str:
    """The k highest heads of a [layer][head] score, as "L0H2 0.93, …" (NaN layers skipped)."""
    m = np.asarray(scores, dtype=float)
    order = np.argsort(np.nan_to_num(m, nan=-np.inf), axis=None)[::-1][:k]
    return ", ".join(f"L{i // m.shape[1]}H{i % m.shape[1]} {m.flat[i]:.2f}" for i in order)


def _sinks_text(cell: dict) -> str:
    found = cell.get("sinks") or {}
    if not found:
        return (f"none at τ = {cell['tau']:g} (largest ratio {cell['max_ratio']:.1f}; at most √hidden = "
                f"{cell['ratio_bound']:.1f} in this model)")
    return ", ".join(f"{seg} ({max(per_layer):.1f} a prompt)" for seg, per_layer in sorted(
        found.items(), key=lambda kv: -max(kv[1]))[:4])


def head_scores_markdown(scores: dict, effects: list[dict]) -> list[str]:
    """Per model and task: the top induction and previous-token heads, the sink tokens, and what knocking heads out
    did (+knockout=top-… against +knockout=random-… on the same queries)."""
    if not scores:
        return []
    md = ["## Induction heads, previous-token heads and attention sinks", "",
          "Head scores (Huang et al. 2026) on the calibration episodes of each task (its support split, never the "
          "scored queries; the ones +knockout=top-… chooses on): induction = the answer row's attention on the "
          "demos' answer tokens minus its attention elsewhere (−1 … 1); previous-token = each token's attention "
          "on the token before it (0 … 1). Sinks (Kang et al. 2025): tokens whose hidden state has one massive "
          "dimension, max|h|/RMS(h) ≥ τ, by segment with the most found in a prompt at any layer.", "",
          "| model | task | top induction heads | top previous-token heads | sink tokens | knockout |",
          "|---|---|---|---|---|---|"]
    for model, tasks in scores.items():
        for task, cell in tasks.items():
            ko = [e for e in effects if e["model"] == model and e["task"] == task and "+knockout=" in e["condition"]]
            top = [f"{e['condition'].split('+knockout=')[1]}: {100 * e['a']['acc']:.0f} vs "
                   f"{100 * e['b']['acc']:.0f} (p {e['p']:.2g})" for e in ko if "=random-" not in e["condition"]]
            rand = [100 * e["a"]["acc"] for e in ko if "=random-" in e["condition"]]
            if rand:
                top.append(f"{len(rand)} random set{'s' * (len(rand) > 1)}: {', '.join(f'{a:.0f}' for a in rand)}")
            md.append(f"| {model} | {task} | {_top_text(cell['induction'])} | {_top_text(cell['previous_token'])} "
                      f"| {_sinks_text(cell)} | {'; '.join(top) or '–'} |")
    md += ["", "Knockout: accuracy with the heads knocked out vs without (the base condition), on the same "
           "queries, % (exact McNemar p); random sets: the same number of random heads, for comparison.", ""]
    rows = [(model, task, cell["evidence"]) for model, tasks in scores.items() for task, cell in tasks.items()
            if "evidence" in cell]
    if rows:
        md += ["## Do the demo labels look at the evidence?", "",
               "Wang & Li (2026): each demo's label tokens attending to their own image, split into the correct "
               "evidence (where the answer is read from under the episode's rule), distractors (regions that would "
               "give another answer) and the rest; the answer row likewise on the query image. % of the rows' "
               "attention on that image, mean over layers (per layer: the evidence figure), against the region's "
               "share of the image tokens (attention spread evenly).", "",
               "| model | task | demo labels: correct / wrong / other | even spread | answer row: correct / wrong "
               "/ other |", "|---|---|---|---|---|"]
        for model, task, ev in rows:
            def trio(source, ev=ev):
                shares = [np.nanmean(ev[source]["share"][r]) for r in ("correct", "wrong", "other")]
                return " / ".join("–" if v != v else f"{100 * v:.0f}" for v in shares)
            even = " / ".join(f"{100 * ev['demo_labels']['chance'][r]:.0f}" for r in ("correct", "wrong", "other"))
            md.append(f"| {model} | {task} | {trio('demo_labels')} | {even} | {trio('answer_row')} |")
        md.append("")
    return md


def interventions_markdown(effects: list[dict], described: dict) -> list[str]:
    """Per intervention: the artifact that ran (path, digest, what it was made for and trained on), then its effect
    against its base condition on the same queries (paired McNemar) and the change of the answer row's attention
    on the demo images."""
    if not effects and not described:
        return []
    md = ["## Interventions", ""]
    if described:
        md += ["| intervention | artifact | digest | made for | trained |", "|---|---|---|---|---|"]
        for name, d in described.items():
            made = ", ".join(f"{k} {v}" for k, v in d.get("made_for", {}).items()) or "–"
            md.append(f"| +{name} | {d.get('path', '–')} | {d.get('digest', '–')} | {made} | "
                      f"{d.get('trained', '–')} |")
        md.append("")
    if effects:
        md += ["| model | task | condition | base | with | without | difference (95% CI) | McNemar p | "
               "demo images: base → with |", "|---|---|---|---|---|---|---|---|---|"]
        for e in effects:
            if not e["n"]:
                md.append(f"| {e['model']} | {e['task']} | {e['condition']} | {e['base']} | – | – | base condition "
                          "not in this run | – | – |")
                continue
            lo, hi = e["ci"]
            share = "–" if e["demo_image_b"] != e["demo_image_b"] else \
                f"{100 * e['demo_image_b']:.1f} → {100 * e['demo_image_a']:.1f}"
            md.append(f"| {e['model']} | {e['task']} | {e['condition']} | {e['base']} "
                      f"| {Accuracy(e['a']['correct'], e['n'])} | {Accuracy(e['b']['correct'], e['n'])} "
                      f"| {100 * e['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | {e['p']:.2g} | {share} |")
        md += ["", "Accuracy in % (95% Wilson) with and without the intervention on the same queries; difference in "
               "points (Newcombe's paired interval); demo images: % of the answer row (mean over layers and heads).",
               ""]
    return md


def _cell_text(cell: dict) -> str:
    """An accuracy table cell: accuracy (Wilson CI) and, when attention was captured, the demo images' share."""
    text = str(Accuracy(cell["correct"], cell["n"]))
    if cell.get("copy_rate") == cell.get("copy_rate") and cell.get("copy_rate") is not None:
        text += f" · copies {100 * cell['copy_rate']:.0f}%"
    return text if cell["demo_image"] != cell["demo_image"] else f"{text} · demo img {100 * cell['demo_image']:.1f}%"


METRIC_NAMES = {"teacher-forced": "greedy exact match (teacher-forced)", "exact": "normalised exact match of a "
                "greedy generation", "number": "first number of a greedy generation", "contains": "gold contained in a "
                "greedy generation", "option": "option letter of a greedy generation",
                "vlicl": "VL-ICL Bench's own rule on a greedy generation"}


def _metrics_text(metrics: dict) -> str:
    """How accuracy was scored: one metric for every task, or each task's."""
    if not metrics:
        return METRIC_NAMES["teacher-forced"]
    if len(set(metrics.values())) == 1:
        return METRIC_NAMES.get(next(iter(metrics.values())), "?")
    return "; ".join(f"{task}: {METRIC_NAMES.get(m, m)}" for task, m in metrics.items())


def provenance_markdown(settings: dict) -> list[str]:
    """What made the numbers: versions and each model's fingerprints (the whole record is manifest.json)."""
    made = settings.get("provenance")
    if not made:
        return []
    versions = ", ".join(f"{k} {v}" for k, v in made["versions"].items())
    models = "; ".join(f"{m}: weights {f['weights']}, prompts {f['prompt_format']}" for m, f in made["models"].items())
    return ["## What made these numbers", "",
            f"{versions}. {models}. Every setting, artifact digest and the run's start and end are in "
            "`manifest.json`; every record in `results.jsonl` carries its own (`setup` digests them), and a rerun "
            "reuses only records whose settings all match.", ""]


def report_markdown(summary: dict, settings: dict, seconds: float, stems: list[str]) -> str:
    conditions = settings["conditions"]
    table = summary["accuracy"]
    md = ["# Does the model look at its demonstration images?", ""] + verdict_markdown(summary["verdicts"]) \
        + looks_markdown(summary["where_it_looks"], summary["right_demo"]) \
        + interventions_markdown(summary.get("interventions", []), settings.get("interventions", {})) \
        + heads_markdown(summary["heads"]) \
        + head_scores_markdown(summary.get("head_scores", {}), summary.get("interventions", [])) + [
          "## Accuracy and attention by condition", "",
          f"Models: {', '.join(settings['models'])}. Tasks: {', '.join(settings['tasks'])}. "
          f"{settings['n']} query episodes per task and condition (seed {settings['seed']}). "
          f"Accuracy: {_metrics_text(settings.get('metrics', {}))}, % with 95% Wilson CI; copies: the answers "
          "that repeat one of their demos' answers, %"
          + ("; demo img: the answer position's attention on the demo images, % of the row, mean over layers and "
             "heads" if settings.get("attention", True) else " (attention not captured: --no-attention)")
          + f". Run time {seconds:.0f} s.", ""] + [
          f"{model} has a hybrid decoder: attention measured in its softmax-attention layers "
          f"{', '.join(map(str, layers))} only (its linear-attention layers keep no attention weights); every mean "
          "over layers here is over those.\n" for model, layers in summary.get("partly_measured", {}).items()]
    for model, tasks in table.items():
        md += [f"### {model}", "", "| task | " + " | ".join(conditions) + " |", "|---|" + "---|" * len(conditions)]
        for task, cells in tasks.items():
            row = [_cell_text(cells[c]) if c in cells else "" for c in conditions]
            md.append(f"| {task} | " + " | ".join(row) + " |")
        md.append("")
    md += ["## Figures", ""]
    for stem in stems:
        text = caption(stem)
        if summary.get("partly_measured") and (stem == "fig_layer_share" or stem.startswith(("fig_heads_",
                                                                                            "fig_demo_heads_"))):
            text += " Blank layers: a hybrid decoder's linear-attention layers, which have no attention to measure."
        md += [f"![{text}]({stem}.png)", ""]
    return "\n".join(md + provenance_markdown(settings)) + "\n"


def report_html(markdown: str, folder: Path) -> str:
    """`markdown` as one self-contained page: every image link to a PNG in `folder` inlined, under a caption."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown)

    def inline(m: re.Match) -> str:
        src, alt = m.group(1), m.group(2)
        data = base64.b64encode((folder / src).read_bytes()).decode()
        return f'<figure><img src="data:image/png;base64,{data}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'

    body = re.sub(r'<p><img src="([^"]+\.png)" alt="([^"]*)" /></p>', inline, body)
    for verdict, css in ((READS, "reads"), (WORSE, "worse"), (IMITATES, "imitates"), (COPIES, "copies"),
                         (UNUSED, "unused"), (INCONCLUSIVE, "inconclusive")):
        body = body.replace(f"<strong>{verdict}</strong>", f'<strong class="{css}">{verdict}</strong>')
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>micl_probe report</title>"
            f"<style>{STYLE}</style></head><body>\n{body}</body></html>\n")


def write_report(out: Path, records: list[dict], settings: dict, seconds: float, summary: dict,
                 patches: dict | None = None, head_scores: dict | None = None) -> Path:
    """Figures, results.json, report.md and report.html into `out`; returns the page's path.
    `summary`: `evaluation.summarise(records)`; `patches`: {model: (measure.patch_maps, heads, label)};
    `head_scores`: {model: {task: {"induction", "previous_token": [layer][head], "n", "shots", "sinks", "tau",
    "max_ratio"}}} (attn_report's `head_summary`)."""
    summary = {**summary, "head_scores": head_scores or {}}
    figures = report_figures(records, settings, summary["heads"])
    for model, tasks in (head_scores or {}).items():
        figures[f"fig_head_scores_{_slug(model)}"] = plots.head_score_panels(tasks, model)
        evidence = {t: cell["evidence"] for t, cell in tasks.items() if "evidence" in cell}
        if evidence:
            figures[f"fig_evidence_{_slug(model)}"] = plots.evidence_by_layer(evidence, model)
    for model, (maps, heads, label) in (patches or {}).items():
        title = f"{model}: where the answer position looks in each image ({label})"
        figures[f"fig_patch_{_slug(model)}"] = plots.patch_maps(maps, heads, title=title)
    for stem, fig in figures.items():
        plots.save(fig, out / stem)
    results = {"settings": settings, "seconds": round(seconds, 1), "verdict_rule": RULE} | summary
    write_atomic(out / "results.json", dumps(results, indent=1))  # strict JSON: NaN as null
    md = report_markdown(summary, settings, seconds, list(figures))
    write_atomic(out / "report.md", md)
    return write_atomic(out / "report.html", report_html(md, out))
