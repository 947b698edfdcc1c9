"""Dtypes as users run them: bf16 and fp16 models through capture (against fp32 eager), DARA (forward, generation
and a training step), MTV (extract, inject) and the harness. Every tensor micl_probe makes follows the tensor it
meets (device and dtype); reductions run in fp32. CUDA and device_map splits are checked by bench/gpu_check.py."""

import pytest
import torch

from micl_probe import DARA, RunConfig, capture_attention, run
from micl_probe.core import Loaded, adapter_for
from micl_probe.evaluation.scoring import generate_answers
from micl_probe.interventions import extract, inject
from micl_probe.testing import cached_tiny, noise_episode, tiny_model

HALF = [torch.bfloat16, torch.float16]


@pytest.fixture(scope="module", params=HALF, ids=["bf16", "fp16"])
def half(request):
    model, processor = tiny_model("qwen2_vl", dtype=request.param)
    return Loaded(model, processor, adapter_for(model), name=f"tiny-qwen2_vl-{request.param}")


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_half_precision_capture_agrees_with_fp32_eager(family, dtype):
    model, processor = cached_tiny(family)
    episodes = [noise_episode(2), noise_episode(1, seed=3)]
    reference = capture_attention(Loaded(model, processor, adapter_for(model)), episodes, backend="eager",
                                  progress=False).mass
    half_model, half_processor = tiny_model(family, dtype=dtype)
    assert next(half_model.parameters()).dtype == dtype
    got = capture_attention(Loaded(half_model, half_processor, adapter_for(half_model)), episodes, progress=False)
    assert got.mass.dtype == torch.float32
    # fp16: 1e-3. bf16 keeps 8 mantissa bits, so the half model's own hidden states drift by ~0.4% a layer; on the
    # families with q/k norms (Gemma 3, Qwen3-VL) that reaches 2e-3 in the attention mass
    torch.testing.assert_close(got.mass, reference, atol=1e-3 if dtype == torch.float16 else 3e-3, rtol=0,
                               equal_nan=True)  # NaN: a hybrid decoder's unmeasured layers, in both


def test_half_precision_dara(half):
    batch = half.prepare_batch([noise_episode(2)], with_answer=True)
    dara = DARA.for_model(half, n_images=3)  # factors stay fp32; the bias meets each layer in its dtype
    with torch.no_grad():
        plain = half.model(**batch.inputs).logits
        with dara.applied(half.model, batch.layouts) as kwargs:
            same = half.model(**batch.inputs, **kwargs).logits
    torch.testing.assert_close(same.float(), plain.float(), atol=2e-2, rtol=0)  # alpha = 1 is the identity
    dara.set_alpha(4.0, (..., slice(0, 2)))
    labels = torch.full_like(batch.inputs["input_ids"], -100)
    pos = batch.layouts[0].query_answer_positions()
    labels[0, pos] = batch.inputs["input_ids"][0, pos]
    with dara.applied(half.model, batch.layouts) as kwargs:
        loss = half.model(**batch.inputs, **kwargs, labels=labels).loss
    loss.backward()
    assert dara.log_alpha.grad is not None and torch.isfinite(dara.log_alpha.grad).all()
    assert dara.log_alpha.grad.abs().sum() > 0 and dara.log_alpha.dtype == torch.float32
    ask = half.prepare_batch([noise_episode(2)], padding_side="left")
    with dara.applied(half.model, ask.layouts) as kwargs:
        assert isinstance(generate_answers(half, ask, 3, **kwargs)[0], str)


def test_half_precision_mtv(half):
    eps = iter([noise_episode(2, seed=s) for s in range(4)])
    mtv = extract(half, eps, n_prompts=4, batch_size=2)
    assert mtv.values.dtype == torch.float32 and torch.isfinite(mtv.values).all()
    batch = half.prepare_batch([noise_episode(0)])
    mask = torch.zeros(mtv.values.shape[:2], dtype=torch.bool)
    mask[0, 1] = True
    with torch.no_grad():
        plain = half.model(**batch.inputs).logits
        with inject(half, mtv.mean, mask, batch.layouts):
            moved = half.model(**batch.inputs).logits
    assert (moved - plain).float().abs().max() > 0 and torch.isfinite(moved.float()).all()


def test_half_precision_harness(half):
    for metric in ("teacher-forced", "exact"):
        records = run(half, ["outlier"], ["zero-shot", "2-shot"],
                      RunConfig(n=2, progress=False, metric=metric, max_new_tokens=3))
        assert len(records) == 4 and all(0 <= r["visual_share"] <= 1 for r in records)


@pytest.mark.parametrize("placement", ["tokens", "residual"])
def test_half_precision_mmict(half, placement):
    """The hub stays fp32 and its outputs meet the decoder in its dtype; a zero residual hub is the model exactly;
    the hub gets finite gradients through the half model."""
    from micl_probe.core import prepared, within
    from micl_probe.interventions import MHub
    from micl_probe.interventions.fitting import query_labels

    batch = half.prepare_batch([noise_episode(2)], with_answer=True)
    hub = MHub.for_model(half, width=16, n_queries=4, layers=1, placement=placement)
    iv = hub.on(half)
    spliced = prepared(iv, batch)
    if placement == "residual":
        with torch.no_grad(), within(iv, spliced.layouts) as kw:
            torch.testing.assert_close(half.model(**batch.inputs, **kw).logits, half.model(**batch.inputs).logits,
                                       atol=0, rtol=0)
    with within(iv, spliced.layouts) as kw:
        loss = half.model(**spliced.inputs, **kw, labels=query_labels(spliced)).loss
    loss.backward()
    assert hub.out.weight.dtype == torch.float32 and torch.isfinite(hub.out.weight.grad).all()
    assert hub.out.weight.grad.abs().sum() > 0
    half.model.zero_grad(set_to_none=True)
