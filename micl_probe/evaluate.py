"""Scoring: greedy exact match, accuracies with 95% Wilson intervals.

`greedy_exact_match` scores a batch in ONE teacher-forced forward pass. Greedy decoding emits exactly the gold
answer and then stops iff, along the gold answer, the argmax at every step is the gold token and the argmax after
the last answer token is the end-of-turn token. So this is the same verdict as `generate` + exact match, at the
cost of one forward pass (tests check the two agree).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from .layout import QUERY
from .prompt import PreparedBatch, prepare_batch


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for k successes out of n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, min(p, mid - half)), min(1.0, max(p, mid + half)))  # contains p despite rounding


@dataclass(frozen=True)
class Accuracy:
    correct: int
    n: int

    @property
    def acc(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    @property
    def ci(self) -> tuple[float, float]:
        return wilson(self.correct, self.n)

    def __str__(self) -> str:
        lo, hi = self.ci
        return f"{100 * self.acc:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


@torch.no_grad()
def which_correct(model, processor, adapter, episodes, intervention=None, batch_size: int = 25,
                  device=None) -> torch.Tensor:
    """correct[episode] (bool): greedy exact match of each of `episodes`, `batch_size` at a time;
    `intervention(layouts)` (a context-manager factory such as `dara.on(model)` or an MTV injection) is active
    around each batch when given."""
    verdicts = []
    for i in range(0, len(episodes), batch_size):
        batch = prepare_batch(episodes[i:i + batch_size], processor, adapter, model=model, with_answer=True)
        if device is not None:
            batch = batch.to(device)
        with intervention(batch.layouts) if intervention else contextlib.nullcontext():
            verdicts.append(greedy_exact_match(model, batch)[0])
    return torch.cat(verdicts) if verdicts else torch.zeros(0, dtype=torch.bool)


def count_correct(model, processor, adapter, episodes, intervention=None, batch_size: int = 25, device=None) -> int:
    """How many of `episodes` are answered exactly (see `which_correct`)."""
    return int(which_correct(model, processor, adapter, episodes, intervention, batch_size, device).sum())


def mcnemar_p(before, after) -> float:
    """Exact two-sided McNemar p-value for two conditions scored on the SAME episodes (`before[n]`, `after[n]`
    bool): a binomial test of the discordant pairs (right only after vs right only before) against 1/2. Paired,
    so far more sensitive than comparing two confidence intervals."""
    from scipy.stats import binomtest

    before, after = torch.as_tensor(before, dtype=torch.bool), torch.as_tensor(after, dtype=torch.bool)
    if before.shape != after.shape:
        raise ValueError(f"paired verdicts must have the same shape, got {tuple(before.shape)} and "
                         f"{tuple(after.shape)}")
    gained, lost = int((after & ~before).sum()), int((before & ~after).sum())
    return 1.0 if gained + lost == 0 else float(binomtest(gained, gained + lost, 0.5).pvalue)


@torch.no_grad()
def greedy_exact_match(model, batch: PreparedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct[B] bool, first_token[B]): batch prepared with `with_answer=True`."""
    logits = model(**batch.inputs).logits  # [B, seq, vocab]
    ids = batch.inputs["input_ids"]
    correct, first = [], []
    for b, lay in enumerate(batch.layouts):
        answer = lay.positions(owner=QUERY, role="answer")
        if answer.numel() == 0:
            raise ValueError("greedy_exact_match needs episodes prepared with with_answer=True")
        stop = answer[-1] + 1  # the end-of-turn token rendered after the answer
        predictors = torch.cat([answer - 1, answer[-1:]])  # each predicts the next token
        targets = torch.cat([ids[b, answer], ids[b, stop:stop + 1]])
        argmax = logits[b, predictors].argmax(-1)
        correct.append(bool((argmax == targets).all()))
        first.append(int(argmax[0]))
    return torch.tensor(correct), torch.tensor(first)
