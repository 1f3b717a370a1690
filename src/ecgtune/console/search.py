"""What the search shows in the terminal.

Interactive (a terminal, no ``--quiet``): one live display with the search's progress over
``max_evals`` and its ETA, the running trial's epoch progress, and the table of finished
trials with the best one highlighted. Otherwise (``--quiet``, or output to a file or pipe):
the same events as plain log lines. After the search: the top trials and the test figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table
from torch import nn

from ecgtune.config import Config
from ecgtune.data.dataset import Dataset
from ecgtune.models.summary import model_summary
from ecgtune.search.trials import (
    TrialObserver,
    TrialOutcome,
    TrialRow,
    TrialStart,
    best_row,
    ranked_rows,
)
from ecgtune.training import EpochRecord, TrainingObserver

TENSORBOARD_UI = "http://localhost:6006"
"""Where ``tensorboard`` serves by default."""
VISIBLE_TRIALS = 12
"""Finished trials the live table shows: the most recent ones, plus the best if older."""
STATUS_STYLES = {"ok": None, "pruned": "yellow", "failed": "red", "killed": "red"}
"""A trial row's style by its status (the best trial's is bold green whatever its status)."""


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


def run_header(config: Config, dataset: Dataset, device: str, threads: int, engine: str) -> Table:
    """What a run is about to do and where its results go, printed before the work: the
    experiment, beats per class per split, device and threads, the engine, and the folders
    with the commands that open them."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("experiment", config.tracking.experiment)
    data = config.data
    table.add_row("data", f"{data.source}, {data.split} split, {dataset.beat_length}-sample beats")
    for name in ("train", "valid", "test"):
        beats = getattr(dataset, name)
        counts = beats.class_counts(dataset.n_classes).tolist()
        per_class = "  ".join(
            f"{c} {n:,}" for c, n in zip(dataset.class_names, counts, strict=True)
        )
        table.add_row(f"{name} split", f"{len(beats):,} beats: {per_class}")
    table.add_row("device", f"{device}, {threads} threads")
    table.add_row("engine", engine)
    table.add_row("results", str(config.run_dir))
    uri, logs = config.tracking.mlflow_uri, config.tracking.tensorboard_dir
    table.add_row("MLflow", f"{uri}, open with: mlflow ui --backend-store-uri {uri}")
    table.add_row("TensorBoard", f"{logs}, open with: tensorboard --logdir={logs}")
    return table


def browse_commands(tracking_uri: str, runs_url: str, tensorboard_dir: Path) -> list[str]:
    """The two commands that open what a search recorded, each with the page to open (a
    tracking server serves its own UI: only the page); whole lines, for the console to print
    unfolded (a terminal links a URL only in one piece)."""
    served = tracking_uri.startswith(("http://", "https://"))
    mlflow = [] if served else [f"  mlflow ui --backend-store-uri {tracking_uri}"]
    return [
        *mlflow,
        f"    then open {runs_url}" if mlflow else f"  open {runs_url}",
        f"  tensorboard --logdir={tensorboard_dir}",
        f"    then open {TENSORBOARD_UI}/#hparams (and #timeseries for the curves)",
    ]


def search_outputs(
    run_dir: Path, files: Sequence[Path], run_id: str, model_uri: str, seconds: float
) -> list[str]:
    """The end of a search: its time, every file it wrote, its MLflow run and model."""
    minutes, secs = divmod(round(seconds), 60)
    return [
        f"Done in {minutes} min {secs} s. Files written to {run_dir}:",
        *(f"  {path.name}" for path in files),
        f"MLflow: the search's run {run_id}, its model {model_uri}",
    ]


def column_names(keys: Sequence[str]) -> dict[str, str]:
    """A short column name per searched key, as Ray Tune's trial table has: the key's last
    part (``lr``), or the whole key where two keys end alike."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {
        key: name if last.count(name) == 1 else key for key, name in zip(keys, last, strict=True)
    }


def trials_table(
    rows: Sequence[TrialRow],
    objective: str,
    title: str,
    best: TrialRow | None,
    keys: Sequence[str],
) -> Table:
    """Trials in the given order, one column per searched key; the best one in bold green,
    pruned ones in yellow (with their last epoch), failed ones in red (with the reason)."""
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    names = column_names(keys)
    for key in keys:
        table.add_column(names[key], justify="right", overflow="fold")
    for column in (f"valid {objective}", "epochs", "time"):
        table.add_column(column, justify="right")
    table.add_column("status", overflow="fold")
    for row in rows:
        score = "-" if row.objective is None else f"{row.objective:.4f}"
        status = escape(status_text(row))
        style = "bold green" if best is not None and row is best else STATUS_STYLES[row.status]
        values = [escape(_short(row.values[key])) if key in row.values else "" for key in keys]
        table.add_row(
            str(row.number),
            *values,
            score,
            str(row.epochs),
            _duration(row.seconds),
            status,
            style=style,
        )
    return table


def status_text(row: TrialRow) -> str:
    """``ok``, ``pruned at epoch 4``, or the status with the failure reason. A pruned trial's
    rung and cutoff are in the line printed when it ended, in MLflow and in the trials file:
    in a column they would fold every row of the table into a dozen lines."""
    if row.status == "ok":
        return "ok"
    return (
        f"pruned at epoch {row.epochs}" if row.status == "pruned" else f"{row.status}: {row.note}"
    )


def top_trials_table(
    rows: Sequence[TrialRow], objective: str, n: int, keys: Sequence[str]
) -> Table:
    """The ``n`` best finished trials, best first."""
    ranked = ranked_rows(rows, objective)
    best = ranked[0] if ranked else None
    title = f"Top {min(n, len(ranked))} of {len(rows)} trials"
    return trials_table(ranked[:n], objective, title, best, keys)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class SearchDisplay(TrialObserver, TrainingObserver):
    """The search's live view (or log lines): a trial observer, and the running trial's
    training observer for its epoch progress.

    Use as a context manager around the search, so the live display is always stopped.
    """

    def __init__(
        self,
        console: Console,
        live: bool,
        objective: str,
        max_evals: int,
        keys: Sequence[str],
        verbose: bool = False,
    ) -> None:
        self.console = console
        self.verbose = verbose
        self.keys = list(keys)
        self.objective = objective
        self.max_evals = max_evals
        self.rows: list[TrialRow] = []
        self.session_seconds: list[float] = []
        self.trial = 0
        self.epochs = 0
        self.search_progress = Progress(
            TextColumn("[bold]search"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("trials  best {task.fields[best]}  ETA {task.fields[eta]}"),
            console=console,
        )
        self.search_task = self.search_progress.add_task(
            "search", total=max_evals, best="-", eta="-"
        )
        self.trial_progress = Progress(
            TextColumn("[bold]trial {task.fields[trial]}[/] epoch {task.fields[epoch]}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("beats  loss {task.fields[loss]}  {task.fields[valid]}"),
            console=console,
        )
        self.trial_task: TaskID | None = None
        self.trial_tasks: dict[int, TaskID] = {}
        """The progress bar of each trial in flight (the Ray engine trains several at once)."""
        self.live = (
            Live(self._renderable(), console=console, refresh_per_second=4, transient=True)
            if live
            else None
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

    def trial_started(self, trial: TrialStart) -> TrainingObserver:
        self.trial = trial.number
        if self.live is None:
            self.log(f"trial {trial.number} started: {short_values(trial.values)}")
            return TrialEvents(self, trial.number, None)
        self.trial_task = self.trial_progress.add_task(
            "trial", total=None, trial=trial.number, epoch="-", loss="-", valid=""
        )
        self.trial_tasks[trial.number] = self.trial_task
        self._refresh()
        return TrialEvents(self, trial.number, self.trial_task)

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
            valid = f"epoch {record.epoch} valid {self.objective} {value:.4f}"
            self.trial_progress.update(self.trial_task, valid=valid)
            return
        self.log(
            f"trial {self.trial} epoch {record.epoch}/{self.epochs}: train loss "
            f"{record.train_loss:.4f}, valid {self.objective} {value:.4f} ({record.seconds:.1f} s)"
        )

    def trial_ended(self, outcome: TrialOutcome) -> None:
        row = outcome.row
        was_best = best_row(self.rows, self.objective)
        self.rows.append(row)
        self.session_seconds.append(row.seconds)
        is_best = best_row(self.rows, self.objective) is row and was_best is not row
        self.search_progress.update(
            self.search_task, completed=len(self.rows), best=self._best(), eta=self._eta()
        )
        if (task := self.trial_tasks.pop(row.number, None)) is not None:
            self.trial_progress.remove_task(task)
            self.trial_task = None
        if row.ok:
            mark = " (best so far)" if is_best else ""
            pruned = escape(f"; {row.note}") if row.status == "pruned" else ""
            self.log(
                f"trial {row.number} done: valid {self.objective} {row.objective:.4f}{mark}, "
                f"{row.epochs} epochs, {_duration(row.seconds)}{pruned}"
            )
        else:
            self.log(escape(f"trial {row.number} {row.status}: {row.note}"))
        self._refresh()

    def _best(self) -> str:
        best = best_row(self.rows, self.objective)
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
        best = best_row(self.rows, self.objective)
        if best is not None and best not in shown:
            shown = [best, *shown[1:]]
        title = f"Finished trials ({len(self.rows)}; the best in green)"
        table = trials_table(shown, self.objective, title, best, self.keys)
        return Group(self.search_progress, self.trial_progress, table)

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._renderable(), refresh=True)


class TrialEvents(TrainingObserver):
    """One trial's training events to the display, which may show several trials at once
    (the Ray engine trains them concurrently): each event is shown as its own trial's, with
    its own progress bar and epoch count."""

    def __init__(self, display: SearchDisplay, number: int, task: TaskID | None) -> None:
        self.display = display
        self.number = number
        self.task = task
        self.epochs = 0

    def select(self) -> SearchDisplay:
        self.display.trial, self.display.trial_task = self.number, self.task
        self.display.epochs = self.epochs
        return self.display

    def on_train_start(self, config: Config, model: nn.Module, n_train: int) -> None:
        self.select().on_train_start(config, model, n_train)
        self.epochs = self.display.epochs

    def on_epoch_start(self, epoch: int, n_batches: int) -> None:
        self.select().on_epoch_start(epoch, n_batches)

    def on_batch_end(self, beats: int, loss: float) -> None:
        self.select().on_batch_end(beats, loss)

    def on_epoch_end(self, record: EpochRecord) -> None:
        self.select().on_epoch_end(record)
