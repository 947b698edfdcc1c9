"""Helpers for tests, benches and examples: tiny random models of the real VLM architectures (built offline) and
random-image episodes.

    loaded = tiny_loaded("qwen2_vl")                  # cached per family: Loaded(model, processor, adapter)
    episode = noise_episode(shots=4, seed=0)          # demos with images of different sizes
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from ..core import Demo, Episode, Loaded, Query, adapter_for
from .tiny import BUILDERS, tiny_model, tiny_tokenizer

FAMILIES = sorted(BUILDERS)
# image sizes differ between demos so that families with variable image-token counts show it
SIZES = [(32, 32), (40, 24), (64, 48), (24, 56), (48, 48)]


@functools.cache
def cached_tiny(family: str):
    """(model, processor) of `family`'s tiny random model, built once per process."""
    return tiny_model(family)


@functools.cache
def tiny_loaded(family: str) -> Loaded:
    """The cached tiny model of `family` as a `Loaded` (one per family and process)."""
    model, processor = cached_tiny(family)
    return Loaded(model, processor, adapter_for(model), name=f"tiny-{family}")


def noise_image(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def noise_episode(shots: int, seed: int = 0, images_per_demo: int = 1) -> Episode:
    """`shots` demos of random images (sizes vary between demos) with short questions and answers, and a query."""
    demos = [Demo([noise_image(*SIZES[(i + j) % len(SIZES)], seed=seed + 10 * i + j) for j in range(images_per_demo)],
                  f"What is {i + 3}?", ["12", "dax", "7", "red", "wug"][i % 5]) for i in range(shots)]
    query = Query([noise_image(*SIZES[-1], seed=seed + 99)], "What is 5?", "7")
    return Episode(demos=tuple(demos), query=query, task="test", meta={"seed": seed})


__all__ = ["BUILDERS", "FAMILIES", "SIZES", "cached_tiny", "noise_episode", "noise_image", "tiny_loaded",
           "tiny_model", "tiny_tokenizer"]
