"""The harness: records match an independent generate + exact match, a rerun resumes, interventions and retrieval
conditions do what they say, and attn_report writes its report folder."""

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from micl_probe import DARA, Demo, Episode, RunConfig, load, run
from micl_probe.core import prepare
from micl_probe.evaluation import condition_episode, load_records
from micl_probe.testing import noise_episode

TASKS, CONDITIONS = ["outlier", "novel_binding_shortcut"], ["zero-shot", "no-image", "2-shot"]


@pytest.fixture(scope="module")
def loaded():
    return load("organism:text-shortcut")


def test_records_match_generate_and_a_rerun_resumes(loaded, tmp_path):
    path = tmp_path / "results.jsonl"
    full = run(loaded, TASKS, CONDITIONS, RunConfig(n=6, batch_size=3, progress=False), results=path)
    assert len(full) == len(TASKS) * len(CONDITIONS) * 6 and len(load_records(path)) == len(full)
    # independent check: HF generate + exact match on the same conditioned episodes
    from micl_probe.evaluation.conditions import pool_size
    from micl_probe.tasks import sample_episodes
    k_default, k_max = pool_size(CONDITIONS)
    for r in full[::5]:
        ep = condition_episode(sample_episodes(r["task"], k_max, 6, split="query")[r["index"]], r["condition"],
                               k_default)
        p = prepare(ep, loaded.processor, loaded.adapter, model=loaded.model)
        out = loaded.model.generate(**p.inputs, max_new_tokens=6, do_sample=False)
        text = loaded.processor.tokenizer.decode(out[0, p.inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        assert (text.strip() == ep.query.answer) == r["correct"], (r, text)
        answers = {d.answer for d in ep.demos}  # the organisms' words are one token each: first word, first token
        if answers:
            assert r["copied"] == r["cla"] == ((text.split() or [""])[0] in {a.split()[0] for a in answers})
            assert r["gold_in_demos"] == (ep.query.answer in answers)
        else:
            assert r["copied"] is r["cla"] is r["gold_in_demos"] is None
        assert 0 <= r["visual_share"] <= 1 and (r["condition"] != "zero-shot" or set(r["image_share"]) == {"query"})
        assert sum(r["looks_at"].values()) == pytest.approx(1, abs=1e-5)
        assert r["looks_at"]["query_image"] == pytest.approx(r["image_share"]["query"], abs=1e-6)
        match = [i for i, d in enumerate(ep.demos) if d.answer == ep.query.answer]
        if r["task"] == "novel_binding_shortcut" and r["condition"] == "2-shot":  # one demo of each class
            assert len(match) == 1 and r["matching_demo_image"] == pytest.approx(r["image_share"][f"demo{match[0]}"])
            assert r["other_demo_image"] == pytest.approx(r["image_share"][f"demo{1 - match[0]}"])
        else:
            assert "matching_demo_image" not in r
    # a crash after the first records: the rerun computes only what is missing and gives the same table
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:7]) + "\n" + '{"model": "m", "note": "no task"}\n' + "[1, 2]\n"
                    + lines[7][:25])  # valid JSON that is no record, then the 8th record cut short mid-line
    with pytest.warns(UserWarning, match="unreadable"):
        again = run(loaded, TASKS, CONDITIONS, RunConfig(n=6, batch_size=3, progress=False), results=path)
    key = lambda r: (r["task"], r["condition"], r["index"])
    assert sorted(map(key, again)) == sorted(map(key, full))
    with pytest.warns(UserWarning):
        assert len(load_records(path)) == len(full)
    assert {key(r): r["correct"] for r in again} == {key(r): r["correct"] for r in full}
    # the same name with other weights (a retrained organism) does not reuse those records
    first = next(loaded.model.parameters())
    saved = first.detach().clone()
    with torch.no_grad():
        first.add_(1e-3)
    try:
        with pytest.warns(UserWarning):
            fresh = run(loaded, TASKS[:1], CONDITIONS[:1], RunConfig(n=2, progress=False), results=path)
    finally:
        with torch.no_grad():
            first.copy_(saved)  # the weights restored exactly
    assert torch.equal(next(loaded.model.parameters()), saved)
    assert len(fresh) == 2 and fresh[0]["weights"] != full[0]["weights"]
    with pytest.warns(UserWarning):
        assert len(load_records(path)) == len(full) + 2


def test_intervention_conditions(loaded):
    calls = []

    def spy(layouts):
        calls.append(len(layouts))
        return DARA.for_model(loaded, n_images=layouts[0].n_images).set_alpha(8.0).applied(
            loaded.model, layouts, kernel="eager")

    recs = run(loaded, ["outlier"], ["2-shot", "2-shot+boost"], RunConfig(n=4, progress=False),
               interventions={"boost": spy})
    plain = [r for r in recs if r["condition"] == "2-shot"]
    boosted = [r for r in recs if r["condition"] == "2-shot+boost"]
    assert calls and len(boosted) == 4  # scoring and attention ran inside the intervention
    # alpha = 8 on every image of layer 0 raises layer 0's visual share at the answer row
    assert all(b["visual_share_by_layer"][0] > p["visual_share_by_layer"][0] + 0.01 for p, b in zip(plain, boosted))
    with pytest.raises(ValueError, match="names intervention 'dara'"):
        run(loaded, ["outlier"], ["2-shot+dara"], RunConfig(n=2, progress=False))


def test_retrieval_keeps_the_most_similar_demos():
    ep = noise_episode(4)
    twin = Demo(ep.query.images, "What is 9?", "twin")  # a demo showing the query's own image
    ep = Episode(ep.demos[:2] + (twin,) + ep.demos[2:], ep.query, task="t")
    got = ep.with_retrieved_shots(1)
    assert [d.answer for d in got.demos] == ["twin"] and got.condition == "retrieved-1-shot"
    two = condition_episode(ep, "retrieved-2-shot")
    assert two.shots == 2 and "twin" in [d.answer for d in two.demos]
    order = [ep.demos.index(d) for d in two.demos]
    assert order == sorted(order)  # prompt order is kept
    with pytest.raises(ValueError):
        Episode((Demo((), "q?", "a"),), ep.query).with_retrieved_shots(1)


def test_alpha_sweep_and_report_cli(loaded, tmp_path, capsys):
    from micl_probe.attn_report import main
    from micl_probe.interventions import alpha_sweep

    sweep = alpha_sweep(loaded, alphas=(2,))
    p = prepare(noise_episode(2).with_shots(2), loaded.processor, loaded.adapter, model=loaded.model)
    with torch.no_grad():
        base = loaded.model(**p.inputs).logits
        with sweep["alpha=2"]([p.layout]) as kwargs:
            moved = loaded.model(**p.inputs, **kwargs).logits
    assert not torch.allclose(base, moved)
    out = tmp_path / "report"
    main(["--model", "organism:text-shortcut", "--tasks", "outlier", "--conditions", "zero-shot", "2-shot",
          "retrieved-1-shot", "2-shot+alpha=2", "--alphas", "2", "--n", "4", "--out", str(out)])
    for name in ("report.html", "report.md", "results.json", "results.jsonl", "fig_accuracy.png",
                 "fig_accuracy.pdf"):
        assert (out / name).is_file(), name
    table = json.loads((out / "results.json").read_text())["accuracy"]["organism:text-shortcut"]["outlier"]
    assert set(table) == {"zero-shot", "2-shot", "retrieved-1-shot", "2-shot+alpha=2"}
    assert "data:image/png;base64" in (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert "## Where the answer looks" in md and "| organism:text-shortcut | 2-shot+alpha=2 |" in md
    assert "## Which heads predict a correct answer" in md and (out / "fig_heads_text-shortcut.png").is_file()
    # the intervention is audited: what ran, and its effect against its base condition on the same queries
    assert "## Interventions" in md and "| +alpha=2 | – | – | model any | none: a fixed factor 2" in md
    assert "| organism:text-shortcut | outlier | 2-shot+alpha=2 | 2-shot |" in md
    html = (out / "report.html").read_text()
    assert "L3H2 for layer 3, head 2" in html and "<layer>" not in html  # no caption text read as an HTML tag
    for stem in ("fig_looks_at", "fig_layer_share", "fig_demo_position", "fig_demo_heads_text-shortcut"):
        assert (out / f"{stem}.png").is_file() and f"{stem}.png" in md, stem
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["interventions"]["alpha=2"]["trained"].startswith("none: a fixed factor 2")
    assert (out / "fig_patch_text-shortcut.png").is_file() and "fig_patch_text-shortcut.png" in md
    _check_in_browser(out / "report.html", tmp_path / "shot.png")
    other = DARA(n_heads=7, n_images=3)  # artifacts for another model are refused, in one line
    other.meta = {"n_layers": 12, "model": "elsewhere"}
    other.save(tmp_path / "dara")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["--model", "organism:text-shortcut", "--tasks", "outlier", "--conditions", "2-shot+dara",
              "--dara", str(tmp_path / "dara"), "--n", "2", "--out", str(tmp_path / "r2")])
    err = capsys.readouterr().err  # the model's loading bar, then the error
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert exit_.value.code == 2 and "saved for a model with 12 layers" in line and "Traceback" not in err
    assert not (tmp_path / "r2").exists()


def _check_in_browser(page, shot):
    """The report renders in headless Chromium (when installed: .ci/run installs Debian's chromium): the
    screenshot is not blank and the page's inline figures decoded (their <img> elements have a natural width)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1000,1600"]
    subprocess.run(flags + [f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True, timeout=120)
    px = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert px.std() > 10 and (px < 128).mean() > 0.005  # text and figures, not a white page
    script = ("<script>onload=()=>{document.title=[...document.images].filter(i=>i.naturalWidth>0).length}"
              "</script>")
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", script + "</body>"))
    dom = subprocess.run(flags + ["--dump-dom", probe.as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    n_figures = page.read_text().count("<img ")
    assert f"<title>{n_figures}</title>" in dom, dom[:300]


def test_one_forward_pass_gives_the_records_of_separate_scoring_and_capture(loaded):
    """The harness scores and measures each batch in one (padded) forward pass; the same records come from scoring
    each batch on its own and capturing each episode alone, with and without an intervention."""
    from micl_probe import capture_attention
    from micl_probe.evaluation import which_correct
    from micl_probe.interventions import alpha_sweep
    from micl_probe.tasks import sample_episodes

    sweep = alpha_sweep(loaded, alphas=(2,))
    recs = run(loaded, ["outlier"], ["2-shot", "2-shot+alpha=2"], RunConfig(n=6, batch_size=3, progress=False),
               interventions=sweep)
    eps = [condition_episode(e, "2-shot") for e in sample_episodes("outlier", 2, 6, split="query")]
    for cond, intervention in (("2-shot", None), ("2-shot+alpha=2", sweep["alpha=2"])):
        mine = sorted((r for r in recs if r["condition"] == cond), key=lambda r: r["index"])
        assert [r["correct"] for r in mine] == which_correct(loaded, eps, intervention).tolist()
        alone = capture_attention(loaded, eps, progress=False, intervention=intervention)
        torch.testing.assert_close(torch.tensor([r["visual_share_by_head"] for r in mine]), alone.visual_share(),
                                   atol=1e-5, rtol=0)


def test_shards_merge_into_the_records_of_one_process(loaded, tmp_path):
    """Two shards (rank 0 and 1 of 2) split the batch jobs without overlap; an unsharded run beside them merges the
    shard files (then removes them) and returns exactly the records one process computes."""
    from micl_probe.evaluation.harness import shard_files

    tasks, conditions = ["outlier"], ["zero-shot", "2-shot"]
    one = run(loaded, tasks, conditions, RunConfig(n=5, batch_size=2, progress=False), results=tmp_path / "one.jsonl")
    parts = [run(loaded, tasks, conditions, RunConfig(n=5, batch_size=2, progress=False, shard=(rank, 2)),
                 results=tmp_path / "two.jsonl") for rank in (0, 1)]
    keys = [{(r["condition"], r["index"]) for r in part} for part in parts]
    assert keys[0] and keys[1] and not keys[0] & keys[1] and len(keys[0] | keys[1]) == len(one) == 10
    assert len(shard_files(tmp_path / "two.jsonl")) == 2 and not (tmp_path / "two.jsonl").exists()
    merged = run(loaded, tasks, conditions, RunConfig(n=5, batch_size=2, progress=False),
                 results=tmp_path / "two.jsonl")
    assert _plain(merged) == _plain(one)  # every field (the per-head arrays too), in the same order
    assert shard_files(tmp_path / "two.jsonl") == [] and len(load_records(tmp_path / "two.jsonl")) == 10
    with pytest.raises(ValueError, match="rank must be in 0..1"):
        RunConfig(shard=(2, 2))


def test_torchrun_two_processes_equal_one(tmp_path):
    """`torchrun --nproc-per-node 2 -m micl_probe.attn_report` (gloo, CPU): rank 0 merges both shards and writes
    the same records and results.json as one process; --shard I/N then a plain run does the same without a
    launcher."""
    import os
    import sys

    from micl_probe.attn_report import main

    flags = ["--model", "organism:text-shortcut", "--tasks", "outlier", "--conditions", "zero-shot", "2-shot",
             "--queries", "4", "--batch-size", "2"]  # torchrun's parser would take --n for its own --nnodes
    main(flags + ["--out", str(tmp_path / "one")])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "micl_probe.attn_report", *flags, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    for rank in (0, 1):
        main(flags + ["--out", str(tmp_path / "slurm"), "--shard", f"{rank}/2"])
    assert not (tmp_path / "slurm" / "report.html").exists()
    main(flags + ["--out", str(tmp_path / "slurm")])

    def key(r):
        return (r["condition"], r["index"])

    want = _plain(sorted(load_records(tmp_path / "one" / "results.jsonl", heads=True), key=key))
    summary = {k: v for k, v in json.loads((tmp_path / "one" / "results.json").read_text()).items() if k != "seconds"}
    for other in ("two", "slurm"):
        assert _plain(sorted(load_records(tmp_path / other / "results.jsonl", heads=True), key=key)) == want
        got = json.loads((tmp_path / other / "results.json").read_text())
        assert {k: v for k, v in got.items() if k != "seconds"} == summary
        assert not list((tmp_path / other).glob("results.shard*"))


def _plain(records):
    """Records with their numpy per-head arrays as lists (comparable with ==)."""
    return [{k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in r.items()} for r in records]


def test_results_store_columnar_heads_and_malformed_lines(loaded, tmp_path):
    """Per-head arrays go to parquet beside the JSON lines and come back equal; lines that are valid JSON but not
    records are skipped with a warning naming each, and nothing else is lost or recomputed; many parts compact into
    one; files with the arrays inline (older versions) still read."""
    from micl_probe.evaluation.store import HEAD_ARRAYS, compact_heads, heads_dir

    path = tmp_path / "results.jsonl"
    cfg = RunConfig(n=4, batch_size=2, progress=False)
    first = run(loaded, ["outlier"], ["2-shot"], cfg, results=path)
    assert all(isinstance(r["demo_image_by_head"], np.ndarray) and r["demo_image_by_head"].shape == (4, 4)
               for r in first)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 4 and not any(k in x for x in lines for k in HEAD_ARRAYS)  # scalars only in the lines
    assert len(list(heads_dir(path).glob("*.parquet"))) == 2  # one part a chunk
    with path.open("a") as f:
        f.write('{"model": "m", "condition": "2-shot", "index": 0}\n')  # no task (the KeyError of old)
        f.write('[1, 2]\n')
        f.write(json.dumps({**lines[0], "index": "3"}) + "\n")
        f.write('{"model": "organism:text-shortcut", "task": "outl')  # cut short
    with pytest.warns(UserWarning, match=r"line 5 \(no 'task'\); line 6 \(a JSON list.*line 7 \('index' is '3'.*"
                                         r"line 8 \(not JSON"):
        again = run(loaded, ["outlier"], ["2-shot"], cfg, results=path)
    assert _plain(again) == _plain(first)  # nothing lost, nothing recomputed
    assert len(list(heads_dir(path).glob("*.parquet"))) == 2
    compact_heads(path, after=1)
    assert len(list(heads_dir(path).glob("*.parquet"))) == 1
    with pytest.warns(UserWarning):
        assert _plain(load_records(path, heads=True)) == _plain(first)
    inline = tmp_path / "old.jsonl"
    inline.write_text("".join(json.dumps({**r, **{k: r[k].tolist() for k in HEAD_ARRAYS}}) + "\n" for r in first))
    assert _plain(load_records(inline, heads=True)) == _plain(first)


@pytest.mark.parametrize("shard", ["2/2", "a/3", "1"])
def test_bad_shard_flag_is_one_line(shard):
    from micl_probe.attn_report import check, parse
    from micl_probe.core.errors import UsageError

    with pytest.raises(UsageError, match=r"--shard .*give I/N with 0 <= I < N"):
        check(parse(["--shard", shard]))
