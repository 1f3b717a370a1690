"""The Ray engine (``search.engine = "ray"``) on real Ray: a local Ray running two trials at
once with ASHA, a driver killed with SIGKILL and resumed, a two-node cluster losing a node
mid-search, and the settings refused before any work. Every Ray process a test starts is
stopped by the test, whatever happens."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
from mlflow import MlflowClient
from mlflow.entities import Run
from ray.cluster_utils import Cluster

import ecgtune.training
from ecgtune.cli import main
from ecgtune.commands.tune import tune_command
from ecgtune.config import Config
from ecgtune.search.loop import new_trials
from ecgtune.search.ray import NODE, NUMBER, RayDriver
from ecgtune.search.ray_store import RayTrialStore
from ecgtune.search.space import build_search_space
from ecgtune.search.store import TrialStore
from ecgtune.tracking.mlflow_runs import FAILURE_TAG, PRUNED_TAG, STATUS_TAG, TRIAL_TAG
from ecgtune.training import predict_logits
from tests.conftest import REPO_ROOT
from tests.search_helpers import SearchConfig, mlflow_runs, results, write_config
from tests.test_search_claims import SplitSpy

pytestmark = pytest.mark.usefixtures("in_tmp_path", "ray_stopped")

OUTPUTS = ("best_config.toml", "best_model.pt", "report.json", "confusion_matrix.png")


@pytest.fixture
def ray_stopped() -> Iterator[None]:
    """Whatever a test leaves connected or started in this process is stopped."""
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def ray_cluster() -> Iterator[Cluster]:
    """A cluster on this machine: a head with no CPUs and two worker nodes of one CPU each, so
    trials run on the two worker nodes, one of which can be removed whichever node the driver
    attaches to (Ray attaches it to any node of this machine, and a driver's own node cannot
    be removed). A lost node is noticed within seconds (Ray's health checks: half a minute)."""
    health = {
        "health_check_initial_delay_ms": 0,
        "health_check_period_ms": 500,
        "health_check_failure_threshold": 3,
    }
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": health}
    )
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]


def ray_search(search_config: SearchConfig, **search: Any) -> Callable[..., Config]:
    def make(max_evals: int, epochs: int) -> Config:
        return search_config(max_evals=max_evals, epochs=epochs, search={"engine": "ray", **search})

    return make


def children_by_trial(config: Config) -> dict[int, list[Run]]:
    _, children = mlflow_runs(config)
    by_trial: dict[int, list[Run]] = {}
    for run in children:
        by_trial.setdefault(int(run.data.tags[TRIAL_TAG]), []).append(run)
    return by_trial


def check_one_finished_child_per_trial(config: Config, trials: int) -> dict[int, list[Run]]:
    """Every trial has exactly one FINISHED child run; any other child of it was closed as
    KILLED (a run cut short by a lost process or node) with the reason."""
    by_trial = children_by_trial(config)
    assert sorted(by_trial) == list(range(trials))
    for number, runs in by_trial.items():
        statuses = sorted(run.info.status for run in runs)
        assert statuses.count("FINISHED") == 1, (number, statuses)
        assert set(statuses) <= {"FINISHED", "KILLED"}, (number, statuses)
        assert all(run.data.tags.get(FAILURE_TAG) for run in runs if run.info.status == "KILLED")
    return by_trial


def saved_rows(config: Config) -> list[dict[str, Any]]:
    record = RayTrialStore(config.run_dir).load()
    assert record is not None
    return [
        {**row.__dict__, "valid": record.valid[row.number]}
        for row in sorted(record.rows, key=lambda row: row.number)
    ]


def overlapping(runs: list[Run]) -> int:
    """The most runs that were running at one moment."""
    events = sorted(
        [(run.info.start_time, 1) for run in runs] + [(run.info.end_time, -1) for run in runs],
        key=lambda event: (event[0], event[1]),
    )
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


@pytest.mark.slow
def test_local_ray_runs_two_trials_at_once_with_asha_and_writes_the_local_outputs(
    search_config: SearchConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ray_search(
        search_config,
        max_concurrent=2,
        cpus_per_trial=1,
        pruning="asha",
        grace_epochs=1,
        reduction_factor=2,
    )(max_evals=4, epochs=3)
    spy = SplitSpy(config)
    monkeypatch.setattr(ecgtune.training, "predict_logits", spy.wrap(predict_logits))
    original_finish = RayDriver.finish

    def counting(driver: RayDriver, *args: Any) -> None:
        original_finish(driver, *args)
        spy.trials_done += 1

    monkeypatch.setattr(RayDriver, "finish", counting)

    assert tune_command(config, quiet=True) == 0

    assert spy.calls == [4]  # the test split: once, after the last trial
    parent, children = mlflow_runs(config)
    assert parent.info.status == "FINISHED" and parent.data.params["search.engine"] == "ray"
    assert len(children) == 4 and overlapping(children) == 2
    client = MlflowClient(config.tracking.mlflow_uri)
    rows = saved_rows(config)
    assert [row["number"] for row in rows] == [0, 1, 2, 3]
    assert {row["status"] for row in rows} <= {"ok", "pruned"}
    assert any(row["status"] == "pruned" for row in rows)  # ASHA ended a trial at epoch 1
    for run in children:
        number = int(run.data.tags[TRIAL_TAG])
        row = rows[number]
        history = client.get_metric_history(run.info.run_id, "valid/macro_f1")
        assert [metric.step for metric in history] == list(range(1, row["epochs"] + 1))
        assert run.data.tags[STATUS_TAG] == row["status"] and run.info.status == "FINISHED"
        if row["status"] == "pruned":
            assert run.data.tags[PRUNED_TAG] == str(row["epochs"]) and row["epochs"] < 3
            assert row["note"].startswith(f"pruned at epoch {row['epochs']} by Ray Tune's ASHA")
    assert all((config.run_dir / name).is_file() for name in OUTPUTS)
    report = json.loads((config.run_dir / "report.json").read_text())
    best = max(rows, key=lambda row: (row["objective"], -row["number"]))
    assert report["best_trial"] == best["number"]
    assert report["best_valid_objective"] == pytest.approx(best["objective"])
    assert len(report["trials"]) == 4
    checkpoint = torch.load(config.run_dir / "best_model.pt", weights_only=True)
    assert checkpoint["config"]["training"]["num_threads"] == 1
    logs = sorted(path.name for path in config.tracking.tensorboard_dir.glob("*/*/trial-*"))
    assert logs == [f"trial-{number:03d}" for number in range(4)]


@pytest.mark.slow
def test_one_trial_at_a_time_runs_the_search_of_the_local_engine(
    search_config: SearchConfig,
) -> None:
    """Same space, base config, algorithm, per-trial seeds and ASHA rule: the same points in
    the same order, pruned at the same epochs, with the same scores."""
    asha = {"startup_evals": 1, "pruning": "asha", "grace_epochs": 1, "reduction_factor": 2}
    ray_config = ray_search(search_config, max_concurrent=1, **asha)(4, 3)
    assert tune_command(ray_config, quiet=True) == 0
    local_config = search_config(
        max_evals=4,
        epochs=3,
        search=asha,
        tracking={"output_dir": str(ray_config.tracking.output_dir / "local")},
    )
    assert tune_command(local_config, quiet=True) == 0

    local = results(local_config)
    ray_rows = saved_rows(ray_config)
    fields = ("number", "status", "epochs", "values")
    assert [{key: row[key] for key in fields} for row in ray_rows] == [
        {key: result["row"][key] for key in fields} for result in local
    ]
    assert any(row["status"] == "pruned" for row in ray_rows)
    assert [row["objective"] for row in ray_rows] == pytest.approx(
        [result["row"]["objective"] for result in local], rel=1e-6
    )


def process_table() -> dict[int, tuple[int, int, int]]:
    """Every process: its parent, its session and its start time (which tells it from a later
    process given the same id)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # not a process, or one that just ended
            continue
        table[int(entry.name)] = (int(fields[1]), int(fields[3]), int(fields[19]))
    return table


def started_by(pid: int) -> set[tuple[int, int]]:
    """``(id, start time)`` of the process, its descendants and the rest of its session: the
    command and every Ray process it started (some leave its session, none its descent while
    it lives)."""
    table = process_table()
    found = {pid} | {child for child, (_, session, _) in table.items() if session == pid}
    while grown := {child for child, (parent, _, _) in table.items() if parent in found} - found:
        found |= grown
    return {(process, table[process][2]) for process in found if process in table}


def kill_all(processes: set[tuple[int, int]]) -> None:
    """SIGKILL each process that still runs (the same id and start time)."""
    table = process_table()
    for pid, started in processes:
        if pid in table and table[pid][2] == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue


@pytest.mark.slow
def test_a_driver_killed_mid_search_resumes_without_duplicate_trials(
    search_config: SearchConfig, tmp_path: Path
) -> None:
    config = ray_search(search_config, max_concurrent=2)(max_evals=4, epochs=3)
    command = [sys.executable, str(REPO_ROOT / "hypertune.py"), "tune", "--quiet"]
    command += ["--config", str(write_config(config, tmp_path))]
    driver = subprocess.Popen(
        command,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    record = RayTrialStore(config.run_dir)
    try:
        deadline = time.monotonic() + 120
        while not ((saved := record.load()) and saved.rows):
            assert time.monotonic() < deadline and driver.poll() is None, "no trial finished"
            time.sleep(0.05)
    finally:
        try:
            processes = started_by(driver.pid)  # before the kill: its children then leave it
        finally:
            driver.kill()
            driver.wait()
        time.sleep(1)  # the Ray processes it started outlive it, and may start others
        later = {process for process in started_by(driver.pid) if process[0] != driver.pid}
        kill_all(processes | later)
    assert driver.returncode == -signal.SIGKILL
    # what a kill between Ray deleting a trial's older checkpoint and its next snapshot of the
    # experiment leaves (Ray keeps one per trial): the saved state names checkpoints that are
    # gone, which the resumed trials must not need
    checkpoints = list(config.run_dir.glob("ray/*/*/checkpoint_*"))
    assert checkpoints
    for folder in checkpoints:
        shutil.rmtree(folder)

    assert tune_command(config, quiet=True) == 0

    rows = saved_rows(config)
    assert [(row["number"], row["status"]) for row in rows] == [(n, "ok") for n in range(4)]
    check_one_finished_child_per_trial(config, 4)
    parent, _ = mlflow_runs(config)
    assert parent.info.status == "FINISHED"
    assert all((config.run_dir / name).is_file() for name in OUTPUTS)


class NodeReports:
    """The node of every epoch report the driver hears, by trial number (a wrapper of
    ``RayDriver.trial_reported`` that calls it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.nodes: list[tuple[int, str]] = []
        self.removed = ""
        original = RayDriver.trial_reported

        def recording(driver: RayDriver, trial: Any, result: dict[str, Any]) -> None:
            if NODE in result:
                self.nodes.append((int(trial.config[NUMBER]), str(result[NODE])))
            original(driver, trial, result)

        monkeypatch.setattr(RayDriver, "trial_reported", recording)

    def remove_a_node_once_training_on_it(self, cluster: Cluster, stop: threading.Event) -> None:
        """Remove a worker node (not the driver's) as soon as a trial reports an epoch from
        it; ``self.removed`` is its id."""
        while not stop.is_set():
            driver = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
            training = {node for _, node in list(self.nodes)}
            for node in list(cluster.worker_nodes):
                if node.node_id in training and node.node_id != driver:
                    cluster.remove_node(node, allow_graceful=False)  # type: ignore[no-untyped-call]
                    self.removed = node.node_id
                    return
            time.sleep(0.02)


@pytest.mark.slow
def test_a_cluster_runs_trials_on_two_nodes_and_survives_losing_one(
    search_config: SearchConfig, ray_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ray_search(search_config, max_concurrent=2, ray_address=ray_cluster.address)(
        max_evals=3, epochs=8
    )
    workers = {node.node_id for node in ray_cluster.worker_nodes}
    reports = NodeReports(monkeypatch)
    stop = threading.Event()
    remover = threading.Thread(
        target=reports.remove_a_node_once_training_on_it, args=(ray_cluster, stop)
    )
    remover.start()
    try:
        assert tune_command(config, quiet=True) == 0
    finally:
        stop.set()
        remover.join()

    assert len(ray_cluster.worker_nodes) == 1  # a node was removed mid-search
    assert {node for _, node in reports.nodes} == workers  # trials ran on both
    rows = saved_rows(config)
    assert [row["number"] for row in rows] == [0, 1, 2]
    assert all(row["status"] == "ok" for row in rows)
    by_trial = check_one_finished_child_per_trial(config, 3)
    lost = [run for runs in by_trial.values() for run in runs if run.info.status == "KILLED"]
    assert lost and all("worker was lost" in run.data.tags[FAILURE_TAG] for run in lost)
    (lost_trial,) = {int(run.data.tags[TRIAL_TAG]) for run in lost}
    (survivor,) = workers - {reports.removed}
    assert {(lost_trial, reports.removed), (lost_trial, survivor)} <= set(reports.nodes)
    assert (config.run_dir / "best_model.pt").is_file()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tune_error(config: Config, folder: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """``tune`` on the config: exit 2 with one line, which is returned."""
    assert main(["tune", "--config", str(write_config(config, folder)), "--quiet"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1, error
    return error[0]


def test_unreachable_ray_address_is_refused_within_seconds(
    search_config: SearchConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    error = tune_error(ray_search(search_config, ray_address=address)(2, 1), tmp_path, capsys)
    assert time.monotonic() - started < 10
    assert error.startswith(f"error: search.ray_address = '{address}': nothing answers there")
    assert not ray.is_initialized()


@pytest.mark.slow
def test_a_trial_larger_than_every_node_is_refused(
    search_config: SearchConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cpus = (os.cpu_count() or 1) + 1
    error = tune_error(ray_search(search_config, cpus_per_trial=cpus)(2, 1), tmp_path, capsys)
    assert error.startswith(f"error: search.cpus_per_trial = {cpus}: no node of the Ray cluster")
    assert not ray.is_initialized()  # Ray, started to be asked, was stopped


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_gpus_per_trial_without_cuda_is_refused(
    search_config: SearchConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error = tune_error(ray_search(search_config, gpus_per_trial=0.25)(2, 1), tmp_path, capsys)
    assert error.startswith("error: search.gpus_per_trial = 0.25: this machine has no CUDA GPU")


def test_the_ray_engine_without_ray_installed_says_how_to_install_it(
    search_config: SearchConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with monkeypatch.context() as patch:  # Ray's modules are back before Ray's teardown
        for name in [name for name in sys.modules if name == "ray" or name.startswith("ray.")]:
            patch.delitem(sys.modules, name)
        patch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
        engine = "ecgtune.search.ray"  # the engine's modules: imported again, they fail
        for name in [
            name for name in sys.modules if name == engine or name.startswith(f"{engine}.")
        ]:
            patch.delitem(sys.modules, name)
        error = tune_error(ray_search(search_config)(2, 1), tmp_path, capsys)
    assert error.startswith("error: search.engine = 'ray' needs Ray Tune, which is not installed")
    assert error.endswith('pip install -e ".[ray]"')


def test_a_local_search_is_not_resumed_by_the_ray_engine(
    search_config: SearchConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ray_search(search_config)(2, 1)
    local = config.model_copy(
        update={"search": config.search.model_copy(update={"engine": "local"})}
    )
    config.run_dir.mkdir(parents=True)
    TrialStore(config.run_dir).save(new_trials(build_search_space(local), {"identity": {}}))
    error = tune_error(config, tmp_path, capsys)
    assert "holds a search of the 'local' engine" in error and "--fresh" in error
