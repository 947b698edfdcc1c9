"""Fixed demos and shared prefixes (issue 32): one demo set per task and seed; a batch that shares its prompt up to
the query runs that prefix once into a cache, with the same records as running every prompt whole."""

import warnings

import pytest
import torch

from micl_probe import RunConfig, load, run
from micl_probe.core.prefix import split_prefix
from micl_probe.tasks import query_episodes
from micl_probe.testing import tiny_loaded

FIELDS = ("visual_share", "special_share")


def test_fixed_demos_share_one_draw_and_keep_its_rule():
    """Every query gets the same demos (its names and rule with them); the queries differ; the default draw is
    untouched by the option."""
    for task in ("novel_binding", "clock_math", "clock_math@blue", "palindrome_shortcut"):
        eps = query_episodes(task, 4, 12, fixed_demos=True)
        assert all(e.demos == eps[0].demos for e in eps) and len({e.query.images[0].tobytes() for e in eps}) == 12
        assert len({e.meta["rule"] for e in eps}) == 1
        if task == "novel_binding":  # the query's name is one the demos bound
            assert all(e.query.answer in {d.answer for d in e.demos} for e in eps)
    plain = query_episodes("clock_math", 4, 5)
    assert len({tuple(d.images[0].tobytes() for d in e.demos) for e in plain}) == 5
    assert query_episodes("clock_math", 4, 5, fixed_demos=True)[0].demos != plain[0].demos


def _records(loaded, batch_size, task="clock_math"):
    cfg = RunConfig(n=5, batch_size=batch_size, progress=False, fixed_demos=True)
    return run(loaded, [task], ["no-image", "3-shot"], cfg)


def _wide_gemma3():
    """Gemma 3's tiny model with sliding-window layers of 512 tokens, longer than these prompts."""
    from micl_probe import Loaded, adapter_for
    from micl_probe.testing.tiny import _gemma3

    torch.manual_seed(0)
    model, processor = _gemma3(sliding_window=512)
    return Loaded(model.eval(), processor, adapter_for(model), name="tiny-gemma3-wide")


@pytest.mark.parametrize("name", ["organism", "llava", "qwen2_vl", "gemma3", "gemma3-wide"])
def test_shared_prefix_records_equal_whole_prompt_records(name):
    """Batches of 5 (prefix once, suffixes after it) against one episode a batch (each prompt whole): the same
    verdicts, predictions and copy fields, the attention summaries equal to 1e-5. 1-D RoPE (the organism, LLaVA),
    M-RoPE (Qwen2-VL), sliding-window layers with a bidirectional image mask (Gemma 3 with windows longer than the
    prompt); with windows of 24 tokens, shorter than these prompts, Gemma 3 runs whole prompts and says why."""
    loaded = {"organism": lambda: load("organism:true-micl"), "gemma3-wide": _wide_gemma3}.get(
        name, lambda: tiny_loaded(name))()
    eps = query_episodes("clock_math", 3, 5, fixed_demos=True)
    split, why = split_prefix(loaded, loaded.prepare_batch(eps, with_answer=True, padding_side="right"))
    if name == "gemma3":
        assert split is None and "sliding-window layers" in why
    else:
        assert split is not None and 0 < split.length < min(len(lay) for lay in loaded.prepare_batch(eps).layouts)
    if name == "gemma3":
        with pytest.warns(UserWarning, match="each prompt runs whole here .sliding-window layers"):
            shared = _records(loaded, 5)
    else:
        shared = _records(loaded, 5)
    whole = _records(loaded, 1)
    assert len(shared) == len(whole) == 10
    for a, b in zip(shared, whole):
        assert {k: a[k] for k in ("correct", "prediction", "cla", "copied")} == \
            {k: b[k] for k in ("correct", "prediction", "cla", "copied")}
        for key in FIELDS:
            assert a[key] == pytest.approx(b[key], abs=1e-5)
        assert torch.allclose(torch.tensor(a["visual_share_by_head"]), torch.tensor(b["visual_share_by_head"]),
                              atol=1e-5, equal_nan=True)
        assert a["image_share"] == pytest.approx(b["image_share"], abs=1e-5)
        assert a["looks_at"] == pytest.approx(b["looks_at"], abs=1e-5)


def test_the_prefix_runs_once_a_batch():
    """With fixed demos each batch's decoder sees the prefix once (one batch-of-one pass) and the suffixes once;
    per-query demos run every prompt whole; the records say which protocol drew them."""
    loaded = load("organism:true-micl")
    calls = []  # (batch, length) of every decoder call
    hook = lambda module, args, kwargs: calls.append(tuple(kwargs["inputs_embeds"].shape[:2]))  # noqa: E731
    handle = loaded.adapter.decoder(loaded.model).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        records = run(loaded, ["palindrome"], ["4-shot"], RunConfig(n=4, batch_size=4, progress=False,
                                                                    fixed_demos=True))
        (one, prefix), (four, suffix) = calls
        assert one == 1 and four == 4 and suffix < prefix and records[0]["demos"] == "fixed"
        calls.clear()
        records = run(loaded, ["palindrome"], ["4-shot"], RunConfig(n=4, batch_size=4, progress=False))
        assert [b for b, _ in calls] == [4] and "demos" not in records[0]
        with warnings.catch_warnings(record=True) as said:  # zero-shot: no demos to share, nothing to warn of
            warnings.simplefilter("always")
            run(loaded, ["palindrome"], ["zero-shot"], RunConfig(n=4, batch_size=4, progress=False, fixed_demos=True))
        assert not [w for w in said if "fixed demos" in str(w.message)]
    finally:
        handle.remove()


FALLS_BACK = {"gemma3": "sliding-window layers of 24 tokens", "qwen3_5": "hybrid decoder",
              "qwen3_5_moe": "hybrid decoder", "llava_onevision": "tokens at the cut differ"}


def test_every_family_shares_its_prefix_or_says_why(family):
    """Every family's tiny model: the suffix pass after the prefix's cache gives the whole batch's attention (1e-5)
    and logits; or the family falls back, for its stated reason (LLaVA-OneVision's processor lays out a lone query
    image, anyres, unlike the same image among several: the token check catches it)."""
    from micl_probe.measure import score_and_capture

    loaded = tiny_loaded(family)
    batch = loaded.prepare_batch(query_episodes("clock_math", 2, 3, fixed_demos=True), with_answer=True,
                                 padding_side="right")
    split, why = split_prefix(loaded, batch)
    if family in FALLS_BACK:
        assert split is None and FALLS_BACK[family] in why, why
        return
    whole, logits = score_and_capture(loaded, batch)
    shared, suffix_logits = score_and_capture(loaded, batch, prefix=split)
    assert torch.allclose(whole.mass, shared.mass, atol=1e-5, equal_nan=True)
    assert torch.allclose(logits[:, split.length:], suffix_logits, atol=1e-4)


def test_capture_attention_runs_a_shared_prefix_once():
    """capture_attention on episodes with one demo set, several a batch: the prefix runs once a batch and the masses
    equal one episode at a time (1e-5); rows inside the prefix keep whole prompts."""
    from micl_probe import capture_attention

    loaded = load("organism:true-micl")
    eps = query_episodes("novel_binding", 4, 6, fixed_demos=True)
    calls = []
    hook = lambda module, args, kwargs: calls.append(tuple(kwargs["inputs_embeds"].shape[:2]))  # noqa: E731
    handle = loaded.adapter.decoder(loaded.model).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        shared = capture_attention(loaded, eps, batch_size=3, progress=False)
        assert [b for b, _ in calls] == [1, 3, 1, 3] and calls[0][1] > calls[1][1]
        calls.clear()
        one = capture_attention(loaded, eps, batch_size=1, progress=False)
        assert [b for b, _ in calls] == [1] * 6
        calls.clear()
        capture_attention(loaded, eps, rows=[2, 40], batch_size=3, progress=False)  # rows in the demos: whole
        assert [b for b, _ in calls] == [3, 3]
    finally:
        handle.remove()
    assert shared.segments == one.segments
    assert torch.allclose(shared.mass, one.mass, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("name", ["organism", "llava", "qwen2_vl", "gemma3-wide"])
def test_generation_continues_from_a_shared_prefix(name):
    """Generated answers with one demo set: the measured prefill after the prefix's cache gives the whole prompts'
    attention (1e-5) and the same tokens; with prompts of different lengths (left padding moved between prefix and
    suffix) too, except under M-RoPE (Qwen2-VL), which then runs whole prompts and says why."""
    from dataclasses import replace

    from micl_probe.evaluation.scoring import generation_kwargs
    from micl_probe.measure import score_and_capture

    loaded = {"organism": lambda: load("organism:true-micl"), "gemma3-wide": _wide_gemma3}.get(
        name, lambda: tiny_loaded(name))()
    eps = query_episodes("palindrome", 3, 3, fixed_demos=True)
    longer = replace(eps[1], query=replace(eps[1].query, question="What is it? Look closely at it."))
    gen = generation_kwargs(loaded, 6)
    for episodes in (eps, [eps[0], longer, eps[2]]):
        batch = loaded.prepare_batch(episodes, padding_side="left")
        padded = not bool(batch.inputs["attention_mask"].all())
        split, why = split_prefix(loaded, batch, with_answer=False)
        if name == "qwen2_vl" and padded:
            assert split is None and "M-RoPE" in why
            continue
        assert split is not None, why
        prompt = batch.inputs["input_ids"].shape[1]
        whole, sequences = score_and_capture(loaded, batch, generate=gen)
        shared, shared_sequences = score_and_capture(loaded, batch, generate=gen, prefix=split)
        assert torch.equal(sequences[:, prompt:], shared_sequences[:, prompt:])
        assert torch.allclose(whole.mass, shared.mass, atol=1e-5, equal_nan=True)
    assert padded  # the second batch was left-padded
