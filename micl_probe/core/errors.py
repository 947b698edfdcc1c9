"""How the command lines end on a user's mistake: one line that names the fix, exit code 2, no traceback.

    with one_line_errors(debug=args.debug):    # ValueError / OSError -> "error: <first line> …", exit 2
        check(args)
        work(args)
"""

from __future__ import annotations

import argparse
import contextlib
import sys


class UsageError(ValueError):
    """A mistake in the flags: the message names the flag and the fix."""


@contextlib.contextmanager
def one_line_errors(debug: bool = False):
    """Turn a user's mistake (ValueError, OSError: flags, data, a model that cannot be loaded) into one line on
    stderr and exit code 2; `debug` lets the exception and its traceback through."""
    try:
        yield
    except (ValueError, OSError) as e:
        if debug:
            raise
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__} (--debug shows the traceback)",
              file=sys.stderr)
        raise SystemExit(2) from None


class Parser(argparse.ArgumentParser):
    """argparse whose mistakes end in one line (the message and where to look), exit code 2, instead of the usage
    block: a wrong choice or a missing value reads like every other flag error."""

    def error(self, message: str):
        print(f"error: {message} ({self.prog} --help lists every flag)", file=sys.stderr)
        raise SystemExit(2)


def device_problem(device: str | None) -> str | None:
    """Why `device` (a --device value) cannot be used here, or None: cpu, cuda, cuda:N, mps or auto."""
    import torch

    if device in (None, "cpu", "auto"):
        return None
    kind, _, index = device.partition(":")
    if kind not in ("cuda", "mps") or index and not index.isdigit() or kind == "mps" and index:
        return f"{device!r} is not a device: use cpu, cuda, cuda:N (N = 0, 1 …), mps or auto"
    if kind == "cuda":
        if not torch.cuda.is_available():
            return (f"this machine has no CUDA device torch can use (torch {torch.__version__}); run on cpu or install "
                    "a CUDA build of torch")
        if index and int(index) >= torch.cuda.device_count():
            last = torch.cuda.device_count() - 1
            return f"this machine has {last + 1} CUDA device(s): cuda:0 … cuda:{last}"
    if kind == "mps" and not torch.backends.mps.is_available():
        return "this machine has no Apple GPU (mps) torch can use: run on cpu"
    return None
