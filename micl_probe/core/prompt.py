"""Episode -> model inputs + TokenLayout, through the family's own processor.

    prepared = loaded.prepare(episode)                        # or prepare(episode, processor, adapter, model)
    model(**prepared.inputs)                                  # the exact tensors the processor produced
    prepared.layout.positions(owner=0, role="image")          # demo 0's image positions

How the layout is found (and checked):
  1. the episode is rendered into tagged *pieces* of text (owner, kind), an image piece per image holding the
     family's placeholder (`ChatFormat.image`);
  2. the family's processor is called once on the joined text and the images — the model sees exactly what the
     processor produced — asking for the tokenizer's character offsets and the processor's placeholder
     expansion offsets;
  3. each token is assigned to the piece holding its last character (in the expanded text); tokens with empty
     offsets are tokenizer-added specials (BOS).
Checks: image positions == positions of the image token id; per image, image positions == the processor's
expansion of that placeholder; prompt length <= the model's context; placeholders == images.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace

import torch

from .adapters import Adapter
from .episode import Episode
from .layout import NONE, QUERY, ROLE, TokenLayout


@dataclass(frozen=True)
class Piece:
    text: str
    owner: int  # demo index, QUERY or NONE
    kind: str  # "template" | "image" | "question" | "answer"


@dataclass(frozen=True)
class Prompt:
    pieces: tuple[Piece, ...]
    images: tuple  # PIL images, one per image piece, in order
    answer: str | None  # the query answer text (with separator) if it was rendered into the prompt

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.pieces)


@dataclass
class Prepared:
    """What `prepare` returns: the processor's tensors, the layout, and the query's answer token ids."""

    inputs: dict  # BatchFeature from the processor (batch of 1)
    layout: TokenLayout
    answer_ids: torch.Tensor | None  # [n] token ids of the gold answer as the model emits it; None if none
    text: str  # rendered prompt, before placeholder expansion
    episode: Episode

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]

    def to(self, device) -> Prepared:
        self.inputs = self.inputs.to(device)
        return self


@dataclass
class PreparedBatch:
    """A batch of prepared episodes: one padded set of processor tensors, a layout per row."""

    inputs: dict  # BatchFeature, batch of len(episodes)
    layouts: list[TokenLayout]
    answer_ids: list[torch.Tensor | None]
    texts: list[str]
    episodes: list[Episode]

    def __len__(self) -> int:
        return len(self.layouts)

    @classmethod
    def of(cls, inputs: dict, layouts: list[TokenLayout] | TokenLayout) -> PreparedBatch:
        """A batch from model inputs you built yourself and their layouts (`TokenLayout.from_spans`): what
        `capture_attention`, `mtv.extract` and the interventions take in place of episodes."""
        layouts = [layouts] if isinstance(layouts, TokenLayout) else list(layouts)
        ids = inputs["input_ids"]
        if ids.dim() != 2 or ids.shape[0] != len(layouts) or any(len(lay) != ids.shape[1] for lay in layouts):
            raise ValueError(f"input_ids {tuple(ids.shape)} need one layout per row of the same length; got "
                             f"{len(layouts)} layout(s) of {[len(lay) for lay in layouts]} tokens")
        mask = inputs.get("attention_mask")
        if mask is not None:
            for b, lay in enumerate(layouts):
                unmarked = ((mask[b].cpu() == 0) & (lay.role != ROLE["pad"])).nonzero().flatten()
                if unmarked.numel():
                    raise ValueError(f"row {b} is padded (attention_mask 0 at positions {unmarked[:5].tolist()}) but "
                                     "its layout does not say so: pass attention_mask=inputs['attention_mask'][b] "
                                     "to TokenLayout.from_spans")
        answers = [ids[b, lay.query_answer_positions()] if lay.query_answer_positions().numel() else None
                   for b, lay in enumerate(layouts)]
        return cls(dict(inputs), layouts, answers, [""] * len(layouts), [None] * len(layouts))

    def __getitem__(self, b: int) -> Prepared:
        """Row b as a batch-of-one Prepared (only valid unpadded; use for single-episode batches)."""
        if len(self) != 1:
            raise IndexError("index a PreparedBatch only when it holds one episode; use .layouts[b] otherwise")
        return Prepared(self.inputs, self.layouts[0], self.answer_ids[0], self.texts[0], self.episodes[0])

    def to(self, device) -> PreparedBatch:
        self.inputs = self.inputs.to(device) if hasattr(self.inputs, "to") else \
            {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.inputs.items()}
        return self


@dataclass(frozen=True)
class _Message:
    """One chat message in family-neutral form: items are (kind, owner, text), kind image | question | answer |
    template (glue text); `owner` owns the message's template text, `end_owner` what closes it."""

    role: str  # "user" | "assistant"
    owner: int
    items: tuple[tuple[str, int, str], ...]
    end_owner: int


def _messages(episode: Episode, with_answer: bool) -> list[_Message]:
    """The episode as user/assistant messages, in its prompt style (see `Episode`)."""
    q = episode.query
    if with_answer and q.answer is None:
        raise ValueError("with_answer=True needs a query with a gold answer")
    system = [_Message("system", NONE, (("template", NONE, episode.system),), NONE)] if episode.system.strip() else []
    instruction = [("template", NONE, episode.instruction.strip() + "\n")] if episode.instruction.strip() else []
    demos = [(i, d.images, d.question, d.answer) for i, d in enumerate(episode.demos)]
    answer = [_Message("assistant", QUERY, (("answer", QUERY, q.answer),), QUERY)] if with_answer else []
    if episode.style == "single":  # VL-ICL Bench: every demo and the query in one user turn
        items = list(instruction)
        for owner, images, question, ans in demos + [(QUERY, q.images, q.question, None)]:
            items += [("image", owner, "")] * len(images) + [("question", owner, question),
                                                             ("template", owner, "\nAnswer:")]
            if ans is not None:
                items += [("answer", owner, " " + str(ans)), ("template", owner, "\n")]
        return system + [_Message("user", NONE, tuple(items), QUERY)] + answer
    messages = list(system)
    for t, (owner, images, question, ans) in enumerate(demos + [(QUERY, q.images, q.question, None)]):
        lead = instruction if t == 0 else []
        items = tuple(lead + [("image", owner, "")] * len(images) + [("question", owner, question)])
        messages.append(_Message("user", owner, items, owner))
        if ans is not None:
            messages.append(_Message("assistant", owner, (("answer", owner, str(ans)),), owner))
    return messages + answer


def _reserved(adapter: Adapter, processor) -> list[str]:
    """Strings a question or answer may not contain: the image placeholders (first), then every special or added
    token of the tokenizer (the processor's, else none), each of which would be read as its token, not as text."""
    tokenizer = getattr(processor, "tokenizer", None)
    first = [m for m in dict.fromkeys([adapter.chat.image.strip(), getattr(processor, "image_token", None) or ""]) if m]
    more = list(getattr(tokenizer, "all_special_tokens", []) or [])
    more += [t.content for t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values()
             if getattr(t, "special", False)]
    for name in ("boi_token", "eoi_token", "video_token", "image_token", "fake_image_token", "global_image_token"):
        more.append(getattr(processor, name, None) or "")
    return first + [m for m in dict.fromkeys(more) if m and m not in first and len(m) > 1]


def render(episode: Episode, adapter: Adapter, with_answer: bool = False, processor=None) -> Prompt:
    """Write `episode` as tagged pieces: through the checkpoint's own chat template when `processor` carries one
    (`processor.chat_template`), else in the adapter's declared `ChatFormat` (the organisms, processors without a
    template)."""
    marks = _reserved(adapter, processor)
    for owner, text in [(i, t) for i, d in enumerate(episode.demos) for t in (d.question, d.answer)] + \
            [(QUERY, episode.query.question), (QUERY, episode.query.answer or "")]:
        for mark in marks:
            if mark in str(text):
                what = "image placeholder" if mark in marks[:2] else "special token"
                raise ValueError(f"text of {'query' if owner == QUERY else f'demo {owner}'} contains the {what} "
                                 f"{mark!r}, which the model would read as that token, not as text: remove it "
                                 "from the question or answer")
    messages = _messages(episode, with_answer)
    if getattr(processor, "chat_template", None):
        pieces = _from_template(messages, processor, adapter, add_generation_prompt=not with_answer)
        if episode.style == "single" and _reordered(pieces):
            warnings.warn(f"{type(processor).__name__}'s chat template writes every image of a turn before its "
                          "text, so in style 'single' the demos' images all stand before the first question (VL-ICL "
                          "puts each demo's images before its question): use style 'turns', or the adapter's "
                          "declared format (use_template=False, --no-template), for VL-ICL's layout", stacklevel=2)
    elif episode.system.strip():
        raise ValueError(f"a system message needs the processor's chat template; {adapter.family}'s declared "
                         "format has no system turn (load a processor with a chat template, or leave system empty)")
    else:
        pieces = _from_format(messages, adapter.chat)
    answer = next((p.text for p in reversed(pieces) if p.kind == "answer"), None) if with_answer else None
    return Prompt(tuple(p for p in pieces if p.text), episode.images, answer)


def _reordered(pieces: list[Piece]) -> bool:
    """Whether a turn's images were moved away from their question: the owners of image and question pieces, in
    prompt order, go back to an earlier demo (demo 1's image before demo 0's question)."""
    order = [len(pieces) if p.owner == QUERY else p.owner for p in pieces if p.kind in ("image", "question")]
    return any(b < a for a, b in zip(order, order[1:]))


def _from_format(messages: list[_Message], chat) -> list[Piece]:
    """Pieces in a declared ChatFormat: {user}{items}{user_end}{assistant} per user message,
    {answer_sep}{answer}{assistant_end} per assistant message."""
    pieces = [Piece(chat.system, NONE, "template")]
    for k, m in enumerate(messages):
        if m.role == "user":  # the first turn's header is nobody's, as in the template path (it cannot be told
            pieces.append(Piece(chat.user, m.owner if k else NONE, "template"))  # from a system prompt there)
        for kind, owner, text in m.items:
            text = chat.image if kind == "image" else chat.answer_sep + text if m.role == "assistant" else text
            pieces.append(Piece(text, owner, kind))
        closing = (chat.user_end, chat.assistant) if m.role == "user" else (chat.assistant_end,)
        pieces += [Piece(t, m.end_owner, "template") for t in closing]
    return pieces


_PROBE = "micl_probe_content_probe"


def _string_roles(apply) -> set[str]:
    """The roles whose text-only content the chat template wants as a plain string, decided by rendering: a
    template that prints `message.content` as it stands (GLM-4.1V's assistant turns) writes a list of parts as
    Python's repr, "[{'type': 'text', …}]"; one that reads `content[0]['text']` (LLaVA) needs the list."""
    strings = set()
    for role in ("assistant", "system"):
        turn = {"role": role, "content": [{"type": "text", "text": _PROBE}]}
        user = {"role": "user", "content": [{"type": "text", "text": "q"}]}
        text = _render_or_none(apply, [user, turn] if role == "assistant" else [turn, user])
        if text is None or _PROBE not in text or f"'{_PROBE}'" in text:  # refused, dropped or printed as a list
            strings.add(role)
    return strings


def _render_or_none(apply, conversation) -> str | None:
    """The conversation's text without a generation prompt, or None where the template refuses a part of one (a
    system message alone: Qwen3.5 wants a user turn)."""
    try:
        return apply(conversation, tokenize=False, add_generation_prompt=False)
    except Exception:  # noqa: BLE001 - jinja's TemplateError and whatever a template raises
        return None


def _from_template(messages: list[_Message], processor, adapter: Adapter, add_generation_prompt: bool) -> list[Piece]:
    """Pieces of the text `processor.apply_chat_template` renders: each message's span is found by rendering the
    conversation up to it (templates render prefixes of a conversation as prefixes of its text), and inside a span
    each image marker and text item by search, in order; what lies between is template text."""
    apply = processor.apply_chat_template
    as_string = _string_roles(apply)

    def content(m):  # consecutive text items join into one text entry (templates may pad each entry)
        out = []
        for kind, _, text in m.items:
            if kind == "image":
                out.append({"type": "image"})
            elif out and out[-1]["type"] == "text":
                out[-1]["text"] += text
            else:
                out.append({"type": "text", "text": text})
        if m.role in as_string and all(part["type"] == "text" for part in out):
            return {"role": m.role, "content": "".join(part["text"] for part in out)}
        return {"role": m.role, "content": out}

    conversation = [content(m) for m in messages]
    text = apply(conversation, tokenize=False, add_generation_prompt=add_generation_prompt)
    prefixes = [_render_or_none(apply, conversation[:k]) for k in range(1, len(conversation) + 1)]
    # a message ends where the conversation up to it ends; a template that writes a turn differently when it is the
    # last one (Qwen3.5: an empty think block on an assistant turn after the last user turn) leaves it unknown here:
    # then it ends after its last item and the template text that follows it in both renderings
    ends = [len(prefix) if prefix is not None and text.startswith(prefix) else None for prefix in prefixes]
    markers = [m for m in (adapter.chat.image, adapter.chat.image.strip(), processor.image_token) if m]
    pieces, start = [], 0
    first_user = next(k for k, m in enumerate(messages) if m.role == "user")
    carried: tuple = ()
    for k, (m, end) in enumerate(zip(messages, ends)):
        items = carried + m.items
        known, end = end is not None, len(text) if end is None else end
        if m.role == "system" and any(text.find(t.strip(), start, end) < 0 for _, _, t in m.items):
            carried = m.items  # a template that writes the system text into the first user turn (Gemma 3)
            continue
        carried = ()
        found, cursor = [], {"image": start, "text": start}
        for kind, owner, item in items:
            lane = "image" if kind == "image" else "text"
            if kind == "image":
                at = [(text.find(mk, cursor[lane], end), mk) for mk in markers]
                at = [(i, mk) for i, mk in at if i >= 0]
                if not at:
                    raise ValueError(f"the chat template rendered none of the image markers {markers} where an "
                                     "image was expected")
                i, item = min(at, key=lambda x: (x[0], -len(x[1])))  # the nearest, the longest there
            else:
                stripped = item.strip()
                i = text.find(stripped, cursor[lane], end)
                if i < 0:
                    raise ValueError(f"the chat template did not render the text {stripped[:40]!r} verbatim")
                item = stripped
                if kind == "answer":  # the spaces before an answer are its separator: the answer's, as in a
                    while i > max(cursor[lane], start) and text[i - 1] == " ":  # declared format's answer_sep
                        i, item = i - 1, " " + item
            found.append((i, i + len(item), kind, owner))
            cursor[lane] = i + len(item)
        found.sort()
        if not known:
            last_item = text[found[-1][0]:found[-1][1]].strip()
            prefix = prefixes[k] or ""
            tail = prefix[prefix.rfind(last_item) + len(last_item):] if last_item in prefix else ""
            end = found[-1][1] + len(os.path.commonprefix([tail, text[found[-1][1]:]]))
        lead_owner = NONE if k <= first_user else m.owner  # what precedes the first turn's items: nobody's
        for a, b, kind, owner in found:
            if a < start:
                raise ValueError("the chat template's rendering of a message overlaps its items")
            pieces.append(Piece(text[start:a], lead_owner, "template"))
            pieces.append(Piece(text[a:b], owner, kind))
            start, lead_owner = b, owner
        pieces.append(Piece(text[start:end], m.end_owner, "template"))
        start = end
    pieces.append(Piece(text[start:], messages[-1].end_owner if messages[-1].role == "user" else QUERY, "template"))
    return [p for p in pieces if p.text]


def encode(prompts: list[Prompt], processor, adapter: Adapter, max_positions: int | None = None,
           image_token_id: int | None = None, padding_side: str | None = None) -> tuple[dict, list[TokenLayout]]:
    """Run the processor once on rendered prompts (padded by the processor, on `padding_side` when given, else its
    tokenizer's) and map every token to its piece."""
    placeholder = processor.image_token
    for prompt in prompts:
        n_placeholders = prompt.text.count(placeholder)
        if n_placeholders != len(prompt.images):
            raise ValueError(f"the prompt has {n_placeholders} image placeholder(s) {placeholder!r} but "
                             f"{len(prompt.images)} image(s) were given")
        if any(im is None for im in prompt.images):
            raise ValueError("an image is missing (None) for one of the placeholders")
    images = adapter.images_arg([list(p.images) for p in prompts])
    side = {"padding_side": padding_side} if padding_side else {}
    enc = processor(text=[p.text for p in prompts], images=images, return_tensors="pt", padding=len(prompts) > 1,
                    return_offsets_mapping=True, return_text_replacement_offsets=True,
                    **side, **_special_tokens(prompts, processor))
    offsets = enc.pop("offset_mapping").tolist()  # [batch, seq] (start, end) in each expanded text
    seq = enc["input_ids"].shape[1]
    if max_positions is not None and seq > max_positions:
        raise ValueError(f"prompt is {seq} tokens, over the model's context length of {max_positions}; "
                         "use fewer shots or smaller images")
    # the token that fills an expansion; not always the text placeholder (Gemma 3: <start_of_image> in the text,
    # <image_soft_token> in the expansion)
    tok = processor.tokenizer
    if image_token_id is None:
        image_token_id = tok.convert_tokens_to_ids(getattr(tok, "image_token", None) or placeholder)
    image_token = tok.convert_ids_to_tokens(image_token_id)
    replacements = enc.pop("text_replacement_offsets", None)
    if replacements is None:  # a processor that expands placeholders without reporting where (Idefics2)
        replacements = [_probe_replacements(prompt, processor, adapter, image_token_id) for prompt in prompts]
    special_ids = set(tok.all_special_ids)
    layouts = [_layout(prompt, enc["input_ids"][b], enc["attention_mask"][b], offsets[b], replacements[b],
                       image_token, image_token_id, special_ids)
               for b, prompt in enumerate(prompts)]
    return enc, layouts


def _special_tokens(prompts: list[Prompt], processor) -> dict:
    """{"add_special_tokens": False} when the rendered text already starts with the tokenizer's BOS (a template
    that writes it, as Gemma 3's and Idefics3's do): BOS once, as `apply_chat_template(tokenize=True)` does."""
    bos = getattr(processor.tokenizer, "bos_token", None)
    return {"add_special_tokens": False} if bos and all(p.text.startswith(bos) for p in prompts) else {}


def _probe_replacements(prompt: Prompt, processor, adapter: Adapter, image_id: int) -> list[dict]:
    """What `return_text_replacement_offsets` reports, for a processor that does not (Idefics2): each placeholder's
    span in the prompt and in the expanded text, and its image-token count. The processor is run on growing prefixes
    of the prompt, each ending one character after a placeholder (the expansion may depend on its neighbours:
    Idefics2 adds a space before text that follows an image and merges the markup of adjacent images), with the
    images up to there; the growth of the expanded text is each placeholder's."""
    placeholder = processor.image_token
    out, grown, counted, start = [], 0, 0, 0
    for i in range(len(prompt.images)):
        at = prompt.text.index(placeholder, start)
        end = at + len(placeholder)
        cut = end + 1 if end < len(prompt.text) and not prompt.text.startswith(placeholder, end) else end
        probe = processor(text=[prompt.text[:cut]], images=adapter.images_arg([list(prompt.images[: i + 1])]),
                          return_tensors="pt", return_offsets_mapping=True, **_special_tokens([prompt], processor))
        growth = int(probe["offset_mapping"][0, :, 1].max()) - cut  # the expanded prefix's length - the prefix's
        n_image = int((probe["input_ids"][0] == image_id).sum())
        out.append({"span": (at, end), "new_span": (at + grown, end + growth), "n_image_tokens": n_image - counted})
        grown, counted, start = growth, n_image, end
    return out


def _layout(prompt: Prompt, input_ids, attention_mask, offsets, replacements, image_token, image_id,
            special_ids) -> TokenLayout:
    seq = input_ids.numel()
    # piece spans in the expanded text: shift by the growth of every placeholder expanded before them
    growth = [(r["span"][1], (r["new_span"][1] - r["new_span"][0]) - (r["span"][1] - r["span"][0]))
              for r in replacements]
    starts, pos = [], 0
    for p in prompt.pieces:
        starts.append(pos + sum(g for end, g in growth if end <= pos))
        pos += len(p.text)
    image_of_piece, n = {}, 0
    for k, p in enumerate(prompt.pieces):
        if p.kind == "image":
            image_of_piece[k], n = n, n + 1

    # each token belongs to the piece holding its last character; empty offsets are tokenizer-added (BOS)
    off = torch.tensor(offsets, dtype=torch.long).reshape(seq, 2)  # [seq, (start, end)]
    real = attention_mask.bool()
    has_chars = real & (off[:, 1] > off[:, 0])
    piece_of = torch.searchsorted(torch.tensor(starts), off[:, 1] - 1, right=True) - 1  # [seq]
    piece_of = piece_of.clamp(min=0)
    piece_owner = torch.tensor([p.owner for p in prompt.pieces])
    piece_role = torch.tensor([ROLE["image"] if p.kind == "image" else ROLE[p.kind] for p in prompt.pieces])
    piece_image = torch.tensor([image_of_piece.get(k, -1) for k in range(len(prompt.pieces))])

    owner = torch.where(has_chars, piece_owner[piece_of], NONE)
    role = torch.where(has_chars, piece_role[piece_of], ROLE["special"])
    in_image = has_chars & (role == ROLE["image"])
    image_index = torch.where(in_image, piece_image[piece_of], -1)
    role = torch.where(in_image & (input_ids != image_id), ROLE["image_markup"], role)
    is_special = torch.isin(input_ids, torch.tensor(sorted(special_ids - {image_id})))
    role = torch.where(has_chars & ~in_image & is_special, ROLE["special"], role)
    role = torch.where(real, role, ROLE["pad"])

    # checks: the layout's image positions are exactly the processor's image tokens, image by image
    is_image = role == ROLE["image"]
    if not torch.equal(is_image, input_ids == image_id):
        raise AssertionError("layout image positions differ from the positions of the image token id")
    for i, r in enumerate(replacements):
        expected = r["n_image_tokens"] if "n_image_tokens" in r else r["replacement"].count(image_token)
        got = int(((image_index == i) & is_image).sum())
        if got != expected:
            raise AssertionError(f"image {i}: layout has {got} image positions, the processor expanded {expected}")

    layout = TokenLayout(owner, role, image_index, n_demos=len({p.owner for p in prompt.pieces if p.owner >= 0}),
                         n_images=len(prompt.images), answer_position=int(real.nonzero().flatten()[-1]))
    if prompt.answer is not None:  # the position whose logits predict the first answer token
        layout = replace(layout, answer_position=int(layout.query_answer_positions()[0]) - 1)
    return layout


def prepare(episode: Episode, processor, adapter: Adapter, model=None, with_answer: bool = False,
            use_template: bool = True) -> Prepared:
    """Episode -> processor tensors + TokenLayout (+ the query's answer token ids).

    `model` (optional) supplies the context length and image token id to check against.
    `with_answer=True` renders the query's gold answer and end of turn into the prompt (teacher forcing); then
    `layout.answer_position` is the position just before the answer.
    `use_template=False` writes the adapter's declared ChatFormat even where the processor carries a chat template.
    """
    return prepare_batch([episode], processor, adapter, model, with_answer, use_template)[0]


def prepare_batch(episodes: list[Episode], processor, adapter: Adapter, model=None,
                  with_answer: bool = False, use_template: bool = True, padding_side: str | None = None
                  ) -> PreparedBatch:
    """Several episodes in one processor call, padded by the processor (on `padding_side`, default its tokenizer's;
    generation needs "left")."""
    if not episodes:
        raise ValueError("no episodes given: pass a non-empty list of Episode")
    prompts = [render(e, adapter, with_answer=with_answer, processor=processor if use_template else None)
               for e in episodes]
    max_pos = adapter.max_positions(model) if model is not None else None
    image_id = adapter.image_token_id(model) if model is not None else None
    inputs, layouts = encode(prompts, processor, adapter, max_positions=max_pos, image_token_id=image_id,
                             padding_side=padding_side)
    if with_answer:  # the answer's tokens exactly as they stand in the prompt
        answers = [inputs["input_ids"][b, lay.query_answer_positions()] for b, lay in enumerate(layouts)]
    else:
        gold = [e.query.answer for e in episodes]
        ids = answer_token_ids([a for a in gold if a is not None], processor, adapter)
        answers = [ids.pop(0) if a is not None else None for a in gold]
    return PreparedBatch(inputs, layouts, answers, [p.text for p in prompts], list(episodes))


def answer_token_ids(answers: list[str], processor, adapter: Adapter) -> list[torch.Tensor]:
    """Token ids of each answer as the model would emit it after the assistant prefix (the declared ChatFormat's
    separator; a with-answer batch takes them from the prompt instead)."""
    if not answers:
        return []
    ids = processor.tokenizer([adapter.chat.answer_sep + a for a in answers], add_special_tokens=False)["input_ids"]
    return [torch.tensor(x, dtype=torch.long) for x in ids]
