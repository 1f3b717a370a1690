"""The best model as an MLflow Model: loaded in a fresh process, served by ``mlflow models
serve`` and registered, it gives the checkpoint's labels on real beats."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from ecgtune.config import validate_config
from ecgtune.data.dataset import BeatSet
from ecgtune.errors import ConfigError
from ecgtune.export import beat_inputs, beat_spec
from ecgtune.tracking.mlflow_model import MODEL_NAME, log_model
from ecgtune.tracking.mlflow_runs import MlflowTracker
from ecgtune.training import evaluate_test_split, predict
from tests.conftest import LOCAL_HOSTS, TINY_CNN, deep_merge
from tests.test_export_onnx import TrainedRun, trained_run

REGISTERED = "ecg-beats"
SERVER_START_SECONDS = 180
LOAD_SCRIPT = """
import json, sys
import mlflow, numpy as np
model = mlflow.pyfunc.load_model(sys.argv[1])
with np.load(sys.argv[2]) as arrays:
    inputs = {name: arrays[name] for name in arrays.files}
print(json.dumps(model.predict(inputs)["label"].tolist()))
"""


@dataclass(frozen=True)
class LoggedRun:
    run: TrainedRun
    uri: str
    run_id: str
    test_metrics: dict[str, float]

    def env(self) -> dict[str, str]:
        """The environment of a process that reads this store: the tracking URI, no proxy for
        the local server, and this virtual environment's programs first (the server runs
        ``uvicorn`` by name)."""
        local = ",".join(LOCAL_HOSTS)
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        proxies = {"NO_PROXY": local, "no_proxy": local}
        return {**os.environ, "MLFLOW_TRACKING_URI": self.uri, "PATH": path, **proxies}

    def labels(self, beats: BeatSet) -> list[str]:
        """The checkpoint's own labels (torch), the reference for every way of loading it."""
        predicted = predict(self.run.model, beats, self.run.config)
        return [self.run.dataset.class_names[index] for index in predicted]


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> LoggedRun:
    """A tiny CNN with RR features trained 3 epochs on real beats, logged to a sqlite store as
    the model of its run and registered with its test figures."""
    folder = tmp_path_factory.mktemp("mlflow-model")
    run = trained_run(folder, deep_merge(TINY_CNN, {"rr_features": "raw"}), epochs=3)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    tracker = MlflowTracker(uri, "export-test")
    run_id = tracker.start_run("train", {})
    metrics = evaluate_test_split(run.model, run.dataset, run.config).as_flat_dict()
    tracker.finish(run_id, {f"test/{name}": value for name, value in metrics.items()})
    log_model(tracker, run_id, run.run_dir, run.dataset.test, REGISTERED, metrics)
    return LoggedRun(run, uri, run_id, metrics)


def mixed_beats(logged: LoggedRun, per_class: int = 3) -> BeatSet:
    """A few test beats of every class the model predicts, so equal labels mean something."""
    test = logged.run.dataset.test
    predicted = predict(logged.run.model, test, logged.run.config)
    picked = np.concatenate([np.flatnonzero(predicted == c)[:per_class] for c in set(predicted)])
    assert len(set(predicted[picked])) >= 2, "the tiny model predicts a single class"
    return test.take(np.sort(picked))


@pytest.mark.slow
def test_fresh_process_loads_the_run_model_and_gives_the_checkpoint_labels(
    logged: LoggedRun, tmp_path: Path
) -> None:
    test = logged.run.dataset.test
    spec = beat_spec(logged.run.config, logged.run.dataset.class_names, logged.run.model)
    arrays = tmp_path / "beats.npz"
    np.savez(arrays, allow_pickle=False, **beat_inputs(test, spec))
    model_uri = f"runs:/{logged.run_id}/{MODEL_NAME}"
    done = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, model_uri, str(arrays)],
        env=logged.env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    labels = json.loads(done.stdout.strip().splitlines()[-1])
    assert labels == logged.labels(test)
    assert len(set(labels)) >= 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def model_server(logged: LoggedRun, tmp_path: Path) -> Iterator[str]:
    """``mlflow models serve`` of the run's model on a free local port, in its own process
    group, stopped with its whole group; yields the base URL once ``/ping`` answers."""
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        *("models", "serve", "-m", f"runs:/{logged.run_id}/{MODEL_NAME}"),
        *("--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)),
    ]
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        command, env=logged.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url, server, tmp_path / "server.log")
        yield url
    finally:
        stop_group(server)
        log.close()


def wait_until_serving(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the model server exited: {log.read_text(encoding='utf-8')[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=5):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    pytest.fail(f"the model server did not answer within {SERVER_START_SECONDS} s")


def stop_group(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's whole group (the CLI and its uvicorn), SIGKILL if it lingers."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    except ProcessLookupError:
        server.wait(timeout=30)


@pytest.mark.slow
def test_served_model_answers_invocations_with_the_checkpoint_labels(
    logged: LoggedRun, model_server: str
) -> None:
    beats = mixed_beats(logged)
    spec = beat_spec(logged.run.config, logged.run.dataset.class_names, logged.run.model)
    inputs = {name: array.tolist() for name, array in beat_inputs(beats, spec).items()}
    request = urllib.request.Request(
        f"{model_server}/invocations",
        data=json.dumps({"inputs": inputs}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        rows = json.loads(response.read())["predictions"]
    assert [row["label"] for row in rows] == logged.labels(beats)
    classes = logged.run.dataset.class_names
    for row in rows:
        probabilities = [row[f"p_{name}"] for name in classes]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
        assert row["label"] == classes[int(np.argmax(probabilities))]


def test_model_carries_signature_example_config_and_classes(logged: LoggedRun) -> None:
    mlflow.set_tracking_uri(logged.uri)
    model_uri = f"runs:/{logged.run_id}/{MODEL_NAME}"
    info = mlflow.models.get_model_info(model_uri)
    assert info.signature is not None
    inputs = {spec.name: spec.shape for spec in info.signature.inputs.inputs}
    data = logged.run.config.data
    assert inputs == {"beats": (-1, data.input_channels, data.beat_length), "rr": (-1, 2)}
    outputs = info.signature.outputs.input_names()
    assert outputs == ["label", *(f"p_{name}" for name in logged.run.dataset.class_names)]
    assert info.metadata == {"class_names": list(logged.run.dataset.class_names)}
    folder = Path(mlflow.artifacts.download_artifacts(model_uri))
    example = json.loads((folder / "serving_input_example.json").read_text(encoding="utf-8"))
    assert set(example["inputs"]) == {"beats", "rr"}
    config = tomllib.loads((folder / "artifacts" / "config.toml").read_text(encoding="utf-8"))
    assert validate_config(config) == logged.run.config
    spec = json.loads((folder / "artifacts" / "beat_spec.json").read_text(encoding="utf-8"))
    assert spec["rr_columns"] == ["rr_previous", "rr_next"]
    requirements = (folder / "requirements.txt").read_text(encoding="utf-8").split()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements


def test_registered_version_carries_the_test_figures(logged: LoggedRun) -> None:
    client = MlflowClient(tracking_uri=logged.uri, registry_uri=logged.uri)
    versions = client.search_model_versions(f"name = '{REGISTERED}'")
    assert len(versions) == 1
    version = versions[0]
    assert version.run_id == logged.run_id
    assert float(version.tags["test/macro_f1"]) == pytest.approx(logged.test_metrics["macro_f1"])
    assert set(version.tags) == {f"test/{name}" for name in logged.test_metrics}


def test_register_model_key_takes_a_name() -> None:
    assert validate_config({"tracking": {"register_model": "ecg-beats"}}).tracking.register_model
    assert validate_config({}).tracking.register_model is None
    with pytest.raises(ConfigError, match=r"tracking\.register_model = ''"):
        validate_config({"tracking": {"register_model": ""}})
