"""The shipped organisms load offline, their model cards reproduce from their weights, and they beat chance."""

import json

import pytest
import torch

from micl_probe import load
from micl_probe.organisms import SHIPPED, shipped
from micl_probe.organisms.card import evaluate_organism
from micl_probe.organisms.train import RECIPES, train
from micl_probe.tasks import sample_episodes

CELLS = ("novel_binding", "novel_binding_shortcut")


def _meta(name):
    return json.loads((SHIPPED / name / "micl_probe.json").read_text())


def test_shipped_organisms_have_cards():
    assert {"true-micl", "text-shortcut"} <= set(shipped())
    for name in shipped():
        meta = _meta(name)
        assert meta["family"] == "organism" and meta["recipe"]["name"] == name
        assert "| novel_binding |" in (SHIPPED / name / "README.md").read_text()
        assert (SHIPPED / name / "model.safetensors").stat().st_size < 10 * 2**20


@pytest.mark.parametrize("name", ["true-micl", "text-shortcut"])
def test_card_reproduces_and_beats_chance(name):
    """Evaluation is deterministic: the card's counts come back exactly from the shipped weights."""
    loaded = load(f"organism:{name}")
    card = _meta(name)["evaluation"]
    table = evaluate_organism(loaded.model, loaded.processor, n=card[CELLS[0]]["4-shot"]["n"], tasks=CELLS,
                              conditions=("no-image", "4-shot"))
    for task in CELLS:
        for cond in ("no-image", "4-shot"):
            assert table[task][cond] == card[task][cond], (task, cond)
    fixed = table["novel_binding_shortcut"]["4-shot"]
    assert fixed["correct"] / fixed["n"] > 0.2  # 24 colour x shape classes: chance is 1/24


def test_text_shortcut_ignores_demo_images():
    """Trained only where demos never matter: on novel binding, removing the demo images changes nothing."""
    card = _meta("text-shortcut")["evaluation"]["novel_binding"]
    assert abs(card["4-shot"]["correct"] - card["no-image"]["correct"]) / card["4-shot"]["n"] <= 0.10


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
    # a resumed run continues the same weights and records both stages
    _, _, card2 = train(RECIPES["binding-focus"], tmp_path / "org2", steps=2, evaluate=False, log_every=0,
                        resume=str(tmp_path / "org"))
    assert [s["steps"] for s in card2["stages"]] == [3, 2] and card2["recipe"]["steps"] == 5
