"""TensorBoard event files: one run directory per training run or trial, scalars per epoch,
and each trial's hyperparameters for the HParams tab.

``tensorboard --logdir <tracking.tensorboard_dir>`` shows every run side by side. Tags:
``train/loss`` (the classification loss), ``train/adversary_loss`` (with
``training.patient_adversary``), ``train/lr`` (the lr the epoch started with),
``train/beats_per_second`` and ``valid/<metric>`` for every validation figure
(``valid/loss``, ``valid/macro_f1``, ...).
:class:`TensorBoardEpochs` is a training observer (the trainer knows no writer);
:class:`TensorBoardTrials` gives every trial of a search its own short-named directory
(``<experiment>/<MMDD-HHMMSS>/trial-003``), declares every searched key with its domain for
the HParams tab (discrete values for a choice, an interval for a range; each entry of a
per-stage list as its own key) and logs the best validation figure at the best epoch.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import summary_v2 as hp
from torch.utils.tensorboard import SummaryWriter

from ecgtune.config import Distribution
from ecgtune.search.space import SearchSpace
from ecgtune.search.trials import TrialObserver, TrialOutcome, TrialStart
from ecgtune.training import EpochRecord, TrainingObserver


def search_tensorboard_root(tensorboard_dir: Path, experiment: str, search_id: str) -> Path:
    """A search's folder: ``<experiment>/<MMDD-HHMMSS>``, short enough that run names fit
    TensorBoard's legends (``search_id`` is ``search-YYYYmmdd-HHMMSS``)."""
    started = datetime.strptime(search_id, "search-%Y%m%d-%H%M%S")
    return tensorboard_dir / experiment / f"{started:%m%d-%H%M%S}"


def trial_tensorboard_dir(root: Path, number: int) -> Path:
    """Where a trial's event files go: one directory per trial number."""
    return root / f"trial-{number:03d}"


def open_writer(run_dir: Path) -> SummaryWriter:
    """An event writer for one run; close it when the run ends (flushes the file)."""
    return SummaryWriter(log_dir=str(run_dir))


class TensorBoardEpochs(TrainingObserver):
    """Writes one training run's scalars per epoch into its own directory, in one event file;
    whoever made it calls :meth:`close` (flushes the file) once the run's last summary is in,
    whether the run finished or failed."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.writer = open_writer(run_dir)

    def on_epoch_end(self, record: EpochRecord) -> None:
        log_epoch(self.writer, record)

    def close(self) -> None:
        self.writer.close()


class TensorBoardTrials(TrialObserver):
    """One event directory per trial under ``root``; a finished trial also gets its searched
    values and its best objective (at its best epoch) in the HParams tab. A trial that runs
    again after the search was killed replaces its stale directory instead of leaving it
    beside the new one. The searched keys and their domains are declared once, in ``root``."""

    def __init__(self, root: Path, objective: str, space: SearchSpace) -> None:
        self.root = root
        self.metric = f"best/valid_{objective}"
        self.open: dict[int, TensorBoardEpochs] = {}
        root.mkdir(parents=True, exist_ok=True)
        metric = hp.Metric(self.metric, display_name=f"valid {objective}")
        write_summary(root, hp.hparams_config_pb(hparam_specs(space), [metric]))

    def trial_started(self, trial: TrialStart) -> TrainingObserver:
        run_dir = trial_tensorboard_dir(self.root, trial.number)
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        self.open[trial.number] = TensorBoardEpochs(run_dir)
        return self.open[trial.number]

    def trial_ended(self, outcome: TrialOutcome) -> None:
        epochs = self.open.pop(outcome.row.number, None)
        if epochs is None:
            return
        row, result = outcome.row, outcome.result
        if row.objective is not None and result is not None:
            values = {key: hparam_value(value) for key, value in flat_values(row.values).items()}
            session = hp.hparams_pb(values, trial_id=f"trial-{row.number:03d}")
            epochs.writer._get_file_writer().add_summary(session)  # type: ignore[no-untyped-call]
            epochs.writer.add_scalar(self.metric, row.objective, global_step=result.best_epoch)
        epochs.close()


def hparam_specs(space: SearchSpace) -> list[hp.HParam]:
    """Every searched key with its domain; an ``each`` list as one key per entry."""
    specs: dict[str, hp.HParam] = {}
    for entry in space.entries:
        distribution = entry.distribution
        if distribution.each is not None:
            for index in range(space.list_lengths[entry.key]):
                name = f"{entry.key}[{index}]"
                specs.setdefault(name, hp.HParam(name, hparam_domain(distribution.each)))
        else:
            specs.setdefault(entry.key, hp.HParam(entry.key, hparam_domain(distribution)))
    return list(specs.values())


def hparam_domain(distribution: Distribution) -> hp.Domain | None:
    """Discrete values for a choice (as text when they mix kinds or are lists), an interval
    for a range, none for ``normal`` (unbounded)."""
    if distribution.choice is not None:
        options = distribution.choice
        kinds = {type(option) for option in options}
        plain = kinds <= {int, float} or kinds in ({bool}, {str})
        return hp.Discrete(options if plain else [hparam_value(o) for o in options])
    if distribution.randint is not None:
        low, high = distribution.randint
        return hp.IntInterval(low, high - 1)
    if distribution.normal is not None:
        return None
    low, high, *_ = getattr(distribution, distribution.kind)
    return hp.RealInterval(float(low), float(high))


def flat_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Searched values with each list entry as its own key (``model.kernel_sizes[0]``), as
    :func:`hparam_specs` declares them."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, list):
            flat.update({f"{key}[{index}]": item for index, item in enumerate(value)})
        else:
            flat[key] = value
    return flat


def hparam_value(value: Any) -> bool | int | float | str:
    """What the HParams tab can show: numbers, strings and bools as they are, others as text."""
    return value if isinstance(value, bool | int | float | str) else str(value)


def write_summary(run_dir: Path, summary: Summary) -> None:
    """One summary protobuf (the HParams plugin's experiment) into a directory's own event
    file."""
    writer = open_writer(run_dir)
    try:
        writer._get_file_writer().add_summary(summary)  # type: ignore[no-untyped-call]
    finally:
        writer.close()


def epoch_scalars(record: EpochRecord) -> dict[str, float]:
    """Tag -> value of everything logged for one epoch."""
    scalars = {
        "train/loss": record.train_loss,
        "train/lr": record.lr,
        "train/beats_per_second": record.beats_per_second,
    }
    if record.adversary_loss is not None:
        scalars["train/adversary_loss"] = record.adversary_loss
    scalars.update({f"valid/{name}": value for name, value in record.valid_metrics.items()})
    return scalars


def log_epoch(writer: SummaryWriter, record: EpochRecord) -> None:
    """Write one epoch's scalars at step ``record.epoch``."""
    for tag, value in epoch_scalars(record).items():
        writer.add_scalar(tag, value, global_step=record.epoch)
