"""What a user can get wrong, and how every entry point reports it.

Every error caused by the user's input (a file, a folder, an option value, a checkpoint) derives from
:class:`UserError`. The scripts in ``scripts/`` run their ``main`` through :func:`run_main`, which prints such
an error as one line, ``error: <message>``, and exits 2 (argparse's code for bad usage); anything else is a bug
and keeps its traceback. A reader that stops early (``scripts/compare.py A B | head``) ends the script quietly, as it
ends a Unix tool.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

USAGE_EXIT_CODE = 2
BROKEN_PIPE_EXIT_CODE = 141  # 128 + SIGPIPE: what the shell reports for a Unix tool whose reader went away


class UserError(ValueError):
    """Bad input from the user; the message names the file or value and what was expected."""


class ConfigError(UserError):
    """An option value, or a combination of options, that cannot work."""


def run_main(main: Callable[[], Any]) -> NoReturn:
    """Run an entry point's ``main()``; a :class:`UserError` becomes ``error: ...`` on stderr and exit code 2.

    ``main`` may return an exit code (an int) or anything else (exit 0).
    """
    try:
        code = main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(USAGE_EXIT_CODE) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:
        # Python's recipe (the signal module's note on SIGPIPE): point stdout at devnull so that the interpreter's
        # final flush does not raise a second time while exiting.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(BROKEN_PIPE_EXIT_CODE) from None
    raise SystemExit(code if isinstance(code, int) else 0)
