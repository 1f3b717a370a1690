"""``hypertune.py tune`` (and plain ``hypertune.py``): run or resume the search, then evaluate
its best model once on the test split.

Reads top to bottom: check the space and the output folders; take the experiment's lock; open
the saved search (or start one; ``--fresh`` sets the old one aside); connect to MLflow (an
unreachable server is refused now, not hours later); build the dataset once (every trial
trains on the same splits); run the trials with the display, MLflow and TensorBoard as trial
observers; evaluate the best trial once on the test split and write the outputs. Whatever ends
the search early (Ctrl-C, SIGTERM, a lost server, a failed write) closes the parent run as
KILLED or FAILED, and every finished trial stays saved: the same command resumes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from importlib.metadata import version
from typing import Any

from hyperopt import Trials
from rich.console import Console

from ecgtune.commands.common import (
    check_model_size,
    check_writable,
    device_and_threads,
    output_folders,
    quiet_library_logs,
    run_lock,
)
from ecgtune.config import Config, config_toml
from ecgtune.console import is_interactive, make_console
from ecgtune.console.data import data_progress
from ecgtune.console.search import SearchDisplay, run_header, top_trials_table
from ecgtune.console.training import metrics_table
from ecgtune.data import load_dataset
from ecgtune.errors import interruption
from ecgtune.export.card import write_model_card
from ecgtune.search.loop import (
    SETTINGS_KEYS,
    BestTrial,
    check_same_search,
    evaluate_best,
    finished_rows,
    new_search_id,
    new_trials,
    run_trials,
    search_identity,
)
from ecgtune.search.space import SearchSpace, build_search_space
from ecgtune.search.store import METADATA, TrialStore
from ecgtune.search.trials import TrialObserverFanOut, best_row
from ecgtune.tracking.mlflow_model import log_model
from ecgtune.tracking.mlflow_runs import OVERRIDES_TAG, MlflowTracker, MlflowTrials
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
    check_model_size(config)
    check_writable(output_folders(config))
    quiet_library_logs(config.tracking.verbose)
    console = make_console()
    with run_lock(config.run_dir, "tune"):
        store = TrialStore(config.run_dir)
        if fresh and (kept := store.set_aside()):
            console.print(f"Started a fresh search; the previous trials are kept in {kept}")
        trials = store.load()
        identity = search_identity(config)
        if trials is not None:
            check_same_search(trials.attachments[METADATA]["identity"], identity, store.path)
        tracker = MlflowTracker(config.tracking.mlflow_uri, config.tracking.experiment)
        dataset = load_dataset(config, data_progress(console))
        console.print(run_header(config, dataset, *device_and_threads(config), ENGINE))
        if trials is None:
            trials = start_search(config, space, identity, tracker, overrides)
            store.save(trials)
        else:
            resume_search(config, trials, tracker, store)
        metadata = trials.attachments[METADATA]
        parent_id: str = metadata["parent_run_id"]
        tensorboard_root = search_tensorboard_root(
            config.tracking.tensorboard_dir, config.tracking.experiment, metadata["search_id"]
        )
        keys = space.searched_keys
        display = SearchDisplay(
            console,
            not quiet and is_interactive(),
            config.training.objective,
            config.search.max_evals,
            keys,
            verbose=config.tracking.verbose,
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
                display.show_finished(finished_rows(trials))
                reason = run_trials(config, space, dataset, trials, store, observer)
            console.print(f"Search stopped: {reason}")
            provenance = search_provenance(config, trials, tracker, source, overrides)
            best = evaluate_best(config, dataset, trials, store, provenance)
            card = write_model_card(config.run_dir, dataset)
        except KeyboardInterrupt as exc:
            tracker.end_early(parent_id, interruption(exc), "KILLED")
            raise
        except Exception as exc:
            tracker.end_early(parent_id, f"{type(exc).__name__}: {exc}", "FAILED")
            raise
        tracker.finish(parent_id, parent_metrics(best, len(finished_rows(trials))))
        tracker.log_artifacts(parent_id, [*best.outputs, card])
        log_model(
            tracker,
            parent_id,
            config.run_dir,
            dataset.valid,
            config.tracking.register_model,
            best.test.as_flat_dict(),
        )
    show_result(config, best, trials, keys, console, time.perf_counter() - started)
    return 0


ENGINE = "local: hyperopt in this process, one trial at a time"


def start_search(
    config: Config,
    space: SearchSpace,
    identity: dict[str, Any],
    tracker: MlflowTracker,
    overrides: Sequence[str],
) -> Trials:
    """A new search: its parent run (settings as params, the space as an artifact), and
    trials whose first point is the base config."""
    search_id = new_search_id()
    tags = {OVERRIDES_TAG: " ".join(overrides)}
    parent_id = tracker.start_run(search_id, search_settings(config), tags)
    space_text = config_toml(config, drop=("seed", "data", "model", "training", "tracking"))
    tracker.log_text(parent_id, space_text, "search_space.toml")
    metadata = {"identity": identity, "parent_run_id": parent_id, "search_id": search_id}
    return new_trials(space, metadata)


def search_provenance(
    config: Config,
    trials: Trials,
    tracker: MlflowTracker,
    source: str,
    overrides: Sequence[str],
) -> dict[str, Any]:
    """Where the search's results come from, for ``report.json`` and ``best_config.toml``;
    marks the best trial on the parent run on the way."""
    metadata = trials.attachments[METADATA]
    best = best_row(finished_rows(trials), config.training.objective)
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
    config: Config, trials: Trials, tracker: MlflowTracker, store: TrialStore
) -> None:
    """Reopen the parent run, close the child runs of trials lost in flight, and keep only
    the best trial's checkpoint."""
    parent_id = trials.attachments[METADATA]["parent_run_id"]
    tracker.resume_parent(parent_id, search_settings(config))
    rows = finished_rows(trials)
    tracker.close_orphans(parent_id, {row.number for row in rows})
    best = best_row(rows, config.training.objective)
    store.keep_only_checkpoint(best.number if best else None)


def search_settings(config: Config) -> dict[str, Any]:
    """The parent run's params: how the search runs (some may change on resume)."""
    settings = {f"search.{key}": getattr(config.search, key) for key in SETTINGS_KEYS}
    return {**settings, "search.engine": "local", "training.objective": config.training.objective}


def parent_metrics(best: BestTrial, n_trials: int) -> dict[str, float]:
    """The best trial's validation figures (``best_trial/``) and the test figures
    (``test/``), prefixed so that sorting runs by a trial metric leaves the parent out."""
    valid = {f"best_trial/{name}": value for name, value in best.valid.items()}
    test = {f"test/{name}": value for name, value in best.test.as_flat_dict().items()}
    return {**valid, **test, "best_trial/number": best.row.number, "search/trials": n_trials}


def show_result(
    config: Config,
    best: BestTrial,
    trials: Trials,
    keys: Sequence[str],
    console: Console,
    seconds: float,
) -> None:
    """Once, at the end: the top trials, the best trial's test figures, the total time and
    the files written."""
    rows = finished_rows(trials)
    console.print(top_trials_table(rows, config.training.objective, TOP_TRIALS, keys))
    title = f"Best trial {best.row.number} on the test split ({best.test.n_beats:,} beats)"
    console.print(metrics_table(best.test, title=title))
    minutes, secs = divmod(round(seconds), 60)
    console.print(f"Done in {minutes} min {secs} s. Results in {config.run_dir}:")
    for path in best.outputs:
        console.print(f"  {path.name}")
