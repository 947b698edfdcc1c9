"""Copy rate: hand-written cases of "does the answer repeat a demo's answer?", token ids from a real tokenizer."""

from dataclasses import replace

import pytest

from micl_probe import Demo, Episode, Query, load
from micl_probe.evaluation.copying import copy_fields, copy_rate, demo_labels, first_label_token
from micl_probe.testing import noise_episode


def _episode(answers, gold="dax"):
    img = noise_episode(0).query.images
    return Episode(tuple(Demo(img, "Name?", a) for a in answers), Query(img, "Name?", gold))


@pytest.fixture(scope="module")
def organism():
    return load("organism:true-micl")


def test_copy_fields_on_written_answers():
    ep = _episode(["wug", "Dax", "blicket"])
    gen = lambda text: copy_fields(ep, text, None, set(), "exact")  # noqa: E731
    assert gen("dax") == {"cla": False, "copied": True, "gold_in_demos": True, "copy_chance": None}  # case
    assert gen("The wug.\nIt is a wug")["copied"]  # first line, article and period dropped
    assert not gen("a wugs")["copied"] and not gen("")["copied"] and not gen("cyan")["copied"]
    assert gen("<think>dax?</think>blicket")["copied"]  # a thinking model: the answer after its reasoning
    assert copy_fields(_episode(["wug"], gold="dax"), "dax", None, set(), "exact")["gold_in_demos"] is False
    assert set(copy_fields(ep.zero_shot(), "dax", 5, {5}, "exact").values()) == {None}
    # teacher-forced: the first greedy token is the prediction, so copying is the first-token test (CLA)
    assert copy_fields(ep, "zzz", 7, {7, 9}, "teacher-forced") == {"cla": True, "copied": True,
                                                                    "gold_in_demos": True, "copy_chance": None}
    assert copy_fields(ep, "dax", 8, {7, 9}, "teacher-forced")["copied"] is False
    # the copy chance: distinct demo answers x the task's chance (outlier: 6 colours), at most 1
    outlier = replace(_episode(["red", "blue", "red", "cyan"]), task="outlier")
    assert copy_fields(outlier, "red", None, set(), "exact")["copy_chance"] == pytest.approx(3 / 6)
    assert copy_fields(replace(outlier, task="novel_binding"), "x", None, set(), "exact")["copy_chance"] == 1.0
    assert copy_rate([{"copied": True}, {"copied": False}, {"copied": None}, {}]).n == 2
    assert copy_rate([{"correct": True}]) is None


def test_demo_labels_are_each_demo_answers_first_token_in_the_prompt(organism):
    tok = organism.processor.tokenizer
    ep = _episode(["quan", "lorp", "quan"])
    batch = organism.prepare_batch([ep, _episode(["lorp"])], padding_side="left")
    ids = lambda word: tok(" " + word, add_special_tokens=False)["input_ids"][0]  # noqa: E731
    assert demo_labels(batch, 0, tok) == {ids("quan"), ids("lorp")} and demo_labels(batch, 1, tok) == {ids("lorp")}
    space = tok(" ", add_special_tokens=False)["input_ids"]
    assert first_label_token(space + [ids("quan")], tok) == ids("quan")  # a separator alone is no label
    assert first_label_token(space, tok) is None
