"""Scoring: greedy exact match in one teacher-forced forward pass, per episode and per task.

`greedy_exact_match` scores a batch in ONE teacher-forced forward pass. Greedy decoding emits exactly the gold
answer and then stops iff, along the gold answer, the argmax at every step is the gold token and the argmax after
the last answer token is the end-of-turn token. So this is the same verdict as `generate` + exact match, at the
cost of one forward pass (tests check the two agree).

    correct = which_correct(loaded, episodes, intervention=dara.on(loaded.model))     # bool[episode]
    acc = score(loaded, episodes)                                                     # Accuracy(correct, n)
    correct = task_verdicts(loaded, "outlier", shots=4, n=200)                        # the task's query split
"""

from __future__ import annotations

import torch

from ..core import Loaded, PreparedBatch, prepared, within
from ..tasks import sample_episodes
from .statistics import Accuracy


@torch.no_grad()
def greedy_exact_match(model, batch: PreparedBatch, **forward_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct[B] bool, first_token[B]): batch prepared with `with_answer=True`; `forward_kwargs` go to the
    forward pass (what an intervention's context yields)."""
    return verdicts_from_logits(model(**batch.inputs, **forward_kwargs).logits, batch)


def verdicts_from_logits(logits: torch.Tensor, batch: PreparedBatch, offset: int = 0
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct[B] bool, first_token[B]) from the teacher-forced logits[B, seq, vocab] of a with-answer batch
    (`offset`: the logits begin at that position, a suffix's after a shared prefix)."""
    ids = batch.inputs["input_ids"]
    correct, first = [], []
    for b, lay in enumerate(batch.layouts):
        answer = lay.query_answer_positions()
        if answer.numel() == 0:
            raise ValueError("greedy_exact_match needs episodes prepared with with_answer=True")
        stop = int(answer[-1]) + 1  # the end-of-turn token rendered after the answer
        if stop < ids.shape[1] and bool(batch.inputs["attention_mask"][b, stop]):
            predictors = torch.cat([answer - 1, answer[-1:]])  # each predicts the next token
            targets = torch.cat([ids[b, answer], ids[b, stop:stop + 1]])
        else:  # a format with no end-of-turn token (GLM-4.1V): the answer tokens only
            predictors, targets = answer - 1, ids[b, answer]
        argmax = logits[b, predictors - offset].argmax(-1)
        correct.append(bool((argmax == targets).all()))
        first.append(int(argmax[0]))
    return torch.tensor(correct), torch.tensor(first)


def stop_token_ids(loaded: Loaded) -> list[int]:
    """Token ids that end an answer: the model's EOS ids, the tokenizer's, and the family's end of turn where it is
    one token."""
    tok = loaded.processor.tokenizer
    ids = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    for end in {loaded.adapter.chat.assistant_end, loaded.adapter.chat.assistant_end.strip()} - {""}:
        one = tok(end, add_special_tokens=False)["input_ids"]
        if len(one) == 1:
            ids.add(one[0])
    return sorted(ids)


@torch.no_grad()
def generate_answers(loaded: Loaded, batch: PreparedBatch, max_new_tokens: int = 16, **forward_kwargs) -> list[str]:
    """Greedy answers (text, special tokens dropped) to a batch prepared without answers and left-padded
    (`loaded.prepare_batch(episodes, padding_side="left")`); `forward_kwargs` go to every forward pass (what an
    intervention's context yields). Generation stops at `stop_token_ids` or after `max_new_tokens`."""
    generated = generate_tokens(loaded, batch, max_new_tokens, **forward_kwargs)
    return loaded.processor.tokenizer.batch_decode(generated, skip_special_tokens=True)


def generation_kwargs(loaded: Loaded, max_new_tokens: int = 16) -> dict:
    """`generate`'s keyword arguments for a greedy answer: at most `max_new_tokens`, stopping at `stop_token_ids`
    (what `generate_tokens` runs, and the harness's one-prefill path traces)."""
    stops = stop_token_ids(loaded)
    return {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1, "eos_token_id": stops,
            "pad_token_id": loaded.processor.tokenizer.pad_token_id or stops[0]}


@torch.no_grad()
def generate_tokens(loaded: Loaded, batch: PreparedBatch, max_new_tokens: int = 16, prefix=None, **forward_kwargs
                    ) -> torch.Tensor:
    """The generated token ids [B, new tokens] of `generate_answers` (padded after a row stops); with `prefix`
    (`core.prefix.split_prefix` of this batch), generation continues from the shared prefix's cache."""
    mask = batch.inputs["attention_mask"]
    if len(batch) > 1 and not bool(mask[:, -1].all()):
        raise ValueError("generation needs left padding: prepare the batch with padding_side='left'")
    # `generate` refuses forward kwargs it does not know, so they reach the attention modules (and from there the
    # attention function, as in a plain forward) through a pre-hook on each, for the duration of this call
    model, adapter = loaded.model, loaded.adapter
    handles = [adapter.attention(model, i).register_forward_pre_hook(
        lambda module, args, kwargs: (args, {**kwargs, **forward_kwargs}), with_kwargs=True)
        for i in adapter.attention_layers(model)] if forward_kwargs else []
    try:
        inputs = batch.inputs if prefix is None else prefix.generate_inputs(model)
        out = model.generate(**inputs, **generation_kwargs(loaded, max_new_tokens))
    finally:
        for h in handles:
            h.remove()
    return out[:, batch.inputs["input_ids"].shape[1]:]


@torch.no_grad()
def which_correct(loaded: Loaded, episodes, intervention=None, batch_size: int = 25) -> torch.Tensor:
    """correct[episode] (bool): greedy exact match of each of `episodes`, `batch_size` at a time;
    `intervention(layouts)` (a context-manager factory such as `dara.on(model)` or an MTV injection) is active
    around each batch when given."""
    verdicts = []
    for i in range(0, len(episodes), batch_size):
        batch = prepared(intervention, loaded.prepare_batch(episodes[i:i + batch_size], with_answer=True))
        with within(intervention, batch.layouts) as kwargs:
            verdicts.append(greedy_exact_match(loaded.model, batch, **kwargs)[0])
    return torch.cat(verdicts) if verdicts else torch.zeros(0, dtype=torch.bool)


def count_correct(loaded: Loaded, episodes, intervention=None, batch_size: int = 25) -> int:
    """How many of `episodes` are answered exactly (see `which_correct`)."""
    return int(which_correct(loaded, episodes, intervention, batch_size).sum())


def score(loaded: Loaded, episodes, intervention=None, batch_size: int = 25) -> Accuracy:
    """Accuracy (with its Wilson interval) of `loaded` on `episodes`, under `intervention` when given."""
    return Accuracy(count_correct(loaded, episodes, intervention, batch_size), len(episodes))


def task_verdicts(loaded: Loaded, task: str, shots: int, n: int = 200, seed: int = 0, intervention=None,
                  condition=None, batch_size: int = 25) -> torch.Tensor:
    """correct[n] (bool) on `task`'s query split, episode by episode (the same episodes for every condition, so two
    conditions can be compared pairwise: `statistics.mcnemar_p`); `condition(episode)` maps episodes (e.g.
    `Episode.without_demo_images`)."""
    episodes = sample_episodes(task, shots, n, seed=seed, split="query")
    if condition is not None:
        episodes = [condition(e) for e in episodes]
    return which_correct(loaded, episodes, intervention, batch_size)
