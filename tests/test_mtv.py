"""MTV: extraction against a direct computation, injection touches only the selected heads, REINFORCE finds
planted heads, artifacts refuse a model of another shape."""

import pytest
import torch

from micl_probe.interventions.mtv import TaskVector, extract, head_outputs, inject, reinforce
from micl_probe.testing import FAMILIES, noise_episode, tiny_loaded


def _loaded(family="llava"):
    return tiny_loaded(family)  # named "tiny-<family>"


def _direct_head_outputs(loaded, episode):
    """Per-head outputs at the last token from HF eager attentions and v_proj of the layer-normed hidden state."""
    model, adapter = loaded.model, loaded.adapter
    b = loaded.prepare_batch([episode])
    prev = model.config._attn_implementation
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(**b.inputs, output_attentions=True, output_hidden_states=True)
    model.set_attn_implementation(prev)
    H, D, Hkv = adapter.n_heads(model), adapter.head_dim(model), adapter.n_kv_heads(model)
    heads = []
    for layer in range(adapter.n_layers(model)):
        block = adapter.layers(model)[layer]
        x = block.input_layernorm(out.hidden_states[layer])  # input of layer `layer`
        v = block.self_attn.v_proj(x).view(1, -1, Hkv, D).transpose(1, 2).repeat_interleave(H // Hkv, 1)
        heads.append((out.attentions[layer] @ v)[0, :, -1])  # [H, D] at the last token
    return torch.stack(heads)


def test_extraction_equals_direct_computation():
    loaded = _loaded()
    eps = [noise_episode(2, seed=s) for s in range(3)]
    mtv = extract(loaded, iter(eps), n_prompts=3, batch_size=2)
    direct = torch.stack([_direct_head_outputs(loaded, e) for e in eps]).mean(0)
    assert mtv.mean.shape == (2, 4, 16)
    torch.testing.assert_close(mtv.mean, direct.float(), atol=1e-5, rtol=1e-4)
    assert mtv.meta["n_prompts"] == 3 and mtv.meta["n_shots"] == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_injection_changes_only_selected_heads(family):
    loaded = _loaded(family)
    eps = [noise_episode(0, seed=s) for s in (5, 6)]
    b = loaded.prepare_batch(eps)
    pos = [lay.answer_position for lay in b.layouts]
    means = torch.randn(2, 4, 16)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[1, 2] = True
    base = head_outputs(loaded, b, pos)
    with inject(loaded, means, mask, b.layouts):
        patched = head_outputs(loaded, b, pos)
        before = head_outputs(loaded, b, [p - 1 for p in pos])
    torch.testing.assert_close(patched[:, 1, 2], means[1, 2].expand(2, 16))  # the selected head carries the mean
    keep = ~mask
    torch.testing.assert_close(patched[:, keep], base[:, keep])  # every other head, both layers: unchanged
    torch.testing.assert_close(before, head_outputs(loaded, b, [p - 1 for p in pos]))  # other positions too


def test_per_row_values_patch_each_row_with_its_own(family="qwen2_vl"):
    """Activation patching: values [B, layer, head, d_head] put row b's own values into row b's selected heads; the
    other heads keep theirs; a row patched with its own clean outputs is unchanged."""
    loaded = _loaded(family)
    b = loaded.prepare_batch([noise_episode(1, seed=s) for s in (7, 8)])
    pos = [lay.answer_position for lay in b.layouts]
    base = head_outputs(loaded, b, pos)  # [B, L, H, D]
    values = torch.randn(2, 2, 4, 16)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, 1] = mask[1, 3] = True
    with inject(loaded, values, mask, b.layouts):
        patched = head_outputs(loaded, b, pos)
    torch.testing.assert_close(patched[:, 0, 1], values[:, 0, 1])  # each row its own values
    torch.testing.assert_close(patched[:, 0, 0], base[:, 0, 0])  # layer 0, an unselected head: unchanged
    with torch.no_grad():
        clean = loaded.model(**b.inputs).logits
        with inject(loaded, base, mask, b.layouts):
            same = loaded.model(**b.inputs).logits
    torch.testing.assert_close(same, clean, atol=1e-5, rtol=1e-5)


def test_injection_in_generation_first_token_or_every_token():
    loaded = _loaded()
    b = loaded.prepare_batch([noise_episode(0, seed=1)])
    means, mask = torch.randn(2, 4, 16) * 5, torch.ones(2, 4, dtype=torch.bool)
    outs = {}
    for every in (False, True):
        with inject(loaded, means, mask, b.layouts, every_token=every):
            outs[every] = loaded.model.generate(**b.inputs, max_new_tokens=3, do_sample=False,
                                                output_logits=True, return_dict_in_generate=True)
    torch.testing.assert_close(outs[False].logits[0], outs[True].logits[0])  # same prompt pass
    assert (outs[False].logits[2] - outs[True].logits[2]).abs().max() > 1e-4  # later tokens differ


def test_reinforce_finds_planted_heads():
    planted = torch.zeros(3, 4, dtype=torch.bool)
    planted[0, 1] = planted[2, 3] = True
    gen = torch.Generator().manual_seed(0)

    def loss(masks):  # lower when planted heads are on and others off, with noise
        hits = (masks & planted).sum((1, 2)).float()
        extra = (masks & ~planted).sum((1, 2)).float()
        return -2 * hits + 0.5 * extra + 0.3 * torch.randn(len(masks), generator=gen)

    p = reinforce(3, 4, loss, steps=300, progress=False)
    assert (p[planted] > 0.9).all() and (p[~planted] < 0.1).all()


def test_artifact_roundtrip_and_shape_check(tmp_path):
    loaded = _loaded()
    mtv = extract(loaded, iter([noise_episode(1, seed=9)]), n_prompts=1)
    mtv.save(tmp_path / "v")
    back = TaskVector.load(tmp_path / "v", loaded=loaded)
    assert torch.equal(back.mean, mtv.mean) and back.kind == "mtv" and back.meta["model"] == "tiny-llava"
    mask = TaskVector(torch.ones(2, 4, dtype=torch.bool), "mtv_mask", {"model": "tiny-llava"})
    mask.save(tmp_path / "m")
    assert TaskVector.load(tmp_path / "m").values.dtype == torch.bool
    other = _loaded("qwen2_vl")
    other.model.config.get_text_config().num_attention_heads = 8  # same layers and width: 8 heads of 8
    try:
        with pytest.raises(ValueError, match=r"made for tiny-llava.*does not fit tiny-qwen2_vl: expected \(2, 8, 8\)"):
            TaskVector.load(tmp_path / "v", loaded=other)
    finally:
        other.model.config.get_text_config().num_attention_heads = 4


def test_attention_measured_under_injection():
    """capture_attention(intervention=MTV injection): layer 0 (before the patched head) keeps its attention at the
    answer row, layer 1 (after it) sees the patched residual and moves; equal to the plain capture without it."""
    from micl_probe import capture_attention
    from micl_probe.interventions.mtv import injection

    loaded = _loaded()
    ep = noise_episode(2, seed=3)
    means = torch.randn(2, 4, 16) * 5
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0] = True
    plain = capture_attention(loaded, [ep], progress=False).mass
    none = capture_attention(loaded, [ep], progress=False, intervention=injection(loaded, means, mask & False)).mass
    moved = capture_attention(loaded, [ep], progress=False, intervention=injection(loaded, means, mask)).mass
    torch.testing.assert_close(none, plain, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(moved[:, 0], plain[:, 0], atol=1e-5, rtol=1e-4)
    assert (moved[:, 1] - plain[:, 1]).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3"])  # 1-D RoPE; M-RoPE; image-bidirectional mask
def test_prefix_shared_continuations_equal_the_whole_prompt(family):
    """Each mask's last-token logits from one shared prefix (KV cache, masks as one-token continuations, in groups
    with a padded last group) equal running the whole prompt once per mask; CIE likewise."""
    from micl_probe.interventions import mtv as mtv_mod

    loaded = _loaded(family)
    model, a = loaded.model, loaded.adapter
    ep = noise_episode(1, seed=3)
    b = loaded.prepare_batch([ep])
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(a.n_layers(model), a.n_heads(model), a.head_dim(model), generator=gen) * 3
    masks = torch.rand(5, a.n_layers(model), a.n_heads(model), generator=gen) < 0.4
    shared = mtv_mod.last_token_logits(loaded, b, means, masks, chunk=2)
    whole = loaded.prepare_batch([ep] * 5)
    with torch.no_grad(), inject(loaded, means, masks, whole.layouts):
        ref = model(**whole.inputs).logits[:, -1].float()
    torch.testing.assert_close(shared, ref, atol=1e-5, rtol=1e-5)
    assert (ref[0] - ref[1]).abs().max() > 1e-3  # the masks do differ
    tv = mtv_mod.TaskVector(means, "mtv", {})
    eps = [noise_episode(0, seed=s) for s in (1, 2)]
    fast = mtv_mod.indirect_effects(loaded, tv, eps)
    original = mtv_mod.shares_prefix
    mtv_mod.shares_prefix = lambda loaded: False
    try:
        slow = mtv_mod.indirect_effects(loaded, tv, eps)
    finally:
        mtv_mod.shares_prefix = original
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
