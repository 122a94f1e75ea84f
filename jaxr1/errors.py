"""User errors: mistakes in what a user gave (config, paths, data), printed as one line with exit code 2.

Every module's user-facing error class derives from UserError, so each command catches one type; anything
else is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from typing import Callable

USER_ERROR_EXIT = 2


class UserError(Exception):
    """Raised for bad input; the message names the file/row/key and what to do."""


def run_cli(main: Callable[[], int], prog: str) -> int:
    """Run a command's main: a UserError becomes `prog: error: message` and exit code 2."""
    try:
        return main()
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return USER_ERROR_EXIT
