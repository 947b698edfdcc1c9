"""The bad-input battery: user mistakes, each of which must end in one line that names the fix: no traceback, no
silent wrong answer, no error about another mistake. `tests/test_bad_inputs.py` runs each case as a test; run as a
script, it prints the tally:

    python bench/bad_inputs.py                # "N cases, N one-line errors, 0 tracebacks, 0 silently wrong"
    python bench/bad_inputs.py --json out.json --show

    outcome, said = check(CASES["run: n=0"], workdir, EXPECT["run: n=0"])   # ("one-line error", "ValueError: …")

A case is a function of a scratch folder that makes the mistake; the command-line cases call the entry points'
`main` in this process (what `python -m …` runs), so the battery takes seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

ONE_LINE, TRACEBACK, SILENT = "one-line error", "traceback", "silently wrong"
USER_ERRORS = (ValueError, TypeError, OSError)  # what a user's mistake raises (UsageError is a ValueError)


@cache
def organism():
    from micl_probe.core import load

    return load("organism:true-micl")


def _episode(shots: int = 2):
    from micl_probe.tasks import sample_episodes

    return sample_episodes("clock_math", shots, 1)[0]


def _query(**kw):
    from micl_probe.core import Query

    return Query(**({"images": [Image.new("RGB", (8, 8))], "question": "What?", "answer": "x"} | kw))


def _artifacts(where: Path) -> dict:
    """A DARA, MTV means and a head mask saved for the organism under `where`."""
    from micl_probe.interventions import DARA, TaskVector

    loaded = organism()
    a, m = loaded.adapter, loaded.model
    DARA.for_model(loaded, n_images=3).save(where / "dara", task="clock_math", shots=2)
    TaskVector(torch.zeros(a.n_layers(m), a.n_heads(m), a.head_dim(m)), "mtv").save(where / "means")
    TaskVector(torch.ones(a.n_layers(m), a.n_heads(m), dtype=torch.bool), "mtv_mask").save(where / "heads")
    return {"dara": where / "dara", "means": where / "means", "heads": where / "heads"}


def _spans(**kw):
    from micl_probe.core import TokenLayout

    args = {"input_ids": torch.arange(10), "spans": {"query.image": [(1, 5)], "query.question": [(5, 9)]}} | kw
    return TokenLayout.from_spans(**args)


def _padded_batch():
    from micl_probe.core import PreparedBatch, TokenLayout

    ids = torch.arange(20).reshape(2, 10)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 7:] = 0  # right padding
    layouts = [TokenLayout.from_spans(ids[b], {"query.image": [(1, 5)], "query.question": [(5, 7)]})
               for b in range(2)]
    return PreparedBatch.of({"input_ids": ids, "attention_mask": mask}, layouts)


def _file(where: Path) -> Path:
    (where / "f").write_text("")
    return where / "f"


def _report(*argv):
    from micl_probe.attn_report import main

    main(["--model", "organism:true-micl", "--tasks", "clock_math", "--n", "1", *map(str, argv)])


def _load_records(where):
    from micl_probe.evaluation import load_records

    load_records(where / "empty")


def _cli(module: str, *argv):
    """`python -m <module> argv` in this process: its `main`."""
    import importlib

    importlib.import_module(module).main(list(map(str, argv)))


def _train(*argv):
    _cli("micl_probe.train", *argv)


def _dara_on_other(where):
    from micl_probe.core import load
    from micl_probe.interventions import DARA

    paths = _artifacts(where)
    DARA.load(paths["dara"], load("organism:text-shortcut"))


def _report_into_other_settings(where):
    from micl_probe.evaluation.store import write_manifest

    (where / "rep").mkdir()
    write_manifest(where / "rep", {"settings": {"seed": 5}})
    _report("--out", where / "rep")


def _locked(where):
    from micl_probe.evaluation import RunConfig, run
    from micl_probe.evaluation.store import writing

    with writing(where / "r.jsonl"):
        run(organism(), ["clock_math"], ["zero-shot"], RunConfig(n=1, progress=False), results=where / "r.jsonl")


def _nan_factors_file(where):
    from safetensors.torch import save_file

    from micl_probe.interventions import DARA

    paths = _artifacts(where)
    save_file({"log_alpha": torch.full((1, 4, 3), math.nan)}, str(where / "dara.safetensors"))
    DARA.load(paths["dara"])


def _api(name: str) -> Callable:
    """Look up a public name late, so that building CASES imports nothing heavy."""
    def get(*a, **kw):
        import micl_probe

        obj = micl_probe
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj(*a, **kw)
    return get


CASES: dict[str, Callable[[Path], object]] = {
    # the harness
    "run: n=0": lambda w: _api("RunConfig")(n=0),
    "run: batch_size=0": lambda w: _api("RunConfig")(batch_size=0),
    "run: seed=-1": lambda w: _api("RunConfig")(seed=-1),
    "run: no tasks": lambda w: _api("run")(organism(), [], ["zero-shot"], results=w / "r.jsonl"),
    "run: no conditions": lambda w: _api("run")(organism(), ["clock_math"], [], results=w / "r.jsonl"),
    "run: unknown task": lambda w: _api("run")(organism(), ["clock_mth"], ["zero-shot"]),
    "run: unknown condition": lambda w: _api("run")(organism(), ["clock_math"], ["four-shot"]),
    "run: condition names a missing intervention": lambda w: _api("run")(organism(), ["clock_math"],
                                                                          ["4-shot+dara"]),
    "run: a results file another run is writing": _locked,
    # interventions and artifacts
    "DARA: layers [-1]": lambda w: _api("DARA")(4, 3, layers=(-1,)),
    "DARA.for_model: layers [-1]": lambda w: _api("DARA.for_model")(organism(), 3, layers=[-1]),
    "DARA.for_model: layer past the decoder": lambda w: _api("DARA.for_model")(organism(), 3, layers=[99]),
    "DARA.set_alpha(nan)": lambda w: _api("DARA")(4, 3).set_alpha(math.nan),
    "DARA.set_alpha(inf)": lambda w: _api("DARA")(4, 3).set_alpha(math.inf),
    "alpha_sweep([nan])": lambda w: __import__("micl_probe.interventions", fromlist=["x"]).alpha_sweep(
        organism(), [math.nan]),
    "DARA.load: NaN factors in the file": _nan_factors_file,
    "DARA.load: made for another model": _dara_on_other,
    "DARA.load: a task vector's files": lambda w: _api("DARA.load")(_artifacts(w)["means"]),
    "DARA.load: no such file": lambda w: _api("DARA.load")(w / "nothing"),
    "TaskVector: NaN values": lambda w: _api("TaskVector")(torch.tensor([math.nan]), "task_vector"),
    "TaskVector: unknown kind": lambda w: _api("TaskVector")(torch.zeros(2), "steering"),
    "TaskVector.load: DARA files": lambda w: _api("TaskVector.load")(_artifacts(w)["dara"]),
    "TaskVector.load: head mask where means are expected": lambda w: _api("TaskVector.load")(
        _artifacts(w)["heads"], organism(), "mtv"),
    # episodes and prompts
    "Query: 0x0 image": lambda w: _query(images=[Image.new("RGB", (0, 0))]),
    "Query: channels-first array": lambda w: _query(images=[np.zeros((3, 16, 16), np.uint8)]),
    "Query: float array": lambda w: _query(images=[np.zeros((16, 16, 3), np.float32)]),
    "Query: an image path": lambda w: _query(images=["cat.png"]),
    "Query: empty gold answer": lambda w: _query(answer=""),
    "Query: empty question": lambda w: _query(question=" "),
    "prepare: a question holding the image placeholder": lambda w: organism().prepare(
        __import__("dataclasses").replace(_episode(), query=_query(question="What is <image>?"))),
    "prepare: a system message without a chat template": lambda w: organism().prepare(
        __import__("dataclasses").replace(_episode(), system="Be brief.")),
    "from_spans: [2, seq] input": lambda w: _spans(input_ids=torch.arange(20).reshape(2, 10)),
    "from_spans: a bare tuple": lambda w: _spans(spans={"query.image": (1, 5)}),
    "from_spans: float bounds": lambda w: _spans(spans={"query.image": [(1.0, 5.0)]}),
    "from_spans: answer_position past the prompt": lambda w: _spans(answer_position=10),
    "from_spans: unknown role": lambda w: _spans(spans={"query.picture": [(1, 5)]}),
    "PreparedBatch.of: right padding the layouts do not mark": lambda w: _padded_batch(),
    "capture_attention: a task name": lambda w: _api("capture_attention")(organism(), "clock_math"),
    "capture_attention: no episodes": lambda w: _api("capture_attention")(organism(), []),
    "capture_attention: unknown backend": lambda w: _api("capture_attention")(organism(), _episode(),
                                                                              backend="tl"),
    "explore: a list of episodes": lambda w: _api("explore")(organism(), [_episode()], show=False),
    "transformer_lens backend without a processor": lambda w: _api("capture_attention")(
        _api("Loaded")(organism().model, None, organism().adapter),
        organism().prepare_batch([_episode()]), backend="transformer_lens"),
    "mtv.locate on a custom batch": lambda w: __import__("micl_probe.interventions.mtv", fromlist=["x"]).answer_ce(
        organism(), organism().prepare_batch([_episode()]), torch.zeros(4, 4, 8), torch.ones(1, 4, 4).bool()),
    # tasks and metrics
    "metric: matching_mi gold that is not yes/no": lambda w: __import__(
        "micl_probe.evaluation.metrics", fromlist=["x"]).correct("vlicl", "yes", "maybe", "vlicl:matching_mi"),
    "metric: unknown": lambda w: __import__("micl_probe.evaluation.metrics", fromlist=["x"]).correct(
        "bleu", "a", "a"),
    "load: unknown organism": lambda w: _api("load")("organism:nothing"),
    "load: a folder without config.json": lambda w: _api("load")(str(w)),
    # the command lines
    "attn_report --system on a model without a chat template": lambda w: _report("--system", "Be brief.", "--out",
                                                                                 w / "rep"),
    "attn_report --dtype x": lambda w: _report("--dtype", "x", "--out", w / "rep"),
    "attn_report --prompt-style x": lambda w: _report("--prompt-style", "x", "--out", w / "rep"),
    "attn_report --device gpu": lambda w: _report("--device", "gpu", "--out", w / "rep"),
    "attn_report --device mps": lambda w: _report("--device", "mps", "--out", w / "rep"),
    "attn_report --seed -1": lambda w: _report("--seed", "-1", "--out", w / "rep"),
    "attn_report --n 0": lambda w: _report("--n", "0", "--out", w / "rep"),
    "attn_report --batch-size 0": lambda w: _report("--batch-size", "0", "--out", w / "rep"),
    "attn_report --tasks nothing": lambda w: _report("--tasks", "nothing", "--out", w / "rep"),
    "attn_report --conditions 4-shot+foo": lambda w: _report("--conditions", "4-shot+foo", "--out", w / "rep"),
    "attn_report --conditions 4-shot+dara without --dara": lambda w: _report("--conditions", "4-shot+dara",
                                                                              "--out", w / "rep"),
    "attn_report --alphas nan": lambda w: _report("--conditions", "4-shot+alpha=nan", "--alphas", "nan",
                                                  "--out", w / "rep"),
    "attn_report --mtv swapped": lambda w: _report("--conditions", "zero-shot+mtv", "--mtv", _artifacts(w)["heads"],
                                                   _artifacts(w)["means"], "--out", w / "rep"),
    "attn_report --mtv given DARA files": lambda w: _report("--conditions", "zero-shot+mtv", "--mtv",
                                                            _artifacts(w)["dara"], _artifacts(w)["heads"],
                                                            "--out", w / "rep"),
    "attn_report --dara given MTV files": lambda w: _report("--conditions", "2-shot+dara", "--dara",
                                                            _artifacts(w)["means"], "--out", w / "rep"),
    "attn_report --out is a file": lambda w: _report("--out", _file(w)),
    "attn_report --out of a run with other settings": _report_into_other_settings,
    "attn_report --shard 2/2": lambda w: _report("--shard", "2/2", "--out", w / "rep"),
    "attn_report --model organism:novel-binding": lambda w: _report("--model", "organism:novel-binding",
                                                                    "--out", w / "rep"),
    "train --lr inf": lambda w: _train("dara", "--model", "organism:true-micl", "--task", "clock_math", "--out",
                                       w / "d", "--lr", "inf"),
    "train --out under a file": lambda w: _train("dara", "--model", "organism:true-micl", "--task", "clock_math",
                                                 "--out", _file(w) / "d"),
    "train: unknown command": lambda w: _train("steer", "--model", "organism:true-micl", "--task", "clock_math",
                                               "--out", w / "d"),
    "train --shots 0": lambda w: _train("dara", "--model", "organism:true-micl", "--task", "clock_math", "--out",
                                        w / "d", "--shots", "0"),
    "attn_report --dara without a +dara condition": lambda w: _report("--dara", _artifacts(w)["dara"],
                                                                       "--out", w / "rep"),
    "attn_report --alphas no condition runs": lambda w: _report("--alphas", "2", "--out", w / "rep"),
    "attn_report --conditions 4-shot+mmict without --mmict": lambda w: _report("--conditions", "4-shot+mmict",
                                                                                "--out", w / "rep"),
    "attn_report --mmict given DARA files": lambda w: _report("--conditions", "2-shot+mmict", "--mmict",
                                                              _artifacts(w)["dara"], "--out", w / "rep"),
    "attn_report --mmict of no file": lambda w: _report("--conditions", "2-shot+mmict", "--mmict", w / "hub",
                                                        "--out", w / "rep"),
    "train mmict --hub-width 18": lambda w: _train("mmict", "--model", "organism:true-micl", "--task", "clock_math",
                                                   "--out", w / "hub", "--hub-width", "18"),
    "MHub: placement 'middle'": lambda w: _api("interventions.MHub")(128, placement="middle"),
    "attn_report --tasks clock_math@green": lambda w: _report("--tasks", "clock_math@green", "--out", w / "rep"),
    "train --task novel_binding@bound": lambda w: _train("mtv", "--model", "organism:true-micl", "--task",
                                                         "novel_binding@bound", "--out", w / "m"),
    "compare: a folder without results": lambda w: _cli("micl_probe.compare", w, w / "nowhere"),
    "attn_report --fixed-demos with retrieved-4-shot": lambda w: _report(
        "--fixed-demos", "--conditions", "retrieved-4-shot", "--out", w / "rep"),
    "run: fixed_demos='yes'": lambda w: _api("RunConfig")(fixed_demos="yes"),
    "organisms.card: a folder without an organism": lambda w: _cli("micl_probe.organisms.card", w / "nowhere"),
    "load_records: a folder without results": lambda w: _load_records(w),
    "attn_report --conditions 4-shot+knockout=top-3:attention": lambda w: _report(
        "--conditions", "4-shot+knockout=top-3:attention", "--out", w / "rep"),
    "attn_report --conditions 4-shot+mgi=1.5": lambda w: _report("--conditions", "4-shot+mgi=1.5", "--out", w / "rep"),
    "attn_report --conditions 4-shot+knockout=L99H0": lambda w: _report("--conditions", "4-shot+knockout=L99H0",
                                                                        "--out", w / "rep"),
    "attn_report --knockout-at all without a knockout": lambda w: _report("--knockout-at", "all", "--out", w / "rep"),
    "capture_attention: sinks=0": lambda w: _api("capture_attention")(
        organism(), _api("sample_episodes")("clock_math", 2, 1), sinks=0),
    "knockout: head past the model": lambda w: _api("interventions.knockout")(organism(), [(0, 99)]),
    "mgi: lambda 0": lambda w: _api("interventions.mgi")(organism(), 1.5, 0),
}


# what each case's one line must say (the mistake it names): any other error is the wrong answer
EXPECT = {
    "run: n=0": "RunConfig(n=0)", "run: batch_size=0": "RunConfig(batch_size=0)", "run: seed=-1": "RunConfig(seed=-1)",
    "run: no tasks": "no tasks", "run: no conditions": "no conditions", "run: unknown task": "unknown task",
    "run: unknown condition": "unknown condition", "run: condition names a missing intervention": "names intervention",
    "run: a results file another run is writing": "is being written by",
    "DARA: layers [-1]": "not counted from the end", "DARA.for_model: layers [-1]": "not counted from the end",
    "DARA.for_model: layer past the decoder": "outside the decoder", "DARA.set_alpha(nan)": "finite",
    "DARA.set_alpha(inf)": "finite", "alpha_sweep([nan])": "finite", "DARA.load: NaN factors in the file": "NaN",
    "DARA.load: made for another model": "was made for", "DARA.load: a task vector's files": "pass it to --mtv",
    "DARA.load: no such file": "give the path DARA.save", "TaskVector: NaN values": "NaN",
    "TaskVector: unknown kind": "unknown TaskVector kind", "TaskVector.load: DARA files": "pass it to --dara",
    "TaskVector.load: head mask where means are expected": "swap the two paths", "Query: 0x0 image": "0x0",
    "Query: channels-first array": "channels first", "Query: float array": "float32",
    "Query: an image path": "open it first", "Query: empty gold answer": "gold answer is empty",
    "Query: empty question": "non-empty question",
    "prepare: a question holding the image placeholder": "image placeholder",
    "prepare: a system message without a chat template": "system message needs",
    "attn_report --system on a model without a chat template": "system message needs",
    "from_spans: [2, seq] input": "one layout per row", "from_spans: a bare tuple": "(start, end) pairs",
    "from_spans: float bounds": "(start, end) pairs", "from_spans: answer_position past the prompt": "answer_position",
    "from_spans: unknown role": "role 'picture'",
    "PreparedBatch.of: right padding the layouts do not mark": "attention_mask=",
    "capture_attention: a task name": "sample_episodes('clock_math'", "capture_attention: no episodes": "no episodes",
    "capture_attention: unknown backend": "unknown backend", "explore: a list of episodes": "episodes[0]",
    "transformer_lens backend without a processor": "needs the model's processor",
    "mtv.locate on a custom batch": "takes Episodes",
    "metric: matching_mi gold that is not yes/no": "yes or no", "metric: unknown": "unknown metric",
    "load: unknown organism": "no shipped organism", "load: a folder without config.json": "without config.json",
    "attn_report --dtype x": "--dtype", "attn_report --prompt-style x": "--prompt-style",
    "attn_report --device gpu": "--device gpu", "attn_report --device mps": "--device mps",
    "attn_report --seed -1": "--seed -1", "attn_report --n 0": "--n 0", "attn_report --batch-size 0": "--batch-size 0",
    "attn_report --tasks nothing": "--tasks", "attn_report --conditions 4-shot+foo": "unknown intervention",
    "attn_report --conditions 4-shot+dara without --dara": "needs --dara",
    "attn_report --alphas nan": "--alphas nan", "attn_report --mtv swapped": "swap the two paths",
    "attn_report --mtv given DARA files": "pass it to --dara", "attn_report --dara given MTV files": "pass it to --mtv",
    "attn_report --out is a file": "is a file", "attn_report --out of a run with other settings": "other settings",
    "attn_report --shard 2/2": "--shard 2/2", "attn_report --model organism:novel-binding": "retired",
    "train --lr inf": "--lr inf", "train --out under a file": "is a file", "train: unknown command": "'steer'",
    "train --shots 0": "--shots 0",
    "attn_report --conditions 4-shot+mmict without --mmict": "needs --mmict",
    "attn_report --mmict given DARA files": "is not an MMICT hub", "attn_report --mmict of no file": "--mmict",
    "train mmict --hub-width 18": "multiple of 4", "MHub: placement 'middle'": "use one of tokens, residual",
    "attn_report --dara without a +dara condition": "no condition runs it",
    "attn_report --alphas no condition runs": "no condition runs it", "attn_report --tasks clock_math@green":
    "its rules: red, blue", "train --task novel_binding@bound": "bound anew",
    "organisms.card: a folder without an organism": "no organism here",
    "attn_report --fixed-demos with retrieved-4-shot": "fixed demos rule out",
    "run: fixed_demos='yes'": "give True or False", "compare: a folder without results":
    "no results.jsonl there", "load_records: a folder without results": "no results file there",
    "attn_report --conditions 4-shot+knockout=top-3:attention": "rank heads by",
    "attn_report --conditions 4-shot+mgi=1.5": "mgi=<k>,<λ>", "attn_report --conditions 4-shot+knockout=L99H0":
    "head L99H0", "attn_report --knockout-at all without a knockout": "no condition knocks heads out",
    "capture_attention: sinks=0": "sinks=0", "knockout: head past the model": "head L0H99", "mgi: lambda 0": "λ",
}


def check(case: Callable[[Path], object], workdir: Path, expect: str | None = None) -> tuple[str, str]:
    """(outcome, what was said): ONE_LINE when the case raised a user error (or a command line exited 2) with one
    line of message (that says `expect`, when given); TRACEBACK for any other exception; SILENT when it ran, or
    when its one line names another mistake than the one made."""
    outcome, said = _outcome(case, workdir)
    if outcome == ONE_LINE and expect is not None and expect not in said:
        return SILENT, f"another error than the mistake made ({expect!r} expected): {said}"
    return outcome, said


def _outcome(case: Callable[[Path], object], workdir: Path) -> tuple[str, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            case(workdir)
    except SystemExit as e:
        lines = [line for line in err.getvalue().splitlines() if line.startswith("error:")]
        if e.code == 2 and len(lines) == 1 and "Traceback" not in err.getvalue():
            return ONE_LINE, lines[0]
        return TRACEBACK, err.getvalue()[-300:]
    except USER_ERRORS as e:
        text = str(e)
        return (ONE_LINE if text and "\n" not in text.strip() else TRACEBACK), f"{type(e).__name__}: {text}"
    except Exception as e:  # noqa: BLE001 - anything else is a traceback the user would see
        return TRACEBACK, f"{type(e).__name__}: {e}"
    return SILENT, "no error"


def tally(outcomes: dict[str, tuple[str, str]]) -> str:
    n = len(outcomes)
    count = {kind: sum(o == kind for o, _ in outcomes.values()) for kind in (ONE_LINE, TRACEBACK, SILENT)}
    return (f"{n} cases, {count[ONE_LINE]} one-line errors, {count[TRACEBACK]} tracebacks, "
            f"{count[SILENT]} silently wrong")


def as_json(outcomes: dict[str, tuple[str, str]]) -> str:
    return json.dumps({name: {"outcome": o, "said": s} for name, (o, s) in outcomes.items()}, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write every case's outcome and message here")
    ap.add_argument("--show", action="store_true", help="print every case's outcome and message")
    args = ap.parse_args()
    outcomes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, case) in enumerate(CASES.items()):
            outcomes[name] = check(case, Path(tmp) / f"case{i}", EXPECT[name])
            if args.show or outcomes[name][0] != "one-line error":
                print(f"{outcomes[name][0]:>16}  {name}: {outcomes[name][1]}")
    if args.json:
        Path(args.json).write_text(as_json(outcomes))
    print(tally(outcomes))


if __name__ == "__main__":
    main()
