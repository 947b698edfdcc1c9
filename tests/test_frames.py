"""Tidy data out: records and attention as pandas frames, two result folders compared, interventions against their
base condition. Every number is checked against the records it came from, computed another way."""

import json

import numpy as np
import pytest

from micl_probe import RunConfig, capture_attention, load, run, sample_episodes
from micl_probe.evaluation import accuracy_table, load_records, mcnemar_p
from micl_probe.evaluation.compare import compare_runs, intervention_effects
from micl_probe.interventions import alpha_sweep

TASKS, CONDITIONS = ["outlier", "novel_binding"], ["no-image", "2-shot", "2-shot+alpha=2"]


@pytest.fixture(scope="module")
def loaded():
    return load("organism:text-shortcut")


@pytest.fixture(scope="module")
def folder(loaded, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    records = run(loaded, TASKS, CONDITIONS, RunConfig(n=6, batch_size=6, progress=False),
                  results=out / "results.jsonl", interventions=alpha_sweep(loaded, [2]))
    return out, records


def test_to_frame_has_a_row_per_record_and_the_records_numbers(folder):
    out, records = folder
    df = load_records(out).to_frame()  # the folder, read back from disk
    assert len(df) == len(records) == len(TASKS) * len(CONDITIONS) * 6
    assert list(df.columns[:4]) == ["model", "task", "condition", "index"]
    table = accuracy_table(records)["organism:text-shortcut"]
    for (task, condition), cell in df.groupby(["task", "condition"]):
        assert cell.correct.sum() == table[task][condition]["correct"]
        assert cell.visual_share.mean() == pytest.approx(table[task][condition]["visual_share"])
    parts = df[[c for c in df.columns if c.startswith("looks_at.")]]
    assert np.allclose(parts.sum(1), 1.0, atol=1e-5)  # the parts of the answer row sum to 1
    assert {"seed", "setup", "weights", "metric", "style"} <= set(df.columns)
    assert not {"visual_share_by_head", "demo_image_by_head", "head_arrays"} & set(df.columns)


def test_heads_frame_reads_the_arrays_and_means_back_to_the_record(folder):
    out, records = folder
    heads = load_records(out).heads_frame()  # arrays read from the columnar files, not carried by the records
    layers, n_heads = np.asarray(records[0]["visual_share_by_head"]).shape
    assert len(heads) == len(records) * layers * n_heads
    for r in records[::7]:
        mine = heads[(heads.task == r["task"]) & (heads.condition == r["condition"]) & (heads["index"] == r["index"])]
        grid = mine.pivot(index="layer", columns="head", values="demo_image").to_numpy()
        assert np.allclose(grid, np.asarray(r["demo_image_by_head"]))
        assert mine.visual_share.mean() == pytest.approx(r["visual_share"], abs=1e-6)
        assert mine.demo_image.mean() == pytest.approx(r["looks_at"]["demo_image"], abs=1e-6)


def test_attention_mass_to_frame_pivots_back_to_the_tensor(loaded):
    am = capture_attention(loaded, sample_episodes("outlier", shots=2, n=2), progress=False)
    df = am.to_frame()
    assert am.dims == ("episode", "layer", "head", "segment") and len(df) == am.mass.numel()
    back = np.zeros(tuple(am.mass.shape))
    seg = {s: i for i, s in enumerate(am.segments)}
    back[df.episode, df.layer, df["head"], df.segment.map(seg)] = df.value
    assert np.allclose(back, am.mass.numpy())
    image = df[df.role == "image"].groupby(["episode", "layer", "head"]).value.sum().to_numpy()
    assert np.allclose(image, am.visual_share().reshape(-1).numpy(), atol=1e-6)
    parts = am.to_frame("where_it_looks").groupby(["episode", "layer", "head"]).value.sum()
    assert np.allclose(parts, 1.0, atol=1e-5) and set(df.task) == {"outlier"}
    with pytest.raises(ValueError, match="use one of"):
        am.to_frame("nope")


def test_intervention_effects_are_paired_mcnemar_against_the_base(folder):
    _, records = folder
    effects = intervention_effects(records)
    assert {(e["task"], e["condition"], e["base"]) for e in effects} == {(t, "2-shot+alpha=2", "2-shot")
                                                                         for t in TASKS}
    for e in effects:
        by = {c: {r["index"]: r for r in records if r["task"] == e["task"] and r["condition"] == c}
              for c in (e["condition"], e["base"])}
        a = [by[e["condition"]][i]["correct"] for i in range(6)]
        b = [by[e["base"]][i]["correct"] for i in range(6)]
        assert e["n"] == 6 and e["a"]["correct"] == sum(a) and e["b"]["correct"] == sum(b)
        assert e["p"] == mcnemar_p(b, a) and e["difference"] == pytest.approx((sum(a) - sum(b)) / 6)
        assert e["demo_image_b"] == pytest.approx(np.mean([r["looks_at"]["demo_image"]
                                                           for r in by[e["base"]].values()]))


def test_compare_pairs_the_same_queries_only(loaded, folder, tmp_path, capsys):
    from micl_probe.compare import main

    out, records = folder
    same = compare_runs(records, load_records(out))
    assert all(r["n"] == 6 and r["difference"] == 0 and r["p"] == 1.0 for r in same["rows"])
    other = run(loaded, ["outlier"], ["2-shot"], RunConfig(n=6, seed=1, progress=False),
                results=tmp_path / "seed1" / "results.jsonl")
    apart = compare_runs(records, other)
    (cell,) = [r for r in apart["rows"] if r["task"] == "outlier" and r["condition"] == "2-shot"]
    assert cell["n"] == 0 and cell["n_a"] == 6 and cell["n_b"] == 6  # another seed: other queries, no pairs
    # a perturbed copy: flip one verdict in B, the paired difference is exactly that one query
    flipped = [dict(r) for r in records]
    target = next(r for r in flipped if r["task"] == "outlier" and r["condition"] == "no-image")
    target["correct"] = not target["correct"]
    (row,) = [r for r in compare_runs(records, flipped)["rows"]
              if r["task"] == "outlier" and r["condition"] == "no-image"]
    assert row["difference"] == pytest.approx((1 if not target["correct"] else -1) / 6)
    capsys.readouterr()
    main([str(out), str(tmp_path / "seed1"), "--out", str(tmp_path / "cmp")])
    md = capsys.readouterr().out
    assert "no common queries" in md and "| organism:text-shortcut | outlier | 2-shot |" in md
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert len(saved["rows"]) == len(TASKS) * len(CONDITIONS)


def test_compare_of_a_missing_folder_is_one_line(tmp_path, capsys):
    from micl_probe.compare import main

    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "nowhere"), str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "no results.jsonl there" in err


def test_records_frame_without_attention(loaded, tmp_path):
    records = run(loaded, ["outlier"], ["2-shot"], RunConfig(n=2, attention=False, progress=False))
    df = records.to_frame()
    assert len(df) == 2 and "visual_share" not in df and records.heads_frame().empty
    assert df.correct.dtype == bool and set(df.condition) == {"2-shot"}
