"""One small training loop for interventions (DARA factors, LoRA adapters, …) on a frozen model.

    history = fit(parameters, loss_of, train_batches, val_batches, FitConfig(steps=200, lr=0.05))

`loss_of(batch)` returns the scalar loss of one prepared batch; `train_batches` yields fresh batches (seeded);
`val_batches` is a fixed list. Early stopping keeps the parameters of the best validation loss. Data: k-shot
episodes of a task's "support" split for training, "val" for early stopping (`episode_batches`); every reported
number is on "query". Loss: cross-entropy on the query's answer tokens and its end of turn (`query_labels`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core import QUERY, ROLE, Loaded, PreparedBatch
from ..tasks import task_stream


@dataclass(frozen=True)
class FitConfig:
    """Settings of one intervention's training run."""

    steps: int = 200
    lr: float | None = None  # None: the trainer's default (DARA 0.05, LoRA 1e-3)
    batch: int = 16  # episodes per step
    seed: int = 0
    n_val: int = 64  # validation episodes (batched like training)
    eval_every: int = 25
    patience: int = 4  # evaluations without improvement before stopping
    style: str = "turns"  # prompt style of the training episodes (see Episode)
    instruction: str = "nothing"  # their task instruction (see tasks.query_episodes)

    def with_lr(self, default: float) -> FitConfig:
        return self if self.lr is not None else replace(self, lr=default)


def query_labels(batch: PreparedBatch) -> torch.Tensor:
    """labels[B, seq]: the query's answer tokens and its end-of-turn token, -100 elsewhere (teacher forcing)."""
    ids = batch.inputs["input_ids"]
    labels = torch.full_like(ids, -100)
    for b, lay in enumerate(batch.layouts):
        pos = lay.query_answer_positions()
        if pos.numel() == 0:
            raise ValueError("query_labels needs batches prepared with with_answer=True")
        pos = torch.cat([pos, pos[-1:] + 1])
        labels[b, pos] = ids[b, pos]
    return labels


def episode_batches(loaded: Loaded, task: str, shots: int, batch: int, seed: int, split: str,
                    config: FitConfig | None = None):
    """Endless seeded stream of prepared k-shot batches (with answers) from one split of a task (procedural or a
    folder's support set: `tasks.task_stream`), written in `config`'s prompt style and instruction."""
    cfg = config or FitConfig()
    stream = task_stream(task, shots, split, seed, cfg.instruction, cfg.style)
    while True:
        yield loaded.prepare_batch([next(stream) for _ in range(batch)], with_answer=True)


def any_shot_batches(loaded: Loaded, tasks: list[str], max_shots: int, batch: int, seed: int, split: str,
                     config: FitConfig | None = None, demos: bool = True):
    """Endless seeded stream for any-shot ICL tuning: each batch from one of `tasks` (in turn) with 1..max_shots
    shots (drawn per batch), prepared with answers. `demos=False`: the same episodes with their demos dropped (plain
    fine-tuning on the same queries)."""
    cfg = config or FitConfig()
    rng = np.random.default_rng([seed, len(tasks), max_shots])
    streams = {(t, k): task_stream(t, k, split, seed + k, cfg.instruction, cfg.style)
               for t in tasks for k in range(1, max_shots + 1)}
    for step in range(10**12):
        stream = streams[tasks[step % len(tasks)], int(rng.integers(1, max_shots + 1))]
        episodes = [next(stream) for _ in range(batch)]
        yield loaded.prepare_batch(episodes if demos else [e.zero_shot() for e in episodes], with_answer=True)


def icl_labels(batch: PreparedBatch) -> torch.Tensor:
    """labels[B, seq]: every answer (and its end-of-turn token) after the first demo's, -100 elsewhere: any-shot
    multimodal ICL supervision (Doveh et al.): each demo answer is predicted from the demos before it, the query's
    from all of them. HF shifts labels inside the loss, so labels sit on the tokens to be predicted."""
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


@contextlib.contextmanager
def frozen(model):
    """`model`'s parameters without gradients inside the block; their flags restored after."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


def fit(parameters: list[torch.nn.Parameter], loss_of: Callable[[PreparedBatch], torch.Tensor],
        train_batches: Iterator[PreparedBatch], val_batches: list[PreparedBatch], config: FitConfig,
        desc: str = "fit") -> list[dict]:
    """Adam on `parameters`; returns the history [{step, train_loss, val_loss}]; restores the best state."""
    if config.lr is None:
        raise ValueError("FitConfig.lr is None: give a learning rate (trainers fill in their default)")
    opt = torch.optim.Adam(parameters, lr=config.lr)
    best, best_state, bad, history, running = float("inf"), None, 0, [], []

    def validate() -> float:
        with torch.no_grad():
            return sum(float(loss_of(b)) for b in val_batches) / len(val_batches)

    bar = tqdm(range(config.steps), desc=desc, mininterval=1)
    for step in bar:
        loss = loss_of(next(train_batches))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        running.append(loss.item())
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            val = validate()
            history.append({"step": step + 1, "train_loss": sum(running) / len(running), "val_loss": val})
            running = []
            bar.set_postfix(val=f"{val:.3f}")
            if val < best - 1e-4:
                best, bad = val, 0
                best_state = [p.detach().clone() for p in parameters]
            else:
                bad += 1
                if bad >= config.patience:
                    break
    if best_state is not None:
        with torch.no_grad():
            for p, s in zip(parameters, best_state):
                p.copy_(s)
    return history
