"""The local search engine: hyperopt's ``fmin`` runs the trials one after another in this
process.

:func:`run_trials` is the engine. :class:`TrialRunner` is the objective ``fmin`` calls: one
trial from a hyperopt sample to a result document, told to a :class:`TrialObserver` (the
display, MLflow and TensorBoard) as it starts and ends. After every trial
:class:`AfterEachTrial` saves the trials atomically, so a killed search loses at most the
trial in flight, and stops the search after ``max_evals`` finished trials or
``no_progress_evals`` trials without improvement. A trial that raises or diverges is recorded
as failed, with its reason, and the search goes on; Ctrl-C, SIGTERM, a lost tracking server
or a failed write end the search (the caller closes its runs).

Every trial's point is drawn with a seed made of ``seed`` and the trial's number, so a search
resumed after kill -9 draws the trial that was in flight again with the same values.
:func:`evaluate_best` evaluates the best trial's saved model once on the test split.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from hyperopt import STATUS_FAIL, STATUS_OK, Trials, anneal, fmin, rand, tpe
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_RUNNING
from hyperopt.exceptions import AllTrialsFailed
from hyperopt.fmin import generate_trials_to_calculate

from ecgtune.config import Config, config_toml
from ecgtune.data.dataset import Dataset
from ecgtune.data.files import atomic_write
from ecgtune.dotted import flatten
from ecgtune.errors import ConfigError, TrackingError, UserError, interruption
from ecgtune.metrics import ClassificationMetrics, minimises
from ecgtune.models.budget import check_model_budget
from ecgtune.report import CHECKPOINT_NAME, load_checkpoint, save_checkpoint, write_report
from ecgtune.search.folds import fit
from ecgtune.search.pruning import TrialPruner
from ecgtune.search.space import SearchSpace, flatten_sample
from ecgtune.search.store import (
    METADATA,
    TrialsFileError,
    TrialStore,
    checked_figures,
    checked_row,
    invalid,
    member,
)
from ecgtune.search.trials import (
    TrialObserver,
    TrialOutcome,
    TrialRow,
    TrialStart,
    TrialStatus,
    best_row,
)
from ecgtune.training import (
    EpochRecord,
    ObserverFanOut,
    TrainingObserver,
    TrainResult,
    evaluate_test_split,
    resolve_device,
)

BEST_CONFIG = "best_config.toml"
REPORT = "report.json"
FIGURE = "confusion_matrix.png"
ENGINE_KEYS = (
    "engine",
    "max_concurrent",
    "cpus_per_trial",
    "gpus_per_trial",
    "ray_address",
    "ray_storage",
)
"""``search.*`` keys of the engine: where the trials run, not what they compute (each engine
keeps its own saved search, so a search is resumed by the engine that made it)."""
SETTINGS_KEYS = (
    "algorithm",
    "max_evals",
    "timeout",
    "no_progress_evals",
    "startup_evals",
    *ENGINE_KEYS,
)
"""``search.*`` keys that may change between runs of one search (the rest may not): how many
trials and when to stop, and where and how many at once they run."""
FREE_KEYS = (
    "tracking.",
    "training.device",
    "training.num_threads",
    "data.raw_dir",
    "data.cache_dir",
    "data.base_url",
    *(f"search.{key}" for key in SETTINGS_KEYS),
)
"""Config keys that do not change what a trial computes: a resumed search may change them."""
FATAL_ERRORS = (TrackingError, OSError)
"""Failures that end the whole search (a lost tracking server, a write that failed), not just
the trial: the next trial would meet them too."""


def search_identity(config: Config) -> dict[str, Any]:
    """What a saved search must share with the config that resumes it: every key that
    changes what a trial computes (the space, the objective, the base config, the data)."""
    raw = config.model_dump(mode="json")
    space = raw["search"].pop("space")
    flat = flatten(raw)
    flat["search.space"] = json.dumps(space, sort_keys=True)
    return {key: value for key, value in flat.items() if not key.startswith(FREE_KEYS)}


def check_same_search(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse to resume a search with a config that changes what a trial computes; a key the
    saved search predates counts as its default (a newer ecgtune resumes older searches)."""
    defaults = search_identity(Config())
    changed = sorted(
        key
        for key in saved.keys() | current.keys()
        if saved.get(key, defaults.get(key)) != current.get(key, defaults.get(key))
    )
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise ConfigError(
            f"{path} holds a search made with different {', '.join(changed[:3])}{more}: "
            f"resume it with the config it was made with, or start over with --fresh "
            f"(the old trials are kept)"
        )


def check_saved_trials(trials: Trials, space: SearchSpace, store: TrialStore) -> None:
    """A well-formed ``trials.json`` checked against the search that resumes it, before any
    work: every trial's sampled values drawable by the space (a choice index within its
    list, a number within its range), every finished trial's result of ecgtune's kinds (its
    row, its validation figures), and the best trial's checkpoint usable."""
    for index, doc in enumerate(trials._dynamic_trials):
        where = f"trials[{index}]"
        for label, values in doc["misc"]["vals"].items():
            for value in values:
                if problem := space.saved_value_problem(label, value):
                    raise TrialsFileError(f"{where}.misc.vals.{label} = {value!r} {problem}")
        if doc["state"] == JOB_STATE_DONE:
            check_trial_result(doc["result"], doc["tid"], f"{where}.result")
    check_best_checkpoint(finished_rows(trials), space.base.training.objective, store)


def check_trial_result(result: dict[str, Any], tid: int, where: str) -> None:
    """What :class:`TrialRunner` returned for the trial: its row (of its number, with a status
    that agrees with hyperopt's) and, for a finished trial, its validation figures."""
    row = checked_row(member(result, "row", f"{where}.", dict), f"{where}.row")
    if row.number != tid:
        raise invalid(f"{where}.row.number", row.number, f"the trial's tid {tid}")
    if row.ok != (result["status"] == STATUS_OK):
        expected = STATUS_OK if row.ok else STATUS_FAIL
        raise invalid(
            f"{where}.status",
            result["status"],
            f"{expected!r}, as its row's status is {row.status}",
        )
    if row.ok:
        checked_figures(member(result, "valid", f"{where}.", dict), where)


def check_best_checkpoint(rows: list[TrialRow], objective: str, store: TrialStore) -> None:
    """The best trial's model, loaded now: the search evaluates it at its end (and a resumed
    search keeps it while no trial beats it), so a missing or unusable one is refused when
    the saved search is read, not after trials have trained."""
    best = best_row(rows, objective)
    if best is None:
        return
    try:
        load_checkpoint(store.checkpoint(best.number))
    except UserError as exc:
        raise TrialsFileError(
            f"the best trial ({best.number}) has no usable model: {exc}"
        ) from None


def new_trials(space: SearchSpace, metadata: dict[str, Any]) -> Trials:
    """Trials holding the base config as the first point to evaluate, and the search's
    metadata (identity, id, tracking references)."""
    trials = generate_trials_to_calculate([space.base_point])
    trials.refresh()
    trials.attachments[METADATA] = metadata
    return trials


def new_search_id() -> str:
    return f"search-{datetime.now():%Y%m%d-%H%M%S}"


def done_docs(trials: Trials) -> list[dict[str, Any]]:
    """The finished trials' documents (ok or failed), in trial order."""
    return [doc for doc in trials.trials if doc["state"] == JOB_STATE_DONE]


def finished_rows(trials: Trials) -> list[TrialRow]:
    return [TrialRow(**doc["result"]["row"]) for doc in done_docs(trials)]


def run_trials(
    config: Config,
    space: SearchSpace,
    dataset: Dataset,
    trials: Trials,
    store: TrialStore,
    observer: TrialObserver,
) -> str:
    """hyperopt's ``fmin`` until ``max_evals`` trials (earlier ones included), the timeout
    or ``no_progress_evals`` trials without improvement; returns why the search stopped.

    A new search holds the base config as a pending trial, which ``fmin`` counts as one of
    ``max_evals`` but runs only if it may queue one more; so ``fmin`` gets one more, and
    :class:`AfterEachTrial` stops at ``max_evals`` finished trials.
    """
    after_each_trial = AfterEachTrial(store, config)
    if reason := after_each_trial.stop_reason(trials):
        return reason
    runner = TrialRunner(space, dataset, trials, store, observer)
    done = len(done_docs(trials))
    with contextlib.suppress(AllTrialsFailed):  # fmin's own summary; evaluate_best says it
        fmin(
            runner,
            space.expression,
            algo=seeded_by_trial(suggest_function(config), config.seed),
            max_evals=config.search.max_evals + len(trials.trials) - done,
            timeout=config.search.timeout,
            trials=trials,
            rstate=np.random.default_rng(config.seed),
            early_stop_fn=after_each_trial,
            show_progressbar=False,
            verbose=False,
            return_argmin=False,
        )
    return after_each_trial.stop_reason(trials) or "search.timeout reached"


def suggest_function(config: Config) -> Callable[..., Any]:
    """hyperopt's algorithm. TPE models the results after ``startup_evals`` trials (hyperopt's
    default of 20 would make a short search a random one)."""
    if config.search.algorithm == "tpe":
        return functools.partial(tpe.suggest, n_startup_jobs=config.search.startup_evals)
    suggest: Callable[..., Any] = (
        rand.suggest if config.search.algorithm == "random" else anneal.suggest
    )
    return suggest


def seeded_by_trial(suggest: Callable[..., Any], seed: int) -> Callable[..., Any]:
    """``suggest`` with a seed made of ``seed`` and the first new trial's number, instead of
    the next draw of ``fmin``'s generator: the point a trial gets depends on its number and
    the trials before it only, so a resumed search continues the same sequence."""

    def suggest_trial(new_ids: list[int], domain: Any, trials: Trials, _: int) -> Any:
        trial_seed = int(np.random.SeedSequence([seed, new_ids[0]]).generate_state(1)[0])
        return suggest(new_ids, domain, trials, trial_seed)

    return suggest_trial


def trials_without_progress(trials: Trials, objective: str) -> int:
    """Finished trials since the best one (all of them if none succeeded)."""
    return rows_without_progress(finished_rows(trials), objective)


def rows_without_progress(rows: list[TrialRow], objective: str) -> int:
    """:func:`trials_without_progress` of any engine's finished trials."""
    best = best_row(rows, objective)
    return len(rows) if best is None else sum(row.number > best.number for row in rows)


class AfterEachTrial:
    """``fmin``'s ``early_stop_fn``, called after every trial: saves the trials, drops the
    checkpoints of trials that are no longer the best, and stops at ``max_evals`` finished
    trials or after ``no_progress_evals`` trials without improvement. (hyperopt's
    ``no_progress_loss`` keeps its count in memory, so a resumed search would start counting
    again, and it fails on trials without a loss.)"""

    def __init__(self, store: TrialStore, config: Config) -> None:
        self.store = store
        self.max_evals = config.search.max_evals
        self.patience = config.search.no_progress_evals
        self.objective = config.training.objective

    def __call__(self, trials: Trials, *_: Any) -> tuple[bool, list[Any]]:
        self.store.save(trials)
        best = best_row(finished_rows(trials), self.objective)
        self.store.keep_only_checkpoint(best.number if best else None)
        return self.stop_reason(trials) is not None, []

    def stop_reason(self, trials: Trials) -> str | None:
        """Why the search is over, or None while it may go on."""
        done = len(done_docs(trials))
        if done >= self.max_evals:
            return f"{done} trials done (search.max_evals = {self.max_evals})"
        if self.patience and trials_without_progress(trials, self.objective) >= self.patience:
            return f"no improvement in the last {self.patience} trials"
        return None


class EpochCounter(TrainingObserver):
    """How many epochs a trial finished (a failed trial reports how far it got)."""

    def __init__(self) -> None:
        self.epochs = 0

    def on_epoch_end(self, record: EpochRecord) -> None:
        self.epochs = record.epoch


class TrialRunner:
    """The objective ``fmin`` calls: one trial from a hyperopt sample to a result document.

    The result keeps the reported values (not hyperopt's choice indices), the validation
    figures, the trial's table row and its validation objective per epoch (``curve``, which
    :class:`~ecgtune.search.pruning.TrialPruner` compares later trials with, so a resumed
    search prunes alike). A pruned trial is a finished one: its loss is its best epoch's
    objective. A trial that fails for any reason of its own returns ``STATUS_FAIL`` with the
    reason; the trial's start is inside that handling too. An interruption or a
    :data:`FATAL_ERRORS` failure ends the trial as killed or failed for every observer, then
    ends the search.
    """

    def __init__(
        self,
        space: SearchSpace,
        dataset: Dataset,
        trials: Trials,
        store: TrialStore,
        observer: TrialObserver,
    ) -> None:
        self.space = space
        self.dataset = dataset
        self.trials = trials
        self.store = store
        self.observer = observer
        self.objective = space.base.training.objective

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        number = next(doc["tid"] for doc in self.trials.trials if doc["state"] == JOB_STATE_RUNNING)
        values = flatten_sample(sample)
        counter = EpochCounter()
        earlier = [doc["result"].get("curve", []) for doc in done_docs(self.trials)]
        pruner = TrialPruner(self.space.base, earlier)
        started = time.perf_counter()

        def ended(status: TrialStatus, note: str) -> TrialRow:
            seconds = time.perf_counter() - started
            return TrialRow(number, status, values, None, counter.epochs, seconds, note)

        try:
            config = self.space.trial_config(sample)
            values = self.space.values_of(config)
            check_model_budget(config, self.dataset.n_classes)
            epochs = self.observer.trial_started(TrialStart(number, config, values))
            result = fit(config, self.dataset, ObserverFanOut([epochs, counter, pruner]))
            self.keep_if_best(number, config, result)
        except KeyboardInterrupt as exc:
            self.end_quietly(ended("killed", interruption(exc)))
            raise
        except FATAL_ERRORS as exc:
            self.end_quietly(ended("failed", f"{type(exc).__name__}: {exc}"))
            raise
        except Exception as exc:  # any failure of one trial is its result; the search goes on
            row = ended("failed", f"{type(exc).__name__}: {exc}")
            self.observer.trial_ended(TrialOutcome(row))
            return {
                "status": STATUS_FAIL,
                "failure": row.note,
                "row": asdict(row),
                "curve": pruner.curve,
            }
        score = result.best_valid[self.objective]
        status: TrialStatus = "ok" if result.pruned_at is None else "pruned"
        row = TrialRow(
            number, status, values, score, len(result.history), result.seconds, result.stop_reason
        )
        self.observer.trial_ended(TrialOutcome(row, result))
        return {
            "status": STATUS_OK,
            "loss": self.hyperopt_loss(result),
            "row": asdict(row),
            "best_epoch": result.best_epoch,
            "valid": result.best_valid,
            "train_counts": result.train_counts,
            "curve": pruner.curve,
        }

    def keep_if_best(self, number: int, config: Config, result: TrainResult) -> None:
        """Save the trial's model when it beats every earlier trial (no retraining later)."""
        if self.hyperopt_loss(result) < min(
            (v for v in self.trials.losses() if v is not None), default=math.inf
        ):
            save_checkpoint(self.store.checkpoint(number), result.model, config, result.class_names)

    def hyperopt_loss(self, result: TrainResult) -> float:
        """The trial's best objective as the loss hyperopt minimises."""
        score = result.best_valid[self.objective]
        return score if minimises(self.objective) else -score

    def end_quietly(self, row: TrialRow) -> None:
        """Tell every observer the trial ended while the search itself is ending; a second
        failure here (the same lost server) must not hide the first."""
        with contextlib.suppress(Exception):
            self.observer.trial_ended(TrialOutcome(row))


@dataclass(frozen=True)
class BestTrial:
    """The search's answer: the best trial, its config, its figures and the files written."""

    row: TrialRow
    config: Config
    valid: dict[str, float]
    test: ClassificationMetrics
    outputs: list[Path]


def evaluate_best(
    config: Config,
    dataset: Dataset,
    trials: Trials,
    store: TrialStore,
    provenance: dict[str, Any],
) -> BestTrial:
    """Evaluate the best trial's saved model once on the test split and write the outputs;
    ``provenance`` (where the search came from: source config, version, tracking ids) goes
    into the report and the header of ``best_config.toml``."""
    valid = {doc["tid"]: doc["result"].get("valid", {}) for doc in done_docs(trials)}
    return evaluate_rows(config, dataset, finished_rows(trials), valid, store, provenance)


def evaluate_rows(
    config: Config,
    dataset: Dataset,
    rows: list[TrialRow],
    valid: dict[int, dict[str, float]],
    store: TrialStore,
    provenance: dict[str, Any],
) -> BestTrial:
    """:func:`evaluate_best` for any engine: its finished trials' rows, their validation
    figures by trial number, and the best trial's checkpoint in ``store``."""
    best = best_row(rows, config.training.objective)
    if best is None:
        first = f"the first failure: {rows[0].note}" if rows else "none finished"
        raise UserError(
            f"no trial succeeded ({len(rows)} finished, {first}); see the trial table or the "
            f"MLflow runs"
        )
    model, best_config, _ = load_checkpoint(store.checkpoint(best.number))
    model.to(resolve_device(best_config.training.device))
    metrics = evaluate_test_split(model, dataset, best_config)
    outputs = write_outputs(config, best_config, best, rows, metrics, store, provenance)
    return BestTrial(best, best_config, valid[best.number], metrics, outputs)


def write_outputs(
    config: Config,
    best_config: Config,
    best: TrialRow,
    rows: list[TrialRow],
    metrics: ClassificationMetrics,
    store: TrialStore,
    provenance: dict[str, Any],
) -> list[Path]:
    """``best_config.toml`` (runnable with ``train --config``, and as the base of a new
    search), ``best_model.pt``, ``report.json`` (test figures first, then where they come
    from, the config, the trial table last) and the confusion matrix figure."""
    run_dir = config.run_dir
    objective = config.training.objective
    header = [
        f"The best trial ({best.number}) of search {provenance.get('search_id', '')}, "
        f"from {provenance.get('source_config', 'a config')}",
        f"validation {objective} = {best.objective:.4f}; written {provenance.get('created', '')}",
        "Retrain: python hypertune.py train --config <this file>",
        "Search again around it: python hypertune.py tune --config <this file>",
    ]
    with atomic_write(run_dir / BEST_CONFIG) as stream:
        stream.write(config_toml(best_config, header, drop=("tracking",)).encode())
    with (
        atomic_write(run_dir / CHECKPOINT_NAME) as stream,
        store.checkpoint(best.number).open("rb") as source,
    ):
        shutil.copyfileobj(source, stream)
    extra = {
        "split": "test",
        "best_trial": best.number,
        "objective": objective,
        "best_valid_objective": best.objective,
        **provenance,
        "checkpoint": CHECKPOINT_NAME,
        "config": best_config.model_dump(mode="json"),
        "trials": [asdict(row) for row in rows],
    }
    title = f"test split, best trial {best.number}"
    write_report(run_dir, metrics, metrics.class_names, extra, title=title)
    return [run_dir / name for name in (BEST_CONFIG, REPORT, FIGURE, CHECKPOINT_NAME)]
