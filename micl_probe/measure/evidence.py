"""Evidence attention (Wang & Li, ACL 2026): do the demo labels attend to where each demo's answer is in its image?

    ev = evidence_attention(loaded, episodes)       # EvidenceAttention
    ev.mass      # [episode, layer, head, source, region]: source "demo_labels" | "answer_row",
                 #                                         region "correct" | "wrong" | "other"
    ev.share()   # [episode, layer, source, region]: each region's share of the source's attention on those images
    ev.chance    # [episode, source, region]: the regions' share of those images' tokens (attention spread evenly)

Sources: "demo_labels" = each demo's answer tokens (its label) attending to that demo's own image (averaged over the
label tokens, then over the demos whose image has evidence); "answer_row" = the answer row attending to the query
image. Regions: the image tokens whose patch centre lies in a *correct* evidence box (where the answer is read from
under the episode's rule: the rule's clock hand, the outlier the rule names, d1 of the palindrome), in a *wrong* one
(a distractor that would give another answer: the other hand, the other outlier, the other digits), or elsewhere in
the image (*other*). Evidence boxes ride on the images (`tasks.evidence_boxes`): every procedural task draws them;
a folder task's items may bring them in a mask file (`tasks.folders`). Patch positions come from the family's
patch grid (`core.patches`); families whose image tokens are not patches (Idefics2's latents) have no regions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..core import QUERY, Episode, Loaded
from ..core.patches import patch_grids
from ..tasks import evidence_boxes
from .attention import _all_layers, rows_attention, trace_layers

SOURCES = ("demo_labels", "answer_row")
REGIONS = ("correct", "wrong", "other")


@dataclass
class EvidenceAttention:
    """Attention of the demo labels and of the answer row on the evidence regions of their images (see the module
    docstring). NaN where an episode has no image with evidence for a source (or a layer has no softmax attention)."""

    dims = ("episode", "layer", "head", "source", "region")
    mass: torch.Tensor  # [episode, layer, head, source, region]: fractions of the source rows' attention
    chance: torch.Tensor  # [episode, source, region]: fractions of the images' tokens
    meta: dict = field(default_factory=dict)

    def share(self) -> torch.Tensor:
        """[episode, layer, source, region]: each region's share of the source's attention on those images (mean
        over heads of the mass, renormalised over the three regions)."""
        m = self.mass.mean(2)
        return m / m.sum(-1, keepdim=True)

    def as_dict(self) -> dict:
        """{source: {"share": {region: [per layer, mean over episodes]}, "chance": {region: mean}}, "n": episodes}."""
        share = self.share()
        out = {"n": self.mass.shape[0]}
        for s, source in enumerate(SOURCES):
            out[source] = {"share": {r: share[:, :, s, i].nanmean(0).tolist() for i, r in enumerate(REGIONS)},
                           "chance": {r: float(self.chance[:, s, i].nanmean()) for i, r in enumerate(REGIONS)}}
        return out


def token_regions(grid, boxes: dict) -> dict[int, int]:
    """{prompt position: region index} for the image tokens of one image's patch grid (`core.patches.ImageGrid`),
    by where each token's patch centre falls: in a correct box, a wrong one, or neither (or, for a mask, the
    mask's value there)."""
    width, height = grid.size
    mask = boxes.get("mask")  # a folder item's mask: 1 correct, 2 wrong, 0 the rest (region index = value - 1)
    out = {}
    for tile in grid.tiles:
        rows, cols = tile.positions.shape
        x0, y0, x1, y1 = tile.box
        for r in range(rows):
            for c in range(cols):
                x = (x0 + (x1 - x0) * (c + 0.5) / cols) * width
                y = (y0 + (y1 - y0) * (r + 0.5) / rows) * height
                if mask is not None:
                    value = int(mask[min(int(y), mask.shape[0] - 1), min(int(x), mask.shape[1] - 1)])
                    out[int(tile.positions[r, c])] = {1: 0, 2: 1}.get(value, 2)
                    continue
                inside = [any(a <= x < b and e <= y < f for a, e, b, f in boxes.get(kind, ()))
                          for kind in ("correct", "wrong")]
                out[int(tile.positions[r, c])] = 0 if inside[0] else 1 if inside[1] else 2
    return out


def _plan(loaded: Loaded, episode: Episode):
    """(prepared batch of one, rows [R], [(source, rows' slots, {position: region})] per image with evidence)."""
    prepared = loaded.prepare(episode)
    layout = prepared.layout
    rows, plan = [], []
    for grid in patch_grids(loaded, prepared):
        boxes = evidence_boxes(prepared.episode.images[grid.image])
        if boxes is None:
            continue
        regions = token_regions(grid, boxes)
        if grid.owner == QUERY:
            mine = [layout.answer_position]
        else:
            mine = layout.positions(owner=grid.owner, role="answer").tolist()
        if not mine:
            continue
        plan.append((1 if grid.owner == QUERY else 0, list(range(len(rows), len(rows) + len(mine))), regions))
        rows += mine
    return prepared, rows, plan


def evidence_attention(loaded: Loaded, episodes: Episode | list[Episode], progress: bool = True,
                       batch_size: int = 1) -> EvidenceAttention:
    """Attention of each demo's label tokens on its own image's evidence regions, and of the answer row on the
    query image's, per layer and head (see the module docstring): one traced forward pass per `batch_size`
    episodes (right-padded, so each row keeps the positions it has alone; equal to one at a time)."""
    if isinstance(episodes, Episode):
        episodes = [episodes]
    if not episodes or not all(isinstance(e, Episode) for e in episodes):
        raise TypeError("evidence_attention takes an Episode or a non-empty list of them")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: give a whole number >= 1 of episodes a forward pass")
    adapter = loaded.adapter
    layers = adapter.attention_layers(loaded.model)
    n_layers, n_heads = adapter.n_layers(loaded.model), adapter.n_heads(loaded.model)
    mass = torch.full((len(episodes), n_layers, n_heads, len(SOURCES), len(REGIONS)), float("nan"))
    chance = torch.full((len(episodes), len(SOURCES), len(REGIONS)), float("nan"))
    planned = [(e, *_plan(loaded, episode)) for e, episode in enumerate(episodes)]
    planned = [p for p in planned if p[3]]  # episodes with evidence somewhere
    bar = tqdm(total=len(planned), desc="evidence attention", disable=not progress or len(planned) < 2)
    for start in range(0, len(planned), batch_size):
        chunk = planned[start:start + batch_size]
        for e, probs, plan in _probs(loaded, layers, chunk):
            _reduce_evidence(probs, plan, mass[e], chance[e])
        bar.update(len(chunk))
    bar.close()
    return EvidenceAttention(mass, chance, {"model": loaded.name or type(loaded.model).__name__,
                                            "tasks": [e.task for e in episodes]})


def _probs(loaded: Loaded, layers: list[int], chunk: list) -> list:
    """[(episode index, probs [layer, H, R, seq], plan)] for a chunk of planned episodes, in one traced pass: the
    episodes prepared together, right-padded, so each row's tokens stand where they stand alone (checked: where a
    processor lays a batch out otherwise, each episode runs alone)."""
    if len(chunk) == 1:
        batch = chunk[0][1]
    else:
        batch = loaded.prepare_batch([prepared.episode for _, prepared, _, _ in chunk], padding_side="right")
        ids = batch.inputs["input_ids"].cpu()
        if any(not torch.equal(ids[b, :p.input_ids.shape[-1]], p.input_ids.reshape(-1).cpu())
               for b, (_, p, _, _) in enumerate(chunk)):
            return [found for one in chunk for found in _probs(loaded, layers, [one])]
    width = max(len(rows) for _, _, rows, _ in chunk)
    pos = torch.tensor([rows + [rows[-1]] * (width - len(rows)) for _, _, rows, _ in chunk])  # [B, R], padded
    saved = trace_layers(loaded, batch.inputs, lambda x: rows_attention(
        x["query"], x["key"], x["attention_mask"], x["scaling"], pos.to(x["query"].device)))  # [B, H, R, seq]
    probs = _all_layers(loaded, layers, saved, 1)  # [B, layer, H, R, seq]
    return [(e, probs[b, ..., :prepared.input_ids.shape[-1]], plan)
            for b, (e, prepared, _, plan) in enumerate(chunk)]


def _reduce_evidence(probs: torch.Tensor, plan: list, mass: torch.Tensor, chance: torch.Tensor) -> None:
    """One episode's probs [layer, H, R, seq] into its mass [layer, H, source, region] and chance [source, region]."""
    for s in range(len(SOURCES)):
        parts = [(slots, regions) for source, slots, regions in plan if source == s]
        if not parts:
            continue
        per_image, counts = [], torch.zeros(len(REGIONS))
        for slots, regions in parts:
            onehot = torch.zeros(probs.shape[-1], len(REGIONS))
            for position, region in regions.items():
                onehot[position, region] = 1.0
            per_image.append(probs[:, :, slots].mean(2) @ onehot)  # [layer, H, region]
            counts += onehot.sum(0)
        mass[:, :, s] = torch.stack(per_image).mean(0)
        chance[s] = counts / counts.sum()


__all__ = ["EvidenceAttention", "REGIONS", "SOURCES", "evidence_attention", "token_regions"]
