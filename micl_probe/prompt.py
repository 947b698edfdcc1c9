"""Episode -> model inputs + TokenLayout, through the family's own processor.

    prepared = prepare(episode, processor, adapter)          # or prepare(episode, loaded) / loaded.prepare(episode)
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

import bisect
from dataclasses import dataclass

import torch

from .adapters import Adapter
from .episode import Episode
from .layout import NONE, QUERY, ROLE, TokenLayout

_TEXT_KEYS = ("input_ids", "attention_mask")


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
    answer_ids: torch.Tensor | None  # [n] token ids of answer_sep + gold answer, None if no gold answer
    text: str  # rendered prompt, before placeholder expansion
    episode: Episode

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]

    def to(self, device) -> Prepared:
        self.inputs = self.inputs.to(device)
        return self


def render(episode: Episode, adapter: Adapter, with_answer: bool = False) -> Prompt:
    """Write `episode` in the family's multi-turn chat format as tagged pieces."""
    chat = adapter.chat
    pieces: list[Piece] = []
    add = lambda text, owner, kind: text and pieces.append(Piece(text, owner, kind))  # noqa: E731
    add(chat.system, NONE, "template")
    turns = [(i, d.images, d.question, d.answer) for i, d in enumerate(episode.demos)]
    q = episode.query
    turns.append((QUERY, q.images, q.question, q.answer if with_answer else None))
    if with_answer and q.answer is None:
        raise ValueError("with_answer=True needs a query with a gold answer")
    for owner, images, question, answer in turns:
        for text in (question, answer or ""):
            if chat.image.strip() and chat.image.strip() in text:
                raise ValueError(f"text of {'query' if owner == QUERY else f'demo {owner}'} contains the image "
                                 f"placeholder {chat.image.strip()!r}; that would add a placeholder with no image")
        add(chat.user, owner, "template")
        for _ in images:
            add(chat.image, owner, "image")
        add(question, owner, "question")
        add(chat.user_end, owner, "template")
        add(chat.assistant, owner, "template")
        if answer is not None:
            add(chat.answer_sep + str(answer), owner, "answer")
            if owner != QUERY:
                add(chat.assistant_end, owner, "template")
    answer = chat.answer_sep + q.answer if with_answer else None
    return Prompt(tuple(pieces), episode.images, answer)


def encode(prompt: Prompt, processor, adapter: Adapter, max_positions: int | None = None,
           image_token_id: int | None = None) -> tuple[dict, TokenLayout]:
    """Run the processor on a rendered prompt and map every token to its piece."""
    placeholder = processor.image_token
    n_placeholders = prompt.text.count(placeholder)
    if n_placeholders != len(prompt.images):
        raise ValueError(f"the prompt has {n_placeholders} image placeholder(s) {placeholder!r} but "
                         f"{len(prompt.images)} image(s) were given")
    if any(im is None for im in prompt.images):
        raise ValueError("an image is missing (None) for one of the placeholders")
    enc = processor(text=[prompt.text], images=adapter.images_arg(list(prompt.images)), return_tensors="pt",
                    return_offsets_mapping=True, return_text_replacement_offsets=True)
    offsets = enc.pop("offset_mapping")[0].tolist()  # [seq] (start, end) in the expanded text
    replacements = enc.pop("text_replacement_offsets", [[]])[0]
    input_ids = enc["input_ids"][0]
    seq = input_ids.numel()
    if max_positions is not None and seq > max_positions:
        raise ValueError(f"prompt is {seq} tokens, over the model's context length of {max_positions}; "
                         "use fewer shots or smaller images")

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

    tokenizer = processor.tokenizer
    special_ids = set(tokenizer.all_special_ids)
    image_id = image_token_id if image_token_id is not None else tokenizer.convert_tokens_to_ids(placeholder)
    owner = torch.full((seq,), NONE, dtype=torch.long)
    role = torch.full((seq,), ROLE["special"], dtype=torch.long)
    image_index = torch.full((seq,), -1, dtype=torch.long)
    for t, ((s, e), tid) in enumerate(zip(offsets, input_ids.tolist())):
        if e <= s:  # added by the tokenizer (BOS/EOS): no characters
            continue
        k = bisect.bisect_right(starts, e - 1) - 1
        piece = prompt.pieces[k]
        owner[t] = piece.owner
        if piece.kind == "image":
            image_index[t] = image_of_piece[k]
            role[t] = ROLE["image"] if tid == image_id else ROLE["image_markup"]
        elif tid in special_ids:
            role[t] = ROLE["special"]
        else:
            role[t] = ROLE[piece.kind]

    # checks: the layout's image positions are exactly the processor's image tokens, image by image
    is_image = role == ROLE["image"]
    if not torch.equal(is_image, input_ids == image_id):
        raise AssertionError("layout image positions differ from the positions of the image token id")
    for i, r in enumerate(replacements):
        expected = r["replacement"].count(placeholder)
        got = int(((image_index == i) & is_image).sum())
        if got != expected:
            raise AssertionError(f"image {i}: layout has {got} image positions, the processor expanded {expected}")

    answer_position = seq - 1
    if prompt.answer is not None:
        query_answer = ((owner == QUERY) & (role == ROLE["answer"])).nonzero().flatten()
        answer_position = int(query_answer[0]) - 1
    layout = TokenLayout(owner, role, image_index, n_demos=len({p.owner for p in prompt.pieces if p.owner >= 0}),
                         n_images=len(prompt.images), answer_position=answer_position)
    return enc, layout


def prepare(episode: Episode, processor, adapter: Adapter, model=None, with_answer: bool = False) -> Prepared:
    """Episode -> processor tensors + TokenLayout (+ the query's answer token ids).

    `model` (optional) supplies the context length and image token id to check against.
    `with_answer=True` renders the query's gold answer into the prompt (teacher forcing); then
    `layout.answer_position` is the position just before it.
    """
    prompt = render(episode, adapter, with_answer=with_answer)
    max_pos = adapter.max_positions(model) if model is not None else None
    image_id = adapter.image_token_id(model) if model is not None else None
    inputs, layout = encode(prompt, processor, adapter, max_positions=max_pos, image_token_id=image_id)
    answer_ids = None
    if episode.query.answer is not None:
        answer_ids = torch.tensor(processor.tokenizer(adapter.chat.answer_sep + episode.query.answer,
                                                      add_special_tokens=False)["input_ids"], dtype=torch.long)
    return Prepared(inputs, layout, answer_ids, prompt.text, episode)
