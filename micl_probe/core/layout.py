"""TokenLayout: for every position of a built prompt, which demonstration owns it and what it is.

    layout.owner[pos]        # demo index 0..k-1, QUERY (-1) or NONE (-2: system prompt, BOS)
    layout.role[pos]         # index into ROLES: image | image_markup | question | answer | template | special | hub
    layout.image_index[pos]  # which image of the prompt (prompt order) an image/markup token belongs to, else -1

    layout.positions(owner=2, role="image")    # all image tokens of demo 2
    layout.query_answer_positions()             # the query's answer tokens (empty unless rendered with_answer)
    layout.answer_position   # the position whose logits predict the query's first answer token: the last prompt
                             # token, or (prompt rendered with the query answer) the token before that answer
    layout.segments()                           # {"demo0.image": positions, ..., "query.question": ..., "special": ...}

Roles:
  image         positions the model scatters image features into (the family's image token id)
  image_markup  tokens framing an image: Qwen2-VL's <|vision_start|>/<|vision_end|>, Idefics3's
                <fake_token_around_image>, <row_i_col_j>, <global-img>, LLaVA's newline after <image>
  question      the question text of a demo or of the query
  answer        a demo's answer text (including the separator the model is trained to emit before it)
  template      chat-template text of a turn ("USER:", "<|im_start|>user\\n" when not special …)
  special       special tokens outside images (BOS, <|im_start|>, </s>, <end_of_utterance>): attention sinks
  hub           positions an intervention added to the processor's prompt (MMICT's M-Hub tokens:
                `interventions.mmict`); owned by the demo or query whose features they carry
  pad           padding added when episodes are batched (never attended to)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ROLES = ("image", "image_markup", "question", "answer", "template", "special", "hub", "pad")
ROLE = {name: i for i, name in enumerate(ROLES)}
_ROLES_BEFORE_HUB = ("image", "image_markup", "question", "answer", "template", "special", "pad")  # to_dict's, before
QUERY = -1
NONE = -2


def owner_name(owner: int) -> str:
    return "query" if owner == QUERY else "none" if owner == NONE else f"demo{owner}"


@dataclass(frozen=True)
class TokenLayout:
    """Who owns each token of a prompt and what it is: per position an owner (demo i, the query, or nobody),
    a role (`ROLES`: image, image_markup, question, answer, template, special, hub, pad) and the image it belongs to,
    plus the row whose logits give the first answer token. Made by `Loaded.prepare` from the processor's own ids,
    or by `from_spans` for a prompt you built; `describe()` prints its segments in half-open spans [start, end)
    and `spans()` returns them in the form `from_spans` takes."""

    owner: torch.Tensor  # [seq] long
    role: torch.Tensor  # [seq] long, index into ROLES
    image_index: torch.Tensor  # [seq] long, -1 where the token is not part of an image
    n_demos: int
    n_images: int
    answer_position: int  # position whose logits predict the query's first answer token

    def __len__(self) -> int:
        return self.owner.numel()

    @property
    def seq_len(self) -> int:
        return len(self)

    def mask(self, owner: int | None = None, role: str | None = None, image: int | None = None) -> torch.Tensor:
        """Boolean [seq] mask of positions matching every given criterion."""
        m = torch.ones(len(self), dtype=torch.bool)
        if owner is not None:
            m &= self.owner == owner
        if role is not None:
            if role not in ROLE:
                raise ValueError(f"unknown role {role!r}; roles are {ROLES}")
            m &= self.role == ROLE[role]
        if image is not None:
            m &= self.image_index == image
        return m

    def positions(self, owner: int | None = None, role: str | None = None, image: int | None = None) -> torch.Tensor:
        """Long tensor of positions matching every given criterion (sorted)."""
        return self.mask(owner, role, image).nonzero().flatten()

    def text_positions(self) -> torch.Tensor:
        """Question, answer and template text of every turn (not images, markup or special tokens)."""
        return ((self.role == ROLE["question"]) | (self.role == ROLE["answer"])
                | (self.role == ROLE["template"])).nonzero().flatten()

    def query_answer_positions(self) -> torch.Tensor:
        """The query's answer tokens (only in a prompt rendered with the gold answer: `with_answer=True`); the
        end-of-turn token follows the last of them."""
        return self.positions(owner=QUERY, role="answer")

    def segment_ids(self) -> tuple[list[str], torch.Tensor]:
        """(names, seg[seq]): every position's segment index. Segments are "<owner>.<role>" for turn content
        and a single "special" segment for every special token wherever it stands, never folded into text."""
        names: list[str] = []  # padding gets segment -1
        index: dict[tuple[int, int], int] = {}
        seg = torch.empty(len(self), dtype=torch.long)
        for pos, (o, r) in enumerate(zip(self.owner.tolist(), self.role.tolist())):
            if r == ROLE["pad"]:
                seg[pos] = -1
                continue
            key = (NONE, ROLE["special"]) if r == ROLE["special"] else (o, r)
            if key not in index:
                index[key] = len(names)
                names.append("special" if r == ROLE["special"] else f"{owner_name(o)}.{ROLES[r]}")
            seg[pos] = index[key]
        return names, seg

    def segments(self) -> dict[str, torch.Tensor]:
        names, seg = self.segment_ids()
        return {n: (seg == i).nonzero().flatten() for i, n in enumerate(names)}

    def spans(self) -> dict[str, list[tuple[int, int]]]:
        """{segment: half-open position ranges [(start, end), …]}: the form `from_spans` takes (a segment split
        by others, e.g. special tokens, has several ranges)."""
        out = {}
        for name, pos in self.segments().items():
            breaks = (pos[1:] != pos[:-1] + 1).nonzero().flatten().tolist()
            starts = [0] + [b + 1 for b in breaks]
            ends = breaks + [pos.numel() - 1]
            out[name] = [(int(pos[a]), int(pos[b]) + 1) for a, b in zip(starts, ends)]
        return out

    def describe(self) -> str:
        """A table of segments: name, number of tokens, and half-open spans [start, end) as `from_spans` takes
        them (start included, end excluded)."""
        rows = [f"{'segment':<22}{'tokens':>7}  spans [start, end)"]
        for (name, pos), spans in zip(self.segments().items(), self.spans().values()):
            shown = " ".join(f"[{a}, {b})" for a, b in spans[:4]) + (f" … ({len(spans)} spans)" if len(spans) > 4
                                                                    else "")
            rows.append(f"{name:<22}{pos.numel():>7}  {shown}")
        return "\n".join(rows)

    def to_dict(self) -> dict:
        """JSON-ready; roles as indices into the `roles` it names (so a later list of roles reads it right)."""
        return {"owner": self.owner.tolist(), "role": self.role.tolist(), "image_index": self.image_index.tolist(),
                "n_demos": self.n_demos, "n_images": self.n_images, "answer_position": self.answer_position,
                "roles": list(ROLES)}

    @classmethod
    def from_spans(cls, input_ids, spans: dict[str, list[tuple[int, int]]], image_token_id: int | None = None,
                   answer_position: int | None = None, attention_mask=None) -> TokenLayout:
        """A layout for a prompt you built yourself (your own tokenizer, template or model), from token spans.

            layout = TokenLayout.from_spans(input_ids, {"demo0.image": [(1, 17)], "demo0.question": [(17, 21)],
                                                        "demo0.answer": [(21, 23)], "query.image": [(23, 39)],
                                                        "query.question": [(39, 44)]}, image_token_id=32000)

        `input_ids`: one prompt's token ids ([seq] or [1, seq]). `spans`: "<owner>.<role>" -> half-open token
        ranges [start, end), owner demo<i> | query | none, role one of image, image_markup, question, answer,
        template, special (or the key "special" alone). Each image span is one image (prompt order gives the image
        index). Positions no span names are template text owned by nobody. With `image_token_id`, the image spans
        must be exactly the positions of that id (checked). `answer_position`: the row whose logits give the
        first answer token (default: just before a "query.answer" span, else the last position that is not padding).
        `attention_mask` ([seq] or [1, seq], 0 at padding): its zeros are marked as padding (never measured); a
        span may not cover them."""
        ids = torch.as_tensor(input_ids)
        if ids.dim() > 2 or ids.dim() == 2 and ids.shape[0] != 1 or ids.dim() == 0:
            raise ValueError(f"from_spans takes one prompt's input_ids ([seq] or [1, seq]), got shape "
                             f"{tuple(ids.shape)}: build one layout per row (input_ids[b])")
        ids = ids.reshape(-1)
        seq = ids.numel()
        pad = torch.zeros(seq, dtype=torch.bool)
        if attention_mask is not None:
            mask = torch.as_tensor(attention_mask).reshape(-1)
            if mask.numel() != seq:
                raise ValueError(f"attention_mask has {mask.numel()} positions, input_ids {seq}: give this row's mask")
            pad = mask == 0
        if not isinstance(spans, dict):
            raise TypeError(f"spans must be a dict of '<owner>.<role>' -> [(start, end), …], got "
                            f"{type(spans).__name__}")
        owner = torch.full((seq,), NONE, dtype=torch.long)
        role = torch.full((seq,), ROLE["template"], dtype=torch.long)
        image_index = torch.full((seq,), -1, dtype=torch.long)
        taken = torch.zeros(seq, dtype=torch.bool)
        images = []
        for key, ranges in spans.items():
            who, _, what = key.partition(".") if key != "special" else ("none", ".", "special")
            if what not in ROLE or what == "pad":
                raise ValueError(f"span {key!r}: role {what!r} is not one of {', '.join(ROLES[:-1])}")
            if who == "query":
                o = QUERY
            elif who == "none":
                o = NONE
            elif who.startswith("demo") and who[4:].isdigit():
                o = int(who[4:])
            else:
                raise ValueError(f"span {key!r}: owner {who!r} must be demo<i>, query or none")
            if not isinstance(ranges, (list, tuple)) or not all(
                    isinstance(r, (list, tuple)) and len(r) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                         for x in r) for r in ranges):
                raise ValueError(f"span {key!r}: give a list of (start, end) pairs of whole numbers, e.g. "
                                 f"[(1, 17)], not {ranges!r}")
            for start, end in ranges:
                if not 0 <= start < end <= seq:
                    raise ValueError(f"span {key!r} ({start}, {end}) is outside the prompt of {seq} tokens")
                if taken[start:end].any():
                    raise ValueError(f"span {key!r} ({start}, {end}) overlaps another span")
                if pad[start:end].any():
                    raise ValueError(f"span {key!r} ({start}, {end}) covers padding (attention_mask 0)")
                taken[start:end] = True
                owner[start:end], role[start:end] = o, ROLE[what]
                if what == "image":
                    images.append((start, end))
        for i, (start, end) in enumerate(sorted(images)):
            image_index[start:end] = i
        if image_token_id is not None:
            is_image = ids == image_token_id
            if not torch.equal(is_image, role == ROLE["image"]):
                wrong = (is_image != (role == ROLE["image"])).nonzero().flatten()[:5].tolist()
                raise ValueError(f"the image spans differ from the positions of image token {image_token_id} "
                                 f"(first differing positions: {wrong})")
        demos = sorted({int(o) for o in owner.tolist() if o >= 0})
        if demos != list(range(len(demos))):
            raise ValueError(f"demos must be numbered 0..k-1 in the spans; got {demos}")
        role[pad] = ROLE["pad"]
        real = (~pad).nonzero().flatten()
        if not real.numel():
            raise ValueError("the attention_mask marks every position as padding")
        if answer_position is None:
            answer = ((owner == QUERY) & (role == ROLE["answer"])).nonzero().flatten()
            answer_position = int(answer[0]) - 1 if answer.numel() else int(real[-1])
        if isinstance(answer_position, bool) or not isinstance(answer_position, int) or \
                not 0 <= answer_position < seq or pad[answer_position]:
            raise ValueError(f"answer_position {answer_position!r}: give a position of the prompt (0..{seq - 1}) "
                             "that is not padding")
        return cls(owner, role, image_index, len(demos), len(images), answer_position)

    @classmethod
    def from_dict(cls, d: dict) -> TokenLayout:
        t = lambda k: torch.tensor(d[k], dtype=torch.long)  # noqa: E731
        saved = d.get("roles", _ROLES_BEFORE_HUB)  # a dict written before "hub" was a role has no "roles"
        role = torch.tensor([ROLE[saved[r]] for r in d["role"]], dtype=torch.long)
        return cls(t("owner"), role, t("image_index"), d["n_demos"], d["n_images"], d["answer_position"])
