"""Artifacts know what they are: DARA factors, task vectors and attention masses keep dotted names, refuse NaN at
save and load, record the model (weights) and settings they were made for, and refuse another model in one line."""

import json

import pytest
import torch
from safetensors.torch import save_file

from micl_probe import DARA, AttentionMass, TaskVector, load
from micl_probe.interventions import alpha_sweep


@pytest.fixture(scope="module")
def loaded():
    return load("organism:true-micl")


@pytest.fixture(scope="module")
def other():
    return load("organism:text-shortcut")


def test_dotted_names_are_kept(loaded, tmp_path):
    for version, value in (("0.1", 2.0), ("0.2", 3.0)):
        DARA.for_model(loaded, n_images=3).set_alpha(value).save(tmp_path / f"dara_v{version}")
        TaskVector(torch.full((2,), value), "task_vector").save(tmp_path / f"tv_v{version}")
        AttentionMass(torch.full((1, 1, 1, 1), value), ["s"], ["answer"], [[0]], {}).save(tmp_path / f"am_v{version}")
    assert (tmp_path / "dara_v0.1.json").is_file() and (tmp_path / "dara_v0.2.safetensors").is_file()
    for version, value in (("0.1", 2.0), ("0.2", 3.0)):
        assert DARA.load(tmp_path / f"dara_v{version}").alpha.mean().item() == pytest.approx(value)
        assert TaskVector.load(tmp_path / f"tv_v{version}").values[0].item() == value
        assert AttentionMass.load(tmp_path / f"am_v{version}").mass.item() == value
    assert DARA.load(tmp_path / "dara_v0.1.json").alpha.mean().item() == pytest.approx(2.0)  # either suffix given


def test_non_finite_values_are_refused(loaded, tmp_path):
    dara = DARA.for_model(loaded, n_images=3)
    for bad in (float("nan"), float("inf"), 0.0):
        with pytest.raises(ValueError, match="finite numbers > 0"):
            dara.set_alpha(bad)
    with pytest.raises(ValueError, match="finite"):
        alpha_sweep(loaded, alphas=(float("nan"),))
    with torch.no_grad():
        dara.log_alpha[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        dara.save(tmp_path / "nan_dara")
    assert not (tmp_path / "nan_dara.safetensors").exists()
    with pytest.raises(ValueError, match="NaN or infinite"):
        TaskVector(torch.tensor([1.0, float("nan")]), "task_vector")
    # a file written by something else: refused at load
    DARA.for_model(loaded, n_images=3).save(tmp_path / "ok")
    save_file({"log_alpha": torch.full((1, 4, 3), float("inf"))}, str(tmp_path / "ok.safetensors"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        DARA.load(tmp_path / "ok")
    with pytest.raises(ValueError, match="unknown TaskVector kind"):
        TaskVector(torch.zeros(2), "steering")
    with pytest.raises(ValueError, match="not counted from the end"):
        DARA(4, 3, layers=(-1,))


def test_artifacts_record_the_model_and_refuse_another(loaded, other, tmp_path):
    dara = DARA.for_model(loaded, n_images=3)
    dara.save(tmp_path / "d", task="clock_math", shots=2)
    info = json.loads((tmp_path / "d.json").read_text())
    assert info["model"] == "organism:true-micl" and info["weights"] and info["task"] == "clock_math"
    DARA.load(tmp_path / "d", loaded)  # its own model: fine
    with pytest.raises(ValueError, match="was made for 'organism:true-micl', not 'organism:text-shortcut'"):
        DARA.load(tmp_path / "d", other)
    p = next(loaded.model.parameters())
    with torch.no_grad():
        p[0].add_(1e-3)
    try:
        with pytest.warns(UserWarning, match="other weights"):
            DARA.load(tmp_path / "d", loaded)
    finally:
        with torch.no_grad():
            p[0].sub_(1e-3)


def test_report_warns_in_one_line_when_an_artifact_was_made_for_another_task(loaded, tmp_path, capsys):
    from micl_probe.attn_report import main
    DARA.for_model(loaded, n_images=3).save(tmp_path / "dara", task="palindrome", shots=2)
    main(["--model", "organism:true-micl", "--tasks", "clock_math", "--n", "1", "--conditions", "2-shot+dara",
          "--dara", str(tmp_path / "dara"), "--out", str(tmp_path / "rep")])
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warned == ["warning: --dara was made for task 'palindrome' (used with 'clock_math')"]
