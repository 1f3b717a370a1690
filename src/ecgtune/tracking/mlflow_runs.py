"""MLflow: one parent run per search with one nested child run per trial, and one run per
``train``, laid out to be read in ``mlflow ui``.

The experiment is tagged as a model-training experiment (MLflow 3 opens it on its runs, not on
the GenAI overview). A trial's run (and a training's) has short params: the searched keys and
the few that define it (model kind and depth, loss, lr, batch size, resampling; keys that do
not apply to its model kind are left out), its full resolved config as the artifact
``config.toml``, the searched keys in the tag ``ecgtune.searched_keys``, the per-epoch curves
(``train/loss``, ``valid/macro_f1`` ... at step = epoch, the names TensorBoard uses), the best
epoch's figures under ``best_epoch/``, the train split's class counts as ``train_counts/``
metrics, and a link to its TensorBoard folder. It ends FINISHED, or FAILED/KILLED with the
reason in the tag ``ecgtune.failure``; a trial's run has its status (ok, pruned, failed,
killed) in the tag ``ecgtune.status`` and, unless ok, in its name (``trial-003 pruned@2``), and
a pruned trial's (FINISHED: it counts with its best epoch) the epoch it was ended at in
``ecgtune.pruned_at_epoch``. The parent has the search settings and every config key that
differs from the schema's default as params, the space as the artifact
``search_space.toml``, the best trial's validation figures under ``best_trial/`` and the test
figures under ``test/``, the best trial's name and run id as tags, and the search's table
(every trial, linked) with the test figures as its description. The experiment holds the
runs table's view (:mod:`ecgtune.tracking.mlflow_view`), which :attr:`MlflowTracker.runs_url`
opens.

Everything goes through :class:`mlflow.MlflowClient` with explicit run ids (no fluent "active
run" state), so a resumed search can reopen its parent run by id. Every call is bounded: over
HTTP each request gives up after ``HTTP_TIMEOUT_SECONDS`` and ``HTTP_RETRIES`` quick retries
(MLflow's defaults retry for minutes), and any failure becomes one :class:`TrackingError`
line, so a lost server ends a search within a minute with every finished trial saved.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunStatus, RunTag, ViewType
from mlflow.exceptions import MlflowException

from ecgtune.config import Config, config_toml
from ecgtune.dotted import flatten
from ecgtune.errors import TrackingError, UserError
from ecgtune.search.trials import TrialObserver, TrialOutcome, TrialStart
from ecgtune.tracking.mlflow_view import VIEW_TAG, runs_table_url, trial_run_name
from ecgtune.tracking.tensorboard import epoch_scalars, trial_tensorboard_dir
from ecgtune.training import EpochRecord, TrainingObserver, TrainResult

HTTP_TIMEOUT_SECONDS = 10
"""How long one request to a remote tracking server may take."""
HTTP_RETRIES = 2
"""Quick retries (1 s, then 2 s apart) of a failed request before the search gives up."""
BATCH_LIMIT = 100
"""MLflow's limit on params (and tags) per ``log_batch`` call."""
TAG_LIMIT = 5000
"""Tag values are cut to this many characters (MLflow refuses longer ones)."""
PARENT_TAG = "mlflow.parentRunId"
FAILURE_TAG = "ecgtune.failure"
TRIAL_TAG = "ecgtune.trial"
STATUS_TAG = "ecgtune.status"
PRUNED_TAG = "ecgtune.pruned_at_epoch"
TENSORBOARD_TAG = "ecgtune.tensorboard_dir"
OVERRIDES_TAG = "ecgtune.overrides"
SEARCHED_TAG = "ecgtune.searched_keys"
BEST_TRIAL_TAG = "ecgtune.best_trial"
BEST_RUN_TAG = "ecgtune.best_trial_run_id"
MISSING = "RESOURCE_DOES_NOT_EXIST"
"""MLflow's error code for a run (or experiment) that its store does not hold."""
NOTE_TAG = "mlflow.note.content"
"""The run's description in the UI (markdown)."""
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
"""MLflow 3's experiment kind for model training: the UI opens on the runs table."""
DEFINING_KEYS = (
    "model.kind",
    "model.conv_layers",
    "model.hidden_size",
    "training.loss",
    "training.lr",
    "training.batch_size",
    "data.resample.method",
)
"""Logged as params for every run besides the searched keys: what a reader of the runs table
needs to tell two runs apart."""

P = ParamSpec("P")
R = TypeVar("R")


def bounded(method: Callable[P, R]) -> Callable[P, R]:
    """Turn any failure of a tracking call into one :class:`TrackingError` line."""

    @wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        tracker = args[0]
        assert isinstance(tracker, MlflowTracker)
        with _store_errors(tracker.uri):
            return method(*args, **kwargs)

    return call


class MlflowTracker:
    """The MLflow side of a search or a training, bound to one tracking URI and experiment."""

    def __init__(self, uri: str, experiment: str, artifacts: Path | None = None) -> None:
        """Connect and find (or create) the experiment, with its artifacts in ``artifacts``
        when given (else where the store puts them); an unreachable store is refused now
        rather than hours into the search."""
        self.uri = uri
        self.experiment = experiment
        bound_http_requests()
        with _store_errors(uri):
            self.client = MlflowClient(tracking_uri=uri)
            found = self.client.get_experiment_by_name(experiment)
            location = artifacts.resolve().as_uri() if artifacts else None
            self.experiment_id = (
                found.experiment_id
                if found
                else self.client.create_experiment(experiment, artifact_location=location)
            )
            if found is None or found.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
                self.client.set_experiment_tag(
                    self.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING
                )

    @property
    def runs_url(self) -> str:
        """The experiment's runs table in ``mlflow ui`` (model-training view, the search's
        columns)."""
        return runs_table_url(self.uri, self.experiment_id)

    @bounded
    def set_runs_view(self, view_state: str) -> None:
        """The columns :attr:`runs_url` opens the runs table with (the latest search's)."""
        self.client.set_experiment_tag(self.experiment_id, VIEW_TAG, view_state)

    @bounded
    def describe(self, run_id: str, markdown: str) -> None:
        """The run's description in the UI, cut to what MLflow stores."""
        self._log(run_id, tags={NOTE_TAG: markdown})

    @bounded
    def rename(self, run_id: str, name: str) -> None:
        self.client.update_run(run_id, name=name)

    def run_link(self, run_id: str) -> str:
        """A link from one run's description to another run, relative to the UI."""
        return f"#/experiments/{self.experiment_id}/runs/{run_id}"

    @bounded
    def start_run(
        self, name: str, params: Mapping[str, Any], tags: Mapping[str, Any] | None = None
    ) -> str:
        """A new RUNNING run (a search's parent, a trial with a parent tag, a training)."""
        texts = {key: _text(value) for key, value in (tags or {}).items()}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=texts)
        self._log(run.info.run_id, params=params)
        return str(run.info.run_id)

    @bounded
    def parent_run_problem(self, run_id: str) -> str | None:
        """Why a saved search's parent run cannot be resumed here, or None: it is no run of
        this store, or a run of another experiment (a ``trials.json`` copied from another
        run directory would link the new trials to that experiment's search)."""
        try:
            run = self.client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code != MISSING:
                raise
            return f"is no run of the MLflow store tracking.mlflow_uri = {self.uri!r}"
        if run.info.experiment_id == self.experiment_id:
            return None
        other = self.client.get_experiment(run.info.experiment_id).name
        return (
            f"is a run of the MLflow experiment {other!r}, not of tracking.experiment = "
            f"{self.experiment!r} (was the file copied from another run directory?)"
        )

    @bounded
    def resume_parent(self, run_id: str, settings: Mapping[str, Any]) -> None:
        """Reopen a saved search's parent run (RUNNING again). Params are written once: a
        setting changed for this run (``--max-evals 40``) is recorded as the tag
        ``resumed/<key>``."""
        run = self.client.get_run(run_id)
        if run.info.lifecycle_stage != "active":
            raise TrackingError(
                f"the saved search's MLflow run {run_id} was deleted from {self.uri}; "
                f"restore it or start over with --fresh"
            )
        self.client.update_run(run_id, status="RUNNING")
        logged = run.data.params
        changed = {
            f"resumed/{key}": value
            for key, value in settings.items()
            if key in logged and logged[key] != _text(value)
        }
        new = {key: value for key, value in settings.items() if key not in logged}
        self._log(run_id, params=new, tags=changed)

    @bounded
    def log_text(self, run_id: str, text: str, name: str) -> None:
        """A text artifact (a config, the search space) of the run."""
        self.client.log_text(run_id, text, name)

    @bounded
    def mark_best_trial(self, parent_id: str, number: int) -> str | None:
        """Tag the parent with the best trial's name and run id, so the UI leads from the
        search to its best trial; returns the run id (None when the trial's run is gone)."""
        run_id = self.trial_runs(parent_id).get(number)
        tags = {BEST_TRIAL_TAG: f"trial-{number:03d}"}
        self._log(parent_id, tags=tags | ({BEST_RUN_TAG: run_id} if run_id else {}))
        return run_id

    def trial_runs(self, parent_id: str) -> dict[int, str]:
        """Trial number -> run id of the parent's trial runs (a trial run again after a
        killed search: its last run)."""
        return {
            int(run.data.tags[TRIAL_TAG]): str(run.info.run_id)
            for run in self.children(parent_id)
            if TRIAL_TAG in run.data.tags
        }

    @bounded
    def close_orphans(self, parent_id: str, finished_trials: set[int]) -> list[str]:
        """Mark KILLED the child runs of trials that the saved search does not hold: trials in
        flight when the process was killed. They run again as new child runs, so no trial is
        counted twice. Returns the ids closed."""
        closed = []
        for run in self.children(parent_id):
            run_id = str(run.info.run_id)
            trial = run.data.tags.get(TRIAL_TAG)
            finished = trial is not None and int(trial) in finished_trials
            if finished or run.data.tags.get(FAILURE_TAG):
                continue
            reason = "the search process ended during this trial; it was run again"
            self._log(run_id, tags={FAILURE_TAG: reason})
            self.client.update_run(run_id, name=f"{run.info.run_name} killed")
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
            closed.append(run_id)
        return closed

    @bounded
    def children(self, parent_id: str) -> list[Run]:
        """The parent's child runs, oldest first."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            order_by=["attributes.start_time ASC"],
        )
        return list(runs)

    @bounded
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        self._log(run_id, params=params)

    @bounded
    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        self._log(run_id, metrics=metrics, step=step)

    @bounded
    def finish(
        self,
        run_id: str,
        metrics: Mapping[str, float] | None = None,
        failure: str | None = None,
        status: str = "FINISHED",
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        """End a run: final metrics and ``tags``, then FINISHED, or ``status`` with the reason
        tagged."""
        ended = {**(tags or {}), **({FAILURE_TAG: failure} if failure else {})}
        self._log(run_id, metrics=metrics or {}, tags=ended)
        self.client.set_terminated(run_id, status)

    def end_early(self, run_id: str, reason: str, status: str) -> None:
        """Close a run as its command ends early (FAILED or KILLED, with the reason); a second
        failure here (the same lost server) must not hide the one that ended the command."""
        with contextlib.suppress(Exception):
            self.finish(run_id, failure=reason, status=status)

    @bounded
    def log_artifacts(self, run_id: str, paths: list[Path]) -> None:
        for path in paths:
            self.client.log_artifact(run_id, str(path))

    def _log(
        self,
        run_id: str,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, Any] | None = None,
        step: int = 0,
    ) -> None:
        """Params, metrics and tags in batches MLflow accepts."""
        now = int(time.time() * 1000)
        entries: list[Param | Metric | RunTag] = [
            *(Param(key, _text(value)) for key, value in (params or {}).items()),
            *(Metric(key, float(value), now, step) for key, value in (metrics or {}).items()),
            *(RunTag(key, _text(value)) for key, value in (tags or {}).items()),
        ]
        for start in range(0, len(entries), BATCH_LIMIT):
            chunk = entries[start : start + BATCH_LIMIT]
            self.client.log_batch(
                run_id,
                metrics=[e for e in chunk if isinstance(e, Metric)],
                params=[e for e in chunk if isinstance(e, Param)],
                tags=[e for e in chunk if isinstance(e, RunTag)],
            )


class MlflowEpochLogger(TrainingObserver):
    """Logs every epoch's figures to a run at step = epoch, as it trains."""

    def __init__(self, tracker: MlflowTracker, run_id: str) -> None:
        self.tracker = tracker
        self.run_id = run_id

    def on_epoch_end(self, record: EpochRecord) -> None:
        self.tracker.log_metrics(self.run_id, epoch_scalars(record), step=record.epoch)


class MlflowTrials(TrialObserver):
    """One nested child run per trial under the search's parent run."""

    def __init__(
        self,
        tracker: MlflowTracker,
        parent_id: str,
        tensorboard_root: Path,
        searched: Sequence[str],
    ) -> None:
        self.tracker = tracker
        self.parent_id = parent_id
        self.tensorboard_root = tensorboard_root
        self.searched = list(searched)
        self.run_ids: dict[int, str] = {}

    def trial_started(self, trial: TrialStart) -> TrainingObserver:
        tensorboard_dir = trial_tensorboard_dir(self.tensorboard_root, trial.number)
        tags = {
            PARENT_TAG: self.parent_id,
            TRIAL_TAG: str(trial.number),
            TENSORBOARD_TAG: str(tensorboard_dir.resolve()),
            SEARCHED_TAG: ", ".join(self.searched),
        }
        params = run_params(trial.config, self.searched)
        run_id = self.tracker.start_run(f"trial-{trial.number:03d}", params, tags)
        self.run_ids[trial.number] = run_id
        self.tracker.log_text(run_id, config_toml(trial.config), "config.toml")
        return MlflowEpochLogger(self.tracker, run_id)

    def trial_ended(self, outcome: TrialOutcome) -> None:
        run_id = self.run_ids.pop(outcome.row.number, None)
        if run_id is None:  # the trial ended before its run was created
            return
        tags: dict[str, str] = {STATUS_TAG: outcome.row.status}
        if outcome.row.status != "ok":
            self.tracker.rename(run_id, trial_run_name(outcome.row))
        if outcome.result is None:
            status = "KILLED" if outcome.row.status == "killed" else "FAILED"
            self.tracker.finish(run_id, failure=outcome.row.note, status=status, tags=tags)
            return
        if outcome.result.pruned_at is not None:
            tags[PRUNED_TAG] = str(outcome.result.pruned_at)
        self.tracker.finish(run_id, result_metrics(outcome.result), tags=tags)


def run_params(config: Config, searched: Sequence[str] = ()) -> dict[str, Any]:
    """The searched keys and :data:`DEFINING_KEYS` of a run, those that apply to its model
    (the full config goes with the run as ``config.toml``)."""
    flat = flatten(config.model_dump(mode="json"))
    keys = dict.fromkeys([*searched, *DEFINING_KEYS])
    return {key: flat[key] for key in keys if key in flat and config.model.uses(key)}


def result_metrics(result: TrainResult) -> dict[str, float]:
    """A finished run's summary: the best epoch's validation figures (``best_epoch/``), the
    epochs trained and the train split's beats per class (``train_counts/``)."""
    best = {f"best_epoch/{name}": value for name, value in result.best_valid.items()}
    counts = {f"train_counts/{name}": n for name, n in result.train_counts.items()}
    return {**best, "best_epoch/epoch": result.best_epoch, "epochs": len(result.history), **counts}


def bound_http_requests() -> None:
    """Bound every request to a remote tracking server (a user's own settings win)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(HTTP_TIMEOUT_SECONDS))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(HTTP_RETRIES))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")


def _text(value: Any) -> str:
    return str(value)[:TAG_LIMIT]


@contextmanager
def _store_errors(uri: str) -> Iterator[None]:
    """Any failure to reach the tracking store becomes one clear TrackingError line."""
    try:
        yield
    except UserError:  # already one line of ours (a lost server, a refused saved search)
        raise
    except Exception as exc:  # MLflow raises many kinds (HTTP, SQL, OS): all mean the same
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(
            f"cannot use the MLflow tracking store tracking.mlflow_uri = {uri!r}: "
            f"{first_line[:300]} (start the server, or fix tracking.mlflow_uri)"
        ) from None
