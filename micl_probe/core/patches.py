"""Where each image token sits in its image: the patch grid of every image of a prepared prompt.

    grids = patch_grids(loaded, prepared)       # one ImageGrid per image, prompt order
    grids[0].tiles[0].positions                 # [rows, cols] prompt positions of the tile's image tokens
    grids[0].tiles[0].box                       # (x0, y0, x1, y1): the part of the original image it covers

How the image tokens map onto the image is a family fact (`Adapter.patch_layout`):
  "square"   one square grid, row-major, over the centre square the processor crops (LLaVA-1.5, the organisms)
  "merged"   one grid of merged patches, row-major, over the whole resized image (Qwen2-VL, Qwen2.5-VL: image_grid_thw
             in patches, spatial_merge_size x spatial_merge_size patches per token)
  "tiles"    row/col tiles, each a square grid, then a downscaled global image (Idefics3), read from the
             <row_r_col_c> / <global-img> markup that precedes each tile's tokens
  "anyres"   LLaVA-NeXT / LLaVA-OneVision: a base grid over the whole (squashed) image, then the high-resolution
             grid over the whole image after the tiles are unpadded (and, for OneVision, downscaled), with a newline
             token closing each row. The order is read from the model's own `pack_image_features`, run on marker
             features (base 0, tile 1, newline 2), so unpadding and downscaling are the model's.
  "breaks"   rows of merged patches over the whole resized image, each row closed by a break token (Mistral 3 /
             Pixtral: [IMG_BREAK], the last [IMG_END], both image markup): as many rows as breaks
  "pooled"   one square grid of average-pooled patches over the whole resized image (Gemma 3)
  "none"     the image tokens are not patches (Idefics2's perceiver latents): there is no patch map
Tokens that hold no patch (the row newlines) are listed in `ImageGrid.unmapped`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from .layout import ROLE

FULL = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class Tile:
    positions: torch.Tensor  # [rows, cols] long: prompt positions of the tile's image tokens, row-major
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) of the original image, as fractions of width/height
    name: str  # "image", "tile r,c" or "global"


@dataclass(frozen=True)
class ImageGrid:
    image: int  # the image's index in prompt order
    owner: int  # demo index, or QUERY
    size: tuple[int, int]  # the original image's (width, height)
    tiles: tuple[Tile, ...]
    unmapped: tuple[int, ...] = ()  # image-token positions that hold no patch (row newlines)


def patch_grids(loaded, prepared) -> list[ImageGrid]:
    """The patch grid of every image in `prepared` (a batch of one: `loaded.prepare(episode)`)."""
    adapter, model = loaded.adapter, loaded.model
    kind = adapter.patch_layout
    if kind == "none":
        raise ValueError(f"the {adapter.family!r} family's image tokens hold no patch position (e.g. resampler "
                         "latents), so there are no patch maps; segment attention (capture_attention) still applies")
    layout, ids = prepared.layout, prepared.inputs["input_ids"][0].cpu()
    images = prepared.episode.images
    grids = []
    for i in range(layout.n_images):
        positions = layout.positions(role="image", image=i)
        owner = int(layout.owner[positions[0]])
        size = images[i].size
        if kind == "square":
            tiles = (Tile(_square(positions), _centre_square(*size), "image"),)
        elif kind == "breaks":
            rows = layout.positions(role="image_markup", image=i).numel()
            tiles = (Tile(positions.reshape(rows, -1), FULL, "image"),)
        elif kind == "pooled":
            tiles = (Tile(_square(positions), FULL, "image"),)
        elif kind == "merged":
            merge = _merge_size(model)
            _, h, w = (int(x) for x in prepared.inputs["image_grid_thw"][i])
            tiles = (Tile(positions.reshape(h // merge, w // merge), FULL, "image"),)
        elif kind == "tiles":
            tiles = _tiles(layout, ids, i, loaded.processor.tokenizer.convert_ids_to_tokens)
        elif kind == "anyres":
            tiles, newlines = _anyres(model, adapter, positions, prepared.inputs["image_sizes"][i])
            grids.append(ImageGrid(i, owner, size, tiles, newlines))
            continue
        else:
            raise ValueError(f"unknown patch layout {kind!r} in the {adapter.family!r} adapter")
        grids.append(ImageGrid(i, owner, size, tiles))
    return grids


def _square(positions: torch.Tensor) -> torch.Tensor:
    side = math.isqrt(positions.numel())
    if side * side != positions.numel():
        raise ValueError(f"{positions.numel()} image tokens do not form a square grid")
    return positions.reshape(side, side)


def _centre_square(width: int, height: int) -> tuple[float, float, float, float]:
    """The centre square that a shortest-edge resize + centre crop keeps, as fractions of the image."""
    side = min(width, height)
    x0, y0 = (width - side) / 2 / width, (height - side) / 2 / height
    return (x0, y0, 1 - x0, 1 - y0)


def _merge_size(model) -> int:
    vision = getattr(getattr(model, "config", None), "vision_config", None)
    return getattr(vision, "spatial_merge_size", 2) if vision is not None else 2


_TILE = re.compile(r"<row_(\d+)_col_(\d+)>")


def _tiles(layout, ids: torch.Tensor, image: int, tokens) -> tuple[Tile, ...]:
    """Idefics3: the image tokens after each <row_r_col_c> / <global-img> markup token form one tile."""
    runs: dict[str, list[int]] = {}
    current = None
    for pos in (layout.image_index == image).nonzero().flatten().tolist():
        if layout.role[pos] == ROLE["image"]:
            if current is None:
                raise ValueError(f"image {image}: image tokens before any tile markup")
            runs.setdefault(current, []).append(pos)
            continue
        token = tokens(int(ids[pos]))
        if (m := _TILE.fullmatch(token)) is not None:
            current = f"tile {m.group(1)},{m.group(2)}"
        elif token == "<global-img>":
            current = "global"
    cells = [tuple(int(x) for x in name[5:].split(",")) for name in runs if name != "global"]
    rows, cols = (max(r for r, _ in cells), max(c for _, c in cells)) if cells else (1, 1)
    out = []
    for name, pos in runs.items():
        if name == "global":
            box = FULL
        else:
            r, c = (int(x) for x in name[5:].split(","))
            box = ((c - 1) / cols, (r - 1) / rows, c / cols, r / rows)
        out.append(Tile(_square(torch.tensor(pos)), box, name))
    return tuple(out)


def _anyres(model, adapter, positions: torch.Tensor, image_size) -> tuple[tuple[Tile, ...], tuple[int, ...]]:
    """LLaVA-NeXT / OneVision: run the model's own packing on marker features to learn each token's place."""
    import importlib

    cfg = model.config
    module = importlib.import_module(type(model).__module__)
    n_patches = module.image_size_to_num_patches(image_size=image_size.tolist(),
                                                 grid_pinpoints=cfg.image_grid_pinpoints,
                                                 patch_size=cfg.vision_config.image_size)
    side = cfg.vision_config.image_size // cfg.vision_config.patch_size
    kwargs = {name: getattr(cfg, name) for name in adapter.pack_config}  # family facts, from the adapter
    counts = []
    # tiled (one image in the prompt), or the base image alone (OneVision's multi-image prompts: no tiles)
    for n in dict.fromkeys([n_patches, 1]):
        marker = torch.ones(n, side * side, 1)
        marker[0] = 0.0  # the base image; 1: high-resolution tiles
        with torch.no_grad():
            packed = model.model.pack_image_features([marker], image_size[None], image_newline=torch.tensor([2.0]),
                                                     **kwargs)[0]
        codes = torch.cat(packed if isinstance(packed, (list, tuple)) else [packed]).flatten().round().long()
        counts.append(codes.numel())
        if codes.numel() == positions.numel():
            break
    else:
        raise ValueError(f"the model packs {' or '.join(map(str, counts))} tokens for this image; the prompt has "
                         f"{positions.numel()}")
    base = positions[codes == 0]
    tiles = [Tile(_square(base), FULL, "base")]
    rows, row = [], []
    for pos, code in zip(positions.tolist(), codes.tolist()):
        if code == 1:
            row.append(pos)
        elif code == 2 and row:
            rows.append(row)
            row = []
    if rows:
        if len({len(r) for r in rows}) != 1:
            raise ValueError("the high-resolution rows differ in length")
        tiles.append(Tile(torch.tensor(rows), FULL, "high-res"))
    return tuple(tiles), tuple(int(p) for p, c in zip(positions.tolist(), codes.tolist()) if c == 2)
