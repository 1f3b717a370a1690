"""What the search shows in the terminal.

Interactive (a terminal, no ``--quiet``): one live display with the search's progress over
``max_evals`` and its ETA, the running trial's epoch progress, and the table of finished
trials with the best one highlighted. Otherwise (``--quiet``, or output to a file or pipe):
the same events as plain log lines. After the search: the top trials and the test figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table
from torch import nn

from ecgtune.config import Config
from ecgtune.models.summary import model_summary
from ecgtune.training import EpochRecord, TrainingObserver

VISIBLE_TRIALS = 12
"""Finished trials the live table shows: the most recent ones, plus the best if older."""


@dataclass(frozen=True)
class TrialRow:
    """One finished trial as tables and reports show it."""

    number: int
    ok: bool
    values: dict[str, Any]
    objective: float | None
    epochs: int
    seconds: float
    note: str
    """The failure reason, or why training stopped."""


def short_values(values: dict[str, Any]) -> str:
    """``lr=0.00123 kernel_sizes=[5,3,3]``: the last part of each key, numbers in 3 digits;
    escaped for rich, which would read ``[max,none]`` as markup."""
    text = " ".join(f"{key.rsplit('.', 1)[-1]}={_short(value)}" for key, value in values.items())
    return escape(text)


def _short(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_short(item) for item in value) + "]"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def best_row(rows: Sequence[TrialRow], maximise: bool) -> TrialRow | None:
    """The finished trial with the best objective (the first one on ties)."""
    finished = [row for row in rows if row.ok and row.objective is not None]
    if not finished:
        return None
    sign = 1.0 if maximise else -1.0
    return max(finished, key=lambda row: (sign * (row.objective or 0.0), -row.number))


def trials_table(
    rows: Sequence[TrialRow], objective: str, maximise: bool, title: str, best: TrialRow | None
) -> Table:
    """Trials in the given order; the best one in bold green, failed ones in red."""
    table = Table(title=title, title_justify="left")
    for column in ("#", "searched values", f"valid {objective}", "epochs", "time", "status"):
        left = column in ("searched values", "status")
        table.add_column(column, justify="left" if left else "right", overflow="fold")
    for row in rows:
        score = "-" if row.objective is None else f"{row.objective:.4f}"
        status = "ok" if row.ok else escape(f"failed: {row.note}")
        style = "bold green" if best is not None and row is best else None if row.ok else "red"
        table.add_row(
            str(row.number),
            short_values(row.values),
            score,
            str(row.epochs),
            _duration(row.seconds),
            status,
            style=style,
        )
    return table


def top_trials_table(rows: Sequence[TrialRow], objective: str, maximise: bool, n: int) -> Table:
    """The ``n`` best finished trials, best first."""
    sign = -1.0 if maximise else 1.0
    ranked = sorted(
        (row for row in rows if row.ok and row.objective is not None),
        key=lambda row: (sign * (row.objective or 0.0), row.number),
    )
    best = ranked[0] if ranked else None
    return trials_table(ranked[:n], objective, maximise, f"Top {n} trials", best)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class SearchDisplay(TrainingObserver):
    """The search's live view (or log lines); also the trainer's observer for epoch progress.

    Use as a context manager around the search, so the live display is always stopped.
    """

    def __init__(
        self,
        console: Console,
        live: bool,
        objective: str,
        maximise: bool,
        max_evals: int,
        verbose: bool = False,
    ) -> None:
        self.console = console
        self.verbose = verbose
        self.objective = objective
        self.maximise = maximise
        self.max_evals = max_evals
        self.rows: list[TrialRow] = []
        self.session_seconds: list[float] = []
        self.trial = 0
        self.epochs = 0
        self.search_progress = Progress(
            TextColumn("[bold]search"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("trials  best {task.fields[best]}  ETA {task.fields[eta]}"),
            console=console,
        )
        self.search_task = self.search_progress.add_task(
            "search", total=max_evals, best="-", eta="-"
        )
        self.trial_progress = Progress(
            TextColumn("[bold]trial {task.fields[trial]}[/] epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("beats  loss {task.fields[loss]}  valid {task.fields[valid]}"),
            console=console,
        )
        self.trial_task: TaskID | None = None
        self.live = (
            Live(self._renderable(), console=console, refresh_per_second=4) if live else None
        )

    def __enter__(self) -> SearchDisplay:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.live is not None:
            self.live.stop()

    def log(self, message: RenderableType) -> None:
        """A line (or table) above the live display, or in the log."""
        self.console.print(message)

    def show_finished(self, rows: Sequence[TrialRow]) -> None:
        """Trials done before this run (a resumed search)."""
        self.rows = list(rows)
        self.search_progress.update(self.search_task, completed=len(rows), best=self._best())
        if rows:
            self.log(f"Resuming the search: {len(rows)} trials done, {self._best()} best so far")
        self._refresh()

    def trial_started(self, number: int, values: dict[str, Any]) -> None:
        self.trial = number
        if self.live is None:
            self.log(f"trial {number} started: {short_values(values)}")
            return
        if self.trial_task is not None:
            self.trial_progress.remove_task(self.trial_task)
        self.trial_task = self.trial_progress.add_task(
            "trial", total=None, trial=number, epoch="-", loss="-", valid="-"
        )
        self._refresh()

    def on_train_start(self, config: Config, model: nn.Module, n_train: int) -> None:
        self.epochs = config.training.epochs
        if self.verbose:
            self.log(model_summary(model, config))
        if self.trial_task is not None:
            self.trial_progress.update(self.trial_task, total=n_train)

    def on_epoch_start(self, epoch: int, n_batches: int) -> None:
        if self.trial_task is not None:
            self.trial_progress.update(self.trial_task, completed=0, epoch=f"{epoch}/{self.epochs}")

    def on_batch_end(self, beats: int, loss: float) -> None:
        if self.trial_task is not None:
            self.trial_progress.update(self.trial_task, advance=beats, loss=f"{loss:.4f}")

    def on_epoch_end(self, record: EpochRecord) -> None:
        value = record.valid_metrics[self.objective]
        if self.trial_task is not None:
            self.trial_progress.update(self.trial_task, valid=f"{self.objective} {value:.4f}")
            return
        self.log(
            f"trial {self.trial} epoch {record.epoch}/{self.epochs}: train loss "
            f"{record.train_loss:.4f}, valid {self.objective} {value:.4f} ({record.seconds:.1f} s)"
        )

    def trial_finished(self, row: TrialRow) -> None:
        was_best = best_row(self.rows, self.maximise)
        self.rows.append(row)
        self.session_seconds.append(row.seconds)
        is_best = best_row(self.rows, self.maximise) is row and was_best is not row
        self.search_progress.update(
            self.search_task, completed=len(self.rows), best=self._best(), eta=self._eta()
        )
        if self.trial_task is not None:
            self.trial_progress.remove_task(self.trial_task)
            self.trial_task = None
        if row.ok:
            mark = " (best so far)" if is_best else ""
            self.log(
                f"trial {row.number} done: valid {self.objective} {row.objective:.4f}{mark}, "
                f"{row.epochs} epochs, {_duration(row.seconds)}"
            )
        else:
            self.log(escape(f"trial {row.number} failed: {row.note}"))
        self._refresh()

    def _best(self) -> str:
        best = best_row(self.rows, self.maximise)
        return "-" if best is None or best.objective is None else f"{best.objective:.4f}"

    def _eta(self) -> str:
        """Remaining trials times the mean duration of this run's trials."""
        remaining = max(self.max_evals - len(self.rows), 0)
        if not self.session_seconds:
            return "-"
        mean = sum(self.session_seconds) / len(self.session_seconds)
        return _duration(remaining * mean)

    def _renderable(self) -> Group:
        shown = self.rows[-VISIBLE_TRIALS:]
        best = best_row(self.rows, self.maximise)
        if best is not None and best not in shown:
            shown = [best, *shown[1:]]
        title = f"Finished trials ({len(self.rows)}; the best in green)"
        table = trials_table(shown, self.objective, self.maximise, title, best)
        return Group(self.search_progress, self.trial_progress, table)

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._renderable(), refresh=True)
