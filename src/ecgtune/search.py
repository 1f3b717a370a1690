"""The hyperparameter search: ``hypertune.py tune`` (and plain ``hypertune.py``).

:func:`tune_command` reads top to bottom:

1. check ``[search.space]`` against the schema (:mod:`ecgtune.search_space`);
2. open the saved search in ``<run_dir>/trials.pkl``, or start a new one whose first trial is
   the base config (``--fresh`` sets the old file aside as ``trials.<timestamp>.pkl``); a saved
   search made with another space, objective or base config is refused;
3. connect to MLflow (an unreachable server is refused now, not hours later) and build the
   dataset once: every trial trains on the same splits (resampling is per trial, in the
   trainer, as ``data.resample.*`` may be searched);
4. hyperopt's ``fmin`` runs the trials (:class:`TrialRunner` is the objective). After every
   trial :class:`AfterEachTrial` saves the trials atomically, so a killed search loses at most
   the trial in flight, and stops the search after ``no_progress_evals`` trials without
   improvement. A trial that raises or diverges is recorded as failed, with its reason, and
   the search goes on. Ctrl-C ends the search (exit 130) with every finished trial saved;
5. the best trial's model, saved when it became the best (no retraining), is evaluated once
   on the test split; ``best_config.toml``, ``best_model.pt``, ``report.json`` and
   ``confusion_matrix.png`` land in the run directory and in the parent MLflow run.

Running the same command again resumes: ``max_evals`` counts every trial, earlier ones
included, and the search continues under the same MLflow parent run.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pickle
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
from hyperopt import STATUS_FAIL, STATUS_OK, Trials, anneal, fmin, rand, tpe
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_RUNNING
from hyperopt.fmin import generate_trials_to_calculate

from ecgtune.config import Config
from ecgtune.console import is_interactive, make_console
from ecgtune.console.search import SearchDisplay, TrialRow, best_row, top_trials_table
from ecgtune.console.training import metrics_table
from ecgtune.data import load_dataset
from ecgtune.data.dataset import Dataset
from ecgtune.data.files import atomic_write
from ecgtune.errors import ConfigError, DataError, UserError
from ecgtune.metrics import ClassificationMetrics
from ecgtune.report import load_checkpoint, save_checkpoint, write_report
from ecgtune.search_space import SearchSpace, build_search_space, flatten_sample
from ecgtune.tracking.mlflow_runs import MlflowEpochLogger, SearchTracker
from ecgtune.tracking.tensorboard import fresh_directory, log_hparams
from ecgtune.training import TrainResult, evaluate_test_split, resolve_device, train_model

TRIALS_FILE = "trials.pkl"
CHECKPOINT_DIR = "checkpoints"
BEST_MODEL = "best_model.pt"
BEST_CONFIG = "best_config.toml"
REPORT = "report.json"
FIGURE = "confusion_matrix.png"
METADATA = "ecgtune"
"""Key of ``Trials.attachments`` holding the search's identity, MLflow parent run and id."""
TOP_TRIALS = 5
SETTINGS_KEYS = ("algorithm", "max_evals", "timeout", "no_progress_evals", "startup_evals")
"""``search.*`` keys that may change between runs of one search (the rest may not)."""
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


def tune_command(config: Config, fresh: bool, quiet: bool) -> int:
    """``hypertune.py tune``: run (or resume) the search, then evaluate its best model."""
    space = build_search_space(config)
    console = make_console()
    store = TrialStore(config.run_dir)
    if fresh and (kept := store.set_aside()):
        console.print(f"Started a fresh search; the previous trials are kept in {kept}")
    trials = store.load()
    identity = search_identity(config)
    if trials is not None:
        check_same_search(trials.attachments[METADATA]["identity"], identity, store.path)
    tracker = SearchTracker(config.tracking.mlflow_uri, config.tracking.experiment)
    dataset = load_dataset(config, console=console)
    if trials is None:
        trials = start_search(config, space, identity, tracker, store)
    else:
        resume_search(config, trials, tracker, store)
    metadata = trials.attachments[METADATA]
    live = not quiet and is_interactive()
    display = SearchDisplay(
        console,
        live,
        config.search.objective,
        maximises(config),
        config.search.max_evals,
        verbose=config.tracking.verbose,
    )
    runner = TrialRunner(config, space, dataset, tracker, trials, display, store)
    after_each_trial = AfterEachTrial(store, config)
    try:
        with display:
            display.show_finished(finished_rows(trials))
            run_trials(config, space, trials, runner, after_each_trial)
            reason = after_each_trial.stop_reason(trials) or "search.timeout reached"
            display.log(f"Search stopped: {reason}")
        finish_search(config, dataset, trials, tracker, store, display)
    except KeyboardInterrupt:
        tracker.finish(metadata["parent_run_id"], failure="interrupted (Ctrl-C)", status="KILLED")
        raise
    return 0


def maximises(config: Config) -> bool:
    """Every objective is a score to maximise except the validation loss."""
    return config.search.objective != "loss"


class TrialStore:
    """The search's files in ``run_dir``: the trials and the best trial's checkpoint."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / TRIALS_FILE
        self.checkpoints = run_dir / CHECKPOINT_DIR

    def load(self) -> Trials | None:
        if not self.path.is_file():
            return None
        try:
            with self.path.open("rb") as stream:
                trials = pickle.load(stream)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as exc:
            raise DataError(
                f"{self.path}: cannot read the saved search ({exc}); start over with --fresh"
            ) from None
        if not isinstance(trials, Trials) or METADATA not in trials.attachments:
            raise DataError(f"{self.path}: not a search saved by ecgtune; use --fresh")
        return trials

    def save(self, trials: Trials) -> None:
        """Atomically: a reader (or a resumed search) sees the old file or the new one."""
        with atomic_write(self.path) as stream:
            pickle.dump(trials, stream, protocol=pickle.HIGHEST_PROTOCOL)

    def set_aside(self) -> Path | None:
        """``--fresh``: rename the saved trials (and their checkpoints) with a timestamp."""
        if not self.path.exists():
            return None
        stamp = f"{datetime.now():%Y%m%d-%H%M%S}"
        kept = self.path.with_name(f"trials.{stamp}.pkl")
        os.replace(self.path, kept)
        if self.checkpoints.exists():
            os.replace(self.checkpoints, self.run_dir / f"{CHECKPOINT_DIR}.{stamp}")
        return kept

    def checkpoint(self, number: int) -> Path:
        return self.checkpoints / f"trial-{number:03d}.pt"

    def keep_only_checkpoint(self, number: int | None) -> None:
        """Delete the checkpoints of trials that are no longer the best."""
        keep = self.checkpoint(number) if number is not None else None
        for path in self.checkpoints.glob("trial-*.pt"):
            if path != keep:
                path.unlink()


def search_identity(config: Config) -> dict[str, Any]:
    """What a saved search must share with the config that resumes it: every key that
    changes what a trial computes (the space, the objective, the base config, the data)."""
    raw = config.model_dump(mode="json")
    space = raw["search"].pop("space")
    flat = flatten_config(raw)
    flat["search.space"] = json.dumps(space, sort_keys=True)
    return {key: value for key, value in flat.items() if not key.startswith(FREE_KEYS)}


def flatten_config(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"dropout": 0.3}}`` -> ``{"model.dropout": 0.3}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def check_same_search(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    changed = sorted(
        key for key in saved.keys() | current.keys() if saved.get(key) != current.get(key)
    )
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise ConfigError(
            f"{path} holds a search made with different {', '.join(changed[:3])}{more}: "
            f"resume it with the config it was made with, or start over with --fresh "
            f"(the old trials are kept)"
        )


def start_search(
    config: Config,
    space: SearchSpace,
    identity: dict[str, Any],
    tracker: SearchTracker,
    store: TrialStore,
) -> Trials:
    """New trials holding the base config as the first point to evaluate, and the parent run.
    Saved at once, so a search killed during its first trial resumes under the same run."""
    trials = generate_trials_to_calculate([space.base_point])
    trials.refresh()
    search_id = f"search-{datetime.now():%Y%m%d-%H%M%S}"
    raw_space = config.search.model_dump(mode="json", exclude_none=True)["space"]
    params = {"search.objective": config.search.objective, "search.space": json.dumps(raw_space)}
    parent = tracker.start_parent(search_id, params, settings_tags(config))
    trials.attachments[METADATA] = {
        "identity": identity,
        "parent_run_id": parent,
        "search_id": search_id,
    }
    store.save(trials)
    return trials


def resume_search(
    config: Config, trials: Trials, tracker: SearchTracker, store: TrialStore
) -> None:
    """Reopen the parent run and close child runs of trials lost in flight."""
    metadata = trials.attachments[METADATA]
    tracker.resume_parent(metadata["parent_run_id"], settings_tags(config))
    kept = {doc["result"]["run_id"] for doc in done_docs(trials)}
    tracker.close_orphans(metadata["parent_run_id"], kept)
    best = best_row(finished_rows(trials), maximises(config))
    store.keep_only_checkpoint(best.number if best else None)


def settings_tags(config: Config) -> dict[str, Any]:
    """The search settings that may change on resume: tags (MLflow params are write-once)."""
    return {f"search.{key}": getattr(config.search, key) for key in SETTINGS_KEYS}


def done_docs(trials: Trials) -> list[dict[str, Any]]:
    """The finished trials' documents (ok or failed), in trial order."""
    return [doc for doc in trials.trials if doc["state"] == JOB_STATE_DONE]


def finished_rows(trials: Trials) -> list[TrialRow]:
    return [TrialRow(**doc["result"]["row"]) for doc in done_docs(trials)]


def run_trials(
    config: Config,
    space: SearchSpace,
    trials: Trials,
    runner: TrialRunner,
    after_each_trial: AfterEachTrial,
) -> None:
    """hyperopt's ``fmin`` until ``max_evals`` trials (earlier ones included), the timeout
    or ``no_progress_evals`` trials without improvement.

    A new search holds the base config as a pending trial, which ``fmin`` counts as one of
    ``max_evals`` but runs only if it may queue one more; so ``fmin`` gets one more, and
    :class:`AfterEachTrial` stops at ``max_evals`` finished trials.
    """
    done = len(done_docs(trials))
    if after_each_trial.stop_reason(trials):
        return
    fmin(
        runner,
        space.expression,
        algo=suggest_function(config),
        max_evals=config.search.max_evals + len(trials.trials) - done,
        timeout=config.search.timeout,
        trials=trials,
        rstate=np.random.default_rng([config.seed, done]),
        early_stop_fn=after_each_trial,
        show_progressbar=False,
        verbose=False,
        return_argmin=False,
    )


def suggest_function(config: Config) -> Callable[..., Any]:
    """hyperopt's algorithm. TPE models the results after ``startup_evals`` trials (hyperopt's
    default of 20 would make a short search a random one)."""
    if config.search.algorithm == "tpe":
        return functools.partial(tpe.suggest, n_startup_jobs=config.search.startup_evals)
    suggest: Callable[..., Any] = (
        rand.suggest if config.search.algorithm == "random" else anneal.suggest
    )
    return suggest


def trials_without_progress(trials: Trials, maximise: bool) -> int:
    """Finished trials since the best one (all of them if none succeeded)."""
    rows = finished_rows(trials)
    best = best_row(rows, maximise)
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
        self.maximise = maximises(config)

    def __call__(self, trials: Trials, *_: Any) -> tuple[bool, list[Any]]:
        self.store.save(trials)
        best = best_row(finished_rows(trials), self.maximise)
        self.store.keep_only_checkpoint(best.number if best else None)
        return self.stop_reason(trials) is not None, []

    def stop_reason(self, trials: Trials) -> str | None:
        """Why the search is over, or None while it may go on."""
        done = len(done_docs(trials))
        if done >= self.max_evals:
            return f"{done} trials done (search.max_evals = {self.max_evals})"
        if self.patience and trials_without_progress(trials, self.maximise) >= self.patience:
            return f"no improvement in the last {self.patience} trials"
        return None


class TrialRunner:
    """The objective ``fmin`` calls: one trial from a hyperopt sample to a result document.

    The result keeps the reported values (not hyperopt's choice indices), the validation
    figures, the trial's MLflow run id and its table row. A trial that fails for any reason
    returns ``STATUS_FAIL`` with the reason; only Ctrl-C ends the search.
    """

    def __init__(
        self,
        config: Config,
        space: SearchSpace,
        dataset: Dataset,
        tracker: SearchTracker,
        trials: Trials,
        display: SearchDisplay,
        store: TrialStore,
    ) -> None:
        metadata = trials.attachments[METADATA]
        self.space = space
        self.dataset = dataset
        self.tracker = tracker
        self.trials = trials
        self.display = display
        self.store = store
        self.parent_id: str = metadata["parent_run_id"]
        self.objective = config.search.objective
        self.tensorboard_root = (
            config.tracking.tensorboard_dir / config.tracking.experiment / metadata["search_id"]
        )

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        number = next(doc["tid"] for doc in self.trials.trials if doc["state"] == JOB_STATE_RUNNING)
        values = flatten_sample(sample)
        tensorboard_dir = fresh_directory(self.tensorboard_root / f"trial-{number:03d}")
        run_id = self.tracker.start_child(self.parent_id, number, tensorboard_dir)
        epochs = MlflowEpochLogger(self.tracker, run_id)
        started = time.perf_counter()
        try:
            config = self.space.trial_config(sample)
            values = self.space.values_of(config)
            self.display.trial_started(number, values)
            self.tracker.log_params(run_id, trial_params(config))
            result = train_model(config, self.dataset, [self.display, epochs], tensorboard_dir)
        except KeyboardInterrupt:
            self.tracker.finish(run_id, failure="interrupted (Ctrl-C)", status="KILLED")
            raise
        except Exception as exc:  # any failure of one trial is its result; the search goes on
            reason = f"{type(exc).__name__}: {exc}"
            self.tracker.finish(run_id, failure=reason, status="FAILED")
            row = TrialRow(
                number, False, values, None, epochs.logged, time.perf_counter() - started, reason
            )
            self.display.trial_finished(row)
            return {"status": STATUS_FAIL, "failure": reason, "run_id": run_id, "row": asdict(row)}
        return self._finished(number, config, values, result, run_id, tensorboard_dir)

    def _finished(
        self,
        number: int,
        config: Config,
        values: dict[str, Any],
        result: TrainResult,
        run_id: str,
        tensorboard_dir: Path,
    ) -> dict[str, Any]:
        """Save the model if it is the best so far, close the trial's runs, return its result."""
        score = result.best_valid[self.objective]
        loss = score if self.objective == "loss" else -score
        if loss < min((v for v in self.trials.losses() if v is not None), default=math.inf):
            save_checkpoint(self.store.checkpoint(number), result.model, config, result.class_names)
        valid = {f"best_valid/{name}": value for name, value in result.best_valid.items()}
        self.tracker.log_params(
            run_id, {f"train_counts.{name}": n for name, n in result.train_counts.items()}
        )
        self.tracker.finish(
            run_id,
            {**valid, "best_epoch": result.best_epoch, "epochs": len(result.history)},
        )
        log_hparams(tensorboard_dir, values, {f"best/valid_{self.objective}": score})
        row = TrialRow(
            number, True, values, score, len(result.history), result.seconds, result.stop_reason
        )
        self.display.trial_finished(row)
        return {
            "status": STATUS_OK,
            "loss": loss,
            "run_id": run_id,
            "row": asdict(row),
            "best_epoch": result.best_epoch,
            "valid": result.best_valid,
            "train_counts": result.train_counts,
            "tensorboard_dir": str(tensorboard_dir),
        }


def trial_params(config: Config) -> dict[str, Any]:
    """Every resolved key of a trial, flattened (the search and tracking sections are the
    parent run's)."""
    raw = config.model_dump(mode="json")
    return flatten_config({key: raw[key] for key in ("seed", "data", "model", "training")})


def finish_search(
    config: Config,
    dataset: Dataset,
    trials: Trials,
    tracker: SearchTracker,
    store: TrialStore,
    display: SearchDisplay,
) -> None:
    """Evaluate the best trial's saved model once on the test split and write the outputs."""
    rows = finished_rows(trials)
    maximise = maximises(config)
    best = best_row(rows, maximise)
    parent_id = trials.attachments[METADATA]["parent_run_id"]
    if best is None:
        tracker.finish(parent_id, failure="every trial failed", status="FAILED")
        first = f"the first failure: {rows[0].note}" if rows else "none finished"
        raise UserError(
            f"no trial succeeded ({len(rows)} finished, {first}); see the trial table or the "
            f"MLflow runs"
        )
    model, best_config, _ = load_checkpoint(store.checkpoint(best.number))
    model.to(resolve_device(best_config.training.device))
    metrics = evaluate_test_split(model, dataset, best_config)
    outputs = write_outputs(config, best_config, best, rows, metrics, store)
    tracker.finish(parent_id, parent_metrics(best, trials, metrics, config.search.objective))
    tracker.log_artifacts(parent_id, outputs)
    console = display.console
    console.print(top_trials_table(rows, config.search.objective, maximise, TOP_TRIALS))
    title = f"Best trial {best.number} on the test split ({metrics.n_beats} beats)"
    console.print(metrics_table(metrics, title=title))
    console.print(f"Wrote {', '.join(path.name for path in outputs)} to {config.run_dir}")


def write_outputs(
    config: Config,
    best_config: Config,
    best: TrialRow,
    rows: list[TrialRow],
    metrics: ClassificationMetrics,
    store: TrialStore,
) -> list[Path]:
    """``best_config.toml`` (runnable with ``train --config``), ``best_model.pt``,
    ``report.json`` (test figures, confusion matrix, the trial table) and the figure."""
    run_dir = config.run_dir
    with atomic_write(run_dir / BEST_CONFIG) as stream:
        stream.write(tomli_w.dumps(best_config.model_dump(mode="json", exclude_none=True)).encode())
    with (
        atomic_write(run_dir / BEST_MODEL) as stream,
        store.checkpoint(best.number).open("rb") as source,
    ):
        shutil.copyfileobj(source, stream)
    extra = {
        "split": "test",
        "best_trial": best.number,
        "objective": config.search.objective,
        "best_valid_objective": best.objective,
        "trials": [asdict(row) for row in rows],
        "checkpoint": BEST_MODEL,
        "config": BEST_CONFIG,
    }
    write_report(run_dir, metrics, metrics.class_names, extra)
    return [run_dir / name for name in (BEST_CONFIG, REPORT, FIGURE, BEST_MODEL)]


def parent_metrics(
    best: TrialRow, trials: Trials, metrics: ClassificationMetrics, objective: str
) -> dict[str, float]:
    """The best trial's validation figures and the test figures, for the parent run."""
    doc = next(doc for doc in done_docs(trials) if doc["tid"] == best.number)
    valid = {f"best_valid/{name}": value for name, value in doc["result"]["valid"].items()}
    test = {f"test/{name}": value for name, value in metrics.as_flat_dict().items()}
    return {**valid, **test, "best_trial": best.number, "trials": len(done_docs(trials))}
