"""DARA: identity at alpha = 1, fast path == eager, reallocation only where intended, gradients only to alpha."""

import dataclasses

import pytest
import torch

from micl_probe.core import prepare
from micl_probe.interventions import DARA, FitConfig
from micl_probe.testing import FAMILIES, noise_episode, tiny_loaded


def _setup(family, shots=2):
    loaded = tiny_loaded(family)
    p = prepare(noise_episode(shots, seed=4), loaded.processor, loaded.adapter, model=loaded.model)
    return loaded, loaded.model, p


@pytest.mark.parametrize("family", FAMILIES)
def test_alpha_one_changes_nothing_and_paths_agree(family):
    loaded, model, p = _setup(family)
    dara = DARA.for_model(loaded, n_images=p.layout.n_images)
    with torch.no_grad():
        ref = model(**p.inputs).logits
        with dara.applied(model, p.layout) as kw:
            same = model(**p.inputs, **kw).logits
        torch.testing.assert_close(same, ref, atol=1e-5, rtol=0)
        dara.set_alpha(torch.rand_like(dara.alpha) * 3 + 0.2)
        with dara.applied(model, p.layout) as kw:
            fast = model(**p.inputs, **kw).logits
        with dara.applied(model, p.layout, kernel="eager") as kw:
            eager = model(**p.inputs, **kw).logits
    torch.testing.assert_close(fast, eager, atol=1e-5, rtol=0)
    assert (fast - ref).abs().max() > 1e-4  # the factors do act
    assert model.config.get_text_config()._attn_implementation == "sdpa"  # restored


def _layer_weights(model, p, layer, dara=None):
    prev = model.config._attn_implementation
    model.set_attn_implementation("eager")
    with torch.no_grad():
        if dara is None:
            out = model(**p.inputs, output_attentions=True)
        else:
            with dara.applied(model, p.layout, kernel="eager") as kw:
                out = model(**p.inputs, **kw, output_attentions=True)
    model.set_attn_implementation(prev)
    return out.attentions[layer][0]  # [H, q, k]


@pytest.mark.parametrize("family", FAMILIES)
def test_reallocation_only_on_intended_columns_heads_layers(family):
    loaded, model, p = _setup(family)
    lay = p.layout
    first = loaded.adapter.attention_layers(model)[0]  # layer 0, but 1 in the hybrid qwen3_5 (0 is linear)
    dara = DARA.for_model(loaded, n_images=lay.n_images, layers=(first,))
    with torch.no_grad():
        dara.set_alpha(3.0, (0, 1, 0))  # head 1, image 0 (demo 0) only
    base = _layer_weights(model, p, 0)  # HF records the softmax-attention layers: entry 0 is `first`
    moved = _layer_weights(model, p, 0, dara)
    cols = lay.positions(role="image", image=0)
    # head 1: weights on image 0's columns x3, then every row renormalised
    expect = base[1].clone()
    expect[:, cols] *= 3.0
    expect = expect / expect.sum(-1, keepdim=True)
    torch.testing.assert_close(moved[1], expect, atol=1e-5, rtol=0)
    for h in (0, 2, 3):  # other heads of layer 0 untouched
        torch.testing.assert_close(moved[h], base[h], atol=1e-6, rtol=0)
    # image 0's markup token (the newline after <image>) is not an image column: only renormalised
    markup = lay.positions(role="image_markup", image=0)
    torch.testing.assert_close(moved[1][:, markup], expect[:, markup], atol=1e-6, rtol=0)


def test_post_mode_multiplies_without_renormalising():
    loaded, model, p = _setup("qwen2_vl")
    dara = DARA.for_model(loaded, n_images=p.layout.n_images, layers=(1,), mode="post")
    with torch.no_grad():
        dara.set_alpha(2.0, (0, slice(None), -1))  # every head, the query image
    base = _layer_weights(model, p, 1)
    moved = _layer_weights(model, p, 1, dara)
    cols = p.layout.positions(role="image", image=p.layout.n_images - 1)
    expect = base.clone()
    expect[:, :, cols] *= 2.0
    torch.testing.assert_close(moved, expect, atol=1e-5, rtol=0)
    torch.testing.assert_close(_layer_weights(model, p, 0, dara), _layer_weights(model, p, 0), atol=1e-6, rtol=0)


def test_gradients_reach_only_alpha_and_batches_work():
    loaded = tiny_loaded("llava")
    model = loaded.model
    eps = [noise_episode(2, seed=s) for s in (1, 2, 3)]
    batch = loaded.prepare_batch(eps, with_answer=True)
    dara = DARA.for_model(loaded, n_images=3)
    for prm in model.parameters():
        prm.requires_grad_(False)
    with dara.applied(model, batch.layouts) as kw:
        loss = model(**batch.inputs, **kw, labels=batch.inputs["input_ids"]).loss
    loss.backward()
    assert dara.log_alpha.grad is not None and dara.log_alpha.grad.abs().sum() > 0
    assert all(prm.grad is None for prm in model.parameters())
    assert dara.n_params == 4 * 3  # 1 layer x 4 heads x 3 images
    for prm in model.parameters():
        prm.requires_grad_(True)


def test_errors_and_roundtrip(tmp_path):
    loaded, model, p = _setup("llava")
    dara = DARA.for_model(loaded, n_images=p.layout.n_images + 1)
    with pytest.raises(ValueError, match="factors for 4 images; the prompt has 3"):
        with dara.applied(model, p.layout):
            pass
    with pytest.raises(ValueError, match="outside the decoder's 2 layers"):
        DARA.for_model(loaded, n_images=3, layers=(5,))
    dara.save(tmp_path / "d")
    back = DARA.load(tmp_path / "d", loaded)
    assert torch.equal(back.alpha, dara.alpha) and back.layers == (0,)
    other = tiny_loaded("qwen2_5_vl")
    other.model.config.get_text_config().num_hidden_layers = 3
    try:
        with pytest.raises(ValueError, match="saved for a model with 2 layers"):
            DARA.load(tmp_path / "d", other)
    finally:
        other.model.config.get_text_config().num_hidden_layers = 2


def test_training_plumbing_dara_lora_and_sweep():
    """A few steps of each on a tiny random LLaVA: factors move, LoRA counts its parameters, base model frozen."""
    from micl_probe.evaluation import task_verdicts
    from micl_probe.interventions import fixed_alpha, train_dara, train_lora

    loaded = tiny_loaded("llava")
    model = loaded.model
    before = [p.detach().clone() for p in model.parameters()]
    dara, hist = train_dara(loaded, "outlier", shots=2, fit_config=FitConfig(steps=4, batch=4, n_val=4, eval_every=2,
                                                                             lr=0.1))
    assert dara.n_params == 4 * 3 and len(hist) == 2 and (dara.alpha - 1).abs().max() > 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.requires_grad for p in model.parameters())  # restored
    verdicts = task_verdicts(loaded, "outlier", 2, n=6, batch_size=3, intervention=dara.on(model))
    assert verdicts.shape == (6,) and verdicts.dtype == torch.bool
    sweep = fixed_alpha(loaded, 2, 3.0)
    assert torch.allclose(sweep.alpha[0, :, :2], torch.tensor(3.0)) and sweep.alpha[0, :, 2].eq(1).all()
    peft_model, hist = train_lora(loaded, "outlier", shots=2, rank=2,
                                  fit_config=FitConfig(steps=2, batch=4, n_val=4, eval_every=2))
    n_lora = sum(p.numel() for n_, p in peft_model.named_parameters() if "lora_" in n_)
    r = 2
    assert n_lora == 2 * r * (64 + 64) + 2 * r * (64 + 32)  # r*(in+out) each; q,o: 64->64, k,v: 64->32 (GQA)
    peft_model.unload()


def test_attention_capture_sees_the_reallocation():
    """capture_attention under DARA: image 0's share of head 1 in layer 0 equals the hand-reallocated one."""
    from micl_probe.measure import capture_attention
    loaded = tiny_loaded("llava")
    model = loaded.model
    ep = noise_episode(2, seed=4)
    dara = DARA.for_model(loaded, n_images=3)
    with torch.no_grad():
        dara.set_alpha(4.0, (0, 1, 0))
    base = capture_attention(loaded, [ep], progress=False)
    moved = capture_attention(loaded, [ep], progress=False,
                              intervention=dara.on(model, kernel="eager"))
    i = base.segments.index("demo0.image")
    a = base.mass[0, 0, 1, i]
    torch.testing.assert_close(moved.mass[0, 0, 1, i], 4 * a / (1 + 3 * a), atol=1e-5, rtol=0)
    torch.testing.assert_close(moved.mass[0, 0, 0], base.mass[0, 0, 0], atol=1e-6, rtol=0)  # head 0 untouched
    assert moved.meta["backend"] == "eager+intervention"


def test_factors_travel_with_the_call_not_with_the_module():
    """The factors reach the attention function as a forward kwarg: a forward inside `applied` without them is an
    error that names the fix, and two DARAs applied to two models at once each act only on their own."""
    loaded, model, p = _setup("llava")
    dara = DARA.for_model(loaded, n_images=p.layout.n_images).set_alpha(3.0)
    with torch.no_grad(), dara.applied(model, p.layout):
        with pytest.raises(ValueError, match=r"with dara.applied\(model, layouts\) as kw"):
            model(**p.inputs)
    other, other_model, q = _setup("qwen2_vl")
    identity = DARA.for_model(other, n_images=q.layout.n_images)
    with torch.no_grad():
        ref, other_ref = model(**p.inputs).logits, other_model(**q.inputs).logits
        with dara.applied(model, p.layout) as kw, identity.applied(other_model, q.layout) as other_kw:
            moved, same = model(**p.inputs, **kw).logits, other_model(**q.inputs, **other_kw).logits
    assert (moved - ref).abs().max() > 1e-4
    torch.testing.assert_close(same, other_ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])  # grouped-query attention; M-RoPE
def test_folded_bias_equals_the_eager_reference_in_logits_and_gradients(family, monkeypatch):
    """The sdpa path folds the bias into extra key dimensions: logits and gradients equal the eager reference (which
    adds the bias to a materialised mask), on a padded batch; on an unpadded prompt no query x key mask reaches sdpa
    in any layer (the kernel's own causal flag), DARA layer or not."""
    loaded = tiny_loaded(family)
    model = loaded.model
    longer = noise_episode(2, seed=9)
    longer = dataclasses.replace(longer, query=dataclasses.replace(longer.query, question="What is 5 and then 5?"))
    batch = loaded.prepare_batch([noise_episode(2, seed=4), longer], with_answer=True)
    assert (batch.inputs["attention_mask"] == 0).any()  # padded
    dara = DARA.for_model(loaded, n_images=3, layers=loaded.adapter.attention_layers(model))
    with torch.no_grad():
        dara.set_alpha(torch.rand_like(dara.alpha) * 3 + 0.2)
    labels = torch.full_like(batch.inputs["input_ids"], -100)
    for b, lay in enumerate(batch.layouts):
        pos = lay.query_answer_positions()
        labels[b, pos] = batch.inputs["input_ids"][b, pos]
    got = {}
    for kernel in ("sdpa", "eager"):
        dara.log_alpha.grad = None
        with dara.applied(model, batch.layouts, kernel=kernel) as kw:
            out = model(**batch.inputs, **kw, labels=labels)
        out.loss.backward()
        got[kernel] = (out.logits.detach(), dara.log_alpha.grad.clone())
    torch.testing.assert_close(got["sdpa"][0], got["eager"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(got["sdpa"][1], got["eager"][1], atol=1e-5, rtol=1e-4)
    assert got["sdpa"][1].abs().sum() > 0

    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append((attn_mask, kw.get("is_causal"), q.shape[-1]))
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    one = loaded.prepare_batch([noise_episode(2, seed=4)])
    with torch.no_grad(), dara.applied(model, one.layouts) as kw:
        model.model.language_model(input_ids=one.inputs["input_ids"], **kw)  # the decoder alone: text tokens
    assert len(seen) == loaded.adapter.n_layers(model)
    assert all(mask is None and causal for mask, causal, _ in seen)  # no q x kv mask, fused causal kernel
    a = loaded.adapter
    group = a.n_heads(model) // a.n_kv_heads(model)
    assert {width for *_, width in seen} == {a.head_dim(model) + group}  # d + G: the folded bias
