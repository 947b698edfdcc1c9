"""Attention mass on every segment of a MICL prompt, per layer and head.

    am = capture_attention(loaded, episodes, rows="answer")     # nnsight backend, memory-lean (default)
    am = capture_attention(loaded, batch)                        # a PreparedBatch (loaded.prepare_batch): one pass
    am.mass                  # [episode, layer, head, segment]: mean over the rows of the attention on each segment
    am.segments              # ["special", "none.template", "demo0.image", ..., "query.question"]
    am.visual_share()        # [episode, layer, head]: mass on image tokens (demos' and query's)
    am.demo_image_share()    # [episode, layer, head, demo0 .. demoK-1, query]
    am.where_it_looks()      # [episode, layer, head, part]: demo images, query image, demo text, query text, …
    capture_attention(loaded, episodes, sinks=20)   # sink tokens (measure.heads) in a segment "sink" of their own
    am.save("runs/x")  /  AttentionMass.load("runs/x")

Hybrid decoders (Qwen3.5): only the layers with softmax attention are measured; the linear-attention layers are NaN
in `mass` and every view of it (take means with `torch.nanmean`), and `am.meta["layers_measured"]` names the others.

Rows: "answer" = the position whose logits predict the first answer token; "last" = the last prompt token;
"query_text" = the query's question tokens; or a list of explicit positions. Mass over several rows is averaged.
Episodes are prepared and run `batch_size` at a time (default 1); a prepared batch runs in one forward pass,
padding-aware (each row reduced with its own layout), so a caller that already prepared it (the harness) prepares
nothing twice.

Backends (all reduce inside the forward pass and keep only [layer, head, segment] per episode):
  * "nnsight" (default): nnsight traces each decoder attention module's `attention_interface(...)` call and takes
    its inputs — queries and keys after RoPE/M-RoPE, the mask, the scaling — then recomputes softmax(q·kᵀ) for the
    requested rows only. Peak extra memory O(rows × seq × heads) for one layer; the model keeps its fast
    attention (sdpa). Works for every supported family: RoPE variants are the model's own code.
  * "transformer_lens": a TransformerLens `TransformerBridge` built on a twin of the model that shares its weights
    (booting a bridge rewires modules in place and forces eager attention; the twin keeps the user's model
    untouched); hooks `blocks.{l}.attn.hook_pattern`, reduces the rows and drops the layer's pattern.
    Families whose adapter says `tl_bridge` (qwen2_5_vl's bridge also needs torchvision installed).
  * "eager": HF `output_attentions=True` on eager attention, reduced afterwards: the reference the others are
    tested against; materialises every layer's seq × seq pattern.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core import ADAPTERS, QUERY, ROLE, ROLES, Episode, Loaded, PreparedBatch, TokenLayout, prepared, within
from ..core.prefix import one_demo_set, split_prefix
from ..core.provenance import artifact_paths, dumps, write_atomic

BACKENDS = ("nnsight", "transformer_lens", "eager")
PARTS = ("demo_image", "query_image", "demo_text", "query_text", "special", "other")  # see where_it_looks
HUB_PARTS = ("demo_hub", "query_hub")  # where_it_looks' parts for MMICT's hub tokens, when a prompt has them
SINK = "sink"  # the segment (and part) of sink tokens, when capture_attention is given sinks=


# --- the result ------------------------------------------------------------------------------------------
@dataclass
class AttentionMass:
    """Attention mass of chosen rows (the answer position by default) on every segment of MICL prompts.

    `mass` has dimensions [episode, layer, head, segment] (`dims`), a segment being an owner and a role
    ("demo0.image", "query.question", "special"; `segments` names them in prompt order). Every row sums to 1 over
    the segments. The views reduce the last dimension: a view that returns one number per [episode, layer, head]
    returns a tensor (`visual_share`, `text_share`, `special_share`, `role_mass`); a view with a new last dimension
    returns (tensor, names of that dimension) (`demo_image_share`, `where_it_looks`, `owner_role_table`).
    `to_frame(view)` gives any of them as a long pandas DataFrame with named columns. Made by
    `capture_attention`; `save`/`load` round-trip it."""

    dims = ("episode", "layer", "head", "segment")
    mass: torch.Tensor  # [episode, layer, head, segment] float32, rows averaged; a segment absent from an episode = 0;
    #                     a layer without softmax attention (hybrid decoders) = NaN, see meta["layers_measured"]
    segments: list[str]  # segment names, canonical order
    rows: str  # "answer" | "last" | "query_text" | "explicit"
    row_positions: list[list[int]]  # per episode, the positions averaged over
    meta: dict = field(default_factory=dict)  # model, family, backend, tasks, shots, conditions

    def __post_init__(self):
        self.meta.setdefault("tasks", [])
        self.meta.setdefault("shots", [])
        self.meta.setdefault("layers_measured", list(range(self.mass.shape[1])))

    @property
    def n_episodes(self) -> int:
        return self.mass.shape[0]

    def _sum(self, pick) -> torch.Tensor:
        idx = [i for i, s in enumerate(self.segments) if pick(s)]
        return self.mass[..., idx].sum(-1)

    def role_mass(self, role: str) -> torch.Tensor:
        """[episode, layer, head] mass on every segment of one role ("image", "question", "special", ...)."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles are {ROLES}")
        return self._sum(lambda s: s == "special" if role == "special" else s.endswith("." + role))

    def visual_share(self) -> torch.Tensor:
        """[episode, layer, head] share of attention on image tokens (all demos and the query)."""
        return self.role_mass("image")

    def text_share(self) -> torch.Tensor:
        """[episode, layer, head] share on question, answer and template text (not image markup, not specials)."""
        return self.role_mass("question") + self.role_mass("answer") + self.role_mass("template")

    def special_share(self) -> torch.Tensor:
        """[episode, layer, head] share on special tokens (BOS and chat-template specials: the attention sinks)."""
        return self.role_mass("special")

    def sink_share(self) -> torch.Tensor:
        """[episode, layer, head] share on sink tokens (captured with `sinks=`; zeros otherwise)."""
        return self._sum(lambda s: s == SINK)

    def demo_image_share(self) -> tuple[torch.Tensor, list[str]]:
        """([episode, layer, head, owner], owner names): image mass of each demo and of the query."""
        owners = sorted({s.split(".")[0] for s in self.segments if s.endswith(".image")},
                        key=lambda o: (o == "query", int(o[4:]) if o.startswith("demo") else 0))
        return torch.stack([self._sum(lambda s, o=o: s == f"{o}.image") for o in owners], -1), owners

    def owner_role_table(self) -> tuple[torch.Tensor, list[str], list[str]]:
        """([episode, layer, head, owner, role], owners, roles): mass by turn and role; specials on owner 'all'."""
        owners = []
        for s in self.segments:
            o = s.split(".")[0] if s not in ("special", SINK) else "all"
            if o not in owners:
                owners.append(o)
        roles = [r for r in ROLES if r != "pad"] + ([SINK] if SINK in self.segments else [])
        t = torch.zeros(*self.mass.shape[:3], len(owners), len(roles))
        for j, s in enumerate(self.segments):
            o, r = ("all", s) if s in ("special", SINK) else s.split(".")
            t[..., owners.index(o), roles.index(r)] += self.mass[..., j]
        return t, owners, roles

    def where_it_looks(self) -> tuple[torch.Tensor, tuple[str, ...]]:
        """([episode, layer, head, part], PARTS): the mass on the demos' images, the query's image, the demos' text
        (question, answer, template), the query's text, special tokens, and everything else (image markup, system
        text). The parts sum to 1 for every row. Prompts with MMICT hub tokens (`interventions.mmict`) add the parts
        "demo_hub" and "query_hub"; captured with sinks, "sink"."""
        def part(s: str) -> str:
            if s in ("special", SINK):
                return s
            owner, role = s.split(".")
            who = "demo" if owner.startswith("demo") else "query" if owner == "query" else None
            kind = {"image": "image", "hub": "hub", "question": "text", "answer": "text", "template": "text"}.get(role)
            return f"{who}_{kind}" if who and kind else "other"

        present = {part(s) for s in self.segments}
        parts = PARTS + tuple(p for p in HUB_PARTS + (SINK,) if p in present)
        index = [parts.index(part(s)) for s in self.segments]
        out = torch.zeros(*self.mass.shape[:3], len(parts))
        out.index_add_(3, torch.tensor(index, dtype=torch.long), self.mass)
        return out, parts

    def to_frame(self, view: str = "mass"):
        """A pandas DataFrame in long form, one row per episode x layer x head x name of the view's last dimension:
        columns episode, layer, head, the dimension's name ("segment" for "mass", with its owner and role; "part"
        for "where_it_looks"; "image" for "demo_image_share"), value, and each episode's task/shot/condition where
        `meta` lists them. `view`: "mass" (the default), "where_it_looks" or "demo_image_share"."""
        import pandas as pd

        views = {"mass": lambda: (self.mass, self.segments, "segment"),
                 "where_it_looks": lambda: (*self.where_it_looks(), "part"),
                 "demo_image_share": lambda: (*self.demo_image_share(), "image")}
        if view not in views:
            raise ValueError(f"view {view!r}: use one of {', '.join(views)}")
        values, names, dim = views[view]()
        e, layers, heads, n = values.shape
        grid = np.stack(np.meshgrid(np.arange(e), np.arange(layers), np.arange(heads), np.arange(n), indexing="ij"),
                        -1).reshape(-1, 4)
        df = pd.DataFrame({"episode": grid[:, 0], "layer": grid[:, 1], "head": grid[:, 2],
                           dim: np.asarray(list(names), dtype=object)[grid[:, 3]],
                           "value": values.float().reshape(-1).numpy()})
        if dim == "segment":
            split = [("all", s) if s in ("special", SINK) else tuple(s.split(".")) for s in names]
            df["owner"] = np.asarray([o for o, _ in split], dtype=object)[grid[:, 3]]
            df["role"] = np.asarray([r for _, r in split], dtype=object)[grid[:, 3]]
        for key, column in (("tasks", "task"), ("shots", "shots"), ("conditions", "condition")):
            per_episode = self.meta.get(key)
            if isinstance(per_episode, list) and len(per_episode) == e:
                df[column] = np.asarray(per_episode, dtype=object)[grid[:, 0]]
        return df

    def save(self, path: str | Path) -> None:
        """`path.safetensors` (mass) + `path.json` (segments, rows, metadata)."""
        from safetensors.torch import save_file

        info_path, tensor_path = artifact_paths(path)  # a name with dots keeps them
        info_path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"mass": self.mass.contiguous()}, str(tensor_path))
        write_atomic(info_path, dumps({"segments": self.segments, "rows": self.rows,
                                       "row_positions": self.row_positions, "meta": self.meta}, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> AttentionMass:
        from safetensors.torch import load_file

        info_path, tensor_path = artifact_paths(path)
        d = json.loads(info_path.read_text())
        return cls(load_file(str(tensor_path))["mass"], d["segments"], d["rows"], d["row_positions"], d["meta"])


# --- rows and segments -----------------------------------------------------------------------------------
def row_positions(layout: TokenLayout, rows) -> list[int]:
    if isinstance(rows, str):
        if rows == "answer":
            return [layout.answer_position]
        if rows == "last":
            return [int((layout.role != ROLE["pad"]).nonzero().flatten()[-1])]
        if rows == "query_text":
            return layout.positions(owner=QUERY, role="question").tolist()
        raise ValueError(f"rows must be 'answer', 'last', 'query_text' or a list of positions, got {rows!r}")
    pos = [int(p) for p in rows]
    bad = [p for p in pos if not 0 <= p < len(layout)]
    if bad or not pos:
        raise ValueError(f"rows {bad or pos} outside the prompt of {len(layout)} tokens (valid: 0..{len(layout) - 1})")
    return pos


def canonical_segments(names: list[list[str]]) -> list[str]:
    """The union of segment names across episodes, in prompt order: specials, system text, demo 0.., query."""
    union = {n for ns in names for n in ns}

    def key(n: str):
        if n in (SINK, "special"):
            return (-3 if n == SINK else -2, 0)
        owner, role = n.split(".")
        o = -1 if owner == "none" else 10**6 if owner == "query" else int(owner[4:])
        return (o, ROLES.index(role))

    return sorted(union, key=key)


def segment_matrix(layout: TokenLayout) -> tuple[list[str], torch.Tensor]:
    """(names, onehot[seq, n_segments]): sums attention weights over each segment's keys by a matmul."""
    names, seg = layout.segment_ids()
    onehot = torch.zeros(len(layout), len(names))
    keep = seg >= 0
    onehot[keep.nonzero().flatten(), seg[keep]] = 1.0
    return names, onehot


def rows_attention(query, key, mask, scaling: float, rows, offset: int = 0) -> torch.Tensor:
    """probs[B, H, R, keys] = softmax(q[rows]·kᵀ·scaling + mask[rows]) for the given rows only.

    query [B, H, q, d], key [B, H_kv, keys, d] (grouped-query heads repeated), mask: None (causal), bool
    (True = attend) or additive float [B, 1, q, keys]; rows: a list of positions among the queries (the same for
    every episode) or a [B, R] tensor (each episode its own); `offset`: the position of the first query when the
    keys begin before it (a suffix run after a cached prefix: keys = offset + q)."""
    rows = torch.as_tensor(rows, device=query.device)
    if rows.dim() == 1:
        rows = rows.expand(query.shape[0], -1)
    b = torch.arange(query.shape[0], device=query.device)[:, None]  # [B, 1]
    q = query[b, :, rows].transpose(1, 2).float()  # [B, H, R, d]
    k = key.float()
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # [B, H, seq, d]
    scores = q @ k.transpose(-1, -2) * scaling  # [B, H, R, seq]
    if mask is None:
        causal = torch.arange(k.shape[2], device=q.device)[None, None, :] > rows[:, :, None] + offset  # [B, R, keys]
        scores = scores.masked_fill(causal[:, None], float("-inf"))
    else:
        picked = mask[b, :, rows][..., : k.shape[2]].transpose(1, 2)  # [B, 1, R, seq]
        scores = scores.masked_fill(~picked, float("-inf")) if mask.dtype == torch.bool else scores + picked.float()
    return scores.softmax(-1)


# --- backends: each maps a prepared batch to a [layer, head, n_segments of the row] tensor per row ----------
def _padded_rows(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions[B, R], weights[B, R]): each episode's rows padded to the longest list by repeating its last row,
    weighted 1/R_b on its own rows and 0 on the padding, so a weighted sum over R is each episode's mean."""
    width = max(len(r) for r in rows)
    pos = torch.tensor([r + r[-1:] * (width - len(r)) for r in rows])
    weights = torch.tensor([[1 / len(r)] * len(r) + [0.0] * (width - len(r)) for r in rows])
    return pos, weights


def _attention_call(loaded: Loaded, decoder, layers: list[int]) -> str:
    """The name of the attention-function call inside a decoder layer's attention forward (nnsight `.source`)."""
    return [op.name for op in decoder.layers[layers[0]].self_attn.source
            if op.name.startswith("attention_interface")][-1]


def _layer_input(layer_envoy):
    """The hidden states entering a decoder layer (its first argument), inside a trace."""
    args, kwargs = layer_envoy.inputs
    return args[0] if args else kwargs["hidden_states"]


def sink_ratio(hidden: torch.Tensor) -> torch.Tensor:
    """max_d |h_d| / RMS(h) over the last dimension (the attention-sink criterion, `measure.heads`), in float32."""
    h = hidden.float()
    return h.abs().amax(-1) / h.pow(2).mean(-1).sqrt().clamp_min(1e-12)


def with_sinks(onehot: torch.Tensor, sink: torch.Tensor) -> torch.Tensor:
    """`onehot` [B, seq, n_seg] (last column: the "sink" segment) with the sink positions (bool [B, seq]) moved out
    of their segments into that column."""
    out = onehot * (~sink)[..., None].to(onehot.dtype)
    out[..., -1] = sink.to(onehot.dtype)
    return out


def trace_layers(loaded: Loaded, inputs, per_layer, outputs: list | None = None, hidden: bool = False,
                 generate: dict | None = None) -> list:
    """One nnsight trace of `inputs` (a batch), the model keeping its fast attention: at every softmax-attention
    layer, `per_layer(x)` on that layer's attention-function call (`x`: query and key after RoPE [B, H, seq, d],
    [B, H_kv, seq, d], value, attention_mask, scaling; with `hidden`, also x["hidden"]: the hidden states entering the
    layer). Returns what it returned per layer (a tensor or a tuple of them), in the order of
    `adapter.attention_layers`, as float32 on the CPU; the logits are appended to `outputs` when given.
    `generate`: `model.generate`'s keyword arguments (`scoring.generation_kwargs`): the trace runs generation and
    measures its prefill (the first call of each layer: the one pass over the whole prompt, with generate's own
    positions and cache), and `outputs` gets the generated sequences [B, prompt + new] instead of the logits."""
    adapter = loaded.adapter
    decoder = loaded.decoder_envoy()
    layers = adapter.attention_layers(loaded.model)  # a hybrid decoder's linear-attention layers are skipped
    call = _attention_call(loaded, decoder, layers)
    saved = []
    run = {} if generate is None else {"fn": loaded.model.generate, **generate}
    with torch.no_grad(), loaded.envoy.trace(**inputs, **run) as tracer:
        for layer in layers:
            entering = _layer_input(decoder.layers[layer]) if hidden else None
            args, kwargs = getattr(decoder.layers[layer].self_attn.source, call).inputs
            x = adapter.attention_inputs(args, kwargs) | ({"hidden": entering} if hidden else {})
            out = per_layer(x)
            saved.append(tuple(t.save() for t in out) if isinstance(out, tuple) else out.save())
        if outputs is not None:
            result = (loaded.envoy.output.logits if generate is None else tracer.result).save()
    if outputs is not None:
        outputs.append(result)
    cpu = lambda t: t.float().cpu()  # noqa: E731
    return [tuple(map(cpu, t)) if isinstance(t, tuple) else cpu(t) for t in saved]


def _traced_rows(loaded: Loaded, inputs, rows: list[list[int]], onehot: torch.Tensor | None = None,
                 outputs: list | None = None, sinks: float | None = None, generate: dict | None = None,
                 offset: int = 0) -> torch.Tensor:
    """Each episode's rows' attention (averaged over its rows) at every layer, recomputed in one trace
    (`trace_layers`). Returns [B, layer, head, seq], or [B, layer, head, n_seg] summed by `onehot` [B, seq, n_seg]
    inside the forward (the lean path: only [B, head, n_seg] a layer is kept). The logits are appended to `outputs`
    when given (the pass that scores a batch also measures it). `sinks`: a threshold tau; `onehot`'s last column is
    the "sink" segment, and each layer moves the tokens whose hidden state entering it is a sink into it."""
    pos, weights = _padded_rows(rows)
    device = inputs["input_ids"].device
    weights = weights.to(device)[:, None, None, :]  # [B, 1, 1, R]
    onehot = None if onehot is None else onehot.to(device)[:, None]  # [B, 1, seq, n_seg]

    def per_layer(x):
        probs = rows_attention(x["query"], x["key"], x["attention_mask"], x["scaling"], pos - offset, offset)
        here = probs.device  # this layer's device (under a device_map, layers live on several)
        row = weights.to(here) @ probs  # [B, H, 1, seq]: each episode's mean over its rows
        if onehot is not None:
            by = onehot.to(here) if sinks is None else \
                with_sinks(onehot[:, 0].to(here), (sink_ratio(x["hidden"]) >= sinks).to(here))[:, None]
            row = row @ by
        return row[:, :, 0]  # [B, H, seq | n_seg]

    saved = trace_layers(loaded, inputs, per_layer, outputs, hidden=sinks is not None, generate=generate)
    return _all_layers(loaded, loaded.adapter.attention_layers(loaded.model), saved, 1)


def _all_layers(loaded: Loaded, measured: list[int], per_layer: list[torch.Tensor], dim: int) -> torch.Tensor:
    """Stack the measured layers' tensors along `dim` at their decoder indices; layers without softmax attention (a
    hybrid decoder's linear-attention layers) are NaN, so no mean silently counts them as attention on nothing."""
    n = loaded.adapter.n_layers(loaded.model)
    if len(measured) == n:
        return torch.stack(per_layer, dim)
    out = torch.full((*per_layer[0].shape[:dim], n, *per_layer[0].shape[dim:]), float("nan"))
    for layer, t in zip(measured, per_layer):
        out.select(dim, layer).copy_(t)
    return out


def _nnsight_mass(loaded: Loaded, batch: PreparedBatch, rows: list[list[int]], onehots, outputs: list | None = None,
                  sinks: float | None = None, generate: dict | None = None, prefix=None) -> list[torch.Tensor]:
    """[layer, head, n_seg] per episode through `_traced_rows`: the one-hots padded to the batch's widest (with
    sinks, each episode's last column is its "sink" segment, moved to the batch's last column for the trace)."""
    widths = [o.shape[1] for o in onehots]
    onehot = torch.zeros(len(onehots), onehots[0].shape[0], max(widths))  # [B, seq, n_seg]
    for b, o in enumerate(onehots):
        if sinks is None:
            onehot[b, :, : o.shape[1]] = o
        else:
            onehot[b, :, : o.shape[1] - 1], onehot[b, :, -1] = o[:, :-1], o[:, -1]
    inputs, offset = batch.inputs, 0
    if prefix is not None:  # the suffixes after the prefix's cache: their rows, every key (`core.prefix`)
        inputs = (prefix.suffix_inputs if generate is None else prefix.generate_inputs)(loaded.model)
        offset = prefix.length
    mass = _traced_rows(loaded, inputs, rows, onehot, outputs, sinks, generate, offset)  # [B, layer, head, n_seg]
    if sinks is None:
        return [mass[b, ..., :w] for b, w in enumerate(widths)]
    return [torch.cat([mass[b, ..., : w - 1], mass[b, ..., -1:]], -1) for b, w in enumerate(widths)]


def row_attention(loaded: Loaded, episode: Episode | PreparedBatch, rows="answer") -> torch.Tensor:
    """[layer, head, seq]: the attention of the given row(s) (averaged) over every position of one episode's prompt
    (an Episode, or a batch of one already prepared). What the segment sums and patch maps fold."""
    batch = episode if isinstance(episode, PreparedBatch) else loaded.prepare_batch([episode])
    return _traced_rows(loaded, batch.inputs, [row_positions(batch.layouts[0], rows)])[0]


def _twin(model):
    """A copy of `model`'s module tree and config that shares every parameter and buffer with it."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


def _boot_bridge(loaded: Loaded):
    import tempfile

    from transformer_lens.model_bridge import TransformerBridge

    model = loaded.model
    if getattr(loaded.processor, "tokenizer", None) is None:
        raise ValueError("the transformer_lens backend needs the model's processor (with its tokenizer) to build "
                         "its bridge: Loaded(model, processor, adapter) with the processor, or use backend='nnsight'")
    twin = _twin(model)
    twin.config.architectures = [type(model).__name__]
    try:
        with tempfile.TemporaryDirectory(prefix="micl_probe_tl_") as folder, _no_package_installs():
            twin.config.save_pretrained(folder)
            loaded.processor.tokenizer.save_pretrained(folder)
            return TransformerBridge.boot_transformers(folder, hf_model=twin, device=model.device)
    except ImportError as e:
        raise ValueError(f"TransformerLens cannot bridge the {loaded.adapter.family!r} family here ({e}); install "
                         "a torchvision built for your torch, or use backend='nnsight'") from e


@contextlib.contextmanager
def _no_package_installs():
    """TransformerLens 4.x `pip install`s torchvision when a multimodal processor fails to load (the bridge does not
    need one here). An unpinned torchvision built for another torch breaks every transformers import, so that
    install is switched off while we boot a bridge."""
    from transformer_lens.model_bridge.sources.transformers import helpers

    original = getattr(helpers, "_ensure_torchvision", None)
    helpers._ensure_torchvision = lambda: False
    try:
        yield
    finally:
        if original is not None:
            helpers._ensure_torchvision = original


def _reduce(probs_rows: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """[H, R, seq] attention of one episode's R rows -> [H, n_seg]: summed per segment, averaged over rows."""
    return (probs_rows.float() @ onehot.to(probs_rows.device)).mean(1)


def _transformer_lens_mass(loaded: Loaded, batch: PreparedBatch, rows, onehots) -> list[torch.Tensor]:
    """Through a TransformerBridge (booted once per model, on a weight-sharing twin), `hook_pattern` per layer."""
    if not loaded.adapter.tl_bridge:
        bridged = ", ".join(sorted(f for f, a in ADAPTERS.items() if a.tl_bridge))
        raise ValueError(f"TransformerLens has no TransformerBridge for the {loaded.adapter.family!r} family; "
                         f"use backend='nnsight' (bridged families: {bridged})")
    bridge = loaded.cached("transformer_lens", lambda: _boot_bridge(loaded))
    out: dict[int, list[torch.Tensor]] = {}

    def hook(pattern, hook):  # pattern [B, H, seq, seq]
        out[int(hook.name.split(".")[1])] = [_reduce(pattern[b][:, pos], onehot).cpu()
                                             for b, (pos, onehot) in enumerate(zip(rows, onehots))]

    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(loaded.adapter.n_layers(loaded.model))]
    inputs = dict(batch.inputs)
    with torch.no_grad():
        bridge.run_with_hooks(inputs.pop("input_ids"), fwd_hooks=[(n, hook) for n in names], **inputs)
    return [torch.stack([out[layer][b] for layer in range(len(names))]) for b in range(len(rows))]


def _eager_mass(loaded: Loaded, batch: PreparedBatch, rows, onehots, intervention=None,
                outputs: list | None = None, sinks: float | None = None) -> list[torch.Tensor]:
    """HF eager attention weights reduced to segments; inside `intervention(layouts)` when given (hook-based
    interventions such as MTV injection run as they are; a DARA must use kernel="eager"); the logits are appended
    to `outputs` when given. `sinks`: each layer's sink tokens (by the hidden states entering it) into the last
    column of each one-hot, the "sink" segment."""
    model = loaded.model
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")  # an intervention may then install its own (weight-returning) kernel
    try:
        with torch.no_grad(), within(intervention, batch.layouts) as kwargs:
            out = model(**batch.inputs, **kwargs, output_attentions=True, output_hidden_states=sinks is not None)
        attentions = out.attentions  # L x [B, H, seq, seq]
        if outputs is not None:
            outputs.append(out.logits)
    finally:
        model.set_attn_implementation(previous)
    layers = loaded.adapter.attention_layers(model)  # transformers records the softmax-attention layers only
    if not attentions or any(a is None for a in attentions) or len(attentions) != len(layers):
        raise ValueError("the attention layers returned no weights; run the intervention with an eager kernel")
    if sinks is not None:
        sink = [sink_ratio(out.hidden_states[layer]).cpu() >= sinks for layer in layers]  # entering each layer
        return [_all_layers(loaded, layers, [_reduce(a[b][:, pos], with_sinks(onehot, s[b])).cpu()
                                             for a, s in zip(attentions, sink)], 0)
                for b, (pos, onehot) in enumerate(zip(rows, onehots))]
    return [_all_layers(loaded, layers, [_reduce(a[b][:, pos], onehot).cpu() for a in attentions], 0)
            for b, (pos, onehot) in enumerate(zip(rows, onehots))]


# --- the call --------------------------------------------------------------------------------------------
def score_and_capture(loaded: Loaded, batch: PreparedBatch, rows="answer", intervention=None,
                      generate: dict | None = None, prefix=None) -> tuple[AttentionMass, torch.Tensor]:
    """(AttentionMass, logits[B, seq, vocab]) from ONE forward pass of a prepared batch: the pass that scores it
    also measures its attention (nnsight; the eager path under an intervention). With `generate` (`model.generate`'s
    keyword arguments, `scoring.generation_kwargs`; a left-padded batch without answers, no intervention): ONE
    generation, whose prefill is measured, and the generated sequences [B, prompt + new tokens] instead of logits.
    With `prefix` (`core.prefix.split_prefix` of this batch): the shared prefix runs once into a cache and the
    suffixes after it (the layouts measured are `prefix.layouts`); the logits are the suffixes' [B, seq -
    prefix.length, vocab]; with `generate` too, generation continues from the prefix's cache."""
    if (generate is not None or prefix is not None) and intervention is not None:
        raise ValueError("score_and_capture: generate= and prefix= measure the model's own pass; under an "
                         "intervention measure the whole batch with a forward")
    outputs: list = []
    if prefix is not None:
        batch = dataclasses.replace(batch, layouts=prefix.layouts)
    am = _capture(loaded, [batch], list(batch.episodes), rows, "nnsight", False, None, intervention, outputs,
                  generate=generate, prefix=prefix)
    return am, outputs[0]


def capture_attention(loaded: Loaded, episodes: Episode | list[Episode] | PreparedBatch, rows="answer",
                      backend: str = "nnsight", progress: bool = True, meta: dict | None = None,
                      intervention=None, batch_size: int = 1, sinks: float | None = None) -> AttentionMass:
    """Attention mass of every head on every prompt segment, for each episode (see the module docstring).

    `loaded`: from `micl_probe.load`, or `Loaded(model, processor, adapter_for(model))` for a model you hold.
    `episodes`: episodes, prepared and run `batch_size` at a time (padded; each row reduced with its own layout, so
    the masses equal those of one episode at a time), or a `PreparedBatch` (run as it is, in one pass), also one you
    built from your own inputs: `PreparedBatch.of(inputs, TokenLayout.from_spans(...))`.
    `intervention`: a `layouts -> context manager` factory (e.g. `dara.on(model, kernel="eager")`) under which
    the attention is measured; it uses the eager path (the attention weights the intervened model computes).
    `sinks`: a threshold tau (Kang et al.: 20): at each layer, the tokens whose hidden state entering it has
    max|h_d| / RMS(h) >= tau (`measure.heads`) leave their segments for one segment "sink" (nnsight and eager).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; backends: {', '.join(BACKENDS)}")
    sinks = _check_sinks(sinks, backend, intervention)
    # episodes with one demo set share their prompt up to the query: right-padded batches whose prefix runs once
    share = (backend == "nnsight" and intervention is None and sinks is None and batch_size > 1
             and isinstance(episodes, (list, tuple)) and all(isinstance(e, Episode) for e in episodes)
             and one_demo_set(episodes))
    side = "right" if share or not isinstance(rows, str) else None  # explicit positions stay where they are
    batches, all_episodes = _batches(loaded, episodes, batch_size, "capture_attention", side)
    progress = progress and not isinstance(episodes, PreparedBatch)
    return _capture(loaded, (b for b, _ in batches), all_episodes, rows, backend, progress, meta, intervention,
                    sinks=sinks, share=share)


def _check_sinks(sinks, backend: str, intervention) -> float | None:
    if sinks is None:
        return None
    if isinstance(sinks, bool) or not isinstance(sinks, (int, float)) or not sinks > 0:
        raise ValueError(f"sinks={sinks!r}: give the threshold tau > 0 on max|h|/RMS(h) (Kang et al. use 20), or "
                         "None to keep sink tokens in their segments")
    if backend == "transformer_lens" or intervention is not None:
        raise ValueError("sinks= needs the hidden states: use backend='nnsight' or 'eager', without an intervention")
    return float(sinks)


def _check_loaded(loaded, what: str) -> None:
    if not isinstance(loaded, Loaded):
        raise TypeError(f"{what} takes a Loaded (micl_probe.load, or Loaded(model, processor, adapter_for(model)) "
                        f"for a model you hold), got {type(loaded).__name__}")


def _batches(loaded: Loaded, episodes, batch_size: int, what: str, padding_side=None):
    """(an iterator of (PreparedBatch, its episodes), every episode) for `episodes` (an Episode, a list of them, or
    one PreparedBatch), `batch_size` at a time, each batch prepared when it is reached; checked first, with a
    one-line error for anything else."""
    _check_loaded(loaded, what)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: give a whole number >= 1 of episodes a forward pass")
    if isinstance(episodes, PreparedBatch):
        return iter([(episodes, list(episodes.episodes))]), list(episodes.episodes)
    if isinstance(episodes, Episode):
        episodes = [episodes]
    accepted = "an Episode, a list of them (micl_probe.sample_episodes(task, shots, n)) or a PreparedBatch"
    if not isinstance(episodes, (list, tuple)):
        raise TypeError(f"{what} takes {accepted}, got {type(episodes).__name__}"
                        + (f": sample_episodes({episodes!r}, shots=4, n=10) draws a task's" if isinstance(episodes, str)
                           else ""))
    if not episodes:
        raise ValueError(f"no episodes given: pass {accepted}")
    wrong = next((e for e in episodes if not isinstance(e, Episode)), None)
    if wrong is not None:
        raise TypeError(f"{what} takes {accepted}; the list holds a {type(wrong).__name__}")
    episodes = list(episodes)
    chunks = [episodes[i:i + batch_size] for i in range(0, len(episodes), batch_size)]
    return ((loaded.prepare_batch(c, padding_side=padding_side), c) for c in chunks), episodes


def _capture(loaded, batches, all_episodes, rows, backend, progress, meta, intervention, outputs=None, sinks=None,
             generate=None, prefix=None, share=False):
    """`capture_attention` over prepared batches; the logits of each batch go to `outputs` when given. `share`:
    a batch whose prompts agree up to the query runs that prefix once (`core.prefix`) when every measured row lies
    after it."""
    results, names, positions = [], [], []
    bar = tqdm(total=len(all_episodes), desc=f"attention ({backend})", disable=not progress or len(all_episodes) < 2)
    for batch in batches:
        batch = prepared(intervention, batch)  # an intervention's own prompt (MMICT's hub tokens), if it has one
        bar.update(len(batch.layouts))
        pos = [row_positions(layout, rows) for layout in batch.layouts]
        seg = [segment_matrix(layout) for layout in batch.layouts]
        if sinks is not None:  # a last, empty column: the "sink" segment each layer fills
            seg = [(n + [SINK], torch.cat([o, torch.zeros(o.shape[0], 1)], 1)) for n, o in seg]
        onehots = [onehot for _, onehot in seg]
        if intervention is not None:
            masses = _eager_mass(loaded, batch, pos, onehots, intervention, outputs=outputs)
        elif backend == "nnsight":
            split = prefix
            if share:
                split = split_prefix(loaded, batch, with_answer=False)[0]
                split = split if split is not None and min(min(p) for p in pos) >= split.length else None
            masses = _nnsight_mass(loaded, batch, pos, onehots, outputs=outputs, sinks=sinks, generate=generate,
                                   prefix=split)
        elif backend == "transformer_lens":
            masses = _transformer_lens_mass(loaded, batch, pos, onehots)
        else:
            masses = _eager_mass(loaded, batch, pos, onehots, outputs=outputs, sinks=sinks)
        results += masses  # per row: [layer, head, n_seg of this episode]
        names += [n for n, _ in seg]
        positions += pos
    bar.close()

    segments = canonical_segments(names)
    n_layers, n_heads = results[0].shape[:2]
    out = torch.zeros(len(results), n_layers, n_heads, len(segments))
    for e, (mass, ns) in enumerate(zip(results, names)):
        out[e, ..., [segments.index(n) for n in ns]] = mass
    measured = loaded.adapter.attention_layers(loaded.model)
    out[:, [x for x in range(n_layers) if x not in measured]] = float("nan")  # every segment of an unmeasured layer
    info = {"model": loaded.name or type(loaded.model).__name__, "family": loaded.adapter.family,
            "backend": backend if intervention is None else "eager+intervention",
            "tasks": [getattr(e, "task", None) for e in all_episodes],
            "shots": [getattr(e, "shots", None) for e in all_episodes],
            "conditions": [getattr(e, "condition", None) for e in all_episodes],
            "layers_measured": measured, **({"sinks": sinks} if sinks is not None else {}), **(meta or {})}
    return AttentionMass(out, segments, rows if isinstance(rows, str) else "explicit", positions, info)


__all__ = ["AttentionMass", "BACKENDS", "capture_attention", "row_attention", "rows_attention", "score_and_capture",
           "segment_matrix", "trace_layers"]
