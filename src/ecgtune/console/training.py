"""What a training run shows in the terminal: model summary, a progress bar per epoch, one
line per finished epoch, and the per-class metrics table."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table
from torch import nn

from ecgtune.config import Config
from ecgtune.metrics import ClassificationMetrics
from ecgtune.models.summary import model_summary
from ecgtune.training import EpochRecord, TrainingObserver, TrainResult


class TrainingDisplay(TrainingObserver):
    """Prints the run as it goes: a live bar per epoch (beats/s, loss, validation objective)
    when ``progress`` is on, and always one line per epoch and the resampled class counts."""

    def __init__(self, console: Console, progress: bool = True, summary: bool = True) -> None:
        self.console = console
        self.show_progress = progress and console.is_terminal
        self.show_summary = summary
        self.objective = "macro_f1"
        self.epochs = 0
        self.n_train = 0
        self.last_objective = "-"
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.epoch_started = 0.0
        self.beats_done = 0

    def on_train_start(self, config: Config, model: nn.Module, n_train: int) -> None:
        self.objective = config.training.objective
        self.epochs = config.training.epochs
        self.n_train = n_train
        if self.show_summary:
            self.console.print(model_summary(model, config))
        self.console.print(
            f"Training on {n_train} beats, at most {self.epochs} epochs, early stopping on "
            f"validation {self.objective}"
        )

    def on_resampled(self, method: str, before: dict[str, int], after: dict[str, int]) -> None:
        changes = ", ".join(f"{name} {before[name]} -> {after[name]}" for name in before)
        self.console.print(f"Train split resampled ({method}): {changes}")

    def on_epoch_start(self, epoch: int, n_batches: int) -> None:
        self.epoch_started, self.beats_done = time.perf_counter(), 0
        if not self.show_progress:
            return
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} beats/s  loss {task.fields[loss]}"),
            TextColumn("valid {task.fields[objective]}"),
            console=self.console,
            transient=True,
        )
        self.task = self.progress.add_task(
            "train",
            total=self.n_train,
            epoch=f"{epoch}/{self.epochs}",
            rate="-",
            loss="-",
            objective=f"{self.objective} {self.last_objective}",
        )
        self.progress.start()

    def on_batch_end(self, beats: int, loss: float) -> None:
        self.beats_done += beats
        if self.progress is None or self.task is None:
            return
        rate = self.beats_done / max(time.perf_counter() - self.epoch_started, 1e-9)
        self.progress.update(self.task, advance=beats, rate=f"{rate:.0f}", loss=f"{loss:.4f}")

    def on_epoch_end(self, record: EpochRecord) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        value = record.valid_metrics[self.objective]
        self.last_objective = f"{value:.4f}"
        adversary = (
            "" if record.adversary_loss is None else f"adversary loss {record.adversary_loss:.4f}  "
        )
        self.console.print(
            f"epoch {record.epoch}/{self.epochs}  train loss {record.train_loss:.4f}  {adversary}"
            f"valid loss {record.valid_loss:.4f}  valid {self.objective} {value:.4f}  "
            f"lr {record.lr:.2g}  {record.beats_per_second:.0f} beats/s  {record.seconds:.1f} s"
        )

    def on_train_end(self, result: TrainResult) -> None:
        self.console.print(
            f"Best epoch {result.best_epoch}: valid {self.objective} "
            f"{result.best_valid[self.objective]:.4f} ({result.stop_reason}; "
            f"{result.seconds:.0f} s)"
        )


def metrics_table(metrics: ClassificationMetrics, title: str) -> Table:
    """Per-class precision, recall, F1, specificity and support, then accuracy and macro rows.

    Absent classes (no beats in the split) read "absent" and are outside the macro averages.
    """
    table = Table(title=title, title_justify="left")
    for column in ("class", "precision", "recall", "F1", "specificity", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for item in metrics.per_class:
        figures = [item.precision, item.recall, item.f1, item.specificity]
        cells = [_figure(value) for value in figures] if item.support else ["absent"] * 4
        table.add_row(item.name, *cells, str(item.support))
    table.add_section()
    table.add_row("accuracy", "", "", _figure(metrics.accuracy), "", str(metrics.n_beats))
    table.add_row(
        "macro avg",
        _figure(metrics.macro_precision),
        _figure(metrics.macro_recall),
        _figure(metrics.macro_f1),
        "",
        str(metrics.n_beats),
    )
    table.add_row("balanced accuracy", "", _figure(metrics.balanced_accuracy), "", "", "")
    if metrics.absent_classes:
        table.caption = (
            f"absent from this split: {', '.join(metrics.absent_classes)} "
            f"(left out of the macro averages)"
        )
    return table


def _figure(value: float | None) -> str:
    """Four decimals; "-" where a figure is undefined (specificity of the only class)."""
    return "-" if value is None else f"{value:.4f}"
