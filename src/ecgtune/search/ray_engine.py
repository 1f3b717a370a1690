"""The Ray Tune engine (``search.engine = "ray"``): the local engine's search, from the same
config, with ``search.max_concurrent`` trials at once on this machine or on a Ray cluster.

What runs where:

- The driver (this process) holds the search: hyperopt proposes every trial through
  :class:`SeededHyperOptSearch` (Ray's ``HyperOptSearch`` fed the same expression, the base
  config as the first point, the same algorithm and the same per-trial seeds as the local
  engine, so one trial at a time draws what the local engine draws), a
  :class:`LiveConcurrencyLimiter` keeps ``max_concurrent`` trials running, and with
  ``search.pruning = "asha"`` Ray's ``ASHAScheduler`` ends trials at the rungs that
  :mod:`ecgtune.search.pruning` reproduces for the local engine.
- A worker trains one trial (:func:`run_trial`): the dataset comes once from the object store
  (``tune.with_parameters``), the trial's config is the base config with its sample in place
  and ``training.num_threads`` = its CPUs; it reports every epoch's validation figures and,
  whenever an epoch is its best so far, that epoch's model as a Ray checkpoint, so a trial
  that ASHA ends keeps its best model as a pruned trial of the local engine does. A failure
  of the trial itself (a diverged loss, a network too large) is its result, reported once;
  only a lost worker (a dead process or node) is an error, which Ray retries
  (``MAX_FAILURES``).
- Everything else happens on the driver, in :class:`RayDriver`, which Ray calls through
  :class:`DriverEvents`: it turns Ray's trial events into the :class:`TrialObserver` calls
  of the local engine (the display, one MLflow child run per trial with its epochs,
  TensorBoard), records every finished trial in ``ray_trials.json``, and copies the best
  trial's model where ``evaluate_rows`` finds it. Workers never touch the MLflow store.

Resuming: the same command after a crash, kill -9 or Ctrl-C restores Ray's experiment
(``Tuner.restore``: unfinished trials run again from their start, :class:`TrainsFromItsStart`)
and the driver skips the trials it has already recorded, so no trial gets a second finished
MLflow run. Ray pickles
its callbacks, searcher and limiter with the experiment; they hold nothing of the driver and
read it (and this run's ``max_concurrent``, ``max_evals``, ``no_progress_evals`` and
``timeout``) from :func:`attached_driver`, so a resumed search runs with the settings it was
resumed with.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.hyperopt import HyperOptSearch
from torch import nn

from ecgtune.config import Config, SearchConfig
from ecgtune.data.dataset import Dataset
from ecgtune.data.files import atomic_write
from ecgtune.errors import ConfigError, interruption
from ecgtune.metrics import improves, minimises
from ecgtune.models import build_model
from ecgtune.models.budget import check_model_budget
from ecgtune.report import load_checkpoint, save_checkpoint
from ecgtune.search.folds import fit
from ecgtune.search.loop import (
    BestTrial,
    check_best_checkpoint,
    evaluate_rows,
    rows_without_progress,
    seeded_by_trial,
    suggest_function,
)
from ecgtune.search.ray_store import RAY_DIR, RaySearchRecord, RayTrialStore
from ecgtune.search.space import SearchSpace
from ecgtune.search.store import TrialStore
from ecgtune.search.trials import (
    TrialObserver,
    TrialOutcome,
    TrialRow,
    TrialStart,
    TrialStatus,
    best_row,
)
from ecgtune.training import EpochRecord, TrainingObserver, TrainResult

NUMBER, SAMPLE = "number", "sample"
"""A Ray trial's config: its trial number (hyperopt's) and its hyperopt sample."""
EPOCH, OBJECTIVE, BEST = "epoch", "objective", "best_objective"
"""Report keys: the epoch (ASHA's time), its validation objective (ASHA's metric) and the
trial's best so far (what hyperopt is told when the trial ends, pruned or not)."""
FAILURE, FINAL, NODE = "failure", "final", "node"
MODEL_FILE = "model.pt"
MAX_FAILURES = 2
"""Retries of a trial whose worker died (a lost node, a killed process)."""
MAX_TRIALS = 10_000
"""Ray's sample count, the bound of ``search.max_evals``: the searcher ends the search."""
CONNECT_SECONDS = 5.0
"""How long a ``host:port`` ray_address may take to answer before it is refused."""
RAY_ENVIRONMENT = {
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",  # a failed trial's report has no metric
    "TUNE_DISABLE_SIGINT_HANDLER": "1",  # Ctrl-C ends the search as with the local engine
    "RAY_AIR_NEW_OUTPUT": "0",  # Tune's own tables and banners: the display shows the trials
    # Ray warns when a trial's checkpoints force snapshots of its state: wanted here (every
    # best epoch is kept, and a resumed search needs the state)
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}
"""Set on the driver before Ray starts; the user's own settings win."""

_DRIVER: ContextVar[RayDriver | None] = ContextVar("ecgtune_ray_driver", default=None)


def attached_driver() -> RayDriver:
    """The driver of the search running in this process (Ray calls back into it)."""
    driver = _DRIVER.get()
    if driver is None:
        raise RuntimeError("a Ray search event arrived with no ecgtune driver attached")
    return driver


@contextmanager
def attached(driver: RayDriver) -> Iterator[None]:
    token = _DRIVER.set(driver)
    try:
        yield
    finally:
        _DRIVER.reset(token)


# ---------------------------------------------------------------- settings and connection


def check_local_settings(search: SearchConfig) -> None:
    """What can be refused before Ray starts: GPUs asked of a machine without CUDA (when Ray
    starts here) and a ``host:port`` where nothing answers (Ray would retry for minutes)."""
    if search.gpus_per_trial and not search.ray_address and not torch.cuda.is_available():
        raise ConfigError(
            f"search.gpus_per_trial = {search.gpus_per_trial:g}: this machine has no CUDA GPU; "
            f"use 0 (CPU trials) or join a cluster with GPUs (search.ray_address)"
        )
    if search.ray_address not in ("", "auto"):
        check_reachable(search.ray_address)


def check_reachable(address: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"search.ray_address = {address!r} is not '', 'auto' or host:port (the head's "
            f"address, as `ray start --head` prints it)"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS):
            pass
    except OSError as exc:
        raise ConfigError(
            f"search.ray_address = {address!r}: nothing answers there "
            f"({exc.strerror or type(exc).__name__}); start the head with `ray start --head`, "
            f"or use '' to start Ray on this machine"
        ) from None


def connect(search: SearchConfig) -> None:
    """Start Ray here (sized to the machine) or join the cluster, then check that a trial
    fits on it: a trial no node can hold would wait forever."""
    for name, value in RAY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    address = search.ray_address or "local"
    warnings.filterwarnings("ignore", "Tip: In future versions of Ray", FutureWarning)
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"search.ray_address = {search.ray_address!r}: cannot join the Ray cluster "
            f"({first_line[:200]}); start one with `ray start --head`, or use '' to start Ray "
            f"on this machine"
        ) from None
    try:
        check_cluster_fits(search, [node for node in ray.nodes() if node.get("Alive")])
    except ConfigError:
        ray.shutdown()
        raise


def check_cluster_fits(search: SearchConfig, nodes: list[dict[str, Any]]) -> None:
    """A trial holds its CPUs and GPUs on one node: some node must have them all."""
    for key, asked in (("CPU", search.cpus_per_trial), ("GPU", search.gpus_per_trial)):
        largest = max((node["Resources"].get(key, 0.0) for node in nodes), default=0.0)
        if asked > largest:
            setting = f"search.{key.lower()}s_per_trial"
            hint = "" if key == "CPU" else " (no CUDA GPU where Ray runs?); use 0 for CPU trials"
            raise ConfigError(
                f"{setting} = {asked:g}: no node of the Ray cluster has that many {key}s (the "
                f"largest has {largest:g}), so no trial could start{hint}"
            )


def trial_threads(search: SearchConfig) -> int:
    """A trial's torch threads: the whole CPUs it holds (at least one)."""
    return max(1, math.floor(search.cpus_per_trial))


def ray_trial_config(space: SearchSpace, sample: dict[str, Any], search: SearchConfig) -> Config:
    """The trial's config: the base config with its sample in place, torch threads as many
    as its CPUs, and the CPU as its device when it holds no GPU."""
    config = space.trial_config(sample)
    training: dict[str, Any] = {"num_threads": trial_threads(search)}
    if not search.gpus_per_trial and config.training.device == "auto":
        training["device"] = "cpu"
    return config.model_copy(update={"training": config.training.model_copy(update=training)})


# --------------------------------------------------------------------------- the worker


def without_test_split(dataset: Dataset) -> Dataset:
    """What the workers get: the train and validation splits, the test split emptied, so that
    no trial can read it (and the object store holds less)."""
    return replace(dataset, test=dataset.test.take(np.arange(0, dtype=np.intp)))


class EpochReports(TrainingObserver):
    """A trial's side on the worker: every epoch's figures to Ray, with the model of every
    epoch that is the trial's best so far (by the rule of early stopping) as a checkpoint.
    With ``search.folds`` the epochs' models are fold models, not the trial's: only the
    final report carries a model."""

    def __init__(self, dataset: Dataset, checkpoint_epochs: bool) -> None:
        self.checkpoint_epochs = checkpoint_epochs
        self.class_names = dataset.class_names
        counts = dataset.train.class_counts(dataset.n_classes).tolist()
        self.train_counts = dict(zip(dataset.class_names, counts, strict=True))
        self.node = ray.get_runtime_context().get_node_id()
        self.config: Config | None = None
        self.model: nn.Module | None = None
        self.n_train = 0
        self.best: EpochRecord | None = None

    def on_train_start(self, config: Config, model: nn.Module, n_train: int) -> None:
        self.config, self.model, self.n_train = config, model, n_train

    def on_resampled(self, method: str, before: dict[str, int], after: dict[str, int]) -> None:
        self.train_counts = after

    def on_epoch_end(self, record: EpochRecord) -> None:
        assert self.config is not None and self.model is not None
        objective = self.config.training.objective
        value = record.valid_metrics[objective]
        improved = self.best is None or improves(
            value, self.best.valid_metrics[objective], objective, self.config.training.min_delta
        )
        if improved:
            self.best = record
        assert self.best is not None
        metrics = {
            EPOCH: record.epoch,
            OBJECTIVE: value,
            BEST: self.best.valid_metrics[objective],
            "best_epoch": self.best.epoch,
            "train_loss": record.train_loss,
            "adversary_loss": record.adversary_loss,
            "lr": record.lr,
            "seconds": record.seconds,
            "beats_per_second": record.beats_per_second,
            "n_train": self.n_train,
            "valid": record.valid_metrics,
            "train_counts": self.train_counts,
            NODE: self.node,
        }
        if improved and self.checkpoint_epochs:
            report_with_model(metrics, self.model, self.config, self.class_names)
        else:
            tune.report(metrics)


def report_with_model(
    metrics: dict[str, Any], model: nn.Module, config: Config, class_names: tuple[str, ...]
) -> None:
    """``tune.report`` with the model as a checkpoint (Ray copies it to its storage)."""
    with tempfile.TemporaryDirectory(prefix="ecgtune-trial-") as folder:
        save_checkpoint(Path(folder) / MODEL_FILE, model, config, class_names)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def run_trial(trial: dict[str, Any], space: SearchSpace, dataset: Dataset) -> None:
    """Ray's trainable: one trial from its sample to its last report. The trial's own failure
    is its result (reported, not raised: Ray would retry it)."""
    search = space.base.search
    reports = EpochReports(dataset, checkpoint_epochs=not search.folds)
    try:
        config = ray_trial_config(space, trial[SAMPLE], search)
        check_model_budget(config, dataset.n_classes)
        result = fit(config, dataset, reports)
    except Exception as exc:  # any failure of one trial is its result; the search goes on
        tune.report({FAILURE: f"{type(exc).__name__}: {exc}"})
        return
    final = {
        FINAL: 1,
        BEST: result.best_valid[config.training.objective],
        "best_epoch": result.best_epoch,
        "stop_reason": result.stop_reason,
        "valid": result.best_valid,
        "train_counts": result.train_counts,
    }
    if search.folds:
        report_with_model(final, result.model, config, dataset.class_names)
    else:
        tune.report(final)


class TrainsFromItsStart:
    """Mixed into Ray's trainable of :func:`run_trial` (Ray's ``__mixins__``): a trial that Ray
    runs again (its worker died, or a resumed search) trains from its first epoch without
    asking for its last checkpoint, which :func:`run_trial` never reads. Ray's own restore
    would first demand that checkpoint, and Ray may have deleted it (``num_to_keep = 1``)
    before its saved experiment caught up: with the driver killed in between, the trial
    failed three times on a folder it does not need."""

    def restore(self, checkpoint_path: Any) -> None:
        """Nothing to restore: the trial starts over, its epochs counted from one."""


run_trial.__mixins__ = (TrainsFromItsStart,)  # type: ignore[attr-defined]  # read by Ray


# --------------------------------------------------------------------- the driver's Ray side


class SeededHyperOptSearch(HyperOptSearch):
    """Ray's ``HyperOptSearch`` proposing what the local engine proposes: the space's own
    hyperopt expression, the base config first (already in hyperopt's terms: choice indices),
    ``search.algorithm`` with ``startup_evals`` random trials, each trial's draw seeded by
    ``seed`` and its number. A trial's config is ``{number, sample}``; a failed trial is
    told to hyperopt as an error, as ``fmin`` records it."""

    def __init__(self, config: Config, space: SearchSpace) -> None:
        objective = config.training.objective
        super().__init__(
            space=space.expression,
            metric=BEST,
            mode="min" if minimises(objective) else "max",
            points_to_evaluate=[space.base_point],
            n_initial_points=config.search.startup_evals,
            random_state_seed=config.seed,
        )
        self.algo: Callable[..., Any] = seeded_by_trial(suggest_function(config), config.seed)
        self.proposed = 0

    def _convert_categories_to_indices(self, config: dict[str, Any]) -> None:
        """The base point holds hyperopt's choice indices already (``space.base_point``)."""

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if not attached_driver().may_propose(self.proposed):
            return Searcher.FINISHED  # type: ignore[return-value]  # Ray's own end signal
        sample = super().suggest(trial_id)
        number, self.proposed = self.proposed, self.proposed + 1
        return {NUMBER: number, SAMPLE: sample}

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        failed = error or result is None or FAILURE in result or BEST not in result
        super().on_trial_complete(trial_id, None if failed else result, error=failed)


class LiveConcurrencyLimiter(ConcurrencyLimiter):
    """Ray's ``ConcurrencyLimiter`` with this run's ``search.max_concurrent``: Ray restores the
    limiter of the search's first run, and a resumed search may change it."""

    @property
    def max_concurrent(self) -> int:
        driver = _DRIVER.get()
        return self.first_max_concurrent if driver is None else driver.config.search.max_concurrent

    @max_concurrent.setter
    def max_concurrent(self, value: int) -> None:
        """Ray sets the first run's value, which holds until a driver is attached."""
        self.first_max_concurrent = value


class DriverEvents(tune.Callback):
    """Ray's trial events, handed to the driver attached while the search runs. It holds
    nothing: Ray pickles its callbacks with the experiment, and a resumed search brings its
    own driver (consoles, MLflow clients and files cannot be pickled)."""

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **_: Any) -> None:
        driver = attached_driver()
        driver.guarded(driver.trial_started, trial)

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **_: Any
    ) -> None:
        driver = attached_driver()
        driver.guarded(driver.trial_reported, trial, result)

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **_: Any
    ) -> None:
        driver = attached_driver()
        driver.guarded(driver.trial_completed, trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **_: Any) -> None:
        driver = attached_driver()
        driver.guarded(driver.trial_errored, trial)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **_: Any) -> None:
        driver = attached_driver()
        driver.guarded(driver.trial_recovered, trial)


def asha_scheduler(config: Config) -> ASHAScheduler | None:
    """Ray's ASHA with the rungs of ``search.pruning = "asha"`` (:mod:`ecgtune.search.pruning`
    documents the rule both engines share)."""
    search = config.search
    if search.pruning != "asha":
        return None
    return ASHAScheduler(
        time_attr=EPOCH,
        metric=OBJECTIVE,
        mode="min" if minimises(config.training.objective) else "max",
        max_t=config.training.epochs,
        grace_period=search.grace_epochs,
        reduction_factor=search.reduction_factor,
    )


def trial_dirname(trial: Trial) -> str:
    """A trial's folder in Ray's storage, named by its number."""
    return f"trial-{trial.config[NUMBER]:03d}-{trial.trial_id}"


# ------------------------------------------------------------------------------ the driver


@dataclass
class RunningTrial:
    """What the driver knows of a trial in flight: its config (None when the sample was not a
    valid config: the worker reports that failure), its epochs as reported, its end."""

    number: int
    values: dict[str, Any]
    config: Config | None
    epochs: TrainingObserver
    started: float = field(default_factory=time.perf_counter)
    history: list[EpochRecord] = field(default_factory=list)
    best_valid: dict[str, float] = field(default_factory=dict)
    best_epoch: int = 0
    train_counts: dict[str, int] = field(default_factory=dict)
    final: dict[str, Any] | None = None
    failure: str | None = None

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


class RayDriver:
    """The search on the driver: Ray's trial events to the trial observer, the record of
    finished trials (``ray_trials.json``) and the best trial's checkpoint."""

    def __init__(
        self,
        config: Config,
        space: SearchSpace,
        dataset: Dataset,
        record: RaySearchRecord,
        observer: TrialObserver,
    ) -> None:
        self.config = config
        self.space = space
        self.dataset = dataset
        self.record = record
        self.observer = observer
        self.store = RayTrialStore(config.run_dir)
        self.checkpoints = TrialStore(config.run_dir)
        self.objective = config.training.objective
        self.running: dict[str, RunningTrial] = {}
        self.started = time.monotonic()
        self.timed_out = False
        self.fatal: BaseException | None = None

    def guarded(self, handler: Callable[..., None], *args: Any) -> None:
        """Run an event handler; the first failure (a lost MLflow server, a failed write) is
        kept, to end the search with it rather than with Ray's wrapping of it."""
        try:
            handler(*args)
        except Exception as exc:
            self.fatal = self.fatal or exc
            raise

    def stop_reason(self) -> str | None:
        """Why the search is over, or None while it may go on (the local engine's rules)."""
        search = self.config.search
        done = len(self.record.rows)
        if done >= search.max_evals:
            return f"{done} trials done (search.max_evals = {search.max_evals})"
        patience = search.no_progress_evals
        if patience and rows_without_progress(self.record.rows, self.objective) >= patience:
            return f"no improvement in the last {patience} trials"
        if search.timeout is not None and time.monotonic() - self.started > search.timeout:
            self.timed_out = True
        return "search.timeout reached" if self.timed_out else None

    def may_propose(self, proposed: int) -> bool:
        """Whether a trial may start after ``proposed`` trials (those in flight included)."""
        return proposed < self.config.search.max_evals and self.stop_reason() is None

    def recorded(self, trial: Trial) -> bool:
        """A trial the record holds: Ray runs it again when it saved its state before the
        driver recorded the end; the driver has reported it and ignores it."""
        return int(trial.config[NUMBER]) in self.record.valid

    def trial_started(self, trial: Trial) -> None:
        if self.recorded(trial):
            return
        number, sample = int(trial.config[NUMBER]), trial.config[SAMPLE]
        try:
            config: Config | None = ray_trial_config(self.space, sample, self.config.search)
        except Exception:  # the worker meets the same failure and reports it
            config = None
        if config is None:
            self.running[trial.trial_id] = RunningTrial(number, {}, None, TrainingObserver())
            return
        values = self.space.values_of(config)
        epochs = self.observer.trial_started(TrialStart(number, config, values))
        self.running[trial.trial_id] = RunningTrial(number, values, config, epochs)

    def trial_reported(self, trial: Trial, result: dict[str, Any]) -> None:
        state = self.running.get(trial.trial_id)
        if state is None:
            return
        if FAILURE in result:
            state.failure = str(result[FAILURE])
        elif FINAL in result:
            state.final = result
        elif EPOCH in result and state.config is not None:
            self.epoch_reported(state, state.config, result)

    def epoch_reported(self, state: RunningTrial, config: Config, result: dict[str, Any]) -> None:
        """One epoch to the trial's training observer, as the trainer tells it locally."""
        record = EpochRecord(
            epoch=int(result[EPOCH]),
            train_loss=float(result["train_loss"]),
            valid_loss=float(result["valid"]["loss"]),
            valid_metrics={k: float(v) for k, v in result["valid"].items()},
            lr=float(result["lr"]),
            seconds=float(result["seconds"]),
            beats_per_second=float(result["beats_per_second"]),
            adversary_loss=result.get("adversary_loss"),
        )
        n_train = int(result["n_train"])
        if not state.history:
            model = build_model(config, self.dataset.n_classes)
            state.epochs.on_train_start(config, model, n_train)
        state.history.append(record)
        state.train_counts = {k: int(v) for k, v in result["train_counts"].items()}
        if int(result["best_epoch"]) == record.epoch:
            state.best_epoch, state.best_valid = record.epoch, record.valid_metrics
        state.epochs.on_epoch_start(record.epoch, math.ceil(n_train / config.training.batch_size))
        state.epochs.on_batch_end(n_train, record.train_loss)
        state.epochs.on_epoch_end(record)

    def trial_completed(self, trial: Trial) -> None:
        state = self.running.pop(trial.trial_id, None)
        if state is not None:
            self.finish(state, *self.outcome(state, trial))

    def trial_errored(self, trial: Trial) -> None:
        """Ray gave up on the trial (its worker died more than ``MAX_FAILURES`` times)."""
        state = self.running.pop(trial.trial_id, None)
        if state is not None:
            error = (str(trial.get_error() or "").strip().splitlines() or ["no error text"])[-1]
            note = f"its Ray worker failed {MAX_FAILURES + 1} times; the last error: {error}"
            self.finish(state, self.row(state, "failed", None, note), None)

    def trial_recovered(self, trial: Trial) -> None:
        """Ray runs the trial again on another worker: its run so far ends as killed (a new
        MLflow run and TensorBoard folder follow, as after a resumed search)."""
        state = self.running.pop(trial.trial_id, None)
        if state is not None:
            note = "its Ray worker was lost (a node or process died); Ray runs it again"
            self.observer.trial_ended(TrialOutcome(self.row(state, "killed", None, note)))

    def row(
        self, state: RunningTrial, status: TrialStatus, objective: float | None, note: str
    ) -> TrialRow:
        return TrialRow(
            state.number, status, state.values, objective, len(state.history), state.seconds, note
        )

    def outcome(self, state: RunningTrial, trial: Trial) -> tuple[TrialRow, TrainResult | None]:
        """The trial's row and, when it finished (in full or pruned), its result with the
        model of its best epoch."""
        checkpoint = trial.checkpoint
        if state.failure is not None or state.config is None:
            return self.row(state, "failed", None, state.failure or "invalid config"), None
        if checkpoint is None:
            return self.row(state, "failed", None, "the trial ended without a model"), None
        if state.final is not None:
            status: TrialStatus = "ok"
            best_valid = {k: float(v) for k, v in state.final["valid"].items()}
            best_epoch, reason = int(state.final["best_epoch"]), str(state.final["stop_reason"])
            pruned_at = None
        else:  # Ray ended it after an epoch: at max_t (trained in full), or at an ASHA rung
            best_valid, best_epoch = state.best_valid, state.best_epoch
            last = state.history[-1].epoch
            epochs = state.config.training.epochs
            status = "ok" if last >= epochs else "pruned"
            pruned_at = None if status == "ok" else last
            search = self.config.search
            reason = (
                f"trained the full training.epochs = {epochs}"
                if status == "ok"
                else f"pruned at epoch {last} by Ray Tune's ASHA (grace_epochs = "
                f"{search.grace_epochs}, reduction_factor = {search.reduction_factor})"
            )
        with checkpoint.as_directory() as folder:
            model, _, class_names = load_checkpoint(Path(folder) / MODEL_FILE)
            self.keep_if_best(state.number, best_valid[self.objective], Path(folder) / MODEL_FILE)
        result = TrainResult(
            model=model,
            history=state.history,
            best_epoch=best_epoch,
            best_valid=best_valid,
            stop_reason=reason,
            seconds=state.seconds,
            train_counts=state.train_counts,
            class_names=class_names,
            pruned_at=pruned_at,
        )
        return self.row(state, status, best_valid[self.objective], reason), result

    def keep_if_best(self, number: int, score: float, model_file: Path) -> None:
        """Copy the trial's model where ``evaluate_rows`` reads the best one, when it beats
        every recorded trial (ties: the earlier trial, as the local engine keeps it)."""
        best = best_row(self.record.rows, self.objective)
        if (
            best
            and best.objective is not None
            and not improves(score, best.objective, self.objective)
        ):
            return
        target = self.checkpoints.checkpoint(number)
        with atomic_write(target) as stream, model_file.open("rb") as source:
            shutil.copyfileobj(source, stream)

    def finish(self, state: RunningTrial, row: TrialRow, result: TrainResult | None) -> None:
        """Tell the observers, then record the trial (atomically) and keep only the best
        checkpoint. In this order, as the local engine: a driver killed in between leaves a
        finished MLflow run of a trial it did not record, which the resumed search closes as
        KILLED (``close_orphans``) and runs again; recorded first, the run would stay
        RUNNING."""
        self.observer.trial_ended(TrialOutcome(row, result))
        self.record.add(row, dict(result.best_valid) if result else {})
        self.store.save(self.record)
        best = best_row(self.record.rows, self.objective)
        self.checkpoints.keep_only_checkpoint(best.number if best else None)

    def end_running(self, reason: str) -> None:
        """The search ends with trials in flight (Ctrl-C, a failure): each ends as killed for
        every observer; a second failure here must not hide the first."""
        for state in list(self.running.values()):
            try:
                self.observer.trial_ended(TrialOutcome(self.row(state, "killed", None, reason)))
            except Exception:
                continue
        self.running.clear()


# ------------------------------------------------------------------------- the engine


class RaySearch:
    """The Ray engine as ``tune`` drives it: the saved search, a Ray session, the trials."""

    def __init__(self, config: Config, space: SearchSpace) -> None:
        check_local_settings(config.search)
        self.config = config
        self.space = space
        self.store = RayTrialStore(config.run_dir)
        self.path = self.store.path
        self.record: RaySearchRecord | None = None

    def set_aside(self) -> Path | None:
        return self.store.set_aside()

    def load(self) -> dict[str, Any] | None:
        """The saved search's metadata, or None when there is none."""
        objective = self.config.training.objective
        checkpoints = TrialStore(self.config.run_dir)
        self.record = self.store.load(
            lambda record: check_best_checkpoint(record.rows, objective, checkpoints)
        )
        return None if self.record is None else self.record.metadata

    def start(self, metadata: dict[str, Any]) -> None:
        self.record = RaySearchRecord(metadata)
        self.store.save(self.record)

    def rows(self) -> list[TrialRow]:
        """The finished trials in trial order (they finish in any order)."""
        assert self.record is not None
        return sorted(self.record.rows, key=lambda row: row.number)

    @contextmanager
    def session(self) -> Iterator[None]:
        """Ray, started here or joined, for the whole search; stopped (or left) at its end
        whatever happens, so no Ray process outlives the command."""
        connect(self.config.search)
        try:
            yield
        finally:
            ray.shutdown()

    def description(self) -> str:
        search = self.config.search
        resources = ray.cluster_resources() if ray.is_initialized() else {}
        nodes = len([node for node in ray.nodes() if node.get("Alive")]) if resources else 0
        where = (
            f"Ray on this machine ({resources.get('CPU', 0):g} CPUs)"
            if not search.ray_address
            else f"the Ray cluster at {search.ray_address} ({nodes} nodes, "
            f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs)"
        )
        return (
            f"ray: up to {search.max_concurrent} trials at once, {search.cpus_per_trial:g} CPUs "
            f"and {search.gpus_per_trial:g} GPUs each, on {where}"
        )

    def experiment_path(self) -> str:
        assert self.record is not None
        storage = self.config.search.ray_storage or str((self.config.run_dir / RAY_DIR).resolve())
        return f"{storage.rstrip('/')}/{self.record.metadata['search_id']}"

    def run(self, dataset: Dataset, observer: TrialObserver) -> str:
        """Ray Tune until ``max_evals`` trials (earlier ones included), the timeout or
        ``no_progress_evals`` trials without improvement; returns why the search stopped."""
        assert self.record is not None
        driver = RayDriver(self.config, self.space, dataset, self.record, observer)
        if reason := driver.stop_reason():
            return reason
        # Tune starts one trial at a time when a searcher proposes them (so that it learns
        # from the first ones); the limiter already caps them, and a trial's worker takes
        # seconds to start: let them start together
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(self.config.search.max_concurrent)
        with attached(driver):
            try:
                self.tuner(dataset).fit()
            except KeyboardInterrupt as exc:
                driver.end_running(interruption(exc))
                raise
            except Exception as exc:
                driver.end_running(f"{type(exc).__name__}: {exc}")
                raise driver.fatal or exc from None
            if driver.fatal is not None:
                driver.end_running(f"{type(driver.fatal).__name__}: {driver.fatal}")
                raise driver.fatal
            return driver.stop_reason() or (
                "Ray Tune proposes no more trials: its saved experiment had ended (a Ray search "
                "cannot be extended once it ended; --fresh starts over)"
            )

    def tuner(self, dataset: Dataset) -> tune.Tuner:
        """A new Ray experiment, or the saved one restored (unfinished trials run again)."""
        search = self.config.search
        resources = {"cpu": search.cpus_per_trial, "gpu": search.gpus_per_trial}
        workers = without_test_split(dataset)
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, space=self.space, dataset=workers), resources
        )
        path = self.experiment_path()
        if tune.Tuner.can_restore(path):
            return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
        if self.rows():  # a new experiment would propose trial 0 again
            raise ConfigError(
                f"search.ray_storage = {search.ray_storage!r}: Ray's saved experiment of this "
                f"search is not in {path}; move it there (Ray restores it from anywhere), set "
                f"ray_storage back, or start over with --fresh"
            )
        storage, _, name = path.rpartition("/")
        searcher = LiveConcurrencyLimiter(
            SeededHyperOptSearch(self.config, self.space), max_concurrent=search.max_concurrent
        )
        return tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=asha_scheduler(self.config),
                num_samples=MAX_TRIALS,
                trial_dirname_creator=trial_dirname,
                # a new worker process per trial costs about a second and a half (Python, torch
                # and ecgtune imported again): a worker trains one trial after another
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                callbacks=[DriverEvents()],
                failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=0,
            ),
        )

    def evaluate(self, dataset: Dataset, provenance: dict[str, Any]) -> BestTrial:
        assert self.record is not None
        store = TrialStore(self.config.run_dir)
        return evaluate_rows(
            self.config, dataset, self.rows(), self.record.valid, store, provenance
        )
