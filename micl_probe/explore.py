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
from .measure.attention import row_attention
from .measure.patches import maps_and_attention


@dataclass
class Exploration:
    """One episode's attention from the answer row (or `rows`): over the prompt's tokens (`html`, a circuitsvis
    view) and over each image's patches (`figure`), for the mean over layers and heads or one head. In a notebook,
    `show()` draws both under one head selector, so the patch maps follow the head the token view shows."""

    tokens: list[str]  # the prompt's tokens as text; image tokens as [demo0 img] / [query img]
    attention: torch.Tensor  # [layer, head, seq]: the row's attention on every token
    maps: list[PatchMap]  # the same attention over each image's patches ([] where image tokens have no patch place)
    heads: list[tuple[int, int]]  # the heads that look most at the demo images
    no_maps: str = ""  # why there are no patch maps, when there are none

    def __repr__(self) -> str:
        layers, heads, seq = self.attention.shape
        top = ", ".join(f"L{la}H{h}" for la, h in self.heads) or "none"
        return (f"Exploration({seq} tokens, {layers} layers x {heads} heads, {len(self.maps)} patch maps; heads most "
                f"on the demo images: {top}) — .show(head), .html(), .figure(head)")

    def labels(self) -> list[str]:
        layers, heads = self.attention.shape[:2]
        return ["mean"] + [f"L{layer}H{head}" for layer in range(layers) for head in range(heads)]

    def values(self) -> torch.Tensor:
        """[seq, 1 + layer * head]: the mean over layers and heads, then every layer and head."""
        flat = self.attention.flatten(0, 1)  # [layer * head, seq]
        return torch.cat([flat.nanmean(0, keepdim=True), flat]).T

    def html(self, head: str | tuple[int, int] | None = None):
        """circuitsvis's coloured tokens: every head to choose from (`head` None), or one (`"L1H2"`, (1, 2), or
        "mean")."""
        from circuitsvis.tokens import colored_tokens, colored_tokens_multi

        if head is None:
            return colored_tokens_multi(self.tokens, self.values(), self.labels())
        return colored_tokens(self.tokens, self.values()[:, self.labels().index(_label(head))])

    def figure(self, head: str | tuple[int, int] | None = None):
        """The patch maps: the mean over layers and heads, then the heads most on the demo images (`head` None) or
        the one head given (`"L1H2"` or (1, 2)); None where there are no patch maps (`no_maps` says why)."""
        if not self.maps:
            return None
        label = _label(head) if head is not None else None
        if label is None:
            heads = self.heads
        elif label == "mean":
            heads = []
        else:
            heads = [tuple(int(x) for x in label[1:].split("H"))]
        from .viz import plots  # matplotlib and seaborn only when a figure is drawn

        return plots.patch_maps(self.maps, heads)

    def show(self, head: str | tuple[int, int] | None = None):
        """In a notebook: a head selector (mean, L0H0, …) above the token view and the patch maps, both redrawn for
        the head chosen (plain display updates: no output-capturing widget); returns the selector (None where
        ipywidgets is missing: the views are drawn once, for `head`)."""
        import matplotlib.pyplot as plt
        from IPython.display import display

        label = _label(head) if head is not None else "mean"

        def patches(label):
            fig = self.figure(label)
            if fig is None:
                return f"no patch maps: {self.no_maps}"
            plt.close(fig)  # shown once, by this display: not again by the inline backend at the end of the cell
            return fig

        try:
            from ipywidgets import Dropdown
        except ImportError:
            display(self.html(label))
            display(patches(label))
            return None
        selector = Dropdown(options=self.labels(), value=label, description="head")
        display(selector)
        tokens = display(self.html(label), display_id=True)
        images = display(patches(label), display_id=True)

        def redraw(change):
            tokens.update(self.html(change["new"]))
            images.update(patches(change["new"]))

        selector.observe(redraw, names="value")
        return selector


def _label(head) -> str:
    """"mean", "L1H2" or (1, 2) as a label of `Exploration.labels()`."""
    return head if isinstance(head, str) else f"L{head[0]}H{head[1]}"


def explore(loaded: Loaded, episode: Episode, rows="answer", show: bool | None = None) -> Exploration:
    """The attention of `rows` (default: the answer position) over `episode`'s prompt and images; shown at once in
    a notebook (`show=None`: `Exploration.show()`), or not (`show=False`). A family whose image tokens have no place
    on the image (resampler latents: Idefics2) gets the token view without patch maps."""
    if not isinstance(episode, Episode):
        hint = ": explore shows one episode, e.g. explore(loaded, episodes[0])" if isinstance(episode, (list, tuple)) \
            else ""
        raise TypeError(f"explore takes one Episode, got a {type(episode).__name__}{hint}")
    batch = loaded.prepare_batch([episode])
    no_maps = ""
    if loaded.adapter.patch_layout == "none":
        maps, attention = [], row_attention(loaded, batch, rows)
        no_maps = f"the {loaded.adapter.family} family's image tokens are resampler latents with no place on the image"
    else:
        maps, attention = maps_and_attention(loaded, batch, rows)
    layout, ids = batch.layouts[0], batch.inputs["input_ids"][0].tolist()
    tokens = [f"[{owner_name(int(layout.owner[i]))} img]" if layout.role[i] == ROLE["image"]
              else loaded.processor.tokenizer.decode([t]) for i, t in enumerate(ids)]
    found = Exploration(tokens, attention, maps, top_heads(maps), no_maps)
    if show if show is not None else _in_notebook():
        found.show()
    return found


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"
