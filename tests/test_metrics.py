"""Answer metrics on hand-written cases, and generation + metric against the teacher-forced scorer."""

import pytest
import torch

from micl_probe import DARA, load
from micl_probe.evaluation.metrics import correct, default_metric, normalise
from micl_probe.evaluation.scoring import generate_answers, which_correct
from micl_probe.tasks import sample_episodes
from micl_probe.testing import noise_episode, tiny_loaded

CASES = [  # metric, prediction, gold, verdict
    ("exact", "dax", "dax", True), ("exact", " The Dax.\nand more", "dax", True), ("exact", "a red", "Red", True),
    ("exact", "twelve", "12", True), ("exact", "12 apples", "12", False), ("exact", "", "dax", False),
    ("exact", "3.50", "3.5", False), ("exact", "well-known", "well known", True),
    ("number", "The answer is 12.", "12", True), ("number", "twelve", "12", True), ("number", "-3", "-3", True),
    ("number", "3", "-3", False), ("number", "3.0 units", "3", True), ("number", "none", "3", False),
    ("contains", "It is a red circle.", "red", True), ("contains", "reddish", "red", False),
    ("contains", "blue", "red", False),
    ("option", "(B) red", "B", True), ("option", "B.", "(B)", True), ("option", "Answer: C", "B", False),
    ("option", "I pick D", "D", False),  # the first standalone capital is the pronoun: no guessing beyond the rule
]
VLICL = [  # task folder, prediction, gold, verdict (evals/eval.py, applied by hand)
    ("clevr", "3", "3", True), ("clevr", " 3\nmore", "3", True), ("clevr", "3 objects.", "3", False),
    ("clevr", "Three", "3", False), ("textocr", "STOP.", "stop", True), ("textocr", "stop sign", "stop", False),
    ("operator_induction", "The result is 12.", "12", True), ("operator_induction", "-3", "-3", False),
    ("operator_induction", "x", "0", False), ("operator_induction_interleaved", "5 + 1 = 6", "5", True),
    ("open_mi", "dax", "Dax", True), ("open_mi", "a dax", "dax", False),
    ("matching_mi", "Yes, they do.", "yes", True), ("matching_mi", "No.", "no", True),
    ("matching_mi", "yes", "no", False), ("matching_mi", "no", "yes", False),
]


@pytest.mark.parametrize("metric, prediction, gold, verdict", CASES)
def test_metric_cases(metric, prediction, gold, verdict):
    assert correct(metric, prediction, gold) is verdict


@pytest.mark.parametrize("task, prediction, gold, verdict", VLICL)
def test_vlicl_rules(task, prediction, gold, verdict):
    assert correct("vlicl", prediction, gold, f"vlicl:/data/VL-ICL/{task}") is verdict


def test_defaults_and_unknowns():
    assert default_metric("clock_math") == "teacher-forced"
    assert default_metric("vlicl:/d/clevr") == "vlicl" and default_metric("truemicl:/d/t") == "exact"
    assert normalise("The  Wug!") == "wug"
    with pytest.raises(ValueError, match="teacher-forced scores logits"):
        correct("teacher-forced", "a", "a")
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        correct("bleu", "a", "a")


@pytest.fixture(scope="module")
def organism():
    return load("organism:true-micl")


@pytest.mark.parametrize("task", ["clock_math", "novel_binding", "outlier"])
def test_generation_and_exact_match_equal_the_teacher_forced_scorer(organism, task):
    """On the organisms, where both apply: greedy generation scored by normalised exact match gives the same
    verdict, episode by episode, as the one-forward teacher-forced scorer."""
    eps = sample_episodes(task, 4, 24, seed=7, split="query")
    forced = which_correct(organism, eps).tolist()
    texts = generate_answers(organism, organism.prepare_batch(eps, padding_side="left"), max_new_tokens=6)
    assert [correct("exact", t, e.query.answer) for t, e in zip(texts, eps)] == forced
    assert 0 < sum(forced) < len(eps) or task != "outlier"  # a task with both verdicts: the check can fail


def test_batched_generation_equals_one_at_a_time():
    loaded = tiny_loaded("qwen2_vl")
    eps = [noise_episode(1), noise_episode(3, seed=1)]
    batched = generate_answers(loaded, loaded.prepare_batch(eps, padding_side="left"), 5)
    assert batched == [generate_answers(loaded, loaded.prepare_batch([e]), 5)[0] for e in eps]
    with pytest.raises(ValueError, match="left padding"):
        generate_answers(loaded, loaded.prepare_batch(eps, padding_side="right"), 5)


def test_an_interventions_kwargs_reach_every_generated_token():
    """A DARA's factors reach the attention function during generation: the first generated token is the argmax
    of the intervened forward pass, and the factors change the answer."""
    loaded = tiny_loaded("llava")
    ep = noise_episode(2)
    batch = loaded.prepare_batch([ep])
    dara = DARA.for_model(loaded, n_images=3, layers=(0, 1)).set_alpha(60.0, (..., slice(0, 2)))
    with dara.applied(loaded.model, batch.layouts) as kwargs:
        logits = loaded.model(**batch.inputs, **kwargs).logits[0, -1]
        text = generate_answers(loaded, batch, 4, **kwargs)[0]
    plain = generate_answers(loaded, batch, 4)[0]
    first = loaded.processor.tokenizer.decode([int(logits.argmax())], skip_special_tokens=True)
    assert text.startswith(first) and text != plain
    with torch.no_grad():
        assert (loaded.model(**batch.inputs).logits[0, -1] - logits).abs().max() > 1e-3


def test_vlicl_rules_and_labels_whatever_the_path_form():
    from micl_probe.evaluation.metrics import correct
    from micl_probe.tasks import task_labels
    for task in ("vlicl:matching_mi", "vlicl:./matching_mi/", "vlicl:/data/VL-ICL/matching_mi"):
        assert correct("vlicl", "Yes, they match", "yes", task)  # the yes/no rule, not exact match
        assert not correct("vlicl", "No.", "Yes", task)
        assert task_labels([task]) == {task: "vlicl:matching_mi"}
    assert correct("vlicl", "yes", "Yes.", "vlicl:matching_mi")  # a gold written with a capital and a period
    with pytest.raises(ValueError, match="yes or no"):
        correct("vlicl", "yes", "maybe", "vlicl:matching_mi")


def test_thinking_models_are_scored_on_the_answer_after_the_reasoning():
    from micl_probe.evaluation.metrics import final_answer
    glm = "<think>The hand points at 3, so 3 + 4 = 7... or 8?</think><answer><|begin_of_box|>7<|end_of_box|></answer>"
    assert final_answer(glm) == "7" and correct("exact", glm, "7") and not correct("exact", glm, "8")
    qwen = "Let me see, 8 is wrong.\n</think>\n\nThe answer is 7."
    assert correct("number", qwen, "7")
    assert not correct("contains", "<think>7 or 8, I need more tokens to", "7")  # stopped while thinking
    assert correct("exact", "7", "7")  # no thinking: the text as it is
