"""What ``evaluate --database`` and ``predict`` show: a progress bar over records, the
per-record table of an evaluation, the AAMI summary line and the beats per predicted class."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ecgtune.config import AAMI_CLASSES
from ecgtune.console import make_console
from ecgtune.console.training import _figure


def record_progress(console: Console) -> Progress:
    """A bar over records on ``console`` when it is a terminal, else on stderr, so that
    output piped to a file holds the tables only; it disappears once done, and is off where
    neither is a terminal (a log keeps no bar)."""
    target = console if console.is_terminal else make_console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=target,
        transient=True,
        disable=not target.is_terminal,
    )


def record_table(rows: Sequence[Mapping[str, Any]], title: str) -> Table:
    """One line per record of an evaluation: leads, rate, beats, then S and V beats, Se and
    +P ("-" where undefined: no beats of the class, or none predicted as it)."""
    table = Table(title=title, title_justify="left")
    for column in ("record", "leads", "Hz", "beats", "S", "S Se", "S +P", "V", "V Se", "V +P"):
        table.add_column(column, justify="left" if column in ("record", "leads") else "right")
    s, v = AAMI_CLASSES.index("S"), AAMI_CLASSES.index("V")
    for row in rows:
        confusion = row["confusion_matrix"]
        table.add_row(
            row["record"],
            " ".join(row["leads"]),
            f"{row['fs']:g}",
            f"{row['beats']:,}",
            f"{sum(confusion[s]):,}",
            _figure(row["se_S"]),
            _figure(row["ppv_S"]),
            f"{sum(confusion[v]):,}",
            _figure(row["se_V"]),
            _figure(row["ppv_V"]),
        )
    return table


def aami_summary(aami: Mapping[str, float]) -> str:
    """The whole database's AAMI figures in one line (classes absent from it left out)."""
    parts = [
        f"{name} Se {aami[f'se_{name}']:.4f} +P {aami[f'ppv_{name}']:.4f}"
        for name in ("S", "V")
        if f"se_{name}" in aami
    ]
    return "AAMI: " + ("; ".join(parts) if parts else "no S or V beats")


def class_count_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """Beats per predicted class of each record (``record``, ``source`` of the beat positions,
    ``counts`` by class name), then the total."""
    table = Table(title="Predicted beats per class", title_justify="left")
    table.add_column("record")
    table.add_column("beats from")
    for column in (*AAMI_CLASSES, "beats"):
        table.add_column(column, justify="right")
    for row in rows:
        counts = [row["counts"][name] for name in AAMI_CLASSES]
        table.add_row(row["record"], row["source"], *_counts(counts))
    if len(rows) > 1:
        totals = [sum(row["counts"][name] for row in rows) for name in AAMI_CLASSES]
        table.add_section()
        table.add_row("total", "", *_counts(totals))
    return table


def _counts(counts: Sequence[int]) -> list[str]:
    return [f"{count:,}" for count in [*counts, sum(counts)]]
