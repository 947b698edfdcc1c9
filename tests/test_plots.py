"""Report figures a reader understands at a glance: legends off the data, discrete layer axes, chance lines, a
visible 0 on empty bars, deterministic intervals."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from micl_probe.viz import plots  # noqa: E402

MODELS, TASKS, CONDITIONS = ["organism:a", "organism:b", "organism:c"], ["clock_math", "outlier"], [
    "zero-shot", "no-image", "4-shot"]


@pytest.fixture(scope="module")
def records():
    rng = np.random.default_rng(0)
    out = []
    for m in MODELS:
        for t in TASKS:
            for c in CONDITIONS:
                for i in range(12):
                    correct = False if (m, t, c) == ("organism:a", "clock_math", "zero-shot") else rng.random() < 0.6
                    out.append({"model": m, "task": t, "condition": c, "index": i, "correct": bool(correct),
                                "visual_share": float(rng.random()),
                                "visual_share_by_layer": rng.random(4).tolist()})
    return out


def _legend_clear_of_axes(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), "a legend lies on the data"


def test_accuracy_bars_chance_zero_and_legend(records):
    fig = plots.accuracy_bars(records, {"clock_math": 1 / 6, "outlier": 1 / 6})
    _legend_clear_of_axes(fig)
    ax = fig.axes[0]
    chance = [seg for coll in ax.collections for seg in getattr(coll, "get_segments", lambda: [])()
              if len(seg) == 2 and seg[0][1] == seg[1][1]]
    assert any(abs(seg[0][1] - 1 / 6) < 1e-9 for seg in chance)
    assert "0" in [t.get_text() for t in ax.texts]  # organism:a scores 0 on clock math zero-shot
    assert [t.get_text() for t in ax.get_xticklabels()] == TASKS


def test_layer_curves_one_panel_per_model_with_whole_layers_and_a_legend_off_the_data(records):
    fig = plots.layer_share_curves(records)
    _legend_clear_of_axes(fig)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == MODELS
    assert all(float(t).is_integer() for t in panels[0].get_xticks())


def test_visual_share_bars_are_deterministic_and_keep_the_legend_off(records, tmp_path):
    first = plots.save(plots.visual_share_bars(records), tmp_path / "a")[0].read_bytes()
    second = plots.save(plots.visual_share_bars(records), tmp_path / "b")[0].read_bytes()
    assert first == second  # bootstrap intervals with a fixed seed
    _legend_clear_of_axes(plots.visual_share_bars(records))
