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
from micl_probe.organisms.recipes import EPISODES, RECIPES, STATED, SWAPPED, Recipe, copy_episode
from micl_probe.organisms.train import main as train_main
from micl_probe.organisms.train import sample_batch, stage_steps, train
from micl_probe.tasks import TASKS, make_episode, sample_episodes

CELLS = ("novel_binding", "novel_binding_shortcut", "clock_math")


def _meta(name):
    return json.loads((SHIPPED / name / "micl_probe.json").read_text())


def test_shipped_organisms_have_cards():
    assert set(shipped()) == {"true-micl", "text-shortcut", "partial"}
    for name in shipped():
        meta = _meta(name)
        assert meta["family"] == "organism" and meta["recipe"]["name"] == name
        assert "| novel_binding |" in (SHIPPED / name / "README.md").read_text()
        assert (SHIPPED / name / "model.safetensors").stat().st_size < 10 * 2**20


@pytest.mark.parametrize("name", ["binding-clock-palindrome", "novel-binding"])
def test_retired_organisms_name_their_replacement(name, tmp_path, capsys):
    """A retired name is one line naming what replaced it, from the API, the report, the trainers."""
    from micl_probe.attn_report import main as report_main
    from micl_probe.train import main as intervention_main

    with pytest.raises(FileNotFoundError, match=f"organism:{name} was retired; use organism:true-micl"):
        load(f"organism:{name}")
    for run, argv in ((report_main, ["--model", f"organism:{name}", "--out", str(tmp_path / "r")]),
                      (intervention_main, ["dara", "--task", "clock_math", "--model", f"organism:{name}", "--out",
                                           str(tmp_path / "d")]),
                      (train_main, ["--recipe", name])):
        with pytest.raises(SystemExit) as stop:
            run(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) == 1 and "retired; use true-micl" in err[0].replace(
            "organism:", ""), err
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists()


@pytest.mark.parametrize("name", ["true-micl", "text-shortcut", "partial"])
def test_card_is_the_default_reports_numbers_query_for_query(name):
    """The card's cells come back exactly from the shipped weights when the harness runs as the default report runs
    it (its conditions and batch size): the same queries, the same verdict on each."""
    from micl_probe.attn_report import DEFAULT_CONDITIONS
    from micl_probe.evaluation import RunConfig, run

    card = _meta(name)["evaluation"]
    n = card[CELLS[0]]["4-shot"]["n"]
    records = run(load(f"organism:{name}"), list(CELLS), DEFAULT_CONDITIONS,
                  RunConfig(n=n, batch_size=20, attention=False, progress=False))
    for task in CELLS:
        for cond in DEFAULT_CONDITIONS:
            right = "".join("1" if r["correct"] else "0" for r in records
                            if r["task"] == task and r["condition"] == cond)
            assert right == card[task][cond]["right"] and right.count("1") == card[task][cond]["correct"], (task,
                                                                                                            cond)
    fixed = card["novel_binding_shortcut"]["4-shot"]
    assert fixed["correct"] / fixed["n"] > 0.2  # 24 colour x shape classes: chance is 1/24


def test_cards_evaluate_through_the_harness_whatever_else_is_asked():
    """evaluate_organism's 1-shot alone is the 1-shot cut from the default report's 4-demo draw (not a 1-demo draw of
    its own), and its 8-shot a draw of 8: each cell as the harness scores those episodes."""
    from micl_probe.evaluation import condition_episode, which_correct
    from micl_probe.tasks import query_episodes

    loaded = load("organism:true-micl")
    table = evaluate_organism(loaded, n=12, tasks=["palindrome"], conditions=("1-shot", "8-shot"))["palindrome"]
    for cond, pool in (("1-shot", 4), ("8-shot", 8)):
        eps = [condition_episode(e, cond) for e in query_episodes("palindrome", pool, 12)]
        assert table[cond]["right"] == "".join("1" if v else "0" for v in which_correct(loaded, eps).tolist())


def test_text_shortcut_imitates_text_and_solves_shortcuts():
    """Trained only where demos never matter: on no true-MICL training task do the demo images help (4-shot at most
    10 points above no-image; on outlier they hurt: 11.5 vs 23.0%, the report's "worse with the demo images"); on
    the shortcut twins it scores >= 90%."""
    card = _meta("text-shortcut")["evaluation"]
    for task in ("novel_binding", "outlier", "clock_math", "shape_count"):
        c = card[task]
        assert (c["4-shot"]["correct"] - c["no-image"]["correct"]) / c["4-shot"]["n"] <= 0.10, task
        s = card[task + "_shortcut"]["4-shot"]
        assert s["correct"] / s["n"] >= 0.9, task


def test_trainer_smoke(tmp_path):
    _, _, card = train(RECIPES["text-shortcut"], tmp_path / "org", steps=3, evaluate=True, eval_n=4, log_every=0)
    meta = json.loads((tmp_path / "org" / "micl_probe.json").read_text())
    assert meta["recipe"]["steps"] == 3 and set(meta["evaluation"]) >= {"novel_binding", "outlier_shortcut"}
    assert card["recipe"]["name"] == "text-shortcut" and (tmp_path / "org" / "README.md").is_file()
    loaded = load(str(tmp_path / "org"))
    assert loaded.adapter.family == "organism"
    p = loaded.prepare(sample_episodes("outlier", 2, 1)[0])
    with torch.no_grad():
        assert loaded.model(**p.inputs).logits.shape[1] == len(p.layout)
    # a resumed run continues the same weights and records both stages
    _, _, card2 = train(RECIPES["text-shortcut"], tmp_path / "org2", steps=2, evaluate=False, log_every=0,
                        resume=str(tmp_path / "org"))
    assert [s["steps"] for s in card2["stages"]] == [3, 2] and card2["recipe"]["steps"] == 5


def test_a_staged_recipe_trains_on_exactly_as_resuming_from_disk(tmp_path):
    """`then` continues the organism in memory as `--resume` continues it from its saved folder: the same weights
    after both stages, the same stage records; a quick run's --steps is split in the stages' proportions."""
    second = replace(RECIPES["text-shortcut"], name="second", mix={"clock_math": 1.0}, steps=2)
    staged = replace(RECIPES["text-shortcut"], steps=3, then=second)
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


def test_partial_continues_true_micl(tmp_path):
    """The partial recipe starts from the shipped true-micl weights (one step moves them a little, not from
    scratch) and its card records that base and only its own steps."""
    model, _, card = train(RECIPES["partial"], None, steps=1, evaluate=False, log_every=0)
    base = load("organism:true-micl").model.state_dict()
    after = model.state_dict()
    assert card["base"] == "true-micl" and card["recipe"]["steps"] == 1 and "stages" not in card
    assert all(torch.allclose(after[k], v, atol=1e-2) for k, v in base.items())
    assert not all(torch.equal(after[k], v) for k, v in base.items())
    penalised, _, _ = train(RECIPES["under-attends"], None, steps=1, evaluate=False, log_every=0)
    assert penalised.config._attn_implementation == "sdpa"  # trained with eager attention (the penalty), then back


@pytest.mark.parametrize("task", SWAPPED)
def test_swapped_episodes_keep_the_text_and_take_another_episodes_images(task):
    """'<task>_swapped': the episode's own demo text and query, every demo image from a second, independent episode
    of the task, so the demo images carry nothing about this episode."""
    for seed in range(4):
        e = EPISODES[f"{task}_swapped"](3, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        plain, other = make_episode(task, 3, rng), make_episode(task, 3, rng)
        assert e.task == f"{task}_swapped" and e.meta == plain.meta
        assert [(d.question, d.answer) for d in e.demos] == [(d.question, d.answer) for d in plain.demos]
        assert e.query.answer == plain.query.answer
        same = lambda a, b: np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
        assert same(e.query, plain.query) and all(same(d, o) for d, o in zip(e.demos, other.demos))
        assert not all(same(d, p) for d, p in zip(e.demos, plain.demos))


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
    loaded = load("organism:true-micl")
    card = _meta("true-micl")["evaluation"]
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


def test_true_micl_reads_the_demo_images_on_three_tasks():
    """true-micl: binding >= 90% and clock math and palindrome above their no-image controls by more than the two
    95% intervals; re-scored from the weights, palindrome is right under both of its rules (> 90%) and its per-rule
    counts add up to the card's 4-shot cell."""
    name = "true-micl"
    for task, floor in (("novel_binding", 0.90), ("clock_math", 0.0), ("palindrome", 0.0)):
        four, blind = _four_shot_vs_no_image(name, task)
        assert four.n >= 200 and four.acc >= floor and four.ci[0] > blind.ci[1], task
    loaded = load(f"organism:{name}")
    cell = _meta(name)["evaluation"]["palindrome"]["4-shot"]
    split = evaluate_rules(loaded, n=cell["n"], tasks=["palindrome"])["palindrome"]
    assert sum(c["correct"] for c in split.values()) == cell["correct"]
    assert set(split) == {"mirror", "shift"} and all(c["correct"] / c["n"] > 0.9 for c in split.values())


def test_partial_under_uses_its_demos_and_keeps_perception():
    """partial's card: on at least two of its three tasks 4-shot accuracy falls at least halfway from true-micl's
    toward partial's own no-image control, while every shortcut twin stays within 5 points of true-micl's (>= 95%).
    The card is checked against the weights by test_card_is_the_default_reports_numbers_query_for_query; both cards
    are scored on the same queries (equal evaluation_setup), and partial's README gives the ratios with intervals."""
    from micl_probe.organisms.card import gap_closed

    assert _meta("true-micl")["evaluation_setup"] == _meta("partial")["evaluation_setup"]
    true, part = _meta("true-micl")["evaluation"], _meta("partial")["evaluation"]
    acc = lambda card, task, cond: card[task][cond]["correct"] / card[task][cond]["n"]
    closed = {t: (acc(true, t, "4-shot") - acc(part, t, "4-shot")) / (acc(true, t, "4-shot") - acc(part, t, "no-image"))
              for t in SWAPPED}
    assert sum(c >= 0.5 for c in closed.values()) >= 2, closed
    for t in SWAPPED:
        ratio, low, high = gap_closed(true, part, t)
        assert ratio == pytest.approx(closed[t]) and low < ratio < high
        assert f"| {t} |" in (SHIPPED / "partial" / "README.md").read_text().split("## Against its base")[1]
    for t in SWAPPED:
        twin = t + "_shortcut"
        assert acc(part, twin, "4-shot") >= 0.95 and abs(acc(part, twin, "4-shot") - acc(true, twin, "4-shot")) <= 0.05


@pytest.mark.parametrize("name", ["true-micl", "partial"])
def test_cards_demo_image_share_comes_back_from_the_weights(name):
    from micl_probe.organisms.card import evaluate_demo_share

    share = _meta(name)["demo_image_share"]
    again = evaluate_demo_share(load(f"organism:{name}"), n=share["n"])
    assert again == pytest.approx(share["tasks"], abs=1e-5)


def test_the_planted_attention_penalty_counts_what_it_says():
    """The under-attends penalty on hand-made attention: the answer rows' (or every row's) weight on the demo images
    outside each image, recomputed with plain loops over positions."""
    from micl_probe.core import ROLE
    from micl_probe.interventions.fitting import icl_labels
    from micl_probe.organisms.train import demo_image_attention
    from micl_probe.tasks import sample_episodes

    loaded = load("organism:true-micl")
    batch = loaded.prepare_batch(sample_episodes("clock_math", 2, 2, seed=0), with_answer=True)
    labels = icl_labels(batch)
    B, seq = labels.shape
    g = torch.Generator().manual_seed(0)
    att = [torch.rand(B, 4, seq, seq, generator=g).softmax(-1) for _ in range(4)]
    for rows in ("answer", "all", "max"):
        want = 0.0
        for layer in (1, 3):
            total, count, largest = 0.0, 0, torch.zeros(B, 4)
            for b, lay in enumerate(batch.layouts):
                demo_img = [(j, int(lay.image_index[j])) for j in range(seq)
                            if lay.role[j] == ROLE["image"] and lay.owner[j] >= 0]
                for p in range(seq):
                    if rows == "answer" and not (p + 1 < seq and labels[b, p + 1] != -100):
                        continue
                    if rows != "answer" and lay.role[p] == ROLE["pad"]:
                        continue
                    count += 1
                    row = torch.zeros(4)
                    for j, img in demo_img:
                        if rows != "answer" and int(lay.image_index[p]) == img:
                            continue  # a token of the same image
                        row += att[layer][b, :, p, j]
                    total += float(row.sum())
                    largest[b] = torch.maximum(largest[b], row)
            want += float(largest.mean()) if rows == "max" else total / (count * 4)
        got = demo_image_attention(att, batch, labels, (1, 3), rows)
        assert abs(float(got) - want / 2) < 1e-5, (rows, float(got), want / 2)


def test_a_query_supervised_recipe_trains_on_the_query_answer_alone():
    """{"supervise": "query"} in a recipe's attention penalty: the targets are the query's answer and its end of turn
    only (no demo answer), found here from the layout by hand; any other recipe keeps any-shot targets."""
    from micl_probe.core import QUERY, ROLE
    from micl_probe.interventions.fitting import icl_labels
    from micl_probe.organisms.train import training_labels

    loaded = load("organism:true-micl")
    batch = loaded.prepare_batch(sample_episodes("clock_math", 3, 2, seed=0), with_answer=True)
    query_only = replace(RECIPES["partial"], attention_penalty={"weight": 1.0, "layers": (0,), "supervise": "query"})
    labels = training_labels(query_only, batch)
    for b, lay in enumerate(batch.layouts):
        answer = [p for p in range(len(lay.role)) if lay.role[p] == ROLE["answer"] and lay.owner[p] == QUERY]
        want = answer + [answer[-1] + 1]
        assert (labels[b] != -100).nonzero().flatten().tolist() == want
    assert torch.equal(training_labels(RECIPES["partial"], batch), icl_labels(batch))
    assert (icl_labels(batch) != -100).sum() > (labels != -100).sum()


def test_gap_closed_is_the_ratio_with_a_paired_interval():
    """gap_closed on hand-made verdict strings: the point estimate is the ratio of the accuracies; with every query
    moving together the interval is a point; pairing narrows it against the same counts with the pairs broken."""
    from micl_probe.organisms.card import gap_closed

    card = lambda four, blind: {"t": {"4-shot": {"right": four}, "no-image": {"right": blind}}}
    base = card("1" * 40, "")
    assert gap_closed(base, card("0" * 40, "0" * 40), "t") == (1.0, 1.0, 1.0)
    four, blind = "1" * 10 + "0" * 30, "1" * 4 + "0" * 36
    ratio, low, high = gap_closed(base, card(four, blind), "t")
    assert ratio == pytest.approx((1 - 10 / 40) / (1 - 4 / 40)) and low < ratio < high
    unpaired = gap_closed(base, card(four, blind[::-1]), "t")  # same counts, the pairs broken
    assert unpaired[0] == pytest.approx(ratio) and unpaired[2] - unpaired[1] > high - low
    assert gap_closed(base, {"t": {"4-shot": {"correct": 1, "n": 2}}}, "t") is None  # a card without verdicts
