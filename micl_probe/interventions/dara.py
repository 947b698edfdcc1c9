"""DARA — Dynamic Attention ReAllocation (Chen et al., 2025): learnable factors on the attention paid to images.

One factor alpha[layer, head, image] multiplies the attention-score columns of that image's tokens. The
parameter is log_alpha (alpha = exp(log_alpha) > 0 by construction, init 0 -> alpha = 1): factors can shrink
towards 0 or grow without a clamp that would stop their gradient.

    dara = DARA.for_model(loaded, n_images=5)              # first decoder layer, all heads; alpha = 1
    with dara.applied(loaded.model, layouts) as kwargs:    # the batch's layouts -> per-call forward kwargs
        logits = loaded.model(**inputs, **kwargs).logits

    dara, history = train_dara(loaded, "outlier", shots=4, fit=FitConfig(steps=200))
    sweep = alpha_sweep(loaded, alphas=(0.5, 2, 4))        # {"alpha=2": intervention, …} for harness conditions

Modes:
  * "logit" (default): add log(alpha) to the logits of the image's columns, i.e. multiply that image's
    post-softmax weights by alpha and renormalise the row. Runs at the cost of a forward: no query x key mask is
    built. The bias depends only on (head, key column), so it is folded into the keys: each key gets G extra
    dimensions carrying the bias of the G query heads that share it (grouped-query attention stays intact), each
    query a one-hot of its place in its group (divided by the scaling), and q'.k' = q.k + bias/scaling exactly; the
    causal mask is left to the kernel (`is_causal`), as in the stock sdpa path. Layers without factors run sdpa
    unchanged, with the mask sdpa would get (none at all when the prompt is unpadded and causal).
  * "post": multiply the post-softmax weights by alpha without renormalising (the raw reading of the paper);
    computed with eager attention in the DARA layers.
`kernel="eager"` computes the DARA layers with plain matmul + softmax (the reference the fast path is tested
against). How it hooks in: a registered attention function ("micl_probe_dara", transformers' attention-function
registry) set on the decoder's config for the duration of `applied`; the factors and the batch's image columns
reach it per call, as the forward kwarg `micl_dara` that transformers hands on to every attention function
(`applied` yields it). Layers without factors call sdpa unchanged. Nothing is kept at module level: two DARAs on
two models (or threads) never see each other's factors.

Images are indexed in prompt order (demo 0's image … the query's last); a DARA is trained for prompts with a
fixed number of images.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core import ROLE, Loaded, TokenLayout
from ..core.provenance import (
    artifact_paths,
    check_made_for,
    digest,
    dumps,
    finite,
    finite_number,
    made_for,
    read_artifact,
    tagged,
    write_atomic,
)
from .fitting import FitConfig, episode_batches, fit, frozen, query_labels

NAME = "micl_probe_dara"
KWARG = "micl_dara"  # the forward kwarg that carries a DaraCall to the attention function
LR = 0.05  # train_dara's default learning rate


@dataclass(frozen=True)
class DaraCall:
    """What one forward pass under a DARA needs in its attention function."""

    dara: DARA
    key_image: torch.Tensor  # [B, seq] long: the image index of each key column, -1 for non-image columns
    kernel: str  # "sdpa" | "eager"


class DARA(nn.Module):
    """DARA factors: one learnable alpha[layer, head, image] (as log_alpha) multiplying the attention each head of
    the chosen decoder layers pays to each image's tokens (demo 0 … demo K-1, the query). Build with
    `DARA.for_model(loaded, n_images)` or `train_dara`; run with `applied(model, layouts)` (per-call forward kwargs)
    or `on(model)` (a harness intervention); `save`/`load` round-trip it with what it was made for. See the module
    docstring for the modes and kernels."""

    def __init__(self, n_heads: int, n_images: int, layers: tuple[int, ...] = (0,), mode: str = "logit"):
        super().__init__()
        if mode not in ("logit", "post"):
            raise ValueError(f"mode must be 'logit' or 'post', got {mode!r}")
        bad = [x for x in layers if isinstance(x, bool) or not isinstance(x, int) or x < 0]
        if bad or not layers:
            raise ValueError(f"layers {list(layers)}: give one or more decoder layer numbers >= 0 (negative numbers "
                             "are not counted from the end)")
        self.layers = tuple(layers)
        self.mode = mode
        self.log_alpha = nn.Parameter(torch.zeros(len(self.layers), n_heads, n_images))  # [layer slot, head, image]

    @property
    def alpha(self) -> torch.Tensor:
        """alpha[layer slot, head, image] = exp(log_alpha)."""
        return self.log_alpha.exp()

    @torch.no_grad()
    def set_alpha(self, value, index=...) -> DARA:
        """Set alpha[index] = value (a number or tensor > 0); e.g. `dara.set_alpha(3.0, (0, 1, 0))`."""
        value = torch.as_tensor(value, dtype=self.log_alpha.dtype, device=self.log_alpha.device)
        if not torch.isfinite(value).all() or (value <= 0).any():
            raise ValueError(f"DARA factors must be finite numbers > 0, got {value.tolist()}")
        self.log_alpha[index] = value.log()
        return self

    @classmethod
    def for_model(cls, loaded: Loaded, n_images: int, layers=None, mode: str = "logit") -> DARA:
        """Factors alpha = 1 for every head of `layers` of `loaded`'s decoder and `n_images` images. `layers`: None =
        the first layer with softmax attention (layer 0, except in a hybrid decoder: the paper's setting)."""
        model, adapter = loaded.model, loaded.adapter
        attention = adapter.attention_layers(model)
        layers = (attention[0],) if layers is None else tuple(layers)
        n = adapter.n_layers(model)
        bad = [x for x in layers if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < n]
        if bad:
            raise ValueError(f"layers {bad} outside the decoder's {n} layers: give layer numbers 0..{n - 1} "
                             "(negative numbers are not counted from the end)")
        linear = [x for x in layers if x not in attention]
        if linear:
            raise ValueError(f"layers {linear} of this {adapter.family} model are linear-attention layers, with no "
                             f"attention to reallocate; choose among its attention layers {attention}")
        dara = cls(adapter.n_heads(model), n_images, layers, mode)
        dara.meta = made_for(loaded)
        return dara.to(loaded.device)

    @property
    def n_params(self) -> int:
        return self.log_alpha.numel()

    def column_bias(self, slot: int, key_image: torch.Tensor) -> torch.Tensor:
        """[B, H, 1, seq]: log(alpha) of the image each key column belongs to, 0 for non-image columns."""
        log_alpha = self.log_alpha[slot]  # [H, n_images]
        padded = torch.cat([log_alpha, log_alpha.new_zeros(log_alpha.shape[0], 1)], 1)  # column -1 -> 0
        idx = torch.where(key_image >= 0, key_image, log_alpha.shape[1])  # [B, seq]
        return padded[:, idx].permute(1, 0, 2)[:, :, None, :]  # [B, H, 1, seq]

    @contextlib.contextmanager
    def applied(self, model, layouts: list[TokenLayout] | TokenLayout, kernel: str = "sdpa"):
        """Run `model` with this reallocation inside the block (layouts of the batch being run); yields the forward
        kwargs that carry it: `with dara.applied(model, layouts) as kw: model(**inputs, **kw)`."""
        if kernel not in ("sdpa", "eager"):
            raise ValueError("kernel must be 'sdpa' or 'eager'")
        layouts = [layouts] if isinstance(layouts, TokenLayout) else list(layouts)
        for lay in layouts:
            if lay.n_images != self.log_alpha.shape[-1]:
                raise ValueError(f"this DARA has factors for {self.log_alpha.shape[-1]} images; the prompt has "
                                 f"{lay.n_images}: build prompts with the shot count it was trained for")
        key_image = torch.stack([torch.where(lay.role == ROLE["image"], lay.image_index, -1) for lay in layouts])
        key_image = key_image.to(self.log_alpha.device)
        _register()
        text_config = _text_config(model)
        previous = text_config._attn_implementation
        text_config._attn_implementation = NAME
        try:
            yield {KWARG: DaraCall(self, key_image, kernel)}
        finally:
            text_config._attn_implementation = previous

    def on(self, model, kernel: str = "sdpa"):
        """`layouts -> context manager`: this DARA as a per-batch intervention (harness conditions, scoring)."""
        return tagged(lambda layouts: self.applied(model, layouts, kernel=kernel),
                      digest("dara", self.log_alpha, list(self.layers), self.mode, kernel))

    def save(self, path: str | Path, **meta) -> None:
        """PATH.safetensors (the factors) + PATH.json (layers, mode, the model it was made for, and `meta`: task,
        shots, prompt style, instruction, training settings). A name with dots keeps them; NaN or infinite
        factors are refused."""
        from safetensors.torch import save_file

        info_path, tensor_path = artifact_paths(path)
        log_alpha = finite(self.log_alpha.detach().cpu().contiguous(), f"DARA factors for {info_path.stem}")
        info = {"layers": list(self.layers), "mode": self.mode, "shape": list(self.alpha.shape),
                **getattr(self, "meta", {}), **meta}
        info_path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"log_alpha": log_alpha}, str(tensor_path))
        write_atomic(info_path, dumps(info, indent=1))

    @classmethod
    def load(cls, path: str | Path, loaded: Loaded | None = None) -> DARA:
        """Load factors; with `loaded`, check they were made for it: its layer and head counts, and its weights
        (another model: ValueError; the same name with other weights: a warning)."""
        info, log_alpha, info_path = read_artifact(
            path, "log_alpha", ("layers", "mode"), "DARA.save (python -m micl_probe.train dara --out PATH writes "
            "PATH.json and PATH.safetensors)", "DARA factors: is it a task vector? pass it to --mtv")
        log_alpha = finite(log_alpha, f"DARA factors {info_path.with_suffix('.safetensors')}")
        if loaded is not None:
            n_layers, n_heads = loaded.adapter.n_layers(loaded.model), loaded.adapter.n_heads(loaded.model)
            if log_alpha.shape[1] != n_heads or max(info["layers"]) >= n_layers or \
                    info.get("n_layers", n_layers) != n_layers:
                raise ValueError(f"DARA factors saved for a model with {info.get('n_layers')} layers and "
                                 f"{log_alpha.shape[1]} heads ({info.get('model')}); this model has {n_layers} layers "
                                 f"and {n_heads} heads")
            check_made_for(info, loaded, f"DARA {info_path.stem}")
        dara = cls(log_alpha.shape[1], log_alpha.shape[2], tuple(info["layers"]), info["mode"])
        with torch.no_grad():
            dara.log_alpha.copy_(log_alpha)
        dara.meta = {k: v for k, v in info.items() if k not in ("layers", "mode", "shape")}
        return dara


def _text_config(model):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def _register():
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, _dara_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # sdpa's masks: None when plainly causal


def _eager(module, query, key, value, mask, scaling, dropout, post_scale=None):
    from transformers.integrations.sdpa_attention import repeat_kv

    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = query @ key.transpose(2, 3) * scaling  # [B, H, q, kv]
    if mask is not None:
        scores = scores + mask[:, :, :, : key.shape[-2]]
    weights = scores.softmax(-1, dtype=torch.float32).to(query.dtype)
    if post_scale is not None:  # raw post-softmax multiply, no renormalisation
        weights = weights * post_scale
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return (weights @ value).transpose(1, 2).contiguous(), weights


def _dara_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    call = kwargs.pop(KWARG, None)
    if call is None:
        raise ValueError("the model runs DARA attention but was not given its factors: pass the kwargs that "
                         "`DARA.applied` yields, `with dara.applied(model, layouts) as kw: model(**inputs, **kw)`")
    dara, key_image, kernel = call.dara, call.key_image, call.kernel
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    layer = getattr(module, "layer_idx", None)
    if layer not in dara.layers:
        if kernel == "sdpa":
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, **kwargs)
        return _eager(module, query, key, value, _additive(attention_mask, query, key), scaling, dropout)
    kv = key.shape[-2]  # under generation the keys grow past the prompt: new tokens are no image's
    key_image = key_image[:, :kv] if key_image.shape[1] >= kv else \
        torch.nn.functional.pad(key_image, (0, kv - key_image.shape[1]), value=-1)
    bias = dara.column_bias(dara.layers.index(layer), key_image.to(dara.log_alpha.device))
    bias = bias.to(device=query.device, dtype=query.dtype)  # [B, H, 1, kv], on the layer's own device
    if dara.mode == "logit" and kernel == "sdpa":  # the bias folded into the keys: no query x key mask
        d = value.shape[-1]
        out, weights = sdpa_attention_forward(module, *_fold_bias(query, key, value, bias[:, :, 0], scaling),
                                              attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        return out[..., :d].contiguous(), weights  # [B, q, H, d]: the padded value dimensions dropped
    mask = _additive(attention_mask, query, key)
    if dara.mode == "post":
        return _eager(module, query, key, value, mask, scaling, dropout, post_scale=bias.exp())
    return _eager(module, query, key, value, mask + bias, scaling, dropout)


def _fold_bias(query, key, value, bias, scaling: float):
    """(q', k', v') with q'.k'ᵀ·scaling = q.kᵀ·scaling + bias[b, h, column] and the same attention output (v'
    padded with zeros to the same width, so every sdpa kernel applies). query [B, H, q, d], key/value
    [B, H_kv, kv, d], bias [B, H, kv]; query head h shares key head h // G (transformers' repeat_kv order), so key
    head j carries the biases of query heads jG .. jG+G-1 in G extra dimensions and query head h a 1/scaling in
    extra dimension h % G."""
    B, H, q_len, _ = query.shape
    h_kv, kv = key.shape[1], key.shape[2]
    G = H // h_kv
    pick = torch.eye(G, dtype=query.dtype, device=query.device)[torch.arange(H, device=query.device) % G]  # [H, G]
    q_extra = (pick / scaling)[None, :, None, :].expand(B, H, q_len, G)
    k_extra = bias.reshape(B, h_kv, G, kv).transpose(2, 3)  # [B, H_kv, kv, G]
    return (torch.cat([query, q_extra], -1), torch.cat([key, k_extra.to(key.dtype)], -1),
            torch.nn.functional.pad(value, (0, G)))


def _additive(mask, query, key) -> torch.Tensor:
    """The layer's mask as an additive float [B|1, 1|H, q, kv]: sdpa's None (plainly causal) made explicit, a
    boolean one (True = attend) turned to 0 / the dtype's minimum (as transformers' eager masks: a padding row that
    attends to nothing stays finite)."""
    q_len, kv = query.shape[2], key.shape[2]
    lowest = torch.finfo(query.dtype).min
    if mask is None:
        return torch.full((q_len, kv), lowest, device=query.device, dtype=query.dtype).triu(kv - q_len + 1)[None, None]
    mask = mask[:, :, :, :kv]
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, device=query.device, dtype=query.dtype).masked_fill(~mask, lowest)
    return mask


# --- fixed factors and training --------------------------------------------------------------------------
def fixed_alpha(loaded: Loaded, shots: int, alpha: float, layers=None) -> DARA:
    """An untrained DARA with factor `alpha` on every demo image (query image 1), all heads of `layers`."""
    dara = DARA.for_model(loaded, n_images=shots + 1, layers=layers)
    return dara.set_alpha(alpha, (..., slice(0, shots)))


def alpha_sweep(loaded: Loaded, alphas=(0.5, 2.0, 4.0), layers=None, kernel: str = "eager") -> dict:
    """{"alpha=<a>": intervention}: factor `a` on every demo image of whatever prompt it is given (a `fixed_alpha`
    built per batch), for harness conditions such as "4-shot+alpha=2"."""
    def factory(a):
        return lambda layouts: fixed_alpha(loaded, layouts[0].n_images - 1, a, layers).applied(
            loaded.model, layouts, kernel=kernel)
    for a in alphas:
        if finite_number(a, "an alpha") <= 0:
            raise ValueError(f"alpha {a}: factors must be finite numbers > 0")
    return {f"alpha={a:g}": tagged(factory(a), digest("alpha", a, layers, kernel)) for a in alphas}


def train_dara(loaded: Loaded, task: str, shots: int = 4, layers=None, mode: str = "logit",
               fit_config: FitConfig | None = None) -> tuple[DARA, list[dict]]:
    """Learn one factor per (layer, head, image) on k-shot prompts of `task` (procedural, or a folder task's support
    set); the model stays frozen. Settings: `FitConfig` (default learning rate 0.05)."""
    cfg = (fit_config or FitConfig()).with_lr(LR)
    torch.manual_seed(cfg.seed)
    train = episode_batches(loaded, task, shots, cfg.batch, cfg.seed, "support", cfg)
    first = next(train)
    n_images = first.layouts[0].n_images  # a demo may hold several images (VL-ICL's interleaved, matching tasks)
    dara = DARA.for_model(loaded, n_images=n_images, layers=layers, mode=mode)
    print(f"DARA: {dara.n_params} parameters ({len(dara.layers)} layer(s) x {dara.alpha.shape[1]} heads x "
          f"{n_images} images)")
    val = list(itertools.islice(episode_batches(loaded, task, shots, cfg.batch, cfg.seed, "val", cfg),
                                max(1, cfg.n_val // cfg.batch)))

    def loss_of(b):
        with dara.applied(loaded.model, b.layouts) as kwargs:
            return loaded.model(**b.inputs, **kwargs, labels=query_labels(b)).loss

    with frozen(loaded.model):
        history = fit([dara.log_alpha], loss_of, itertools.chain([first], train), val, cfg, desc=f"DARA {task}")
    dara.meta.update({"task": task, "shots": shots, "steps_run": history[-1]["step"] if history else 0})
    return dara, history
