import numpy as np
import pytest
import torch

from micl_probe.core import QUERY, ROLE, Episode, Query, get_adapter, prepare, prepare_batch
from micl_probe.evaluation import count_correct, greedy_exact_match, mcnemar_p, which_correct, wilson
from micl_probe.testing import noise_episode, tiny_loaded


def test_batch_rows_equal_single_episodes(family):
    loaded = tiny_loaded(family)
    model, processor, adapter = loaded.model, loaded.processor, loaded.adapter
    eps = [noise_episode(k, seed=k) for k in (2, 0, 1)]
    batch = prepare_batch(eps, processor, adapter, model=model)
    with torch.no_grad():
        logits = model(**batch.inputs).logits
    for b, ep in enumerate(eps):
        single = prepare(ep, processor, adapter, model=model)
        real = batch.layouts[b].role != ROLE["pad"]
        assert torch.equal(batch.inputs["input_ids"][b][real], single.input_ids[0])
        assert torch.equal(batch.layouts[b].role[real], single.layout.role)
        assert torch.equal(batch.layouts[b].owner[real], single.layout.owner)
        with torch.no_grad():
            ref = model(**single.inputs).logits[0, single.layout.answer_position]
        torch.testing.assert_close(logits[b, batch.layouts[b].answer_position], ref, atol=1e-4, rtol=1e-4)


def _generate(model, processor, adapter, episode, stop):
    """Greedy continuation of the prompt up to the end-of-turn token: (text, stopped)."""
    p = prepare(episode, processor, adapter, model=model)
    out = model.generate(**p.inputs, max_new_tokens=4, do_sample=False, eos_token_id=stop, pad_token_id=stop)
    new = out[0, p.input_ids.shape[1]:].tolist()
    stopped = stop in new
    return processor.tokenizer.decode(new[:new.index(stop)] if stopped else new), stopped


def test_greedy_exact_match_equals_generate():
    """The one-pass verdict equals generate() + exact match, on the shipped organism's own answers (correct or
    not) and on answers it does not give."""
    from micl_probe import load
    from micl_probe.tasks import make_episode as task_episode
    loaded = load("organism:true-micl")
    model, processor, adapter = loaded.model, loaded.processor, loaded.adapter
    stop = processor.tokenizer.convert_tokens_to_ids("Ċ")
    rng = np.random.default_rng(0)
    eps, expected = [], []
    for i in range(16):
        ep = task_episode(["novel_binding", "outlier_shortcut"][i % 2], 3, rng)
        text, stopped = _generate(model, processor, adapter, ep, stop)
        # a quarter of the episodes take a wrong gold answer; the rest keep the task's gold answer
        gold = "wug" if i % 4 == 3 else ep.query.answer
        eps.append(Episode(ep.demos, Query(ep.query.images, ep.query.question, gold), ep.task))
        expected.append(stopped and text == adapter.chat.answer_sep + gold)
    correct, _ = greedy_exact_match(model, prepare_batch(eps, processor, adapter, model=model, with_answer=True))
    assert correct.tolist() == expected
    assert 0 < sum(expected) < len(expected)  # both verdicts occur


def test_training_targets_are_later_answers_and_their_ends():
    from micl_probe.interventions.fitting import icl_labels as targets
    from micl_probe.organisms import build
    from micl_probe.tasks import make_episode as task_episode
    model, processor = build()
    adapter = get_adapter("organism")
    ep = task_episode("novel_binding", 3, np.random.default_rng(0))
    batch = prepare_batch([ep], processor, adapter, model=model, with_answer=True)
    labels = targets(batch)[0]
    lay = batch.layouts[0]
    ids = batch.inputs["input_ids"][0]
    picked = (labels != -100).nonzero().flatten()
    words = processor.tokenizer.decode(ids[picked])
    assert words == "".join(f" {d.answer}\n" for d in ep.demos[1:]) + f" {ep.query.answer}\n"
    assert not (lay.owner[picked] == 0).any()  # the first demo's answer is no target (its rule is unknown)
    assert (lay.owner[picked] == QUERY).sum() == 2


def test_wilson_interval():
    lo, hi = wilson(90, 100)
    assert 0.82 < lo < 0.84 and 0.94 < hi < 0.96
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    # the interval always contains the observed rate (rounding once put acc = 1 a hair above the upper end, and
    # matplotlib refuses the negative error bar that makes)
    for n in range(1, 300):
        for k in {0, n // 2, n}:
            lo, hi = wilson(k, n)
            assert lo <= k / n <= hi


def test_mcnemar_p_is_the_exact_sign_test_of_the_discordant_pairs():
    from math import comb

    def by_hand(gained, lost):  # two-sided exact binomial(1/2) test, summed directly
        m, k = gained + lost, min(gained, lost)
        return 1.0 if m == 0 else min(1.0, 2 * sum(comb(m, i) for i in range(k + 1)) / 2 ** m)

    rng = np.random.default_rng(0)
    for _ in range(50):
        before = rng.random(60) < rng.random()
        after = rng.random(60) < rng.random()
        gained, lost = int((after & ~before).sum()), int((before & ~after).sum())
        assert abs(mcnemar_p(before, after) - by_hand(gained, lost)) < 1e-9
        assert mcnemar_p(before, after) == mcnemar_p(after, before)
    # concordant pairs carry no evidence: 10 gained vs 0 lost is significant whatever agrees
    after = np.ones(100, bool)
    before = np.r_[np.zeros(10, bool), np.ones(90, bool)]
    assert mcnemar_p(before, after) == by_hand(10, 0) < 0.01
    assert mcnemar_p(after, after) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        mcnemar_p(np.ones(3, bool), np.ones(4, bool))


def test_which_correct_is_the_per_episode_count_correct():
    from micl_probe import load
    from micl_probe.tasks import sample_episodes

    loaded = load("organism:true-micl")  # outlier by a default rule: right on some queries, wrong on others
    episodes = sample_episodes("outlier", 4, 12, split="query")
    verdicts = which_correct(loaded, episodes, batch_size=5)
    assert verdicts.dtype == torch.bool and verdicts.shape == (12,)
    assert 0 < int(verdicts.sum()) < 12
    assert int(verdicts.sum()) == count_correct(loaded, episodes, batch_size=12)
    assert verdicts.tolist() == [bool(which_correct(loaded, [e])[0]) for e in episodes]


@pytest.mark.parametrize("name", ["llava", "qwen2_vl", "gemma3"])  # 1-D RoPE, M-RoPE, sliding-window layers
def test_one_prefill_measures_what_a_forward_does_and_generates_what_generate_does(name):
    """The generated-answer path's one pass (issue 32): tracing `generate` and measuring its prefill gives the
    attention of a plain forward on the same left-padded batch (to 1e-5) and the tokens `generate` gives alone."""
    from micl_probe.evaluation.scoring import generate_tokens, generation_kwargs
    from micl_probe.measure import score_and_capture
    from micl_probe.testing import noise_episode, tiny_loaded

    loaded = tiny_loaded(name)
    episodes = [noise_episode(1, seed=1), noise_episode(3, seed=2), noise_episode(2, seed=3)]
    batch = loaded.prepare_batch(episodes, padding_side="left")
    assert not bool(batch.inputs["attention_mask"][:, 0].all())  # prompts of different lengths: padding on the left
    forward, _ = score_and_capture(loaded, batch)
    generated = generate_tokens(loaded, batch, 5)
    once, sequences = score_and_capture(loaded, batch, generate=generation_kwargs(loaded, 5))
    assert torch.equal(sequences[:, batch.inputs["input_ids"].shape[1]:], generated)
    assert once.segments == forward.segments
    assert torch.allclose(once.mass, forward.mass, atol=1e-5, equal_nan=True)


def test_the_harness_reads_each_prompt_once_under_a_generated_metric():
    """Under a generated-answer metric with attention, each batch's prompt goes through the decoder once (generate's
    prefill, measured); under an intervention it is measured by a forward of its own, then generated (twice)."""
    from micl_probe import RunConfig, load, run
    from micl_probe.interventions import uniform

    loaded = load("organism:true-micl")
    lengths = []  # the sequence length of every decoder call: > 1 for a pass over the prompt, 1 for a decoding step
    hook = lambda module, args, kwargs: lengths.append(kwargs["inputs_embeds"].shape[1])  # noqa: E731
    handle = loaded.adapter.decoder(loaded.model).register_forward_pre_hook(hook, with_kwargs=True)
    cfg = RunConfig(n=3, batch_size=3, metric="exact", max_new_tokens=3, progress=False)
    try:
        assert len(run(loaded, ["clock_math"], ["2-shot"], cfg)) == 3
        assert len([n for n in lengths if n > 1]) == 1, lengths
        lengths.clear()
        run(loaded, ["clock_math"], ["2-shot+u"], cfg, interventions={"u": uniform(loaded, [3])})
        assert len([n for n in lengths if n > 1]) == 2, lengths
    finally:
        handle.remove()
