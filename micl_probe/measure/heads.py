"""Head scores from the MICL literature, on micl_probe's layouts: induction and previous-token heads, attention sinks.

    hs = head_scores(loaded, episodes)           # HeadScores: induction, previous_token [episode, layer, head]
    hs.mean("induction")                         # [layer, head], mean over episodes
    hs.top("induction", 3)                       # [(layer, head), …] the three highest means
    sinks = find_sinks(loaded, episodes)         # Sinks: ratio [episode, layer, seq], sink tokens by segment
    am = capture_attention(loaded, episodes, sinks=20)   # sink tokens in a segment of their own, "sink"

Scores (Huang et al., ICML 2026, "Dissecting Multimodal ICL", on our layouts, where the demo answers are known):
  induction       the answer row's attention on the demos' answer tokens minus its attention everywhere else
                  (mass on demo answers − (1 − that mass)): in [−1, 1], positive when a head spends most of the row
                  on the demo answers — the token after the repeated "answer here" template in every demo, what an
                  induction head retrieves
  previous_token  each token's attention on the token just before it ("mean attention just below the diagonal"),
                  averaged over every position of the prompt whose predecessor is a real token (padding left out):
                  1 for a head that always looks one token back

Sinks (Kang et al., ICLR 2025, "See What You Are Told: Visual Attention Sink"): a token is a sink at a layer when
its hidden state entering that layer (the residual stream) has one massive dimension: max_d |h_d| / RMS(h) ≥ τ
(τ = 20). Sinks soak up attention that reads as "attention to the image" when they are image tokens. The ratio is at
most sqrt(hidden size) (one non-zero dimension), so τ = 20 suits real widths (hidden size > 400), not tiny models.
`capture_attention(…, sinks=τ)` moves every sink token (per layer: the set each layer sees) out of its segment into
one segment "sink", so the image shares no longer count them.

Both run one forward pass per batch, recomputing the needed attention rows from the attention function's own
post-RoPE queries and keys (the nnsight path of `capture_attention`); hybrid decoders' linear-attention layers are NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..core import ROLE, Episode, Loaded, PreparedBatch, TokenLayout
from .attention import _all_layers, _batches, _layer_input, _padded_rows, rows_attention, sink_ratio, trace_layers

SCORES = ("induction", "previous_token")
TAU = 20.0  # Kang et al.'s threshold on max |h_d| / RMS(h)
CHUNK = 256  # previous-token rows recomputed at a time (memory O(CHUNK x seq x heads) for one layer)


@dataclass
class HeadScores:
    """Per-head scores [episode, layer, head] (`SCORES`; see the module docstring). Made by `head_scores`."""

    dims = ("episode", "layer", "head")
    induction: torch.Tensor
    previous_token: torch.Tensor
    meta: dict = field(default_factory=dict)

    def mean(self, score: str) -> torch.Tensor:
        """[layer, head]: the score's mean over episodes (NaN for a hybrid decoder's unmeasured layers)."""
        if score not in SCORES:
            raise ValueError(f"unknown head score {score!r}; scores: {', '.join(SCORES)}")
        return getattr(self, score).nanmean(0)

    def top(self, score: str, k: int) -> list[tuple[int, int]]:
        """The `k` heads with the highest mean `score`, as (layer, head), highest first."""
        return top_heads_of(self.mean(score), k)

    def as_dict(self) -> dict:
        """{score: per layer, per head: the mean over episodes, "n": episodes, "meta": …} (JSON-ready; NaN stays
        NaN)."""
        return {**{s: self.mean(s).tolist() for s in SCORES}, "n": self.induction.shape[0], "meta": self.meta}


@dataclass
class Sinks:
    """Attention sinks by the hidden-state criterion: `ratio` [episode, layer, seq] = max_d |h_d| / RMS(h) of each
    token's hidden state entering each layer (NaN on padding); a sink where ratio ≥ `tau`. `segments[e][pos]` names
    each position's segment (as `TokenLayout.segment_ids`, "pad" for padding)."""

    ratio: torch.Tensor
    tau: float
    segments: list[list[str]]
    meta: dict = field(default_factory=dict)

    def mask(self) -> torch.Tensor:
        """bool [episode, layer, seq]: the sinks."""
        return self.ratio >= self.tau

    def positions(self, episode: int, layer: int) -> list[int]:
        """The sink positions of one episode at one layer."""
        return self.mask()[episode, layer].nonzero().flatten().tolist()

    def by_segment(self) -> dict[str, list[float]]:
        """{segment: [per layer: sink tokens of that segment per episode, mean over episodes]}: which parts of the
        prompt hold the sinks, layer by layer (segments without a sink at any layer left out). A segment name is
        `<owner>.<role>` ("demo0.image", "query.question") or "special"."""
        mask = self.mask()
        out: dict[str, torch.Tensor] = {}
        for e, names in enumerate(self.segments):
            for pos, name in enumerate(names):
                if name != "pad" and mask[e, :, pos].any():
                    out.setdefault(name, torch.zeros(mask.shape[1]))
                    out[name] += mask[e, :, pos].float()
        return {name: (count / mask.shape[0]).tolist() for name, count in out.items()}


def previous_token_rows(layout: TokenLayout) -> list[int]:
    """The positions of real tokens whose previous position is a real token too: the rows the previous-token score
    averages."""
    real = (layout.role != ROLE["pad"]).tolist()
    return [p for p in range(1, len(real)) if real[p] and real[p - 1]]


def demo_answer_mask(layout: TokenLayout) -> torch.Tensor:
    """bool [seq]: the demos' answer tokens."""
    return (layout.role == ROLE["answer"]) & (layout.owner >= 0)  # demo owners are 0.., the query -1, none -2


def induction_from_rows(answer_row: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """[..., H] induction score from the answer row's attention [..., H, seq] and the demo-answer mask [..., seq]."""
    on = (answer_row * answers[..., None, :].to(answer_row.dtype)).sum(-1)
    return on - (answer_row.sum(-1) - on)


def previous_from_probs(probs: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[B, H] weighted mean over rows of each row's attention on the position before it: probs [B, H, R, seq] of
    rows [B, R] with weights [B, R] (0 on padding rows)."""
    prev = (rows - 1).clamp_min(0)[:, None, :, None].expand(-1, probs.shape[1], -1, 1)
    return (probs.gather(-1, prev)[..., 0] * weights[:, None, :].to(probs.dtype)).sum(-1)


def _text_rows(layouts) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [B, R], weights [B, R]): each layout's previous-token rows as `_padded_rows` pads them; a prompt with
    none gets a placeholder row of weight 0."""
    found = [previous_token_rows(lay) for lay in layouts]
    pos, weights = _padded_rows([r or [lay.answer_position] for r, lay in zip(found, layouts)])
    return pos, weights * torch.tensor([[float(bool(r))] for r in found])


def _scores_of_batch(loaded: Loaded, batch: PreparedBatch, hidden: bool = False) -> tuple[torch.Tensor, ...]:
    """([B, layer, head] induction, [B, layer, head] previous-token) of one batch in one traced forward pass; with
    `hidden`, also the sink ratio [B, layer, seq] of the hidden states entering each (softmax-attention) layer."""
    answer = torch.tensor([[lay.answer_position] for lay in batch.layouts])
    answers = torch.stack([demo_answer_mask(lay) for lay in batch.layouts])  # [B, seq]
    rows, weights = _text_rows(batch.layouts)

    def per_layer(x):
        q, k, m, s = x["query"], x["key"], x["attention_mask"], x["scaling"]
        row = rows_attention(q, k, m, s, answer.to(q.device))[:, :, 0]  # [B, H, seq]
        total = 0
        for i in range(0, rows.shape[1], CHUNK):
            r = rows[:, i:i + CHUNK].to(q.device)
            total = total + previous_from_probs(rows_attention(q, k, m, s, r), r, weights[:, i:i + CHUNK])
        scores = induction_from_rows(row, answers.to(row.device)), total
        return scores + (sink_ratio(x["hidden"]),) if hidden else scores

    saved = trace_layers(loaded, batch.inputs, per_layer, hidden=hidden)
    layers = loaded.adapter.attention_layers(loaded.model)
    return tuple(_all_layers(loaded, layers, [t[i] for t in saved], 1) for i in range(3 if hidden else 2))


def top_heads_of(scores: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """The `k` (layer, head) with the highest values of a [layer, head] map, highest first (NaN last)."""
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= scores.numel():
        raise ValueError(f"top {k!r}: give a whole number of heads from 1 to {scores.numel()}")
    order = torch.nan_to_num(scores, nan=-float("inf")).flatten().argsort(descending=True, stable=True)[:k]
    return [(int(i) // scores.shape[1], int(i) % scores.shape[1]) for i in order]


def head_scores(loaded: Loaded, episodes: Episode | list[Episode] | PreparedBatch, batch_size: int = 1,
                progress: bool = True, sinks: float | None = None) -> HeadScores | tuple[HeadScores, Sinks]:
    """Induction and previous-token scores of every head on each episode (see the module docstring); `episodes`
    as `capture_attention` takes them, run `batch_size` at a time. `sinks`: a threshold τ: returns (scores,
    `find_sinks(…, τ)` of the same episodes) from the same passes (a hybrid decoder, whose linear-attention layers
    the scores' trace does not enter, takes a pass of its own for the sinks)."""
    if sinks is not None:
        _check_tau(sinks)
    induction, previous, ratios, names = [], [], [], []
    batches, all_episodes = _batches(loaded, episodes, batch_size, "head_scores")
    layers = loaded.adapter.attention_layers(loaded.model)
    together = sinks is not None and len(layers) == loaded.adapter.n_layers(loaded.model)
    bar = tqdm(total=len(all_episodes), desc="head scores", disable=not progress or len(all_episodes) < 2)
    for batch, eps in batches:
        found = _scores_of_batch(loaded, batch, hidden=together)
        induction.append(found[0])
        previous.append(found[1])
        if together:
            _sink_rows(found[2], batch, ratios, names)
        bar.update(len(eps))
    bar.close()
    meta = {"model": loaded.name or type(loaded.model).__name__, "family": loaded.adapter.family,
            "tasks": [getattr(e, "task", None) for e in all_episodes],
            "shots": [getattr(e, "shots", None) for e in all_episodes],
            "layers_measured": layers}
    scores = HeadScores(torch.cat(induction), torch.cat(previous), meta)
    if sinks is None:
        return scores
    if not together:
        return scores, find_sinks(loaded, episodes, sinks, batch_size)
    return scores, _sinks(loaded, ratios, names, sinks)


def _check_tau(tau) -> None:
    if not (isinstance(tau, (int, float)) and not isinstance(tau, bool) and tau > 0):
        raise ValueError(f"tau={tau!r}: give a threshold > 0 on max|h|/RMS(h) (Kang et al. use 20)")


def _sink_rows(ratio: torch.Tensor, batch: PreparedBatch, ratios: list, names: list) -> None:
    """A batch's sink ratios [B, layer, seq] (NaN on padding) and each row's segment names, appended."""
    for b, lay in enumerate(batch.layouts):
        r = ratio[b].clone()
        r[:, lay.role == ROLE["pad"]] = float("nan")
        seg_names, seg = lay.segment_ids()
        ratios.append(r)
        names.append([seg_names[i] if i >= 0 else "pad" for i in seg.tolist()])


def _sinks(loaded: Loaded, ratios: list, names: list, tau: float) -> Sinks:
    """`Sinks` from the episodes' ratios [layer, seq], padded to the widest prompt."""
    width = max(r.shape[-1] for r in ratios)
    ratio = torch.full((len(ratios), ratios[0].shape[0], width), float("nan"))
    for e, r in enumerate(ratios):
        ratio[e, :, : r.shape[-1]] = r
    names = [ns + ["pad"] * (width - len(ns)) for ns in names]
    return Sinks(ratio, float(tau), names, {"model": loaded.name or type(loaded.model).__name__,
                                            "family": loaded.adapter.family})


def find_sinks(loaded: Loaded, episodes: Episode | list[Episode] | PreparedBatch, tau: float = TAU,
               batch_size: int = 1) -> Sinks:
    """Sink tokens (max_d |h_d| / RMS(h) ≥ `tau` in the hidden state entering each layer) of each episode's prompt,
    one traced forward pass per batch. Padded batches: the ratio is NaN on padding."""
    _check_tau(tau)
    decoder, n = loaded.decoder_envoy(), loaded.adapter.n_layers(loaded.model)
    ratios, names = [], []
    for batch, _ in _batches(loaded, episodes, batch_size, "find_sinks")[0]:
        saved = []
        with torch.no_grad(), loaded.envoy.trace(**batch.inputs):
            for layer in range(n):
                saved.append(sink_ratio(_layer_input(decoder.layers[layer])).save())  # [B, seq]
        _sink_rows(torch.stack([t.cpu() for t in saved], 1), batch, ratios, names)  # [B, layer, seq]
    return _sinks(loaded, ratios, names, tau)


__all__ = ["HeadScores", "SCORES", "Sinks", "TAU", "find_sinks", "head_scores", "induction_from_rows",
           "previous_from_probs", "sink_ratio", "top_heads_of"]
