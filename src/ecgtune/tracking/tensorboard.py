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
the HParams tab and ends every trial's session with its status.

What the HParams tab needs to keep every trial: a choice is a discrete domain of its options
as text (TensorBoard prints every number with 5 digits, ``16.000``; text shows ``16``), a
range an interval; each entry of a per-stage list is its own key, and a key a trial does not
use (``model.channels[3]`` of a 3-stage network, a key of a sub-space it did not open) holds
:data:`UNUSED`, one of its domain's values, so the default filter keeps the trial. The
searched scalars come first (ranges, then choices, then ``trial.status``, then the per-stage
entries) and the first five of them are the ones TensorBoard ticks when it opens. Every
trial's session ends with TensorBoard's status: success for a finished trial (trained in full
or pruned: the ``trial.status`` key tells them apart), failure for a failed or killed one.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.plugins.hparams import summary_v2 as hp
from torch.utils.tensorboard import SummaryWriter

from ecgtune.config import Distribution
from ecgtune.search.space import SearchSpace
from ecgtune.search.trials import TrialObserver, TrialOutcome, TrialStart, TrialStatus
from ecgtune.training import EpochRecord, TrainingObserver

UNUSED = "-"
"""The HParams value of a searched key a trial does not use."""
SHOWN_KEYS = 5
"""The HParams keys TensorBoard ticks when it opens."""
STATUS_KEY = "trial.status"
"""The HParams key holding the trial's status (ok, pruned, failed, killed)."""
SESSION_STATUS: dict[TrialStatus, int] = {
    "ok": api_pb2.STATUS_SUCCESS,
    "pruned": api_pb2.STATUS_SUCCESS,
    "failed": api_pb2.STATUS_FAILURE,
    "killed": api_pb2.STATUS_FAILURE,
}
"""TensorBoard's session status of a trial by its status (TensorBoard has no "pruned")."""


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
    """One event directory per trial under ``root``; every ended trial also gets its session
    in the HParams tab: its searched values, its status and, when it finished, its best
    objective (at its best epoch). A trial that runs again after the search was killed
    replaces its stale directory instead of leaving it beside the new one. The searched keys
    and their domains are declared once, in ``root``."""

    def __init__(self, root: Path, objective: str, space: SearchSpace) -> None:
        self.root = root
        self.metric = f"best/valid_{objective}"
        self.open: dict[int, TensorBoardEpochs] = {}
        self.specs = hparam_specs(space)
        root.mkdir(parents=True, exist_ok=True)
        metric = hp.Metric(self.metric, display_name=f"valid {objective}")
        experiment = hp.hparams_config_pb(list(self.specs.values()), [metric])
        write_summary(root, shown_first(experiment, list(self.specs)[:SHOWN_KEYS]))

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
        values = session_values(self.specs, {**row.values, STATUS_KEY: row.status})
        file_writer = epochs.writer._get_file_writer()  # type: ignore[no-untyped-call]
        file_writer.add_summary(hp.hparams_pb(values, trial_id=f"trial-{row.number:03d}"))
        if row.objective is not None and result is not None:
            epochs.writer.add_scalar(self.metric, row.objective, global_step=result.best_epoch)
        file_writer.add_summary(session_end(SESSION_STATUS[row.status]))
        epochs.close()


def hparam_specs(space: SearchSpace) -> dict[str, hp.HParam]:
    """Every searched key with its domain, by name: the scalars first (ranges, then choices),
    then the trial's status, then each entry of a per-stage list as its own key. A key a
    trial may not use (a per-stage entry, a key of a sub-space) has :data:`UNUSED` among its
    discrete values."""
    scalars: dict[str, hp.HParam] = {}
    stages: dict[str, hp.HParam] = {}
    for entry in space.entries:
        distribution = entry.distribution
        if distribution.each is not None:
            for index in range(space.list_lengths[entry.key]):
                name = f"{entry.key}[{index}]"
                stages.setdefault(name, hp.HParam(name, hparam_domain(distribution.each, True)))
        else:
            domain = hparam_domain(distribution, bool(entry.opened_by))
            scalars.setdefault(entry.key, hp.HParam(entry.key, domain))
    ordered = sorted(scalars.values(), key=lambda spec: isinstance(spec.domain, hp.Discrete))
    status = hp.HParam(STATUS_KEY, hp.Discrete(list(SESSION_STATUS)))
    return {spec.name: spec for spec in [*ordered, status, *stages.values()]}


def hparam_domain(distribution: Distribution, optional: bool = False) -> hp.Domain | None:
    """A choice's options as text (with :data:`UNUSED` when the key is ``optional``), an
    interval for a range, none for ``normal`` (unbounded)."""
    if distribution.choice is not None:
        options = [hparam_text(option) for option in distribution.choice]
        return hp.Discrete([*options, UNUSED] if optional else options)
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


def session_values(specs: Mapping[str, hp.HParam], values: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's value of every declared key, in the kind its domain holds: text for a
    discrete domain, a number for an interval, :data:`UNUSED` for a key it does not use."""
    flat = flat_values(values)
    return {
        name: (
            UNUSED
            if name not in flat
            else (
                hparam_text(flat[name])
                if isinstance(spec.domain, hp.Discrete)
                else hparam_value(flat[name])
            )
        )
        for name, spec in specs.items()
    }


def hparam_text(value: Any) -> str:
    """A choice's option as the HParams tab shows it: ``16``, ``true``, ``focal``, ``[3, 5]``."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def hparam_value(value: Any) -> bool | int | float | str:
    """What the HParams tab can show: numbers, strings and bools as they are, others as text."""
    return value if isinstance(value, bool | int | float | str) else str(value)


def session_end(status: int) -> Summary:
    """The summary that ends a trial's HParams session with TensorBoard's ``status``."""
    end = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
    summary = Summary()
    summary.value.add(
        tag=metadata.SESSION_END_INFO_TAG,
        metadata=metadata.create_summary_metadata(
            plugin_data_pb2.HParamsPluginData(session_end_info=end)
        ),
        tensor=metadata.NULL_TENSOR,
    )
    return summary


def shown_first(experiment: Summary, names: Sequence[str]) -> Summary:
    """The HParams experiment with ``names`` marked as keys whose values differ between
    trials: TensorBoard lists those first (then by name) and ticks the first five; unmarked,
    it would tick the first five by name (``model.channels[0]`` ... before ``training.lr``)."""
    value = experiment.value[0]
    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in names
    value.metadata.plugin_data.content = data.SerializeToString()
    return experiment


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
