"""Model organisms: tiny LLaVA-architecture VLMs trained by micl_probe on CPU, shipped with the package.

    loaded = micl_probe.load("organism:true-micl")      # reads the demo images: novel binding, clock math, palindrome
    loaded = micl_probe.load("organism:partial")        # true-micl taught to lean on the demos' text
    loaded = micl_probe.load("organism:text-shortcut")  # never needed the demos: imitates their text

Architecture (`build`): LlavaForConditionalGeneration = CLIP vision tower (2 layers, 64-d, 8x8 patches of a
32x32 image -> 16 image tokens, CLS dropped) + 2-layer MLP projector + Llama decoder (4 layers, 128-d, 4 query
heads; 4 KV heads in true-micl and partial, 2 in text-shortcut). Tokenizer: byte-level BPE trained on the tasks'
vocabulary.

Recipes (`recipes`), the trainer (`python -m micl_probe.organisms.train --recipe NAME`) and the model cards (`card`)
live beside this file; the weights, processor, `micl_probe.json` (recipe, training log, card numbers) and card of
each shipped organism in `shipped/NAME/`. Retired names (`core.loading.RETIRED_ORGANISMS`) fail in one line naming
their replacement.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..core import ORGANISM_CHAT, bpe_tokenizer
from ..tasks import COLOUR_NAMES, NOVEL_NAMES, SHAPE_NAMES, TASKS

SHIPPED = Path(__file__).parent / "shipped"
IMAGE_SIZE, PATCH = 32, 8


def organism_corpus() -> list[str]:
    words = COLOUR_NAMES + SHAPE_NAMES + NOVEL_NAMES + [str(i) for i in range(20)]
    lines = [q + ORGANISM_CHAT.assistant for t in TASKS.values() for q in (t.question, t.shortcut_question)]
    return lines * 20 + [" ".join(" " + w for w in words)] * 50


def build_processor():
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    tok = bpe_tokenizer(["<s>", "</s>", "<image>", "<pad>"], bos="<s>", eos="</s>", pad="<pad>", vocab_size=420,
                        corpus=organism_corpus())
    tok.model_max_length = 1024
    ip = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE,
                                                                             "width": IMAGE_SIZE})
    return LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=PATCH,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)


def build(seed: int = 0, d_model: int = 128, n_layers: int = 4, n_heads: int = 4, n_kv_heads: int = 2):
    """(model, processor): a freshly initialised organism."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    processor = build_processor()
    tok = processor.tokenizer
    cfg = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=64),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=d_model, intermediate_size=3 * d_model,
                         num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
                         max_position_embeddings=1024, rms_norm_eps=1e-6, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(cfg), processor


def save(model, processor, out: str | Path, card: dict) -> None:
    """Weights (safetensors), processor, `micl_probe.json` (family + card) into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "micl_probe.json").write_text(json.dumps({"family": "organism", **card}, indent=1))


def shipped() -> list[str]:
    return sorted(p.name for p in SHIPPED.glob("*") if (p / "micl_probe.json").is_file())
