""":class:`RaySearch`, the Ray engine as ``tune`` drives it: the saved search, a Ray
session, and Ray's ``Tuner`` (a new experiment, or the saved one restored) running the
trials with the driver attached."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.experiment import Trial

from ecgtune.config import Config
from ecgtune.data.dataset import Dataset
from ecgtune.errors import ConfigError, interruption
from ecgtune.search.loop import BestTrial, check_best_checkpoint, evaluate_rows
from ecgtune.search.ray.cluster import check_local_settings, connect
from ecgtune.search.ray.driver import MAX_FAILURES, DriverEvents, RayDriver, attached
from ecgtune.search.ray.searcher import LiveConcurrencyLimiter, SeededHyperOptSearch, asha_scheduler
from ecgtune.search.ray.trial import NUMBER, run_trial, without_test_split
from ecgtune.search.ray_store import RAY_DIR, RaySearchRecord, RayTrialStore
from ecgtune.search.space import SearchSpace
from ecgtune.search.store import TrialStore
from ecgtune.search.trials import TrialObserver, TrialRow

MAX_TRIALS = 10_000
"""Ray's sample count, the bound of ``search.max_evals``: the searcher ends the search."""


def trial_dirname(trial: Trial) -> str:
    """A trial's folder in Ray's storage, named by its number."""
    return f"trial-{trial.config[NUMBER]:03d}-{trial.trial_id}"


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
