"""Regenerate every figure in figures/ from scratch, fixed seeds, consistent style (PNG + vector PDF).

    python -m experiments.figures                 # everything (~20 min on a 2-core CPU), from the repository root
    python -m experiments.figures --only tasks truemicl attention

An experiment driver, not part of the library: it only calls micl_probe's API.

Figures (stem: content):
  tasks_gallery            one query image of every task
  truemicl_accuracy        the three organisms x four tasks x zero-shot / no-image / 4-shot (95% CI)
  truemicl_visual_share    attention of the answer position on image tokens, per condition and organism
  truemicl_layers          visual share per layer, per organism and condition (episodes as 95% bands)
  accuracy_vs_attention    novel-binding organism: binned accuracy vs visual share + per-head Spearman map
  attention_heatmap        novel-binding organism, novel_binding 4-shot: visual share per layer x head
  attention_by_turn        the same episodes: attention by demo / query and role
  dara_accuracy, dara_factors, dara_alpha_sweep     text-shortcut organism (experiments.interventions.dara_experiment)
  mtv_accuracy, mtv_scaling                         both organisms (experiments.interventions.mtv_experiment)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

from micl_probe import RunConfig, capture_attention, load, run
from micl_probe.evaluation import accuracy_vs_attention, head_predictiveness
from micl_probe.tasks import chance, options_for, sample_episodes, task_names
from micl_probe.viz import plots

from .interventions import MTVSettings, dara_experiment, mtv_experiment

TRUEMICL_TASKS = ["novel_binding", "outlier", "clock_math", "shape_count"]
PARTS = ("tasks", "truemicl", "attention", "dara", "mtv")
MICL_ORGANISM = "organism:novel-binding"  # the organism whose attention the single-organism figures show


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
    for name in ("organism:true-micl", "organism:novel-binding", "organism:text-shortcut"):
        # the harness draws novel_binding as each organism was trained on it (tasks.options_for)
        records += run(load(name), TRUEMICL_TASKS, ["zero-shot", "no-image", "4-shot"], RunConfig(n=n),
                       results=out / "runs" / "truemicl.jsonl")
    plots.save(plots.accuracy_bars(records, {t: chance(t) for t in TRUEMICL_TASKS}), out / "truemicl_accuracy")
    plots.save(plots.visual_share_bars(records), out / "truemicl_visual_share")
    plots.save(plots.layer_share_curves(records), out / "truemicl_layers")
    mine = [r for r in records if r["model"] == MICL_ORGANISM]
    plots.save(plots.accuracy_vs_attention(accuracy_vs_attention(mine), head_predictiveness(mine)),
               out / "accuracy_vs_attention")


def attention(out: Path):
    loaded = load(MICL_ORGANISM)
    am = capture_attention(loaded, sample_episodes("novel_binding", 4, 50, seed=0, **options_for(loaded)))
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
    if "mtv" in args.only:
        mtv_experiment(settings=MTVSettings(n=args.n), out=out)
    print(f"figures in {out}/")


if __name__ == "__main__":
    main()
