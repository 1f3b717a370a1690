"""MLflow over HTTP: a real ``mlflow server`` on 127.0.0.1 tracks a search; a dead one is
refused before any work starts."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from ecgtune.config import Config
from ecgtune.errors import UserError
from ecgtune.search import tune_command
from ecgtune.tracking.mlflow_runs import PARENT_TAG

SERVER_START_SECONDS = 120
SPACE = {"training.lr": {"loguniform": [1e-3, 1e-2]}}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` with its own SQLite store, serving artifacts over HTTP."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    uri = f"http://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
    command += ["--port", uri.rsplit(":", 1)[1], "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{folder / 'server.db'}"]
    command += ["--artifacts-destination", str(folder / "artifacts")]
    with (folder / "server.log").open("w") as log:
        server = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_healthy(uri, server, folder / "server.log")
            yield uri
        finally:
            server.terminate()
            server.wait(timeout=30)


def wait_until_healthy(uri: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server did not start in {SERVER_START_SECONDS} s: {log.read_text()}")


@pytest.fixture
def http_config(
    small_config: Callable[..., Config], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], Config]:
    monkeypatch.chdir(tmp_path)

    def make(uri: str, **search: Any) -> Config:
        return small_config(
            training={"epochs": 1},
            search={"max_evals": 2, "space": SPACE, **search},
            tracking={"mlflow_uri": uri, "experiment": "over-http"},
        )

    return make


def test_a_search_is_tracked_through_a_remote_server(
    mlflow_server: str, http_config: Callable[[str], Config]
) -> None:
    config = http_config(mlflow_server)
    assert tune_command(config, fresh=False, quiet=True) == 0

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("over-http")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if PARENT_TAG not in run.data.tags]
    children = [run for run in runs if PARENT_TAG in run.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert all("training.lr" in run.data.params for run in children)
    assert all(client.get_metric_history(run.info.run_id, "valid/loss") for run in children)
    artifacts = {item.path for item in client.list_artifacts(parents[0].info.run_id)}
    assert {"best_config.toml", "report.json", "best_model.pt"} <= artifacts


def test_an_unreachable_server_is_refused_quickly_before_any_work(
    http_config: Callable[[str], Config],
) -> None:
    config = http_config(f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(UserError, match=r"cannot use the MLflow tracking store .*127\.0\.0\.1"):
        tune_command(config, fresh=False, quiet=True)
    assert time.monotonic() - started < 15
    assert not (config.run_dir / "trials.pkl").exists()
