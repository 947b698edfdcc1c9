"""The DARA and MTV experiments end to end on a shipped organism, at toy sizes: every table, figure and artifact
they promise is written, and the table's numbers are the ones in the results file."""

import json
from pathlib import Path

import pytest

from experiments.interventions import MTVSettings, dara_experiment, mtv_experiment
from micl_probe.evaluation import Accuracy


@pytest.mark.filterwarnings("ignore")
def test_mtv_experiment_writes_table_figures_and_artifacts(tmp_path):
    settings = MTVSettings(n=6, n_prompts=2, reinforce_steps=2, scaling_prompts=(1,), icl_shots=(1, 2))
    res = mtv_experiment(organisms=("true-micl",), tasks={"true-micl": {"clock_math": "red"}}, settings=settings,
                         out=tmp_path)
    r = res["organisms"]["true-micl"]["tasks"]["clock_math"]
    assert {"0-shot", "4-shot", "8-shot", "mtv", "fv", "tv", "scaling_mtv", "scaling_icl"} <= set(r)
    assert [s["shots"] for s in r["scaling_icl"]] == [1, 2] and r["scaling_mtv"][0]["shots_compressed"] == 4
    assert json.loads((tmp_path / "mtv_results.json").read_text()) == json.loads(json.dumps(res))
    table = (tmp_path / "mtv_table.md").read_text()
    assert "### true-micl" in table and str(Accuracy(r["mtv"]["correct"], r["mtv"]["n"])) in table
    for stem in ("mtv_accuracy", "mtv_scaling"):
        assert (tmp_path / f"{stem}.png").stat().st_size > 0 and (tmp_path / f"{stem}.pdf").stat().st_size > 0
    assert (tmp_path / "artifacts" / "mtv_true-micl_clock_math.safetensors").is_file()


@pytest.mark.filterwarnings("ignore")
def test_dara_experiment_writes_table_figures_and_artifacts(tmp_path):
    res = dara_experiment(tasks=("outlier",), n=6, steps=2, alphas=(1, 2), out=tmp_path)
    r = res["organisms"]["partial"]["outlier"]
    assert r["dara_params"] == 4 * 5 and r["lora_params"] > 20 * r["dara_params"]
    assert 0.0 <= r["dara_vs_k_shot_p"] <= 1.0
    assert [s["alpha"] for s in r["sweep"]] == [1, 2]
    assert json.loads((tmp_path / "dara_results.json").read_text()) == json.loads(json.dumps(res))
    table = (tmp_path / "dara_table.md").read_text()
    assert str(Accuracy(r["dara"]["correct"], r["dara"]["n"])) in table
    demos = [100 * (r[f"image_share_{t}"] - r[f"query_image_share_{t}"]) for t in ("before", "after")]
    assert f"{demos[0]:.1f}% → {demos[1]:.1f}%" in table  # the demo images' share: all images minus the query's
    for stem in ("dara_accuracy", "dara_factors", "dara_alpha_sweep"):
        assert (tmp_path / f"{stem}.png").stat().st_size > 0
    assert (tmp_path / "artifacts" / "dara_partial_outlier.safetensors").is_file()


def test_mtv_experiment_names_the_missing_tasks():
    with pytest.raises(ValueError, match="no MTV tasks for 'text-shortcut'.*true-micl"):
        mtv_experiment(organisms=("text-shortcut",))


@pytest.mark.filterwarnings("ignore")
def test_micl_heads_experiment_writes_table_figures_and_its_numbers(tmp_path):
    """At toy size: each task's heads come from its own rho map (the top k), the random sets are k distinct heads,
    every cell is an accuracy over the task's n queries, and the table shows the results file's numbers."""
    import numpy as np

    from experiments.micl_heads import micl_heads_experiment

    res = micl_heads_experiment(tasks=("novel_binding", "clock_math"), n=12, k=2, draws=3, min_each=1, out=tmp_path)
    assert json.loads((tmp_path / "micl_heads_results.json").read_text()) == json.loads(json.dumps(res))
    for task, r in res["tasks"].items():
        rho = np.array(res["predict"][task]["rho"])
        top = sorted(rho.ravel(), reverse=True)[:2]
        assert sorted(rho[tuple(np.array(res["heads"][task]).T)], reverse=True) == top
        assert all(c["n"] == 12 for c in [r["4-shot"], r["ablate_micl"], r["misleading"], *r["patch_random"]])
        assert len(r["ablate_random"]) == 3
    assert all(len({tuple(h) for h in s}) == 2 for s in res["random_heads"])
    table = (tmp_path / "micl_heads_table.md").read_text()
    r = res["tasks"]["clock_math"]
    for key in ("ablate_micl", "patch_micl", "ablate_attending"):
        assert str(Accuracy(r[key]["correct"], 12)) in table
    for stem in ("micl_heads_predict", "micl_heads_ablation"):
        assert (tmp_path / f"{stem}.png").stat().st_size > 0 and (tmp_path / f"{stem}.pdf").stat().st_size > 0


def test_true_micls_causal_binding_heads_matter_at_small_n():
    """A small-n version of experiments/micl_heads.py from the shipped weights and its published heads (40 queries,
    the first 10 of its random 3-head sets): mean-ablating novel binding's causal heads takes 4-shot accuracy at least
    halfway down to the no-image control and below the random sets' median; patching them from the right run into a
    run with the names swapped gives back the right answer (>= 90%), where random sets give back almost none."""
    import numpy as np

    from experiments.micl_heads import _mask, patched_verdicts, patching_batches, patching_pairs
    from micl_probe import load, sample_episodes
    from micl_probe.evaluation import which_correct
    from micl_probe.interventions.mtv import extract, injection

    res = json.loads((Path(__file__).parent.parent / "figures" / "micl_heads_results.json").read_text())
    heads, random_sets = res["causal_heads"]["novel_binding"], res["random_heads"][:10]
    loaded = load("organism:true-micl")
    shape = (loaded.adapter.n_layers(loaded.model), loaded.adapter.n_heads(loaded.model))
    four = sample_episodes("novel_binding", 4, 40, seed=0, split="query")
    means = extract(loaded, iter(four), n_prompts=len(four)).mean
    ablated = lambda hs: which_correct(loaded, four, injection(loaded, means, _mask(hs, shape))).float().mean().item()
    clean = which_correct(loaded, four).float().mean().item()
    blind = which_correct(loaded, [e.without_demo_images() for e in four]).float().mean().item()
    assert clean >= 0.95 and ablated(heads) <= (clean + blind) / 2
    assert ablated(heads) < np.median([ablated(s) for s in random_sets])
    pairs = patching_batches(loaded, patching_pairs("novel_binding", 40, 4, seed=0))
    assert patched_verdicts(loaded, pairs, None).float().mean() == 0  # the misleading run follows the swapped names
    assert patched_verdicts(loaded, pairs, _mask(heads, shape)).float().mean() >= 0.9
    assert np.median([patched_verdicts(loaded, pairs, _mask(s, shape)).float().mean() for s in random_sets]) < 0.2


@pytest.mark.filterwarnings("ignore")
def test_papers_experiment_table_is_its_records(tmp_path):
    """At toy size: each table cell is recomputed from the records (accuracy, McNemar against 4-shot on the same
    queries, the random sets' accuracies), and main writes the table, results and figures."""
    from experiments.papers import main, papers_experiment, papers_table
    from micl_probe.evaluation import mcnemar_p

    res = papers_experiment(("true-micl",), tasks=("novel_binding",), n=6, draws=2, calibration=3)
    rows, md = papers_table(res["records"], 2)
    (row,) = rows
    cell = lambda c: sorted((r["index"], r["correct"]) for r in res["records"] if r["condition"] == c)  # noqa: E731
    base, ko = cell("4-shot"), cell("4-shot+knockout=top-3:induction")
    assert row["4-shot+knockout=top-3:induction"]["correct"] == sum(c for _, c in ko)
    assert row["4-shot+knockout=top-3:induction"]["p"] == mcnemar_p([c for _, c in base], [c for _, c in ko])
    assert row["random"]["acc"] == [sum(c for _, c in cell(f"4-shot+knockout=random-3:{s}")) / 6 for s in (0, 1)]
    assert str(Accuracy(row["no-image"]["correct"], 6)) in md
    main(["--out", str(tmp_path), "--organisms", "true-micl", "--n", "3", "--draws", "1"])
    assert (tmp_path / "papers_table.md").is_file() and (tmp_path / "papers_head_scores_true-micl.png").is_file()


@pytest.mark.filterwarnings("ignore")
def test_mmict_experiment_writes_its_table_from_its_verdicts(tmp_path):
    """experiments.mmict on a few queries and steps: every method's cells, the paired tests of the same queries, the
    hub artifacts, the table and the figure; the table's numbers are the results file's."""
    from experiments.mmict import METHODS, mmict_experiment

    res = mmict_experiment(tasks=("clock_math",), n=4, steps=2, out=tmp_path)
    assert list(res["methods"]) == list(METHODS)
    cells = {m: r["tasks"]["clock_math"] for m, r in res["methods"].items()}
    assert all(c[cond]["n"] == 4 for c in cells.values() for cond in ("4-shot", "no-image"))
    assert cells["mmict-tokens"]["4-shot"]["looks_at"]["query_hub"] > 0
    assert cells["mmict-residual"]["4-shot"]["looks_at"]["query_hub"] == 0  # no hub tokens: nothing there
    assert res["methods"]["base"]["params"] == 0 and res["methods"]["finetune"]["params"] == \
        res["methods"]["icl-tune"]["params"]
    gap = res["tests"]["clock_math"]["icl-tune: 4-shot vs no-image"]
    assert gap["difference"] == cells["icl-tune"]["4-shot"]["acc"] - cells["icl-tune"]["no-image"]["acc"]
    table = (tmp_path / "mmict_table.md").read_text()
    assert str(Accuracy(cells["mmict-residual"]["4-shot"]["correct"], 4)) in table and "query hub tokens" in table
    assert json.loads((tmp_path / "mmict_results.json").read_text()) == json.loads(json.dumps(res))
    assert (tmp_path / "mmict_accuracy.png").stat().st_size > 0
    for placement in ("tokens", "residual"):
        assert (tmp_path / "artifacts" / f"mmict_{placement}_partial.safetensors").is_file()
