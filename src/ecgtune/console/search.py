"""What the search shows in the terminal.

Interactive (a terminal, no ``--quiet``): one live display with the search's progress over
``max_evals`` and its ETA, the running trial's epoch progress, and the table of finished
trials with the best one highlighted. Otherwise (``--quiet``, or output to a file or pipe):
the same events as plain log lines. After the search: the top trials and the test figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import (
    Console,
    ConsoleOptions,
    Group,
    JustifyMethod,
    RenderableType,
    RenderResult,
)
from rich.live import Live
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table
from rich.text import Text
from torch import nn

from ecgtune.config import Config
from ecgtune.data.dataset import Dataset
from ecgtune.models.summary import model_summary
from ecgtune.search.pruning import asha_rule, expected_epochs
from ecgtune.search.trials import (
    TrialObserver,
    TrialOutcome,
    TrialRow,
    TrialStart,
    best_row,
    ranked_rows,
    short_value,
)
from ecgtune.training import EpochRecord, TrainingObserver

TENSORBOARD_UI = "http://localhost:6006"
"""Where ``tensorboard`` serves by default."""
VISIBLE_TRIALS = 12
"""Finished trials the live table shows: the most recent ones, plus the best if older."""
STATUS_STYLES = {"ok": None, "pruned": "yellow", "failed": "red", "killed": "red"}
"""A trial row's style by its status (the best trial's is bold green whatever its status)."""


def short_values(values: dict[str, Any]) -> str:
    """``lr=0.00123 kernel_sizes=5,3,3``: the last part of each key, values as
    :func:`short_value` writes them; escaped for rich, which would read ``[max]`` as markup."""
    text = " ".join(
        f"{key.rsplit('.', 1)[-1]}={short_value(value)}" for key, value in values.items()
    )
    return escape(text)


def plural(count: int, word: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


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
    table.add_row("device", f"{device}, {plural(threads, 'thread')}")
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


@dataclass(frozen=True)
class TrialColumn:
    """One column of the trials table: its header (its lines break only where it has a space)
    and its cells, never wrapped or cut."""

    header: str
    cells: list[str]
    justify: JustifyMethod = "right"


UNBOUNDED_WIDTH = 100_000
"""Wider than any table: its natural width is measured at this width (rich clamps a
measurement to the width it is given)."""


class TrialsTable:
    """Trials in the given order, one column per searched key; the best one in bold green,
    pruned ones in yellow, failed ones in red.

    Built for the width it is rendered at: numbers and the objective are never wrapped or
    cut; where the table does not fit, whole columns are left out (the caption names them),
    the last searched keys and the time first, then the earlier keys, the status, the
    epochs, the trial number, and the objective never."""

    def __init__(
        self,
        rows: Sequence[TrialRow],
        objective: str,
        title: str,
        best: TrialRow | None,
        keys: Sequence[str],
    ) -> None:
        self.title = title
        self.styles = [
            "bold green" if best is not None and row is best else STATUS_STYLES[row.status]
            for row in rows
        ]
        names = column_names(keys)
        self.columns = {
            "#": TrialColumn("#", [str(row.number) for row in rows]),
            **{
                key: TrialColumn(names[key], [short_value(row.values.get(key, "")) for row in rows])
                for key in keys
            },
            "objective": TrialColumn(
                f"valid {objective}", [score_text(row.objective) for row in rows]
            ),
            "epochs": TrialColumn("epochs", [str(row.epochs) for row in rows]),
            "time": TrialColumn("time", [_duration(row.seconds) for row in rows]),
            "status": TrialColumn("status", [row.status for row in rows], "left"),
        }
        self.kept_longest = ["objective", "#", "epochs", "status", *keys, "time"]
        """Column ids, the first kept longest."""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        unbounded = options.update_width(UNBOUNDED_WIDTH)
        shown = list(self.columns)
        table = self.table(shown)
        for dropped in reversed(self.kept_longest[1:]):
            if Measurement.get(console, unbounded, table).maximum <= options.max_width:
                break
            shown.remove(dropped)
            table = self.table(shown)
        yield table

    def table(self, shown: Sequence[str]) -> Table:
        """The table of the ``shown`` columns, in their order."""
        hidden = [self.columns[name].header for name in self.columns if name not in shown]
        caption = f"not shown at this width: {', '.join(hidden)}" if hidden else None
        table = Table(title=self.title, title_justify="left", caption=caption)
        for name in shown:
            column = self.columns[name]
            header = column.header.replace(" ", "\n")
            table.add_column(header, justify=column.justify, no_wrap=True)
        for i, style in enumerate(self.styles):
            table.add_row(*(Text(self.columns[name].cells[i]) for name in shown), style=style)
        return table


def score_text(value: float | None) -> str:
    """An objective as the tables and log lines show it: 4 decimals, ``-`` when none."""
    return "-" if value is None else f"{value:.4f}"


def top_trials_table(
    rows: Sequence[TrialRow], objective: str, n: int, keys: Sequence[str]
) -> TrialsTable:
    """The ``n`` best finished trials, best first."""
    ranked = ranked_rows(rows, objective)
    best = ranked[0] if ranked else None
    title = f"Top {min(n, len(ranked))} of {plural(len(rows), 'trial')}"
    return TrialsTable(ranked[:n], objective, title, best, keys)


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
        config: Config,
        keys: Sequence[str],
        verbose: bool = False,
    ) -> None:
        """``config`` is the search's base config: its objective, ``max_evals``, pruning,
        epochs and trials at once (the ETA's inputs)."""
        self.console = console
        self.verbose = verbose
        self.keys = list(keys)
        self.objective = config.training.objective
        self.max_evals = config.search.max_evals
        self.rule = asha_rule(config)
        self.base_epochs = config.training.epochs
        ray = config.search.engine == "ray"
        self.parallel = config.search.max_concurrent if ray else 1
        self.rows: list[TrialRow] = []
        self.epoch_seconds: list[float] = []
        """Every epoch this run trained, all trials: the ETA's time per epoch."""
        self.trained_seconds: dict[int, float] = {}
        """Each trial's epochs' time so far; the rest of a finished trial's time is overhead."""
        self.overheads: list[float] = []
        """Each finished trial's time beyond its epochs (model, checkpoint)."""
        self.running: dict[int, tuple[int, int]] = {}
        """Each trial in flight: (epochs trained, its training.epochs)."""
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
            "search", total=self.max_evals, best="-", eta="-"
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
            done = plural(len(rows), "trial")
            self.log(f"Resuming the search: {done} done, {self._best()} best so far")
        self._refresh()

    def trial_started(self, trial: TrialStart) -> TrainingObserver:
        self.trial = trial.number
        self.running[trial.number] = (0, trial.config.training.epochs)
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
        self.epoch_seconds.append(record.seconds)
        trained = self.trained_seconds.get(self.trial, 0.0)
        self.trained_seconds[self.trial] = trained + record.seconds
        self.running[self.trial] = (record.epoch, self.epochs)
        eta = self._eta()
        self.search_progress.update(self.search_task, eta=eta)
        if self.trial_task is not None:
            valid = f"epoch {record.epoch} valid {self.objective} {value:.4f}"
            self.trial_progress.update(self.trial_task, valid=valid)
            return
        self.log(
            f"trial {self.trial} epoch {record.epoch}/{self.epochs}: train loss "
            f"{record.train_loss:.4f}, valid {self.objective} {value:.4f} ({record.seconds:.1f} "
            f"s); search ETA {eta}"
        )

    def trial_ended(self, outcome: TrialOutcome) -> None:
        row = outcome.row
        was_best = best_row(self.rows, self.objective)
        self.rows.append(row)
        self.running.pop(row.number, None)
        trained = self.trained_seconds.pop(row.number, 0.0)
        self.overheads.append(max(row.seconds - trained, 0.0))
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
                f"{plural(row.epochs, 'epoch')}, {_duration(row.seconds)}{pruned}"
            )
        else:
            self.log(escape(f"trial {row.number} {row.status}: {row.note}"))
        self._refresh()

    def _best(self) -> str:
        best = best_row(self.rows, self.objective)
        return "-" if best is None or best.objective is None else f"{best.objective:.4f}"

    def _eta(self) -> str:
        """The search's time left, from this run's first epoch on: the epochs the trials in
        flight and the trials still to start are expected to train (:func:`expected_epochs`,
        which counts the pruning: a pruned trial trains a few epochs, not training.epochs)
        times this run's mean epoch time, plus each of those trials' overhead (this run's mean
        time of a finished trial beyond its epochs), over the trials trained at once. "-"
        before the first epoch ends."""
        if not self.epoch_seconds:
            return "-"
        earlier = [row.epochs for row in self.rows]
        in_flight = sum(
            expected_epochs(self.rule, epochs, done, earlier) - done
            for done, epochs in self.running.values()
        )
        reached = earlier + [done for done, _ in self.running.values()]
        to_start = max(self.max_evals - len(self.rows) - len(self.running), 0)
        epochs = in_flight + to_start * expected_epochs(self.rule, self.base_epochs, 0, reached)
        per_epoch = sum(self.epoch_seconds) / len(self.epoch_seconds)
        overhead = sum(self.overheads) / len(self.overheads) if self.overheads else 0.0
        trials = to_start + len(self.running)
        return _duration((epochs * per_epoch + trials * overhead) / self.parallel)

    def _renderable(self) -> Group:
        shown = self.rows[-VISIBLE_TRIALS:]
        best = best_row(self.rows, self.objective)
        if best is not None and best not in shown:
            shown = [best, *shown[1:]]
        title = f"Finished trials ({len(self.rows)}; the best in green)"
        table = TrialsTable(shown, self.objective, title, best, self.keys)
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
