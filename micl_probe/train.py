"""python -m micl_probe.train {dara,lora,mtv,icl-tune}: train an intervention on any supported model, from the
command line, and write the artifact that attn_report runs it with.

    python -m micl_probe.train dara --model Qwen/Qwen2-VL-2B-Instruct --task vlicl:/data/VL-ICL/clevr \\
        --shots 4 --device cuda --dtype bfloat16 --out runs/dara_clevr
    python -m micl_probe.attn_report --model Qwen/Qwen2-VL-2B-Instruct --tasks vlicl:/data/VL-ICL/clevr \\
        --conditions no-image 4-shot 4-shot+dara --dara runs/dara_clevr --device cuda --dtype bfloat16

  dara      one attention factor per (layer, head, image), model frozen    -> PATH.json + PATH.safetensors
            attn_report --dara PATH
  lora      LoRA on q/k/v/o of --layers, on the query's answer (DARA's     -> PATH/ (a peft adapter folder)
            data and steps)                                                    attn_report --lora PATH
  mtv       MTV means from k-shot prompts + the heads REINFORCE selects   -> PATH_means.*, PATH_heads.*
                                                                               attn_report --mtv PATH_means PATH_heads
  icl-tune  any-shot ICL instruction tuning (Doveh et al.): LoRA on every -> PATH/ (a peft adapter folder)
            layer, every demo answer after the first is a target          attn_report --lora PATH

Tasks are procedural names or folder tasks (truemicl:PATH/TASK, vlicl:PATH/TASK); a folder task trains on its
support set only (a fifth of it held out to stop early), never on query.json, which stays for evaluation. The
artifacts record the model and task they were made for; attn_report checks them against the model it loads.
A mistake in the flags ends in one line naming the flag and its fix (exit code 2; --debug shows the traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
from pathlib import Path

import torch

from .core import load, placement
from .core.episode import STYLES
from .core.errors import Parser, UsageError, device_problem, one_line_errors
from .core.loading import organism_problem
from .core.provenance import artifact_paths, dumps, made_for, unwritable, write_atomic
from .interventions import FitConfig, extract, locate, train_dara, train_lora
from .tasks import check_task, task_stream

COMMANDS = ("dara", "lora", "mtv", "icl-tune")


def parse(argv=None):
    ap = Parser(prog="python -m micl_probe.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=COMMANDS, help="what to train")
    ap.add_argument("--model", required=True, help="hub id, local folder or organism:NAME")
    ap.add_argument("--task", nargs="+", required=True, help="task(s): procedural names (<task>@<rule> under one "
                    "fixed rule, e.g. clock_math@blue: what a task vector carries), or truemicl:PATH/TASK, "
                    "vlicl:PATH/TASK (several only for icl-tune)")
    ap.add_argument("--out", required=True, help="artifact path (see the table above)")
    ap.add_argument("--shots", type=int, default=4, help="demos a prompt (icl-tune: up to this many) (default: 4)")
    ap.add_argument("--layers", type=int, nargs="+", help="decoder layers (dara, lora; default: the first "
                    "with softmax attention; "
                    "icl-tune: all)")
    ap.add_argument("--mode", choices=["logit", "post"], default="logit", help="DARA mode (default: logit)")
    ap.add_argument("--rank", type=int, default=None, help="LoRA rank (default: lora 4, icl-tune 8)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: 200; mtv: 600 REINFORCE)")
    ap.add_argument("--lr", type=float, default=None, help="learning rate (default: dara 0.05, LoRA 1e-3)")
    ap.add_argument("--batch", type=int, default=16, help="episodes a step (default: %(default)s)")
    ap.add_argument("--n-prompts", type=int, default=100, help="mtv: k-shot prompts averaged (default: 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt-style", choices=STYLES, default="turns", help="prompt style (default: turns)")
    ap.add_argument("--instruction", default="nothing", help="nothing, concise, detailed (VL-ICL's) or any text")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 …, or auto: the model spread over every GPU "
                    "(and the CPU) by accelerate's device_map='auto' (default: cpu)")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="model dtype")
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return ap.parse_args(argv)


def check(args) -> None:
    """Every flag mistake found before anything is loaded or trained (raises UsageError)."""
    for task in args.task:
        try:
            check_task(task)
        except ValueError as e:
            raise UsageError(f"--task: {e}") from None
    if len(args.task) > 1 and args.command != "icl-tune":
        raise UsageError(f"--task: {args.command} trains on one task; icl-tune takes several")
    for flag, value, low in (("--shots", args.shots, 1 if args.command != "mtv" else 1), ("--batch", args.batch, 1),
                             ("--steps", args.steps, 1), ("--rank", args.rank, 1), ("--n-prompts", args.n_prompts, 1)):
        if value is not None and value < low:
            raise UsageError(f"{flag} {value}: give at least {low}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr {args.lr}: give a finite learning rate > 0")
    if args.seed < 0:
        raise UsageError(f"--seed {args.seed}: give a whole number >= 0")
    problem = device_problem(args.device)
    if problem:
        raise UsageError(f"--device {args.device}: {problem}")
    problem = organism_problem(args.model.removeprefix("organism:")) if args.model.startswith("organism:") else None
    if problem:
        raise UsageError(f"--model {args.model}: {problem}")
    out = Path(args.out)
    if args.command in ("lora", "icl-tune") and out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: a LoRA adapter is written to a folder")
    problem = unwritable(out if args.command in ("lora", "icl-tune") else out.parent)
    if problem:
        raise UsageError(f"--out {out}: {problem}; choose a folder you can write to")


def train(args) -> list[Path]:
    """Load the model, train, write the artifact(s); returns their paths."""
    loaded = load(args.model, **placement(args.device), dtype=getattr(torch, args.dtype) if args.dtype else None)
    cfg = FitConfig(steps=args.steps or 200, lr=args.lr, batch=args.batch, seed=args.seed, style=args.prompt_style,
                    instruction=args.instruction)
    out, task = Path(args.out), args.task[0]
    made = made_for(loaded, task=task, shots=args.shots, style=args.prompt_style, instruction=args.instruction,
                    training={"command": args.command, **dataclasses.asdict(cfg)})
    if args.command == "dara":
        dara, history = train_dara(loaded, task, args.shots, args.layers, args.mode, cfg)
        dara.save(out, **made, history=history)
        return list(artifact_paths(out))
    if args.command in ("lora", "icl-tune"):
        any_shot = args.command == "icl-tune"
        peft_model, history = train_lora(loaded, args.task if any_shot else task, args.shots,
                                         args.layers or (None if any_shot else "first"),
                                         args.rank or (8 if any_shot else 4), cfg,
                                         objective="any-shot" if any_shot else "query")
        peft_model.save_pretrained(out)
        write_atomic(out / "micl_probe_training.json", dumps({**made, "tasks": args.task, "history": history}))
        return [out]
    # mtv: means from k-shot prompts of the support split, heads by REINFORCE on zero-shot ones, best on "val"
    draw = {"instruction": args.instruction, "style": args.prompt_style}
    mtv = extract(loaded, task_stream(task, args.shots, "support", args.seed, **draw), n_prompts=args.n_prompts,
                  meta=made)
    val = list(itertools.islice(task_stream(task, 0, "val", args.seed, **draw), 16))
    heads = locate(loaded, mtv, task_stream(task, 0, "support", args.seed + 1, **draw), val,
                   steps=args.steps or 600, seed=args.seed)
    means_path, heads_path = out.with_name(out.name + "_means"), out.with_name(out.name + "_heads")
    mtv.save(means_path)
    heads.save(heads_path)
    return [means_path, heads_path]


def main(argv=None):
    args = parse(argv)
    with one_line_errors(args.debug):
        check(args)
        paths = train(args)
    flag = {"dara": "--dara", "lora": "--lora", "icl-tune": "--lora", "mtv": "--mtv"}[args.command]
    cond = {"dara": "dara", "lora": "lora", "icl-tune": "lora", "mtv": "mtv"}[args.command]
    shown = " ".join(str(p.with_name(p.name.removesuffix(".json"))) for p in paths[: 2 if cond == "mtv" else 1])
    print(f"wrote {', '.join(map(str, paths))}\nrun it: python -m micl_probe.attn_report --model {args.model} "
          f"--tasks {' '.join(args.task)} --conditions no-image {args.shots}-shot "
          f"{'zero' if cond == 'mtv' else args.shots}-shot+{cond} {flag} {shown}")


if __name__ == "__main__":
    main()
