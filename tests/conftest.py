import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import functools  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from micl_probe import Demo, Episode, Query  # noqa: E402
from micl_probe.tiny import BUILDERS, tiny_model  # noqa: E402

FAMILIES = sorted(BUILDERS)


@functools.cache
def cached_tiny(family: str):
    return tiny_model(family)


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


def noise_image(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


# image sizes differ between demos so that families with variable image-token counts show it
SIZES = [(32, 32), (40, 24), (64, 48), (24, 56), (48, 48)]


def make_episode(shots: int, seed: int = 0, images_per_demo: int = 1) -> Episode:
    demos = [Demo([noise_image(*SIZES[(i + j) % len(SIZES)], seed=seed + 10 * i + j) for j in range(images_per_demo)],
                  f"What is {i + 3}?", ["12", "dax", "7", "red", "wug"][i % 5]) for i in range(shots)]
    query = Query([noise_image(*SIZES[-1], seed=seed + 99)], "What is 5?", "7")
    return Episode(demos=tuple(demos), query=query, task="test", meta={"seed": seed})
