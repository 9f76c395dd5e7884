"""How the command line and the recipes report a failure: one line on stderr that names the problem (the raising
code words the fix), exit status 1, no traceback unless asked for with `--traceback` or `HF_UNLEARN_DEBUG=1`.

The flag is `--traceback`, not `--debug`: `--debug` is a `TrainingArguments` flag (`--debug underflow_overflow`)
that every unlearning command accepts.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


TRACEBACK_FLAG = "--traceback"
DEBUG_ENV = "HF_UNLEARN_DEBUG"


def one_line(error: BaseException) -> str:
    """The error as one line: its message with whitespace collapsed; the exception's type is named too where the
    message alone would not say what went wrong (anything but a `ValueError`/`OSError`, which our checks raise)."""
    if isinstance(error, KeyError) and error.args:
        text = f"missing key {error.args[0]!r}"
    else:
        text = " ".join(str(error).split())
    if not text:
        return type(error).__name__
    if isinstance(error, (ValueError, OSError)):
        return text
    return f"{type(error).__name__}: {text}"


def traceback_requested(argv: Sequence[str]) -> bool:
    return TRACEBACK_FLAG in argv or os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")


def run_command(entry: Callable[[list[str]], object], argv: Sequence[str] | None = None,
                prog: str | None = None) -> int:
    """Call `entry(argv)` (without `--traceback`) and turn an exception into `prog: error: <one line>` on stderr
    and exit status 1 (130 on Ctrl-C). `SystemExit` (argparse's usage errors, `--help`) passes through.
    Returns `entry`'s result when it is an int, else 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    show_traceback = traceback_requested(argv)
    argv = [arg for arg in argv if arg != TRACEBACK_FLAG]
    prog = prog or Path(sys.argv[0]).name
    try:
        result = entry(argv)
    except KeyboardInterrupt:
        if show_traceback:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the whole point: one line instead of a traceback
        if show_traceback:
            raise
        print(f"{prog}: error: {one_line(error)} [{TRACEBACK_FLAG} shows the traceback]", file=sys.stderr)
        return 1
    return result if isinstance(result, int) else 0
