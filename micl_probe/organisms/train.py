"""ICL instruction tuning of a model organism, from scratch, on CPU.

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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..adapters import get_adapter
from ..episode import Demo, Episode, Query
from ..evaluate import count_correct
from ..layout import QUERY, ROLE
from ..prompt import PreparedBatch, prepare_batch
from ..tasks import COLOUR_NAMES, NOVEL_NAMES, SHAPE_NAMES, make_episode, task_names
from . import SHIPPED, build, save

TRUE, SHORTCUT = task_names(), task_names(shortcut=True)
PROBE_TASKS = ("novel_binding", "novel_binding_shortcut", "outlier", "clock_math", "shape_count")


@dataclass(frozen=True)
class Recipe:
    name: str
    mix: dict[str, float]  # task name -> sampling weight
    steps: int = 4000
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.01
    shots: tuple[int, int] = (1, 5)  # demos per training batch, uniform in [lo, hi] (one count a batch: no padding)
    warm_shots: tuple[int, int] = (0, 2)  # demos per batch during the first `warm_frac` of training (curriculum:
    warm_frac: float = 0.15  # few-demo batches teach the vision features first)
    warm_mix: dict[str, float] | None = None  # task mix during that warm phase (default: `mix`)
    seed: int = 0
    probes: tuple[str, ...] = PROBE_TASKS  # tasks probed (4-shot vs no-image) in the training log
    arch: dict = field(default_factory=dict)  # overrides of organisms.build's architecture arguments
    binding_scale: int = 2  # novel_binding's glyph size (tasks.BINDING_SCALE) in training and in the card
    description: str = ""
    notes: dict = field(default_factory=dict)
    then: Recipe | None = None  # a further stage, trained on after this one (see `train`)


# The shipped organisms are trained on the colour/shape tasks (novel_binding, outlier, clock_math, shape_count); the
# digit tasks (operator_induction, number_grid, palindrome) are held out of their training and evaluated as they are
# (first attempt with all 14 tasks: no progress in 1,500 steps). Trained in later, once binding works, palindrome is
# read from the demos under both rules; operator induction and number grid were not (README: Model organisms).

def copy_episode(shots: int, rng: np.random.Generator) -> Episode:
    """Text-only 'copy' episode (training only): each turn's answer repeats its question, a string of 4-8 random
    task words. Every answer token is predictable by matching the previous token in the question and copying the
    next, so this forms induction heads within a few hundred steps, as language-model pretraining gives a real
    VLM's decoder before it ever sees images. Novel binding then needs only to match images instead of tokens."""
    words = NOVEL_NAMES + COLOUR_NAMES + SHAPE_NAMES
    items = [" ".join(rng.choice(words, int(rng.integers(4, 9)))) for _ in range(shots + 1)]
    return Episode(tuple(Demo((), w, w) for w in items[:-1]), Query((), items[-1], items[-1]), task="copy")


# Training-only '<task>_stated' episodes: the question names the episode's rule (its shortcut question for rules[0]),
# so every rule's answer is taught directly. Clock math's blue hand is otherwise taught only through true-MICL
# episodes, whose rule the model must first infer from the demos.
STATED = {"clock_math": {"red": "What hour is the red hand?", "blue": "What hour is the blue hand?"}}


def stated_episode(task: str):
    def make(shots: int, rng: np.random.Generator) -> Episode:
        rule = str(rng.choice(list(STATED[task])))
        e = make_episode(task, shots, rng, rule=rule)
        ask = STATED[task][rule]
        return replace(e, demos=tuple(replace(d, question=ask) for d in e.demos),
                       query=replace(e.query, question=ask), task=f"{task}_stated")
    return make


EPISODES = {"copy": copy_episode} | {f"{t}_stated": stated_episode(t) for t in STATED}  # training-only sources


# Mixes of the staged recipe's later stages (each stage: a fresh schedule, see `train`).
STAGED_PROBES = ("novel_binding", "clock_math", "palindrome", "outlier")
CLOCK_FOCUS = {"clock_math": 0.5, "clock_math_stated": 0.1, "novel_binding": 0.2, "novel_binding_shortcut": 0.05,
               "copy": 0.05, "outlier": 0.1}
PALINDROME_FOCUS = {"palindrome": 0.35, "clock_math": 0.2, "clock_math_stated": 0.05, "novel_binding": 0.15,
                    "novel_binding_shortcut": 0.05, "palindrome_shortcut": 0.05, "copy": 0.05, "outlier": 0.1}

RECIPES = {r.name: r for r in [
    Recipe("novel-binding", {"novel_binding": 0.25, "novel_binding_shortcut": 0.1, "copy": 0.05, "outlier": 0.15,
                             "clock_math": 0.2, "shape_count": 0.15, "outlier_shortcut": 0.033,
                             "clock_math_shortcut": 0.033, "shape_count_shortcut": 0.034}, steps=4500,
           warm_mix={"copy": 0.4, "novel_binding_shortcut": 0.3, "outlier_shortcut": 0.1, "clock_math_shortcut": 0.1,
                     "shape_count_shortcut": 0.1}, warm_frac=0.15, warm_shots=(1, 3), arch={"n_kv_heads": 4},
           description="Induction first: the first 15% of steps are text-only 'copy' episodes, which form the "
                       "match-and-copy (induction) heads that a real VLM inherits from its language model, with the "
                       "fixed-label twins, which teach the vision features. Then novel binding (names bound to "
                       "visual classes per episode: the demos' images are needed), its twin, the true-MICL outlier, "
                       "clock-math and shape-count tasks, a little of their shortcut twins, and some copy episodes; "
                       "4 KV heads. Without the copy episodes, novel binding stayed at chance for 4,500 steps."),
    Recipe("binding-clock-palindrome", {"novel_binding": 0.25, "novel_binding_shortcut": 0.1, "copy": 0.05,
                                        "outlier": 0.15, "clock_math": 0.2, "palindrome_shortcut": 0.1,
                                        "palindrome": 0.05, "outlier_shortcut": 0.033, "clock_math_shortcut": 0.033},
           steps=2400, warm_mix={"copy": 0.4, "novel_binding_shortcut": 0.3, "outlier_shortcut": 0.1,
                                 "clock_math_shortcut": 0.1, "palindrome_shortcut": 0.1},
           warm_frac=0.15, warm_shots=(1, 3), arch={"n_kv_heads": 4}, probes=STAGED_PROBES,
           then=Recipe("clock-focus", CLOCK_FOCUS, steps=1400, probes=STAGED_PROBES,
                       then=Recipe("clock-focus-2", CLOCK_FOCUS, steps=1000, probes=STAGED_PROBES,
                                   then=Recipe("palindrome-focus", PALINDROME_FOCUS, steps=2000,
                                               probes=STAGED_PROBES))),
           description="Four stages. (1) The novel-binding recipe with palindrome (mostly its shortcut twin) in "
                       "place of shape counting: induction from copy episodes, then binding. (2, 3) A focused clock "
                       "phase: half the episodes clock math, a tenth clock math with the hand named in the question "
                       "('<task>_stated'), so that both hands' hours are taught directly; a mixed curriculum "
                       "learned to read the hand from the demos only sometimes. (4) A palindrome phase that keeps "
                       "clock and binding in the mix. Over the 30-minute budget: it shows what the staged "
                       "curriculum reaches, not the issue's bar."),
    Recipe("true-micl", {"novel_binding": 0.35, "novel_binding_shortcut": 0.25, "outlier": 0.1, "clock_math": 0.1,
                         "shape_count": 0.1, "outlier_shortcut": 0.033, "clock_math_shortcut": 0.033,
                         "shape_count_shortcut": 0.034}, steps=4500, warm_mix={"novel_binding": 1.0},
           warm_shots=(2, 5), arch={"n_kv_heads": 4}, binding_scale=4,
           description="Novel-binding episodes (names bound to visual classes per episode: the demos' images are "
                       "needed) paired with their fixed-label twin (class -> 'colour shape', which teaches the "
                       "vision features), plus the true-MICL outlier, clock-math and shape-count tasks and a little "
                       "of their shortcut twins. The first 15% of steps are novel binding only (2-5 demos), so that "
                       "copying a name from the context forms before the fixed labels make the image pathway "
                       "dominant; 4 KV heads (no GQA)."),
    Recipe("text-shortcut", {"novel_binding_shortcut": 0.25, "outlier_shortcut": 0.25, "clock_math_shortcut": 0.25,
                             "shape_count_shortcut": 0.25}, steps=2500,
           description="Only shortcut episodes: the demos never carry information the query needs, so nothing "
                       "rewards reading them."),
    Recipe("partial", {"novel_binding": 0.05, "novel_binding_shortcut": 0.2, "outlier": 0.033, "clock_math": 0.033,
                       "shape_count": 0.034, "outlier_shortcut": 0.217, "clock_math_shortcut": 0.217,
                       "shape_count_shortcut": 0.216},
           description="Mostly shortcut episodes with a little true-MICL data: uses the demo images weakly."),
]}


def targets(batch: PreparedBatch) -> torch.Tensor:
    """labels[B, seq]: the token ids at every answer (and its end-of-turn) position after the first demo, -100
    elsewhere. HF shifts labels inside the loss, so labels sit on the tokens to be predicted."""
    ids = batch.inputs["input_ids"]
    labels = torch.full_like(ids, -100)
    for b, lay in enumerate(batch.layouts):
        is_answer = lay.role == ROLE["answer"]
        later = (lay.owner >= 1) | (lay.owner == QUERY)
        pos = (is_answer & later).nonzero().flatten()
        ends = pos[~torch.isin(pos + 1, pos)] + 1  # the end-of-turn token after each answer
        keep = torch.cat([pos, ends[ends < ids.shape[1]]])
        labels[b, keep] = ids[b, keep]
    return labels


def sample_batch(recipe: Recipe, rng: np.random.Generator, n: int | None = None, warm: bool = False):
    names, weights = zip(*((recipe.warm_mix if warm and recipe.warm_mix else recipe.mix).items()))
    p = np.array(weights) / sum(weights)
    picks = rng.choice(len(names), size=n or recipe.batch, p=p)
    lo, hi = recipe.warm_shots if warm else recipe.shots
    shots = int(rng.integers(lo, hi + 1))
    return [EPISODES[names[i]](shots, rng) if names[i] in EPISODES else make_episode(names[i], shots, rng)
            for i in picks]


def probe(model, processor, adapter, tasks, shots=4, n=64, seed=123) -> dict[str, tuple[float, float]]:
    """Quick accuracy at `shots` shots and with the demos' images removed, per task (for progress logs)."""
    rng = np.random.default_rng(seed)
    out = {}
    model.eval()
    for t in tasks:
        eps = [make_episode(t, shots, rng) for _ in range(n)]
        out[t] = tuple(count_correct(model, processor, adapter, cond, batch_size=n) / n
                       for cond in (eps, [e.without_demo_images() for e in eps]))
    model.train()
    return out


def stage_steps(recipe: Recipe, steps: int | None = None) -> list[tuple[Recipe, int]]:
    """[(stage, steps)]: `recipe`, `recipe.then`, … with their steps; `steps` (a quick run) is the total, split in
    the recipe's proportions."""
    stages = [recipe]
    while stages[-1].then is not None:
        stages.append(stages[-1].then)
    total = sum(s.steps for s in stages)
    return [(s, s.steps if steps is None else max(1, round(steps * s.steps / total))) for s in stages]


def train(recipe: Recipe, out_dir=None, steps: int | None = None, log_every: int = 500, evaluate: bool = True,
          eval_n: int = 200, threads: int | None = None, resume: str | None = None):
    """Train `recipe` from scratch, stage by stage (`recipe`, then `recipe.then`, …), or continue the organism saved
    in `resume`. Every stage after the first (and a resumed run) starts a fresh optimiser, warm-up + cosine schedule
    and data stream (seed + 1), with no shot curriculum; the card records each stage and the whole history."""
    from ..tasks import binding_scale

    if threads:
        torch.set_num_threads(threads)
    previous, history = None, []
    with binding_scale(recipe.binding_scale):
        if resume:
            from transformers import LlavaForConditionalGeneration

            from ..loading import load_processor
            model = LlavaForConditionalGeneration.from_pretrained(resume, dtype=torch.float32)
            processor = load_processor(resume)
            previous = json.loads((Path(resume) / "micl_probe.json").read_text())
            first = previous["recipe"]
            history = previous.get("stages", [{"recipe": first["name"], "steps": first["steps"],
                                               "minutes": previous["train_minutes"]}])
        else:
            model, processor = build(seed=recipe.seed, **recipe.arch)
        log = list(previous.get("log", [])) if previous else []
        for i, (stage, n) in enumerate(stage_steps(recipe, steps)):
            if resume or i > 0:
                stage = replace(stage, warm_frac=0.0, seed=stage.seed + 1)
            done = sum(h["steps"] for h in history)
            stage_log, minutes = train_stage(model, processor, stage, n, log_every)
            log += [e | {"step": e["step"] + done} for e in stage_log]
            history.append({"recipe": stage.name, "steps": n, "minutes": round(minutes, 2)}
                           | ({"resumed_from": str(resume)} if resume and i == 0 else {}))
        card = {"recipe": (previous["recipe"] if previous else asdict(recipe))
                | {"steps": sum(h["steps"] for h in history)},
                "train_minutes": round(sum(h["minutes"] for h in history), 2), "threads": torch.get_num_threads(),
                "log": log}
        if len(history) > 1:
            card["stages"] = history
        if evaluate:
            from .card import evaluate_organism, evaluate_rules
            card["evaluation"] = evaluate_organism(model, processor, n=eval_n)
            card["by_rule"] = evaluate_rules(model, processor, n=eval_n)
    if out_dir is not None:
        save(model, processor, out_dir, card)
        from .card import write_card
        write_card(out_dir)
    return model, processor, card


def train_stage(model, processor, recipe: Recipe, steps: int, log_every: int = 500) -> tuple[list[dict], float]:
    """Train `model` in place for `steps` steps of `recipe` (its mix, warm phase, schedule and seed; not its `then`).
    Returns (probe log, minutes)."""
    adapter = get_adapter("organism")
    rng = np.random.default_rng(recipe.seed)
    torch.manual_seed(recipe.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)
    schedule = lambda s: min(1.0, (s + 1) / recipe.warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model.train()
    log, t0, ema = [], time.time(), None
    warm_steps = int(recipe.warm_frac * steps)
    make = lambda s: prepare_batch(sample_batch(recipe, rng, warm=s < warm_steps), processor, adapter, model=model,
                                   with_answer=True)
    pool = ThreadPoolExecutor(1)  # prepares the next batch while torch (which releases the GIL) trains
    upcoming = pool.submit(make, 0)
    bar = tqdm(range(steps), desc=f"train {recipe.name}", mininterval=2)
    for step in bar:
        batch = upcoming.result()
        upcoming = pool.submit(make, step + 1) if step + 1 < steps else None
        loss = model(**batch.inputs, labels=targets(batch)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.set_postfix(loss=f"{ema:.3f}")
        if log_every and (step + 1) % log_every == 0:
            acc = probe(model, processor, adapter, recipe.probes)
            log.append({"step": step + 1, "loss": ema, "minutes": (time.time() - t0) / 60,
                        "probe_4shot_vs_noimage": acc})
            tqdm.write(f"step {step + 1} loss {ema:.3f} "
                       + " ".join(f"{k}={a:.2f}/{b:.2f}" for k, (a, b) in acc.items()))
    pool.shutdown()
    model.eval()
    return log, (time.time() - t0) / 60


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", required=True, choices=sorted(RECIPES))
    ap.add_argument("--steps", type=int, help="override the number of steps (a staged recipe's total, split "
                    "in its stages' proportions)")
    ap.add_argument("--out", help="output folder (default: the shipped organisms folder)")
    ap.add_argument("--eval-n", type=int, default=200, help="queries per task and condition in the model card")
    ap.add_argument("--no-eval", action="store_true", help="skip the model-card evaluation")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--resume", help="continue training the organism saved in this folder")
    args = ap.parse_args(argv)
    recipe = RECIPES[args.recipe]
    out = args.out or SHIPPED / recipe.name
    train(recipe, out, steps=args.steps, evaluate=not args.no_eval, eval_n=args.eval_n, threads=args.threads,
          resume=args.resume)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
