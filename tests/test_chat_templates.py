"""Prompts through the checkpoints' own chat templates: equal, character for character, to `apply_chat_template`."""

import dataclasses

import pytest

from micl_probe.core import adapter_for, prepare, render
from micl_probe.testing import cached_tiny, noise_episode, tiny_loaded
from micl_probe.testing.templates import CHAT_TEMPLATES, with_template


def _conversation(ep, with_answer, string_assistant=False):
    """The episode as the messages a user would hand to `apply_chat_template` (written here independently);
    `string_assistant`: answers as plain strings (a template that prints the content as it stands)."""
    messages = []
    for i, d in enumerate(ep.demos):
        lead = [{"type": "text", "text": ep.instruction + "\n"}] if i == 0 and ep.instruction else []
        messages.append({"role": "user", "content": lead + [{"type": "image"}] * len(d.images)
                         + [{"type": "text", "text": d.question}]})
        messages.append({"role": "assistant", "content": d.answer if string_assistant
                         else [{"type": "text", "text": d.answer}]})
    lead = [{"type": "text", "text": ep.instruction + "\n"}] if not ep.demos and ep.instruction else []
    messages.append({"role": "user", "content": lead + [{"type": "image"}] * len(ep.query.images)
                     + [{"type": "text", "text": ep.query.question}]})
    if with_answer:
        messages.append({"role": "assistant", "content": ep.query.answer if string_assistant
                         else [{"type": "text", "text": ep.query.answer}]})
    return messages


def _checkpoint_flow(ep, with_answer: bool, processor, system: str = "") -> list[int]:
    """The prompt's ids as a user of the checkpoint gets them: the conversation (images inline) through
    `apply_chat_template(tokenize=True)`, assistant turns written as the template reads them (a plain string where it
    prints the content as it stands: GLM-4.1V)."""
    string_assistant = "msg.content }}" in processor.chat_template  # GLM-4.1V's `{{ msg.content }}`
    turns = [x for d in ep.demos for x in (("user", d.images, d.question), ("assistant", (), d.answer))]
    turns += [("user", ep.query.images, ep.query.question)]
    turns += [("assistant", (), ep.query.answer)] if with_answer else []
    turns = ([("system", (), system)] if system else []) + turns
    messages = []
    for role, images, text in turns:
        content = [{"type": "image", "image": im} for im in images] + [{"type": "text", "text": text}]
        plain = role in ("assistant", "system") and string_assistant
        messages.append({"role": role, "content": text if plain else content})
    out = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt",
                                        add_generation_prompt=not with_answer)
    return out["input_ids"][0].tolist()


@pytest.mark.parametrize("with_answer", [False, True])
@pytest.mark.parametrize("shots", [0, 2])
@pytest.mark.parametrize("name", sorted(CHAT_TEMPLATES))
def test_prompt_ids_are_the_checkpoints_own(name, shots, with_answer):
    """Token ids, not only text: BOS once (Gemma 3 and Idefics3 write it in the template), assistant turns as the
    template reads them (GLM-4.1V), images passed as the processor groups them (LLaVA-OneVision's multi-image
    mode), with and without a system message."""
    model, processor = cached_tiny(CHAT_TEMPLATES[name][0])
    processor = with_template(processor, name)
    for system in ("", "Answer with one word."):  # a system message: the template's own system turn
        ep = dataclasses.replace(noise_episode(shots), system=system)
        ours = prepare(ep, processor, adapter_for(model), model=model, with_answer=with_answer)
        assert ours.inputs["input_ids"][0].tolist() == _checkpoint_flow(ep, with_answer, processor, system)
        assert "'type'" not in ours.text  # no part list printed as text
        assert not system or ours.layout.segments()["none.template"].numel() > 3  # the system text: nobody's


@pytest.mark.parametrize("with_answer", [False, True])
@pytest.mark.parametrize("shots", [0, 2])
@pytest.mark.parametrize("name", sorted(CHAT_TEMPLATES))
def test_prompt_is_the_templates_output(name, shots, with_answer):
    model, processor = cached_tiny(CHAT_TEMPLATES[name][0])
    processor = with_template(processor, name)
    ep = dataclasses.replace(noise_episode(shots), instruction="Answer briefly.")
    string_assistant = "msg.content }}" in processor.chat_template
    expected = processor.apply_chat_template(_conversation(ep, with_answer, string_assistant), tokenize=False,
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


@pytest.mark.parametrize("name", sorted(CHAT_TEMPLATES))
def test_the_separator_belongs_to_the_answer_in_both_paths(name):
    """An answer whose leading space is a token of its own ("zq" -> ' ', 'z', 'q' here): the template path and the
    declared format both count the space as the answer's (it is what the model emits first), so teacher forcing
    scores it and the answer position is the token before it in both."""
    model, processor = cached_tiny(CHAT_TEMPLATES[name][0])
    processor = with_template(processor, name)
    base = noise_episode(2)
    ep = dataclasses.replace(base, query=dataclasses.replace(base.query, answer="zq"))
    tok = processor.tokenizer
    answers = []
    for use_template in (True, False):
        p = prepare(ep, processor, adapter_for(model), model=model, with_answer=True, use_template=use_template)
        ids = p.inputs["input_ids"][0]
        answer = [tok.decode([int(i)]) for i in ids[p.layout.query_answer_positions()]]
        assert "".join(answer).strip() == "zq" and p.layout.answer_position == p.layout.query_answer_positions()[0] - 1
        answers.append(answer)
    assert answers[0] == answers[1], f"template {answers[0]} vs declared {answers[1]}"


@pytest.mark.parametrize("name", sorted(CHAT_TEMPLATES))
def test_single_style_keeps_images_beside_their_question_or_says_why_not(name):
    model, processor = cached_tiny(CHAT_TEMPLATES[name][0])
    processor = with_template(processor, name)
    ep = noise_episode(2).with_style("single")
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prompt = render(ep, adapter_for(model), processor=processor)
    owners = [p.owner if p.owner >= 0 else 99 for p in prompt.pieces if p.kind in ("image", "question")]
    in_order = owners == sorted(owners)
    assert in_order != any("before its text" in str(w.message) for w in caught)  # in order, or a warning says so


def test_a_system_message_needs_a_template():
    model, processor = cached_tiny("llava")
    ep = dataclasses.replace(noise_episode(1), system="Be brief.")
    with pytest.raises(ValueError, match="system message needs the processor's chat template"):
        render(ep, adapter_for(model), processor=None)
