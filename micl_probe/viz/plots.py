"""Figures. Each function draws views an analysis object already provides and returns the Figure;
`save(fig, stem)` writes stem.png and stem.pdf. Colour-blind-safe palette throughout (seaborn "colorblind").

    fig = plots.visual_share_heatmap(am); plots.save(fig, "figures/attn_heatmap")
"""

from __future__ import annotations

import zlib
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from ..evaluation.harness import accuracy_table
from ..evaluation.statistics import wilson
from ..measure import AttentionMass
from ..measure.attention import HUB_PARTS  # parts only prompts with MMICT's hub tokens have

PALETTE = sns.color_palette("colorblind")
ROLE_COLOURS = {"image": PALETTE[0], "image_markup": PALETTE[9], "question": PALETTE[2], "answer": PALETTE[1],
                "template": PALETTE[7], "special": PALETTE[3], "hub": PALETTE[4]}


N_BOOT = 200  # bootstrap resamples of the 95% bands over episodes (fixed seed): seaborn's 1,000 cost ~1 s a figure
PART_COLOURS = {"demo_image": PALETTE[0], "query_image": PALETTE[9], "demo_text": PALETTE[1], "query_text": PALETTE[8],
                "special": PALETTE[7], "other": "0.85", "demo_hub": PALETTE[2], "query_hub": PALETTE[4]}
PART_LABELS = {"demo_image": "demo images", "query_image": "query image", "demo_text": "demo text",
               "query_text": "query text", "special": "special tokens", "other": "other",
               "demo_hub": "demo hub tokens", "query_hub": "query hub tokens"}
def parts_present(cells) -> list[str]:
    """The parts of `PART_LABELS` to show for `cells` (records' `looks_at` dicts, or summary cells): every part but
    the hub tokens', which only when some cell has them."""
    cells = list(cells)
    return [p for p in PART_LABELS if p not in HUB_PARTS or any(p in c for c in cells)]
_BASE_COLOURS = {"zero-shot": PALETTE[7], "no-image": PALETTE[1], "shuffled-answers": PALETTE[5]}
_INTERVENTION_COLOURS = {"dara": PALETTE[3], "mtv": PALETTE[4], "lora": PALETTE[6], "alpha": PALETTE[8],
                         "knockout": (0.1, 0.1, 0.1), "uniform": (0.09, 0.75, 0.81), "mgi": (0.5, 0.5, 0.0)}


def condition_colour(condition: str):
    """The colour of a condition, the same in every figure and every report: the base condition's hue (zero-shot
    grey, no-image orange, shuffled-answers brown, k-shot blue, retrieved-k-shot green) or, under an intervention,
    the intervention's (dara red, mtv purple, lora pink, alpha yellow, knockout near-black, uniform cyan, mgi olive;
    a setting of uniform or mgi a fixed lighter step; knockout's random comparison sets light greys); a darker shade
    for more shots."""
    base, _, name = condition.partition("+")
    words = base.split("-")
    k = int(words[-2]) if base.endswith("-shot") and words[-2].isdigit() else 0
    if name.startswith("knockout=random-"):  # the comparison sets: light greys, one shade per seed
        seed = name.rpartition(":")[2]
        return (0.55 + 0.05 * (int(seed) % 6 if seed.isdigit() else 0),) * 3
    if name:
        kind, _, setting = name.partition("=")
        colour = _INTERVENTION_COLOURS.get(kind, PALETTE[9])
        if setting and kind in ("uniform", "mgi"):  # one kind's settings: lighter by a fixed step each
            step = zlib.crc32(setting.encode()) % 3 * 0.22
            colour = tuple(np.array(colour[:3]) + (1 - np.array(colour[:3])) * step)
    elif base in _BASE_COLOURS:
        colour = _BASE_COLOURS[base]
    else:
        colour = PALETTE[2] if base.startswith("retrieved-") else PALETTE[0] if k else PALETTE[9]
    # 4 shots: the hue itself; fewer lighter (an intervention on zero shots lightest), more darker
    shade = min(max(np.log2(k) - 2, -2), 2) / 5 if k else -0.4 if name else 0.0
    rgb = np.array(colour[:3])
    return tuple(rgb * (1 - shade) if shade > 0 else rgb + (1 - rgb) * -shade)


def style():
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=1.1)
    plt.rcParams.update({"figure.dpi": 120, "savefig.dpi": 200, "pdf.fonttype": 42, "savefig.bbox": "tight"})


def save(fig, stem: str | Path) -> list[Path]:
    """Write `stem.png` and `stem.pdf` (vector); returns both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")]  # a dot in the stem stays
    for p in paths:
        fig.savefig(p)
    plt.close(fig)
    return paths


def visual_share_heatmap(am: AttentionMass, title: str | None = None):
    """Layer x head heatmap of the share of attention on image tokens, mean over episodes."""
    style()
    share = am.visual_share().mean(0).numpy()  # [layer, head]
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * share.shape[1], 1.0 + 0.4 * share.shape[0]))
    sns.heatmap(share, ax=ax, vmin=0, vmax=max(0.05, float(np.nanmax(share))), cmap="viridis", annot=share.size <= 64,
                fmt=".2f", cbar_kws={"label": "visual share"})
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title or f"Attention on image tokens ({am.rows} row), {am.n_episodes} episodes")
    return fig


def demo_stacked_bars(am: AttentionMass, layer: int | None = None, title: str | None = None):
    """Per turn (demo 0.., query) stacked bars of attention by role; special tokens as their own bar."""
    style()
    table, owners, roles = am.owner_role_table()  # [episode, layer, head, owner, role]
    t = table.mean((0, 2)) if layer is None else table[:, layer].mean((0, 1))  # [layer?, owner, role]
    if layer is None:
        t = t.nanmean(0)  # over the measured layers (a hybrid decoder's others are NaN)
    t = t.numpy()
    order = [o for o in owners if o.startswith("demo")] + [o for o in owners if o == "query"] + \
            [o for o in owners if o in ("none", "all")]
    fig, ax = plt.subplots(figsize=(1.5 + 0.7 * len(order), 3.6))
    bottom = np.zeros(len(order))
    for r in [r for r in roles if r != "pad"]:
        vals = np.array([t[owners.index(o), roles.index(r)] for o in order])
        if vals.sum() == 0:
            continue
        ax.bar(order, vals, bottom=bottom, label=r, color=ROLE_COLOURS.get(r))
        bottom += vals
    labels = {"all": "special", "none": "system"}
    ax.set_ylim(0, 1.15 * bottom.max())  # room above the tallest bar
    ax.set_xticks(range(len(order)), [labels.get(o, o) for o in order], rotation=30)
    ax.set_ylabel("attention mass")
    ax.set_title(title or f"Attention by turn and role ({'all layers' if layer is None else f'layer {layer}'})")
    ax.legend(fontsize=8, ncol=2, frameon=False)
    return fig


def layer_curve(am: AttentionMass, by: str | None = None, title: str | None = None):
    """Visual share per layer (mean over heads), episodes as 95% confidence bands; `by` = a meta key per episode
    (e.g. "conditions") draws one curve per value."""
    style()
    import pandas as pd

    share = am.visual_share().mean(-1).numpy()  # [episode, layer]
    groups = am.meta.get(by) if by else None
    rows = [{"layer": layer, "visual share": share[e, layer], "group": groups[e] if groups else "all"}
            for e in range(share.shape[0]) for layer in range(share.shape[1])]
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    sns.lineplot(pd.DataFrame(rows), x="layer", y="visual share", hue="group" if groups else None,
                 errorbar=("ci", 95), marker="o", ax=ax)
    ax.set_xticks(range(share.shape[1]))
    ax.set_title(title or "Attention on image tokens by layer")
    return fig


# --- figures from harness records (lists of dicts, see micl_probe.evaluation.harness) ---------------------------------
def _frame(records):
    import pandas as pd

    return pd.DataFrame(records)


def accuracy_bars(records, chance: dict[str, float] | None = None, title: str | None = None):
    """Accuracy per task and condition, one panel per model: bars with 95% Wilson intervals, a dashed line at
    each task's chance level (`chance`: {task: accuracy of a uniform guess}), and a 0 written on empty bars."""
    style()
    models = list(dict.fromkeys(r["model"] for r in records))
    tasks = list(dict.fromkeys(r["task"] for r in records))
    conditions = list(dict.fromkeys(r["condition"] for r in records))
    table = accuracy_table(records)  # {model: {task: {condition: {"correct", "n", ...}}}}
    width = 0.8 / len(conditions)
    fig, axes = plt.subplots(1, len(models), figsize=(0.6 + 1.1 * len(tasks) * len(models), 3.4), sharey=True,
                             squeeze=False)
    for ax, model in zip(axes[0], models):
        for j, cond in enumerate(conditions):
            for i, task in enumerate(tasks):
                cell = table[model].get(task, {}).get(cond)
                if cell is None:
                    continue
                k, n = cell["correct"], cell["n"]
                lo, hi = (100 * v for v in wilson(k, n))
                x = i - 0.4 + width * (j + 0.5)
                acc = 100 * k / n
                ax.bar(x, acc, width, color=condition_colour(cond), label=cond if i == 0 else None)
                ax.errorbar(x, acc, yerr=[[acc - lo], [hi - acc]], color="0.25", capsize=2, lw=1)
                if k == 0:
                    ax.text(x, 1.5, "0", ha="center", va="bottom", fontsize=7, color=condition_colour(cond))
        for i, task in enumerate(tasks):
            if chance and chance.get(task) is not None:
                ax.hlines(100 * chance[task], i - 0.45, i + 0.45, colors="0.35", linestyles="--", lw=1,
                          label="chance" if i == 0 else None)
        ax.set_xticks(range(len(tasks)), tasks, rotation=25, ha="right")
        ax.set_title(model, fontsize=10)
        ax.set_ylim(0, 105)
        ax.set_xlim(-0.55, len(tasks) - 0.45)
        ax.grid(axis="x", visible=False)
    axes[0][0].set_ylabel("accuracy, % (95% CI)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.91, 0.55), frameon=False)
    fig.suptitle(title or "Accuracy by task and condition", y=1.04)
    return fig


def _condition_legend(fig, conditions):
    handles = [plt.Line2D([], [], color=condition_colour(c), lw=6) for c in conditions]
    fig.legend(handles, conditions, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, title="condition")


def looks_at_bars(records, title: str | None = None):
    """Where the answer position looks, split by segment family: per model and condition, a stacked bar of the
    row's attention on demo images / query image / demo text / query text / special tokens / other, in % of the row
    (mean over layers, heads, tasks and episodes)."""
    style()
    models = list(dict.fromkeys(r["model"] for r in records))
    conditions = list(dict.fromkeys(r["condition"] for r in records))
    parts = parts_present(r["looks_at"] for r in records)
    fig, axes = plt.subplots(1, len(models), figsize=(0.8 + 3.6 * len(models), 1.6 + 0.38 * len(conditions)),
                             sharey=True, squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [c for c in conditions if any(r["model"] == model and r["condition"] == c for r in records)]
        _part_stack(ax, mine, {part: [100 * np.nanmean([r["looks_at"].get(part, 0.0) for r in records
                                                         if r["model"] == model and r["condition"] == c])
                                      for c in mine] for part in parts}, "% of the answer row's attention")
        ax.set_title(model, fontsize=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(parts), 6), frameon=False,
               fontsize=8)
    fig.suptitle(title or "Where the answer position looks: demo images apart from the query image", y=1.02)
    fig.tight_layout()
    return fig


def _part_stack(ax, rows: list[str], values: dict[str, list[float]], xlabel: str) -> None:
    """One stacked horizontal bar per row: each part's value (% of the row), labelled where it is wide enough."""
    left = np.zeros(len(rows))
    for part, vals in values.items():
        vals = np.asarray(vals, dtype=float)
        ax.barh(range(len(rows)), vals, left=left, color=PART_COLOURS[part], label=PART_LABELS[part],
                edgecolor="white", lw=0.5)
        for y, (x0, v) in enumerate(zip(left, vals)):
            if v >= 7:
                ax.text(x0 + v / 2, y, f"{v:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if part in ("demo_image", "special") else "0.1")
        left += vals
    ax.set_yticks(range(len(rows)), rows)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel(xlabel)
    ax.grid(axis="y", visible=False)


def _demo_by_layer(r) -> np.ndarray:
    """[layer] the record's answer-row share on the demo images (mean over heads)."""
    return np.nanmean(np.asarray(r["demo_image_by_head"], dtype=float), -1)


def _need_heads(records) -> None:
    """A record with attention but without its per-head arrays (loaded without them) would draw as zero demo-image
    attention: refuse in one line instead."""
    if any("visual_share_by_layer" in r and "demo_image_by_head" not in r for r in records):
        raise ValueError("these records were loaded without their per-head arrays: load them with "
                         "load_records(path, heads=True) (or Records.heads_frame() for a table)")


def image_share_by_layer(records, title: str | None = None):
    """Per layer (mean over heads), in % of the answer row: attention on the demo images (left) and on the query
    image (right), one row of panels per model, a line per condition (its fixed colour), 95% bootstrap bands over
    episodes (fixed seed). The query image's share is the images' share minus the demo images'."""
    style()
    import pandas as pd

    models = list(dict.fromkeys(r["model"] for r in records))
    conditions = list(dict.fromkeys(r["condition"] for r in records))
    _need_heads(records)
    rows = []
    for r in records:
        demo = _demo_by_layer(r)
        for layer, (v, d) in enumerate(zip(r["visual_share_by_layer"], demo)):
            rows += [{"layer": layer, "share": 100 * d, "where": "demo images", "model": r["model"],
                      "condition": r["condition"]},
                     {"layer": layer, "share": 100 * (v - d), "where": "query image", "model": r["model"],
                      "condition": r["condition"]}]
    df = pd.DataFrame(rows)
    n_layers = int(df["layer"].max()) + 1
    palette = {c: condition_colour(c) for c in conditions}
    fig, axes = plt.subplots(len(models), 2, figsize=(7.4, 0.4 + 2.4 * len(models)), sharex=True, sharey=True,
                             squeeze=False)
    for row, model in zip(axes, models):
        for ax, where in zip(row, ("demo images", "query image")):
            sub = df[(df["model"] == model) & (df["where"] == where)]
            sns.lineplot(sub, x="layer", y="share", hue="condition", hue_order=conditions, palette=palette,
                         errorbar=("ci", 95), n_boot=N_BOOT, seed=0, marker="o", ax=ax, legend=False)
            ax.set_title(f"{model}: {where}", fontsize=9)
            ax.set_xticks(range(n_layers))
            ax.set_ylabel("% of the answer row" if ax is row[0] else "")
    _condition_legend(fig, conditions)
    fig.suptitle(title or "Attention on the demo images and on the query image, by layer (answer position)", y=1.01)
    fig.tight_layout()
    return fig


def demo_image_heads(records, condition: str, title: str | None = None):
    """One model under one condition: layer x head attention on the demo images (% of the answer row; mean over
    episodes), one panel per task, one colour scale with a labelled bar."""
    _need_heads(records)
    style()
    tasks = list(dict.fromkeys(r["task"] for r in records if r["condition"] == condition))
    maps = {t: 100 * np.nanmean([np.asarray(r["demo_image_by_head"], dtype=float) for r in records
                                 if r["task"] == t and r["condition"] == condition], 0) for t in tasks}
    top = max(5.0, max(float(np.nanmax(m)) for m in maps.values()))
    layers, heads = next(iter(maps.values())).shape
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(0.9 + (0.6 + 0.42 * heads) * len(tasks),
                                                         1.2 + 0.36 * layers), squeeze=False,
                             gridspec_kw={"width_ratios": [1] * len(tasks) + [0.06]})
    for i, (ax, task) in enumerate(zip(axes[0], tasks)):
        sns.heatmap(maps[task], ax=ax, vmin=0, vmax=top, cmap="viridis", annot=maps[task].size <= 64, fmt=".0f",
                    annot_kws={"fontsize": 7}, cbar=i == 0, cbar_ax=axes[0][-1],
                    cbar_kws={"label": "% of answer row on demo images"})
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer" if i == 0 else "")
        ax.tick_params(axis="y", rotation=0, labelleft=i == 0)
    fig.suptitle(title or f"{records[0]['model']}: which heads look at the demo images ({condition})", fontsize=10,
                 y=1.04)
    return fig


def head_score_panels(scores: dict, model: str, title: str | None = None):
    """One model: each head's induction score (top row) and previous-token score (bottom row), one column per task
    (`scores`: {task: {"induction", "previous_token": [layer][head], "n", "shots"}}: the report's head scores)."""
    style()
    tasks = list(scores)
    rows = (("induction", "induction score", "vlag", -1, 1), ("previous_token", "previous-token score", "viridis",
                                                                  0, 1))
    layers, heads = np.asarray(scores[tasks[0]]["induction"], dtype=float).shape
    fig, axes = plt.subplots(2, len(tasks) + 1, figsize=(0.9 + (0.6 + 0.42 * heads) * len(tasks),
                                                         1.6 + 0.72 * layers), squeeze=False,
                             gridspec_kw={"width_ratios": [1] * len(tasks) + [0.06]})
    for r, (key, label, cmap, lo, hi) in enumerate(rows):
        for i, task in enumerate(tasks):
            ax, m = axes[r][i], np.asarray(scores[task][key], dtype=float)
            sns.heatmap(m, ax=ax, cmap=cmap, vmin=lo, vmax=hi, center=0 if lo < 0 else None,
                        annot=m.size <= 64, fmt=".1f", annot_kws={"fontsize": 7}, cbar=i == 0,
                        cbar_ax=axes[r][-1], cbar_kws={"label": label})
            ax.set_title(task if r == 0 else "", fontsize=9)
            ax.set_xlabel("head" if r == 1 else "")
            ax.set_ylabel("layer" if i == 0 else "")
            ax.tick_params(axis="y", rotation=0, labelleft=i == 0)
    first = scores[tasks[0]]
    fig.suptitle(title or f"{model}: induction (answer row on the demo answers) and previous-token heads "
                 f"({first['n']} episodes a task, {first['shots']}-shot)", fontsize=10, y=1.02)
    return fig


REGION_COLOURS = {"correct": "#1a7f37", "wrong": "#b3261e", "other": "0.55"}


def evidence_by_layer(evidence: dict, model: str, title: str | None = None):
    """One model: per task, the share of the demo labels' attention on their own image that falls on its correct
    evidence, on the distractors and elsewhere, layer by layer (solid; dashed: the answer row on the query image),
    with each region's share of the image tokens as a dotted line (attention spread evenly). `evidence`: {task:
    `EvidenceAttention.as_dict()` with "shots"} (the report's)."""
    style()
    tasks = list(evidence)
    fig, axes = plt.subplots(1, len(tasks), figsize=(0.8 + 3.0 * len(tasks), 3.1), squeeze=False, sharey=True)
    for ax, task in zip(axes[0], tasks):
        cell = evidence[task]
        for source, dash in (("demo_labels", "-"), ("answer_row", "--")):
            for region, colour in REGION_COLOURS.items():
                values = 100 * np.asarray(cell[source]["share"][region], dtype=float)
                if np.isnan(values).all() or not cell[source]["chance"][region]:
                    continue  # no such region in these images (novel binding has no distractor)
                ax.plot(np.arange(len(values)), values, dash, color=colour, marker="o", markersize=3,
                        label=f"{region} ({'demo labels' if source == 'demo_labels' else 'answer row'})")
                if source == "demo_labels":
                    ax.axhline(100 * cell[source]["chance"][region], color=colour, linestyle=":", linewidth=1)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("layer")
        ax.set_ylim(0, 100)
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    axes[0][0].set_ylabel("% of the row's attention on the image")
    drawn = {}  # every panel's lines (novel binding has no distractor: its panel alone would leave "wrong" out)
    for ax in axes[0]:
        drawn.update(zip(*reversed(ax.get_legend_handles_labels())))
    order = [f"{r} ({w})" for w in ("demo labels", "answer row") for r in REGION_COLOURS]
    labels = [label for label in order if label in drawn]
    fig.legend([drawn[label] for label in labels], labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               frameon=False, title="region (rows)", title_fontsize=8)
    first = evidence[tasks[0]]
    fig.suptitle(title or f"{model}: do the demo labels look at the evidence in their images?\n({first['n']} "
                 f"episodes a task, {first['shots']}-shot; dotted: the region's share of the image tokens)",
                 fontsize=10, y=1.06)
    return fig


def demo_position(records, title: str | None = None):
    """Attention on each demo's image by its position in the prompt (demo 1 first; then the query image), in % of
    the answer row: one panel per model and condition with demo images, a line per task (mean over episodes,
    95% bootstrap bands)."""
    style()
    import pandas as pd

    rows = []
    for r in records:
        shares = r.get("image_share") or {}
        demos = sorted((k for k in shares if k.startswith("demo")), key=lambda k: int(k[4:]))
        if not demos or not any(shares[k] > 0 for k in demos):
            continue  # no demo images (zero-shot, no-image)
        rows += [{"model": r["model"], "condition": r["condition"], "task": r["task"], "x": x,
                  "share": 100 * shares[k]} for x, k in enumerate(demos + ["query"])]
    df = pd.DataFrame(rows)
    if df.empty:
        return None
    panels = list(dict.fromkeys(zip(df["model"], df["condition"])))
    tasks = list(dict.fromkeys(df["task"]))
    palette = dict(zip(tasks, PALETTE))
    cols = min(3, len(panels))
    n_rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(n_rows, cols, figsize=(0.6 + 3.4 * cols, 0.4 + 2.7 * n_rows), squeeze=False,
                             sharey=True)
    for ax, (model, condition) in zip(axes.flat, panels):
        sub = df[(df["model"] == model) & (df["condition"] == condition)]
        sns.lineplot(sub, x="x", y="share", hue="task", hue_order=tasks, palette=palette, errorbar=("ci", 95),
                     n_boot=N_BOOT, seed=0, marker="o", ax=ax, legend=False)
        shots = int(sub["x"].max())
        ax.set_xticks(range(shots + 1), [f"demo {i + 1}" for i in range(shots)] + ["query"], rotation=30)
        ax.set_xlabel("")
        ax.set_ylabel("% of the answer row on the image")
        ax.set_title(f"{model}, {condition}", fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=palette[t], marker="o") for t in tasks]
    fig.legend(handles, tasks, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, title="task")
    fig.suptitle(title or "Attention on each demo's image by its position (then the query's image)", y=1.02)
    fig.tight_layout()
    return fig


# --- DARA and MTV (from the experiments' result dicts) -----------------------------------------------------
def _acc_err(cell):
    lo, hi = cell["ci"]
    return cell["acc"], (cell["acc"] - lo, hi - cell["acc"])


def _grouped_bars(ax, groups: list[str], series: dict[str, list[dict]]):
    width = 0.8 / len(series)
    for i, (label, cells) in enumerate(series.items()):
        vals = [_acc_err(c) for c in cells]
        x = np.arange(len(groups)) + (i - (len(series) - 1) / 2) * width
        ax.bar(x, [v[0] for v in vals], width, yerr=np.array([v[1] for v in vals]).T, label=label,
               color=PALETTE[i % len(PALETTE)], capsize=2)
    ax.set_xticks(range(len(groups)), groups, rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")


def layers_label(results: dict) -> str:
    """'layer 0' or 'layers 0, 1, 2, 3': the decoder layers a DARA result set ran on."""
    layers = results.get("layers", [0])
    return f"layer {layers[0]}" if len(layers) == 1 else f"layers {', '.join(map(str, layers))}"


def dara_table_figure(results: dict):
    """Accuracy per task: zero-shot, no-image demos, random k-shot, LoRA, DARA (95% CI), one panel per organism."""
    style()
    orgs = results["organisms"]
    fig, axes = plt.subplots(1, len(orgs), figsize=(5.5 * len(orgs), 3.6), squeeze=False, sharey=True)
    keys = {"zero-shot": "zero-shot", "no-image": "no-image", "k-shot": f"{results['shots']}-shot", "lora": "LoRA",
            "dara": "DARA"}
    for ax, (name, tasks) in zip(axes[0], orgs.items()):
        _grouped_bars(ax, list(tasks), {label: [tasks[t][k] for t in tasks] for k, label in keys.items()})
        ax.set_title(f"{name}: DARA and LoRA on decoder {layers_label(results)} (n = {results['n']}, 95% CI)",
                     fontsize=10)
    axes[0][0].legend(fontsize=8, ncol=5, frameon=False, loc="upper left", bbox_to_anchor=(0, 1.25))
    return fig


def dara_factor_heatmaps(results: dict):
    """Learned factors alpha[head, image], one panel per organism x task, every DARA layer stacked (rows
    L<layer>H<head>); colour = log2(alpha) (red draws attention to that image, blue takes it away), numbers = alpha."""
    style()
    panels = [(o, t, np.array(r["dara_alpha"])) for o, ts in results["organisms"].items() for t, r in ts.items()]
    layers = results.get("layers", [0])
    cols = min(4, len(panels))
    rows = (len(panels) + cols - 1) // cols
    shots = results["shots"]
    n_rows = panels[0][2].shape[0] * panels[0][2].shape[1]  # alpha [layer, head, image]: a row per layer x head
    fig, axes = plt.subplots(rows, cols, figsize=((2.2 + 0.45 * (shots + 1)) * cols, (1.0 + 0.45 * n_rows) * rows),
                             squeeze=False)
    for ax, (o, t, a) in zip(axes.flat, panels):
        labels = [f"L{layer}H{h}" for layer in layers for h in range(a.shape[1])]
        flat = a.reshape(-1, a.shape[-1])
        sns.heatmap(np.log2(flat), ax=ax, cmap="vlag", center=0.0, vmin=-4, vmax=4, cbar=False,
                    annot=np.vectorize(lambda v: f"{v:.2g}")(flat), fmt="", annot_kws={"fontsize": 7},
                    xticklabels=[f"demo{i}" for i in range(shots)] + ["query"], yticklabels=labels)
        ax.set_title(f"{o}: {t}", fontsize=9)
        ax.tick_params(axis="y", labelsize=7, rotation=0)
        for k in range(1, a.shape[0]):
            ax.axhline(k * a.shape[1], color="white", lw=2)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"DARA factors alpha ({layers_label(results)}): > 1 draws attention to that image")
    fig.tight_layout()
    return fig


def dara_sweep(results: dict):
    """Dose-response: a fixed factor alpha on every demo image vs accuracy (left) and image share (right)."""
    style()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.5, 3.5))
    i = 0
    for o, ts in results["organisms"].items():
        for t, r in ts.items():
            al = [s["alpha"] for s in r["sweep"]]
            acc = np.array([s["acc"] for s in r["sweep"]])
            lo = np.array([s["ci"][0] for s in r["sweep"]])
            hi = np.array([s["ci"][1] for s in r["sweep"]])
            c = PALETTE[i % len(PALETTE)]
            ls = "-" if o == "true-micl" else "--"
            a1.plot(al, acc, marker="o", color=c, ls=ls, label=f"{o}: {t}")
            a1.fill_between(al, lo, hi, color=c, alpha=0.15)
            a2.plot(al, [s["image_share"] for s in r["sweep"]], marker="o", color=c, ls=ls)
            i += 1
    for ax in (a1, a2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"alpha on demo images (fixed, {layers_label(results)})")
    a1.set_ylabel("accuracy")
    a2.set_ylabel("attention on image tokens")
    a1.legend(fontsize=7, frameon=False)
    fig.suptitle("Making the model look: accuracy and visual attention vs a fixed reallocation")
    return fig


def mtv_table_figure(results: dict):
    """Accuracy per organism and task: 0/4/8-shot ICL, zero-shot + MTV, + function vector, + task vector (95% CI)."""
    style()
    keys = {"0-shot": "0-shot", "4-shot": "4-shot ICL", "8-shot": "8-shot ICL", "mtv": "0-shot + MTV",
            "fv": "0-shot + FV", "tv": "0-shot + TV"}
    orgs = results["organisms"]
    fig, axes = plt.subplots(1, len(orgs), figsize=(5.2 * len(orgs), 3.8), squeeze=False)
    for ax, (organism, res) in zip(axes[0], orgs.items()):
        tasks = res["tasks"]
        _grouped_bars(ax, [f"{t}\n({r['rule']})" for t, r in tasks.items()],
                      {label: [tasks[t][k] for t in tasks] for k, label in keys.items()})
        ax.set_title(organism)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, ncol=6, frameon=False, loc="upper center", bbox_to_anchor=(0.5, 1.06))
    fig.tight_layout()
    return fig


def mtv_scaling(results: dict):
    """Accuracy vs demonstrations used, per organism: MTV (shots compressed = N x T, zero-shot prompt) vs k-shot
    ICL up to the context limit."""
    style()
    orgs = results["organisms"]
    fig, axes = plt.subplots(1, len(orgs), figsize=(7.4 * len(orgs), 3.8), squeeze=False)
    for ax, (organism, res) in zip(axes[0], orgs.items()):
        for i, (t, r) in enumerate(res["tasks"].items()):
            c = PALETTE[i]
            ax.plot([s["shots_compressed"] for s in r["scaling_mtv"]], [s["acc"] for s in r["scaling_mtv"]],
                    marker="o", color=c, label=f"{t}: MTV (0-shot prompt)")
            ax.plot([s["shots"] for s in r["scaling_icl"]], [s["acc"] for s in r["scaling_icl"]], marker="s",
                    ls="--", color=c, label=f"{t}: k-shot ICL")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("demonstrations used (MTV: prompts x shots compressed into the vector)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
        ax.set_title(f"{organism}: many shots compressed into a task vector vs in context (n = {results['n']})",
                     fontsize=10)
    fig.tight_layout()
    return fig


def accuracy_vs_attention(stats: dict, head_rho: np.ndarray | None = None, title: str | None = None):
    """Binned accuracy vs visual share with 95% CIs and the logistic fit; optionally the per-head Spearman map."""
    style()
    n = 2 if head_rho is not None else 1
    fig, axes = plt.subplots(1, n, figsize=(5.0 * n, 3.6), squeeze=False)
    ax = axes[0][0]
    b = stats["bins"]
    x = np.array([c["x"] for c in b])
    acc = np.array([c["acc"] for c in b])
    err = np.array([[c["acc"] - c["ci"][0], c["ci"][1] - c["acc"]] for c in b]).T
    ax.errorbar(x, acc, yerr=err, fmt="o", capsize=3, color=PALETTE[0], label="binned accuracy (95% CI)")
    lg = stats["logistic"]
    grid = np.linspace(min(c["lo"] for c in b), max(c["hi"] for c in b), 100)
    z = (grid - lg["x_mean"]) / (lg["x_std"] + 1e-12)
    ax.plot(grid, 1 / (1 + np.exp(-(lg["intercept"] + lg["slope"] * z))), color=PALETTE[1], label="logistic fit")
    ax.set_xlabel("attention on image tokens (answer position)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    s = stats["spearman"]
    ax.set_title(title or f"Spearman rho = {s['rho']:.2f} (p = {s['p']:.1e}, n = {stats['n']})", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    if head_rho is not None:
        sns.heatmap(head_rho, ax=axes[0][1], cmap="vlag", center=0, annot=head_rho.size <= 64, fmt=".2f")
        axes[0][1].set_xlabel("head")
        axes[0][1].set_ylabel("layer")
        axes[0][1].set_title("Which heads' visual attention predicts success (rho)", fontsize=10)
    return fig


def head_rho_panels(rows: list[dict], title: str | None = None):
    """One model: per task and condition, each head's Spearman rho between its demo-image attention and a correct
    answer (layer x head); a dot marks the heads significant at a 5% false discovery rate. Rows from
    `evaluation.heads_that_predict`."""
    style()
    n = len(rows)
    fig, axes = plt.subplots(1, n + 1, figsize=(0.9 + 2.7 * n, 3.3), squeeze=False,
                             gridspec_kw={"width_ratios": [1] * n + [0.06]})
    for i, (ax, r) in enumerate(zip(axes[0], rows)):
        rho = np.array(r["tests"]["rho"], dtype=float)
        sns.heatmap(rho, ax=ax, cmap="vlag", center=0, vmin=-1, vmax=1, cbar=i == 0, cbar_ax=axes[0][-1],
                    cbar_kws={"label": "rho: demo-image attention vs correct"})
        for h in r["heads"]:
            ax.plot(h["head"] + 0.5, h["layer"] + 0.5, "o", color="black", markersize=5)
        ax.grid(False)
        if np.isnan(rho).all():
            ax.text(rho.shape[1] / 2, rho.shape[0] / 2, "no test:\nall right or\nall wrong", ha="center",
                    va="center", fontsize=9, color="0.3")
        ax.set_title(f"{r['task']}, {r['condition']}\n{r['correct']}/{r['n']} right", fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer" if i == 0 else "")
    fig.suptitle(title or f"{rows[0]['model']}: heads whose demo-image attention predicts a correct answer "
                 "(dot: FDR 5%)", fontsize=10, y=1.12)
    return fig


def patch_maps(maps, heads: list[tuple[int, int]] | None = None, title: str | None = None):
    """The answer row's attention over every image's patches, drawn over the images (demos, then the query): the
    first row averaged over layers and heads, then one row per (layer, head) in `heads`. Colour: attention on each
    image token (one scale per row); the share of the row on each image (all its tiles) is in its title. Tiles of
    a split image are drawn in place; a global thumbnail or base image only where the image has no other tiles."""
    style()
    panels = [("mean over layers and heads", None)] + [(f"layer {la} head {h}", (la, h)) for la, h in heads or []]
    fig, axes = plt.subplots(len(panels), len(maps), figsize=(0.8 + 1.9 * len(maps), 0.4 + 2.0 * len(panels)),
                             squeeze=False)
    for row, (label, head) in enumerate(panels):
        pick = (lambda h: h.nanmean((0, 1))) if head is None else (lambda h, lh=head: h[lh[0], lh[1]])
        heat = [[pick(h).numpy() for h in m.heat] for m in maps]
        top = max(float(t.max()) for hs in heat for t in hs) or 1.0
        for col, (ax, m, hs) in enumerate(zip(axes[row], maps, heat)):
            w, h = m.grid.size
            ax.imshow(np.asarray(m.image.convert("RGB")), extent=(0, w, h, 0))
            tiles = [(t, x) for t, x in zip(m.grid.tiles, hs)
                     if t.name not in ("global", "base") or len(m.grid.tiles) == 1]
            for tile, x in tiles:
                x0, y0, x1, y1 = tile.box
                im = ax.imshow(x, extent=(x0 * w, x1 * w, y1 * h, y0 * h), cmap="magma", alpha=0.6, vmin=0,
                               vmax=top, interpolation="nearest")
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            who = "query" if m.grid.owner < 0 else f"demo {m.grid.owner}"
            ax.set_title(f"{who}: {100 * sum(float(x.sum()) for x in hs):.1f}%", fontsize=9)
            if col == 0:
                ax.set_ylabel(label, fontsize=9)
        fig.colorbar(im, ax=list(axes[row]), fraction=0.02, pad=0.01, label="attention per token")
    fig.suptitle(title or "Where the answer position looks in each image", y=0.9 + 0.1 / len(panels) ** 0.5)
    return fig


def _head_maps(res: dict, maps: dict, boxed: str, title: str, cbar: str, dashed: str | None = None,
               edge="black", **heatmap):
    """One layer x head heatmap per task of `maps` {task: [layer][head]}, the task's heads in `res[boxed]` boxed in
    `edge` (and those in `res[dashed]` in dashed boxes)."""
    style()
    fig, axes = plt.subplots(1, len(maps), figsize=(3.1 * len(maps), 3.0), squeeze=False)
    for i, (ax, (task, values)) in enumerate(zip(axes[0], maps.items())):
        last = i == len(maps) - 1
        sns.heatmap(np.array(values), ax=ax, annot=True, fmt=".2f", annot_kws={"fontsize": 7}, cbar=last,
                    cbar_kws={"label": cbar} if last else None, **heatmap)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("head")
        ax.set_ylabel("layer" if i == 0 else "")
        for layer, head in res[boxed][task]:
            ax.add_patch(plt.Rectangle((head, layer), 1, 1, fill=False, edgecolor=edge, lw=2.2))
        for layer, head in res[dashed][task] if dashed else []:
            ax.add_patch(plt.Rectangle((head + 0.08, layer + 0.08), 0.84, 0.84, fill=False, edgecolor=PALETTE[4],
                                       lw=1.6, ls="--"))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def micl_head_scores(res: dict):
    """Per task: each head's Spearman rho between its attention on the answer-carrying demo images and a correct
    answer (layer x head); the task's MICL heads boxed, its most-attending heads in dashed boxes."""
    maps = {t: v["rho"] for t, v in res["predict"].items() if v["rho"] is not None}
    return _head_maps(res, maps, "heads", f"{res['organism']}: does a head's attention to the demo images go with a "
                      f"correct answer? (black: each task's {res['k']} MICL heads; dashed: its {res['k']} "
                      "most-attending heads)", "Spearman rho", dashed="attending_heads", cmap="vlag", center=0.0,
                      vmin=-0.5, vmax=0.5)


def micl_head_effects(res: dict):
    """Per task: 4-shot accuracy plain, with the demo images removed, with each selection of heads mean-ablated (MICL:
    demo-image attention predicts a correct answer; most-attending; causal: the largest single-head ablation effects
    on other episodes) and with random head sets ablated (one dot a draw); below, how often a misleading run gives
    the right run's answer, unpatched, with each selection patched in from the right run, and with random heads."""
    style()
    tasks = res["tasks"]
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 6.6), squeeze=False, sharey=True)
    colour = {"4-shot": PALETTE[0], "no-image": PALETTE[1], "misleading": PALETTE[1]}
    for key, c in (("micl", PALETTE[2]), ("attending", PALETTE[4]), ("causal", PALETTE[5])):
        colour[f"ablate_{key}"] = colour[f"patch_{key}"] = c
    chosen = [("micl", "MICL\n(pred.)"), ("attending", "most-\nattend."), ("causal", "causal\n(held out)")]
    rows = [("ablation: 4-shot accuracy", [("4-shot", "4-shot"), ("no-image", "no\nimage")]
             + [(f"ablate_{k}", label) for k, label in chosen], "ablate_random"),
            ("patching: misleading demos,\nright run's answer", [("misleading", "mis-\nleading")]
             + [(f"patch_{k}", label) for k, label in chosen], "patch_random")]
    for row, (label, cells, rand_key) in enumerate(rows):
        for ax, (task, r) in zip(axes[row], tasks.items()):
            for x, (key, _) in enumerate(cells):
                acc, err = _acc_err(r[key])
                ax.bar(x, acc, yerr=np.array([err]).T, color=colour[key], capsize=3, width=0.7)
                ax.text(x, acc + err[1] + 0.02, f"{100 * acc:.0f}", ha="center", fontsize=7)
            rand = [c["acc"] for c in r[rand_key]]
            x = len(cells)
            ax.boxplot([rand], positions=[x], widths=0.5, showfliers=False)
            jitter = np.random.default_rng(0).uniform(-0.18, 0.18, len(rand))
            ax.scatter(x + jitter, rand, s=8, color=PALETTE[7], alpha=0.7, zorder=3)
            ax.set_xticks(range(len(cells) + 1), [c[1] for c in cells] + [f"random {res['k']}\n({len(rand)})"],
                          fontsize=7)
            ax.set_ylim(0, 1.12)
            name = lambda hs: ", ".join(f"L{la}H{h}" for la, h in hs)
            ax.set_title(f"{task}\nMICL {name(res['heads'][task])}; most-attending "
                         f"{name(res['attending_heads'][task])};\ncausal {name(res['causal_heads'][task])}"
                         if row == 0 else "", fontsize=8)
        axes[row][0].set_ylabel(label, fontsize=9)
    fig.suptitle(f"{res['organism']}: three selections of {res['k']} heads per task, ablated and patched at the answer "
                 f"position, against random heads (n = {res['n']}, 95% CI)", fontsize=10)
    fig.tight_layout()
    return fig


def micl_single_head_ablation(res: dict):
    """Per task: 4-shot accuracy with one head mean-ablated at the answer position (support episodes), layer x head;
    the task's causal heads boxed."""
    return _head_maps(res, res["single_ablation"], "causal_heads", f"{res['organism']}: 4-shot accuracy with one head "
                      f"mean-ablated at the answer position (support split, n = {res['n']}; boxed: the {res['k']} "
                      "causal heads)", "4-shot accuracy", edge=PALETTE[2], cmap="rocket", vmin=0.4, vmax=1.0)


MMICT_LABELS = {"base": "base", "finetune": "plain fine-tuning", "icl-tune": "in-context tuning",
                "mmict-tokens": "MMICT, hub tokens", "mmict-residual": "MMICT, residual hub"}  # experiments.mmict's


def mmict_figure(results: dict):
    """MMICT against plain fine-tuning and in-context tuning (`experiments.mmict`): accuracy per task at 4 shots and
    with the demo images removed (95% Wilson intervals), and where the answer row looks at 4 shots (stacked, % of
    the row, mean over tasks)."""
    style()
    methods, tasks = results["methods"], results["tasks"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [1, 1, 1.1]})
    for ax, cond in zip(axes[:2], ("4-shot", "no-image")):
        _grouped_bars(ax, tasks, {MMICT_LABELS.get(m, m): [r["tasks"][t][cond] for t in tasks]
                                  for m, r in methods.items()})
        ax.set_title(f"accuracy, {cond}" + (" (demo images removed)" if cond == "no-image" else ""), fontsize=10)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, ncol=len(names), frameon=False, loc="upper center",
               bbox_to_anchor=(0.36, 0.99))
    cells = [r["tasks"][t]["4-shot"]["looks_at"] for r in methods.values() for t in tasks]
    parts = parts_present(c for c in cells if any(v > 0 for v in c.values()))
    ax = axes[2]
    _part_stack(ax, [MMICT_LABELS.get(m, m) for m in methods],
                {part: [100 * np.mean([r["tasks"][t]["4-shot"]["looks_at"].get(part, 0.0) for t in tasks])
                        for r in methods.values()] for part in parts}, "% of the answer row's attention (4-shot)")
    ax.set_title("where the answer row looks", fontsize=10)
    ax.legend(fontsize=7, ncol=3, frameon=False, loc="upper center", bbox_to_anchor=(0.45, -0.22))
    fig.suptitle(f"{results['organism']}: MMICT vs plain fine-tuning vs in-context tuning, the same "
                 f"{results['steps']} training steps (n = {results['n']} queries a cell, 95% CI)", y=1.03)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig
