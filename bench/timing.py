"""Timing helpers shared by the benches (run them as `python bench/NAME.py`, which puts this folder on the path)."""

from __future__ import annotations

import gc
import resource
import time


def best(fn, repeats: int, warm_up: bool = True) -> float:
    """Best wall time of `repeats` calls of `fn`, after one warm-up call (unless `warm_up` is False)."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def rss_mb() -> float:
    """This process's resident memory now, MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def best_and_peak(fn, repeats: int, warm_up: bool = True) -> tuple[float, float]:
    """(best wall time as `best`, peak extra memory in MB: the process's peak RSS minus its RSS before the calls).
    Run it once per process (each method in its own), after the model and inputs are built."""
    gc.collect()
    base = rss_mb()
    seconds = best(fn, repeats, warm_up)
    return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
