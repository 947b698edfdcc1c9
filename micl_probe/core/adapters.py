"""Model-family adapters: everything family-specific, declared in one small record per family.

An adapter knows
  * the family's multi-turn chat format (how one demonstration turn is written, where images go),
  * where the decoder lives in the `*ForConditionalGeneration` module tree, and so its layers,
    attention modules and `o_proj`,
  * head counts (incl. grouped-query KV heads) and the image token id,
  * the family's quirks in feeding images to its processor,
  * how its attention modules call the attention function (the named arguments the attention capture reads),
  * whether TransformerLens 4.3 has a `TransformerBridge` for it.

Every other module is family-agnostic and talks to the model only through an adapter.

    adapter = adapter_for(model)                 # by config.model_type
    adapter.layers(model)[0].self_attn.o_proj    # == adapter.o_proj(model, 0)
    adapter.attention_layers(model)              # layers with softmax attention (all but a hybrid's linear ones)
    adapter.n_heads(model), adapter.n_kv_heads(model), adapter.head_dim(model)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class ChatFormat:
    """How a multi-turn MICL prompt is written: each demo is a user turn (images + question) followed by an
    assistant turn (answer); the query is a final user turn followed by the assistant prefix.

    Rendered turn:  {user}{image}…{image}{question}{user_end}{assistant}{answer_sep}{answer}{assistant_end}
    The query turn stops after {assistant}: the model's next token is the first answer token.
    `image` must contain the processor's image placeholder exactly once.
    """

    user: str
    image: str
    user_end: str
    assistant: str
    answer_sep: str
    assistant_end: str
    system: str = ""


@dataclass(frozen=True)
class Adapter:
    """Every fact of one model family in one place: the `config.model_type`s it serves, its declared chat format,
    where the decoder and its attention modules sit, how images are passed and laid out in patches. Found by
    `adapter_for(model)` or `get_adapter(family)`."""

    family: str
    model_types: tuple[str, ...]  # `config.model_type` values this adapter serves
    chat: ChatFormat
    decoder_path: str = "model.language_model"  # dotted path from the *ForConditionalGeneration to the decoder
    nest_images: bool = False  # processor wants images grouped per sample: images=[[img, img, …]]
    # the positional parameters of the attention function the decoder's attention modules call
    # (transformers: `attention_interface(self, query, key, value, attention_mask, dropout=…, scaling=…, **kwargs)`)
    attention_params: tuple[str, ...] = ("module", "query", "key", "value", "attention_mask")
    tl_bridge: bool = True  # TransformerLens 4.3 has a TransformerBridge for this family
    tl_torchvision: bool = False  # ... which needs torchvision (Qwen2.5-VL, Qwen3-VL, GLM-4.1V)
    patch_layout: str = "square"  # how image tokens tile the image (core.patches): square, merged, tiles, ...
    pack_config: tuple[str, ...] = ()  # anyres: the config fields the model's pack_image_features takes by name
    mrope: bool = False  # 3-D rotary positions from the model's get_rope_index (Qwen-VL, GLM-4.1V)
    # per-token inputs a pass after a cached prefix still needs for the whole prompt (Gemma 3's token types: its
    # bidirectional image mask reads them by position from the start of the sequence)
    whole_prompt_inputs: tuple[str, ...] = ()
    notes: str = ""

    # --- module tree ------------------------------------------------------------------------------------
    def decoder(self, model: nn.Module) -> nn.Module:
        mod = model
        for part in self.decoder_path.split("."):
            mod = getattr(mod, part)
        return mod

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return self.decoder(model).layers

    def attention(self, model: nn.Module, layer: int) -> nn.Module:
        if not hasattr(self.layers(model)[layer], "self_attn"):
            raise ValueError(f"decoder layer {layer} of this {self.family} model has no softmax attention (a "
                             f"linear-attention layer); its attention layers are {self.attention_layers(model)}")
        return self.layers(model)[layer].self_attn

    def attention_layers(self, model: nn.Module) -> list[int]:
        """The decoder layers with softmax self-attention: every layer, except in hybrid decoders (Qwen3.5), whose
        linear-attention layers keep no attention weights to measure or reallocate."""
        return [i for i, layer in enumerate(self.layers(model)) if hasattr(layer, "self_attn")]

    def o_proj(self, model: nn.Module, layer: int) -> nn.Linear:
        return self.attention(model, layer).o_proj

    def attention_inputs(self, args: tuple, kwargs: dict) -> dict:
        """The attention-function call's inputs by name (query/key after RoPE: [B, H, seq, d], [B, H_kv, seq, d];
        attention_mask: None, bool or additive float; scaling)."""
        named = dict(zip(self.attention_params, args))
        return {**named, **{k: v for k, v in kwargs.items() if k in self.attention_params or k == "scaling"}}

    # --- shapes -----------------------------------------------------------------------------------------
    @staticmethod
    def text_config(model: nn.Module):
        cfg = model.config
        return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg.text_config

    def n_layers(self, model) -> int:
        return self.text_config(model).num_hidden_layers

    def n_heads(self, model) -> int:
        return self.text_config(model).num_attention_heads

    def n_kv_heads(self, model) -> int:
        tc = self.text_config(model)
        return getattr(tc, "num_key_value_heads", None) or tc.num_attention_heads

    def head_dim(self, model) -> int:
        tc = self.text_config(model)
        return getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads

    def max_positions(self, model) -> int:
        return self.text_config(model).max_position_embeddings

    @staticmethod
    def image_token_id(model) -> int:
        cfg = model.config
        tid = getattr(cfg, "image_token_id", None)
        return tid if tid is not None else cfg.image_token_index

    # --- processor --------------------------------------------------------------------------------------
    def images_arg(self, per_sample: list[list]) -> list | None:
        """The processor's `images=` for a batch, given each sample's images: nested or flat per family."""
        if not any(per_sample):
            return None
        return [list(x) for x in per_sample] if self.nest_images else [im for x in per_sample for im in x]

    # --- shared prefixes (core.prefix) -------------------------------------------------------------------
    def shared_prefix_unsupported(self, model, length: int) -> str:
        """Why a prompt of `length` tokens cannot run its prefix once into a cache and its suffix after it ("" if
        it can): a hybrid decoder's linear-attention state, or sliding-window layers shorter than the prompt (their
        cache drops the keys before the window)."""
        tc = self.text_config(model)
        types = list(getattr(tc, "layer_types", None) or [])
        if len(self.attention_layers(model)) < self.n_layers(model) or any("linear" in t for t in types):
            return "a hybrid decoder (its linear-attention state is not a cache of keys to share)"
        window = getattr(tc, "sliding_window", None)
        sliding = any("sliding" in t for t in types) or (not types and getattr(tc, "use_sliding_window", True))
        if window and sliding and length > window:
            return f"sliding-window layers of {window} tokens, shorter than the {length}-token prompt"
        return ""

    def rope_positions(self, model, inputs) -> torch.Tensor | None:
        """The whole batch's position ids where the family's positions are not the token index (M-RoPE: the model's
        own get_rope_index, [3, B, seq]); None where they are (1-D RoPE: a suffix continues from the cache)."""
        if not self.mrope:
            return None
        keys = ("input_ids", "mm_token_type_ids", "image_grid_thw", "video_grid_thw", "second_per_grid_ts",
                "attention_mask")
        return model.model.get_rope_index(**{k: inputs[k] for k in keys if k in inputs})[0]

    def image_feature_counts(self, model, inputs) -> list[int]:
        """Image features the model itself produces for `inputs`, per image (or one total where the family
        flattens images into patches, as Idefics3 does). Runs the vision tower: an independent check of the
        layout's image positions."""
        text_keys = {"input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids"}
        kwargs = {k: v for k, v in inputs.items() if k not in text_keys}
        with torch.no_grad():
            out = model.model.get_image_features(**kwargs)
        feats = out.pooler_output if hasattr(out, "pooler_output") else out
        if isinstance(feats, (list, tuple)):
            return [f.reshape(-1, f.shape[-1]).shape[0] for f in feats]
        return [feats.reshape(-1, feats.shape[-1]).shape[0]]


# --- the families ---------------------------------------------------------------------------------------
_VICUNA = ChatFormat(user="USER: ", image="<image>\n", user_end=" ", assistant="ASSISTANT:", answer_sep=" ",
                     assistant_end="</s>")
_MISTRAL = ChatFormat(user="[INST] ", image="<image>\n", user_end=" ", assistant="[/INST]", answer_sep=" ",
                      assistant_end="</s>")
_QWEN = ChatFormat(system="<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
                   user="<|im_start|>user\n", image="<|vision_start|><|image_pad|><|vision_end|>",
                   user_end="<|im_end|>\n", assistant="<|im_start|>assistant\n", answer_sep="",
                   assistant_end="<|im_end|>\n")
_ONEVISION = ChatFormat(user="<|im_start|>user ", image="<image>\n", user_end="<|im_end|>",
                        assistant="<|im_start|>assistant\n", answer_sep="", assistant_end="<|im_end|>")
_IDEFICS3 = ChatFormat(user="User:", image="<image>", user_end="<end_of_utterance>\n", assistant="Assistant:",
                       answer_sep=" ", assistant_end="<end_of_utterance>\n")
_QWEN3 = ChatFormat(user="<|im_start|>user\n", image="<|vision_start|><|image_pad|><|vision_end|>",
                    user_end="<|im_end|>\n", assistant="<|im_start|>assistant\n", answer_sep="",
                    assistant_end="<|im_end|>\n")  # no default system prompt (Qwen2/2.5-VL have one)
_INTERNVL = ChatFormat(user="<|im_start|>user\n", image="<IMG_CONTEXT>\n", user_end="<|im_end|>\n",
                       assistant="<|im_start|>assistant\n", answer_sep="", assistant_end="<|im_end|>\n")
_GEMMA3 = ChatFormat(user="<start_of_turn>user\n", image="<start_of_image>", user_end="<end_of_turn>\n",
                     assistant="<start_of_turn>model\n", answer_sep="", assistant_end="<end_of_turn>\n")
_GLM4V = ChatFormat(system="[gMASK]<sop>", user="<|user|>\n", image="<|begin_of_image|><|image|><|end_of_image|>",
                    user_end="", assistant="<|assistant|>\n", answer_sep="", assistant_end="")
_QWEN3_NOTES = ("as Qwen2.5-VL (2x2 merged patches, vision start/end markup, interleaved M-RoPE), plus DeepStack: "
                "features of early vision layers are added to the hidden states of the first decoder layers at the "
                "image positions, so attention to 'image tokens' is attention to positions whose residual stream "
                "carries both the projected image and the DeepStack additions. Its chat template has no default "
                "system prompt.")
_HYBRID = ("a hybrid decoder: Gated DeltaNet linear-attention layers (3 of every 4) keep no attention weights, so "
           "only the full-attention layers are measured (the others are NaN in every per-layer result, and the "
           "results name the measured layers); DARA and MTV act on those layers only. Vision as Qwen3-VL (merged "
           "patches, interleaved M-RoPE on a quarter of each head's dimensions, output-gated attention: a head's "
           "output is taken after its gate). Its chat template opens the answer with a thinking block unless thinking "
           "is switched off: score chat answers with a generated-answer metric.")
_MISTRAL3 = ChatFormat(system="", user="[INST]", image="[IMG]", user_end="", assistant="[/INST]", answer_sep="",
                       assistant_end="</s>")
_SMOLVLM = ChatFormat(system="<|im_start|>", user="User:", image="<image>", user_end="<end_of_utterance>\n",
                      assistant="Assistant:", answer_sep=" ", assistant_end="<end_of_utterance>\n")
_IDEFICS2 = ChatFormat(user="User:", image="<image>", user_end="<end_of_utterance>\n", assistant="Assistant:",
                       answer_sep=" ", assistant_end="<end_of_utterance>\n")
# The shipped organisms' own compact format (see micl_probe.organisms).
ORGANISM_CHAT = ChatFormat(user="", image="<image>", user_end="", assistant=" A:", answer_sep=" ",
                           assistant_end="\n")

ADAPTERS: dict[str, Adapter] = {a.family: a for a in [
    Adapter("llava", ("llava",), _VICUNA, notes="LLaVA-1.5: one <image> per image, 576 tokens at 336 px."),
    Adapter("llava_next", ("llava_next",), _MISTRAL, patch_layout="anyres",
            pack_config=("vision_feature_select_strategy",),
            notes="LLaVA-NeXT: anyres tiling, variable image-token count incl. row newlines; chat format of the "
                  "Mistral checkpoints (pass chat= for Vicuna/Llama-3 ones)."),
    Adapter("llava_onevision", ("llava_onevision",), _ONEVISION, patch_layout="anyres", nest_images=True,
            pack_config=("vision_aspect_ratio",),
            notes="LLaVA-OneVision: anyres_max_9 tiling, variable image-token count; Qwen2 decoder."),
    Adapter("qwen2_vl", ("qwen2_vl",), _QWEN, mrope=True, tl_bridge=False, patch_layout="merged",
            notes="Qwen2-VL: 2x2 patch merging, <|vision_start|>/<|vision_end|> markup, M-RoPE positions."),
    Adapter("qwen2_5_vl", ("qwen2_5_vl",), _QWEN, mrope=True, patch_layout="merged", tl_torchvision=True,
            notes="Qwen2.5-VL: as Qwen2-VL, windowed vision attention; its TransformerLens bridge needs torchvision."),
    Adapter("idefics3", ("idefics3",), _IDEFICS3, decoder_path="model.text_model", nest_images=True,
            patch_layout="tiles",
            notes="Idefics3 / SmolVLM(v1): image splitting into row/col tiles plus a global image, each tile "
                  "framed by <fake_token_around_image> and <row_i_col_j>/<global-img> markup."),
    Adapter("qwen3_vl", ("qwen3_vl",), _QWEN3, mrope=True, patch_layout="merged", tl_torchvision=True,
            notes="Qwen3-VL: " + _QWEN3_NOTES),
    Adapter("qwen3_vl_moe", ("qwen3_vl_moe",), _QWEN3, mrope=True, patch_layout="merged", tl_torchvision=True,
            notes="Qwen3-VL MoE (a mixture-of-experts decoder; attention as the dense model's): " + _QWEN3_NOTES),
    Adapter("qwen3_5", ("qwen3_5",), _QWEN3, mrope=True, patch_layout="merged", tl_bridge=False,
            notes="Qwen3.5: " + _HYBRID),
    Adapter("qwen3_5_moe", ("qwen3_5_moe",), _QWEN3, mrope=True, patch_layout="merged", tl_bridge=False,
            notes="Qwen3.5 MoE (mixture-of-experts MLPs): " + _HYBRID),
    Adapter("internvl", ("internvl",), _INTERNVL, tl_bridge=False, nest_images=True, patch_layout="none",
            notes="InternVL (hf checkpoints, e.g. InternVL3-*-hf): each image is cut into up to max_patches tiles "
                  "plus a thumbnail, each tile's features pixel-shuffled to image_seq_length <IMG_CONTEXT> tokens, "
                  "all framed by <img>...</img> (markup). Tile order is not reported per token, so no patch maps."),
    Adapter("gemma3", ("gemma3",), _GEMMA3, patch_layout="pooled", nest_images=True,
            whole_prompt_inputs=("token_type_ids", "mm_token_type_ids"),
            notes="Gemma 3: the prompt's placeholder is <start_of_image>, which the processor expands to "
                  "<start_of_image>, mm_tokens_per_image <image_soft_token>s (average-pooled patches, a square grid) "
                  "and <end_of_image>; the model's image token is the soft token. Image tokens attend to each other "
                  "both ways (a bidirectional block inside the causal mask) and sliding-window layers alternate with "
                  "global ones: the capture recomputes each layer with the mask that layer is given. The assistant "
                  "role is written 'model'."),
    Adapter("glm4v", ("glm4v",), _GLM4V, mrope=True, patch_layout="merged", tl_torchvision=True,
            notes="GLM-4.1V: Qwen2-VL-style merged patches framed by <|begin_of_image|>/<|end_of_image|>, 3-D "
                  "rotary positions (M-RoPE on half of each head's dimensions); turns are <|user|>\\n… and "
                  "<|assistant|>\\n… with no end-of-turn token between them, so the teacher-forced scorer checks the "
                  "answer tokens only: use a generated-answer metric (the Thinking checkpoints answer inside "
                  "<answer>…</answer>)."),
    Adapter("mistral3", ("mistral3",), _MISTRAL3, patch_layout="breaks",
            notes="Mistral Small 3.x (Pixtral vision): each image becomes rows of [IMG] tokens (2x2 merged "
                  "patches, the image's aspect kept), each row closed by [IMG_BREAK] and the last by [IMG_END] "
                  "(image markup); needs image_sizes. Its processor (PixtralProcessor) needs torchvision."),
    Adapter("smolvlm", ("smolvlm",), _SMOLVLM, decoder_path="model.text_model", nest_images=True, tl_bridge=False,
            patch_layout="tiles",
            notes="SmolVLM / SmolVLM2: Idefics3's image splitting (row/col tiles + a global image, pixel shuffle), "
                  "the <|im_start|>User:… format of its chat template."),
    Adapter("idefics2", ("idefics2",), _IDEFICS2, decoder_path="model.text_model", nest_images=True, tl_bridge=False,
            patch_layout="none",
            notes="Idefics2 (the MTV paper's model): a perceiver resampler turns each image into a fixed number of "
                  "latent tokens (64 at full size) framed by <fake_token_around_image>; image tokens are latents, "
                  "not patches, so patch maps do not apply."),
    Adapter("organism", (), ORGANISM_CHAT,
            notes="micl_probe's own model organisms: a tiny LLaVA (CLIP tower + Llama decoder)."),
]}


# Architectures that do not fit the image-tokens-in-self-attention picture: why, and what is possible
MISFITS = {
    "mllama": ("Llama 3.2 Vision (mllama) reads its images through cross-attention layers, not through image tokens "
               "in the prompt's self-attention: there is no attention on image tokens to measure, and micl_probe does "
               "not report cross-attention in its place; use a family that puts image tokens in the prompt"),
}


def supported_families() -> list[str]:
    """Every family micl_probe has an adapter for (the organisms' included)."""
    return sorted(ADAPTERS)


def get_adapter(family: str) -> Adapter:
    """The adapter of `family` (`supported_families()`); ValueError naming the supported ones otherwise."""
    if family in MISFITS:
        raise ValueError(f"unsupported model family: {MISFITS[family]}")
    if family not in ADAPTERS:
        raise ValueError(f"unsupported model family {family!r}; supported families: {', '.join(supported_families())}")
    return ADAPTERS[family]


def checkpoint_settings(folder) -> dict:
    """The micl_probe.json beside a checkpoint's weights (the organisms carry one: their family, recipe, card), or
    {} where there is none; ValueError (one line) for a file that is not a JSON object."""
    meta = Path(folder) / "micl_probe.json" if folder else None
    if meta is None or not meta.is_file():
        return {}
    try:
        settings = json.loads(meta.read_text())
    except json.JSONDecodeError:
        settings = None
    if not isinstance(settings, dict):
        raise ValueError(f"{meta} is not a JSON object (edited or cut short?): fix or delete it")
    return settings


def adapter_for(model: nn.Module, family: str | None = None) -> Adapter:
    """The adapter for `model`: the one named by `family`; else the family its checkpoint folder's micl_probe.json
    names (the organisms': their prompt format is not their architecture's); else by `config.model_type`."""
    if family is not None:
        return get_adapter(family)
    saved = checkpoint_settings(getattr(model.config, "_name_or_path", "")).get("family")
    if saved:
        return get_adapter(saved)
    model_type = getattr(model.config, "model_type", None)
    if model_type in MISFITS:
        raise ValueError(f"unsupported model family: {MISFITS[model_type]}")
    for a in ADAPTERS.values():
        if model_type in a.model_types:
            return a
    raise ValueError(f"unsupported model family: config.model_type={model_type!r} "
                     f"({type(model).__name__}); supported families: {', '.join(supported_families())}")
