"""Command-line value types shared by ``sfl``, ``sfl demo`` and ``sfl-edge``.

Each function converts one option's text for ``argparse`` and raises
``argparse.ArgumentTypeError`` naming the value and the expected range.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors take two lines instead of the whole usage.

    The error names the option and the value; the second line points to ``--help``.
    The exit status stays argparse's 2.
    """

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE`` and where the options are listed; exit 2."""
        sys.stderr.write(
            f"{self.prog}: error: {message}\n"
            f"run '{self.prog} --help' to list the options\n"
        )
        sys.exit(2)


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def positive_int(text: str) -> int:
    """Parse an integer >= 1."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def non_negative_int(text: str) -> int:
    """Parse an integer >= 0."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative, expected 0 or more")
    return value


def positive_float(text: str) -> float:
    """Parse a finite number > 0."""
    value = _number(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a finite number > 0")
    return value


def non_negative_float(text: str) -> float:
    """Parse a finite number >= 0."""
    value = _number(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a finite number >= 0")
    return value
