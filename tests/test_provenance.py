"""No silent wrong numbers: a record is reused only when everything that made it matches, the report folder knows
its run (manifest.json) and refuses another's, results files are strict JSON and recover from lost parts, and one
process writes a results file at a time."""

import contextlib
import dataclasses
import io
import json

import pytest
import torch

from micl_probe import RunConfig, load, run
from micl_probe.evaluation import load_records
from micl_probe.evaluation.store import heads_dir, writing
from micl_probe.interventions import alpha_sweep
from micl_probe.testing import tiny_loaded
from micl_probe.testing.folders import vlicl_fixture
from micl_probe.testing.templates import with_template

TASKS, CONDITIONS = ["clock_math"], ["zero-shot", "no-image", "2-shot"]
BASE = RunConfig(n=3, batch_size=3, progress=False)


@pytest.fixture(scope="module")
def loaded():
    return load("organism:true-micl")


def _lines(path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def _rerun_adds(path, first: dict, second: dict) -> tuple[int, int]:
    """(records the first run wrote, records the second run added): each run is keyword arguments of `run`."""
    run(**first, results=path)
    before = _lines(path)
    run(**second, results=path)
    return before, _lines(path) - before


CHANGES = {  # setting -> how the second run differs from the first
    "seed": dict(config=dataclasses.replace(BASE, seed=1)),
    "episode pool (an 8-shot condition added)": dict(conditions=CONDITIONS + ["8-shot"]),
    "prompt style": dict(config=dataclasses.replace(BASE, style="single")),
    "instruction": dict(config=dataclasses.replace(BASE, instruction="Read the clock.")),
    "metric": dict(config=dataclasses.replace(BASE, metric="exact")),
    "capture on/off": dict(config=dataclasses.replace(BASE, attention=False)),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_each_setting_changes_every_record(loaded, tmp_path, change):
    first = dict(loaded=loaded, tasks=TASKS, conditions=CONDITIONS, config=BASE)
    second = first | CHANGES[change]
    wrote, added = _rerun_adds(tmp_path / "r.jsonl", first, second)
    n_second = len(second["conditions"]) * 3
    assert wrote == 9 and added == n_second, f"{change}: {n_second - added} records reused"


def test_same_settings_reuse_every_record_and_no_image_knows_its_shots(loaded, tmp_path):
    path = tmp_path / "r.jsonl"
    args = dict(loaded=loaded, tasks=TASKS, conditions=CONDITIONS, config=BASE)
    first = run(**args, results=path)
    again = run(**args, results=path)
    assert _lines(path) == 9 and [r["correct"] for r in again] == [r["correct"] for r in first]
    # 4-shot -> 8-shot: the no-image control draws 8 demos now; its records say so
    records = run(loaded, TASKS, ["no-image", "8-shot"], BASE, results=path)
    assert {r["shots"] for r in records if r["condition"] == "no-image"} == {8}


def test_max_new_tokens_matters_only_for_generated_metrics(loaded, tmp_path):
    gen = dataclasses.replace(BASE, metric="exact", attention=False)
    args = dict(loaded=loaded, tasks=TASKS, conditions=["zero-shot"])
    assert _rerun_adds(tmp_path / "g.jsonl", args | {"config": gen},
                       args | {"config": dataclasses.replace(gen, max_new_tokens=3)}) == (3, 3)
    assert _rerun_adds(tmp_path / "t.jsonl", args | {"config": BASE},
                       args | {"config": dataclasses.replace(BASE, max_new_tokens=3)}) == (3, 0)


def test_intervention_artifact_and_weights_are_part_of_the_key(loaded, tmp_path):
    sweep = alpha_sweep(loaded, alphas=(2.0, 4.0))
    args = dict(loaded=loaded, tasks=TASKS, conditions=["2-shot+x"], config=BASE)
    assert _rerun_adds(tmp_path / "a.jsonl", args | {"interventions": {"x": sweep["alpha=2"]}},
                       args | {"interventions": {"x": sweep["alpha=4"]}}) == (3, 3)
    # an untagged intervention (a user's own factory) is never reused: nothing says what it runs
    own = {"x": lambda layouts: sweep["alpha=2"](layouts)}
    assert _rerun_adds(tmp_path / "u.jsonl", args | {"interventions": own}, args | {"interventions": own}) == (3, 3)
    # the same name, retrained weights: new records
    path = tmp_path / "w.jsonl"
    run(loaded, TASKS, ["zero-shot"], BASE, results=path)
    p = next(loaded.model.parameters())
    with torch.no_grad():
        p[0].add_(1e-3)
    try:
        run(loaded, TASKS, ["zero-shot"], BASE, results=path)
    finally:
        with torch.no_grad():
            p[0].sub_(1e-3)
    assert _lines(path) == 6


def test_task_folder_content_is_part_of_the_key(tmp_path):
    root = vlicl_fixture(tmp_path / "data", n_query=2)
    task = f"vlicl:{root}/operator_induction"
    loaded = tiny_loaded("llava")
    args = dict(loaded=loaded, tasks=[task], conditions=["zero-shot"],
                config=RunConfig(n=2, progress=False, attention=False, max_new_tokens=2))
    path = tmp_path / "r.jsonl"
    run(**args, results=path)
    query = root / "operator_induction" / "query.json"
    items = json.loads(query.read_text())
    items[0]["answer"] = [999, 999, 999] if isinstance(items[0]["answer"], list) else "999"
    query.write_text(json.dumps(items))
    run(**args, results=path)
    assert _lines(path) == 4


def test_template_declared_format_and_system_message_are_part_of_the_key(tmp_path):
    loaded = tiny_loaded("llava")
    loaded = dataclasses.replace(loaded, processor=with_template(loaded.processor, "llava-1.5"), _cache={})
    args = dict(tasks=TASKS, conditions=["zero-shot"], config=dataclasses.replace(BASE, attention=False))
    path = tmp_path / "r.jsonl"
    run(loaded, **args, results=path)
    templated = loaded.prompt_format
    run(loaded, **(args | {"config": dataclasses.replace(args["config"], system="Be brief.")}), results=path)
    assert _lines(path) == 6  # a system message: new records
    loaded.use_template = False
    run(loaded, **args, results=path)
    assert loaded.prompt_format != templated and _lines(path) == 9


def test_lost_parts_and_tmp_leftovers_are_recovered(loaded, tmp_path):
    path = tmp_path / "r.jsonl"
    first = run(loaded, TASKS, CONDITIONS, BASE, results=path)
    parts = sorted(heads_dir(path).glob("part-*.parquet"))
    parts[0].unlink()  # one chunk's arrays lost
    (heads_dir(path) / "part-1-1.tmp").write_bytes(b"cut short")  # a crash mid-write
    again = run(loaded, TASKS, CONDITIONS, BASE, results=path)
    assert all(r["visual_share_by_head"].shape == (4, 4) for r in again)
    assert [r["correct"] for r in again] == [r["correct"] for r in first]
    assert len(load_records(path)) == 9


def test_results_lines_are_strict_json_and_nan_comes_back(loaded, tmp_path):
    path = tmp_path / "r.jsonl"
    records = run(loaded, TASKS, ["zero-shot"], BASE, results=path)
    from micl_probe.evaluation.store import append_records
    nan = dict(records[0], index=99, visual_share=float("nan"), visual_share_by_layer=[float("nan"), 0.5])
    nan.pop("visual_share_by_head"), nan.pop("demo_image_by_head")
    append_records(path, [nan])
    for line in path.read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in a results line"))
    back = next(r for r in load_records(path) if r["index"] == 99)
    assert back["visual_share"] != back["visual_share"] and back["visual_share_by_layer"][1] == 0.5


def test_a_second_writer_is_refused(loaded, tmp_path):
    path = tmp_path / "r.jsonl"
    with writing(path):
        with pytest.raises(ValueError, match="being written by process"):
            run(loaded, TASKS, ["zero-shot"], BASE, results=path)
    run(loaded, TASKS, ["zero-shot"], BASE, results=path)  # free again afterwards


def test_sharded_rerun_with_nothing_left_merges(loaded, tmp_path):
    path = tmp_path / "r.jsonl"
    for rank in (0, 1):  # 2 jobs: each shard gets one; then rerun both with nothing to do
        run(loaded, TASKS, ["zero-shot", "2-shot"], dataclasses.replace(BASE, shard=(rank, 2)), results=path)
    run(loaded, TASKS, ["zero-shot", "2-shot"], BASE, results=path)  # merges
    assert run(loaded, TASKS, ["zero-shot", "2-shot"], dataclasses.replace(BASE, shard=(1, 2)), results=path) == []
    assert len(run(loaded, TASKS, ["zero-shot", "2-shot"], BASE, results=path)) == 6 and _lines(path) == 6


def _report(*flags, out) -> tuple[int, str]:
    """(exit code, stderr) of attn_report run in this process."""
    from micl_probe.attn_report import main
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            main(["--model", "organism:true-micl", "--tasks", "clock_math", "--n", "2", "--out", str(out),
                  *map(str, flags)])
    except SystemExit as e:
        return e.code, err.getvalue()
    return 0, err.getvalue()


def test_report_folder_has_a_manifest_and_refuses_other_settings(tmp_path):
    out = tmp_path / "rep"
    code, err = _report(out=out)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["seed"] == 0 and manifest["finished"] and manifest["versions"]["torch"]
    weights = manifest["model_fingerprints"]["organism:true-micl"]["weights"]
    page = (out / "report.md").read_text()
    assert "## What made these numbers" in page and f"weights {weights}" in page
    assert f"torch {torch.__version__}" in page
    json.loads((out / "results.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in results.json"))
    before = (out / "results.jsonl").read_text()
    for flags, named in ((["--seed", "1"], "seed: 0 there, 1 now"), (["--no-attention"], "attention"),
                         (["--max-new-tokens", "3"], "max_new_tokens"),
                         (["--fixed-demos"], "fixed_demos: false there, true now")):
        code, err = _report(*flags, out=out)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and named in errors[0], err
    assert (out / "results.jsonl").read_text() == before  # nothing written by a refused run
    assert _report("--n", "3", out=out)[0] == 0  # more queries of the same run: resumed and extended
    assert _lines(out / "results.jsonl") == 9


def test_prediction_is_the_text_scored(loaded, tmp_path):
    from micl_probe.evaluation.metrics import correct
    cfg = dataclasses.replace(BASE, metric="contains", attention=False, max_new_tokens=6)
    records = run(loaded, TASKS, ["2-shot"], cfg, results=tmp_path / "r.jsonl")
    assert all(correct("contains", r["prediction"], r["answer"]) == r["correct"] for r in records)
    assert any("\n" in r["prediction"] or len(r["prediction"]) > len(r["answer"]) for r in records)


def test_shard_commands_rerun_with_nothing_left(tmp_path, capsys):
    from micl_probe.attn_report import main
    argv = ["--model", "organism:true-micl", "--tasks", "clock_math", "--n", "2", "--conditions", "zero-shot",
            "2-shot", "--out", str(tmp_path / "rep")]
    for shard in ("0/2", "1/2"):
        main(argv + ["--shard", shard])
    main(argv)  # merges and reports
    main(argv + ["--shard", "1/2"])  # a finished shard again: nothing to do, no error
    main(argv)
    assert _lines(tmp_path / "rep" / "results.jsonl") == 4


def test_a_failed_first_report_leaves_no_folder(tmp_path, monkeypatch):
    import micl_probe.attn_report as report

    def broken(*a, **kw):
        raise ValueError("an item of the task is broken")
    monkeypatch.setattr(report, "run", broken)
    with pytest.raises(SystemExit):
        report.main(["--model", "organism:true-micl", "--tasks", "clock_math", "--n", "1", "--out",
                     str(tmp_path / "rep")])
    assert not (tmp_path / "rep").exists()


def test_the_weights_fingerprint_sums_large_parameters_in_chunks_to_the_same_hash():
    """A parameter of more than 2^24 values is summed chunk by chunk (no float64 copy of it); the hash equals the
    one a whole float64 sum gives, written out here."""
    import hashlib

    import torch

    from micl_probe.core.provenance import weights_fingerprint

    torch.manual_seed(0)
    model = torch.nn.Linear(4200, 4100, bias=False)  # 17.2 M values: two chunks
    h = hashlib.sha1()
    for name, p in model.named_parameters():
        flat = p.detach().flatten()
        h.update(f"{name}{tuple(p.shape)}{p.dtype}{float(flat.sum(dtype=torch.float64)):.7e}".encode())
        h.update(flat[:: max(1, flat.numel() // 64)][:64].float().numpy().tobytes())
    assert weights_fingerprint(model) == h.hexdigest()[:12]
