"""TokenLayout against independent evidence, for every supported family with a tiny random model."""

import pytest
import torch

from micl_probe.core import QUERY, TokenLayout, adapter_for, get_adapter, prepare, supported_families
from micl_probe.core.prompt import Prompt, encode, render
from micl_probe.testing import cached_tiny, noise_episode, noise_image
from micl_probe.testing.templates import CHAT_TEMPLATES, with_template


@pytest.mark.parametrize("shots", [0, 1, 4])
def test_layout_matches_processor_and_model(family, shots):
    model, processor = cached_tiny(family)
    adapter = adapter_for(model)
    ep = noise_episode(shots)
    _check_layout(model, processor, adapter, ep, prepare(ep, processor, adapter, model=model))


@pytest.mark.parametrize("style", ["turns", "single"])
@pytest.mark.parametrize("shots", [0, 3])
@pytest.mark.parametrize("name", sorted(CHAT_TEMPLATES))
def test_layout_through_published_chat_templates(name, shots, style):
    """Prompts written by a checkpoint's own chat template (the processor carries it) pass every layout check."""
    family = CHAT_TEMPLATES[name][0]
    model, processor = cached_tiny(family)
    processor = with_template(processor, name)
    ep = noise_episode(shots).with_style(style, instruction="Answer with one word.")
    p = prepare(ep, processor, adapter_for(model), model=model)
    _check_layout(model, processor, adapter_for(model), ep, p)


def _check_layout(model, processor, adapter, ep, p):
    shots = ep.shots
    ids, lay = p.input_ids[0], p.layout
    tok = processor.tokenizer
    assert len(lay) == ids.numel() and lay.n_demos == shots and lay.n_images == shots + 1

    # image positions are exactly the positions of the family's image token id ...
    image_id = adapter.image_token_id(model)
    assert torch.equal(lay.mask(role="image"), ids == image_id)
    # ... and, image by image, as many as the vision tower produces features
    counts = adapter.image_feature_counts(model, p.inputs)
    per_image = [lay.positions(role="image", image=i).numel() for i in range(lay.n_images)]
    if len(counts) == lay.n_images:
        assert per_image == counts
    else:  # the family flattens tiles (Idefics3): compare the total
        assert sum(per_image) == sum(counts)

    # every turn's text decodes back to what the episode says
    for i, d in enumerate(ep.demos):
        assert tok.decode(ids[lay.positions(owner=i, role="answer")]).strip() == d.answer
        assert tok.decode(ids[lay.positions(owner=i, role="question")]).strip() == d.question
        # each image of demo i is owned by demo i
        assert set(lay.image_index[lay.positions(owner=i, role="image")].tolist()) == {i}
    assert tok.decode(ids[lay.positions(owner=QUERY, role="question")]).strip() == ep.query.question
    assert lay.positions(owner=QUERY, role="answer").numel() == 0  # the gold answer is never in the prompt
    assert lay.answer_position == len(lay) - 1

    # demonstrations come in order, the query last
    firsts = [lay.positions(owner=i)[0].item() for i in range(shots)] + [lay.positions(owner=QUERY)[0].item()]
    assert firsts == sorted(firsts)
    # special tokens are never folded into text
    specials = set(tok.all_special_ids) - {image_id}
    assert all(ids[t].item() not in specials for t in lay.text_positions())

    # the model runs on exactly these inputs
    with torch.no_grad():
        logits = model(**p.inputs).logits
    assert logits.shape[:2] == (1, len(lay))


def test_family_markup_is_image_markup(family):
    model, processor = cached_tiny(family)
    p = prepare(noise_episode(2), processor, adapter_for(model), model=model)
    toks = processor.tokenizer.convert_ids_to_tokens(p.input_ids[0][p.layout.positions(role="image_markup")])
    qwen = {"<|vision_start|>", "<|vision_end|>"}
    tiles = {"<fake_token_around_image>", "<global-img>", "<row_1_col_1>"}
    expected = {"qwen2_vl": qwen, "qwen2_5_vl": qwen, "qwen3_vl": qwen, "qwen3_vl_moe": qwen, "idefics3": tiles,
                "smolvlm": tiles, "idefics2": {"<fake_token_around_image>"}, "internvl": {"<img>", "</img>"},
                "gemma3": {"<start_of_image>", "<end_of_image>"}, "glm4v": {"<|begin_of_image|>", "<|end_of_image|>"},
                "mistral3": {"[IMG_BREAK]", "[IMG_END]"}}
    assert expected.get(family, set()) <= set(toks)
    assert p.layout.positions(role="image_markup").numel() > 0


def test_with_answer_teacher_forcing(family):
    model, processor = cached_tiny(family)
    adapter = adapter_for(model)
    ep = noise_episode(2)
    p = prepare(ep, processor, adapter, model=model, with_answer=True)
    lay = p.layout
    answer_pos = lay.positions(owner=QUERY, role="answer")
    assert answer_pos.numel() == p.answer_ids.numel() > 0
    assert lay.answer_position == answer_pos[0].item() - 1
    assert torch.equal(p.input_ids[0][answer_pos], p.answer_ids)  # the same ids the tokenizer gives alone
    # without the answer, the prompt is the same prefix
    q = prepare(ep, processor, adapter, model=model)
    assert torch.equal(q.input_ids[0], p.input_ids[0][: lay.answer_position + 1])


def test_layout_roundtrip_and_describe():
    model, processor = cached_tiny("llava")
    lay = prepare(noise_episode(2), processor, adapter_for(model), model=model).layout
    back = TokenLayout.from_dict(lay.to_dict())
    assert torch.equal(back.role, lay.role) and back.answer_position == lay.answer_position
    text = lay.describe()
    assert "demo1.image" in text and "query.question" in text and "special" in text
    # the printout is half-open, as from_spans takes it: copying it back gives the same layout
    ids = prepare(noise_episode(2), processor, adapter_for(model), model=model).inputs["input_ids"][0]
    spans = lay.spans()
    for name, pos in lay.segments().items():
        assert sum(b - a for a, b in spans[name]) == pos.numel()
        assert all(f"[{a}, {b})" in text for a, b in spans[name][:4])
    image_spans = {k: v for k, v in spans.items() if k.endswith(".image")}
    assert all(len(v) == 1 for v in image_spans.values())  # one image, one range (LLaVA)
    rebuilt = TokenLayout.from_spans(ids, spans, answer_position=lay.answer_position)
    assert rebuilt.spans() == spans and torch.equal(rebuilt.role, lay.role)  # (specials' owners are not segments)
    image = lay.positions(role="image")
    assert torch.equal(rebuilt.image_index[image], lay.image_index[image])


def test_no_image_control_has_no_demo_images(family):
    model, processor = cached_tiny(family)
    p = prepare(noise_episode(3).without_demo_images(), processor, adapter_for(model), model=model)
    assert p.layout.n_images == 1
    assert set(p.layout.owner[p.layout.positions(role="image")].tolist()) == {QUERY}


# --- bad input ----------------------------------------------------------------------------------------------
def test_more_images_than_placeholders():
    model, processor = cached_tiny("llava")
    adapter = adapter_for(model)
    prompt = render(noise_episode(1), adapter)
    extra = Prompt(prompt.pieces, prompt.images + prompt.images[:1], None)
    with pytest.raises(ValueError, match="2 image placeholder.*but 3 image"):
        encode([extra], processor, adapter)


def test_missing_image():
    model, processor = cached_tiny("qwen2_vl")
    adapter = adapter_for(model)
    prompt = render(noise_episode(1), adapter)
    with pytest.raises(ValueError, match="placeholder"):
        encode([Prompt(prompt.pieces, prompt.images[:1], None)], processor, adapter)


def test_placeholder_in_question_text():

    from micl_probe import Demo, Episode, Query
    model, processor = cached_tiny("llava")
    ep = Episode((Demo([noise_image(8, 8)], "look <image> here", "a"),), Query([noise_image(8, 8)], "q?"))
    with pytest.raises(ValueError, match="contains the image placeholder"):
        prepare(ep, processor, adapter_for(model), model=model)


def test_prompt_over_context_length():
    model, processor = cached_tiny("llava")
    adapter = adapter_for(model)
    saved = model.config.text_config.max_position_embeddings
    try:
        model.config.text_config.max_position_embeddings = 40
        with pytest.raises(ValueError, match="over the model's context length of 40"):
            prepare(noise_episode(4), processor, adapter, model=model)
    finally:
        model.config.text_config.max_position_embeddings = saved


def test_unsupported_family_lists_supported():
    from transformers import GPT2Config, GPT2LMHeadModel
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10))
    with pytest.raises(ValueError, match="supported families: .*llava.*qwen2_vl"):
        adapter_for(model)
    with pytest.raises(ValueError, match="supported families"):
        get_adapter("fuyu")
    assert {"llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "idefics3", "organism", "qwen3_vl",
            "qwen3_vl_moe", "gemma3", "internvl", "idefics2", "smolvlm", "glm4v"} <= set(supported_families())


@pytest.mark.parametrize("model_type, says", [
    ("mllama", "reads its images through cross-attention layers"),
])
def test_misfit_architectures_say_why(model_type, says, tmp_path):
    """Architectures that do not fit: one line that says why and what is possible, from the API and from load."""
    import json

    from micl_probe import load

    with pytest.raises(ValueError, match=says):
        get_adapter(model_type)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(ValueError, match=says) as e:
        load(str(tmp_path))
    assert "\n" not in str(e.value)


def test_module_tree_and_head_counts(family):
    model, _ = cached_tiny(family)
    a = adapter_for(model)
    assert len(a.layers(model)) == a.n_layers(model) == 2
    o = a.o_proj(model, 1)
    assert o.in_features == a.n_heads(model) * a.head_dim(model)
    k = a.attention(model, a.attention_layers(model)[0]).k_proj
    assert k.out_features == a.n_kv_heads(model) * a.head_dim(model) and a.n_kv_heads(model) < a.n_heads(model)
