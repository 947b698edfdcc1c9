"""Evidence attention: the tasks' evidence boxes hold what the rule reads, the regions follow the patch grid, and the
measured attention equals HF eager weights summed by hand over those regions."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from micl_probe import Demo, Episode, Query, load
from micl_probe.core.patches import patch_grids
from micl_probe.measure import evidence_attention
from micl_probe.measure.evidence import token_regions
from micl_probe.tasks import evidence_boxes, sample_episodes
from micl_probe.tasks.synthetic import COLOURS, EVIDENCE_KEY
from micl_probe.testing import tiny_loaded


def _pixels(image, box):
    x0, y0, x1, y1 = box
    return np.asarray(image.convert("RGB"))[y0:y1, x0:x1].reshape(-1, 3)


def _near(pixels, colour, tol=40):
    return bool((np.abs(pixels.astype(int) - np.array(colour)).max(-1) <= tol).any())


def test_evidence_boxes_hold_what_the_rule_reads():
    for e in sample_episodes("clock_math", 3, 10, seed=3):
        hand, other = ("red", "blue") if e.meta["rule"] == "red" else ("blue", "red")
        for im in [d.images[0] for d in e.demos] + [e.query.images[0]]:
            boxes = evidence_boxes(im)
            assert len(boxes["correct"]) == len(boxes["wrong"]) == 1
            assert _near(_pixels(im, boxes["correct"][0]), COLOURS[hand])
            assert _near(_pixels(im, boxes["wrong"][0]), COLOURS[other])
    for e in sample_episodes("outlier", 3, 10, seed=4):
        for d in e.demos:  # the correct box holds the colour the answer names
            assert _near(_pixels(d.images[0], evidence_boxes(d.images[0])["correct"][0]), COLOURS[d.answer])
    for task in ("palindrome", "novel_binding", "shape_count", "operator_induction", "number_grid"):
        e = sample_episodes(task, 2, 1, seed=5)[0]
        boxes = evidence_boxes(e.query.images[0])
        assert boxes["correct"] and all(_pixels(e.query.images[0], b).max() > 0 for b in boxes["correct"])
    assert evidence_boxes(Image.new("RGB", (8, 8))) is None


def test_token_regions_follow_the_patch_grid():
    loaded = tiny_loaded("qwen2_vl")  # merged patches over the whole resized image
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (56, 84, 3), dtype=np.uint8))
    im.info[EVIDENCE_KEY] = {"correct": [(0, 0, 40, 56)], "wrong": [(40, 0, 84, 28)]}
    episode = Episode((), Query((im,), "What is it?", "x"))
    grid = patch_grids(loaded, loaded.prepare(episode))[0]
    regions = token_regions(grid, evidence_boxes(im))
    (tile,) = grid.tiles
    rows, cols = tile.positions.shape
    for r in range(rows):
        for c in range(cols):
            x, y = (c + 0.5) / cols * 84, (r + 0.5) / rows * 56  # the token's patch centre in the original image
            want = 0 if x < 40 else 1 if y < 28 else 2  # the left box / the top right box / the rest
            assert regions[int(tile.positions[r, c])] == want, (r, c, rows, cols)


def test_evidence_attention_equals_eager_weights_summed_by_hand():
    loaded = load("organism:true-micl")  # one 8x8 patch per 8x8 cell: token j of an image is cell j
    episodes = sample_episodes("clock_math", 3, 2, seed=1)
    ev = evidence_attention(loaded, episodes, progress=False)
    model = loaded.model
    for e, episode in enumerate(episodes):
        prepared = loaded.prepare(episode)
        layout = prepared.layout
        prev = model.config._attn_implementation
        model.set_attn_implementation("eager")
        try:
            with torch.no_grad():
                att = model(**prepared.inputs, output_attentions=True).attentions
        finally:
            model.set_attn_implementation(prev)
        for layer, a in enumerate(att):  # a [1, H, seq, seq]
            per_demo, per_query = [], None
            for i, im in enumerate([d.images[0] for d in episode.demos] + [episode.query.images[0]]):
                tokens = layout.positions(image=i, role="image")
                assert tokens.numel() == 16
                cells = {k: [(b[1] // 8) * 4 + b[0] // 8 for b in evidence_boxes(im)[k]] for k in ("correct", "wrong")}
                other = [c for c in range(16) if c not in cells["correct"] + cells["wrong"]]
                rows = layout.answer_position if i == len(episode.demos) else layout.positions(owner=i, role="answer")
                row = a[0][:, rows] if i == len(episode.demos) else a[0][:, rows].mean(1)  # [H, seq]
                got = torch.stack([row[:, tokens[c]].sum(-1) for c in (cells["correct"], cells["wrong"], other)], -1)
                if i == len(episode.demos):
                    per_query = got
                else:
                    per_demo.append(got)
            torch.testing.assert_close(ev.mass[e, layer, :, 0], torch.stack(per_demo).mean(0), atol=1e-5, rtol=0)
            torch.testing.assert_close(ev.mass[e, layer, :, 1], per_query, atol=1e-5, rtol=0)
        torch.testing.assert_close(ev.chance[e, 0], torch.tensor([1 / 16, 1 / 16, 14 / 16]))
    share = ev.share()
    torch.testing.assert_close(share.sum(-1), torch.ones(share.shape[:-1]), atol=1e-5, rtol=0)
    d = ev.as_dict()
    assert set(d["demo_labels"]["share"]) == {"correct", "wrong", "other"} and d["n"] == 2
    with pytest.raises(TypeError, match="an Episode"):
        evidence_attention(loaded, [])
    no_box = Episode((Demo((Image.new("RGB", (32, 32)),), "q?", "a"),), Query((Image.new("RGB", (32, 32)),), "q?"))
    assert evidence_attention(loaded, no_box, progress=False).mass.isnan().all()


@pytest.mark.parametrize("name", ["organism:true-micl", "qwen2_vl"])
def test_evidence_attention_in_batches_equals_one_at_a_time(name):
    """Prompts of different lengths (1, 3 and 2 demos) and one without evidence, right-padded into one pass."""
    loaded = load(name) if ":" in name else tiny_loaded(name)
    episodes = [sample_episodes("clock_math", k, 1, seed=k)[0] for k in (1, 3, 2)]
    blank = Episode((Demo((Image.new("RGB", (32, 32)),), "q?", "a"),), Query((Image.new("RGB", (32, 32)),), "q?"))
    episodes.insert(2, blank)
    one = evidence_attention(loaded, episodes, progress=False)
    together = evidence_attention(loaded, episodes, progress=False, batch_size=3)
    assert not one.mass[0].isnan().all() and one.mass[2].isnan().all()
    torch.testing.assert_close(together.mass, one.mass, atol=1e-5, rtol=0, equal_nan=True)
    torch.testing.assert_close(together.chance, one.chance, equal_nan=True)
    with pytest.raises(ValueError, match="batch_size=0"):
        evidence_attention(loaded, episodes, batch_size=0)


def test_a_folder_item_brings_its_evidence(tmp_path):
    """truemicl: items with a mask file and with boxes; the regions follow each; a malformed one is one line."""
    from micl_probe.tasks import FolderError, folder_episodes

    folder = tmp_path / "truemicl" / "t"
    (folder / "img").mkdir(parents=True)
    Image.new("RGB", (32, 32), (200, 10, 10)).save(folder / "img" / "a.png")
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[:, :16] = 1  # left half correct
    mask[:8, 16:] = 2  # top strip of the right half: distractor
    Image.fromarray(mask).save(folder / "img" / "a_mask.png")
    boxes = {"correct": [[0, 0, 8, 8]], "wrong": [[24, 24, 32, 32]]}
    item = {"image": "img/a.png", "question": "q?", "answer": "a"}
    (folder / "support.json").write_text(json.dumps([{**item, "evidence": "img/a_mask.png"}] * 2))
    (folder / "query.json").write_text(json.dumps([{**item, "evidence": boxes}]))
    (episode,) = folder_episodes("truemicl:" + str(folder), 1, 1)
    loaded = load("organism:true-micl")  # a 4x4 grid of 8x8 patches: token (r, c) centred at (8c + 4, 8r + 4)
    grids = patch_grids(loaded, loaded.prepare(episode))
    demo = token_regions(grids[0], evidence_boxes(episode.demos[0].images[0]))
    query = token_regions(grids[1], evidence_boxes(episode.query.images[0]))
    tokens = [grids[0].tiles[0].positions.flatten().tolist(), grids[1].tiles[0].positions.flatten().tolist()]
    assert [demo[p] for p in tokens[0]] == [0, 0, 1, 1] + [0, 0, 2, 2] * 3
    assert [query[p] for p in tokens[1]] == [0] + [2] * 14 + [1]
    (folder / "query.json").write_text(json.dumps([{**item, "evidence": {"correct": [[0, 0, 8]]}}]))
    with pytest.raises(FolderError, match="'evidence' must be a mask path"):
        folder_episodes("truemicl:" + str(folder), 1, 1)
