"""What the data layer shows: progress bars while the dataset is downloaded and built, then
(``hypertune.py data``) a table of beats per class per split, from the plain summary mapping of
:func:`ecgtune.data.summary.dataset_summary`."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from ecgtune.data.progress import DataProgress


def data_progress(console: Console | None) -> DataProgress:
    """The data layer's progress bars on ``console``: on a terminal only, and gone when the
    work ends, so a failure's one-line error is all that stays (what was built is in the
    summary that follows a success). Elsewhere silent: rich would print their last state and
    a blank line into a log."""
    return DataProgress(download=download_progress(console), build=build_progress(console))


def download_progress(console: Console | None) -> Progress:
    """Bytes of the file being downloaded; silent without a terminal."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        disable=console is None or not console.is_interactive,
        transient=True,
    )


def build_progress(console: Console | None) -> Progress:
    """Records (or files) read so far; silent without a terminal."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=console is None or not console.is_interactive,
        transient=True,
    )


def render_data_summary(summary: dict[str, Any], console: Console) -> None:
    """The summary as a table of beats per class per split, then its notes."""
    class_names: list[str] = summary["class_names"]
    table = Table(title=f"Dataset: {summary['source']}, {summary['split']} split")
    table.add_column("split")
    for name in [*class_names, "beats", "records"]:
        table.add_column(name, justify="right")
    rows = {**summary["splits"], "total": summary["total"]}
    for split, row in rows.items():
        classes = [f"{row['classes'][name]:,}" for name in class_names]
        table.add_row(split, *classes, f"{row['beats']:,}", str(len(row["records"])))
    console.print(table)
    for split, row in summary["splits"].items():
        console.print(f"{split} records: {' '.join(row['records'])}")
    for reason, count in summary["dropped_beats"].items():
        console.print(f"dropped {count:,} beats: {reason}")
    for record, reason in summary["skipped_records"].items():
        console.print(f"skipped record {record}: {reason}")
    for record, stand_ins in summary["lead_substitutions"].items():
        for wanted, used in stand_ins.items():
            console.print(f"record {record}: no {wanted} lead, used {used}")
    if summary["from_cache"]:
        console.print(
            f"loaded from cache in {summary['seconds']:.2f} s (built in "
            f"{summary['build_seconds']:.2f} s): {summary['cache_file']}"
        )
    else:
        console.print(f"built in {summary['seconds']:.2f} s, cached in {summary['cache_file']}")
