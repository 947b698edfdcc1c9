"""Benchmark: wall time of the default report (`python -m micl_probe.attn_report`, every shipped organism).

    python bench/report_time.py [--repeats 2]

Runs the command in a fresh process into a temporary folder (so nothing is resumed), --repeats times, and prints the
best wall time against the 60-second budget for the default run on an idle 2-core machine. Time it alone: another
heavy job on the same cores slows both.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

BUDGET_S = 60.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    times = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "micl_probe.attn_report", "--out", out], env=env, check=True,
                           capture_output=True)
            times.append(time.perf_counter() - t)
    best = min(times)
    print(f"default report: best of {args.repeats}: {best:.1f} s (runs: {', '.join(f'{t:.1f}' for t in times)}); "
          f"budget {BUDGET_S:.0f} s: {best / BUDGET_S:.2f} of it")


if __name__ == "__main__":
    main()
