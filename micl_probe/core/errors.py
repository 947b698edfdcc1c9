"""How the command lines end on a user's mistake: one line that names the fix, exit code 2, no traceback.

    with one_line_errors(debug=args.debug):    # ValueError / OSError -> "error: <first line> …", exit 2
        check(args)
        work(args)
"""

from __future__ import annotations

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
