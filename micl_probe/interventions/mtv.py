"""Multimodal Task Vectors (Huang et al., 2024) and the baselines the field compares them to.

    mtv = extract(loaded, support_episodes, n_shots=4, n_prompts=100)     # mean[layer, head, d_head]
    mask = locate(loaded, mtv, support_zero_shot, val_zero_shot)         # REINFORCE over heads -> bool[layer, head]
    with inject(loaded, mtv.mean, mask, layouts):                        # replace those heads at the last token
        logits = loaded.model(**zero_shot_inputs).logits

Hook points (every family, through its adapter): the input of each decoder layer's `o_proj`, viewed as
head_out[batch, seq, head, d_head] — the head's output before the output projection. Extraction reads it with an
nnsight trace; injection rewrites it with a forward pre-hook (so it also works inside `generate`).

Baselines on the same machinery:
  * function vectors (Todd et al.): heads ranked by causal indirect effect of patching their mean output into a
    zero-shot prompt; the sum of the top heads' mean outputs, projected by their o_proj slices, added to the
    residual stream after one layer at the last token;
  * task vectors (Hendel et al.): the mean last-token hidden state after one layer, patched (replaced) into the
    zero-shot prompt at that layer.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core import Episode, Loaded, PreparedBatch
from ..core.provenance import (
    artifact_paths,
    check_made_for,
    digest,
    dumps,
    finite,
    made_for,
    read_artifact,
    tagged,
    write_atomic,
)

# --- the artifact ----------------------------------------------------------------------------------------
KINDS = ("mtv", "mtv_mask", "function_vector", "task_vector")
@dataclass
class TaskVector:
    """A saved vector with its metadata: MTV means [layer, head, d_head], a function vector [d_model], a task
    vector [d_model], or a head mask [layer, head]."""

    values: torch.Tensor
    kind: str  # "mtv" | "mtv_mask" | "function_vector" | "task_vector"
    meta: dict = field(default_factory=dict)  # model, family, task, n_shots, n_prompts, seed, layer, heads …

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown TaskVector kind {self.kind!r}; kinds: {', '.join(KINDS)}")
        if not isinstance(self.values, torch.Tensor):
            raise TypeError(f"TaskVector values must be a torch.Tensor, got {type(self.values).__name__}")
        finite(self.values, f"{self.kind} values")

    @property
    def mean(self) -> torch.Tensor:
        return self.values

    def save(self, path: str | Path) -> None:
        """PATH.safetensors (the values) + PATH.json (kind, shape, the model it was made for, task, shots …). A name
        with dots keeps them."""
        from safetensors.torch import save_file

        info_path, tensor_path = artifact_paths(path)
        info_path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"values": finite(self.values, f"{self.kind} {info_path.stem}").contiguous().float()
                   if self.values.dtype != torch.bool else self.values.to(torch.uint8)}, str(tensor_path))
        write_atomic(info_path, dumps({"kind": self.kind, "shape": list(self.values.shape), **self.meta}, indent=1))

    @classmethod
    def load(cls, path: str | Path, loaded=None, kind: str | None = None) -> TaskVector:
        """Load; with `loaded`, check the artifact was made for a model of the same layer/head/width shape (and its
        weights: another model is refused, the same name with other weights warns); `kind`: the kind expected."""
        meta, values, info_path = read_artifact(
            path, "values", ("kind",), "TaskVector.save (python -m micl_probe.train mtv --out PATH writes "
            "PATH_means.* and PATH_heads.*)", "task vector values: is it DARA factors? pass it to --dara")
        found = meta.pop("kind")
        if kind is not None and found != kind:
            raise ValueError(f"{info_path} is a {found!r}, where a {kind!r} is expected"
                             + (" (MEANS then HEADS: swap the two paths)" if {found, kind} == {"mtv", "mtv_mask"}
                                else ""))
        meta.pop("shape", None)
        if found == "mtv_mask":
            values = values.bool()
        tv = cls(values, found, meta)
        if loaded is not None:
            tv.check(loaded)
            check_made_for(meta, loaded, f"{found} {info_path.stem}")
        return tv

    def check(self, loaded) -> None:
        m, a = loaded.model, loaded.adapter
        want = {"mtv": (a.n_layers(m), a.n_heads(m), a.head_dim(m)), "mtv_mask": (a.n_layers(m), a.n_heads(m)),
                "function_vector": (a.text_config(m).hidden_size,),
                "task_vector": (a.text_config(m).hidden_size,)}[self.kind]
        if tuple(self.values.shape) != want:
            raise ValueError(f"{self.kind} of shape {tuple(self.values.shape)} (made for {self.meta.get('model')}) "
                             f"does not fit {loaded.name}: expected {want}")


# --- hook points -----------------------------------------------------------------------------------------
@torch.no_grad()
def head_outputs(loaded: Loaded, batch, positions: list[int]) -> torch.Tensor:
    """head_out[B, layer, head, d_head] at one position per row (the o_proj input, per head), via nnsight; zeros in a
    hybrid decoder's linear-attention layers (no heads there to read or patch)."""
    model, adapter = loaded.model, loaded.adapter
    H, D = adapter.n_heads(model), adapter.head_dim(model)
    decoder = loaded.decoder_envoy()
    rows = torch.arange(len(positions))
    pos = torch.tensor(positions)
    layers = adapter.attention_layers(model)
    saved = []
    with loaded.envoy.trace(**batch.inputs):
        for layer in layers:
            x = decoder.layers[layer].self_attn.o_proj.input  # [B, seq, H * D]
            saved.append(x[rows, pos].save())
    out = torch.zeros(len(positions), adapter.n_layers(model), H, D)
    for layer, s in zip(layers, saved):
        out[:, layer] = s.reshape(len(positions), H, D).float().cpu()
    return out


@torch.no_grad()
def extract(loaded: Loaded, episode_stream, n_prompts: int = 100, batch_size: int = 10, meta: dict | None = None
            ) -> TaskVector:
    """MTV means[layer, head, d_head]: head outputs at the last prompt token, averaged over `n_prompts` k-shot
    prompts drawn from `episode_stream` (an iterator of Episodes, or of `PreparedBatch`es you built yourself:
    `PreparedBatch.of(inputs, layouts)`, each counting its rows). The mean is streamed: one batch at a time."""
    total, count = None, 0
    bar = tqdm(total=n_prompts, desc="extract MTV", mininterval=1)
    while count < n_prompts:
        first = next(episode_stream)
        if isinstance(first, PreparedBatch):
            b = first.to(loaded.device)
        else:
            b = loaded.prepare_batch([first] + [next(episode_stream) for _ in range(min(batch_size, n_prompts - count)
                                                                                   - 1)])
        out = head_outputs(loaded, b, [lay.answer_position for lay in b.layouts])  # [B, L, H, D]
        total = out.sum(0) if total is None else total + out.sum(0)
        count += len(b)
        bar.update(len(b))
    bar.close()
    ep = b.episodes[0]
    info = {**made_for(loaded), "n_prompts": count,
            "n_shots": getattr(ep, "shots", b.layouts[0].n_demos), "task": getattr(ep, "task", "custom"),
            **(meta or {})}
    return TaskVector(total / count, "mtv", info)


def injection(loaded: Loaded, means: torch.Tensor, mask: torch.Tensor, every_token: bool = False):
    """`layouts -> context manager`: `inject` as a per-batch intervention (harness conditions, count_correct)."""
    return tagged(lambda layouts: inject(loaded, means, mask, layouts, every_token=every_token),
                  digest("mtv", means, mask.to(torch.bool), every_token))


@contextlib.contextmanager
def inject(loaded: Loaded, means: torch.Tensor, mask: torch.Tensor, layouts, every_token: bool = False,
           all_positions: bool = False):
    """Replace the selected heads' outputs with `means` at each row's last prompt token.

    means [layer, head, d_head], or [B, layer, head, d_head] (one per row: activation patching from another run's
    `head_outputs`); mask bool [layer, head] or [B, layer, head] (one mask per row);
    every_token: also at every token generated after the prompt (`generate`), not only the first;
    all_positions: at every position of every pass (a head knocked out everywhere: `knockout`);
    layouts None: at the last position of every pass (the one-token continuations of a shared prefix).
    """
    model, adapter = loaded.model, loaded.adapter
    H, D = adapter.n_heads(model), adapter.head_dim(model)
    positions = None if layouts is None else torch.tensor([lay.answer_position for lay in layouts])
    prompt_len = None if layouts is None else layouts[0].seq_len
    handles = []
    mask = mask.to(torch.bool)
    layers = adapter.attention_layers(model)
    linear = [x for x in range(adapter.n_layers(model)) if x not in layers]
    if linear and mask[..., linear, :].any():
        raise ValueError(f"the mask selects heads in linear-attention layers {linear} of this {adapter.family} model, "
                         f"which have no heads to patch; select heads of its attention layers {layers}")

    per_row = mask.dim() == 3
    active = (mask.any(0) if per_row else mask).any(-1)  # [L]: only layers with a selected head get a hook
    ready: dict = {}  # layer -> (selection, value) on that layer's device and dtype, made at its first call

    def hook_for(layer):
        def pre_hook(module, args):
            x = args[0]  # [B, seq, H * D]
            B, seq = x.shape[:2]
            if layer not in ready:
                m = mask[:, layer] if per_row else mask[layer].expand(B, H)  # [B, H]
                ready[layer] = (m.to(x.device)[..., None], means[..., layer, :, :].to(device=x.device, dtype=x.dtype))
            sel, value = ready[layer]  # [B, H, 1], [H, D] or [B, H, D]
            if all_positions:
                x = torch.where(sel[:, None], value if value.dim() == 2 else value[:, None], x.view(B, seq, H, D))
                return (x.reshape(B, seq, H * D),) + tuple(args[1:])
            if positions is not None and seq == prompt_len:  # the prompt pass: the last prompt token of each row
                cols = ready.setdefault("cols", positions.to(x.device))
            elif every_token or positions is None:  # a token after a cached prefix: patch it
                cols = torch.full((B,), seq - 1, device=x.device)
            else:
                return None
            x = x.clone() if torch.is_grad_enabled() else x  # the attention output feeds o_proj alone
            heads = x.view(B, seq, H, D)
            rows = torch.arange(B, device=x.device)
            heads[rows, cols] = torch.where(sel, value, heads[rows, cols])
            return (x,) + tuple(args[1:])
        return pre_hook

    for layer in layers:
        if active[layer]:
            handles.append(adapter.o_proj(model, layer).register_forward_pre_hook(hook_for(layer)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# --- locating heads: REINFORCE ---------------------------------------------------------------------------
def reinforce(n_layers: int, n_heads: int, loss_of_masks, steps: int = 600, n_masks: int = 32, lr: float = 0.1,
              init: float = -1.0, seed: int = 0, progress: bool = True, layers: list[int] | None = None
              ) -> torch.Tensor:
    """The paper's head search, model-free: logits theta[layer, head] (init -1), p = clamp(sigmoid(theta)),
    each step draws `n_masks` Bernoulli masks, scores them with `loss_of_masks(masks[n, L, H]) -> losses[n]`,
    and minimises mean(log p(mask) * normalised advantage). Returns p[layer, head]. `layers`: the layers whose heads
    may be drawn (a hybrid decoder's attention layers); the others keep p = 0."""
    gen = torch.Generator().manual_seed(seed)
    theta = torch.full((n_layers, n_heads), float(init), requires_grad=True)
    allowed = torch.zeros(n_layers, 1)
    allowed[list(range(n_layers)) if layers is None else layers] = 1.0
    opt = torch.optim.Adam([theta], lr=lr)
    for _ in tqdm(range(steps), desc="REINFORCE heads", disable=not progress, mininterval=1):
        p = torch.sigmoid(theta).clamp(1e-3, 1 - 1e-3)
        masks = torch.bernoulli(p.detach().expand(n_masks, n_layers, n_heads), generator=gen) * allowed
        with torch.no_grad():
            losses = loss_of_masks(masks.bool()).float()
        adv = (losses - losses.mean()) / (losses.std() + 1e-3)
        log_p = ((masks * p.log() + (1 - masks) * (1 - p).log()) * allowed).sum((1, 2))
        (log_p * adv).mean().backward()
        opt.step()
        opt.zero_grad()
    return torch.sigmoid(theta).clamp(1e-3, 1 - 1e-3).detach() * allowed


@torch.no_grad()
def last_token_logits(loaded: Loaded, batch: PreparedBatch, means: torch.Tensor, masks: torch.Tensor,
                      chunk: int = 32) -> torch.Tensor:
    """logits[n, vocab] at the last token of ONE prompt (`batch` of one unpadded episode) under each of `masks`
    [n, layer, head] (those heads replaced by `means` at that token), the prompt run ONCE: its KV cache, cut back
    before the last token, is repeated `chunk` times and each group of masks runs as `chunk` one-token
    continuations. Injection at the last token cannot change the prefix, so this equals running the whole prompt
    once per mask (tested), at a fraction of the cost on long prompts. The last token keeps the position the model
    gave it in the whole prompt (M-RoPE included): the decoder's own position ids are read from that pass."""
    model, lay = loaded.model, batch.layouts[0]
    if len(batch) != 1 or lay.answer_position != lay.seq_len - 1:
        raise ValueError("last_token_logits takes one unpadded prompt that ends at its answer position")
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    seen = {}

    def read_positions(module, args, kwargs):
        seen["position_ids"] = kwargs.get("position_ids")

    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    if hasattr(cache, "activate_past_recording"):  # sliding-window layers keep what a crop must give back
        cache.activate_past_recording()
    hook = loaded.adapter.decoder(model).register_forward_pre_hook(read_positions, with_kwargs=True)
    try:
        model(**batch.inputs, **{cache_kw: cache}, use_cache=True)
    finally:
        hook.remove()
    cache.crop(-1)  # the prefix: every token but the last
    width = min(chunk, len(masks))
    cache.batch_repeat_interleave(width)
    ids = batch.inputs["input_ids"]
    step = {k: v[:, -1:].expand(width, 1) for k, v in batch.inputs.items()
            if torch.is_tensor(v) and v.shape == ids.shape}
    step["attention_mask"] = batch.inputs["attention_mask"].expand(width, -1)
    if seen.get("position_ids") is not None:  # [(3|4,) 1, seq]: the batch is the second-to-last axis
        pos = seen["position_ids"][..., -1:]
        step["position_ids"] = pos.expand(*pos.shape[:-2], width, 1)
    logits = []
    for start in range(0, len(masks), width):
        group = masks[start:start + width]
        padded = torch.cat([group, group.new_zeros(width - len(group), *group.shape[1:])])
        with inject(loaded, means, padded, None):
            logits.append(model(**step, **{cache_kw: cache}, use_cache=True).logits[: len(group), -1].float())
        cache.crop(-1)  # drop the continuation token: the next group reuses the prefix
    return torch.cat(logits)


def shares_prefix(loaded: Loaded) -> bool:
    """Whether the prefix-shared path applies: a KV cache that can be cropped back (not a hybrid decoder's
    recurrent linear-attention state)."""
    return len(loaded.adapter.attention_layers(loaded.model)) == loaded.adapter.n_layers(loaded.model)


def first_token_ce(loaded, batch, means, masks) -> torch.Tensor:
    """Cross-entropy of each row's first answer token with `masks[B, L, H]` heads replaced by `means`."""
    with inject(loaded, means, masks, batch.layouts):
        logits = loaded.model(**batch.inputs).logits
    rows = torch.arange(len(batch))
    pos = torch.tensor([lay.answer_position for lay in batch.layouts])
    target = torch.stack([a[0] for a in batch.answer_ids]).to(logits.device)
    return torch.nn.functional.cross_entropy(logits[rows, pos].float(), target, reduction="none")


@torch.no_grad()
def answer_logits(loaded: Loaded, episode, means: torch.Tensor, masks: torch.Tensor, chunk: int = 32
                  ) -> tuple[torch.Tensor, int]:
    """(logits[n, vocab] at one prompt's answer position under each of `masks` [n, layer, head], the gold first
    answer token): the prefix shared (`last_token_logits`) where the cache allows, else the whole prompt run for
    each group of `chunk` masks (a hybrid decoder). `episode`: an Episode with its gold answer (a custom
    `PreparedBatch` carries no answer to score: `locate` and CIE take episodes)."""
    if not isinstance(episode, Episode):
        raise TypeError(f"head selection scores each prompt's gold answer, so it takes Episodes, got a "
                        f"{type(episode).__name__}; custom PreparedBatches work with extract and inject")
    if not episode.query.answer:
        raise ValueError("head selection scores the query's gold answer: give each episode's Query an answer")
    b = loaded.prepare_batch([episode])
    target = int(b.answer_ids[0][0])
    if shares_prefix(loaded):
        return last_token_logits(loaded, b, means, masks, chunk=chunk), target
    logits = []
    for group in masks.split(chunk):
        whole = loaded.prepare_batch([episode] * len(group))
        with inject(loaded, means, group, whole.layouts):
            logits.append(loaded.model(**whole.inputs).logits[:, b.layouts[0].answer_position].float())
    return torch.cat(logits), target


def answer_ce(loaded: Loaded, episode, means: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Cross-entropy [n] of one prompt's first answer token under each of `masks` (`answer_logits`), on the CPU."""
    logits, target = answer_logits(loaded, episode, means, masks, chunk=len(masks))
    return torch.nn.functional.cross_entropy(logits, torch.full((len(masks),), target, device=logits.device),
                                             reduction="none").cpu()


def locate(loaded, mtv: TaskVector, train_stream, val_episodes, steps: int = 600, n_masks: int = 32,
           lr: float = 0.1, n_final: int = 10, seed: int = 0) -> TaskVector:
    """REINFORCE over heads on zero-shot examples from `train_stream` (one per step, `n_masks` masks batched),
    then the best of `n_final` sampled masks by mean first-token CE on `val_episodes`."""
    adapter, model = loaded.adapter, loaded.model
    means = mtv.mean

    def loss_of_masks(masks):  # one zero-shot prompt under every mask: its prefix computed once
        return answer_ce(loaded, next(train_stream), means, masks)

    p = reinforce(adapter.n_layers(model), adapter.n_heads(model), loss_of_masks, steps=steps, n_masks=n_masks,
                  lr=lr, seed=seed, layers=adapter.attention_layers(model))
    gen = torch.Generator().manual_seed(seed + 1)
    candidates = torch.bernoulli(p.expand(n_final, *p.shape), generator=gen).bool()
    # each validation prompt's prefix once, the candidates as its continuations
    scores = torch.stack([answer_ce(loaded, ep, means, candidates) for ep in val_episodes]).mean(0).tolist()
    best = candidates[int(np.argmin(scores))]
    return TaskVector(best, "mtv_mask", {**mtv.meta, "p": p.tolist(), "val_ce": scores, "steps": steps})


# --- baselines -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def residual_at(loaded, layer: int, layouts, vector: torch.Tensor, mode: str):
    """At each row's last prompt token, after decoder layer `layer`: "add" `vector` [d_model] to the residual
    stream, or "replace" the hidden state with it."""
    positions = torch.tensor([lay.answer_position for lay in layouts])
    prompt_len = layouts[0].seq_len

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output  # [B, seq, d_model]
        if hidden.shape[1] != prompt_len:
            return None
        hidden = hidden.clone()
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        v = vector.to(hidden.dtype).to(hidden.device)
        pos = positions.to(hidden.device)
        hidden[rows, pos] = hidden[rows, pos] + v if mode == "add" else v.expand(len(rows), -1)
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    handle = loaded.adapter.layers(loaded.model)[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def residual_on(loaded: Loaded, layer: int, vector: torch.Tensor, mode: str):
    """`layouts -> context manager`: `residual_at` as a per-batch intervention (function / task vectors)."""
    return lambda layouts: residual_at(loaded, layer, layouts, vector, mode)


@torch.no_grad()
def indirect_effects(loaded, mtv: TaskVector, episodes) -> torch.Tensor:
    """CIE[layer, head]: mean increase of p(first answer token) when one head's last-token output is replaced by
    its mean, on zero-shot prompts (Todd et al.'s causal indirect effect, with zero-shot as the corrupted run); NaN
    in a hybrid decoder's linear-attention layers."""
    adapter, model = loaded.adapter, loaded.model
    L, H = adapter.n_layers(model), adapter.n_heads(model)
    heads = [(layer, head) for layer in adapter.attention_layers(model) for head in range(H)]
    masks = torch.zeros(1 + len(heads), L, H, dtype=torch.bool)  # no head, then each head alone
    for i, (layer, head) in enumerate(heads):
        masks[1 + i, layer, head] = True
    cie = torch.full((L, H), float("nan"))
    gain = torch.zeros(len(heads))
    for ep in tqdm(episodes, desc="indirect effects", mininterval=1):  # each prompt's prefix once, every head after
        logits, target = answer_logits(loaded, ep, mtv.mean, masks)
        p = logits.softmax(-1)[:, target].cpu()
        gain += (p[1:] - p[0]) / len(episodes)
    for (layer, head), g in zip(heads, gain):
        cie[layer, head] = float(g)
    return cie


def function_vector(loaded, mtv: TaskVector, cie: torch.Tensor, top_k: int = 4) -> TaskVector:
    """Sum over the top-k heads by CIE of their mean outputs projected by their o_proj slices: [d_model]."""
    adapter, model = loaded.adapter, loaded.model
    D = adapter.head_dim(model)
    flat = cie.nan_to_num(float("-inf")).flatten().topk(top_k).indices
    heads = [(int(i) // cie.shape[1], int(i) % cie.shape[1]) for i in flat]
    fv = 0
    for layer, head in heads:
        w = adapter.o_proj(model, layer).weight[:, head * D:(head + 1) * D].float().cpu()  # [d_model, D]
        fv = fv + w @ mtv.mean[layer, head]
    return TaskVector(fv.detach(), "function_vector", {**mtv.meta, "heads": heads, "top_k": top_k})


@torch.no_grad()
def task_vector(loaded, episode_stream, layer: int, n_prompts: int = 100, batch_size: int = 10) -> TaskVector:
    """Mean last-token hidden state after decoder layer `layer` over k-shot prompts: [d_model]."""
    total, count = None, 0
    while count < n_prompts:
        eps = [next(episode_stream) for _ in range(min(batch_size, n_prompts - count))]
        b = loaded.prepare_batch(eps)
        hs = loaded.model(**b.inputs, output_hidden_states=True).hidden_states[layer + 1]  # after `layer`
        rows = torch.arange(len(eps))
        pos = torch.tensor([lay.answer_position for lay in b.layouts])
        v = hs[rows, pos].float().sum(0).cpu()
        total = v if total is None else total + v
        count += len(eps)
    return TaskVector(total / count, "task_vector", {"model": loaded.name, "layer": layer, "n_prompts": n_prompts,
                                                     "n_shots": eps[0].shots, "task": eps[0].task})
