"""Explore one episode interactively in Jupyter, the way the TransformerLens ecosystem does (circuitsvis).

    micl_probe.explore(loaded, episode)     # in a notebook: the prompt's tokens coloured by the answer row's
                                            # attention (pick the mean or any layer and head), then the images
                                            # with their patch maps

Outside a notebook nothing is displayed: the returned `Exploration` gives both views, `.html()` (circuitsvis's
widget, which loads its script from the web when shown) and `.figure()` (a static matplotlib figure).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .core import ROLE, Episode, Loaded
from .core.layout import owner_name
from .measure import PatchMap, top_heads
from .measure.patches import maps_and_attention
from .viz import plots


@dataclass
class Exploration:
    tokens: list[str]  # the prompt's tokens as text; image tokens as [demo0 img] / [query img]
    attention: torch.Tensor  # [layer, head, seq]: the row's attention on every token
    maps: list[PatchMap]  # the same attention over each image's patches
    heads: list[tuple[int, int]]  # the heads that look most at the demo images

    def labels(self) -> list[str]:
        layers, heads = self.attention.shape[:2]
        return ["mean"] + [f"L{layer}H{head}" for layer in range(layers) for head in range(heads)]

    def values(self) -> torch.Tensor:
        """[seq, 1 + layer * head]: the mean over layers and heads, then every layer and head."""
        flat = self.attention.flatten(0, 1)  # [layer * head, seq]
        return torch.cat([flat.nanmean(0, keepdim=True), flat]).T

    def html(self):
        """circuitsvis's colored-tokens widget: choose the mean or one layer and head."""
        from circuitsvis.tokens import colored_tokens_multi

        return colored_tokens_multi(self.tokens, self.values(), self.labels())

    def figure(self):
        return plots.patch_maps(self.maps, self.heads)


def explore(loaded: Loaded, episode: Episode, rows="answer", show: bool | None = None) -> Exploration:
    """The attention of `rows` (default: the answer position) over `episode`'s prompt and images; shown at once in
    a notebook (`show=None`), or not (`show=False`)."""
    if not isinstance(episode, Episode):
        hint = ": explore shows one episode, e.g. explore(loaded, episodes[0])" if isinstance(episode, (list, tuple)) \
            else ""
        raise TypeError(f"explore takes one Episode, got a {type(episode).__name__}{hint}")
    batch = loaded.prepare_batch([episode])
    maps, attention = maps_and_attention(loaded, batch, rows)
    layout, ids = batch.layouts[0], batch.inputs["input_ids"][0].tolist()
    tokens = [f"[{owner_name(int(layout.owner[i]))} img]" if layout.role[i] == ROLE["image"]
              else loaded.processor.tokenizer.decode([t]) for i, t in enumerate(ids)]
    found = Exploration(tokens, attention, maps, top_heads(maps))
    if show if show is not None else _in_notebook():
        from IPython.display import display

        display(found.html())
        display(found.figure())
    return found


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"
