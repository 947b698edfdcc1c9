"""Regenerate every figure in figures/ from scratch, fixed seeds, consistent style (PNG + vector PDF).

    python -m experiments.figures                 # everything, from the repository root
    python -m experiments.figures --only tasks truemicl attention

An experiment driver, not part of the library: it only calls micl_probe's API.

Figures (stem: content):
  tasks_gallery            one query image of every task
  truemicl_accuracy        the three organisms x four tasks x zero-shot / no-image / 4-shot (95% CI)
  truemicl_visual_share    attention of the answer position on image tokens, per condition and organism
  truemicl_layers          visual share per layer, per organism and condition (episodes as 95% bands)
  accuracy_vs_attention    true-micl: binned accuracy vs visual share + per-head Spearman map
  attention_heatmap        true-micl, novel_binding 4-shot: visual share per layer x head
  attention_by_turn        the same episodes: attention by demo / query and role
  dara_accuracy, dara_factors, dara_alpha_sweep     partial, first decoder layer (experiments.interventions)
  dara_all_layers/dara_*                            partial, DARA and LoRA on every decoder layer
  mtv_accuracy, mtv_scaling                         true-micl's three tasks (experiments.interventions)
  micl_heads_predict, _single, _ablation           true-micl's MICL heads (experiments.micl_heads)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

from micl_probe import RunConfig, capture_attention, load, run
from micl_probe.evaluation import accuracy_vs_attention, head_predictiveness
from micl_probe.tasks import chance, sample_episodes, task_names
from micl_probe.viz import plots

from .interventions import MTVSettings, dara_experiment, mtv_experiment
from .micl_heads import micl_heads_experiment

TRUEMICL_TASKS = ["novel_binding", "clock_math", "palindrome", "outlier"]
PARTS = ("tasks", "truemicl", "attention", "dara", "mtv", "heads")
MICL_ORGANISM = "organism:true-micl"  # the organism whose attention the single-organism figures show


def tasks_gallery(out: Path):
    names = task_names() + task_names(shortcut=True)
    tile, pad = 96, 18
    sheet = Image.new("RGB", (7 * (tile + 8), 2 * (tile + pad) + 4), "white")
    draw = ImageDraw.Draw(sheet)
    for i, name in enumerate(names):
        ep = sample_episodes(name, 0, 1, seed=0)[0]
        x, y = (i % 7) * (tile + 8), (i // 7) * (tile + pad)
        sheet.paste(ep.query.images[0].resize((tile, tile), Image.NEAREST), (x, y + pad))
        draw.text((x, y + 2), name.replace("_shortcut", "*")[:16], fill="black")
    sheet.save(out / "tasks_gallery.png")
    sheet.save(out / "tasks_gallery.pdf")


def truemicl(out: Path, n: int):
    records = []
    for name in ("organism:true-micl", "organism:partial", "organism:text-shortcut"):
        records += run(load(name), TRUEMICL_TASKS, ["zero-shot", "no-image", "4-shot"], RunConfig(n=n),
                       results=out / "runs" / "truemicl.jsonl")
    plots.save(plots.accuracy_bars(records, {t: chance(t) for t in TRUEMICL_TASKS}), out / "truemicl_accuracy")
    plots.save(plots.looks_at_bars(records), out / "truemicl_looks_at")
    plots.save(plots.image_share_by_layer(records), out / "truemicl_layers")
    plots.save(plots.demo_position(records), out / "truemicl_demo_position")
    mine = [r for r in records if r["model"] == MICL_ORGANISM]
    plots.save(plots.accuracy_vs_attention(accuracy_vs_attention(mine), head_predictiveness(mine)),
               out / "accuracy_vs_attention")


def attention(out: Path):
    loaded = load(MICL_ORGANISM)
    am = capture_attention(loaded, sample_episodes("novel_binding", 4, 50, seed=0))
    plots.save(plots.visual_share_heatmap(am), out / "attention_heatmap")
    plots.save(plots.demo_stacked_bars(am), out / "attention_by_turn")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="figures")
    ap.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--n", type=int, default=200, help="queries per cell (default: %(default)s)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if "tasks" in args.only:
        tasks_gallery(out)
    if "truemicl" in args.only:
        truemicl(out, args.n)
    if "attention" in args.only:
        attention(out)
    if "dara" in args.only:
        dara_experiment(out=out, n=args.n)
        dara_experiment(out=out / "dara_all_layers", n=args.n, layers=(0, 1, 2, 3))
    if "mtv" in args.only:
        mtv_experiment(settings=MTVSettings(n=args.n), out=out)
    if "heads" in args.only:
        micl_heads_experiment(n=args.n, out=out)
    print(f"figures in {out}/")


if __name__ == "__main__":
    main()
