"""Attention mass: every backend against HF eager output_attentions, reduced independently."""

import pytest
import torch

from micl_probe.core import Loaded, adapter_for, prepare
from micl_probe.measure.attention import AttentionMass, capture_attention, row_positions
from micl_probe.testing import cached_tiny, noise_episode, tiny_loaded

EPISODES = [noise_episode(2, seed=1), noise_episode(1, seed=2), noise_episode(0, seed=3)]


def independent_mass(model, processor, episode, rows):
    """HF eager attentions, summed segment by segment with explicit index lists (no one-hot matmul); [layer, head]
    per segment, NaN in the layers without softmax attention (HF records only the others)."""
    adapter = adapter_for(model)
    p = prepare(episode, processor, adapter, model=model)
    prev = model.config._attn_implementation
    model.set_attn_implementation("eager")
    with torch.no_grad():
        att = model(**p.inputs, output_attentions=True).attentions
    model.set_attn_implementation(prev)
    pos = row_positions(p.layout, rows)
    segs = p.layout.segments()
    kinds = getattr(model.config.get_text_config(), "layer_types", None) or ["full"] * adapter.n_layers(model)
    softmax = [i for i, kind in enumerate(kinds) if kind != "linear_attention"]  # from the config, not the adapter
    assert len(att) == len(softmax)
    out = {}
    for name, idx in segs.items():
        out[name] = torch.full((adapter.n_layers(model), att[0].shape[1]), float("nan"))
        out[name][softmax] = torch.stack([a[0][:, pos][:, :, idx].sum(-1).mean(-1) for a in att])
    return out


@pytest.mark.parametrize("rows", ["answer", "query_text"])
def test_nnsight_equals_hf_eager(family, rows):
    loaded = tiny_loaded(family)
    model, processor = loaded.model, loaded.processor
    am = capture_attention(loaded, EPISODES, rows=rows, progress=False)
    assert model.config._attn_implementation == "sdpa"  # the lean backend leaves the fast path on
    for e, ep in enumerate(EPISODES):
        ref = independent_mass(model, processor, ep, rows)
        for name, mass in ref.items():  # mass [layer, head]
            torch.testing.assert_close(am.mass[e, :, :, am.segments.index(name)], mass, atol=1e-5, rtol=0,
                                       equal_nan=True)
        measured = am.meta["layers_measured"]
        absent = [s for s in am.segments if s not in ref]
        assert all(am.mass[e, measured][..., am.segments.index(s)].abs().max() == 0 for s in absent)
    measured = am.meta["layers_measured"]
    torch.testing.assert_close(am.mass[:, measured].sum(-1), torch.ones(am.mass[:, measured].shape[:3]), atol=1e-5,
                               rtol=0)
    assert am.mass[:, [x for x in range(am.mass.shape[1]) if x not in measured]].isnan().all()


def test_transformer_lens_equals_eager(family):
    loaded = tiny_loaded(family)
    model, adapter = loaded.model, loaded.adapter
    if not adapter.tl_bridge:
        with pytest.raises(ValueError, match="no TransformerBridge.*use backend='nnsight'"):
            capture_attention(loaded, EPISODES[:1], backend="transformer_lens", progress=False)
        return
    attn_type = type(adapter.attention(model, 0))
    if adapter.tl_torchvision and not _torchvision():
        with pytest.raises(ValueError, match=f"cannot bridge the '{adapter.family}' family.*backend='nnsight'"):
            capture_attention(loaded, EPISODES[:1], backend="transformer_lens", progress=False)
        return
    tl = capture_attention(loaded, EPISODES, backend="transformer_lens", progress=False)
    ref = capture_attention(loaded, EPISODES, backend="eager", progress=False)
    assert tl.segments == ref.segments
    torch.testing.assert_close(tl.mass, ref.mass, atol=1e-5, rtol=0)
    # the user's model is untouched: same attention modules, same attention implementation
    assert type(adapter.attention(model, 0)) is attn_type and model.config._attn_implementation == "sdpa"


def _torchvision() -> bool:
    try:
        import torchvision  # noqa: F401
        return True
    except Exception:
        return False


def test_views_and_roundtrip(tmp_path):
    loaded = tiny_loaded("llava")
    am = capture_attention(loaded, EPISODES, progress=False, meta={"note": "x"})
    image = [i for i, s in enumerate(am.segments) if s.endswith(".image")]
    torch.testing.assert_close(am.visual_share(), am.mass[..., image].sum(-1))
    total = am.visual_share() + am.text_share() + am.special_share() + am.role_mass("image_markup")
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=0)
    per_demo, owners = am.demo_image_share()
    assert owners == ["demo0", "demo1", "query"] and per_demo.shape[-1] == 3
    assert per_demo[2, ..., 0].abs().max() == 0  # episode 2 is zero-shot: no demo 0 image
    am.save(tmp_path / "am")
    back = AttentionMass.load(tmp_path / "am")
    assert torch.equal(back.mass, am.mass) and back.segments == am.segments and back.meta["note"] == "x"
    assert back.meta["shots"] == [2, 1, 0] and back.row_positions == am.row_positions
    parts, names = am.where_it_looks()  # against sums over segment names
    by_name = lambda pick: am.mass[..., [i for i, s in enumerate(am.segments) if pick(s)]].sum(-1)  # noqa: E731
    torch.testing.assert_close(parts[..., names.index("demo_image")],
                               by_name(lambda s: s.startswith("demo") and s.endswith(".image")))
    torch.testing.assert_close(parts[..., names.index("query_text")],
                               by_name(lambda s: s in ("query.question", "query.answer", "query.template")))
    torch.testing.assert_close(parts[..., names.index("special")], am.special_share())
    torch.testing.assert_close(parts.sum(-1), torch.ones(parts.shape[:3]), atol=1e-5, rtol=0)


def test_bad_rows_and_backend():
    loaded = tiny_loaded("llava")
    with pytest.raises(ValueError, match=r"outside the prompt of \d+ tokens"):
        capture_attention(loaded, EPISODES[:1], rows=[10_000], progress=False)
    with pytest.raises(ValueError, match="rows must be"):
        capture_attention(loaded, EPISODES[:1], rows="middle", progress=False)
    with pytest.raises(ValueError, match="backends: nnsight, transformer_lens, eager"):
        capture_attention(loaded, EPISODES[:1], backend="magic", progress=False)


def test_explicit_rows_average():
    loaded = tiny_loaded("qwen2_vl")
    p = loaded.prepare(EPISODES[0])
    rows = [5, p.layout.answer_position]
    am = capture_attention(loaded, EPISODES[:1], rows=rows, progress=False)
    single = [capture_attention(loaded, EPISODES[:1], rows=[r], progress=False).mass for r in rows]
    torch.testing.assert_close(am.mass, (single[0] + single[1]) / 2, atol=1e-6, rtol=0)
    assert am.rows == "explicit" and am.row_positions == [rows]


def test_plots_write_png_and_pdf(tmp_path):
    from micl_probe.viz import plots
    loaded = tiny_loaded("llava")
    am = capture_attention(loaded, EPISODES, progress=False)
    for name, fig in {"heat": plots.visual_share_heatmap(am), "bars": plots.demo_stacked_bars(am),
                      "curve": plots.layer_curve(am, by="conditions")}.items():
        paths = plots.save(fig, tmp_path / name)
        assert all(p.stat().st_size > 1000 for p in paths)


def test_transformer_lens_backend_installs_nothing(monkeypatch):
    """Booting a bridge must not run pip (TransformerLens would install torchvision to load a processor)."""
    import subprocess

    calls = []
    monkeypatch.setattr(subprocess, "check_call", lambda *a, **k: calls.append(a))
    model, processor = cached_tiny("llava_onevision")
    loaded = Loaded(model, processor, adapter_for(model))  # a fresh Loaded: the bridge is booted anew
    capture_attention(loaded, EPISODES[:1], backend="transformer_lens", progress=False)
    assert calls == []


@pytest.mark.parametrize("backend", ["nnsight", "eager"])
def test_a_prepared_batch_equals_one_episode_at_a_time(family, backend):
    """A padded batch (episodes of 2, 1 and 0 shots) runs in one pass; each row reduced with its own layout gives
    the numbers of running the episodes one by one."""
    loaded = tiny_loaded(family)
    batch = loaded.prepare_batch(EPISODES)
    assert len({lay.seq_len for lay in batch.layouts}) == 1 and (batch.inputs["attention_mask"] == 0).any()
    together = capture_attention(loaded, batch, backend=backend, progress=False)
    alone = capture_attention(loaded, EPISODES, backend=backend, progress=False)
    assert together.segments == alone.segments and together.meta["shots"] == [2, 1, 0]
    torch.testing.assert_close(together.mass, alone.mass, atol=1e-5, rtol=0, equal_nan=True)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3"])
def test_batched_capture_equals_one_episode_at_a_time(family):
    """capture_attention(..., batch_size=k) pads episodes of different lengths into one pass and reduces each row
    with its own layout: the masses equal those of one episode at a time (1-D RoPE, M-RoPE, sliding windows),
    explicit rows included."""
    model, processor = cached_tiny(family)
    loaded = Loaded(model, processor, adapter_for(model), name=family)
    eps = [noise_episode(k, seed=s) for k, s in ((0, 1), (2, 2), (1, 3), (3, 4), (2, 5))]
    for backend in ("nnsight", "eager"):
        one = capture_attention(loaded, eps, backend=backend, progress=False)
        many = capture_attention(loaded, eps, backend=backend, progress=False, batch_size=3)
        assert one.segments == many.segments and one.row_positions == many.row_positions
        torch.testing.assert_close(many.mass, one.mass, atol=1e-5, rtol=0, equal_nan=True)
    rows = [1, 2, 3]
    one = capture_attention(loaded, eps, rows=rows, progress=False)
    many = capture_attention(loaded, eps, rows=rows, progress=False, batch_size=5)
    torch.testing.assert_close(many.mass, one.mass, atol=1e-5, rtol=0, equal_nan=True)
    with pytest.raises(ValueError, match="batch_size=0"):
        capture_attention(loaded, eps, batch_size=0)
