"""ICL instruction tuning of a model organism on CPU, from scratch or continuing a shipped one (`partial`).

    python -m micl_probe.organisms.train --recipe text-shortcut     # writes micl_probe/organisms/shipped/text-shortcut
    python -m micl_probe.organisms.train --recipe true-micl         # writes micl_probe/organisms/shipped/true-micl
    python -m micl_probe.organisms.train --recipe partial --steps 300 --out /tmp/org   # a quick run

Any-shot supervision (Doveh et al.): a training episode is one multi-turn conversation; every demo answer after
the first, and the query's answer, is a target (each followed by its end-of-turn token), so one episode trains
1-, 2-, … k-shot prediction at once. Episodes are drawn from a recipe's task mix; the vision tower, projector and
decoder are all trained. On finish: checkpoint (safetensors) + micl_probe.json + model card (README.md) with the
evaluation table of `micl_probe.organisms.card`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core import ROLE, Loaded, get_adapter, load_processor
from ..core.errors import Parser, UsageError, one_line_errors
from ..core.loading import RETIRED_ORGANISMS
from ..evaluation import count_correct
from ..interventions.fitting import icl_labels, query_labels
from ..tasks import make_episode
from . import SHIPPED, build, save
from .recipes import EPISODES, RECIPES, Recipe


def sample_batch(recipe: Recipe, rng: np.random.Generator, n: int | None = None, warm: bool = False):
    """One training batch of episodes from `recipe`'s mix (its warm-phase mix when `warm`)."""
    names, weights = zip(*((recipe.warm_mix if warm and recipe.warm_mix else recipe.mix).items()))
    p = np.array(weights) / sum(weights)
    picks = rng.choice(len(names), size=n or recipe.batch, p=p)
    lo, hi = recipe.warm_shots if warm else recipe.shots
    shots = int(rng.integers(lo, hi + 1))
    return [EPISODES[names[i]](shots, rng) if names[i] in EPISODES else make_episode(names[i], shots, rng)
            for i in picks]


def probe(loaded: Loaded, tasks, shots=4, n=64, seed=123) -> dict[str, tuple[float, float]]:
    """Quick accuracy at `shots` shots and with the demos' images removed, per task (for progress logs)."""
    rng = np.random.default_rng(seed)
    out = {}
    loaded.model.eval()
    for t in tasks:
        eps = [make_episode(t, shots, rng) for _ in range(n)]
        out[t] = tuple(count_correct(loaded, cond, batch_size=n) / n
                       for cond in (eps, [e.without_demo_images() for e in eps]))
    loaded.model.train()
    return out


def stage_steps(recipe: Recipe, steps: int | None = None) -> list[tuple[Recipe, int]]:
    """[(stage, steps)]: `recipe`, `recipe.then`, … with their steps; `steps` (a quick run) is the total, split in
    the recipe's proportions."""
    stages = [recipe]
    while stages[-1].then is not None:
        stages.append(stages[-1].then)
    total = sum(s.steps for s in stages)
    return [(s, s.steps if steps is None else max(1, round(steps * s.steps / total))) for s in stages]


def train(recipe: Recipe, out_dir=None, steps: int | None = None, log_every: int | None = None,
          evaluate: bool = True, eval_n: int = 200, threads: int | None = None, resume: str | None = None):
    """Train `recipe` from scratch, stage by stage (`recipe`, then `recipe.then`, …), or continue the organism saved
    in `resume`. Every stage after the first (and a resumed run) starts a fresh optimiser, warm-up + cosine schedule
    and data stream (seed + 1), with no shot curriculum; the card records each stage and the whole history.
    A recipe with a `base` (partial) starts from that shipped organism's weights under its own schedule, and its
    card records the base and its own steps and minutes only (what it costs on top)."""
    if threads:
        torch.set_num_threads(threads)
    previous, history = None, []
    start = resume or (SHIPPED / recipe.base if recipe.base else None)  # weights to continue, if any
    if start:
        from transformers import LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(start, dtype=torch.float32)
        processor = load_processor(start)
    if resume:
        previous = json.loads((Path(resume) / "micl_probe.json").read_text())
        first = previous["recipe"]
        history = previous.get("stages", [{"recipe": first["name"], "steps": first["steps"],
                                           "minutes": previous["train_minutes"]}])
    elif not start:
        model, processor = build(seed=recipe.seed, **recipe.arch)
    loaded = Loaded(model, processor, get_adapter("organism"), name=recipe.name)
    log = list(previous.get("log", [])) if previous else []
    for i, (stage, n) in enumerate(stage_steps(recipe, steps)):
        if resume or i > 0:
            stage = replace(stage, warm_frac=0.0, seed=stage.seed + 1)
        done = sum(h["steps"] for h in history)
        stage_log, minutes = train_stage(loaded, stage, n, stage.log_every if log_every is None else log_every)
        log += [e | {"step": e["step"] + done} for e in stage_log]
        history.append({"recipe": stage.name, "steps": n, "minutes": round(minutes, 2)}
                       | ({"resumed_from": str(resume)} if resume and i == 0 else {}))
    card = {"recipe": (previous["recipe"] if previous else asdict(recipe))
            | {"steps": sum(h["steps"] for h in history)},
            "train_minutes": round(sum(h["minutes"] for h in history), 2), "threads": torch.get_num_threads(),
            "log": log} | ({"base": recipe.base} if recipe.base and not resume else {})
    if len(history) > 1:
        card["stages"] = history
    if evaluate:
        from .card import evaluate_card
        card |= evaluate_card(loaded, n=eval_n)
    if out_dir is not None:
        save(model, processor, out_dir, card)
        from .card import write_card
        write_card(out_dir)
    return model, processor, card


def train_stage(loaded: Loaded, recipe: Recipe, steps: int, log_every: int = 500) -> tuple[list[dict], float]:
    """Train `loaded.model` in place for `steps` steps of `recipe` (its mix, warm phase, schedule and seed; not its
    `then`). Returns (probe log, minutes)."""
    model = loaded.model
    rng = np.random.default_rng(recipe.seed)
    torch.manual_seed(recipe.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)
    schedule = lambda s: min(1.0, (s + 1) / recipe.warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model.train()
    previous = model.config._attn_implementation
    if recipe.attention_penalty:  # the penalty reads attention weights: eager attention while training
        model.set_attn_implementation("eager")
    log, t0, ema = [], time.time(), None
    warm_steps = int(recipe.warm_frac * steps)
    make = lambda s: loaded.prepare_batch(sample_batch(recipe, rng, warm=s < warm_steps), with_answer=True)
    pool = ThreadPoolExecutor(1)  # prepares the next batch while torch (which releases the GIL) trains
    upcoming = pool.submit(make, 0)
    bar = tqdm(range(steps), desc=f"train {recipe.name}", mininterval=2)
    for step in bar:
        batch = upcoming.result()
        upcoming = pool.submit(make, step + 1) if step + 1 < steps else None
        labels = training_labels(recipe, batch)
        if recipe.attention_penalty:
            pen = recipe.attention_penalty
            out = model(**batch.inputs, labels=labels, output_attentions=True)
            loss = out.loss + pen["weight"] * demo_image_attention(out.attentions, batch, labels, pen["layers"],
                                                                   pen.get("rows", "answer"))
        else:
            loss = model(**batch.inputs, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.set_postfix(loss=f"{ema:.3f}")
        if log_every and (step + 1) % log_every == 0:
            acc = probe(loaded, recipe.probes)
            log.append({"step": step + 1, "loss": ema, "minutes": (time.time() - t0) / 60,
                        "probe_4shot_vs_noimage": acc})
            tqdm.write(f"step {step + 1} loss {ema:.3f} "
                       + " ".join(f"{k}={a:.2f}/{b:.2f}" for k, (a, b) in acc.items()))
    pool.shutdown()
    model.set_attn_implementation(previous)
    model.eval()
    return log, (time.time() - t0) / 60


def training_labels(recipe: Recipe, batch) -> torch.Tensor:
    """The batch's targets: any-shot (every demo answer after the first, and the query's: `icl_labels`), or the
    query's answer alone when the recipe's attention penalty says {"supervise": "query"} (a demo's answer is read
    off its own image, which the penalty forbids; supervising it would set the two losses against each other)."""
    query_only = (recipe.attention_penalty or {}).get("supervise") == "query"
    return query_labels(batch) if query_only else icl_labels(batch)


def demo_image_attention(attentions, batch, labels: torch.Tensor, layers, rows: str = "answer") -> torch.Tensor:
    """The planted penalty of the under-attends recipe: attention on the demo images' tokens in `layers`, mean over
    heads and rows. rows "answer": every supervised answer row (each row that predicts a labelled token); "all":
    every real row outside the image attended to (the demos' own text, later demos and their images, the query), so
    no path reads a demo image but its own tokens; "max": those rows, but the largest row of each example and head
    instead of the mean (a few rows that keep reading cannot hide among the many that do not)."""
    image_of = torch.stack([torch.where((lay.role == ROLE["image"]) & (lay.owner >= 0), lay.image_index, -1)
                            for lay in batch.layouts]).to(labels.device)  # [B, seq]: a demo image's index, or -1
    if rows == "answer":
        pick = torch.zeros_like(labels, dtype=torch.bool)
        pick[:, :-1] = labels[:, 1:] != -100  # row p predicts token p + 1
        pairs = pick[:, :, None] & (image_of >= 0)[:, None, :]  # [B, row, column]
    else:
        real = torch.stack([lay.role != ROLE["pad"] for lay in batch.layouts]).to(labels.device)
        row_image = torch.stack([lay.image_index for lay in batch.layouts]).to(labels.device)
        pick = real
        pairs = real[:, :, None] & (image_of >= 0)[:, None, :] & (row_image[:, :, None] != image_of[:, None, :])
    total = 0.0
    for layer in layers:
        a = attentions[layer]  # [B, H, row, column]
        on_demo = (a * pairs[:, None].to(a.dtype)).sum(-1)  # [B, H, row]
        if rows == "max":
            total = total + on_demo.amax(-1).mean()
        else:
            total = total + on_demo.sum() / (pick.sum() * a.shape[1]).clamp_min(1)
    return total / len(layers)


def main(argv=None):
    ap = Parser(prog="python -m micl_probe.organisms.train", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", required=True, help=f"one of {', '.join(sorted(RECIPES))}")
    ap.add_argument("--steps", type=int, help="override the number of steps (a staged recipe's total, split "
                    "in its stages' proportions)")
    ap.add_argument("--out", help="output folder (default: the shipped organisms folder)")
    ap.add_argument("--eval-n", type=int, default=200, help="queries per task and condition in the model card")
    ap.add_argument("--no-eval", action="store_true", help="skip the model-card evaluation")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--resume", help="continue training the organism saved in this folder")
    ap.add_argument("--log-every", type=int, help="steps between probes (default: the recipe's)")
    args = ap.parse_args(argv)
    with one_line_errors():
        if args.recipe not in RECIPES:
            retired = RETIRED_ORGANISMS.get(args.recipe)
            raise UsageError(f"--recipe {args.recipe}: " + (f"retired; use {retired}" if retired
                                                            else f"no such recipe; recipes: {', '.join(RECIPES)}"))
    recipe = RECIPES[args.recipe]
    out = args.out or SHIPPED / recipe.name
    train(recipe, out, steps=args.steps, evaluate=not args.no_eval, eval_n=args.eval_n, threads=args.threads,
          resume=args.resume, log_every=args.log_every)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
