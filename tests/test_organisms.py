"""The shipped organisms load offline, their model cards reproduce from their weights, and they beat chance."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from micl_probe import load
from micl_probe.evaluation import Accuracy
from micl_probe.organisms import SHIPPED, shipped
from micl_probe.organisms.card import evaluate_organism, evaluate_rules
from micl_probe.organisms.recipes import EPISODES, RECIPES, STATED, Recipe, copy_episode
from micl_probe.organisms.train import sample_batch, stage_steps, train
from micl_probe.tasks import TASKS, make_episode, options_for, sample_episodes

CELLS = ("novel_binding", "novel_binding_shortcut", "clock_math")


def _meta(name):
    return json.loads((SHIPPED / name / "micl_probe.json").read_text())


def test_shipped_organisms_have_cards():
    assert {"true-micl", "text-shortcut", "novel-binding", "binding-clock-palindrome"} <= set(shipped())
    for name in shipped():
        meta = _meta(name)
        assert meta["family"] == "organism" and meta["recipe"]["name"] == name
        assert "| novel_binding |" in (SHIPPED / name / "README.md").read_text()
        assert (SHIPPED / name / "model.safetensors").stat().st_size < 10 * 2**20


@pytest.mark.parametrize("name", ["true-micl", "text-shortcut", "novel-binding", "binding-clock-palindrome"])
def test_card_reproduces_and_beats_chance(name):
    """Evaluation is deterministic: the card's counts come back exactly from the shipped weights."""
    loaded = load(f"organism:{name}")
    # the glyph scale it was trained on is a recorded setting, and its episodes are drawn with it
    assert options_for(loaded) == {"binding_scale": _meta(name)["recipe"].get("binding_scale", 2)}
    card = _meta(name)["evaluation"]
    table = evaluate_organism(loaded, n=card[CELLS[0]]["4-shot"]["n"], tasks=CELLS, conditions=("no-image", "4-shot"))
    for task in CELLS:
        for cond in ("no-image", "4-shot"):
            assert table[task][cond] == card[task][cond], (task, cond)
    fixed = table["novel_binding_shortcut"]["4-shot"]
    assert fixed["correct"] / fixed["n"] > 0.2  # 24 colour x shape classes: chance is 1/24


def test_text_shortcut_imitates_text_and_solves_shortcuts():
    """Trained only where demos never matter: on every true-MICL training task, removing the demo images moves
    4-shot accuracy by at most 10 points; on the shortcut twins it scores >= 90%."""
    card = _meta("text-shortcut")["evaluation"]
    for task in ("novel_binding", "outlier", "clock_math", "shape_count"):
        c = card[task]
        assert abs(c["4-shot"]["correct"] - c["no-image"]["correct"]) / c["4-shot"]["n"] <= 0.10, task
        s = card[task + "_shortcut"]["4-shot"]
        assert s["correct"] / s["n"] >= 0.9, task


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
    _, _, card2 = train(RECIPES["partial"], tmp_path / "org2", steps=2, evaluate=False, log_every=0,
                        resume=str(tmp_path / "org"))
    assert [s["steps"] for s in card2["stages"]] == [3, 2] and card2["recipe"]["steps"] == 5


def test_a_staged_recipe_trains_on_exactly_as_resuming_from_disk(tmp_path):
    """`then` continues the organism in memory as `--resume` continues it from its saved folder: the same weights
    after both stages, the same stage records; a quick run's --steps is split in the stages' proportions."""
    second = replace(RECIPES["partial"], name="second", mix={"clock_math": 1.0}, steps=2)
    staged = replace(RECIPES["partial"], steps=3, then=second)
    assert [n for _, n in stage_steps(staged, 10)] == [6, 4]
    one, _, card = train(staged, tmp_path / "staged", evaluate=False, log_every=0)
    first, _, _ = train(replace(staged, then=None), tmp_path / "first", evaluate=False, log_every=0)
    after_first = {k: v.clone() for k, v in first.state_dict().items()}
    two, _, card2 = train(second, None, evaluate=False, log_every=0, resume=str(tmp_path / "first"))
    assert all(torch.equal(a, b) for a, b in zip(one.state_dict().values(), two.state_dict().values()))
    assert not all(torch.equal(a, after_first[k]) for k, a in one.state_dict().items())  # stage 2 trained
    assert [s["steps"] for s in card["stages"]] == [3, 2] == [s["steps"] for s in card2["stages"]]
    assert card["recipe"]["steps"] == 5 and card["recipe"]["then"]["name"] == "second"
    readme = (tmp_path / "staged" / "README.md").read_text()
    assert "stage 2: 2 more steps" in readme and "--resume" not in readme


def test_copy_episodes_are_text_only_repeats_and_join_the_mix():
    rng = np.random.default_rng(0)
    e = copy_episode(3, rng)
    assert len(e.demos) == 3 and all(not d.images and d.answer == d.question for d in e.demos)
    assert e.query.answer == e.query.question and 4 <= len(e.query.question.split()) <= 8
    mix = {t: 0.5 for t in ("copy", "novel_binding")}
    kinds = {ep.task for ep in sample_batch(Recipe("r", mix), rng, n=32)}
    assert kinds == {"copy", "novel_binding"}


def test_stated_episodes_ask_for_their_rule_and_are_the_tasks_own_episodes():
    """A '<task>_stated' episode is the task's own episode under the drawn rule (same images and answers, whose
    rule-following the generator tests check) with every question naming that rule; rules[0]'s is the shortcut's."""
    assert STATED["clock_math"][TASKS["clock_math"].rules[0]] == TASKS["clock_math"].shortcut_question
    seen = set()
    for seed in range(12):
        e = EPISODES["clock_math_stated"](3, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        rule = str(rng.choice(list(STATED["clock_math"])))
        plain = make_episode("clock_math", 3, rng, rule=rule)
        assert e.meta["rule"] == rule and e.task == "clock_math_stated"
        assert [d.answer for d in e.demos] == [d.answer for d in plain.demos] and e.query.answer == plain.query.answer
        assert all(np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
                   for a, b in zip(e.demos + (e.query,), plain.demos + (plain.query,)))
        assert {d.question for d in e.demos} | {e.query.question} == {STATED["clock_math"][rule]}
        seen.add(rule)
    assert seen == set(TASKS["clock_math"].rules)


def test_rule_split_adds_up_to_the_cards_four_shot_column():
    """evaluate_rules scores the card's own 4-shot queries: per-rule counts sum to the card's cell, every rule
    occurs, and clock math (which this organism reads from the demos) is right under both hands."""
    loaded = load("organism:novel-binding")
    card = _meta("novel-binding")["evaluation"]
    split = evaluate_rules(loaded, n=card["clock_math"]["4-shot"]["n"], tasks=["clock_math", "outlier"])
    for task, rules in split.items():
        assert set(rules) == set(TASKS[task].rules)
        assert sum(c["n"] for c in rules.values()) == card[task]["4-shot"]["n"]
        assert sum(c["correct"] for c in rules.values()) == card[task]["4-shot"]["correct"], task
    assert all(c["correct"] / c["n"] > 0.9 for c in split["clock_math"].values())


def _four_shot_vs_no_image(name, task):
    """(4-shot, no-image) Accuracy of organism `name` on `task`, from its card."""
    c = _meta(name)["evaluation"][task]
    return tuple(Accuracy(c[k]["correct"], c[k]["n"]) for k in ("4-shot", "no-image"))


def test_novel_binding_organism_reads_the_demo_images():
    """The issue's binding bar: >= 90% at 4 shots (chance 50%), far above the same queries with the demo images
    removed; and clock math above its no-image control by more than the two 95% intervals (the card is checked
    against the weights by test_card_reproduces_and_beats_chance)."""
    for task, floor in (("novel_binding", 0.90), ("clock_math", 0.0)):
        four, blind = _four_shot_vs_no_image("novel-binding", task)
        assert four.n >= 200 and four.acc >= floor and four.ci[0] > blind.ci[1], task


def test_true_micl_reads_demo_images_on_clock_math():
    """The one true-MICL signal the shipped true-micl has: clock math at 4 shots beats its no-image control by more
    than the two 95% intervals (its novel binding is at chance; see its card)."""
    four, blind = _four_shot_vs_no_image("true-micl", "clock_math")
    assert four.ci[0] > blind.ci[1]


def test_staged_organism_reads_the_demos_on_three_tasks():
    """binding-clock-palindrome: binding >= 90% and clock math and palindrome above their no-image controls by more
    than the two 95% intervals; re-scored from the weights, palindrome is right under both of its rules (> 90%) and
    its per-rule counts add up to the card's 4-shot cell."""
    name = "binding-clock-palindrome"
    for task, floor in (("novel_binding", 0.90), ("clock_math", 0.0), ("palindrome", 0.0)):
        four, blind = _four_shot_vs_no_image(name, task)
        assert four.n >= 200 and four.acc >= floor and four.ci[0] > blind.ci[1], task
    loaded = load(f"organism:{name}")
    cell = _meta(name)["evaluation"]["palindrome"]["4-shot"]
    split = evaluate_rules(loaded, n=cell["n"], tasks=["palindrome"])["palindrome"]
    assert sum(c["correct"] for c in split.values()) == cell["correct"]
    assert set(split) == {"mirror", "shift"} and all(c["correct"] / c["n"] > 0.9 for c in split.values())
