"""Benchmark: wall time of the test suite (the README's test command) against its 5-minute budget.

    python bench/suite_time.py [--slowest 15]

Runs `python -m pytest -q` in a fresh process from the repository root (offline, Agg backend, as CI does) and prints
the wall time, the ratio to the 300-second budget and the slowest tests. Time it alone, on an idle machine: another
heavy job on the same cores slows both.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

BUDGET_S = 300.0
ROOT = Path(__file__).parent.parent


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slowest", type=int, default=15, help="how many of the slowest tests to list")
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg"}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", f"--durations={args.slowest}"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    lines = done.stdout.splitlines()
    summary = next((line for line in reversed(lines) if re.search(r"\d+ (passed|failed)", line)), "no summary")
    slowest = [line for line in lines if re.match(r"\s*\d+\.\d+s (call|setup|teardown)", line)]
    print("\n".join(slowest))
    print(f"{summary.strip('= ')}\ntest suite: {seconds:.0f} s wall; budget {BUDGET_S:.0f} s: {seconds / BUDGET_S:.2f} "
          "of it")
    raise SystemExit(done.returncode)


if __name__ == "__main__":
    main()
