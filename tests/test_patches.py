"""Patch grids: each image token's cell in its image, checked against the model itself (a change to one cell of
the image moves that cell's token most), and attention rows folded onto the grids."""

import numpy as np
import pytest
import torch
from PIL import Image

from micl_probe import Demo, Episode, Query
from micl_probe.core import QUERY
from micl_probe.core.patches import patch_grids
from micl_probe.testing import noise_image, tiny_loaded

# every family whose image tokens are patches; not idefics2 (latents) or internvl (tiles without a per-token order),
# which patch_grids refuses in one line
MAPPED = ["llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm", "qwen3_vl",
          "qwen3_vl_moe", "glm4v", "gemma3", "mistral3"]


def _decoder_inputs(loaded, prepared) -> torch.Tensor:
    """[seq, d]: the embeddings the decoder receives (image features scattered into the image tokens)."""
    seen = {}

    def grab(module, args, kwargs):
        seen["h"] = (args[0] if args else kwargs["hidden_states"])[0].detach().clone()

    handle = loaded.adapter.layers(loaded.model)[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            loaded.model(**prepared.inputs)
    finally:
        handle.remove()
    return seen["h"]


def _cell_box(tile, r, c, size):
    """Pixel box (x0, y0, x1, y1) of cell (r, c) of `tile` in an image of `size`."""
    (w, h), (x0, y0, x1, y1) = size, tile.box
    rows, cols = tile.positions.shape
    fx = lambda a: round((x0 + (x1 - x0) * a) * w)  # noqa: E731
    fy = lambda a: round((y0 + (y1 - y0) * a) * h)  # noqa: E731
    return fx(c / cols), fy(r / rows), fx((c + 1) / cols), fy((r + 1) / rows)


def _cells_overlapping(grid, box):
    """The positions of every cell (of any tile) that shares some area with the pixel box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    out = set()
    for tile in grid.tiles:
        rows, cols = tile.positions.shape
        for r in range(rows):
            for c in range(cols):
                bx0, by0, bx1, by1 = _cell_box(tile, r, c, grid.size)
                if min(x1, bx1) > max(x0, bx0) and min(y1, by1) > max(y0, by0):
                    out.add(int(tile.positions[r, c]))
    return out


@pytest.mark.parametrize("family", MAPPED)
@pytest.mark.parametrize("size", [(48, 48), (56, 40)])
def test_a_changed_cell_moves_its_own_token_most(family, size):
    loaded = tiny_loaded(family)
    base = noise_image(size[1], size[0], seed=3)
    episode = lambda im: Episode((Demo((noise_image(32, 32, 1),), "What?", "dax"),), Query((im,), "What?"))  # noqa: E731
    prepared = loaded.prepare(episode(base))
    grids = patch_grids(loaded, prepared)
    assert [g.owner for g in grids] == [0, QUERY] and [g.size for g in grids] == [(32, 32), size]
    query = grids[1]
    assert sorted([int(p) for t in query.tiles for p in t.positions.flatten()] + list(query.unmapped)) == \
        prepared.layout.positions(role="image", image=1).tolist()  # every image token exactly once
    before = _decoder_inputs(loaded, prepared)
    tile = query.tiles[0]
    rows, cols = tile.positions.shape
    for r, c in {(0, cols - 1), (rows - 1, 0), (rows // 2, cols // 2)}:
        x0, y0, x1, y1 = _cell_box(tile, r, c, size)
        px = np.asarray(base).copy()
        px[y0:y1, x0:x1] = 255 - px[y0:y1, x0:x1]  # invert the cell
        changed = loaded.prepare(episode(Image.fromarray(px)))
        delta = (_decoder_inputs(loaded, changed) - before).norm(dim=-1)
        image_positions = prepared.layout.positions(role="image", image=1)
        moved = int(image_positions[delta[image_positions].argmax()])
        assert moved in _cells_overlapping(query, (x0, y0, x1, y1)), (family, r, c)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3"])
def test_row_attention_equals_hf_eager_and_folds_onto_the_grid(family):
    from micl_probe.measure import fold, patch_maps, row_attention

    loaded = tiny_loaded(family)
    ep = Episode((Demo((noise_image(40, 24, 1),), "What?", "dax"),), Query((noise_image(48, 48, 2),), "What?"))
    got = row_attention(loaded, ep)  # [layer, head, seq]
    p = loaded.prepare(ep)
    model = loaded.model
    prev = model.config._attn_implementation
    model.set_attn_implementation("eager")
    with torch.no_grad():
        ref = torch.stack([a[0][:, p.layout.answer_position] for a in
                           model(**p.inputs, output_attentions=True).attentions])
    model.set_attn_implementation(prev)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    # planted: all of the row's attention on one token lands in that token's cell and nowhere else
    grids = patch_grids(loaded, p)
    tile = grids[1].tiles[0]
    planted = torch.zeros_like(got)
    planted[:, :, int(tile.positions[-1, 0])] = 1.0
    heat = fold(grids, planted)
    assert heat[1][0][:, :, -1, 0].eq(1).all() and sum(float(h.sum()) for hs in heat for h in hs) == got.shape[0] * \
        got.shape[1]
    maps = patch_maps(loaded, ep)
    assert [m.grid.owner for m in maps] == [0, QUERY] and maps[1].image.size == (48, 48)
    torch.testing.assert_close(maps[1].heat[0], got[:, :, tile.positions])


def test_patch_map_figure_draws_every_image_and_the_chosen_heads(tmp_path):
    from micl_probe.measure import patch_maps, top_heads
    from micl_probe.viz import plots

    loaded = tiny_loaded("idefics3")
    ep = Episode((Demo((noise_image(40, 24, 1),), "What?", "dax"),), Query((noise_image(48, 48, 2),), "What?"))
    maps = patch_maps(loaded, ep)
    heads = top_heads(maps, k=2)
    assert len(heads) == 2 and all(0 <= la < 2 and 0 <= h < 4 for la, h in heads)
    fig = plots.patch_maps(maps, heads)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 3 * 2 and titles[0].startswith("demo 0:") and titles[1].startswith("query:")
    assert all(p.stat().st_size > 1000 for p in plots.save(fig, tmp_path / "patch"))


def test_explore_gives_the_token_view_and_the_patch_maps():
    import micl_probe

    loaded = tiny_loaded("qwen2_vl")
    ep = Episode((Demo((noise_image(32, 32, 1),), "What?", "dax"),), Query((noise_image(48, 48, 2),), "What?"))
    found = micl_probe.explore(loaded, ep, show=False)
    layers, heads, seq = found.attention.shape
    assert len(found.tokens) == seq and found.tokens.count("[demo0 img]") == 16 and "[query img]" in found.tokens
    assert found.values().shape == (seq, 1 + layers * heads) and found.labels()[:2] == ["mean", "L0H0"]
    torch.testing.assert_close(found.values()[:, 0], found.attention.mean((0, 1)))
    html = str(found.html())
    assert "ColoredTokensMulti" in html and '"L1H3"' in html
    assert len([ax for ax in found.figure().axes if ax.get_title()]) == 2 * (1 + len(found.heads))


def test_explore_follows_one_head_shows_once_and_works_without_patch_maps(monkeypatch):
    """The patch figure for a chosen head draws that head; show() displays each figure once (closed after, so the
    inline backend does not draw it again); the repr is one line; Idefics2 (resampler latents) still gets the
    token view, with the reason there are no patch maps."""
    import matplotlib.pyplot as plt

    import micl_probe

    loaded = tiny_loaded("qwen2_vl")
    ep = Episode((Demo((noise_image(32, 32, 1),), "What?", "dax"),), Query((noise_image(48, 48, 2),), "What?"))
    found = micl_probe.explore(loaded, ep, show=False)
    rows = [y for ax in found.figure("L1H2").axes if (y := ax.get_ylabel()) and "per token" not in y]
    assert rows == ["mean over layers and heads", "layer 1 head 2"]
    html = str(found.html((1, 2)))
    assert "ColoredTokens" in html and "ColoredTokensMulti" not in html
    assert len(repr(found)) < 200 and "\n" not in repr(found)
    shown, updated = [], []

    class Handle:
        def update(self, obj):
            updated.append(obj)

    monkeypatch.setattr("IPython.display.display", lambda obj, **kw: shown.append(obj) or Handle())
    plt.close("all")
    selector = found.show("L1H2")
    assert len(shown) == 3 and not plt.get_fignums()  # the selector, the token view, the figure (closed after)
    assert shown[0] is selector and "layer 1 head 2" in [ax.get_ylabel() for ax in shown[2].axes]
    selector.value = "L0H1"  # choosing a head redraws both views for it
    assert len(updated) == 2 and "layer 0 head 1" in [ax.get_ylabel() for ax in updated[1].axes]
    latents = micl_probe.explore(tiny_loaded("idefics2"), ep, show=False)
    assert latents.maps == [] and latents.figure() is None and "resampler" in latents.no_maps
    assert len(latents.tokens) == latents.attention.shape[-1]
