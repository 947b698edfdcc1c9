"""python -m micl_probe.train: every intervention trained on a user's model folder, on a folder task, written where
attn_report runs it; a LoRA adapter acts only inside its +lora conditions; flag mistakes end in one line."""

import json

import pytest
import torch

from micl_probe import load
from micl_probe.interventions import lora_intervention, train_lora
from micl_probe.interventions.fitting import FitConfig
from micl_probe.testing import noise_episode, tiny_model
from micl_probe.testing.folders import vlicl_fixture


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    model, processor = tiny_model("qwen2_vl")
    model.save_pretrained(root / "my.model")
    processor.save_pretrained(root / "my.model")
    return root, root / "my.model", vlicl_fixture(root, n_support=10)


def test_train_every_intervention_and_report_with_them(setup, capsys):
    from micl_probe.attn_report import main as report
    from micl_probe.train import main as train

    root, model, data = setup
    task = f"vlicl:{data}/clevr"
    common = ["--model", str(model), "--shots", "2", "--steps", "2", "--batch", "2"]
    train(["dara", "--task", task, "--out", str(root / "dara")] + common)
    assert "--dara " + str(root / "dara") in capsys.readouterr().out
    train(["lora", "--task", task, "--out", str(root / "lora")] + common)
    train(["icl-tune", "--task", task, "clock_math", "--out", str(root / "icl")] + common)
    train(["mtv", "--task", task, "--out", str(root / "mtv"), "--n-prompts", "2"] + common)
    train(["mmict", "--task", task, "clock_math", "--out", str(root / "hub"), "--hub-queries", "3", "--hub-width",
           "16", "--hub-layers", "1"] + common)
    assert "2-shot+mmict --mmict " + str(root / "hub") in capsys.readouterr().out
    train(["finetune", "--task", task, "--out", str(root / "ft")] + common)
    hub = json.loads((root / "hub.json").read_text())
    assert hub["tasks"] == [task, "clock_math"] and hub["hub"]["n_queries"] == 3 and hub["training"]["lr"] == 1e-3
    assert (root / "ft" / "adapter_config.json").is_file()
    info = json.loads((root / "dara.json").read_text())
    assert info["task"] == task and info["shots"] == 2 and info["shape"] == [1, 4, 3]
    assert (root / "lora" / "adapter_config.json").is_file() and (root / "icl" / "adapter_config.json").is_file()
    assert json.loads((root / "icl" / "micl_probe_training.json").read_text())["tasks"] == [task, "clock_math"]
    assert (root / "mtv_means.safetensors").is_file() and (root / "mtv_heads.json").is_file()
    out = root / "report"
    report(["--model", str(model), "--tasks", task, "--conditions", "2-shot", "2-shot+dara", "2-shot+lora",
            "zero-shot+mtv", "2-shot+mmict", "--dara", str(root / "dara"), "--lora", str(root / "icl"), "--mmict",
            str(root / "hub"), "--mtv",
            str(root / "mtv_means"), str(root / "mtv_heads"), "--n", "2", "--max-new-tokens", "2", "--out", str(out)])
    table = json.loads((out / "results.json").read_text())["accuracy"][str(model)]["vlicl:clevr"]
    assert set(table) == {"2-shot", "2-shot+dara", "2-shot+lora", "zero-shot+mtv", "2-shot+mmict"}
    md = (out / "report.md").read_text()
    assert "query hub tokens" in md and "tasks vlicl:clevr" not in md and f"tasks {task} clock_math" in md


def test_a_lora_adapter_acts_only_inside_its_condition(tmp_path):
    model, processor = tiny_model("llava")
    from micl_probe.core import Loaded, adapter_for

    loaded = Loaded(model, processor, adapter_for(model), name="tiny")
    batch = loaded.prepare_batch([noise_episode(2)])
    with torch.no_grad():
        base = model(**batch.inputs).logits
    peft_model, _ = train_lora(loaded, "outlier", shots=2, rank=2, fit_config=FitConfig(steps=3, batch=2, lr=0.05))
    peft_model.save_pretrained(tmp_path / "adapter")
    loaded.model = peft_model.unload()
    fresh, processor = tiny_model("llava")
    again = Loaded(fresh, processor, adapter_for(fresh), name="tiny")
    lora = lora_intervention(again, str(tmp_path / "adapter"))
    with torch.no_grad():
        outside = again.model(**batch.inputs).logits
        with lora(batch.layouts):
            inside = again.model(**batch.inputs).logits
        after = again.model(**batch.inputs).logits
    torch.testing.assert_close(outside, base, atol=1e-6, rtol=0)
    torch.testing.assert_close(after, base, atol=1e-6, rtol=0)
    assert (inside - base).abs().max() > 1e-4


@pytest.mark.parametrize("flags, says", [
    (["dara", "--task", "sudoku"], "--task: unknown task 'sudoku'"),
    (["dara", "--task", "clock_math", "outlier"], "--task: dara trains on one task; icl-tune, finetune, mmict take"),
    (["lora", "--task", "clock_math", "--steps", "0"], "--steps 0: give at least 1"),
    (["dara", "--task", "clock_math", "--device", "cuda"], "--device cuda: this machine has no CUDA device"),
    (["dara", "--task", "clock_math", "--model", "organism:nope"], "--model organism:nope: no shipped organism 'nope'"),
    (["dara", "--task", "OPEN_MI"], "open_mi has no training split"),
    (["mmict", "--task", "clock_math", "--hub-width", "18"], "--hub-width 18: give a multiple of 4"),
    (["mmict", "--task", "clock_math", "--hub-queries", "0"], "--hub-queries 0: give at least 1"),
])
def test_train_cli_mistakes_are_one_line(setup, flags, says, capsys):
    from micl_probe.train import main as train

    root, model, data = setup
    flags = [f"vlicl:{data}/open_mi" if f == "OPEN_MI" else f for f in flags]
    base = ["--model", str(model)] if "--model" not in flags else []
    with pytest.raises(SystemExit) as exit_:
        train(flags + base + ["--out", str(root / "never"), "--steps" if "--steps" not in flags else "--seed", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    (line,) = [x for x in err if x.startswith("error:")]
    assert exit_.value.code == 2 and says in line and not (root / "never").exists()


def test_loading_a_folder_keeps_its_dotted_name(setup):
    root, model, _ = setup
    assert load(str(model)).name == str(model)
