"""The one exception type for mistakes a user can make (bad flag, missing file, bad checkpoint).

Entry scripts wrap `main` with `run_cli`, which prints a `UserError` as a single line
`error: <what was wrong and what to do>` and exits with status 2, without a traceback.
Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import difflib
import re
import sys
from typing import Callable, Iterable


class UserError(ValueError):
    """A problem with the user's input; the message says what was wrong and how to fix it."""


def closest(name: str, valid: Iterable[str]) -> str | None:
    """The valid name closest to `name`, or None when nothing is reasonably close."""
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return match[0] if match else None


def unknown_name_message(what: str, name: str, valid: Iterable[str]) -> str:
    """`unknown softmax 'consmx'; did you mean 'consmax'? valid: consmax, softmax`."""
    valid = sorted(valid)
    guess = closest(name, valid)
    hint = f"; did you mean '{guess}'?" if guess else ";"
    return f"unknown {what} '{name}'{hint} valid: {', '.join(valid)}"


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as a one-line UserError (closest flag included)."""

    def error(self, message: str):
        m = re.match(r"unrecognized arguments: (\S+)", message)
        if m:
            flag = m.group(1).split("=")[0]
            valid = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            guess = closest(flag, valid)
            message = f"unknown flag '{flag}'" + (f"; did you mean '{guess}'?" if guess else "")
        raise UserError(f"{message} (python {self.prog} --help lists every flag)")


def run_cli(main: Callable[..., object], argv: list[str] | None = None) -> int:
    """Call `main(argv)`; turn a UserError into a one-line message and exit status 2."""
    try:
        main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
