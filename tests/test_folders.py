"""Benchmark folders as tasks: VL-ICL Bench's episodes task by task, TrueMICL folders, one-line format errors, and
the harness on a folder task with generation and VL-ICL's metric."""

import json

import numpy as np
import pytest
from PIL import Image

from micl_probe import RunConfig, run
from micl_probe.core import render
from micl_probe.core.episode import image_feature
from micl_probe.evaluation import condition_episode
from micl_probe.tasks import (
    FolderError,
    check_task,
    folder_episodes,
    load_folder,
    parse_task,
    query_episodes,
    retrieval_episodes,
)
from micl_probe.tasks.folders import VLICL_INSTRUCTIONS, VLICL_TASKS
from micl_probe.testing import tiny_loaded
from micl_probe.testing.folders import truemicl_fixture, vlicl_fixture


@pytest.fixture(scope="module")
def vlicl(tmp_path_factory):
    return vlicl_fixture(tmp_path_factory.mktemp("data"))


def _json(root, task, file):
    return json.loads((root / task / file).read_text())


def test_every_vlicl_task_reads(vlicl):
    for task in VLICL_TASKS:
        eps = folder_episodes(f"vlicl:{vlicl}/{task}", shots=2, n=3)
        per = 2 if task in ("open_mi", "matching_mi") else 1
        assert len(eps) == 3 and all(e.shots == 2 * per for e in eps), task
        queries = _json(vlicl, task, "query.json")
        assert [e.query.answer for e in eps] == [str(q["answer"]) for q in queries[:3]]
        assert all(len(e.query.images) == len(queries[0]["image"]) for e in eps)


def test_operator_demos_answer_the_querys_operator(vlicl):
    for task in ("operator_induction", "operator_induction_interleaved"):
        support = _json(vlicl, task, "support.json")
        results = {tuple(s["answer"]) for s in support}
        for e in folder_episodes(f"vlicl:{vlicl}/{task}", shots=3):
            k = "+-x".index(e.meta["rule"])
            assert {d.answer for d in e.demos} <= {str(r[k]) for r in results}
            assert all(len(d.images) == (2 if "interleaved" in task else 1) for d in e.demos)


def test_open_mi_is_two_way_with_k_shots_per_class(vlicl):
    queries = _json(vlicl, "open_mi", "query.json")
    for e, q in zip(folder_episodes(f"vlicl:{vlicl}/open_mi", shots=3), queries):
        answers = [d.answer for d in e.demos]
        assert len(set(answers)) == 2 and q["answer"] in answers and set(answers) <= set(q["classes"])
        assert all(answers.count(a) == 3 for a in set(answers))
        assert answers[:2] == answers[2:4] == answers[4:]  # VL-ICL: shot by shot, the same class order
        assert all(d.question == "This is a" for d in e.demos)
        assert e.meta["demos_match_query"] and e.meta["demos_per_shot"] == 2
        two = condition_episode(e, "2-shot")
        assert two.shots == 4 and two.meta["condition"] == "2-shot"


def test_matching_mi_demos_are_same_diff_pairs(vlicl):
    for e in folder_episodes(f"vlicl:{vlicl}/matching_mi", shots=2):
        assert [d.answer for d in e.demos] == ["yes", "no", "yes", "no"]
        assert all(len(d.images) == 2 for d in e.demos)


def test_demos_are_seeded_per_query(vlicl):
    spec = f"vlicl:{vlicl}/clevr"
    a, b = folder_episodes(spec, 3, seed=1), folder_episodes(spec, 3, seed=1)
    assert [[d.answer for d in e.demos] for e in a] == [[d.answer for d in e.demos] for e in b]
    first = folder_episodes(spec, 3, n=2, seed=1)  # the first queries' demos do not depend on n
    assert [[d.answer for d in e.demos] for e in first] == [[d.answer for d in e.demos] for e in a[:2]]
    other = folder_episodes(spec, 3, seed=2)
    assert [[d.answer for d in e.demos] for e in other] != [[d.answer for d in e.demos] for e in a]


def test_instructions_are_vliclss_own(vlicl):
    assert folder_episodes(f"vlicl:{vlicl}/clevr", 1, n=1)[0].instruction == ""
    assert folder_episodes(f"vlicl:{vlicl}/clevr", 1, n=1, instruction="concise")[0].instruction == \
        "Find objects of the given type, induce what operation to use and calculate the result."
    detailed = folder_episodes(f"vlicl:{vlicl}/matching_mi", 1, n=1, instruction="detailed")[0].instruction
    assert detailed == VLICL_INSTRUCTIONS["matching_mi"][1] and detailed.endswith('Answer with "yes" or "no".')
    assert folder_episodes(f"vlicl:{vlicl}/clevr", 1, n=1, instruction="Count.")[0].instruction == "Count."


def test_single_turn_style_is_vlicls_layout(vlicl):
    """VL-ICL writes the instruction, every demo as '{image}{question}\\nAnswer: {answer}\\n' and the query as
    '{image}{question}\\nAnswer:' in one user turn."""
    loaded = tiny_loaded("llava")
    ep = query_episodes(f"vlicl:{vlicl}/clevr", 2, 1, instruction="concise", style="single")[0]
    text = render(ep, loaded.adapter).text
    d0, d1 = ep.demos
    expected = (f"USER: {ep.instruction}\n<image>\n{d0.question}\nAnswer: {d0.answer}\n<image>\n{d1.question}\n"
                f"Answer: {d1.answer}\n<image>\n{ep.query.question}\nAnswer: ASSISTANT:")
    assert text == expected


def test_retrieval_uses_the_whole_support_set(vlicl):
    spec = f"vlicl:{vlicl}/clevr"
    support = _json(vlicl, "clevr", "support.json")
    eps = retrieval_episodes(spec, 2, 4)
    for e in eps:
        q = image_feature(e.query.images)
        feats = np.stack([image_feature([Image.open(vlicl / s["image"][0]).convert("RGB")]) for s in support])
        best = np.argsort(-(feats @ q), kind="stable")[:2][::-1]
        assert [d.answer for d in e.demos] == [str(support[i]["answer"]) for i in best]
        assert e.condition == "retrieved-2-shot"
    with pytest.raises(FolderError, match="retrieval does not apply"):
        retrieval_episodes(f"vlicl:{vlicl}/open_mi", 2, 4)


def test_truemicl_folder(tmp_path):
    root = truemicl_fixture(tmp_path)
    eps = folder_episodes(f"truemicl:{root}/operator_induction", 3)
    queries = _json(root, "operator_induction", "query.json")
    assert [e.query.answer for e in eps] == [q["answer"] for q in queries] and all(e.shots == 3 for e in eps)
    assert load_folder(root, "operator_induction", 3)[0].query.question == queries[0]["question"]


@pytest.mark.parametrize("break_it, message", [
    (lambda t: (t / "support.json").unlink(), "support.json is missing"),
    (lambda t: (t / "query.json").write_text("[{"), "query.json: not valid JSON"),
    (lambda t: (t / "query.json").write_text('{"a": 1}'), "expected a non-empty JSON list"),
    (lambda t: (t / "query.json").write_text('[{"image": "imgs/0.png", "question": "q"}]'),
     r"query.json\[0\]: no field 'answer'"),
    (lambda t: (t / "query.json").write_text('[{"image": 3, "question": "q", "answer": "a"}]'),
     r"query.json\[0\]: field 'image' is a int"),
    (lambda t: (t / "imgs" / "0.png").unlink(), r"support.json\[0\]: image 'imgs/0.png' not found"),
])
def test_a_broken_folder_is_one_line_naming_file_and_field(tmp_path, break_it, message):
    root = truemicl_fixture(tmp_path)
    break_it(root / "operator_induction")
    with pytest.raises(FolderError, match=message) as e:
        folder_episodes(f"truemicl:{root}/operator_induction", 6, seed=0)
    assert "\n" not in str(e.value)


def test_task_names_are_checked(vlicl, tmp_path):
    check_task("clock_math")
    check_task(f"vlicl:{vlicl}/clevr")
    assert parse_task("clock_math") is None
    for bad, message in [("sudoku", "unknown task 'sudoku'"), (f"vlicl:{tmp_path}/nope", "no folder"),
                         (f"vlicl:{vlicl.parent}", "support.json is missing")]:
        with pytest.raises(ValueError, match=message):
            check_task(bad)
    (tmp_path / "mytask").mkdir()
    for f in ("support.json", "query.json"):
        (tmp_path / "mytask" / f).write_text("[]")
    with pytest.raises(FolderError, match="VL-ICL's image-to-text tasks are"):
        check_task(f"vlicl:{tmp_path}/mytask")
    with pytest.raises(FolderError, match="has 5 images; 6 shots need more"):
        folder_episodes(f"vlicl:{vlicl}/open_mi", 6)


def test_harness_on_folder_tasks_generates_and_scores_with_vlicl_rules(vlicl, tmp_path):
    from micl_probe.evaluation.metrics import correct

    loaded = tiny_loaded("qwen2_vl")
    tasks = [f"vlicl:{vlicl}/operator_induction", f"vlicl:{vlicl}/open_mi"]
    conditions = ["zero-shot", "1-shot", "no-image", "retrieved-1-shot"]
    config = RunConfig(n=3, batch_size=2, progress=False, max_new_tokens=4, style="single")
    records = run(loaded, tasks[:1], conditions, config, results=tmp_path / "r.jsonl")
    records += run(loaded, tasks[1:], conditions[:3], config, results=tmp_path / "r.jsonl")
    assert len(records) == 3 * 4 + 3 * 3
    for r in records:
        assert r["metric"] == "vlicl" and r["style"] == "single" and "visual_share" in r
        assert r["correct"] == correct("vlicl", r["prediction"], r["answer"], r["task"])
    shots = {(r["task"].rsplit("/", 1)[1], r["condition"]): r["shots"] for r in records}
    assert shots["open_mi", "1-shot"] == 2 and shots["operator_induction", "retrieved-1-shot"] == 1
    assert all(len(r["image_share"]) == r["shots"] + 1 for r in records if r["condition"] == "1-shot")
    # another metric is another result: nothing reused
    exact = run(loaded, tasks[:1], ["1-shot"], RunConfig(n=3, progress=False, metric="exact", max_new_tokens=4),
                results=tmp_path / "r.jsonl")
    assert {r["metric"] for r in exact} == {"exact"} and len(exact) == 3


def test_report_cli_on_a_folder_task_and_a_dotted_model_folder(vlicl, tmp_path):
    """A user's model folder (a dot in its name, its processor carrying a chat template) on a VL-ICL task, from the
    command line, in VL-ICL's single-turn layout."""
    from micl_probe.attn_report import main
    from micl_probe.testing import cached_tiny
    from micl_probe.testing.templates import with_template

    model, processor = cached_tiny("qwen2_vl")
    folder = tmp_path / "Qwen2.5-VL-tiny"
    model.save_pretrained(folder)
    with_template(processor, "qwen2-vl").save_pretrained(folder)
    out = tmp_path / "report"
    main(["--model", str(folder), "--tasks", f"vlicl:{vlicl}/clevr", "clock_math", "--conditions", "no-image",
          "1-shot", "--n", "3", "--max-new-tokens", "3", "--prompt-style", "single", "--instruction", "concise",
          "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert set(results["accuracy"][str(folder)]) == {"vlicl:clevr", "clock_math"}
    assert results["settings"]["metrics"] == {"vlicl:clevr": "vlicl", "clock_math": "teacher-forced"}
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["style"] for r in records} == {"single"} and {r["instruction"] for r in records} == {"concise"}
    assert "VL-ICL Bench's own rule" in (out / "report.md").read_text()
    assert (out / "fig_patch__Qwen2.5-VL-tiny.png").is_file() or any(out.glob("fig_patch_*Qwen2.5-VL-tiny.png"))
