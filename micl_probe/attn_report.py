"""python -m micl_probe.attn_report: does the model look at its demonstration images?

With no arguments: every shipped organism, a default task set, conditions zero-shot / no-image / 4-shot,
40 queries each, on the CPU. Writes a self-contained report folder:

    reports/attn_report/
      report.html      figures inline, tables (open in a browser)
      report.md        the same in Markdown, figures linked
      results.json     accuracy table + settings
      results.jsonl    one record per episode (append-only: a rerun resumes where it stopped)
      fig_*.png/.pdf   every figure

Examples:
    python -m micl_probe.attn_report --model organism:partial --tasks novel_binding palindrome --n 100
    python -m micl_probe.attn_report --model Qwen/Qwen2.5-VL-7B-Instruct --device cuda --dtype bfloat16 \\
        --tasks vlicl:/data/VL-ICL/operator_induction truemicl:/data/truemicl/clock --conditions zero-shot 4-shot
    python -m micl_probe.attn_report --model /models/qwen2-vl-2b --device cuda --conditions zero-shot 4-shot 8-shot
    python -m micl_probe.attn_report --model organism:true-micl --tasks outlier --conditions 4-shot retrieved-4-shot \\
        4-shot+dara 4-shot+alpha=2 zero-shot+mtv --dara runs/dara_outlier --mtv runs/mtv runs/mtv_heads --alphas 2

Tasks: procedural names (micl_probe.tasks) or benchmark folders, truemicl:PATH/TASK and vlicl:PATH/TASK (a task
folder holding support.json and query.json; see micl_probe.tasks.folders for each format). Each task is scored by a
metric (--metric; default: teacher-forced for procedural tasks, VL-ICL's own rules for vlicl:, normalised exact
match for truemicl:); every metric but teacher-forced scores a greedy generation of --max-new-tokens tokens.
Prompts are written by the model's own chat template when its processor has one (--no-template: the adapter's
declared format), one chat turn per demo or, with --prompt-style single, VL-ICL's one user turn.

Interventions: a condition "<condition>+<name>" runs under the named intervention: "dara" (factors saved by
`DARA.save`, --dara), "mtv" (MTV means and head mask saved by `TaskVector.save`, --mtv), "lora" (a peft adapter
folder, --lora: active only in +lora conditions), "mmict" (an MMICT hub, --mmict: its tokens join the prompt as the
role "hub"), "alpha=<a>" (fixed factor a on every demo image in the first decoder layer, --alphas). Train any of them
on your model with python -m micl_probe.train. Artifacts are checked against the model they are used with.
Training-free, chosen per task on calibration episodes of its support split (--calibration, never the scored
queries): "knockout=top-<k>:<score>" (the k heads of highest induction,
previous_token or demo_image score knocked out; --knockout-ablation zero|mean, --knockout-at answer|all),
"knockout=random-<k>:<seed>", "knockout=L3H2,L5H0", "uniform=<layers>|all" (the answer row's attention uniform),
"mgi=<k>,<λ>[,<layer>]" (Mapping-Guided Inference), e.g.

    python -m micl_probe.attn_report --model organism:true-micl --conditions 4-shot no-image 4-shot+mgi=1.5,2 \
        4-shot+knockout=top-3:induction 4-shot+knockout=random-3:0

Many processes (one model copy each): launch the same command under torchrun or accelerate,

    torchrun --nproc-per-node 4 -m micl_probe.attn_report --model Qwen/Qwen2-VL-7B-Instruct --device cuda …
    accelerate launch --num_processes 4 -m micl_probe.attn_report …

and the batch jobs are split by rank (each process on cuda:LOCAL_RANK with --device cuda), each writing its own shard
beside results.jsonl; rank 0 waits for the others, merges the shards and writes the report; a rerun resumes each
shard. Without a launcher (a Slurm array, separate machines sharing a folder), give each process --shard I/N, then run
the same command without --shard: it merges the shards and writes the report.

A mistake in the flags ends in one line naming the flag and its fix (exit code 2, no traceback; --debug shows it),
before anything is written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import torch

from .core import load, placement
from .core.episode import STYLES
from .core.errors import Parser, UsageError, device_problem, one_line_errors
from .core.loading import organism_problem
from .core.provenance import (
    artifact_paths,
    digest,
    file_digest,
    folder_digest,
    setting_mismatches,
    versions,
    weights_fingerprint,
)
from .evaluation import RunConfig, run, summarise
from .evaluation.conditions import condition_episode, parse_condition, pool_size
from .evaluation.metrics import METRICS
from .evaluation.store import check_manifest, write_manifest
from .interventions import named
from .interventions.knockout import AT
from .interventions.named import ABLATIONS
from .organisms import shipped
from .tasks import check_task, evidence_boxes, parse_task, query_episodes, task_labels, task_names, task_stream

DEFAULT_TASKS = ["novel_binding", "clock_math", "palindrome", "outlier"]  # true-micl reads the first three
DEFAULT_CONDITIONS = ["zero-shot", "no-image", "4-shot"]


def parse(argv=None):
    ap = Parser(prog="python -m micl_probe.attn_report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", help="hub ids, local folders or organism:NAME "
                    "(default: every shipped organism)")
    ap.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS, metavar="TASK",
                    help=f"tasks (default: {' '.join(DEFAULT_TASKS)}): {', '.join(task_names())} (each also "
                         "<task>_shortcut), or a benchmark folder truemicl:PATH/TASK or vlicl:PATH/TASK")
    ap.add_argument("--conditions", nargs="+", default=DEFAULT_CONDITIONS,
                    help="zero-shot, no-image, shuffled-answers, <k>-shot, retrieved-<k>-shot, each optionally "
                         "+dara / +mtv / +lora / +mmict / +alpha=<a> / +knockout=… / +uniform=… / +mgi=… (default: "
                         "%(default)s)")
    ap.add_argument("--n", "--queries", dest="n", type=int, default=40, help="query episodes per task and condition "
                    "(default: %(default)s; under torchrun write --queries: its own parser takes --n for its --nnodes)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the query episodes (default: %(default)s)")
    ap.add_argument("--out", default="reports/attn_report", help="output folder (default: %(default)s)")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 …, or auto: the model spread over every GPU "
                    "(and the CPU) by accelerate's device_map='auto' (default: cpu)")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="model dtype")
    ap.add_argument("--batch-size", type=int, default=20, help="episodes per forward pass (default: %(default)s)")
    ap.add_argument("--no-attention", action="store_true", help="accuracy only")
    ap.add_argument("--metric", choices=METRICS, help="answer metric for every task (default: per task, see above)")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="generation length (default: %(default)s)")
    ap.add_argument("--prompt-style", choices=STYLES, default="turns",
                    help="turns: a chat turn per demo; single: every demo in one user turn, as VL-ICL Bench "
                         "(default: %(default)s)")
    ap.add_argument("--instruction", default="nothing", help="task instruction: nothing, concise or detailed "
                    "(VL-ICL's own, for vlicl: tasks) or any text (default: %(default)s)")
    ap.add_argument("--system", default="", help="a system message, written by the chat template's system turn "
                    "(default: none; the declared formats of --no-template have no system turn)")
    ap.add_argument("--fixed-demos", action="store_true", help="one demo set per task and seed, shared by every "
                    "query (as a fixed k-shot support set); each batch's shared prefix then runs once into a cache "
                    "(default: each query draws its own demos)")
    ap.add_argument("--no-template", action="store_true", help="write prompts in the adapter's declared chat "
                    "format even where the processor carries a chat template")
    ap.add_argument("--dara", metavar="PATH", help="DARA factors (DARA.save) for +dara conditions")
    ap.add_argument("--mmict", metavar="PATH", help="an MMICT hub (python -m micl_probe.train mmict) for +mmict "
                    "conditions: the prompt gains the hub's tokens")
    ap.add_argument("--mtv", nargs=2, metavar=("MEANS", "HEADS"), help="MTV means and head mask (TaskVector.save) "
                    "for +mtv conditions")
    ap.add_argument("--lora", metavar="FOLDER", help="a LoRA adapter folder (peft; python -m micl_probe.train lora, "
                    "icl-tune or finetune) for +lora conditions")
    ap.add_argument("--alphas", nargs="+", type=float, default=[], help="factors for +alpha=<a> conditions")
    ap.add_argument("--knockout-ablation", choices=ABLATIONS, default="zero", help="what a +knockout=… head is "
                    "replaced by: zero, or its mean output on the calibration episodes (default: %(default)s)")
    ap.add_argument("--knockout-at", choices=AT, default="answer", help="where: the answer row (and each generated "
                    "token), or every position (default: %(default)s)")
    ap.add_argument("--calibration", type=int, default=16, help="support episodes per task that +knockout=top-… "
                    "heads, +mgi's layer and mean ablations are chosen on (default: %(default)s)")
    ap.add_argument("--shard", metavar="I/N", help="run only shard I of N of the batch jobs and write them beside "
                    "results.jsonl, no report (then run without --shard to merge and report); under torchrun or "
                    "accelerate launch the shards are set from the ranks")
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return ap.parse_args(argv)


def check(args) -> None:
    """Every flag mistake found before anything is loaded or written (raises UsageError)."""
    if args.n < 1:
        raise UsageError(f"--n {args.n}: give at least 1 query episode per task and condition")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: give at least 1 episode per forward pass")
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens}: generate at least 1 token")
    for task in args.tasks:
        try:
            check_task(task)
        except ValueError as e:
            raise UsageError(f"--tasks: {e}") from None
    if args.seed < 0:
        raise UsageError(f"--seed {args.seed}: give a whole number >= 0")
    problem = device_problem(args.device)
    if problem:
        raise UsageError(f"--device {args.device}: {problem}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a file: name a folder (it is created if missing)")
    if args.shard is not None:
        i, n = _shard(args.shard)
        if not 0 <= i < n:
            raise UsageError(f"--shard {args.shard}: give I/N with 0 <= I < N, e.g. --shard 0/4")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UsageError("--shard and a launcher (torchrun, accelerate launch) both split the work: use one")
    bad = [a for a in args.alphas if not (math.isfinite(a) and a > 0)]
    if bad:
        raise UsageError(f"--alphas {' '.join(map(str, bad))}: factors must be finite numbers > 0")
    given = {"dara": "--dara PATH", "mtv": "--mtv MEANS HEADS", "lora": "--lora FOLDER", "mmict": "--mmict PATH"}
    for c in args.conditions:
        try:
            _, name = parse_condition(c)
        except ValueError as e:
            raise UsageError(f"--conditions: {e}") from None
        if name in given and not getattr(args, name):
            raise UsageError(f"--conditions {c} needs {given[name]} (the saved artifact to run it with)")
        try:
            training_free = named.parse(name)
        except ValueError as e:
            raise UsageError(f"--conditions {c}: {e}") from None
        if name.startswith("alpha="):
            if f"alpha={name[6:]}" not in {f"alpha={a:g}" for a in args.alphas}:
                raise UsageError(f"--conditions {c} needs --alphas {name[6:]}")
        elif name and name not in given and training_free is None:
            raise UsageError(f"--conditions {c}: unknown intervention {name!r}; use +dara, +mtv, +lora, +mmict, "
                             f"+alpha=<a> or {named.FORMS}")
    used = {parse_condition(c)[1] for c in args.conditions}
    for name, flag in (("dara", "--dara"), ("mtv", "--mtv"), ("lora", "--lora"), ("mmict", "--mmict")):
        if getattr(args, name) and name not in used:
            raise UsageError(f"{flag} is given but no condition runs it: add a condition such as 4-shot+{name} to "
                             "--conditions (or drop the flag)")
    unused = [a for a in args.alphas if f"alpha={a:g}" not in used]
    if unused:
        raise UsageError(f"--alphas {' '.join(f'{a:g}' for a in unused)}: no condition runs it; add e.g. "
                         f"4-shot+alpha={unused[0]:g} to --conditions (or drop it)")
    knockouts = [n for n in used if n.startswith("knockout=")]
    if not knockouts and (args.knockout_ablation, args.knockout_at) != ("zero", "answer"):
        raise UsageError("--knockout-ablation/--knockout-at are given but no condition knocks heads out: add e.g. "
                         "4-shot+knockout=top-3:induction to --conditions (or drop them)")
    if args.calibration < 1:
        raise UsageError(f"--calibration {args.calibration}: choose heads and layers on at least 1 episode")
    if args.lora and not (Path(args.lora) / "adapter_config.json").is_file():
        raise UsageError(f"--lora {args.lora}: no adapter_config.json there (the folder a peft adapter was saved to: "
                         "python -m micl_probe.train lora|icl-tune|finetune --out FOLDER)")
    for flag, paths in (("--dara", [args.dara]), ("--mtv", args.mtv or []), ("--mmict", [args.mmict])):
        for path in filter(None, paths):
            missing = [str(p) for p in artifact_paths(path) if not p.is_file()]
            if missing:
                raise UsageError(f"{flag} {path}: no {' or '.join(missing)} (the path given to DARA.save / "
                                 "TaskVector.save / python -m micl_probe.train mmict --out)")
    for m in args.model or []:
        problem = organism_problem(m.removeprefix("organism:")) if m.startswith("organism:") else None
        if problem:
            raise UsageError(f"--model {m}: {problem}")


MADE_FOR = ("model", "family", "task", "tasks", "shots", "style", "instruction", "rule",
            "n_prompts")  # shown in the report


def described(path: str, meta: dict, content: str) -> dict:
    """An artifact as the report's interventions table shows it: path, content digest, what it was made for (model,
    task, shots, prompt style …) and how it was trained (command, steps, learning rate, steps run)."""
    training = meta.get("training") or {}
    trained = ", ".join(f"{k} {training[k]}" for k in ("command", "steps", "lr", "batch", "seed") if k in training)
    if "steps_run" in meta:
        trained += f"{', ' if trained else ''}ran {meta['steps_run']} steps"
    return {"path": path, "digest": content,
            "made_for": {k: " ".join(map(str, meta[k])) if isinstance(meta[k], list) else meta[k] for k in MADE_FOR
                         if meta.get(k) not in (None, "") and not (k == "task" and meta.get("tasks"))},
            "trained": trained or "not recorded (made outside python -m micl_probe.train)"}


def interventions_for(loaded, args, artifacts: dict, calibration: Calibration | None = None) -> tuple[dict, dict]:
    """(the named interventions the flags ask for, checked against `loaded`; {name: `described` artifact}, with the
    content digests `run_settings` took of the files: `artifacts`); the training-free ones are chosen on
    `calibration` (made here when not given)."""
    from .interventions import DARA, MHub, TaskVector, alpha_sweep, injection, lora_intervention

    found = alpha_sweep(loaded, args.alphas) if args.alphas else {}
    info = {f"alpha={a:g}": {"path": "–", "digest": "–", "made_for": {"model": "any"},
                             "trained": f"none: a fixed factor {a:g} on every demo image in the first attention layer"}
            for a in args.alphas}
    made = []
    if args.dara:
        dara = DARA.load(args.dara, loaded)
        found["dara"] = dara.on(loaded.model, kernel="eager")
        made.append(("--dara", dara.meta))
        info["dara"] = described(args.dara, dara.meta, artifacts["dara"][0]["safetensors"])
    if args.mtv:
        means, heads = (TaskVector.load(p, loaded, kind) for p, kind in zip(args.mtv, ("mtv", "mtv_mask")))
        found["mtv"] = injection(loaded, means.mean, heads.values)
        made.append(("--mtv", means.meta))
        info["mtv"] = described(" + ".join(args.mtv), means.meta, digest(*(a["safetensors"] for a in artifacts["mtv"])))
    if args.mmict:
        hub = MHub.load(args.mmict, loaded)
        found["mmict"] = hub.on(loaded)
        made.append(("--mmict", hub.meta))
        info["mmict"] = described(args.mmict, hub.meta, artifacts["mmict"][0]["safetensors"])
    for flag, meta in made:  # another task, style or instruction is allowed: said in one line
        for task in args.tasks:
            trained_on = meta.get("tasks") or [meta.get("task")]  # a hub trained on several tasks
            said = setting_mismatches({**meta, "task": task if task in trained_on else " ".join(map(str, trained_on))},
                                      task=task, style=args.prompt_style, instruction=args.instruction)
            if said:
                print(f"warning: {flag} was made for {', '.join(said)}", file=sys.stderr)
    if args.lora:
        found["lora"] = lora_intervention(loaded, args.lora)
        training = Path(args.lora) / "micl_probe_training.json"
        meta = json.loads(training.read_text()) if training.is_file() else {}
        info["lora"] = described(args.lora, meta, artifacts["lora"][0]["content"])
    free = list(dict.fromkeys(n for n in (parse_condition(c)[1] for c in args.conditions) if named.parse(n)))
    k, _ = pool_size(args.conditions)
    calibration = calibration or Calibration(loaded, args)
    for name in free:
        found[name], chosen = {}, {}
        for task in args.tasks:
            mean = args.knockout_ablation == "mean" and name.startswith("knockout=")
            wants = named.needs_calibration(name) or mean
            found[name][task], chosen[task] = named.build(
                loaded, name, task, calibration.episodes(task) if wants else [], args.knockout_ablation,
                args.knockout_at, calibration.scores(task) if named.ranks_by_head_score(name) else None,
                calibration.means(task) if mean else None)
        said = next(iter(chosen.values())) if len(set(chosen.values())) == 1 else \
            "; ".join(f"{t}: {c}" for t, c in chosen.items())
        info[name] = {"path": "–", "digest": "–", "made_for": {"model": loaded.name, "shots": k},
                      "trained": f"none (training-free): {said}"}
    return found, info


class Calibration:
    """One model's calibration episodes per task at the run's k shots (the task's support split, never the scored
    queries) and their head scores, each computed once: what +knockout=top-… heads, +mgi's layer, mean ablations and
    the report's head scores are chosen or measured on (seeded: the same every run)."""

    def __init__(self, loaded, args):
        self.loaded, self.args = loaded, args
        self._episodes, self._scores, self._sinks, self._means = {}, {}, {}, {}

    def episodes(self, task: str) -> list:
        if task not in self._episodes:
            a = self.args
            stream = task_stream(task, pool_size(a.conditions)[0], "support", a.seed, a.instruction, a.prompt_style)
            self._episodes[task] = [replace(next(stream), system=a.system) for _ in range(a.calibration)]
        return self._episodes[task]

    def scores(self, task: str):
        """`measure.head_scores` on the task's calibration episodes (their sink tokens from the same passes)."""
        from .measure import head_scores
        from .measure.heads import TAU

        if task not in self._scores:
            self._scores[task], self._sinks[task] = head_scores(
                self.loaded, self.episodes(task), batch_size=self.args.batch_size, progress=False, sinks=TAU)
        return self._scores[task]

    def sinks(self, task: str):
        """`measure.find_sinks` (τ = 20) on the task's calibration episodes, found with their head scores."""
        self.scores(task)
        return self._sinks[task]

    def means(self, task: str):
        """Every head's mean output at the answer row on the task's calibration episodes (mean ablations)."""
        if task not in self._means:
            self._means[task] = named.mean_outputs(self.loaded, self.episodes(task))
        return self._means[task]


def head_summary(loaded, args, calibration: Calibration) -> dict:
    """{task: {"induction", "previous_token": [layer][head] means, "n", "shots", "sinks": Sinks.by_segment(), "tau",
    "max_ratio", "ratio_bound": sqrt(hidden size), the largest ratio a hidden state can have, "evidence":
    EvidenceAttention.as_dict() where the task's images carry evidence boxes}} on each task's calibration episodes
    (the head scores the knockout conditions chose on, not computed again): the report's heads-and-sinks and evidence
    sections."""
    from .measure import evidence_attention
    from .measure.heads import TAU

    out = {}
    for task in args.tasks:
        episodes = calibration.episodes(task)
        with_evidence = loaded.adapter.patch_layout != "none" and any(
            evidence_boxes(im) for e in episodes[:1] for im in e.images)
        scores = calibration.scores(task).as_dict()
        sinks = calibration.sinks(task)
        out[task] = {"induction": scores["induction"], "previous_token": scores["previous_token"],
                     "n": len(episodes), "shots": pool_size(args.conditions)[0], "sinks": sinks.by_segment(),
                     "tau": TAU, "max_ratio": float(sinks.ratio.nan_to_num(0).max()),
                     "ratio_bound": loaded.adapter.text_config(loaded.model).hidden_size ** 0.5}
        if with_evidence:
            ev = evidence_attention(loaded, episodes, progress=False, batch_size=args.batch_size).as_dict()
            out[task]["evidence"] = {**ev, "shots": out[task]["shots"]}
    return out


def main(argv=None):
    args = parse(argv)
    with one_line_errors(args.debug):
        check(args)
        report(args)


def example_patch_maps(loaded, args) -> tuple:
    """(maps, the three heads with most attention on the demo images, label): the answer row over the patches of
    the first task's query episode 0 at the run's k shots (the harness's record index 0)."""
    from .measure import patch_maps, top_heads

    k, k_max = pool_size(args.conditions)
    task = args.tasks[0]
    episode = query_episodes(task, k_max, 1, args.seed, args.instruction, args.prompt_style, args.system)[0]
    episode = condition_episode(episode, f"{k}-shot")
    maps = patch_maps(loaded, episode)
    return maps, top_heads(maps), f"{task}, {k}-shot, query episode 0"


def ranks(args) -> tuple[int, int, object]:
    """(rank, world, torch.distributed or None): from a launcher (torchrun / accelerate set WORLD_SIZE, RANK), from
    --shard, or (0, 1, None). Under a launcher a gloo process group serves the barriers (any device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=timedelta(days=7))  # ranks wait for the slowest shard
        return dist.get_rank(), world, dist
    if args.shard:
        return (*_shard(args.shard), None)
    return 0, 1, None


def _shard(text: str) -> tuple[int, int]:
    """--shard I/N as (I, N); (-1, 0) when it is not two whole numbers."""
    i, _, n = text.partition("/")
    return (int(i), int(n)) if i.isdigit() and n.isdigit() else (-1, 0)


def report(args) -> Path | None:
    """Run the harness on every model and write the report folder; returns the page's path (None in a process
    that only writes a shard)."""
    rank, world, dist = ranks(args)
    out = Path(args.out)
    fresh = not out.exists()
    try:
        return _report(args, rank, world, dist)
    except BaseException:
        if fresh and rank == 0 and out.is_dir() and not any(p.stat().st_size for p in out.glob("results*.jsonl")):
            shutil.rmtree(out, ignore_errors=True)  # a failed first run leaves no folder without results behind
        raise
    finally:
        if dist is not None:
            dist.destroy_process_group()


def run_settings(args) -> dict:
    """Everything in the flags that determines the report's numbers (what `manifest.json` records and a rerun into
    the same folder must match; --n may grow or shrink: the records of the common queries are the same)."""
    artifacts = {}
    for flag, paths in (("dara", [args.dara] if args.dara else []), ("mtv", args.mtv or []),
                        ("mmict", [args.mmict] if args.mmict else [])):
        artifacts[flag] = [{"path": p, **{s: file_digest(q) for s, q in zip(("json", "safetensors"),
                                                                              artifact_paths(p))}} for p in paths]
    if args.lora:
        artifacts["lora"] = [{"path": args.lora, "content": folder_digest(args.lora, full=(".json", ".safetensors",
                                                                                           ".bin"))}]
    return {"models": args.model or [f"organism:{name}" for name in shipped()], "tasks": args.tasks,
            "task_content": {t: folder_digest(parse_task(t).folder) for t in args.tasks if ":" in t},
            "conditions": args.conditions, "seed": args.seed, "dtype": args.dtype, "metric": args.metric or "per task",
            "max_new_tokens": args.max_new_tokens, "prompt_style": args.prompt_style, "instruction": args.instruction,
            "system": args.system, "chat_template": not args.no_template, "attention": not args.no_attention,
            "alphas": args.alphas, "artifacts": artifacts, "knockout": {"ablation": args.knockout_ablation,
                                                                         "at": args.knockout_at},
            "calibration": args.calibration, "fixed_demos": args.fixed_demos}


def _report(args, rank: int, world: int, dist) -> Path | None:
    fixed = run_settings(args)
    models = fixed["models"]
    if not models:
        raise UsageError("no shipped organism found; pass --model or train one with "
                         "python -m micl_probe.organisms.train --recipe true-micl")
    out = Path(args.out)
    check_manifest(out, fixed)  # a folder of another run: one line, before anything is loaded or written
    dtype = getattr(torch, args.dtype) if args.dtype else None
    settings = {**fixed, "n": args.n, "device": args.device or "cpu"}  # the page's: the run's, with what may vary
    config = RunConfig(n=args.n, seed=args.seed, batch_size=args.batch_size, attention=not args.no_attention,
                       metric=args.metric, max_new_tokens=args.max_new_tokens, style=args.prompt_style,
                       instruction=args.instruction, system=args.system, fixed_demos=args.fixed_demos)
    device = args.device
    if dist is not None and device == "cuda":  # one GPU a process
        device = f"cuda:{os.environ.get('LOCAL_RANK', rank)}"
    t0 = time.time()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest = {"settings": fixed, "n": args.n, "device": args.device or "cpu", "batch_size": args.batch_size,
                "versions": versions(), "started": started, "finished": None, "model_fingerprints": {}}
    records, patches, scores = [], {}, {}
    for name in models:
        loaded = load(name, **placement(device), dtype=dtype)
        loaded.use_template = not args.no_template
        # the artifacts are checked against the model before anything is written
        calibration = Calibration(loaded, args)
        interventions, settings["interventions"] = interventions_for(loaded, args, fixed["artifacts"], calibration)
        manifest["model_fingerprints"][name] = {"weights": weights_fingerprint(loaded.model),
                                                "prompt_format": loaded.prompt_format}
        check_manifest(out, {"model_fingerprints": manifest["model_fingerprints"]} | fixed)
        out.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            write_manifest(out, manifest)
        if world > 1:  # this process's shard; then rank 0 merges them (the others wait, so none is being written)
            run(loaded, args.tasks, args.conditions, replace(config, shard=(rank, world)),
                results=out / "results.jsonl", interventions=interventions)
            if dist is None:
                print(f"shard {rank}/{world} of {name}: written beside {out / 'results.jsonl'}; run the command "
                      "without --shard to merge the shards and write the report")
                continue
            dist.barrier()
        if rank == 0:  # unsharded, this merges the shard files and computes whatever is still missing
            records += run(loaded, args.tasks, args.conditions, config, results=out / "results.jsonl",
                           interventions=interventions)
            if not args.no_attention and loaded.adapter.patch_layout != "none":  # latents have no patch map
                patches[name] = example_patch_maps(loaded, args)
            if not args.no_attention:
                scores[name] = head_summary(loaded, args, calibration)
        if dist is not None:
            dist.barrier()
    if rank != 0 or (world > 1 and dist is None):
        return None
    label = task_labels(args.tasks)  # folder tasks by a short name in tables and figures (settings keep the paths)
    records = [{**r, "task": label.get(r["task"], r["task"])} for r in records]
    settings["metrics"] = {r["task"]: r.get("metric", "teacher-forced") for r in records}
    settings["provenance"] = {"versions": manifest["versions"], "models": manifest["model_fingerprints"]}
    from .viz import write_report  # matplotlib and seaborn only when a report is drawn

    scores = {name: {label.get(t, t): cell for t, cell in tasks.items()} for name, tasks in scores.items()}
    page = write_report(out, records, settings, time.time() - t0, summarise(records), patches, scores)
    write_manifest(out, manifest | {"finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    print(f"report: {page}")
    return page


if __name__ == "__main__":
    main()
