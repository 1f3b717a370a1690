"""Where the data layer reports its progress: rich progress bars handed in by the caller (the
console makes them; the data layer never prints), silent when none are given."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.progress import Progress


def _silent() -> Progress:
    return Progress(disable=True)


@dataclass(frozen=True)
class DataProgress:
    """``download``: bytes of the file being downloaded; ``build``: records (or files) read."""

    download: Progress = field(default_factory=_silent)
    build: Progress = field(default_factory=_silent)
