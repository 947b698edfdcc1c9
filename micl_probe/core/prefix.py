"""Shared demo prefixes: a batch whose prompts agree up to the query runs that prefix once into a KV cache, and only
the queries' suffixes run against it (the `--fixed-demos` protocol: one demo set per task and seed).

    split = split_prefix(loaded, batch)        # (SharedPrefix, "") or (None, why not)
    logits = split.suffix_logits(loaded.model)    # [B, S, vocab]: positions P … P + S - 1
    tokens = loaded.model.generate(**split.generate_inputs(loaded.model), ...)   # a left-padded batch

A right-padded batch (teacher-forced scoring) keeps its layouts; a left-padded one (generation) has each row's
padding moved between the prefix and its suffix (`SharedPrefix.layouts`).
The prefix ends where the first prompt's query begins; it is shared only where every prompt renders the same text
and the same images up to there, and where the processor, run on the prefix and on each suffix apart, gives exactly
the batch's token ids (no token straddles the cut). Positions: 1-D RoPE continues from the cache; M-RoPE families
get the whole prompt's 3-D positions (`Adapter.rope_positions`) cut at P; inputs read from the start of the sequence
(Gemma 3's token types, for its bidirectional image mask) stay whole. Not shared (the reason returned): a single
episode, sliding-window layers shorter than the prompt or a hybrid (linear-attention) decoder, whose caches do not
hold every prefix key, and M-RoPE families on a left-padded batch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace

import torch

from .layout import NONE, QUERY, ROLE, TokenLayout
from .prompt import PreparedBatch, Prompt, _special_tokens, render


@dataclass
class SharedPrefix:
    """A batch cut at its shared prefix: `length` tokens (P), the prefix's processor inputs (a batch of one), the
    suffixes' inputs [B, S] (padded on the batch's side) with the attention mask over P + S and, for M-RoPE, position
    ids, and `layouts`: the batch's layouts in the order the two passes see the tokens (prefix, then each suffix with
    its padding; for a right-padded batch, its own)."""

    length: int
    prefix: dict
    suffix: dict
    layouts: list

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

    def generate_inputs(self, model) -> dict:
        """`generate`'s arguments: the whole ids (prefix + suffix; generate reads past the cache), the suffixes'
        other inputs and the prefix's cache (run now)."""
        inputs = self.suffix_inputs(model)
        b = inputs["input_ids"].shape[0]
        inputs["input_ids"] = torch.cat([self.prefix["input_ids"].expand(b, -1), inputs["input_ids"]], 1)
        return inputs

    @torch.no_grad()
    def suffix_logits(self, model) -> torch.Tensor:
        """logits[B, S, vocab] of the suffixes, run after the prefix's cache (positions P … P + S - 1)."""
        return model(**self.suffix_inputs(model)).logits


def one_demo_set(episodes) -> bool:
    """Whether `episodes` (two or more) share one non-empty demo set (`--fixed-demos`): prompts that may share a
    prefix up to the query (`split_prefix` then checks the rendered text and tokens)."""
    return len(episodes) > 1 and bool(episodes[0].demos) and all(e.demos == episodes[0].demos for e in episodes[1:])


def _cut(prompt: Prompt) -> int:
    """The index of the first piece the query owns."""
    return next(i for i, p in enumerate(prompt.pieces) if p.owner == QUERY)


def _halves(prompt: Prompt, cut: int) -> tuple[Prompt, Prompt]:
    """`prompt` cut before piece `cut`: (head, tail), each with its own images."""
    k = sum(p.kind == "image" for p in prompt.pieces[:cut])
    return (Prompt(prompt.pieces[:cut], prompt.images[:k], None),
            Prompt(prompt.pieces[cut:], prompt.images[k:], prompt.answer))


def split_prefix(loaded, batch: PreparedBatch, with_answer: bool = True) -> tuple[SharedPrefix | None, str]:
    """(SharedPrefix, "") when `batch`'s prompts share a prefix up to the query, else (None, the reason). A
    right-padded batch (scoring) keeps its layouts; a left-padded one (generation) moves each row's padding between
    the prefix and its suffix, where generate's mask-derived positions give every real token the position it has in
    the whole prompt (1-D RoPE; M-RoPE families keep whole prompts there)."""
    episodes, adapter, processor, model = batch.episodes, loaded.adapter, loaded.processor, loaded.model
    if len(episodes) < 2:
        return None, "a single episode"
    mask = batch.inputs["attention_mask"]
    why = adapter.shared_prefix_unsupported(model, mask.shape[1])
    if why:
        return None, why
    left = not bool(mask[:, 0].all())
    if left and not bool(mask[:, -1].all()):
        return None, "padding on both sides"
    if left and adapter.mrope:
        return None, "M-RoPE positions after a cached prefix are not generate's (a left-padded batch)"
    template = processor if loaded.use_template else None
    prompts = [render(e, adapter, with_answer=with_answer, processor=template) for e in episodes]
    if not any(p.owner not in (QUERY, NONE) for p in prompts[0].pieces):
        return None, "no demos before the query"
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
                       return_tensors="pt", padding=True, padding_side="left" if left else "right",
                       add_special_tokens=False)
    p, s = prefix["input_ids"].shape[1], suffix["input_ids"].shape[1]
    ids, real = batch.inputs["input_ids"].cpu(), mask.cpu().bool()
    if p + s != ids.shape[1]:
        return None, "the tokens at the cut differ from the whole prompt's"
    for b in range(len(episodes)):
        tail = suffix["input_ids"][b][suffix["attention_mask"][b].bool()]
        if not torch.equal(torch.cat([prefix["input_ids"][0], tail]), ids[b][real[b]]):
            return None, "the tokens at the cut differ from the whole prompt's"
    suffix = dict(suffix)
    repeated = lambda key: prefix[key].expand(len(episodes), -1)  # noqa: E731  (the prefix's, for every row)
    suffix["attention_mask"] = torch.cat([torch.ones_like(repeated("input_ids")), suffix["attention_mask"]], 1)
    for key in adapter.whole_prompt_inputs:  # per-token inputs the model reads from the start of the sequence
        if key in suffix:
            suffix[key] = torch.cat([repeated(key), suffix[key]], 1)
    positions = adapter.rope_positions(model, batch.inputs)
    if positions is not None:
        suffix["position_ids"] = positions[..., p: p + s]
    layouts = [_moved_padding(lay, p) for lay in batch.layouts] if left else list(batch.layouts)
    device = batch.inputs["input_ids"].device
    move = lambda d: {k: v.to(device) if torch.is_tensor(v) else v for k, v in d.items()}  # noqa: E731
    return SharedPrefix(p, move(dict(prefix)), move(suffix), layouts), ""


def _moved_padding(layout: TokenLayout, p: int) -> TokenLayout:
    """A left-padded row's layout with its padding moved after the first `p` real tokens (prefix, padding, suffix:
    the order the cached prefix and the left-padded suffix give)."""
    pad = int((layout.role == ROLE["pad"]).sum())
    order = torch.cat([torch.arange(pad, pad + p), torch.arange(pad), torch.arange(pad + p, len(layout))])
    return replace(layout, owner=layout.owner[order], role=layout.role[order], image_index=layout.image_index[order])
