"""What the search tests share: a small search config, and readers of what a search leaves
behind (the saved trials, the MLflow runs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hyperopt import Trials
from mlflow import MlflowClient
from mlflow.entities import Run

from ecgtune.config import Config
from ecgtune.search.store import TrialStore
from ecgtune.tracking.mlflow_runs import PARENT_TAG

SPACE = {
    "training.lr": {"loguniform": [1e-3, 1e-2]},
    "model.kernel_sizes": {"each": {"choice": [3, 5, 7]}},
    "model.dropout": {"uniform": [0.1, 0.5]},
}
EXPERIMENT = "search-test"
USELESS_LR = 1e-7
"""Leaves the network as initialised: after one epoch it is far behind a trial at lr 3e-3."""

SearchConfig = Callable[..., Config]


@pytest.fixture
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow puts a SQLite store's artifacts in ./mlruns: keep them in the test's folder."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def search_config(small_config: Callable[..., Config]) -> SearchConfig:
    """``small_config`` with a 3-key space, 2 epochs, and ``max_evals`` trials."""

    def make(max_evals: int = 2, epochs: int = 2, **overrides: Any) -> Config:
        search = {"max_evals": max_evals, "space": SPACE, **overrides.pop("search", {})}
        training = {"epochs": epochs, **overrides.pop("training", {})}
        tracking = {"experiment": EXPERIMENT, **overrides.pop("tracking", {})}
        return small_config(search=search, training=training, tracking=tracking, **overrides)

    return make


def pruning_search(search_config: SearchConfig, max_evals: int) -> Config:
    """A search whose trials 0, 2 and 4 train at lr 3e-3 (the same model: ties at every
    rung, which go on) and 1, 3 and 5 at 1e-7 (hyperopt's random draws with seed 4), with
    ASHA rungs at epochs 1 and 2 of 3."""
    search = {
        "algorithm": "random",
        "pruning": "asha",
        "grace_epochs": 1,
        "reduction_factor": 2,
        "space": {"training.lr": {"choice": [3e-3, USELESS_LR]}},
    }
    return search_config(
        max_evals=max_evals, epochs=3, search=search, training={"lr": 3e-3}, seed=4
    )


def saved_trials(config: Config) -> Trials:
    trials = TrialStore(config.run_dir).load()
    assert trials is not None
    return trials


def results(config: Config) -> list[dict[str, Any]]:
    """The finished trials' result documents, in trial order."""
    return [doc["result"] for doc in saved_trials(config).trials if doc["state"] == 2]


def mlflow_runs(config: Config) -> tuple[Run, list[Run]]:
    """The experiment's one parent run and its child runs (oldest first)."""
    client = MlflowClient(config.tracking.mlflow_uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    assert experiment is not None
    runs = client.search_runs(
        [experiment.experiment_id], order_by=["attributes.start_time ASC"], max_results=100
    )
    parents = [run for run in runs if PARENT_TAG not in run.data.tags]
    assert len(parents) == 1, [run.info.run_name for run in parents]
    children = [run for run in runs if run.data.tags.get(PARENT_TAG) == parents[0].info.run_id]
    assert len(children) == len(runs) - 1
    return parents[0], children


def write_config(config: Config, folder: Path) -> Path:
    path = folder / "search.toml"
    path.write_text(tomli_w.dumps(config.model_dump(mode="json", exclude_none=True)))
    return path
