"""Figures. Each function draws views an analysis object already provides and returns the Figure;
`save(fig, stem)` writes stem.png and stem.pdf. Colour-blind-safe palette throughout (seaborn "colorblind").

    fig = plots.visual_share_heatmap(am); plots.save(fig, "figures/attn_heatmap")
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from .attention import AttentionMass

PALETTE = sns.color_palette("colorblind")
ROLE_COLOURS = {"image": PALETTE[0], "image_markup": PALETTE[9], "question": PALETTE[2], "answer": PALETTE[1],
                "template": PALETTE[7], "special": PALETTE[3]}


def style():
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=1.1)
    plt.rcParams.update({"figure.dpi": 120, "savefig.dpi": 200, "pdf.fonttype": 42, "savefig.bbox": "tight"})


def save(fig, stem: str | Path) -> list[Path]:
    """Write `stem.png` and `stem.pdf` (vector); returns both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p)
    plt.close(fig)
    return paths


def visual_share_heatmap(am: AttentionMass, title: str | None = None):
    """Layer x head heatmap of the share of attention on image tokens, mean over episodes."""
    style()
    share = am.visual_share().mean(0).numpy()  # [layer, head]
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * share.shape[1], 1.0 + 0.4 * share.shape[0]))
    sns.heatmap(share, ax=ax, vmin=0, vmax=max(0.05, float(share.max())), cmap="viridis", annot=share.size <= 64,
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
        t = t.mean(0)
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


# --- figures from harness records (lists of dicts, see micl_probe.harness) ---------------------------------
def _frame(records):
    import pandas as pd

    return pd.DataFrame(records)


def accuracy_bars(records, title: str | None = None):
    """Accuracy per task and condition (bars, 95% CI), one panel per model."""
    style()
    df = _frame(records)
    df["accuracy"] = df["correct"].astype(float)
    models = list(dict.fromkeys(df["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.6), sharey=True, squeeze=False)
    for ax, model in zip(axes[0], models):
        sns.barplot(df[df["model"] == model], x="task", y="accuracy", hue="condition", errorbar=("ci", 95), ax=ax,
                    hue_order=list(dict.fromkeys(df["condition"])))
        ax.set_title(model)
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", rotation=30)
        ax.legend(fontsize=8, frameon=False)
    fig.suptitle(title or "Accuracy by task and condition (95% CI)")
    return fig


def visual_share_bars(records, title: str | None = None):
    """Share of attention on image tokens at the answer position, per condition and model (95% CI)."""
    style()
    df = _frame(records)
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    sns.barplot(df, x="condition", y="visual_share", hue="model", errorbar=("ci", 95), ax=ax)
    ax.set_ylabel("attention on image tokens")
    ax.set_title(title or "Where the answer position looks")
    ax.legend(fontsize=8, frameon=False)
    return fig


def layer_share_curves(records, title: str | None = None):
    """Visual share per layer (mean over heads), one line per model x condition, episodes as 95% CI bands."""
    style()
    rows = [{"layer": layer, "visual share": v, "model / condition": f"{r['model']} / {r['condition']}"}
            for r in records for layer, v in enumerate(r["visual_share_by_layer"])]
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    sns.lineplot(_frame(rows), x="layer", y="visual share", hue="model / condition", errorbar=("ci", 95),
                 marker="o", ax=ax)
    ax.set_title(title or "Attention on image tokens by layer")
    ax.legend(fontsize=7, frameon=False)
    return fig


def head_heatmaps(records, condition: str, title: str | None = None):
    """Layer x head visual share under one condition, one panel per model."""
    style()
    models = list(dict.fromkeys(r["model"] for r in records))
    fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 3.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        heads = np.array([r["visual_share_by_head"] for r in records
                          if r["model"] == model and r["condition"] == condition]).mean(0)
        sns.heatmap(heads, ax=ax, vmin=0, vmax=1, cmap="viridis", annot=heads.size <= 64, fmt=".2f",
                    cbar=ax is axes[0][-1])
        ax.set_title(model)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    fig.suptitle(title or f"Attention on image tokens per head ({condition})")
    return fig
