"""Multimodal in-context episodes: demonstrations + a query, immutable and serialisable.

    demo    = Demo(images=(img,), question="What is it?", answer="dax")
    episode = Episode(demos=(demo, ...), query=Query(images=(img,), question="What is it?", answer="wug"),
                      task="novel_binding")
    episode.zero_shot()            # no demos
    episode.without_demo_images()  # demos keep text, lose images (TrueMICL's "no-image" control)
    episode.with_shuffled_answers(seed=0)
    episode.with_retrieved_shots(4)   # the 4 demos whose images look most like the query's
    episode.with_style("single")      # every demo in one user turn, as VL-ICL Bench writes its prompts

The query's gold answer is kept on the episode for scoring and is never rendered into a prompt (unless a scorer asks
for teacher forcing). An episode may carry a task `instruction` (written once, before the first demo), a `system`
message (the chat template's system turn) and a prompt `style`: "turns" (default: one user turn + one assistant turn
per demo) or "single" (VL-ICL Bench's layout: the instruction, then every demo as
"{images}{question}\nAnswer: {answer}\n" and the query as "{images}{question}\nAnswer:" in ONE user turn; the model
answers in the assistant turn).
"""

from __future__ import annotations

import base64
import io
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image

STYLES = ("turns", "single")


def _as_image(x: Any) -> Image.Image:
    accepted = "a PIL.Image or an HxW / HxWx1 / HxWx3 / HxWx4 uint8 numpy array"
    if isinstance(x, Image.Image):
        if 0 in x.size:
            raise ValueError(f"an image of {x.size[0]}x{x.size[1]} pixels has nothing to look at: give one of at "
                             "least 1x1")
        return x
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8:
            raise TypeError(f"an image must be {accepted}; got a {x.dtype} array: convert it, e.g. "
                            "(x * 255).clip(0, 255).astype(np.uint8) for values in [0, 1]")
        if x.ndim == 3 and x.shape[-1] == 1:
            x = x[..., 0]  # one channel: grey
        if x.ndim == 3 and x.shape[-1] not in (3, 4):
            hint = ": channels first? use x.transpose(1, 2, 0)" if x.shape[0] in (1, 3, 4) else ""
            raise TypeError(f"an image must be {accepted}; got an array of shape {x.shape}{hint}")
        if x.ndim not in (2, 3):
            raise TypeError(f"an image must be {accepted}; got an array of shape {x.shape}")
        return _as_image(Image.fromarray(np.ascontiguousarray(x)))
    if isinstance(x, (str, Path)):
        raise TypeError(f"an image must be {accepted}; got the path {str(x)!r}: open it first, "
                        "PIL.Image.open(path).convert('RGB')")
    raise TypeError(f"an image must be {accepted}; got {type(x).__name__}")


def _images(xs: Sequence[Any] | Image.Image | None) -> tuple[Image.Image, ...]:
    if xs is None:
        return ()
    if isinstance(xs, (Image.Image, np.ndarray)):
        xs = [xs]
    return tuple(_as_image(x) for x in xs)


@dataclass(frozen=True)
class Demo:
    """One demonstration: image(s), a question and its answer."""

    images: tuple[Image.Image, ...]
    question: str
    answer: str

    def __post_init__(self):
        object.__setattr__(self, "images", _images(self.images))
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError("a demonstration needs a non-empty question")
        if not str(self.answer).strip():
            raise ValueError("a demonstration needs a non-empty answer")


@dataclass(frozen=True)
class Query:
    """The query: image(s) and a question; `answer` is the gold answer, kept aside for scoring."""

    images: tuple[Image.Image, ...]
    question: str
    answer: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "images", _images(self.images))
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError("the query needs a non-empty question")
        if self.answer is not None and not str(self.answer).strip():
            raise ValueError("the query's gold answer is empty: give the answer text, or answer=None when there is "
                             "none to score")


@dataclass(frozen=True)
class Episode:
    """Ordered demonstrations + a query + the task name and free-form metadata."""

    demos: tuple[Demo, ...]
    query: Query
    task: str = "unnamed"
    meta: Mapping[str, Any] = field(default_factory=dict)
    instruction: str = ""  # task instruction written once before the first demo ("" for none)
    style: str = "turns"  # "turns" (a chat turn per demo) | "single" (VL-ICL: all demos in one user turn)
    system: str = ""  # a system message, written by the chat template's system turn ("" for none)

    def __post_init__(self):
        object.__setattr__(self, "demos", tuple(self.demos))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))
        if self.style not in STYLES:
            raise ValueError(f"unknown prompt style {self.style!r}; use one of {', '.join(STYLES)}")

    # --- views -----------------------------------------------------------------------------------------
    @property
    def shots(self) -> int:
        return len(self.demos)

    @property
    def images(self) -> tuple[Image.Image, ...]:
        """Every image in prompt order: demo 0's, demo 1's, …, then the query's."""
        return tuple(im for d in self.demos for im in d.images) + self.query.images

    @property
    def condition(self) -> str:
        return self.meta.get("condition", f"{self.shots}-shot")

    # --- controls --------------------------------------------------------------------------------------
    def _with(self, condition: str, **changes) -> Episode:
        return replace(self, meta={**self.meta, "condition": condition}, **changes)

    def with_shots(self, k: int) -> Episode:
        """The first `k` demonstrations only."""
        if not 0 <= k <= self.shots:
            raise ValueError(f"episode has {self.shots} demos; cannot take {k}")
        return self._with(f"{k}-shot", demos=self.demos[:k])

    def zero_shot(self) -> Episode:
        return self._with("zero-shot", demos=())

    def with_retrieved_shots(self, k: int) -> Episode:
        """The `k` demos whose images are most similar to the query's (cosine of mean-centred pixels, images
        resized to 32x32: RICES-style retrieval from this episode's demos, kept in prompt order)."""
        if not 0 <= k <= self.shots:
            raise ValueError(f"episode has {self.shots} demos; cannot retrieve {k}")
        if not self.query.images or any(not d.images for d in self.demos):
            raise ValueError("retrieval needs an image on the query and on every demo")

        q = image_feature(self.query.images)
        sims = [float(image_feature(d.images) @ q) for d in self.demos]
        keep = sorted(sorted(range(self.shots), key=lambda i: -sims[i])[:k])
        return self._with(f"retrieved-{k}-shot", demos=tuple(self.demos[i] for i in keep))

    def with_style(self, style: str, instruction: str | None = None, system: str | None = None) -> Episode:
        """The same episode written in prompt style `style` (and with `instruction` and `system`, when given)."""
        return replace(self, style=style, instruction=self.instruction if instruction is None else instruction,
                       system=self.system if system is None else system)

    def without_demo_images(self) -> Episode:
        """Demos keep question and answer but lose their images (TrueMICL's 'no-image' control)."""
        return self._with("no-image", demos=tuple(replace(d, images=()) for d in self.demos))

    def with_shuffled_answers(self, seed: int = 0) -> Episode:
        """Demo answers permuted among the demos (a derangement when answers differ), images untouched."""
        answers = [d.answer for d in self.demos]
        rng = random.Random(seed)
        perm = list(range(len(answers)))
        for _ in range(100):
            rng.shuffle(perm)
            if all(answers[p] != answers[i] for i, p in enumerate(perm)) or len(set(answers)) < 2:
                break
        demos = tuple(replace(d, answer=answers[p]) for d, p in zip(self.demos, perm))
        return self._with("shuffled-answers", demos=demos)

    # --- serialisation ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        def imgs(xs):
            return [_png_b64(x) for x in xs]

        return {
            "task": self.task,
            "meta": dict(self.meta),
            "instruction": self.instruction,
            "style": self.style,
            "system": self.system,
            "demos": [{"images": imgs(d.images), "question": d.question, "answer": d.answer} for d in self.demos],
            "query": {"images": imgs(self.query.images), "question": self.query.question,
                      "answer": self.query.answer},
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> Episode:
        def imgs(xs):
            return tuple(_from_png_b64(x) for x in xs)

        return cls(demos=tuple(Demo(imgs(x["images"]), x["question"], x["answer"]) for x in d["demos"]),
                   query=Query(imgs(d["query"]["images"]), d["query"]["question"], d["query"].get("answer")),
                   task=d.get("task", "unnamed"), meta=d.get("meta", {}), instruction=d.get("instruction", ""),
                   style=d.get("style", "turns"), system=d.get("system", ""))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> Episode:
        return cls.from_dict(json.loads(Path(path).read_text()))


def image_feature(images) -> np.ndarray:
    """[32 * 32 * 3]: the images' mean at 32x32, centred and unit-normed (the retrieval measure: cosine of these)."""
    x = np.mean([np.asarray(im.convert("RGB").resize((32, 32)), dtype=np.float32) for im in images], 0)
    x = x.ravel() - x.mean()
    return x / (np.linalg.norm(x) + 1e-8)


def _png_b64(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _from_png_b64(s: str) -> Image.Image:
    im = Image.open(io.BytesIO(base64.b64decode(s)))
    im.load()
    return im
