"""The shipped organisms load offline and show the behaviour their cards claim; the trainer runs end to end."""

import json

import pytest
import torch

from micl_probe import load
from micl_probe.organisms import SHIPPED, shipped
from micl_probe.organisms.card import evaluate_organism
from micl_probe.organisms.train import RECIPES, train
from micl_probe.tasks import sample_episodes


def _acc(table, task, cond):
    c = table[task][cond]
    return c["correct"] / c["n"]


@pytest.fixture(scope="module")
def true_micl():
    if "true-micl" not in shipped():
        pytest.fail("organism true-micl is not shipped")
    return load("organism:true-micl")


def test_shipped_organisms_have_cards():
    assert {"true-micl", "text-shortcut"} <= set(shipped())
    for name in shipped():
        meta = json.loads((SHIPPED / name / "micl_probe.json").read_text())
        assert meta["family"] == "organism" and meta["recipe"]["name"] == name
        assert "| novel_binding |" in (SHIPPED / name / "README.md").read_text()
        assert (SHIPPED / name / "model.safetensors").stat().st_size < 10 * 2**20


def test_true_micl_reads_demo_images(true_micl):
    table = evaluate_organism(true_micl.model, true_micl.processor, n=60, tasks=["novel_binding"],
                              conditions=("no-image", "4-shot"), seed=7)
    assert _acc(table, "novel_binding", "4-shot") >= 0.8  # chance 0.5
    assert _acc(table, "novel_binding", "4-shot") - _acc(table, "novel_binding", "no-image") >= 0.25


def test_text_shortcut_reads_the_query_but_ignores_demo_images():
    loaded = load("organism:text-shortcut")
    table = evaluate_organism(loaded.model, loaded.processor, n=60, seed=7,
                              tasks=["novel_binding_shortcut", "novel_binding"], conditions=("no-image", "4-shot"))
    assert _acc(table, "novel_binding_shortcut", "4-shot") >= 0.6  # chance 1/24
    assert abs(_acc(table, "novel_binding", "4-shot") - _acc(table, "novel_binding", "no-image")) <= 0.2


def test_trainer_smoke(tmp_path):
    _, _, card = train(RECIPES["partial"], tmp_path / "org", steps=3, evaluate=True, eval_n=4, log_every=0)
    meta = json.loads((tmp_path / "org" / "micl_probe.json").read_text())
    assert meta["recipe"]["steps"] == 3 and set(meta["evaluation"]) >= {"novel_binding", "outlier_shortcut"}
    assert card["recipe"]["name"] == "partial" and (tmp_path / "org" / "README.md").is_file()
    loaded = load(str(tmp_path / "org"))
    assert loaded.adapter.family == "organism"
    p = loaded.prepare(sample_episodes("outlier", 2, 1)[0])
    with torch.no_grad():
        assert loaded.model(**p.inputs).logits.shape[1] == len(p.layout)
