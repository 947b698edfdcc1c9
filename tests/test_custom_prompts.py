"""Custom prompts: a raw LlavaForConditionalGeneration with its own vocabulary and hand-built input ids (no
micl_probe tokenizer, processor or prompt builder), measured and intervened on through a TokenLayout from spans."""

import pytest
import torch

from micl_probe import DARA, Loaded, PreparedBatch, TokenLayout, capture_attention
from micl_probe.core import adapter_for
from micl_probe.interventions import extract, inject

IMAGE, BOS, N_PATCH = 99, 1, 16  # the model's own image token id and bos; 32 px / 8 px patches = 16 tokens


@pytest.fixture(scope="module")
def raw():
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    cfg = LlavaConfig(vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
                      text_config=dict(model_type="llama", vocab_size=100, hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
                      image_token_id=IMAGE)
    model = LlavaForConditionalGeneration(cfg).eval()
    # prompt: BOS | demo0: image, question (3), answer (1), end (1) | query: image, question (3)
    ids = [BOS] + [IMAGE] * N_PATCH + [5, 6, 7] + [8] + [2] + [IMAGE] * N_PATCH + [5, 6, 9]
    spans = {"special": [(0, 1)], "demo0.image": [(1, 17)], "demo0.question": [(17, 20)],
             "demo0.answer": [(20, 21)], "query.image": [(22, 38)], "query.question": [(38, 41)]}
    inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
              "pixel_values": torch.randn(2, 3, 32, 32)}
    layout = TokenLayout.from_spans(ids, spans, image_token_id=IMAGE)
    return Loaded(model, None, adapter_for(model), name="raw-llava"), inputs, layout, spans


def test_layout_from_spans(raw):
    _, inputs, layout, _ = raw
    assert layout.n_demos == 1 and layout.n_images == 2 and layout.answer_position == 40
    assert layout.positions(owner=0, role="image").tolist() == list(range(1, 17))
    assert set(layout.image_index[22:38].tolist()) == {1} and layout.role[21] == 4  # uncovered: template
    for spans, message in [({"demo0.image": [(1, 16)]}, "differ from the positions of image token 99"),
                           ({"demo0.picture": [(1, 17)]}, "role 'picture'"),
                           ({"user.image": [(1, 17)]}, "owner 'user'"),
                           ({"demo0.question": [(17, 50)]}, "outside the prompt of 41 tokens"),
                           ({"demo0.question": [(17, 20)], "query.question": [(19, 22)]}, "overlaps"),
                           ({"demo1.question": [(17, 20)]}, "numbered 0..k-1")]:
        with pytest.raises(ValueError, match=message):
            TokenLayout.from_spans(inputs["input_ids"], spans, image_token_id=IMAGE if "image token" in message
                                   else None)


def test_capture_on_hand_built_inputs_equals_eager_by_hand(raw):
    loaded, inputs, layout, spans = raw
    am = capture_attention(loaded, PreparedBatch.of(inputs, layout))
    model = loaded.model
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = model(**inputs, output_attentions=True).attentions  # L x [1, H, seq, seq]
    finally:
        model.set_attn_implementation("sdpa")
    for name, ranges in spans.items():
        by_hand = torch.stack([sum(a[0, :, 40, s:e].sum(-1) for s, e in ranges) for a in attentions])  # [L, H]
        torch.testing.assert_close(am.mass[0, ..., am.segments.index(name)], by_hand, atol=1e-5, rtol=0)


def test_dara_and_mtv_on_hand_built_inputs(raw):
    loaded, inputs, layout, _ = raw
    model = loaded.model
    dara = DARA.for_model(loaded, n_images=2)
    with torch.no_grad():
        plain = model(**inputs).logits
        with dara.applied(model, [layout]) as kwargs:
            torch.testing.assert_close(model(**inputs, **kwargs).logits, plain, atol=1e-5, rtol=0)
        dara.set_alpha(5.0, (..., 0))
        with dara.applied(model, [layout]) as kwargs:
            assert (model(**inputs, **kwargs).logits - plain).abs().max() > 1e-3
    batch = PreparedBatch.of(inputs, layout)
    mtv = extract(loaded, iter([batch, batch]), n_prompts=2)
    assert mtv.meta["n_prompts"] == 2 and mtv.values.shape == (2, 4, 16)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[1, 0] = True
    with torch.no_grad(), inject(loaded, mtv.mean, mask, [layout]):
        same = model(**inputs).logits  # the mean of one prompt is its own head output: injection changes nothing
    torch.testing.assert_close(same, plain, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="one layout per row"):
        PreparedBatch.of(inputs, [layout, layout])
