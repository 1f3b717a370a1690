"""The trials on the driver: Ray's trial events (:class:`DriverEvents`) handed to
:class:`RayDriver`, which turns them into the local engine's trial lifecycle (the
:class:`TrialObserver` calls), records every finished trial in ``ray_trials.json`` and keeps
the best trial's checkpoint."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.experiment import Trial

from ecgtune.config import Config
from ecgtune.data.dataset import Dataset
from ecgtune.data.files import atomic_write
from ecgtune.metrics import improves
from ecgtune.models import build_model
from ecgtune.report import load_checkpoint
from ecgtune.search.loop import rows_without_progress
from ecgtune.search.ray.trial import (
    EPOCH,
    FAILURE,
    FINAL,
    MODEL_FILE,
    NUMBER,
    SAMPLE,
    ray_trial_config,
)
from ecgtune.search.ray_store import RaySearchRecord, RayTrialStore
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

MAX_FAILURES = 2
"""Retries of a trial whose worker died (a lost node, a killed process)."""

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
