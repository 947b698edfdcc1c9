"""Tiny, randomly initialised models of the real VLM architectures, built offline.

Nothing here downloads: configs are written in code, tokenizers are trained in a
fraction of a second with the `tokenizers` library on a small corpus and carry each
family's real special tokens, and processors are assembled from the families' own
(PIL-backend) image processors. These models prove the *plumbing* (prompt building,
token layout, hooks); the shipped organisms prove the science.

    model, processor = tiny_model("qwen2_vl")
"""

from __future__ import annotations

import torch

from ..core.processors import bpe_tokenizer
from ..core.processors import image_only as _image_only

CORPUS = [
    "What is the answer? The answer is the number. Which colour is the odd one out?",
    "red blue green yellow purple orange circle square triangle star cross how many",
    "USER: ASSISTANT: User: Assistant: user assistant system You are a helpful assistant.",
    "Question: Answer: What is shown? dax wug blicket toma fep zup",
    " ".join(str(i) for i in range(200)),
]

# Special tokens per family (the real names, so the families' processors find them).
_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
_IDEFICS3_SPECIALS = (["<|begin_of_text|>", "<|end_of_text|>", "<end_of_utterance>", "<fake_token_around_image>",
                       "<image>", "<global-img>"]
                      + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)])


def tiny_tokenizer(specials: list[str], bos: str | None, eos: str, pad: str | None = None):
    """A byte-level BPE tokenizer on `CORPUS` with `specials` as special tokens."""
    return bpe_tokenizer(specials, bos=bos, eos=eos, pad=pad, corpus=CORPUS)


def _llama_text(vocab: int, **kw) -> dict:
    cfg = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6)
    return {**cfg, **kw}


def _vision(model_type: str | None, image_size: int, patch: int, **kw) -> dict:
    cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
               image_size=image_size, patch_size=patch, **kw)
    return {**cfg, "model_type": model_type} if model_type else cfg


def _ids(tok, *names):
    return [tok.convert_tokens_to_ids(n) for n in names]


def _llava(tok_specials=("<s>", "</s>", "<image>"), image_size=32, patch=8):
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    tok = tiny_tokenizer(list(tok_specials), bos="<s>", eos="</s>")
    image_id, = _ids(tok, "<image>")
    cfg = LlavaConfig(
        vision_config=_vision("clip_vision_model", image_size, patch, projection_dim=32),
        text_config=_llama_text(len(tok), model_type="llama", bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id),
        image_token_index=image_id, vision_feature_select_strategy="default", vision_feature_layer=-1)
    ip = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                               crop_size={"height": image_size, "width": image_size})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=patch, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1)
    return LlavaForConditionalGeneration(cfg), proc


def _llava_next(image_size=32, patch=8):
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
    tok = tiny_tokenizer(["<s>", "</s>", "<image>"], bos="<s>", eos="</s>")
    image_id, = _ids(tok, "<image>")
    pinpoints = [[image_size, image_size * 2], [image_size * 2, image_size], [image_size * 2, image_size * 2]]
    cfg = LlavaNextConfig(
        vision_config=_vision("clip_vision_model", image_size, patch, projection_dim=32),
        text_config=_llama_text(len(tok), model_type="llama", bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id),
        image_token_index=image_id, image_grid_pinpoints=pinpoints, vision_feature_select_strategy="default")
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": image_size}, image_grid_pinpoints=pinpoints,
                                    crop_size={"height": image_size, "width": image_size})
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=patch,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return LlavaNextForConditionalGeneration(cfg), proc


def _llava_onevision(image_size=32, patch=8):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )
    tok = tiny_tokenizer(_QWEN_SPECIALS + ["<image>", "<video>"], bos=None, eos="<|im_end|>", pad="<|endoftext|>")
    image_id, video_id = _ids(tok, "<image>", "<video>")
    pinpoints = [[image_size, image_size * 2], [image_size * 2, image_size], [image_size * 2, image_size * 2]]
    cfg = LlavaOnevisionConfig(
        vision_config=_vision("siglip_vision_model", image_size, patch),
        text_config=_llama_text(len(tok), model_type="qwen2", eos_token_id=tok.eos_token_id),
        image_token_index=image_id, video_token_index=video_id, image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9")
    ip = LlavaOnevisionImageProcessorPil(size={"height": image_size, "width": image_size},
                                         image_grid_pinpoints=pinpoints)
    proc = _image_only(LlavaOnevisionProcessor)(image_processor=ip, tokenizer=tok, patch_size=patch,
                                   vision_feature_select_strategy="full", num_image_tokens=(image_size // patch) ** 2,
                                   vision_aspect_ratio="anyres_max_9")
    return LlavaOnevisionForConditionalGeneration(cfg), proc


def _qwen2_vl(version="2"):
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    tok = tiny_tokenizer(_QWEN_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>")
    image_id, video_id, vstart, vend = _ids(tok, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                            "<|vision_end|>")
    text = _llama_text(len(tok), bos_token_id=None, eos_token_id=tok.eos_token_id, rope_parameters=dict(
        rope_type="default", mrope_section=[2, 3, 3], rope_theta=10000.0))
    common = dict(image_token_id=image_id, video_token_id=video_id, vision_start_token_id=vstart,
                  vision_end_token_id=vend, text_config=text)
    if version == "2":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
        cfg = Qwen2VLConfig(vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, patch_size=4,
                                               spatial_merge_size=2, temporal_patch_size=2), **common)
        model = Qwen2VLForConditionalGeneration(cfg)
    else:
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
        cfg = Qwen2_5_VLConfig(vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                                                  patch_size=4, spatial_merge_size=2, temporal_patch_size=2,
                                                  out_hidden_size=64, window_size=16, fullatt_block_indexes=[1]),
                               **common)
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    ip = Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2,
                                  size={"shortest_edge": 8 * 8, "longest_edge": 48 * 48})
    proc = _image_only(Qwen2VLProcessor)(image_processor=ip, tokenizer=tok)
    return model, proc


def _idefics3(image_size=32, patch=8):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    tok = tiny_tokenizer(_IDEFICS3_SPECIALS, bos="<|begin_of_text|>", eos="<end_of_utterance>",
                         pad="<|end_of_text|>")
    image_id, = _ids(tok, "<image>")
    scale = 2
    seq_len = (image_size // patch) ** 2 // scale**2
    cfg = Idefics3Config(
        vision_config=_vision(None, image_size, patch),
        text_config=_llama_text(len(tok), model_type="llama", bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        image_token_id=image_id, scale_factor=scale, pad_token_id=tok.pad_token_id)
    ip = Idefics3ImageProcessorPil(size={"longest_edge": image_size * 2}, max_image_size={"longest_edge": image_size},
                                   do_image_splitting=True)
    proc = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=seq_len)
    return Idefics3ForConditionalGeneration(cfg), proc


BUILDERS = {
    "llava": _llava,
    "llava_next": _llava_next,
    "llava_onevision": _llava_onevision,
    "qwen2_vl": lambda: _qwen2_vl("2"),
    "qwen2_5_vl": lambda: _qwen2_vl("2.5"),
    "idefics3": _idefics3,
}


def tiny_model(family: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """(model, processor) for a tiny random model of `family` (one of `BUILDERS`), in eval mode."""
    if family not in BUILDERS:
        raise ValueError(f"no tiny builder for {family!r}; available: {sorted(BUILDERS)}")
    torch.manual_seed(seed)
    model, processor = BUILDERS[family]()
    return model.to(dtype).eval(), processor
