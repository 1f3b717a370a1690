"""TensorBoard event files: one run directory per training run, scalars per epoch.

``tensorboard --logdir <tracking.tensorboard_dir>`` shows every run side by side. Tags:
``train/loss``, ``train/lr`` (the lr the epoch started with), ``train/beats_per_second`` and
``valid/<metric>`` for every validation figure (``valid/loss``, ``valid/macro_f1``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

if TYPE_CHECKING:
    from ecgtune.training import EpochRecord


def timestamped_run_dir(root: Path, name: str) -> Path:
    """A new directory ``root/<name>-<YYYYmmdd-HHMMSS>`` for one run."""
    return fresh_directory(root / f"{name}-{datetime.now():%Y%m%d-%H%M%S}")


def fresh_directory(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``... where it exists: a run never writes into the
    event files of another (created, with its parents)."""
    candidate, attempt = path, 1
    while candidate.exists():
        attempt += 1
        candidate = path.with_name(f"{path.name}-{attempt}")
    candidate.mkdir(parents=True)
    return candidate


def open_writer(run_dir: Path) -> SummaryWriter:
    """An event writer for one run; close it when the run ends (flushes the file)."""
    return SummaryWriter(log_dir=str(run_dir))


def epoch_scalars(record: EpochRecord) -> dict[str, float]:
    """Tag -> value of everything logged for one epoch."""
    scalars = {
        "train/loss": record.train_loss,
        "train/lr": record.lr,
        "train/beats_per_second": record.beats_per_second,
    }
    scalars.update({f"valid/{name}": value for name, value in record.valid_metrics.items()})
    return scalars


def log_epoch(writer: SummaryWriter, record: EpochRecord) -> None:
    """Write one epoch's scalars at step ``record.epoch``."""
    for tag, value in epoch_scalars(record).items():
        writer.add_scalar(tag, value, global_step=record.epoch)


def log_hparams(run_dir: Path, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
    """Record a finished run's hyperparameters and final figures for TensorBoard's HParams tab,
    which then lists every run under the log directory side by side (one session per run).

    Written into the run's own directory (torch's ``add_hparams`` would open a sub-run); each
    metric is also a scalar of the run, which is where the HParams tab reads its value. Values
    that are not numbers, strings or bools (per-stage lists) are shown as text.
    """
    plain = {
        key: value if isinstance(value, bool | int | float | str) else str(value)
        for key, value in hparams.items()
    }
    summaries = hparams_summary(plain, dict(metrics))  # type: ignore[no-untyped-call]
    writer = open_writer(run_dir)
    try:
        for summary in summaries:
            writer._get_file_writer().add_summary(summary)  # type: ignore[no-untyped-call]
        for tag, value in metrics.items():
            writer.add_scalar(tag, value)
    finally:
        writer.close()
