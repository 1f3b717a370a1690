"""What ``evaluate --database`` and ``predict`` show: a progress bar over records, the
per-record table of an evaluation, the AAMI summary line and the beats per predicted class."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from time import perf_counter
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ecgtune.config import AAMI_CLASSES
from ecgtune.console import make_console
from ecgtune.console.training import _figure
from ecgtune.data.beats import describe_skips, total_skips


def record_progress(console: Console) -> Progress:
    """A bar over records on ``console`` when it is a terminal, else on stderr, so that
    output piped to a file holds the tables only; it disappears once done, and is off where
    neither is a terminal (a log keeps no bar)."""
    target = console if console.is_terminal else make_console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=target,
        transient=True,
        disable=not target.is_terminal,
    )


@contextmanager
def beat_progress(console: Console, records: int) -> Iterator[Callable[[int], None]]:
    """The record bar of :func:`record_progress` with the beats per second so far; yields the
    function to call once per finished record with its beat count."""
    started, beats = perf_counter(), 0
    with record_progress(console) as progress:
        task = progress.add_task("records", total=records, rate="")

        def record_done(n_beats: int) -> None:
            nonlocal beats
            beats += n_beats
            rate = beats / max(perf_counter() - started, 1e-9)
            progress.update(task, advance=1, rate=f"{rate:,.0f} beats/s")

        yield record_done


def skip_summary(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """One line of the annotations skipped over every record (``row["skipped"]``: count by
    reason), with the records they came from; None when none were."""
    totals = total_skips(row["skipped"] for row in rows)
    if not totals:
        return None
    where = [row["record"] for row in rows if row["skipped"]]
    shown = ", ".join(where[:12]) + (", ..." if len(where) > 12 else "")
    return f"Skipped annotations: {describe_skips(totals)} (records {shown}; --strict refuses them)"


def record_table(rows: Sequence[Mapping[str, Any]], title: str) -> Table:
    """One line per record of an evaluation: leads, rate, beats, then S and V beats, Se and
    +P ("-" where undefined: no beats of the class, or none predicted as it)."""
    table = Table(title=title, title_justify="left")
    columns = (
        "record",
        "leads",
        "Hz",
        "beats",
        "skipped",
        "S",
        "S Se",
        "S +P",
        "V",
        "V Se",
        "V +P",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("record", "leads") else "right")
    s, v = AAMI_CLASSES.index("S"), AAMI_CLASSES.index("V")
    for row in rows:
        confusion = row["confusion_matrix"]
        table.add_row(
            row["record"],
            " ".join(row["leads"]),
            f"{row['fs']:g}",
            f"{row['beats']:,}",
            f"{sum(row['skipped'].values()):,}",
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
