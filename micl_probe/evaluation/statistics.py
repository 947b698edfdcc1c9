"""Statistics of verdicts: accuracies with 95% Wilson intervals, the exact McNemar test of two conditions on the same
queries.

    Accuracy(correct=57, n=200)           # str(): "28.5 [22.7, 35.1]"
    mcnemar_p(before[n], after[n])        # paired verdicts (bool) of the same episodes
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


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

    def as_dict(self) -> dict:
        """{"correct", "n", "acc", "ci"}: the form the experiments' result files use."""
        return {"correct": self.correct, "n": self.n, "acc": self.acc, "ci": self.ci}

    def __str__(self) -> str:
        lo, hi = self.ci
        return f"{100 * self.acc:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


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
