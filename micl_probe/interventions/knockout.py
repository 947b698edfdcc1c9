"""Head knockout (Huang et al., ICML 2026): the chosen heads' outputs replaced, before the output projection.

    ko = knockout(loaded, [(3, 2), (5, 0)])                      # zero ablation at the answer row (and each
    run(loaded, tasks, ["4-shot", "4-shot+ko"], interventions={"ko": ko})   # generated token's)
    knockout(loaded, heads, at="all", means=extract(loaded, stream).mean)   # mean ablation at every position
    random_heads(loaded, 3, seed=0)                                # a random set of as many heads, for comparison

A head's output is its slice of the o_proj input (as `mtv.inject` patches it). "zero" ablation writes zeros; "mean"
writes a mean output per head (`means` [layer, head, d_head], e.g. `mtv.extract` over calibration episodes: the
answer row's outputs). `at`: "answer" (the answer row, and every generated token under generation) or "all" (every
position of every pass).
"""

from __future__ import annotations

import re

import torch

from ..core import Loaded
from ..core.provenance import digest, tagged
from .mtv import inject

AT = ("answer", "all")
_HEAD = re.compile(r"L(\d+)H(\d+)")


def head_mask(loaded: Loaded, heads) -> torch.Tensor:
    """bool [layer, head] with the given (layer, head) pairs set; ValueError for a head the model lacks."""
    n_layers, n_heads = loaded.adapter.n_layers(loaded.model), loaded.adapter.n_heads(loaded.model)
    attention = loaded.adapter.attention_layers(loaded.model)
    mask = torch.zeros(n_layers, n_heads, dtype=torch.bool)
    heads = list(heads)
    if not heads:
        raise ValueError("no heads given to knock out: name at least one (layer, head)")
    for layer, head in heads:
        if layer not in attention or not 0 <= head < n_heads:
            raise ValueError(f"head L{layer}H{head}: this model's heads are L<layer>H<head> with layer in "
                             f"{attention[0]}..{attention[-1]} (softmax layers) and head 0..{n_heads - 1}")
        mask[layer, head] = True
    return mask


def parse_heads(text: str) -> list[tuple[int, int]]:
    """"L3H2,L5H0" -> [(3, 2), (5, 0)]; ValueError naming the form otherwise."""
    parts = [p.strip() for p in text.split(",")]
    found = [_HEAD.fullmatch(p) for p in parts]
    if not parts or any(m is None for m in found):
        raise ValueError(f"heads {text!r}: write them as L<layer>H<head>, comma-separated, e.g. L3H2,L5H0")
    return [(int(m.group(1)), int(m.group(2))) for m in found]


def random_heads(loaded: Loaded, k: int, seed: int = 0, exclude=()) -> list[tuple[int, int]]:
    """`k` distinct heads of the softmax layers drawn with `seed` (none of `exclude`), sorted."""
    n_heads = loaded.adapter.n_heads(loaded.model)
    pool = [(layer, h) for layer in loaded.adapter.attention_layers(loaded.model) for h in range(n_heads)
            if (layer, h) not in set(exclude)]
    if not 1 <= k <= len(pool):
        raise ValueError(f"random-{k}: draw between 1 and {len(pool)} heads")
    g = torch.Generator().manual_seed(seed)
    return sorted(pool[int(i)] for i in torch.randperm(len(pool), generator=g)[:k])


def knockout(loaded: Loaded, heads, at: str = "answer", means: torch.Tensor | None = None):
    """`layouts -> context manager`: the `heads` [(layer, head), …] knocked out (zero ablation, or mean ablation with
    `means` [layer, head, d_head]) at the answer row or at every position (`at`): a harness intervention."""
    if at not in AT:
        raise ValueError(f"at={at!r}: knock heads out at 'answer' (the answer row) or 'all' (every position)")
    mask = head_mask(loaded, heads)
    shape = (*mask.shape, loaded.adapter.head_dim(loaded.model))
    if means is not None and tuple(means.shape) != shape:
        raise ValueError(f"means of shape {tuple(means.shape)}: mean ablation needs [layer, head, d_head] = {shape}")
    values = torch.zeros(shape) if means is None else means
    return tagged(lambda layouts: inject(loaded, values, mask, layouts, every_token=True, all_positions=at == "all"),
                  digest("knockout", mask, values, at))


__all__ = ["head_mask", "knockout", "parse_heads", "random_heads"]
