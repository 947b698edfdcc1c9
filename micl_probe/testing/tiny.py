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


def tiny_tokenizer(specials: list[str], bos: str | None, eos: str, pad: str | None = None,
                   named: dict[str, str] | None = None):
    """A byte-level BPE tokenizer on `CORPUS` with `specials` as special tokens (`named`: `bpe_tokenizer`'s)."""
    return bpe_tokenizer(specials, bos=bos, eos=eos, pad=pad, corpus=CORPUS, named=named)


def _llama_text(vocab: int, **kw) -> dict:
    cfg = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6)
    return {**cfg, **kw}


def _vision(model_type: str | None, image_size: int, patch: int, **kw) -> dict:
    cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
               image_size=image_size, patch_size=patch) | kw
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


def _idefics3_like(config_cls, model_cls, processor_cls, image_processor_cls, specials, bos, image_size, patch,
                   **processor_kw):
    """Idefics3 and SmolVLM: a SigLIP-style tower, pixel shuffle by 2, row/col tiles + a global image."""
    tok = tiny_tokenizer(specials, bos=bos, eos="<end_of_utterance>", pad="<|end_of_text|>")
    image_id, = _ids(tok, "<image>")
    scale = 2
    cfg = config_cls(
        vision_config=_vision(None, image_size, patch),
        text_config=_llama_text(len(tok), model_type="llama", bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        image_token_id=image_id, scale_factor=scale, pad_token_id=tok.pad_token_id)
    ip = image_processor_cls(size={"longest_edge": image_size * 2}, max_image_size={"longest_edge": image_size},
                             do_image_splitting=True)
    proc = processor_cls(image_processor=ip, tokenizer=tok, image_seq_len=(image_size // patch) ** 2 // scale**2,
                         **processor_kw)
    return model_cls(cfg), proc


def _idefics3(image_size=32, patch=8):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    return _idefics3_like(Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor,
                          Idefics3ImageProcessorPil, _IDEFICS3_SPECIALS, "<|begin_of_text|>", image_size, patch)


def _smolvlm(image_size=32, patch=8):
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMProcessor
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
    return _idefics3_like(SmolVLMConfig, SmolVLMForConditionalGeneration, _image_only(SmolVLMProcessor),
                          SmolVLMImageProcessorPil, _IDEFICS3_SPECIALS + ["<|im_start|>"], "<|im_start|>", image_size,
                          patch, video_processor=None)


def _idefics2(image_size=32, patch=8):
    from transformers import Idefics2Config, Idefics2ForConditionalGeneration, Idefics2Processor
    from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil
    tok = tiny_tokenizer(["<s>", "</s>", "<unk>", "<image>", "<fake_token_around_image>", "<end_of_utterance>"],
                         bos="<s>", eos="</s>", pad="<unk>")
    image_id, = _ids(tok, "<image>")
    latents = 4
    cfg = Idefics2Config(
        vision_config=_vision(None, image_size, patch),
        perceiver_config=dict(hidden_size=64, resampler_n_latents=latents, resampler_depth=1, resampler_n_heads=2,
                              resampler_head_dim=16, num_key_value_heads=1),
        text_config=_llama_text(len(tok), model_type="mistral", bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        image_token_id=image_id, pad_token_id=tok.pad_token_id)
    ip = Idefics2ImageProcessorPil(size={"shortest_edge": image_size, "longest_edge": image_size * 2},
                                   do_image_splitting=False)
    proc = Idefics2Processor(image_processor=ip, tokenizer=tok, image_seq_len=latents)
    return Idefics2ForConditionalGeneration(cfg), proc


def _qwen3_generation(config_cls, model_cls, text: dict, vision: dict):
    """A tiny model of the Qwen3 generation (Qwen3-VL, Qwen3.5; dense or MoE): their shared tokenizer, vision tower
    (patch 4, 2x2 merge), interleaved M-RoPE and processor; `text` / `vision` add each family's own settings."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    tok = tiny_tokenizer(_QWEN_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>")
    image_id, video_id, vstart, vend = _ids(tok, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                            "<|vision_end|>")
    text = _llama_text(len(tok), head_dim=16, bos_token_id=None, eos_token_id=tok.eos_token_id, **text)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=4, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=144, **vision)
    model = model_cls(config_cls(image_token_id=image_id, video_token_id=video_id, vision_start_token_id=vstart,
                                 vision_end_token_id=vend, text_config=text, vision_config=vision))
    ip = Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2,
                                  size={"shortest_edge": 8 * 8, "longest_edge": 48 * 48})
    return model, _image_only(Qwen3VLProcessor)(image_processor=ip, tokenizer=tok)


def _qwen3_vl(moe: bool = False):
    """Qwen3-VL: DeepStack from the first vision layer into the decoder."""
    import transformers as t
    text = dict(rope_parameters=dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=10000.0,
                                     mrope_interleaved=True))
    if moe:
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
    classes = (t.Qwen3VLMoeConfig, t.Qwen3VLMoeForConditionalGeneration) if moe else \
        (t.Qwen3VLConfig, t.Qwen3VLForConditionalGeneration)
    return _qwen3_generation(*classes, text, dict(deepstack_visual_indexes=[0]))


def _qwen3_5(moe: bool = False):
    """Qwen3.5's hybrid decoder: layer 0 linear attention (Gated DeltaNet), layer 1 full attention (as the checkpoints'
    3-in-4 pattern, shortened), interleaved M-RoPE on a quarter of each head's dimensions, gated attention output."""
    import transformers as t
    text = dict(layer_types=["linear_attention", "full_attention"], linear_key_head_dim=8, linear_value_head_dim=8,
                linear_num_key_heads=2, linear_num_value_heads=4,
                rope_parameters=dict(rope_type="default", mrope_section=[1, 1, 0], rope_theta=10000.0,
                                     mrope_interleaved=True, partial_rotary_factor=0.25))
    if moe:
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32)
    classes = (t.Qwen3_5MoeConfig, t.Qwen3_5MoeForConditionalGeneration) if moe else \
        (t.Qwen3_5Config, t.Qwen3_5ForConditionalGeneration)
    return _qwen3_generation(*classes, text, {})


def _internvl(image_size=32, patch=8):
    from transformers import InternVLConfig, InternVLForConditionalGeneration
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
    from transformers.models.internvl.processing_internvl import InternVLProcessor
    tok = tiny_tokenizer(_QWEN_SPECIALS + ["<img>", "</img>", "<IMG_CONTEXT>", "<video>"], bos=None, eos="<|im_end|>",
                         pad="<|endoftext|>", named={"start_image_token": "<img>", "end_image_token": "</img>",
                                                     "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    # the InternVL tokenizer's named tokens, which its processor reads
    seq = (image_size // patch) ** 2 // 4  # downsample_ratio 0.5: 2x2 pixel shuffle
    cfg = InternVLConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=[image_size, image_size], patch_size=[patch, patch]),
        text_config=_llama_text(len(tok), model_type="qwen2", eos_token_id=tok.eos_token_id),
        image_token_id=tok.context_image_token_id, image_seq_length=seq, downsample_ratio=0.5)
    ip = GotOcr2ImageProcessorPil(size={"height": image_size, "width": image_size}, crop_to_patches=True,
                                  min_patches=1, max_patches=4)
    proc = _image_only(InternVLProcessor)(image_processor=ip, tokenizer=tok, image_seq_length=seq)
    return InternVLForConditionalGeneration(cfg), proc


def _gemma3(image_size=32, patch=8, sliding_window=24):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
    from transformers.models.gemma3.processing_gemma3 import Gemma3Processor
    tok = tiny_tokenizer(["<bos>", "<eos>", "<pad>", "<start_of_image>", "<end_of_image>", "<image_soft_token>",
                          "<start_of_turn>", "<end_of_turn>"], bos="<bos>", eos="<eos>", pad="<pad>",
                         named={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                "image_token": "<image_soft_token>"})  # Gemma 3's named tokens, read by its processor
    tokens_per_image = 4  # 4x4 patches average-pooled to 2x2
    text = _llama_text(len(tok), head_dim=16, query_pre_attn_scalar=16, sliding_window=sliding_window,
                       layer_types=["sliding_attention", "full_attention"], bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    # no encoder layers in the vision tower: random ones mix the patches so much that each 2x2-pooled token no longer
    # answers most to its own quarter of the image (the patch-locality test); the decoder side is the real one
    vision = _vision("siglip_vision_model", image_size, patch, num_hidden_layers=0)
    cfg = Gemma3Config(vision_config=vision, text_config=text,
                       mm_tokens_per_image=tokens_per_image, boi_token_index=tok.boi_token_id,
                       eoi_token_index=tok.eoi_token_id, image_token_index=tok.image_token_id)
    ip = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size}, do_pan_and_scan=False)
    proc = Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=tokens_per_image)
    model = Gemma3ForConditionalGeneration(cfg)
    with torch.no_grad():  # the projector's input matrix is initialised to zeros: images would carry nothing
        w = model.model.multi_modal_projector.mm_input_projection_weight
        w.normal_(0, w.shape[0] ** -0.5)
    return model, proc


def _glm4v():
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil
    from transformers.models.glm4v.processing_glm4v import Glm4vProcessor
    specials = ["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|begin_of_image|>",
                "<|end_of_image|>", "<|image|>", "<|begin_of_video|>", "<|end_of_video|>", "<|video|>"]
    tok = tiny_tokenizer(specials, bos=None, eos="<|endoftext|>")
    ids = dict(zip(["image_token_id", "video_token_id", "image_start_token_id", "image_end_token_id",
                    "video_start_token_id", "video_end_token_id"],
                   _ids(tok, "<|image|>", "<|video|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
                        "<|end_of_video|>")))
    text = _llama_text(len(tok), head_dim=16, eos_token_id=tok.eos_token_id, partial_rotary_factor=0.5,
                       rope_parameters=dict(rope_type="default", mrope_section=[1, 1, 2], rope_theta=10000.0))
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=4, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=64, image_size=32)
    model = Glm4vForConditionalGeneration(Glm4vConfig(text_config=text, vision_config=vision, **ids))
    ip = Glm4vImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2,
                                size={"shortest_edge": 8 * 8, "longest_edge": 48 * 48})
    return model, _image_only(Glm4vProcessor)(image_processor=ip, tokenizer=tok)


def _pixtral_processor(ip, tok, patch, merge):
    """transformers' PixtralProcessor, or, where it cannot be imported (its module needs torchvision, which is not
    installable beside the CPU torch here), a stand-in with the same expansion: each [IMG] becomes rows of
    [IMG]×columns + [IMG_BREAK], the last break an [IMG_END], one [IMG] per (patch × merge)² pixels."""
    try:
        from transformers.models.pixtral.processing_pixtral import PixtralProcessor
        return PixtralProcessor(image_processor=ip, tokenizer=tok, patch_size=patch, spatial_merge_size=merge)
    except ImportError:
        pass
    from transformers.processing_utils import ProcessorMixin

    class PixtralProcessor(ProcessorMixin):  # the stand-in: PixtralProcessor's own replace_image_token
        def __init__(self, image_processor, tokenizer, patch_size=16, spatial_merge_size=1, chat_template=None):
            super().__init__(image_processor, tokenizer, chat_template=chat_template)
            self.patch_size, self.spatial_merge_size = patch_size, spatial_merge_size
            self.image_token, self.image_break_token, self.image_end_token = "[IMG]", "[IMG_BREAK]", "[IMG_END]"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)

        def _process_images(self, images, **images_kwargs):
            images_kwargs["patch_size"] = self.patch_size * self.spatial_merge_size
            return super()._process_images(images, **images_kwargs)

        def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
            step = self.patch_size * self.spatial_merge_size
            height, width = image_inputs["image_sizes"][image_idx]
            rows = [[self.image_token] * (width // step) + [self.image_break_token]] * (height // step)
            tokens = [t for row in rows for t in row]
            tokens[-1] = self.image_end_token
            return "".join(tokens)

        @property
        def model_input_names(self):
            return self.tokenizer.model_input_names + self.image_processor.model_input_names + ["image_sizes"]

    return PixtralProcessor(ip, tok, patch_size=patch, spatial_merge_size=merge)


def _mistral3(image_size=48, patch=8):
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil
    tok = tiny_tokenizer(["<s>", "</s>", "<unk>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"],
                         bos="<s>", eos="</s>", pad="<unk>")
    image_id, = _ids(tok, "[IMG]")
    cfg = Mistral3Config(
        vision_config=dict(model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, head_dim=16, image_size=image_size, patch_size=patch),
        text_config=_llama_text(len(tok), model_type="mistral", bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        image_token_index=image_id, spatial_merge_size=2, vision_feature_layer=-1)
    ip = PixtralImageProcessorPil(size={"longest_edge": image_size}, patch_size={"height": patch, "width": patch})
    return Mistral3ForConditionalGeneration(cfg), _pixtral_processor(ip, tok, patch, 2)


BUILDERS = {
    "llava": _llava,
    "llava_next": _llava_next,
    "llava_onevision": _llava_onevision,
    "qwen2_vl": lambda: _qwen2_vl("2"),
    "qwen2_5_vl": lambda: _qwen2_vl("2.5"),
    "idefics3": _idefics3,
    "smolvlm": _smolvlm,
    "idefics2": _idefics2,
    "qwen3_vl": _qwen3_vl,
    "qwen3_vl_moe": lambda: _qwen3_vl(moe=True),
    "qwen3_5": _qwen3_5,
    "qwen3_5_moe": lambda: _qwen3_5(moe=True),
    "internvl": _internvl,
    "gemma3": _gemma3,
    "glm4v": _glm4v,
    "mistral3": _mistral3,
}


def tiny_model(family: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """(model, processor) for a tiny random model of `family` (one of `BUILDERS`), in eval mode."""
    if family not in BUILDERS:
        raise ValueError(f"no tiny builder for {family!r}; available: {sorted(BUILDERS)}")
    torch.manual_seed(seed)
    model, processor = BUILDERS[family]()
    return model.to(dtype).eval(), processor
