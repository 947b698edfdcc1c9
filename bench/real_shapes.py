"""Benchmark: every family at a published checkpoint's real shapes, on one MICL episode of 640x480 images.

    python bench/real_shapes.py [--families qwen2_vl gemma3] [--max-tokens 4096] [--repeats 1]

For one published checkpoint per family, a random-weight model with that checkpoint's attention shapes (hidden size,
query heads, KV heads, head dim), its vision tower's width, heads and patch size, and its image processor's settings
(the facts of its config.json / preprocessor_config.json, written below). Cut to fit two CPU cores, and said so: the
decoder has 2 layers, the vision tower 1, the MLP width equals the hidden size, the vocabulary is a small BPE one
(none of these enters the attention pattern). The episode: 8 demos + a query, each one 640x480 image; a family whose
images take so many tokens that the prompt would pass --max-tokens runs with fewer demos (the table says how many).

Per family: image tokens per 640x480 image, the count at the checkpoint's reference size against the published one
(e.g. Qwen2-VL at 448x448 -> 256), prompt length, capture_attention (nnsight) time / plain forward time, and the peak
extra memory (RSS) of capture and of HF `output_attentions`, each method in its own process. Time it on an idle
machine. The last line is the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import torch
from PIL import Image
from timing import best_and_peak

W, H = 640, 480
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                 "<|video_pad|>"]


def _tok(specials, bos, eos, pad=None):
    from micl_probe.testing import tiny_tokenizer
    return tiny_tokenizer(specials, bos=bos, eos=eos, pad=pad)


def _text(tok, hidden, heads, kv, head_dim=None, model_type=None, **kw):
    cfg = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden, num_hidden_layers=2,
               num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=32768,
               eos_token_id=tok.eos_token_id, **kw)
    if head_dim:
        cfg["head_dim"] = head_dim
    return cfg | ({"model_type": model_type} if model_type else {})


def llava():  # llava-hf/llava-1.5-7b-hf: Llama-2-7B decoder, CLIP ViT-L/14 at 336 px
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    tok = _tok(["<s>", "</s>", "<image>"], "<s>", "</s>")
    cfg = LlavaConfig(vision_config=dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                                         num_hidden_layers=1, num_attention_heads=16, image_size=336, patch_size=14,
                                         projection_dim=768),
                      text_config=_text(tok, 4096, 32, 32, model_type="llama"),
                      image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                      vision_feature_select_strategy="default")
    ip = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    return LlavaForConditionalGeneration(cfg), LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14,
                                                              vision_feature_select_strategy="default",
                                                              num_additional_image_tokens=1)


def llava_next():  # llava-hf/llava-v1.6-mistral-7b-hf: Mistral-7B decoder, CLIP ViT-L/14-336, anyres
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
    tok = _tok(["<s>", "</s>", "<image>"], "<s>", "</s>")
    pins = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    cfg = LlavaNextConfig(vision_config=dict(model_type="clip_vision_model", hidden_size=1024,
                                             intermediate_size=4096, num_hidden_layers=1, num_attention_heads=16,
                                             image_size=336, patch_size=14, projection_dim=768),
                          text_config=_text(tok, 4096, 32, 8, model_type="mistral"), image_grid_pinpoints=pins,
                          image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                          vision_feature_select_strategy="default")
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                    image_grid_pinpoints=pins)
    return LlavaNextForConditionalGeneration(cfg), LlavaNextProcessor(
        image_processor=ip, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
        num_additional_image_tokens=1)


def llava_onevision():  # llava-hf/llava-onevision-qwen2-0.5b-ov-hf: Qwen2-0.5B, SigLIP so400m/14 at 384, anyres_max_9
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    from micl_probe.core import image_only
    tok = _tok(QWEN_SPECIALS + ["<image>", "<video>"], None, "<|im_end|>", "<|endoftext|>")
    pins = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]
    cfg = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304,
                           num_hidden_layers=1, num_attention_heads=16, image_size=384, patch_size=14),
        text_config=_text(tok, 896, 14, 2, model_type="qwen2"), image_grid_pinpoints=pins,
        image_token_index=tok.convert_tokens_to_ids("<image>"), video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1, vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9")
    ip = LlavaOnevisionImageProcessorPil(size={"height": 384, "width": 384}, image_grid_pinpoints=pins)
    return LlavaOnevisionForConditionalGeneration(cfg), image_only(LlavaOnevisionProcessor)(
        image_processor=ip, tokenizer=tok, patch_size=14, vision_feature_select_strategy="full", num_image_tokens=729,
        vision_aspect_ratio="anyres_max_9")


def _qwen_vl(version):  # Qwen/Qwen2-VL-7B-Instruct, Qwen/Qwen2.5-VL-7B-Instruct, Qwen/Qwen3-VL-8B-Instruct, -30B-A3B
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from micl_probe.core import image_only
    tok = _tok(QWEN_SPECIALS, None, "<|im_end|>", "<|endoftext|>")
    ids = dict(zip(["image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"],
                   (tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                                           "<|vision_end|>"))))
    patch = 16 if version.startswith("3") else 14
    ip = Qwen2VLImageProcessorPil(patch_size=patch, merge_size=2, temporal_patch_size=2,
                                  size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280})
    if version == "2":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
        text = _text(tok, 3584, 28, 4, rope_parameters=dict(rope_type="default", mrope_section=[16, 24, 24],
                                                            rope_theta=1e6))
        model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(
            vision_config=dict(depth=1, embed_dim=1280, hidden_size=3584, num_heads=16, patch_size=14,
                               spatial_merge_size=2, temporal_patch_size=2), text_config=text, **ids))
        return model, image_only(Qwen2VLProcessor)(image_processor=ip, tokenizer=tok)
    if version == "2.5":
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLProcessor
        text = _text(tok, 3584, 28, 4, rope_parameters=dict(rope_type="default", mrope_section=[16, 24, 24],
                                                            rope_theta=1e6))
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
            vision_config=dict(depth=1, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                               spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=3584, window_size=112,
                               fullatt_block_indexes=[0]), text_config=text, **ids))
        return model, image_only(Qwen2VLProcessor)(image_processor=ip, tokenizer=tok)
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    moe = version == "3-moe"
    text = _text(tok, 2048 if moe else 4096, 32, 4 if moe else 8, head_dim=128,
                 rope_parameters=dict(rope_type="default", mrope_section=[24, 20, 20], rope_theta=5e6,
                                      mrope_interleaved=True))
    if moe:
        text.update(num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768, decoder_sparse_step=1)
    vision = dict(depth=1, hidden_size=1152, intermediate_size=4304, num_heads=16, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=text["hidden_size"],
                  num_position_embeddings=2304, deepstack_visual_indexes=[0])
    if moe:
        from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration
        model = Qwen3VLMoeForConditionalGeneration(Qwen3VLMoeConfig(text_config=text, vision_config=vision, **ids))
    else:
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
        model = Qwen3VLForConditionalGeneration(Qwen3VLConfig(text_config=text, vision_config=vision, **ids))
    return model, image_only(Qwen3VLProcessor)(image_processor=ip, tokenizer=tok)


def qwen3_5():  # Qwen/Qwen3.5-27B: 5120-d, 24 heads, 4 KV heads, head dim 256, rotary on a quarter of it (theta 1e7),
    # 3 Gated DeltaNet layers to 1 full-attention one (here: one of each; only the full one is measured); vision as
    # transformers' Qwen3.5 defaults (1152-d, 16 heads, patch 16, 2x2 merge). Linear-attention widths: the defaults.
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    from micl_probe.core import image_only
    tok = _tok(QWEN_SPECIALS, None, "<|im_end|>", "<|endoftext|>")
    ids = dict(zip(["image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"],
                   (tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                                           "<|vision_end|>"))))
    text = _text(tok, 5120, 24, 4, head_dim=256, layer_types=["linear_attention", "full_attention"],
                 rope_parameters=dict(rope_type="default", mrope_section=[11, 11, 10], rope_theta=1e7,
                                      mrope_interleaved=True, partial_rotary_factor=0.25))
    vision = dict(depth=1, hidden_size=1152, intermediate_size=4304, num_heads=16, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=5120, num_position_embeddings=2304)
    ip = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2,
                                  size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280})
    model = Qwen3_5ForConditionalGeneration(Qwen3_5Config(text_config=text, vision_config=vision, **ids))
    return model, image_only(Qwen3VLProcessor)(image_processor=ip, tokenizer=tok)


def gemma3():  # google/gemma-3-4b-it: 2560-d, 8 heads, 4 KV heads, head dim 256; SigLIP/14 at 896, 256 tokens an image
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
    from transformers.models.gemma3.processing_gemma3 import Gemma3Processor
    tok = _tok(["<bos>", "<eos>", "<pad>", "<start_of_image>", "<end_of_image>", "<image_soft_token>",
                "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>", "<pad>")
    for name, token in (("boi_token", "<start_of_image>"), ("eoi_token", "<end_of_image>"),
                        ("image_token", "<image_soft_token>")):
        setattr(tok, name, token)
        setattr(tok, name + "_id", tok.convert_tokens_to_ids(token))
    text = _text(tok, 2560, 8, 4, head_dim=256, query_pre_attn_scalar=256, sliding_window=1024,
                 layer_types=["sliding_attention", "full_attention"])
    cfg = Gemma3Config(vision_config=dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304,
                                          num_hidden_layers=1, num_attention_heads=16, image_size=896, patch_size=14),
                       text_config=text, mm_tokens_per_image=256, boi_token_index=tok.boi_token_id,
                       eoi_token_index=tok.eoi_token_id, image_token_index=tok.image_token_id)
    ip = Gemma3ImageProcessorPil(size={"height": 896, "width": 896}, do_pan_and_scan=False)
    return Gemma3ForConditionalGeneration(cfg), Gemma3Processor(image_processor=ip, tokenizer=tok,
                                                                image_seq_length=256)


def internvl():  # OpenGVLab/InternVL3-1B-hf: Qwen2.5-0.5B decoder, InternViT-300M/14 at 448, up to 12 tiles + thumbnail
    from transformers import InternVLConfig, InternVLForConditionalGeneration
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
    from transformers.models.internvl.processing_internvl import InternVLProcessor

    from micl_probe.core import image_only
    tok = _tok(QWEN_SPECIALS + ["<img>", "</img>", "<IMG_CONTEXT>", "<video>"], None, "<|im_end|>", "<|endoftext|>")
    for name, token in (("start_image_token", "<img>"), ("end_image_token", "</img>"),
                        ("context_image_token", "<IMG_CONTEXT>"), ("video_token", "<video>")):
        setattr(tok, name, token)
        setattr(tok, name + "_id", tok.convert_tokens_to_ids(token))
    cfg = InternVLConfig(vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=1,
                                            num_attention_heads=16, image_size=[448, 448], patch_size=[14, 14]),
                         text_config=_text(tok, 896, 14, 2, model_type="qwen2"),
                         image_token_id=tok.context_image_token_id, image_seq_length=256, downsample_ratio=0.5)
    ip = GotOcr2ImageProcessorPil(size={"height": 448, "width": 448}, crop_to_patches=True, min_patches=1,
                                  max_patches=12)
    return InternVLForConditionalGeneration(cfg), image_only(InternVLProcessor)(image_processor=ip, tokenizer=tok,
                                                                                image_seq_length=256)


def idefics2():  # HuggingFaceM4/idefics2-8b: Mistral-7B decoder, SigLIP so400m/14 at 980, perceiver: 64 latents
    from transformers import Idefics2Config, Idefics2ForConditionalGeneration, Idefics2Processor
    from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil
    tok = _tok(["<s>", "</s>", "<unk>", "<image>", "<fake_token_around_image>", "<end_of_utterance>"], "<s>", "</s>",
               "<unk>")
    cfg = Idefics2Config(vision_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=1,
                                            num_attention_heads=16, image_size=980, patch_size=14),
                         perceiver_config=dict(hidden_size=4096, resampler_n_latents=64, resampler_depth=1,
                                               resampler_n_heads=16, resampler_head_dim=96, num_key_value_heads=4),
                         text_config=_text(tok, 4096, 32, 8, model_type="mistral", pad_token_id=tok.pad_token_id),
                         image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id)
    ip = Idefics2ImageProcessorPil(size={"shortest_edge": 378, "longest_edge": 980}, do_image_splitting=False)
    return Idefics2ForConditionalGeneration(cfg), Idefics2Processor(image_processor=ip, tokenizer=tok,
                                                                    image_seq_len=64)


def smolvlm():  # HuggingFaceTB/SmolVLM2-2.2B-Instruct: SmolLM2-1.7B decoder, SigLIP so400m/14 at 384, 81 tokens a tile
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMProcessor
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    from micl_probe.core import image_only
    specials = ["<|im_start|>", "<|begin_of_text|>", "<|end_of_text|>", "<end_of_utterance>",
                "<fake_token_around_image>", "<image>", "<global-img>"] + \
        [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tok = _tok(specials, "<|im_start|>", "<end_of_utterance>", "<|end_of_text|>")
    cfg = SmolVLMConfig(vision_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=1,
                                           num_attention_heads=16, image_size=384, patch_size=14),
                        text_config=_text(tok, 2048, 32, 32, model_type="llama", pad_token_id=tok.pad_token_id),
                        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=3,
                        pad_token_id=tok.pad_token_id)
    ip = SmolVLMImageProcessorPil(size={"longest_edge": 1536}, max_image_size={"longest_edge": 384},
                                  do_image_splitting=True)
    return SmolVLMForConditionalGeneration(cfg), image_only(SmolVLMProcessor)(image_processor=ip, tokenizer=tok,
                                                                              video_processor=None, image_seq_len=81)


def glm4v():  # THUDM/GLM-4.1V-9B-Thinking: 4096-d, 32 heads, 2 KV heads; ViT/14 1536-d, 2x2 merge
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil
    from transformers.models.glm4v.processing_glm4v import Glm4vProcessor

    from micl_probe.core import image_only
    names = ["<|image|>", "<|video|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
             "<|end_of_video|>"]
    tok = _tok(["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>"] + names, None,
               "<|endoftext|>")
    ids = dict(zip(["image_token_id", "video_token_id", "image_start_token_id", "image_end_token_id",
                    "video_start_token_id", "video_end_token_id"], (tok.convert_tokens_to_ids(n) for n in names)))
    text = _text(tok, 4096, 32, 2, head_dim=128, partial_rotary_factor=0.5,
                 rope_parameters=dict(rope_type="default", mrope_section=[8, 12, 12], rope_theta=10000.0))
    vision = dict(depth=1, hidden_size=1536, intermediate_size=13696, num_heads=12, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=4096, image_size=336)
    ip = Glm4vImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                size={"shortest_edge": 112 * 112, "longest_edge": 28 * 28 * 15000})
    return Glm4vForConditionalGeneration(Glm4vConfig(text_config=text, vision_config=vision, **ids)), \
        image_only(Glm4vProcessor)(image_processor=ip, tokenizer=tok)


def mistral3():  # mistralai/Mistral-Small-3.1-24B-Instruct-2503: 5120-d, 32 heads, 8 KV, head dim 128; Pixtral/14
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    from micl_probe.testing.tiny import _pixtral_processor
    tok = _tok(["<s>", "</s>", "<unk>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"], "<s>", "</s>",
               "<unk>")
    cfg = Mistral3Config(vision_config=dict(model_type="pixtral", hidden_size=1024, intermediate_size=4096,
                                            num_hidden_layers=1, num_attention_heads=16, head_dim=64,
                                            image_size=1540, patch_size=14),
                         text_config=_text(tok, 5120, 32, 8, head_dim=128, model_type="mistral"),
                         image_token_index=tok.convert_tokens_to_ids("[IMG]"), spatial_merge_size=2,
                         vision_feature_layer=-1)
    ip = PixtralImageProcessorPil(size={"longest_edge": 1540}, patch_size={"height": 14, "width": 14})
    return Mistral3ForConditionalGeneration(cfg), _pixtral_processor(ip, tok, 14, 2)


# family -> (checkpoint, builder, reference image size (w, h), published image-token count there or None)
FAMILIES = {
    "llava": ("llava-hf/llava-1.5-7b-hf", llava, (336, 336), 576),
    "llava_next": ("llava-hf/llava-v1.6-mistral-7b-hf", llava_next, (336, 336), None),
    "llava_onevision": ("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", llava_onevision, (384, 384), None),
    "qwen2_vl": ("Qwen/Qwen2-VL-7B-Instruct", lambda: _qwen_vl("2"), (448, 448), 256),
    "qwen2_5_vl": ("Qwen/Qwen2.5-VL-7B-Instruct", lambda: _qwen_vl("2.5"), (448, 448), 256),
    "qwen3_vl": ("Qwen/Qwen3-VL-8B-Instruct", lambda: _qwen_vl("3"), (512, 512), 256),
    "qwen3_vl_moe": ("Qwen/Qwen3-VL-30B-A3B-Instruct", lambda: _qwen_vl("3-moe"), (512, 512), 256),
    "qwen3_5": ("Qwen/Qwen3.5-27B", qwen3_5, (512, 512), 256),
    "gemma3": ("google/gemma-3-4b-it", gemma3, (896, 896), 256),
    "internvl": ("OpenGVLab/InternVL3-1B-hf", internvl, (448, 448), 256),
    "idefics2": ("HuggingFaceM4/idefics2-8b", idefics2, (980, 980), 64),
    "smolvlm": ("HuggingFaceTB/SmolVLM2-2.2B-Instruct", smolvlm, (384, 384), 81),
    "glm4v": ("THUDM/GLM-4.1V-9B-Thinking", glm4v, (448, 448), 256),
    "mistral3": ("mistralai/Mistral-Small-3.1-24B-Instruct-2503", mistral3, (448, 448), 256),
}


# SmolVLM2's processor upscales every image to 4 x 384 px and splits it into 384-px tiles (+ a global image), so its
# published count (81 tokens) is per tile: measured with splitting off, on one 384-px tile
PER_TILE = {"smolvlm"}


def episode(n_demos: int, size=(W, H), seed=0):
    from micl_probe import Demo, Episode, Query
    rng = np.random.default_rng(seed)
    img = lambda: Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))  # noqa: E731
    return Episode(tuple(Demo((img(),), f"What is {i}?", str(i)) for i in range(n_demos)),
                   Query((img(),), "What is it?", "9"), task="bench")


def one_pass(loaded, batch, method: str) -> None:
    """One pass of `batch` by `method`: "forward" (sdpa), "output_attentions" (HF eager) or "capture" (nnsight)."""
    from micl_probe import capture_attention

    with torch.no_grad():
        if method == "forward":
            loaded.model(**batch.inputs)
        elif method == "output_attentions":
            loaded.model.set_attn_implementation("eager")
            loaded.model(**batch.inputs, output_attentions=True)
            loaded.model.set_attn_implementation("sdpa")
        else:
            capture_attention(loaded, batch, progress=False)


def worker(family: str, method: str, max_tokens: int, repeats: int):
    from micl_probe import Loaded
    from micl_probe.core import adapter_for

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    torch.manual_seed(0)
    _, build, ref_size, _ = FAMILIES[family]
    model, processor = build()
    model.eval()
    loaded = Loaded(model, processor, adapter_for(model), name=family)
    if family in PER_TILE:
        processor.image_processor.do_image_splitting = False
    one = loaded.prepare(episode(0, ref_size))
    if family in PER_TILE:
        processor.image_processor.do_image_splitting = True
    ref_tokens = one.layout.positions(role="image").numel()
    per_image = loaded.prepare(episode(0)).layout.positions(role="image").numel()
    demos = 8
    while demos and len(loaded.prepare(episode(demos)).layout) > max_tokens:
        demos -= 1
    prepared = loaded.prepare_batch([episode(demos)])

    seconds, peak = best_and_peak(lambda: one_pass(loaded, prepared, method), repeats)
    print(json.dumps({"seconds": seconds, "peak_extra_mb": peak, "seq": len(prepared.layouts[0]),
                      "demos": demos, "per_image": per_image, "ref_tokens": ref_tokens}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--max-tokens", type=int, default=2048, help="fewer demos where the prompt would be longer")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(*args.worker, args.max_tokens, args.repeats)
    print(f"{W}x{H} images; decoder 2 layers, vision tower 1, MLP width = hidden size; "
          f"threads={os.environ.get('BENCH_THREADS', '2')}", flush=True)
    head = (f"{'family':16s} {'checkpoint':46s} {'tok/img':>7s} {'reference':>18s} {'demos':>5s} {'prompt':>6s} "
            f"{'capture/fwd':>11s} {'capture MB':>10s} {'eager MB':>9s} {'eager/capture':>13s}")
    print(head + "\n" + "-" * len(head), flush=True)
    ratios, ok = [], 0
    for family in args.families:
        runs = {}
        for method in ("forward", "capture", "output_attentions"):
            out = subprocess.run([sys.executable, __file__, "--worker", family, method, "--max-tokens",
                                  str(args.max_tokens), "--repeats", str(args.repeats)], capture_output=True, text=True)
            line = [x for x in out.stdout.splitlines() if x.startswith("{")]
            runs[method] = json.loads(line[-1]) if line and not out.returncode else None
            if runs[method] is None:
                runs[method + "_error"] = (out.stderr.strip().splitlines() or ["?"])[-1][:100]
        fwd, cap, eag = runs["forward"], runs["capture"], runs["output_attentions"]
        checkpoint, _, ref_size, published = FAMILIES[family]
        if fwd is None or cap is None:
            print(f"{family:16s} {checkpoint:46s} failed: {runs.get('forward_error') or runs.get('capture_error')}")
            continue
        match = "" if published is None else " = pub" if cap["ref_tokens"] == published else f" != {published}"
        ref = f"{cap['ref_tokens']}@{ref_size[0]}{'/tile' if family in PER_TILE else ''}{match}"
        ok += published is None or cap["ref_tokens"] == published
        ratio = cap["seconds"] / fwd["seconds"]
        ratios.append(ratio)
        eager = f"{eag['peak_extra_mb']:9.0f}" if eag else f"{'failed':>9s}"
        mem = f"{eag['peak_extra_mb'] / max(cap['peak_extra_mb'], 1):13.1f}" if eag else f"{'-':>13s}"
        print(f"{family:16s} {checkpoint:46s} {cap['per_image']:7d} {ref:>18s} {cap['demos']:5d} {cap['seq']:6d} "
              f"{ratio:11.2f} {cap['peak_extra_mb']:10.0f} {eager} {mem}", flush=True)
    print(f"summary: {len(ratios)}/{len(args.families)} families ran; image-token counts match the published ones "
          f"for {ok} of them (n/a counts as a match); capture / forward median {np.median(ratios):.2f} "
          f"(max {max(ratios):.2f})" if ratios else "summary: nothing ran")


if __name__ == "__main__":
    main()
