"""Everything the user sees in the terminal: rich tables, progress bars and the live display."""

from __future__ import annotations

import sys

from rich.console import Console


def make_console(stderr: bool = False) -> Console:
    """A console that falls back to plain text when the stream is not a terminal."""
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=None)


def is_interactive() -> bool:
    """Live displays only where a person watches a terminal."""
    return sys.stdout.isatty()
