"""Timing helper shared by the benches (run them as `python bench/NAME.py`, which puts this folder on the path)."""

from __future__ import annotations

import time


def best(fn, repeats: int) -> float:
    """Best wall time of `repeats` calls of `fn`, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)
