"""MLflow: one parent run per search, one nested child run per trial.

The parent run carries the search settings, then the best trial's figures, its config, the
report, the confusion matrix and the model. Each child run carries every resolved config key
of its trial (flattened: ``model.kernel_sizes``), the per-epoch curves (same names as in
TensorBoard: ``train/loss``, ``valid/macro_f1`` ... at step = epoch), the best epoch's
validation figures, the resampled train counts, a tag linking its TensorBoard directory, and
ends FINISHED, or FAILED with the reason in the ``ecgtune.failure`` tag.

Everything goes through :class:`mlflow.MlflowClient` with explicit run ids (no fluent "active
run" state), so a resumed search can reopen its parent run by id. ``mlflow ui`` in the folder
holding ``mlflow.db`` (the default ``sqlite:///mlflow.db``) shows the runs; a remote tracking
server (``http://host:5000``) works the same and is probed before the search starts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunStatus, RunTag, ViewType

from ecgtune.errors import UserError
from ecgtune.tracking.tensorboard import epoch_scalars
from ecgtune.training import EpochRecord, TrainingObserver

PROBE_TIMEOUT_SECONDS = 5
"""How long the start-up probe waits for a remote tracking server before refusing to start."""
BATCH_LIMIT = 100
"""MLflow's limit on params (and tags) per ``log_batch`` call."""
TAG_LIMIT = 5000
"""Tag values are cut to this many characters (MLflow refuses longer ones)."""
PARENT_TAG = "mlflow.parentRunId"
FAILURE_TAG = "ecgtune.failure"
TRIAL_TAG = "ecgtune.trial"
TENSORBOARD_TAG = "ecgtune.tensorboard_dir"


class SearchTracker:
    """The MLflow side of one search, bound to one tracking URI and experiment."""

    def __init__(self, uri: str, experiment: str) -> None:
        """Connect and find (or create) the experiment; an unreachable store is a UserError
        now rather than a failure hours into the search."""
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        with _quick_requests(), _store_errors(uri):
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = (
                found.experiment_id if found else self.client.create_experiment(experiment)
            )

    def start_parent(self, name: str, params: Mapping[str, Any], tags: Mapping[str, Any]) -> str:
        """A new parent run for a new search; returns its id."""
        run = self.client.create_run(self.experiment_id, run_name=name)
        self._log(run.info.run_id, params=params, tags=tags)
        return str(run.info.run_id)

    def resume_parent(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Reopen a saved search's parent run (RUNNING again) and update its settings tags."""
        with _store_errors(self.uri):
            run = self.client.get_run(run_id)
        if run.info.lifecycle_stage != "active":
            raise UserError(
                f"the saved search's MLflow run {run_id} was deleted from {self.uri}; "
                f"restore it or start over with --fresh"
            )
        self.client.update_run(run_id, status="RUNNING")
        self._log(run_id, tags=tags)

    def close_orphans(self, parent_id: str, kept_run_ids: set[str]) -> list[str]:
        """Mark KILLED the child runs that no saved trial refers to: runs of trials that were
        in flight when the process was killed. Their trials run again as new child runs, so
        no trial is counted twice. Returns the ids closed."""
        closed = []
        for run in self.children(parent_id):
            run_id = str(run.info.run_id)
            if run_id in kept_run_ids or run.data.tags.get(FAILURE_TAG):
                continue
            reason = "the search process ended during this trial; it was run again"
            self._log(run_id, tags={FAILURE_TAG: reason})
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
            closed.append(run_id)
        return closed

    def children(self, parent_id: str) -> list[Run]:
        """The parent's child runs, oldest first."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            order_by=["attributes.start_time ASC"],
        )
        return list(runs)

    def start_child(self, parent_id: str, trial: int, tensorboard_dir: Path) -> str:
        """A RUNNING child run for one trial, linked to its parent and TensorBoard directory."""
        tags = {
            PARENT_TAG: parent_id,
            TRIAL_TAG: str(trial),
            TENSORBOARD_TAG: str(tensorboard_dir.resolve()),
        }
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{trial:03d}", tags=tags)
        return str(run.info.run_id)

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        self._log(run_id, params=params)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        self._log(run_id, metrics=metrics, step=step)

    def finish(
        self,
        run_id: str,
        metrics: Mapping[str, float] | None = None,
        failure: str | None = None,
        status: str = "FINISHED",
    ) -> None:
        """End a run: final metrics, then FINISHED, or ``status`` with the reason tagged."""
        self._log(run_id, metrics=metrics or {}, tags={FAILURE_TAG: failure} if failure else {})
        self.client.set_terminated(run_id, status)

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
    """Logs every epoch's figures to a child run at step = epoch, as the trial trains, and
    counts them (a failed trial reports how far it got)."""

    def __init__(self, tracker: SearchTracker, run_id: str) -> None:
        self.tracker = tracker
        self.run_id = run_id
        self.logged = 0

    def on_epoch_end(self, record: EpochRecord) -> None:
        self.tracker.log_metrics(self.run_id, epoch_scalars(record), step=record.epoch)
        self.logged += 1


def _text(value: Any) -> str:
    return str(value)[:TAG_LIMIT]


@contextmanager
def _quick_requests() -> Iterator[None]:
    """Make MLflow's HTTP client give up fast (no retries, short timeout) for the probe; its
    defaults retry for minutes before reporting a dead server."""
    quick = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(PROBE_TIMEOUT_SECONDS),
    }
    saved = {key: os.environ.get(key) for key in quick}
    os.environ.update(quick)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _store_errors(uri: str) -> Iterator[None]:
    """Any failure to reach the tracking store becomes one clear UserError line."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # MLflow raises many kinds (HTTP, SQL, OS): all mean the same
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot use the MLflow tracking store tracking.mlflow_uri = {uri!r}: "
            f"{first_line[:300]} (start the server, or fix tracking.mlflow_uri)"
        ) from None
