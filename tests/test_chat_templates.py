"""Prompts through the checkpoints' own chat templates: equal, character for character, to `apply_chat_template`."""

import dataclasses

import pytest

from micl_probe.core import adapter_for, prepare, render
from micl_probe.testing import cached_tiny, noise_episode, tiny_loaded
from micl_probe.testing.templates import CHAT_TEMPLATES, with_template


def _conversation(ep, with_answer):
    """The episode as the messages a user would hand to `apply_chat_template` (written here independently)."""
    messages = []
    for i, d in enumerate(ep.demos):
        lead = [{"type": "text", "text": ep.instruction + "\n"}] if i == 0 and ep.instruction else []
        messages.append({"role": "user", "content": lead + [{"type": "image"}] * len(d.images)
                         + [{"type": "text", "text": d.question}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": d.answer}]})
    lead = [{"type": "text", "text": ep.instruction + "\n"}] if not ep.demos and ep.instruction else []
    messages.append({"role": "user", "content": lead + [{"type": "image"}] * len(ep.query.images)
                     + [{"type": "text", "text": ep.query.question}]})
    if with_answer:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": ep.query.answer}]})
    return messages


@pytest.mark.parametrize("with_answer", [False, True])
@pytest.mark.parametrize("shots", [0, 2])
@pytest.mark.parametrize("name", sorted(CHAT_TEMPLATES))
def test_prompt_is_the_templates_output(name, shots, with_answer):
    model, processor = cached_tiny(CHAT_TEMPLATES[name][0])
    processor = with_template(processor, name)
    ep = dataclasses.replace(noise_episode(shots), instruction="Answer briefly.")
    expected = processor.apply_chat_template(_conversation(ep, with_answer), tokenize=False,
                                             add_generation_prompt=not with_answer)
    assert render(ep, adapter_for(model), with_answer=with_answer, processor=processor).text == expected


def test_published_turn_separators():
    """What the issue saw micl_probe get wrong: the templates' own turn separators and answer prefixes."""
    ep = noise_episode(2)
    text = {name: render(ep, adapter_for(cached_tiny(fam)[0]), processor=with_template(cached_tiny(fam)[1], name)).text
            for name, (fam, _) in CHAT_TEMPLATES.items()}
    assert "ASSISTANT: 12 USER: <image>\nWhat is 4?" in text["llava-1.5"]  # no </s> between turns
    assert "[/INST] 12<\\s> [INST]" in text["llava-next-mistral"]  # the literal text <\s>, not the token </s>
    assert "<|im_start|>assistant \n12<|im_end|><|im_start|>user " in text["llava-onevision"]
    assert text["llava-onevision"].endswith("<|im_start|>assistant\n")
    assert text["qwen2-vl"].startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert "Assistant: 12<end_of_utterance>\nUser:<image>" in text["idefics3"]


def test_declared_format_without_a_template():
    """Processors without a template (the organisms, the tiny models) and `use_template=False` use the ChatFormat."""
    loaded = tiny_loaded("llava")
    ep = noise_episode(1)
    assert loaded.processor.chat_template is None
    plain = prepare(ep, loaded.processor, loaded.adapter).text
    templated = with_template(loaded.processor, "llava-1.5")
    assert prepare(ep, templated, loaded.adapter).text != plain
    assert prepare(ep, templated, loaded.adapter, use_template=False).text == plain
    assert "</s>" in plain and plain.startswith("USER: <image>\n")


def test_template_layout_owners():
    """Template text is owned by its turn: the Qwen system prompt by nobody, each turn's markup by its demo."""
    from micl_probe.core import NONE, QUERY

    model, processor = cached_tiny("qwen2_vl")
    processor = with_template(processor, "qwen2-vl")
    p = prepare(noise_episode(2), processor, adapter_for(model), model=model)
    ids, lay, tok = p.input_ids[0], p.layout, processor.tokenizer
    assert "You are a helpful assistant." in tok.decode(ids[lay.owner == NONE])
    assert tok.decode(ids[lay.positions(owner=1, role="template")]).count("assistant") == 1
    assert tok.decode(ids[lay.positions(owner=QUERY)]).endswith("<|im_start|>assistant\n")
