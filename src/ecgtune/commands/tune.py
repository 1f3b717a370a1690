"""``hypertune.py tune`` (and plain ``hypertune.py``): run or resume the search, then evaluate
its best model once on the test split.

Reads top to bottom: check the space, the output folders, a local MLflow store and the engine's
settings; take the experiment's lock; open the saved search (or start one; ``--fresh`` sets the
old one aside), every trial checked against the space and the best trial's checkpoint loaded;
connect to MLflow (an unreachable server is refused now, not hours later) and check that the
saved search's parent run belongs to this experiment; start the engine's session (the Ray
engine starts or joins Ray); build the dataset once (every trial trains on the same splits);
run the trials with the display, MLflow and TensorBoard as trial observers; evaluate the best
trial once on the test split and write the outputs. ``search.engine`` picks who runs the
trials: :class:`LocalSearch` (hyperopt's ``fmin`` here, one at a time) or
:class:`~ecgtune.search.ray.RaySearch` (Ray Tune, several at once, here or on a
cluster); both report to the same observers and leave the same outputs. Whatever ends the
search early (Ctrl-C, SIGTERM, a lost server, a failed write) closes the parent run as KILLED
or FAILED, and every finished trial stays saved: the same command resumes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol

from hyperopt import Trials
from rich.console import Console

from ecgtune.commands.common import (
    check_model_size,
    check_outputs,
    device_and_threads,
    quiet_library_logs,
    run_lock,
)
from ecgtune.config import Config, config_toml
from ecgtune.console import is_interactive, make_console
from ecgtune.console.data import data_progress
from ecgtune.console.search import (
    SearchDisplay,
    browse_commands,
    run_header,
    search_outputs,
    top_trials_table,
)
from ecgtune.console.training import metrics_table
from ecgtune.data import load_dataset
from ecgtune.data.dataset import Dataset
from ecgtune.errors import ConfigError, DataError, interruption
from ecgtune.export.card import write_model_card
from ecgtune.search.loop import (
    ENGINE_KEYS,
    SETTINGS_KEYS,
    BestTrial,
    check_same_search,
    check_saved_trials,
    evaluate_best,
    finished_rows,
    new_search_id,
    new_trials,
    run_trials,
    search_identity,
)
from ecgtune.search.pruning import check_pruning
from ecgtune.search.ray_store import RayTrialStore
from ecgtune.search.space import SearchSpace, build_search_space
from ecgtune.search.store import FRESH, METADATA, TrialStore
from ecgtune.search.trials import TrialObserver, TrialObserverFanOut, TrialRow, best_row
from ecgtune.tracking.local_store import artifact_location
from ecgtune.tracking.mlflow_model import log_model
from ecgtune.tracking.mlflow_runs import OVERRIDES_TAG, TAG_LIMIT, MlflowTracker, MlflowTrials
from ecgtune.tracking.mlflow_view import changed_keys, runs_view_state, search_description
from ecgtune.tracking.tensorboard import TensorBoardTrials, search_tensorboard_root

TOP_TRIALS = 5


def tune_command(
    config: Config,
    fresh: bool = False,
    quiet: bool = False,
    overrides: Sequence[str] = (),
    source: str = "config.toml",
) -> int:
    """Run (or resume) the search, then evaluate its best model; 0 when done. ``source`` and
    ``overrides`` say where the config came from, for the report and MLflow."""
    started = time.perf_counter()
    space = build_search_space(config)
    check_pruning(space)
    check_model_size(config)
    check_outputs(config)
    quiet_library_logs(config.tracking.verbose)
    engine = search_engine(config, space)
    console = make_console()
    with run_lock(config.run_dir, "tune"):
        if fresh and (kept := set_aside_searches(config)):
            console.print(f"Started a fresh search; the previous trials are kept in {kept}")
        check_one_engine(config)
        metadata = engine.load()
        identity = search_identity(config)
        if metadata is not None:
            check_same_search(metadata["identity"], identity, engine.path)
        tracker = MlflowTracker(
            config.tracking.mlflow_uri, config.tracking.experiment, artifact_location(config)
        )
        if metadata is not None:
            check_parent_run(tracker, metadata["parent_run_id"], engine.path)
        with engine.session():
            dataset = load_dataset(config, data_progress(console))
            header = run_header(config, dataset, *device_and_threads(config), engine.description())
            console.print(header)
            console.print(f"MLflow runs table: {tracker.runs_url}", soft_wrap=True, markup=False)
            if metadata is None:
                metadata = start_search(config, identity, tracker, overrides)
                engine.start(metadata)
            else:
                resume_search(config, metadata, engine.rows(), tracker)
            parent_id: str = metadata["parent_run_id"]
            tensorboard_root = search_tensorboard_root(
                config.tracking.tensorboard_dir, config.tracking.experiment, metadata["search_id"]
            )
            keys = space.searched_keys
            tracker.set_runs_view(runs_view_state(config.training.objective, keys))
            display = SearchDisplay(
                console, not quiet and is_interactive(), config, keys, config.tracking.verbose
            )
            try:
                observer = TrialObserverFanOut(
                    [
                        display,
                        MlflowTrials(tracker, parent_id, tensorboard_root, keys),
                        TensorBoardTrials(tensorboard_root, config.training.objective, space),
                    ]
                )
                with display:
                    display.show_finished(engine.rows())
                    reason = engine.run(dataset, observer)
                console.print(f"Search stopped: {reason}")
                rows = engine.rows()
                provenance = search_provenance(config, metadata, rows, tracker, source, overrides)
                best = engine.evaluate(dataset, provenance)
                card = write_model_card(config.run_dir, dataset)
            except KeyboardInterrupt as exc:
                tracker.end_early(parent_id, interruption(exc), "KILLED")
                raise
            except Exception as exc:
                tracker.end_early(parent_id, f"{type(exc).__name__}: {exc}", "FAILED")
                raise
        describe_search(config, tracker, parent_id, rows, keys, best)
        tracker.finish(parent_id, parent_metrics(best, len(rows)))
        tracker.log_artifacts(parent_id, [*best.outputs, card])
        model = log_model(
            tracker,
            parent_id,
            config.run_dir,
            dataset.valid,
            config.tracking.register_model,
            best.test.as_flat_dict(),
        )
    files = [*best.outputs, card, engine.path]
    show_result(config, best, rows, keys, console)
    seconds = time.perf_counter() - started
    for line in search_outputs(config.run_dir, files, parent_id, model.model_uri, seconds):
        console.print(line, soft_wrap=True, markup=False)
    show_browse_commands(config, tracker, console)
    return 0


class SearchEngine(Protocol):
    """What ``tune`` needs of an engine: its saved search (``path``; ``load`` returns its
    metadata: identity, MLflow parent run, search id), a session around the work (Ray's),
    the trials run with the observers, the finished trials' rows, and the best one
    evaluated once on the test split."""

    path: Path

    def load(self) -> dict[str, Any] | None: ...

    def start(self, metadata: dict[str, Any]) -> None: ...

    def rows(self) -> list[TrialRow]: ...

    def session(self) -> AbstractContextManager[None]: ...

    def description(self) -> str: ...

    def run(self, dataset: Dataset, observer: TrialObserver) -> str: ...

    def evaluate(self, dataset: Dataset, provenance: dict[str, Any]) -> BestTrial: ...


class LocalSearch:
    """The local engine: hyperopt's ``fmin`` in this process, its trials in ``trials.json``."""

    def __init__(self, config: Config, space: SearchSpace) -> None:
        self.config = config
        self.space = space
        self.store = TrialStore(config.run_dir)
        self.path = self.store.path
        self.trials: Trials | None = None

    def load(self) -> dict[str, Any] | None:
        self.trials = self.store.load(
            lambda trials: check_saved_trials(trials, self.space, self.store)
        )
        return None if self.trials is None else self.trials.attachments[METADATA]

    def start(self, metadata: dict[str, Any]) -> None:
        self.trials = new_trials(self.space, metadata)
        self.store.save(self.trials)

    def rows(self) -> list[TrialRow]:
        assert self.trials is not None
        return finished_rows(self.trials)

    def session(self) -> AbstractContextManager[None]:
        return nullcontext()

    def description(self) -> str:
        return "local: hyperopt in this process, one trial at a time"

    def run(self, dataset: Dataset, observer: TrialObserver) -> str:
        assert self.trials is not None
        return run_trials(self.config, self.space, dataset, self.trials, self.store, observer)

    def evaluate(self, dataset: Dataset, provenance: dict[str, Any]) -> BestTrial:
        assert self.trials is not None
        return evaluate_best(self.config, dataset, self.trials, self.store, provenance)


def search_engine(config: Config, space: SearchSpace) -> SearchEngine:
    """``search.engine``'s engine; the Ray engine's settings that need no Ray running are
    checked here, before any work."""
    if config.search.engine == "local":
        return LocalSearch(config, space)
    try:
        from ecgtune.search.ray import RaySearch
    except ImportError as exc:
        raise ConfigError(
            f"search.engine = 'ray' needs Ray Tune, which is not installed here ({exc}); "
            f'install it with: pip install -e ".[ray]"'
        ) from None
    return RaySearch(config, space)


def set_aside_searches(config: Config) -> Path | None:
    """``--fresh``: both engines' saved searches renamed with a timestamp; returns the first
    renamed trials file, if any."""
    kept = [TrialStore(config.run_dir).set_aside(), RayTrialStore(config.run_dir).set_aside()]
    return next((path for path in kept if path is not None), None)


def check_one_engine(config: Config) -> None:
    """A run directory holds one engine's saved search: resuming it with the other engine
    would start a second search beside it."""
    saved = {
        "local": TrialStore(config.run_dir).path,
        "ray": RayTrialStore(config.run_dir).path,
    }
    for engine, path in saved.items():
        if engine != config.search.engine and path.exists():
            raise ConfigError(
                f"search.engine = {config.search.engine!r}: {path} holds a search of the "
                f"{engine!r} engine; resume it with search.engine = {engine!r}, or start over "
                f"with --fresh (the old trials are kept)"
            )


def check_parent_run(tracker: MlflowTracker, run_id: str, saved: Path) -> None:
    """Before any work: the saved search's parent run is in this store and experiment."""
    if problem := tracker.parent_run_problem(run_id):
        raise DataError(
            f"{saved}: attachments.{METADATA}.parent_run_id = {run_id!r} {problem}; {FRESH}"
        )


def start_search(
    config: Config,
    identity: dict[str, Any],
    tracker: MlflowTracker,
    overrides: Sequence[str],
) -> dict[str, Any]:
    """A new search's metadata: its parent run (settings as params, the space as an
    artifact) and its id."""
    search_id = new_search_id()
    tags = {OVERRIDES_TAG: " ".join(overrides)}
    parent_id = tracker.start_run(search_id, search_settings(config), tags)
    space_text = config_toml(config, drop=("seed", "data", "model", "training", "tracking"))
    tracker.log_text(parent_id, space_text, "search_space.toml")
    return {"identity": identity, "parent_run_id": parent_id, "search_id": search_id}


def search_provenance(
    config: Config,
    metadata: dict[str, Any],
    rows: list[TrialRow],
    tracker: MlflowTracker,
    source: str,
    overrides: Sequence[str],
) -> dict[str, Any]:
    """Where the search's results come from, for ``report.json`` and ``best_config.toml``;
    marks the best trial on the parent run on the way."""
    best = best_row(rows, config.training.objective)
    best_run = tracker.mark_best_trial(metadata["parent_run_id"], best.number) if best else None
    return {
        "created": datetime.now().isoformat(timespec="seconds"),
        "ecgtune_version": version("ecgtune"),
        "source_config": source,
        "overrides": list(overrides),
        "search_id": metadata["search_id"],
        "mlflow": {
            "tracking_uri": config.tracking.mlflow_uri,
            "experiment": config.tracking.experiment,
            "parent_run_id": metadata["parent_run_id"],
            "best_trial_run_id": best_run,
        },
    }


def resume_search(
    config: Config, metadata: dict[str, Any], rows: list[TrialRow], tracker: MlflowTracker
) -> None:
    """Reopen the parent run, close the child runs of trials lost in flight, and keep only
    the best trial's checkpoint."""
    parent_id = metadata["parent_run_id"]
    tracker.resume_parent(parent_id, search_settings(config))
    tracker.close_orphans(parent_id, {row.number for row in rows})
    best = best_row(rows, config.training.objective)
    TrialStore(config.run_dir).keep_only_checkpoint(best.number if best else None)


def search_settings(config: Config) -> dict[str, Any]:
    """The parent run's params: every key that differs from the schema's default, and how
    the search runs (some may change on resume; the Ray engine's settings only for a search
    it runs)."""
    ray = config.search.engine == "ray"
    keys = [key for key in SETTINGS_KEYS if ray or key not in ENGINE_KEYS or key == "engine"]
    settings = {f"search.{key}": getattr(config.search, key) for key in keys}
    return {**changed_keys(config), **settings, "training.objective": config.training.objective}


def show_browse_commands(config: Config, tracker: MlflowTracker, console: Console) -> None:
    """The commands that open MLflow and TensorBoard, with the runs table's address."""
    console.print("Browse the search:")
    uri, logs = config.tracking.mlflow_uri, config.tracking.tensorboard_dir
    for line in browse_commands(uri, tracker.runs_url, logs):
        console.print(line, soft_wrap=True, markup=False, highlight=False)


def describe_search(
    config: Config,
    tracker: MlflowTracker,
    parent_id: str,
    rows: list[TrialRow],
    keys: Sequence[str],
    best: BestTrial,
) -> None:
    """The parent run's description: the search's table of trials and the test figures."""
    links = {number: tracker.run_link(run) for number, run in tracker.trial_runs(parent_id).items()}
    objective = config.training.objective
    text = search_description(rows, objective, keys, best.row, links, best.test, TAG_LIMIT)
    tracker.describe(parent_id, text)


def parent_metrics(best: BestTrial, n_trials: int) -> dict[str, float]:
    """The best trial's validation figures (``best_trial/``) and the test figures
    (``test/``), prefixed so that sorting runs by a trial metric leaves the parent out."""
    valid = {f"best_trial/{name}": value for name, value in best.valid.items()}
    test = {f"test/{name}": value for name, value in best.test.as_flat_dict().items()}
    return {**valid, **test, "best_trial/number": best.row.number, "search/trials": n_trials}


def show_result(
    config: Config, best: BestTrial, rows: list[TrialRow], keys: Sequence[str], console: Console
) -> None:
    """Once, at the end: the top trials and the best trial's test figures."""
    console.print(top_trials_table(rows, config.training.objective, TOP_TRIALS, keys))
    title = f"Best trial {best.row.number} on the test split ({best.test.n_beats:,} beats)"
    console.print(metrics_table(best.test, title=title))
