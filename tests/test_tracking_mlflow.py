"""MLflow over HTTP: a real ``mlflow server`` on 127.0.0.1 tracks a search; a dead one is
refused before any work starts; one lost in the middle of a search ends it within a minute
with the finished trials saved, and the search resumes once the server is back."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from mlflow import MlflowClient

from ecgtune.commands.tune import tune_command
from ecgtune.config import Config
from ecgtune.errors import UserError
from ecgtune.search.store import TrialStore
from ecgtune.tracking.mlflow_runs import PARENT_TAG
from tests.conftest import REPO_ROOT

SERVER_START_SECONDS = 120
SPACE = {"training.lr": {"loguniform": [1e-3, 1e-2]}}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_server(folder: Path, port: int) -> Iterator[str]:
    """``mlflow server`` with its own SQLite store, serving artifacts over HTTP, in its own
    process group: MLflow 3 starts worker processes that outlive a terminated parent, so the
    whole group is killed when the block ends."""
    uri = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{folder / 'server.db'}"]
    command += ["--artifacts-destination", str(folder / "artifacts")]
    with (folder / "server.log").open("a") as log:
        server = subprocess.Popen(
            command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_until_healthy(uri, server, folder / "server.log")
            yield uri
        finally:
            stop_group(server)


def stop_group(server: subprocess.Popen[bytes]) -> None:
    """Kill the server's whole process group and reap the leader."""
    with suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("mlflow-server"), free_port()) as uri:
        yield uri


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

    def make(uri: str, epochs: int = 1, **search: Any) -> Config:
        return small_config(
            training={"epochs": epochs},
            search={"max_evals": 2, "space": SPACE, **search},
            tracking={"mlflow_uri": uri, "experiment": "over-http"},
        )

    return make


@pytest.mark.slow
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
    assert time.monotonic() - started < 15  # guards a hang (MLflow's defaults retry for minutes)
    assert not (config.run_dir / "trials.json").exists()


@pytest.mark.slow
def test_a_server_lost_mid_search_ends_it_within_a_minute_and_the_rerun_resumes(
    http_config: Callable[..., Config], tmp_path: Path
) -> None:
    folder, port = tmp_path / "lost-server", free_port()
    folder.mkdir()
    config = http_config(f"http://127.0.0.1:{port}", max_evals=3, epochs=8)
    path = tmp_path / "search.toml"
    path.write_text(tomli_w.dumps(config.model_dump(mode="json", exclude_none=True)))
    command = [sys.executable, str(REPO_ROOT / "hypertune.py"), "tune", "--quiet"]
    with running_server(folder, port) as uri:
        search = subprocess.Popen(
            [*command, "--config", str(path)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for_trial(config, 1, search)
        except BaseException:
            search.kill()
            search.communicate()
            raise
    lost = time.monotonic()
    try:
        _, stderr = search.communicate(timeout=90)
    finally:
        if search.poll() is None:
            search.kill()
            search.communicate()
    assert time.monotonic() - lost < 60, "the search hung on the lost server"
    assert search.returncode == 2, stderr
    assert stderr.strip().startswith("error: cannot use the MLflow tracking store")
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    trials = TrialStore(config.run_dir).load()
    assert trials is not None and [doc["tid"] for doc in trials.trials if doc["state"] == 2] == [0]

    with running_server(folder, port) as uri:
        assert tune_command(config, quiet=True) == 0
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("over-http")
        assert experiment is not None
        runs = client.search_runs([experiment.experiment_id])
    children = sorted(
        (run.info.run_name, run.info.status) for run in runs if PARENT_TAG in run.data.tags
    )
    assert children == [
        ("trial-000", "FINISHED"),
        ("trial-001", "FINISHED"),
        ("trial-001 killed", "KILLED"),
        ("trial-002", "FINISHED"),
    ]


def wait_for_trial(config: Config, number: int, process: subprocess.Popen[str]) -> None:
    """Until trial ``number`` trains: its TensorBoard event file exists."""
    pattern = f"{config.tracking.experiment}/*/trial-{number:03d}/events.out.tfevents.*"
    deadline = time.monotonic() + 120
    while not list(config.tracking.tensorboard_dir.glob(pattern)):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"trial {number} never started"
        time.sleep(0.05)
