"""Edits of the answer row's attention: uniform attention (a causal test) and Mapping-Guided Inference.

Wang & Li (ACL 2026, "Why Multimodal ICL Lags Behind?") test whether the query's attention matters by replacing it
with a uniform distribution, and fix it without training by Mapping-Guided Inference (MGI): in the layer where the
query's attention is most focused (least entropy), take the evidence tokens S = {j : a_j > k · mean(a)} and scale
the query's attention to S by λ (k = 1.5; λ = 2 on synthetic tasks, 6 on VQA).

    with uniform(loaded, layers=[0, 1]).__call__(layouts) as kw: model(**inputs, **kw)
    layer = least_entropy_layer(loaded, calibration_episodes)       # where the answer row looks most narrowly
    run(loaded, tasks, ["4-shot", "4-shot+mgi"], interventions={"mgi": mgi(loaded, k=1.5, lam=2.0, layer=layer)})

Here, on micl_probe's layouts:
  * rows edited: the answer row (the position whose logits give the first answer token) and, under generation, every
    generated token's row; every other row keeps the model's attention.
  * uniform: at each chosen layer, every head's edited row attends equally to every key it may see (the causal
    prefix, minus padding and whatever a sliding window hides).
  * MGI: a = the edited row's attention on the prompt's image tokens, averaged over heads; S = the image tokens with
    a_j > k · mean(a) over the image tokens; at `layer`, each head's weights on S are multiplied by λ and the row
    renormalised (λ = 1: unchanged). `least_entropy_layer` picks the layer from calibration episodes (other than the
    scored ones): the least mean entropy of that head-mean image attention, renormalised over the image tokens.
    Departure from the paper: the layer is chosen once per model and task from calibration episodes, not per query.

Both run through a registered attention function (transformers' registry, as DARA) that recomputes the edited
layers with eager attention (the others run sdpa, or eager when the model was set to eager: `capture_attention`
under an intervention reads every layer's weights); the per-call data reach it as the forward kwarg `micl_rows`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from ..core import ROLE, Loaded
from ..core.provenance import digest, tagged
from .dara import _additive, _eager, _text_config

NAME = "micl_probe_rows"
KWARG = "micl_rows"


@dataclass(frozen=True)
class RowEdit:
    """What one forward pass under a row edit needs in its attention function."""

    layers: tuple[int, ...]
    kind: str  # "uniform" | "mgi"
    rows: torch.Tensor  # [B] the answer row of each prompt
    prompt_len: int
    image: torch.Tensor  # [B, seq] bool: the prompt's image tokens
    k: float = 1.5
    lam: float = 1.0
    eager: bool = False  # the other layers too with eager attention (returning weights: capture under the edit)


def _register():
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, _row_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def edit_rows(weights: torch.Tensor, allowed: torch.Tensor, image: torch.Tensor, kind: str, k: float, lam: float
              ) -> torch.Tensor:
    """The edited attention rows: weights [B, H, kv] (one row per prompt), allowed [B, H|1, kv] bool (keys the row
    may see), image [B, kv] bool. uniform: equal weight on the allowed keys; mgi: the evidence image tokens' weights
    times `lam`, renormalised (see the module docstring)."""
    if kind == "uniform":
        w = allowed.to(weights.dtype).expand_as(weights)
        return w / w.sum(-1, keepdim=True).clamp_min(1)
    a = weights.float().mean(1)  # [B, kv] head mean
    img = image.to(a.device)
    mean = (a * img).sum(-1, keepdim=True) / img.sum(-1, keepdim=True).clamp_min(1)
    evidence = img & (a > k * mean)  # [B, kv]
    scaled = weights * torch.where(evidence, lam, 1.0)[:, None, :].to(weights.dtype)
    return scaled / scaled.sum(-1, keepdim=True)


def _row_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    call: RowEdit | None = kwargs.pop(KWARG, None)
    if call is None:
        raise ValueError("the model runs micl_probe's row-edit attention but was not given its settings: pass the "
                         "kwargs the intervention's context yields")
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    if getattr(module, "layer_idx", None) not in call.layers:
        if call.eager:
            return _eager(module, query, key, value, _additive(attention_mask, query, key), scaling, dropout)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    mask = _additive(attention_mask, query, key)
    scores = query @ key.transpose(2, 3) * scaling + mask
    weights = scores.softmax(-1, dtype=torch.float32).to(query.dtype)  # [B, H, q, kv]
    B, q_len, kv = query.shape[0], query.shape[2], key.shape[2]
    if q_len == call.prompt_len:  # the prompt pass: each prompt's answer row
        rows = call.rows.to(query.device)
    elif q_len == 1:  # a generated token after the cached prompt
        rows = torch.zeros(B, dtype=torch.long, device=query.device)
    else:
        raise ValueError(f"a forward of {q_len} new tokens after a prompt of {call.prompt_len}: the row edit knows "
                         "the prompt pass and one-token decoding steps only")
    b = torch.arange(B, device=query.device)
    lowest = torch.finfo(mask.dtype).min
    allowed = mask.expand(B, -1, q_len, kv)[b, :, rows] > lowest / 2  # [B, H|1, kv]
    image = call.image.to(query.device)
    image = image[:, :kv] if image.shape[1] >= kv else torch.nn.functional.pad(image, (0, kv - image.shape[1]))
    weights = weights.clone()
    weights[b, :, rows] = edit_rows(weights[b, :, rows], allowed, image, call.kind, call.k, call.lam)
    return (weights @ value).transpose(1, 2).contiguous(), weights


@contextlib.contextmanager
def edited(model, layouts, layers, kind: str, k: float = 1.5, lam: float = 1.0):
    """Run `model` with the answer rows of `layers` edited (`kind` "uniform" or "mgi") inside the block; yields the
    forward kwargs that carry the edit."""
    layouts = list(layouts)
    config = _text_config(model)
    previous = config._attn_implementation  # eager (capture under the edit reads every layer's weights): kept
    call = RowEdit(tuple(layers), kind, torch.tensor([lay.answer_position for lay in layouts]), layouts[0].seq_len,
                   torch.stack([lay.role == ROLE["image"] for lay in layouts]), float(k), float(lam),
                   eager=previous == "eager")
    _register()
    config._attn_implementation = NAME
    try:
        yield {KWARG: call}
    finally:
        config._attn_implementation = previous


def _layers(loaded: Loaded, layers) -> tuple[int, ...]:
    measured = loaded.adapter.attention_layers(loaded.model)
    layers = tuple(measured if layers is None else layers)
    bad = [x for x in layers if isinstance(x, bool) or not isinstance(x, int) or x not in measured]
    if bad or not layers:
        raise ValueError(f"layers {list(bad or layers)}: give layers with softmax attention, from {measured}")
    return layers


def uniform(loaded: Loaded, layers=None):
    """`layouts -> context manager`: the answer row's attention in `layers` (None: every softmax layer) replaced by
    a uniform distribution over the keys it may see (a harness intervention)."""
    layers = _layers(loaded, layers)
    return tagged(lambda layouts: edited(loaded.model, layouts, layers, "uniform"), digest("uniform", list(layers)))


def mgi(loaded: Loaded, k: float = 1.5, lam: float = 2.0, layer: int | None = None):
    """`layouts -> context manager`: Mapping-Guided Inference at `layer` (None: the first softmax layer; pick it with
    `least_entropy_layer`) with threshold `k` and scale `lam` (see the module docstring)."""
    for name, value in (("k", k), ("lam", lam)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"MGI's {name}={value!r}: give a finite number > 0 (the paper: k = 1.5, λ = 2 or 6)")
    (layer,) = _layers(loaded, None if layer is None else [layer])[:1]
    return tagged(lambda layouts: edited(loaded.model, layouts, [layer], "mgi", k, lam),
                  digest("mgi", layer, float(k), float(lam)))


@torch.no_grad()
def least_entropy_layer(loaded: Loaded, episodes, batch_size: int = 4) -> tuple[int, list[float]]:
    """(layer, [mean entropy per layer]): the softmax layer whose answer row attends most narrowly over the image
    tokens (the head-mean attention on them, renormalised; entropy in nats, mean over `episodes`; NaN for layers
    without softmax attention)."""
    from ..measure.attention import _traced_rows

    entropy = []
    for i in range(0, len(episodes), batch_size):
        batch = loaded.prepare_batch(list(episodes[i:i + batch_size]))
        rows = _traced_rows(loaded, batch.inputs, [[lay.answer_position] for lay in batch.layouts])  # [B, L, H, seq]
        image = torch.stack([lay.role == ROLE["image"] for lay in batch.layouts])[:, None]  # [B, 1, seq]
        a = rows.mean(2) * image  # [B, L, seq]
        p = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
        entropy.append(-(p * p.clamp_min(1e-12).log()).sum(-1))  # [B, L]
    mean = torch.cat(entropy).mean(0)
    measured = loaded.adapter.attention_layers(loaded.model)
    best = min(measured, key=lambda layer: float(mean[layer]))
    return best, mean.tolist()


__all__ = ["edit_rows", "least_entropy_layer", "mgi", "uniform"]
