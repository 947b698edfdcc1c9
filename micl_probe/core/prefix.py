"""Shared demo prefixes: a batch whose prompts agree up to the query runs that prefix once into a KV cache, and only
the queries' suffixes run against it (the `--fixed-demos` protocol: one demo set per task and seed).

    split = split_prefix(loaded, batch)        # (SharedPrefix, "") or (None, why not)
    logits = split.suffix_logits(loaded.model)    # [B, S, vocab]: positions P … P + S - 1

The batch must be right-padded (its layouts then index the prefix + suffix sequence the suffix pass continues).
The prefix ends where the first prompt's query begins; it is shared only where every prompt renders the same text
and the same images up to there, and where the processor, run on the prefix and on each suffix apart, gives exactly
the batch's token ids (no token straddles the cut). Positions: 1-D RoPE continues from the cache; M-RoPE families
get the whole prompt's 3-D positions (`Adapter.rope_positions`) cut at P; inputs read from the start of the sequence
(Gemma 3's token types, for its bidirectional image mask) stay whole. Not shared (the reason returned): a single
episode, a left-padded batch, sliding-window or hybrid (linear-attention) decoders, whose caches do not hold every
prefix key.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from .layout import QUERY
from .prompt import PreparedBatch, Prompt, _special_tokens, render


@dataclass
class SharedPrefix:
    """A batch cut at its shared prefix: `length` tokens (P), the prefix's processor inputs (a batch of one), and
    the suffixes' inputs [B, S] (right-padded) with the attention mask over P + S and, for M-RoPE, position ids."""

    length: int
    prefix: dict
    suffix: dict

    @torch.no_grad()
    def run_prefix(self, model):
        """The prefix's KV cache (one forward), repeated along the batch for the suffix pass."""
        out = model(**self.prefix, use_cache=True)
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        cache.batch_repeat_interleave(self.suffix["input_ids"].shape[0])
        return cache

    def suffix_inputs(self, model) -> dict:
        """The suffix pass's forward arguments: the suffixes' inputs and the prefix's cache (run now)."""
        name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        return {**self.suffix, name: self.run_prefix(model)}

    @torch.no_grad()
    def suffix_logits(self, model) -> torch.Tensor:
        """logits[B, S, vocab] of the suffixes, run after the prefix's cache (positions P … P + S - 1)."""
        return model(**self.suffix_inputs(model)).logits


def _cut(prompt: Prompt) -> int:
    """The index of the first piece the query owns."""
    return next(i for i, p in enumerate(prompt.pieces) if p.owner == QUERY)


def _halves(prompt: Prompt, cut: int) -> tuple[Prompt, Prompt]:
    """`prompt` cut before piece `cut`: (head, tail), each with its own images."""
    k = sum(p.kind == "image" for p in prompt.pieces[:cut])
    return (Prompt(prompt.pieces[:cut], prompt.images[:k], None),
            Prompt(prompt.pieces[cut:], prompt.images[k:], prompt.answer))


def split_prefix(loaded, batch: PreparedBatch, with_answer: bool = True) -> tuple[SharedPrefix | None, str]:
    """(SharedPrefix, "") when `batch`'s prompts share a prefix up to the query, else (None, the reason)."""
    episodes, adapter, processor, model = batch.episodes, loaded.adapter, loaded.processor, loaded.model
    if len(episodes) < 2:
        return None, "a single episode"
    mask = batch.inputs["attention_mask"]
    why = adapter.shared_prefix_unsupported(model, mask.shape[1])
    if why:
        return None, why
    if not bool(mask[:, 0].all()):
        return None, "a left-padded batch"
    template = processor if loaded.use_template else None
    prompts = [render(e, adapter, with_answer=with_answer, processor=template) for e in episodes]
    cuts = [_cut(p) for p in prompts]
    heads, tails = zip(*(_halves(p, c) for p, c in zip(prompts, cuts)))
    same = lambda a, b: a is b or a == b  # noqa: E731  (PIL images compare by content)
    if cuts[0] == 0 or any(h.text != heads[0].text or len(h.images) != len(heads[0].images)
                           or not all(map(same, h.images, heads[0].images)) for h in heads):
        return None, "the prompts differ before the query"
    specials = _special_tokens(prompts, processor)
    prefix = processor(text=[heads[0].text], images=adapter.images_arg([list(heads[0].images)]),
                       return_tensors="pt", **specials)
    suffix = processor(text=[t.text for t in tails], images=adapter.images_arg([list(t.images) for t in tails]),
                       return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    p = prefix["input_ids"].shape[1]
    ids = batch.inputs["input_ids"].cpu()
    for b in range(len(episodes)):
        n = int(suffix["attention_mask"][b].sum())
        full = ids[b, : int(mask[b].sum())]
        if not torch.equal(torch.cat([prefix["input_ids"][0], suffix["input_ids"][b, :n]]), full):
            return None, "the tokens at the cut differ from the whole prompt's"
    s = suffix["input_ids"].shape[1]
    suffix = dict(suffix)
    suffix["attention_mask"] = torch.cat([torch.ones(len(episodes), p, dtype=suffix["attention_mask"].dtype),
                                          suffix["attention_mask"]], 1)
    for key in adapter.whole_prompt_inputs:  # per-token inputs the model reads from the start of the sequence
        if key in batch.inputs:
            suffix[key] = batch.inputs[key].cpu()
    positions = adapter.rope_positions(model, batch.inputs)
    if positions is not None:
        suffix["position_ids"] = positions[..., p: p + s]
    device = batch.inputs["input_ids"].device
    move = lambda d: {k: v.to(device) if torch.is_tensor(v) else v for k, v in d.items()}  # noqa: E731
    return SharedPrefix(p, move(dict(prefix)), move(suffix)), ""
