"""One small training loop for interventions (DARA factors, LoRA adapters, …) on a frozen model.

    history = fit(parameters, loss_of, train_batches, val_batches, steps=200, lr=0.05)

`loss_of(batch)` returns the scalar loss of one prepared batch; `train_batches()` yields fresh batches (seeded);
`val_batches` is a fixed list. Early stopping keeps the parameters of the best validation loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from tqdm.auto import tqdm

from .layout import QUERY, ROLE
from .prompt import PreparedBatch


def query_labels(batch: PreparedBatch) -> torch.Tensor:
    """labels[B, seq]: the query's answer tokens and its end-of-turn token, -100 elsewhere (teacher forcing)."""
    ids = batch.inputs["input_ids"]
    labels = torch.full_like(ids, -100)
    for b, lay in enumerate(batch.layouts):
        pos = ((lay.owner == QUERY) & (lay.role == ROLE["answer"])).nonzero().flatten()
        if pos.numel() == 0:
            raise ValueError("query_labels needs batches prepared with with_answer=True")
        pos = torch.cat([pos, pos[-1:] + 1])
        labels[b, pos] = ids[b, pos]
    return labels


def fit(parameters: list[torch.nn.Parameter], loss_of: Callable[[PreparedBatch], torch.Tensor],
        train_batches: Iterator[PreparedBatch], val_batches: list[PreparedBatch], steps: int = 200,
        lr: float = 0.05, eval_every: int = 25, patience: int = 4, desc: str = "fit") -> list[dict]:
    """Adam on `parameters`; returns the history [{step, train_loss, val_loss}]; restores the best state."""
    opt = torch.optim.Adam(parameters, lr=lr)
    best, best_state, bad, history, running = float("inf"), None, 0, [], []

    def validate() -> float:
        with torch.no_grad():
            return sum(float(loss_of(b)) for b in val_batches) / len(val_batches)

    bar = tqdm(range(steps), desc=desc, mininterval=1)
    for step in bar:
        loss = loss_of(next(train_batches))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        running.append(loss.item())
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            val = validate()
            history.append({"step": step + 1, "train_loss": sum(running) / len(running), "val_loss": val})
            running = []
            bar.set_postfix(val=f"{val:.3f}")
            if val < best - 1e-4:
                best, bad = val, 0
                best_state = [p.detach().clone() for p in parameters]
            else:
                bad += 1
                if bad >= patience:
                    break
    if best_state is not None:
        with torch.no_grad():
            for p, s in zip(parameters, best_state):
                p.copy_(s)
    return history
