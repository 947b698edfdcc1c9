"""Statistics of verdicts: accuracies with 95% Wilson intervals, the exact McNemar test of two conditions on the same
queries.

    Accuracy(correct=57, n=200)           # str(): "28.5 [22.7, 35.1]"
    mcnemar_p(before[n], after[n])        # paired verdicts (bool) of the same episodes
    paired_difference(a[n], b[n])         # (acc(a) - acc(b), 95% CI) on the same episodes
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
    """k correct of n, with its 95% Wilson interval (`ci`); str() is "acc [lo, hi]" in %."""

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


def paired_difference(a, b, z: float = 1.96) -> tuple[float, tuple[float, float]]:
    """(acc(a) − acc(b), its 95% interval) for two conditions scored on the SAME episodes (`a[n]`, `b[n]` bool):
    Newcombe's hybrid score interval for paired proportions (method 10 of Newcombe 1998, Stat. Med. 17:2635),
    built from the two Wilson intervals and the correlation of the pairs. It stays inside [-1, 1] and, unlike the
    Wald interval, keeps its coverage at small n and near 0 or 1."""
    a, b = torch.as_tensor(a, dtype=torch.bool), torch.as_tensor(b, dtype=torch.bool)
    if a.shape != b.shape or a.numel() == 0:
        raise ValueError(f"paired verdicts must have the same, non-empty shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    n = a.numel()
    both, only_a = int((a & b).sum()), int((a & ~b).sum())
    only_b, neither = int((~a & b).sum()), int((~a & ~b).sum())
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    l1, u1 = wilson(both + only_a, n, z)
    l2, u2 = wilson(both + only_b, n, z)
    cross = both * neither - only_a * only_b
    den = math.sqrt((both + only_a) * (neither + only_b) * (both + only_b) * (neither + only_a))
    if den == 0:
        phi = 0.0
    else:  # with Newcombe's continuity correction of a positive association
        phi = (max(cross - n / 2, 0) if cross > 0 else cross) / den
    diff = p1 - p2
    lower = diff - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    upper = diff + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return diff, (max(-1.0, lower), min(1.0, upper))
