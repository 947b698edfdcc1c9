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
                    v = rng.random(4)  # per layer; the demo images hold a part of it (two heads)
                    out.append({"model": m, "task": t, "condition": c, "index": i, "correct": bool(correct),
                                "visual_share": float(rng.random()), "visual_share_by_layer": v.tolist(),
                                "demo_image_by_head": [[x / 2, x / 3] for x in v]})
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
    assert any(abs(seg[0][1] - 100 / 6) < 1e-9 for seg in chance)  # in %, as the tables
    assert "0" in [t.get_text() for t in ax.texts]  # organism:a scores 0 on clock math zero-shot
    assert [t.get_text() for t in ax.get_xticklabels()] == TASKS


def test_layer_figure_one_row_per_model_with_whole_layers_and_a_legend_off_the_data(records):
    fig = plots.image_share_by_layer(records)
    _legend_clear_of_axes(fig)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == [f"{m}: {w}" for m in MODELS for w in ("demo images", "query image")]
    assert all(float(t).is_integer() for t in panels[0].get_xticks())


def test_bootstrap_bands_are_deterministic(records, tmp_path):
    first = plots.save(plots.image_share_by_layer(records), tmp_path / "a")[0].read_bytes()
    second = plots.save(plots.image_share_by_layer(records), tmp_path / "b")[0].read_bytes()
    assert first == second  # bootstrap intervals with a fixed seed


@pytest.fixture(scope="module")
def attention_records():
    """Records with the per-head demo-image arrays and each demo's image share (2 demos, 3 layers, 2 heads)."""
    rng = np.random.default_rng(1)
    out = []
    for c in ("no-image", "2-shot", "2-shot+dara"):
        for t in TASKS:
            for i in range(8):
                demo = rng.random((3, 2)) * 0.3 * (c != "no-image")
                shares = {"demo0": float(rng.random() * 0.1), "demo1": float(rng.random() * 0.3),
                          "query": float(rng.random() * 0.4)}
                parts = rng.dirichlet(np.ones(6))
                out.append({"model": "organism:a", "task": t, "condition": c, "index": i, "shots": 2,
                            "correct": bool(rng.random() < 0.5), "visual_share": float(rng.random()),
                            "visual_share_by_layer": (demo.mean(-1) + 0.2).tolist(), "demo_image_by_head": demo,
                            "image_share": shares if c != "no-image" else {"demo0": 0.0, "demo1": 0.0, "query": 0.2},
                            "looks_at": dict(zip(plots.PART_LABELS, parts.tolist()))})
    return out


def test_layer_figure_splits_demo_images_from_the_query_image(attention_records):
    """The left panel's line is the demo images' share per layer (mean over heads, episodes), the right one the
    query image's (images minus demo images), both in %."""
    fig = plots.image_share_by_layer(attention_records)
    left, right = fig.axes[0], fig.axes[1]
    mine = [r for r in attention_records if r["condition"] == "2-shot"]
    demo = 100 * np.mean([r["demo_image_by_head"].mean(-1) for r in mine], 0)
    query = 100 * np.mean([np.array(r["visual_share_by_layer"]) - r["demo_image_by_head"].mean(-1) for r in mine], 0)
    lines = lambda ax: [line for line in ax.lines if len(line.get_xdata()) == 3]  # noqa: E731
    assert any(np.allclose(line.get_ydata(), demo) for line in lines(left))
    assert any(np.allclose(line.get_ydata(), query) for line in lines(right))
    assert "demo images" in left.get_title() and "query image" in right.get_title()
    _legend_clear_of_axes(fig)


def test_demo_position_figure_is_each_demos_image_share(attention_records):
    fig = plots.demo_position(attention_records)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["organism:a, 2-shot", "organism:a, 2-shot+dara"]  # no-image: none
    mine = [r for r in attention_records if r["condition"] == "2-shot" and r["task"] == TASKS[0]]
    want = [100 * np.mean([r["image_share"][k] for r in mine]) for k in ("demo0", "demo1", "query")]
    assert any(np.allclose(line.get_ydata(), want) for line in panels[0].lines)
    assert [t.get_text() for t in panels[0].get_xticklabels()] == ["demo 1", "demo 2", "query"]


def test_looks_at_bars_are_the_parts_in_percent(attention_records):
    fig = plots.looks_at_bars(attention_records)
    ax = fig.axes[0]
    widths = {}
    for patch in ax.patches:
        widths.setdefault(round(patch.get_y() + patch.get_height() / 2), []).append(patch.get_width())
    mine = [r for r in attention_records if r["condition"] == "2-shot"]
    want = [100 * np.mean([r["looks_at"][p] for r in mine]) for p in plots.parts_present(r["looks_at"] for r in mine)]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert np.allclose(widths[labels.index("2-shot")], want) and np.isclose(sum(want), 100)


def test_a_condition_has_one_colour_in_every_figure_and_report(attention_records, records):
    """The colour of a condition depends on the condition only, not on which others a report has."""
    assert plots.condition_colour("4-shot") == plots.condition_colour("4-shot")
    assert len({plots.condition_colour(c) for c in ("zero-shot", "no-image", "2-shot", "4-shot", "8-shot",
                                                      "4-shot+dara", "4-shot+mtv", "zero-shot+mtv")}) == 8
    for recs in (records, [r for r in records if r["condition"] != "zero-shot"]):
        fig = plots.accuracy_bars(recs)
        handles, labels = fig.axes[0].get_legend_handles_labels()
        for handle, label in zip(handles, labels):
            if label in CONDITIONS:
                assert np.allclose(handle.patches[0].get_facecolor()[:3], plots.condition_colour(label))


def test_demo_head_heatmap_has_a_labelled_colour_bar_in_percent(attention_records):
    mine = [r for r in attention_records if r["condition"] == "2-shot"]
    fig = plots.demo_image_heads(mine, "2-shot")
    bar = fig.axes[-1]
    assert "%" in bar.get_ylabel() and "demo images" in bar.get_ylabel()
    want = 100 * np.mean([r["demo_image_by_head"] for r in mine if r["task"] == TASKS[0]], 0)
    assert np.allclose(fig.axes[0].collections[0].get_array().reshape(want.shape), want)


def test_per_layer_figures_refuse_records_loaded_without_their_head_arrays(tmp_path):
    """Records read back without their per-head arrays would draw as zero demo-image attention: one line instead;
    with heads=True the figure's demo-image line is the records' own mean."""
    import micl_probe
    from micl_probe.evaluation import load_records

    loaded = micl_probe.load("organism:true-micl")
    micl_probe.run(loaded, ["clock_math"], ["2-shot"], micl_probe.RunConfig(n=2, progress=False),
                   results=tmp_path / "results.jsonl")
    bare = load_records(tmp_path)
    for draw in (lambda r: plots.image_share_by_layer(r), lambda r: plots.demo_image_heads(r, "2-shot")):
        with pytest.raises(ValueError, match="heads=True"):
            draw(bare)
    full = load_records(tmp_path, heads=True)
    fig = plots.image_share_by_layer(full)
    line = fig.axes[0].lines[0].get_ydata()  # demo images, the one condition's mean per layer
    want = 100 * np.mean([np.nanmean(np.asarray(r["demo_image_by_head"], float), -1) for r in full], 0)
    np.testing.assert_allclose(line, want, rtol=1e-6)
    assert want.max() > 0


def test_evidence_legend_names_every_region_any_panel_draws():
    """A task without distractors (novel binding) first: the legend still names the other panels' "wrong" lines."""
    def cell(wrong):
        region = {"correct": [0.3, 0.2], "wrong": [0.2 * wrong, 0.1 * wrong], "other": [0.5, 0.7]}
        chance = {"correct": 0.25, "wrong": 0.1 * wrong, "other": 0.75 - 0.1 * wrong}
        return {s: {"share": region, "chance": chance} for s in ("demo_labels", "answer_row")} | {"n": 4, "shots": 4}
    fig = plots.evidence_by_layer({"novel_binding": cell(0), "clock_math": cell(1)}, "m")
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "wrong (demo labels)" in labels and "wrong (answer row)" in labels and len(labels) == 6
    _legend_clear_of_axes(fig)
