"""A local MLflow store (a SQLite file, a file store) that cannot be opened or written is
refused by the command line (its ``main``, in this process) with one line naming
``tracking.mlflow_uri``, within seconds and before any work (MLflow's SQLAlchemy retries took
about 100 s, then a 184-line traceback); and a SQLite store keeps a new experiment's artifacts
under its run directory, not in ``./mlruns`` of the working folder."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from mlflow import MlflowClient

from ecgtune.commands.tune import tune_command
from ecgtune.config import Config
from tests.conftest import run_hypertune
from tests.search_helpers import SearchConfig, mlflow_runs, write_config

REFUSED_WITHIN_SECONDS = 30
"""The refusal takes a second or two; MLflow's retries took about 100."""


def not_a_database(tmp_path: Path, unwritable: Path) -> tuple[str, str]:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are notes, not a database\n" * 40)
    return f"sqlite:///{path}", f"{path} is not an SQLite database (file is not a database)"


def a_folder(tmp_path: Path, unwritable: Path) -> tuple[str, str]:
    (tmp_path / "store.db").mkdir()
    return f"sqlite:///{tmp_path / 'store.db'}", f"{tmp_path / 'store.db'} is a folder"


def unwritable_folder(tmp_path: Path, unwritable: Path) -> tuple[str, str]:
    return (
        f"sqlite:///{unwritable / 'mlflow.db'}",
        f"cannot write the database's folder {unwritable}",
    )


def unwritable_file_store(tmp_path: Path, unwritable: Path) -> tuple[str, str]:
    store = unwritable / "mlruns"
    return str(store), f"cannot write the file store's folder {store}"


@pytest.mark.parametrize(
    "store", [not_a_database, a_folder, unwritable_folder, unwritable_file_store]
)
def test_a_local_store_that_cannot_be_used_is_refused_in_one_line_within_seconds(
    search_config: SearchConfig,
    tmp_path: Path,
    unwritable_dir: Path,
    store: Callable[[Path, Path], tuple[str, str]],
) -> None:
    uri, expected = store(tmp_path, unwritable_dir)
    config = search_config(max_evals=1, epochs=1, tracking={"mlflow_uri": uri})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = ["tune", "--quiet", "--config", str(write_config(config, tmp_path))]
    started = time.monotonic()
    result = run_hypertune(*command, cwd=elsewhere)
    assert time.monotonic() - started < REFUSED_WITHIN_SECONDS
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: tracking.mlflow_uri = {uri!r}: {expected}"), line
    assert not (config.run_dir / "trials.json").exists()
    assert list(elsewhere.iterdir()) == []


@pytest.mark.slow
def test_a_sqlite_store_keeps_the_artifacts_in_the_run_directory(
    search_config: Callable[..., Config], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = search_config(
        max_evals=1, epochs=1, data={"records": ["100"], "max_beats_per_record": 200}
    )

    assert tune_command(config, quiet=True) == 0

    assert list(elsewhere.iterdir()) == []  # no ./mlruns
    artifacts = config.run_dir / "mlflow-artifacts"
    experiment = MlflowClient(config.tracking.mlflow_uri).get_experiment_by_name(
        config.tracking.experiment
    )
    assert experiment is not None and experiment.artifact_location == artifacts.as_uri()
    parent, children = mlflow_runs(config)
    for run in (parent, *children):
        assert Path(urlsplit(run.info.artifact_uri).path).is_relative_to(artifacts)
    assert (Path(urlsplit(parent.info.artifact_uri).path) / "best_config.toml").is_file()
