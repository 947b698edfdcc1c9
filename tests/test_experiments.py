"""The DARA and MTV experiments end to end on a shipped organism, at toy sizes: every table, figure and artifact
they promise is written, and the table's numbers are the ones in the results file."""

import json

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
    r = res["organisms"]["text-shortcut"]["outlier"]
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
    assert (tmp_path / "artifacts" / "dara_text-shortcut_outlier.safetensors").is_file()


def test_mtv_experiment_names_the_missing_tasks():
    with pytest.raises(ValueError, match="no MTV tasks for 'partial'.*text-shortcut"):
        mtv_experiment(organisms=("partial",))
