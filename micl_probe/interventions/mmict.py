"""MMICT — in-context tuning through a multimodal hub (Chen et al., ACM TOMM 2024), approximated on decoder VLMs.

MMICT's M-Hub (BLIP-2's instruction-aware Q-Former) turns each demonstration into image-conditioned *text* features
(the hub's outputs at the demo's text positions) and the query into text-conditioned *visual* features (the outputs
of its 32 learned queries); ViT and LLM stay frozen, only the hub learns. Here the hub is a small Q-Former-style
module on top of any supported family, and its outputs become prompt tokens of their own role, "hub":

    hub = MHub.for_model(loaded)                             # 32 learned queries, 2 layers; output zero-initialised
    hub, history = train_mmict(loaded, ["clock_math", "palindrome"], shots=4, fit_config=FitConfig(steps=300))
    hub.save("runs/mmict", **made_for(loaded, ...))          # runs/mmict.json + runs/mmict.safetensors
    interventions = {"mmict": MHub.load("runs/mmict", loaded).on(loaded)}   # "<condition>+mmict" in the harness

How a prompt changes (`add_hub_tokens`, the intervention's `prepare_batch`): before each demo's question the prompt
gains one hub token per text token of that demo (question and answer): the hub's outputs at those text slots; before
the query's question, `n_queries` hub tokens: the outputs of the learned queries. The processor's own tokens all stay
(the frozen decoder keeps its native image tokens), so the layout keeps every role and adds "hub" positions, owned by
the demo or query they describe: capture, `where_it_looks` ("demo_hub", "query_hub"), DARA and MTV see them.
`placement="residual"` instead adds the outputs onto each demo's question and answer tokens and onto the query's image
tokens (the query's hub then uses those image tokens as its query slots): the prompt keeps its tokens, and a
zero-initialised hub is exactly the model. On the organisms the two differ sharply (docs/results.md, "MMICT").

Inside the hub (`HubLayer`, per demo or query): self-attention over [learned queries; the item's text embeddings],
cross-attention from the learned queries only to the item's image features (what the family's projector put at its
image tokens, read where the decoder receives its input embeddings) plus one learned null slot (an item without an
image), separate feed-forward blocks for query and text slots. The hub's output projection starts at zero.

Departures from the paper (said in the README): a randomly initialised 2-layer hub, not a pretrained 12-layer BERT
Q-Former with the instruction tokenizer; the decoder still sees each demo's own image and text tokens (MMICT feeds only
the hub's text features), and the query's image tokens beside the query's hub tokens (MMICT: hub tokens only); no
end-of-chunk marker (the chat turns separate the demos); learning rate 1e-3 for a hub trained from scratch (MMICT:
1e-5 on a pretrained one); loss on the query's answer (as MMICT) with 1..k shots per batch (icl-tune's data).
"""

from __future__ import annotations

import contextlib
import itertools
import json
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..core import QUERY, ROLE, Loaded, PreparedBatch, TokenLayout, prepared
from ..core.provenance import artifact_paths, check_made_for, digest, dumps, finite, tagged, write_atomic
from .fitting import FitConfig, any_shot_batches, fit, frozen, query_labels

HUB = ROLE["hub"]
PLACEMENTS = ("tokens", "residual")
LR = 1e-3  # train_mmict's default learning rate: a hub trained from scratch


class HubLayer(nn.Module):
    """One Q-Former-style layer (pre-norm): self-attention over [queries; text], cross-attention from the queries to
    the image memory, a feed-forward block for the query slots and another for the text slots (BLIP-2's)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm_self, self.norm_cross = nn.LayerNorm(width), nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm_query, self.norm_text = nn.LayerNorm(width), nn.LayerNorm(width)
        self.ffn_query, self.ffn_text = (nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                                       nn.Linear(4 * width, width)) for _ in range(2))

    def forward(self, x, n_queries: int, pad, memory, memory_pad):
        """x [N, Q+T, w]; pad [N, Q+T] True at text padding; memory [N, M, w]; memory_pad [N, M]."""
        h = self.norm_self(x)
        x = x + self.self_attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        q, t = x[:, :n_queries], x[:, n_queries:]
        q = q + self.cross_attn(self.norm_cross(q), memory, memory, key_padding_mask=memory_pad, need_weights=False)[0]
        q = q + self.ffn_query(self.norm_query(q))
        t = t + self.ffn_text(self.norm_text(t))
        return torch.cat([q, t], 1)


class MHub(nn.Module):
    """The M-Hub: query slots and an item's text embeddings in `layers` `HubLayer`s of `width`, the query slots
    reading the item's image features; outputs projected back to the decoder's width (zero-initialised). The query
    slots are `n_queries` learned queries, or (an item given `slots`) those embeddings projected: the residual
    placement's query image tokens. `forward(items)` takes [(text [n_t, d], image [n_v, d], slots [n_s, d] or None),
    …] and returns (query-slot outputs [N, max slots, d], text outputs [N, max n_t, d]): the visual-side features of
    a query and the text-side features of a demo.

    `placement` says where the outputs go (`add_hub_tokens`, `hub_plan`): "tokens" (default: MMICT's, new prompt
    tokens of the role "hub") or "residual" (added onto the demo's text tokens and the query's image tokens in
    place: the prompt unchanged, and a zero-initialised hub is exactly the model)."""

    def __init__(self, d_model: int, width: int = 128, n_queries: int = 32, layers: int = 2, heads: int = 4,
                 placement: str = "tokens"):
        super().__init__()
        if width % heads:
            raise ValueError(f"hub width {width} is not divisible by its {heads} heads")
        if placement not in PLACEMENTS:
            raise ValueError(f"hub placement {placement!r}: use one of {', '.join(PLACEMENTS)}")
        self.config = {"d_model": d_model, "width": width, "n_queries": n_queries, "layers": layers, "heads": heads,
                       "placement": placement}
        self.queries = nn.Parameter(torch.randn(n_queries, width) * 0.02)
        self.slot_in = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, width)) \
            if placement == "residual" else None  # the query's image tokens as its query slots
        self.null = nn.Parameter(torch.zeros(1, width))  # the memory slot every item has (one without an image)
        self.text_in = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, width))
        self.image_in = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, width))
        self.layers = nn.ModuleList(HubLayer(width, heads) for _ in range(layers))
        self.norm_out = nn.LayerNorm(width)
        self.out = nn.Linear(width, d_model)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def n_queries(self) -> int:
        return self.queries.shape[0]

    @property
    def placement(self) -> str:
        return self.config["placement"]

    @classmethod
    def for_model(cls, loaded: Loaded, **config) -> MHub:
        """A hub for `loaded`'s decoder width, on its device (float32)."""
        return cls(loaded.adapter.text_config(loaded.model).hidden_size, **config).to(loaded.device)

    def forward(self, items: list[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
        n, w = len(items), self.queries.shape[1]
        to = {"dtype": self.queries.dtype, "device": self.queries.device}  # the decoder's input may sit elsewhere
        n_slots = [self.n_queries if s is None else s.shape[0] for _, _, s in items]
        n_q, n_text = max(n_slots), max(1, max(t.shape[0] for t, _, _ in items))
        n_mem = 1 + max(v.shape[0] for _, v, _ in items)
        x = self.queries.new_zeros(n, n_q + n_text, w)
        memory = self.null.expand(n, n_mem, w).clone()
        pad = torch.ones(n, n_q + n_text, dtype=torch.bool, device=x.device)
        memory_pad = torch.ones(n, n_mem, dtype=torch.bool, device=x.device)
        memory_pad[:, 0] = False
        for i, ((t, v, slots), k) in enumerate(zip(items, n_slots)):
            x[i, :k] = self.queries if slots is None else self.slot_in(slots.to(**to))
            pad[i, :k] = False
            if t.shape[0]:
                x[i, n_q:n_q + t.shape[0]] = self.text_in(t.to(**to))
                pad[i, n_q:n_q + t.shape[0]] = False
            if v.shape[0]:
                memory[i, 1:1 + v.shape[0]] = self.image_in(v.to(**to))
                memory_pad[i, 1:1 + v.shape[0]] = False
        for layer in self.layers:
            x = layer(x, n_q, pad, memory, memory_pad)
        x = self.out(self.norm_out(x))
        return x[:, :n_q], x[:, n_q:]

    # --- as an intervention ---------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def applied(self, loaded: Loaded, layouts: list[TokenLayout]):
        """Inside: the decoder's input embeddings at `hub_plan`'s targets of `layouts` are this hub's outputs
        ("tokens": the hub positions, which `prepare_batch` added) or gain them ("residual": each demo's text, the
        query's image tokens); a forward pre-hook on the decoder. Calls whose length is not the prompt's
        (generation's later steps) pass untouched. Yields no forward kwargs."""
        residual = self.placement == "residual"
        plans = [hub_plan(lay, self.placement) for lay in layouts]
        seq = len(layouts[0])

        def write(module, args, kwargs):
            x = kwargs.get("inputs_embeds")
            if x is None:
                raise ValueError(f"the {loaded.adapter.family} decoder was not given inputs_embeds; MMICT writes its "
                                 "hub tokens there")
            if x.shape[1] != seq:
                return None
            flat = [(b, *item) for b, plan in enumerate(plans) for item in plan]
            if not flat:
                return None
            hub_in = [(x[b, text], x[b, image], x[b, image] if residual and owner == QUERY else None)
                      for b, owner, text, image, _ in flat]
            queries, text_out = self(hub_in)
            x = x.clone()
            for k, (b, owner, _, _, target) in enumerate(flat):
                out = (queries[k] if owner == QUERY else text_out[k])[:target.numel()].to(x.device, x.dtype)
                x[b, target] = x[b, target] + out if residual else out
            return args, {**kwargs, "inputs_embeds": x}

        handle = loaded.adapter.decoder(loaded.model).register_forward_pre_hook(write, with_kwargs=True)
        try:
            yield {}
        finally:
            handle.remove()

    def on(self, loaded: Loaded):
        """`layouts -> context manager`: this hub as a harness intervention (the condition "+mmict"); placement
        "tokens": its `prepare_batch` adds the hub tokens to each batch first (`core.hooks.prepared`)."""
        factory = tagged(lambda layouts: self.applied(loaded, layouts),
                         digest("mmict", *[p.detach() for p in self.state_dict().values()], self.config))
        if self.placement == "tokens":
            pad_id = hub_token_id(loaded.processor.tokenizer)
            factory.prepare_batch = lambda batch: add_hub_tokens(batch, self.n_queries, pad_id)
        return factory

    # --- artifacts --------------------------------------------------------------------------------------------------

    def save(self, path: str | Path, **meta) -> None:
        """PATH.safetensors (the hub's weights) + PATH.json (its shape, the model it was made for, `meta`)."""
        from safetensors.torch import save_file

        info_path, tensor_path = artifact_paths(path)
        state = {k: finite(v.detach().cpu().contiguous(), f"MMICT hub {info_path.stem}: {k}")
                 for k, v in self.state_dict().items()}
        info_path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(tensor_path))
        write_atomic(info_path, dumps({"kind": "mmict", "hub": self.config, **getattr(self, "meta", {}), **meta},
                                      indent=1))

    @classmethod
    def load(cls, path: str | Path, loaded: Loaded | None = None) -> MHub:
        """A saved hub; with `loaded`, checked against the model it was made for (width, weights) and put on its
        device."""
        from safetensors.torch import load_file

        info_path, tensor_path = artifact_paths(path)
        for f in (info_path, tensor_path):
            if not f.is_file():
                raise FileNotFoundError(f"no {f}: give the path python -m micl_probe.train mmict --out was given")
        info = json.loads(info_path.read_text())
        if info.get("kind") != "mmict" or "hub" not in info:
            raise ValueError(f"{info_path} is not an MMICT hub (python -m micl_probe.train mmict writes one)")
        hub = cls(**info["hub"])
        hub.load_state_dict(load_file(str(tensor_path)))
        if loaded is not None:
            d_model = loaded.adapter.text_config(loaded.model).hidden_size
            if d_model != info["hub"]["d_model"]:
                raise ValueError(f"MMICT hub {info_path.stem} was made for a decoder of width "
                                 f"{info['hub']['d_model']} ({info.get('model')}); this one has {d_model}")
            check_made_for(info, loaded, f"MMICT hub {info_path.stem}")
            hub = hub.to(loaded.device)
        hub.meta = {k: v for k, v in info.items() if k not in ("kind", "hub")}
        return hub


def hub_token_id(tokenizer) -> int:
    """The id a hub position carries before its embedding is written (and new padding carries): the tokenizer's
    padding token, else its end of sequence; a hub position's embedding is always overwritten."""
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


def hub_text(layout: TokenLayout, owner: int) -> torch.Tensor:
    """The text a demo's or the query's hub reads: a demo's question and answer tokens, the query's question only
    (never its answer, which a teacher-forced prompt holds)."""
    text = layout.mask(owner=owner, role="question")
    if owner != QUERY:
        text |= layout.mask(owner=owner, role="answer")
    return text.nonzero().flatten()


def hub_plan(layout: TokenLayout, placement: str = "tokens") -> list[tuple]:
    """[(owner, its text positions, its image positions, the positions its outputs go to)] for each demo and the
    query: "tokens": its hub positions (a prompt with hub tokens); "residual": a demo's text positions, the query's
    image positions (the query's learned queries are then its image tokens)."""
    plan = []
    for owner in [*range(layout.n_demos), QUERY]:
        text, image = hub_text(layout, owner), layout.positions(owner=owner, role="image")
        target = layout.positions(owner=owner, role="hub") if placement == "tokens" else \
            image if owner == QUERY else text
        if target.numel():
            plan.append((owner, text, image, target))
    return plan


def add_hub_tokens(batch: PreparedBatch, n_queries: int, pad_id: int) -> PreparedBatch:
    """`batch` with hub positions inserted: before each demo's first question token, one per text token of that demo
    (`hub_text`); before the query's first question token, `n_queries`. Every tensor of the processor's with one
    value per token gains those positions (input_ids `pad_id`, attention_mask 1, token types 0); rows are padded
    again on the side they were (`pad_id`), and each layout gains the role "hub" there. A batch that already has
    hub tokens comes back unchanged."""
    if any(bool((lay.role == HUB).any()) for lay in batch.layouts):
        return batch
    ids = batch.inputs["input_ids"]
    rows, seq = ids.shape
    per_token = [k for k, v in batch.inputs.items()
                 if torch.is_tensor(v) and not v.is_floating_point() and v.dim() >= 2 and v.shape[:2] == (rows, seq)]
    left = any(bool(lay.role[0] == ROLE["pad"]) for lay in batch.layouts)
    sources, owners = [], []
    for lay in batch.layouts:
        before = {}
        for owner in [*range(lay.n_demos), QUERY]:
            question = lay.positions(owner=owner, role="question")
            count = n_queries if owner == QUERY else hub_text(lay, owner).numel()
            if question.numel() and count:
                before[int(question[0])] = (owner, count)
        src, own = [], []  # the old position of each new one (-1: a hub token), and a hub token's owner
        for pos in (lay.role != ROLE["pad"]).nonzero().flatten().tolist():
            if pos in before:
                owner, count = before[pos]
                src += [-1] * count
                own += [owner] * count
            src.append(pos)
            own.append(0)  # not read: a kept token keeps its own owner
        sources.append(src)
        owners.append(own)
    width = max(len(s) for s in sources)
    inputs, layouts = dict(batch.inputs), []
    new = {k: batch.inputs[k].new_zeros((rows, width, *batch.inputs[k].shape[2:])) for k in per_token}
    new["input_ids"].fill_(pad_id)
    for b, (lay, src, own) in enumerate(zip(batch.layouts, sources, owners)):
        start = width - len(src) if left else 0
        where = torch.arange(start, start + len(src))
        old = torch.tensor([max(s, 0) for s in src])
        is_hub = torch.tensor([s < 0 for s in src])
        for k in per_token:
            values = batch.inputs[k][b, old.to(ids.device)]
            fill = pad_id if k == "input_ids" else 1 if k == "attention_mask" else 0
            values[is_hub.to(values.device)] = fill
            new[k][b, where.to(values.device)] = values
        owner = torch.full((width,), -2, dtype=torch.long)
        role = torch.full((width,), ROLE["pad"], dtype=torch.long)
        image = torch.full((width,), -1, dtype=torch.long)
        owner[where] = torch.where(is_hub, torch.tensor(own), lay.owner[old])
        role[where] = torch.where(is_hub, HUB, lay.role[old])
        image[where] = torch.where(is_hub, -1, lay.image_index[old])
        moved = {p: int(start + i) for i, p in enumerate(src) if p >= 0}
        layouts.append(replace(lay, owner=owner, role=role, image_index=image,
                               answer_position=moved[lay.answer_position]))
    inputs.update(new)
    if hasattr(batch.inputs, "data"):  # a BatchFeature stays one (its .to() moves every tensor)
        inputs = type(batch.inputs)(inputs)
    return PreparedBatch(inputs, layouts, batch.answer_ids, batch.texts, batch.episodes)


def train_mmict(loaded: Loaded, tasks: str | list[str], shots: int = 4, fit_config: FitConfig | None = None,
                **hub_config) -> tuple[MHub, list[dict]]:
    """Train an M-Hub on `loaded` (frozen: decoder, vision tower, projector): batches of 1..`shots` demos from each of
    `tasks` in turn (icl-tune's stream, `fitting.any_shot_batches`), hub tokens added, the loss on the query's answer
    (MMICT's). Settings: `FitConfig` (default learning rate 1e-3), `hub_config` for `MHub`. Returns (hub,
    history)."""
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    cfg = (fit_config or FitConfig()).with_lr(LR)
    torch.manual_seed(cfg.seed)
    hub = MHub.for_model(loaded, **hub_config)
    intervention = hub.on(loaded)
    print(f"MMICT hub: {sum(p.numel() for p in hub.parameters())} parameters ({hub.config['layers']} layers of width "
          f"{hub.config['width']}, {hub.n_queries} queries); the model frozen")

    def batches(split):
        for batch in any_shot_batches(loaded, tasks, shots, cfg.batch, cfg.seed, split, cfg):
            yield prepared(intervention, batch)

    val = list(itertools.islice(batches("val"), max(1, cfg.n_val // cfg.batch)))

    def loss_of(b):
        with intervention(b.layouts):
            return loaded.model(**b.inputs, labels=query_labels(b)).loss

    with frozen(loaded.model):
        history = fit(list(hub.parameters()), loss_of, batches("support"), val, cfg, desc=f"MMICT {'+'.join(tasks)}")
    return hub.eval(), history


__all__ = ["HubLayer", "MHub", "add_hub_tokens", "hub_plan", "hub_text", "hub_token_id", "train_mmict"]
