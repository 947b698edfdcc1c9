"""The chat templates published with real checkpoints (their `chat_template.json` / tokenizer_config.json), as data.

The tiny test processors carry no template; attach one of these to test prompts exactly as the checkpoint's
processor writes them:

    processor = with_template(tiny_loaded("llava").processor, "llava-1.5")
    processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)

name -> (family of the tiny model that plays the checkpoint, template). Sources: llava-hf/llava-1.5-7b-hf and
llava-hf/llava-v1.6-vicuna-7b-hf (same template), llava-hf/llava-v1.6-mistral-7b-hf (its assistant turn ends with the
literal text `<\\s> `, not the `</s>` token), llava-hf/llava-onevision-qwen2-*-ov-hf (note the space after the role),
Qwen/Qwen2-VL-*-Instruct and Qwen/Qwen2.5-VL-*-Instruct (default system prompt), HuggingFaceM4/Idefics3-8B-Llama3,
google/gemma-3-*-it (its template writes <bos> itself; copy: transformers'
tests/models/gemma3/test_processing_gemma3.py),
zai-org/GLM-4.1V-9B-Thinking (prints an assistant turn's content as it is: a string, never a list of parts; copy:
the "official_chat_template" recorded for Glm4vProcessor in a public renderer-snapshot fixture; the same text is in
sglang's test_jinja_template_utils.py), HuggingFaceTB/SmolVLM-Instruct and SmolVLM2 (+ a video branch; copies:
transformers' tests/models/smolvlm/test_processing_smolvlm.py and processing_smolvlm.py's DEFAULT_CHAT_TEMPLATE; its
generation prompt "Assistant:" has no trailing space, so the answer's space is the answer's); in chat_templates/:
HuggingFaceM4/idefics2-8b (its processor_config.json, quoted in several public fine-tuning scripts),
Qwen/Qwen3-VL-*-Instruct (and its MoE) and Qwen/Qwen3.5-* (a thinking template: its generation prompt opens
"<think>\n", and a final assistant turn is written after an empty think block), copied from a public collection of
GGUF-embedded templates (the same Jinja the checkpoints' chat_template.json carries).
"""

from __future__ import annotations

import copy
from pathlib import Path

_LLAVA = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
_LLAVA_NEXT_MISTRAL = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}{% elif message['role'] == 'user' %}"
    "{{ '[INST] ' }}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{{' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'][0]['text'] + '<\\\\s> '}}{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
_ONEVISION = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_QWEN2_VL = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_IDEFICS3 = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
_GEMMA3 = (
    "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n{%- endif -%}\n{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n        {%- endfor -%}\n    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n    {%- endif -%}\n    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n{%- if add_generation_prompt -%}\n    {{'<start_of_turn>model\n'}}\n{%- endif -%}\n"
)
_GLM4V = (
    "[gMASK]<sop>\n{%- for msg in messages %}\n    {%- if msg.role == 'system' %}\n<|system|>\n{{ msg.content }}\n"
    "    {%- elif msg.role == 'user' %}\n<|user|>{{ '\\n' }}\n\n        {%- if msg.content is string %}\n"
    "{{ msg.content }}\n        {%- else %}\n            {%- for item in msg.content %}\n"
    "                {%- if item.type == 'video' or 'video' in item %}\n<|begin_of_video|><|video|><|end_of_video|>\n"
    "                {%- elif item.type == 'image' or 'image' in item %}\n<|begin_of_image|><|image|><|end_of_image|>\n"
    "                {%- elif item.type == 'text' %}\n{{ item.text }}\n                {%- endif %}\n"
    "            {%- endfor %}\n        {%- endif %}\n    {%- elif msg.role == 'assistant' %}\n"
    "        {%- if msg.metadata %}\n<|assistant|>{{ msg.metadata }}\n{{ msg.content }}\n        {%- else %}\n"
    "<|assistant|>\n{{ msg.content }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
_SMOLVLM = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
_SMOLVLM2 = _SMOLVLM.replace(
    "{% endif %}{% endfor %}<end_of_utterance>",
    "{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}{% endfor %}<end_of_utterance>")

CHAT_TEMPLATES: dict[str, tuple[str, str]] = {
    "llava-1.5": ("llava", _LLAVA),
    "llava-next-vicuna": ("llava_next", _LLAVA),
    "llava-next-mistral": ("llava_next", _LLAVA_NEXT_MISTRAL),
    "llava-onevision": ("llava_onevision", _ONEVISION),
    "qwen2-vl": ("qwen2_vl", _QWEN2_VL),
    "qwen2.5-vl": ("qwen2_5_vl", _QWEN2_VL),
    "idefics3": ("idefics3", _IDEFICS3),
    "gemma-3": ("gemma3", _GEMMA3),
    "glm-4.1v": ("glm4v", _GLM4V),
    "smolvlm": ("smolvlm", _SMOLVLM),
    "smolvlm2": ("smolvlm", _SMOLVLM2),
}
# the longer ones as files beside this module (chat_templates/NAME.jinja)
_FILES = {"idefics2": "idefics2", "qwen3-vl": "qwen3_vl", "qwen3-vl-moe": "qwen3_vl_moe", "qwen3.5": "qwen3_5",
          "qwen3.5-moe": "qwen3_5_moe"}
for _name, _family in _FILES.items():
    CHAT_TEMPLATES[_name] = (_family, (Path(__file__).parent / "chat_templates" /
                                       f"{_name.removesuffix('-moe')}.jinja").read_text())


def with_template(processor, name: str):
    """A shallow copy of `processor` carrying the published chat template `name` (see CHAT_TEMPLATES)."""
    p = copy.copy(processor)
    p.chat_template = CHAT_TEMPLATES[name][1]
    return p
