"""Everything the user sees in the terminal: rich tables, progress bars and the live display."""

from __future__ import annotations

import os
import sys

from rich.console import Console

PLAIN_WIDTH = 240
"""Columns of output that is not a terminal (a log file, a pipe) when ``COLUMNS`` is unset: a
file has no screen to fit, and rich's 80 would fold the trial table (a column per searched
key) into columns of a few letters."""


def make_console(stderr: bool = False) -> Console:
    """A console that falls back to plain text, ``PLAIN_WIDTH`` columns wide, when the stream
    is not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    plain = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(
        stderr=stderr, highlight=False, soft_wrap=False, width=PLAIN_WIDTH if plain else None
    )


def is_interactive() -> bool:
    """Live displays only where a person watches a terminal."""
    return sys.stdout.isatty()
