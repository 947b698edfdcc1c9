"""python -m micl_probe.train {dara,lora,mtv,icl-tune,finetune,mmict}: train an intervention on any supported model,
from the command line, and write the artifact that attn_report runs it with.

    python -m micl_probe.train dara --model Qwen/Qwen2-VL-2B-Instruct --task vlicl:/data/VL-ICL/clevr \\
        --shots 4 --device cuda --dtype bfloat16 --out runs/dara_clevr
    python -m micl_probe.attn_report --model Qwen/Qwen2-VL-2B-Instruct --tasks vlicl:/data/VL-ICL/clevr \\
        --conditions no-image 4-shot 4-shot+dara --dara runs/dara_clevr --device cuda --dtype bfloat16

  dara      one attention factor per (layer, head, image), model frozen   -> PATH.json + PATH.safetensors
                                                                             attn_report --dara PATH
  lora      LoRA on q/k/v/o of --layers, on the query's answer (DARA's    -> PATH/ (a peft adapter folder)
            data and steps)                                                  attn_report --lora PATH
  mtv       MTV means from k-shot prompts + the heads REINFORCE selects   -> PATH_means.*, PATH_heads.*
                                                                             attn_report --mtv PATH_means PATH_heads
  icl-tune  any-shot ICL instruction tuning (Doveh et al.): LoRA on every -> PATH/ (a peft adapter folder)
            layer, every demo answer after the first is a target             attn_report --lora PATH
  finetune  plain fine-tuning (MMICT's first baseline): icl-tune's        -> PATH/ (a peft adapter folder)
            episodes with their demos dropped, LoRA on every layer,          attn_report --lora PATH
            the query's answer the target
  mmict     MMICT (Chen et al., TOMM 2024), approximated: an M-Hub (a     -> PATH.json + PATH.safetensors
            small Q-Former: --hub-queries learned queries reading each       attn_report --mmict PATH
            image's features, with each demo's/query's text) whose
            outputs are new prompt tokens (role "hub"): per demo one per
            text token (image-conditioned text features), for the query
            --hub-queries (text-conditioned visual features); or, with
            --hub-placement residual, added onto each demo's text and the
            query's image tokens; model frozen, icl-tune's episodes, the
            query's answer the target (interventions/mmict.py lists where
            it departs from the paper)

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
from .interventions import FitConfig, extract, locate, train_dara, train_lora, train_mmict
from .interventions.dara import LR as DARA_LR
from .interventions.lora import LR as LORA_LR
from .interventions.mmict import LR as MMICT_LR
from .tasks import check_task, task_stream

COMMANDS = ("dara", "lora", "mtv", "icl-tune", "finetune", "mmict")
SEVERAL = ("icl-tune", "finetune", "mmict")  # the commands that train on several tasks at once
ADAPTER_FOLDER = ("lora", "icl-tune", "finetune")  # the commands that write a peft adapter folder


def parse(argv=None):
    ap = Parser(prog="python -m micl_probe.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=COMMANDS, help="what to train")
    ap.add_argument("--model", required=True, help="hub id, local folder or organism:NAME")
    ap.add_argument("--task", nargs="+", required=True, help="task(s): procedural names (<task>@<rule> under one "
                    "fixed rule, e.g. clock_math@blue: what a task vector carries), or truemicl:PATH/TASK, "
                    "vlicl:PATH/TASK (several for icl-tune, finetune and mmict)")
    ap.add_argument("--out", required=True, help="artifact path (see the table above)")
    ap.add_argument("--shots", type=int, default=4, help="demos a prompt (icl-tune, finetune, mmict: up to "
                    "this many) (default: 4)")
    ap.add_argument("--layers", type=int, nargs="+", help="decoder layers (dara, lora; default: the first "
                    "with softmax attention; "
                    "icl-tune: all)")
    ap.add_argument("--mode", choices=["logit", "post"], default="logit", help="DARA mode (default: logit)")
    ap.add_argument("--rank", type=int, default=None, help="LoRA rank (default: lora 4, icl-tune and finetune 8)")
    ap.add_argument("--hub-queries", type=int, default=32, help="mmict: the hub's learned queries, the query's hub "
                    "tokens (default: %(default)s, MMICT's)")
    ap.add_argument("--hub-width", type=int, default=128, help="mmict: the hub's width (default: %(default)s)")
    ap.add_argument("--hub-layers", type=int, default=2, help="mmict: the hub's layers (default: %(default)s)")
    ap.add_argument("--hub-placement", choices=["tokens", "residual"], default="tokens", help="mmict: where the hub's "
                    "outputs go: tokens (MMICT's: new prompt tokens, role hub) or residual (added onto each demo's "
                    "text and the query's image tokens; the prompt unchanged) (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: 200; mtv: 600 REINFORCE)")
    ap.add_argument("--lr", type=float, default=None, help="learning rate (default: dara 0.05, LoRA and mmict 1e-3)")
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
    if len(args.task) > 1 and args.command not in SEVERAL:
        raise UsageError(f"--task: {args.command} trains on one task; {', '.join(SEVERAL)} take several")
    for flag, value, low in (("--shots", args.shots, 1), ("--batch", args.batch, 1), ("--steps", args.steps, 1),
                             ("--rank", args.rank, 1), ("--n-prompts", args.n_prompts, 1),
                             ("--hub-queries", args.hub_queries, 1), ("--hub-width", args.hub_width, 4),
                             ("--hub-layers", args.hub_layers, 1)):
        if value is not None and value < low:
            raise UsageError(f"{flag} {value}: give at least {low}")
    if args.hub_width % 4:
        raise UsageError(f"--hub-width {args.hub_width}: give a multiple of 4 (the hub has 4 attention heads)")
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
    if args.command in ADAPTER_FOLDER and out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: a LoRA adapter is written to a folder")
    problem = unwritable(out if args.command in ADAPTER_FOLDER else out.parent)
    if problem:
        raise UsageError(f"--out {out}: {problem}; choose a folder you can write to")


def train(args) -> list[Path]:
    """Load the model, train, write the artifact(s); returns their paths."""
    loaded = load(args.model, **placement(args.device), dtype=getattr(torch, args.dtype) if args.dtype else None)
    lr = args.lr or {"dara": DARA_LR, "mtv": None, "mmict": MMICT_LR}.get(args.command, LORA_LR)  # as used
    cfg = FitConfig(steps=args.steps or 200, lr=lr, batch=args.batch, seed=args.seed, style=args.prompt_style,
                    instruction=args.instruction)
    out, task = Path(args.out), args.task[0]
    made = made_for(loaded, task=task, shots=args.shots, style=args.prompt_style, instruction=args.instruction,
                    training={"command": args.command, **dataclasses.asdict(cfg)})
    if args.command == "dara":
        dara, history = train_dara(loaded, task, args.shots, args.layers, args.mode, cfg)
        dara.save(out, **made, history=history)
        return list(artifact_paths(out))
    if args.command == "mmict":
        hub, history = train_mmict(loaded, args.task, args.shots, cfg, width=args.hub_width,
                                   n_queries=args.hub_queries, layers=args.hub_layers, placement=args.hub_placement)
        hub.save(out, **{k: v for k, v in made.items() if k != "task"}, tasks=args.task, history=history)
        return list(artifact_paths(out))
    if args.command in ADAPTER_FOLDER:
        several = args.command in SEVERAL
        peft_model, history = train_lora(loaded, args.task if several else task, args.shots,
                                         args.layers or (None if several else "first"),
                                         args.rank or (8 if several else 4), cfg,
                                         objective={"lora": "query", "icl-tune": "any-shot",
                                                    "finetune": "plain"}[args.command])
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
    cond = {"icl-tune": "lora", "finetune": "lora"}.get(args.command, args.command)
    flag = f"--{cond}"
    shown = " ".join(str(p.with_name(p.name.removesuffix(".json"))) for p in paths[: 2 if cond == "mtv" else 1])
    print(f"wrote {', '.join(map(str, paths))}\nrun it: python -m micl_probe.attn_report --model {args.model} "
          f"--tasks {' '.join(args.task)} --conditions no-image {args.shots}-shot "
          f"{'zero' if cond == 'mtv' else args.shots}-shot+{cond} {flag} {shown}")


if __name__ == "__main__":
    main()
