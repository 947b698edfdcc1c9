"""Attention maps on the images: the answer row's attention over each image's patches.

    maps = patch_maps(loaded, episode)              # one PatchMap per image (demos', then the query's)
    maps[0].heat[0]                                 # [layer, head, rows, cols] of the first tile of demo 0's image
    plots.patch_maps(maps)                          # drawn over the images themselves

The patch grids are family facts (`micl_probe.core.patches`); the attention row is `row_attention`'s. The map of a
tile holds the attention on each of its image tokens (not normalised per image: tiles and images compare).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core import Episode, Loaded, PreparedBatch
from ..core.patches import ImageGrid, patch_grids
from .attention import row_attention


@dataclass
class PatchMap:
    """One image of an episode with the answer row's attention on each of its tokens, laid out on the image's patch
    grid (tiles of a split image in place): made by `patch_maps`, drawn by `viz.plots.patch_maps`."""

    grid: ImageGrid  # where each image token sits
    image: object  # the PIL image
    heat: list[torch.Tensor]  # per tile of grid.tiles: [layer, head, rows, cols] attention on its tokens


def fold(grids: list[ImageGrid], attention: torch.Tensor) -> list[list[torch.Tensor]]:
    """attention[layer, head, seq] of one row folded onto every tile: per image, per tile, [layer, head, rows,
    cols]."""
    return [[attention[:, :, tile.positions] for tile in grid.tiles] for grid in grids]


def patch_maps(loaded: Loaded, episode: Episode, rows="answer") -> list[PatchMap]:
    """The attention of `rows` (default: the answer position) over the patches of every image of `episode`."""
    return maps_and_attention(loaded, episode, rows)[0]


def maps_and_attention(loaded: Loaded, episode: Episode | PreparedBatch, rows="answer"
                       ) -> tuple[list[PatchMap], torch.Tensor]:
    """(patch maps, the row's attention [layer, head, seq] they fold) of one episode (or a batch of one already
    prepared): one preparation, one forward pass."""
    batch = episode if isinstance(episode, PreparedBatch) else loaded.prepare_batch([episode])
    attention = row_attention(loaded, batch, rows)
    grids = patch_grids(loaded, batch[0])
    images = batch.episodes[0].images
    return [PatchMap(g, images[g.image], h) for g, h in zip(grids, fold(grids, attention))], attention


def top_heads(maps: list[PatchMap], k: int = 3) -> list[tuple[int, int]]:
    """The `k` (layer, head) pairs with the most attention on the demos' images (all their tiles)."""
    demo = [h.sum((-2, -1)) for m in maps if m.grid.owner >= 0 for h in m.heat]  # [layer, head] each
    if not demo:
        return []
    total = torch.stack(demo).sum(0).nan_to_num(-1.0)  # a hybrid decoder's unmeasured layers never rank
    order = total.flatten().argsort(descending=True)[:k]
    return [(int(i) // total.shape[1], int(i) % total.shape[1]) for i in order]
