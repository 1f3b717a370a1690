"""The search end to end on real records with tiny models: outputs, MLflow runs, TensorBoard
files, resume, failing trials, Ctrl-C and SIGKILL, and the refusals that come before work."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hyperopt import Trials, space_eval
from mlflow import MlflowClient
from mlflow.entities import Run
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

import ecgtune.training
from ecgtune.cli import main
from ecgtune.config import Config, load_config
from ecgtune.errors import ConfigError
from ecgtune.models import build_model
from ecgtune.search import tune_command
from ecgtune.search_space import build_search_space
from ecgtune.tracking.mlflow_runs import FAILURE_TAG, PARENT_TAG, TENSORBOARD_TAG
from tests.conftest import REPO_ROOT

SPACE = {
    "training.lr": {"loguniform": [1e-3, 1e-2]},
    "model.kernel_sizes": {"each": {"choice": [3, 5, 7]}},
    "model.dropout": {"uniform": [0.1, 0.5]},
}
EXPERIMENT = "search-test"

SearchConfig = Callable[..., Config]


@pytest.fixture(autouse=True)
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


def saved_trials(config: Config) -> Trials:
    with (config.run_dir / "trials.pkl").open("rb") as stream:
        trials = pickle.load(stream)
    assert isinstance(trials, Trials)
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


def test_a_search_of_four_trials_writes_every_output(
    search_config: SearchConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    config = search_config(max_evals=4)
    assert tune_command(config, fresh=False, quiet=True) == 0

    trial_results = results(config)
    assert [result["status"] for result in trial_results] == ["ok"] * 4
    first = trial_results[0]["row"]["values"]
    assert first == {"training.lr": 1e-3, "model.kernel_sizes": [7, 5], "model.dropout": 0.3}

    parent, children = mlflow_runs(config)
    assert parent.info.status == "FINISHED"
    assert "test/macro_f1" in parent.data.metrics
    assert [run.info.run_name for run in children] == [f"trial-{n:03d}" for n in range(4)]
    client = MlflowClient(config.tracking.mlflow_uri)
    for run, result in zip(children, trial_results, strict=True):
        assert run.info.status == "FINISHED"
        assert run.info.run_id == result["run_id"]
        assert float(run.data.params["training.lr"]) == result["row"]["values"]["training.lr"]
        assert "model.channels" in run.data.params and "train_counts.N" in run.data.params
        history = client.get_metric_history(run.info.run_id, "valid/macro_f1")
        assert sorted(metric.step for metric in history) == [1, 2]
        assert run.data.metrics["best_valid/macro_f1"] == result["row"]["objective"]
        assert_tensorboard_run(Path(run.data.tags[TENSORBOARD_TAG]), result["row"]["values"])
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id)}
    expected = {"best_config.toml", "report.json", "confusion_matrix.png", "best_model.pt"}
    assert artifacts == expected

    report = json.loads((config.run_dir / "report.json").read_text())
    best = max(trial_results, key=lambda result: result["row"]["objective"])["row"]
    assert report["best_trial"] == best["number"]
    assert len(report["trials"]) == 4
    assert len(report["metrics"]["confusion_matrix"]) == 5
    assert 0 < report["metrics"]["macro_f1"] <= 1
    assert (config.run_dir / "confusion_matrix.png").stat().st_size > 0

    best_config = load_config(config.run_dir / "best_config.toml")
    space = build_search_space(config)
    vals = {k: v[0] for k, v in saved_trials(config).trials[best["number"]]["misc"]["vals"].items()}
    assert best_config == space.trial_config(space_eval(space.expression, vals))
    assert space.values_of(best_config) == best["values"]

    printed = capsys.readouterr().out
    assert "Top 5 trials" in printed and f"Best trial {best['number']} on the test split" in printed


def assert_tensorboard_run(directory: Path, values: dict[str, Any]) -> None:
    """The trial's curves and its hparams session, read back with TensorBoard's reader."""
    assert directory.parent.parent.name == EXPERIMENT
    events = EventAccumulator(str(directory))
    events.Reload()
    assert [event.step for event in events.Scalars("valid/macro_f1")] == [1, 2]
    assert "best/valid_macro_f1" in events.Tags()["scalars"]
    content = events.PluginTagToContent("hparams")
    starts = [plugin_data_pb2.HParamsPluginData.FromString(data) for data in content.values()]
    hparams = next(s.session_start_info.hparams for s in starts if s.HasField("session_start_info"))
    assert hparams["training.lr"].number_value == pytest.approx(values["training.lr"])
    assert hparams["model.kernel_sizes"].string_value == str(values["model.kernel_sizes"])


def test_running_again_resumes_up_to_max_evals_under_the_same_parent(
    search_config: SearchConfig,
) -> None:
    assert tune_command(search_config(max_evals=2), fresh=False, quiet=True) == 0
    config = search_config(max_evals=4)
    before = results(config)
    parent_before, _ = mlflow_runs(config)

    assert tune_command(config, fresh=False, quiet=True) == 0

    after = results(config)
    assert len(after) == 4
    assert after[:2] == before
    parent, children = mlflow_runs(config)
    assert parent.info.run_id == parent_before.info.run_id
    assert [run.info.run_id for run in children] == [result["run_id"] for result in after]
    assert {run.info.status for run in children} == {"FINISHED"}


def test_a_changed_space_is_refused_and_fresh_starts_over_keeping_the_old_trials(
    search_config: SearchConfig,
) -> None:
    config = search_config(max_evals=1)
    assert tune_command(config, fresh=False, quiet=True) == 0
    changed = search_config(
        max_evals=1, search={"space": {**SPACE, "model.dropout": {"uniform": [0.2, 0.5]}}}
    )
    with pytest.raises(ConfigError, match=r"trials\.pkl holds a search made with different"):
        tune_command(changed, fresh=False, quiet=True)
    other_epochs = search_config(max_evals=1, epochs=3)
    with pytest.raises(ConfigError, match=r"different training\.epochs"):
        tune_command(other_epochs, fresh=False, quiet=True)

    assert tune_command(changed, fresh=True, quiet=True) == 0
    assert len(list(config.run_dir.glob("trials.*.pkl"))) == 1
    assert len(results(changed)) == 1
    client = MlflowClient(config.tracking.mlflow_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if PARENT_TAG not in run.data.tags]
    assert len(parents) == 2


def test_a_failing_trial_is_recorded_and_the_search_goes_on(
    search_config: SearchConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail_unless_base_dropout(config: Config, n_classes: int) -> Any:
        if config.model.dropout != 0.3:
            raise RuntimeError(f"forced failure at dropout {config.model.dropout:.3f}")
        return build_model(config, n_classes)

    monkeypatch.setattr(ecgtune.training, "build_model", fail_unless_base_dropout)
    config = search_config(max_evals=3)
    assert tune_command(config, fresh=False, quiet=True) == 0

    trial_results = results(config)
    assert [result["status"] for result in trial_results] == ["ok", "fail", "fail"]
    assert trial_results[1]["failure"].startswith("RuntimeError: forced failure at dropout")
    _, children = mlflow_runs(config)
    assert [run.info.status for run in children] == ["FINISHED", "FAILED", "FAILED"]
    assert children[2].data.tags[FAILURE_TAG] == trial_results[2]["failure"]
    report = json.loads((config.run_dir / "report.json").read_text())
    assert report["best_trial"] == 0
    assert [row["ok"] for row in report["trials"]] == [True, False, False]
    assert "forced failure" in report["trials"][1]["note"]


def test_the_search_stops_after_no_progress_evals_trials_without_improvement(
    search_config: SearchConfig,
) -> None:
    """A one-point space: every trial trains the same seeded model, so none improves on the
    first, and the search must stop after 1 + 2 trials."""
    space = {"model.dropout": {"choice": [0.3]}}
    config = search_config(max_evals=6, epochs=1, search={"no_progress_evals": 2, "space": space})
    assert tune_command(config, fresh=False, quiet=True) == 0
    scores = [result["row"]["objective"] for result in results(config)]
    assert len(scores) == 3 and len(set(scores)) == 1


def test_the_timeout_stops_starting_trials(search_config: SearchConfig) -> None:
    config = search_config(max_evals=20, epochs=1, search={"timeout": 0.5})
    started = time.monotonic()
    assert tune_command(config, fresh=False, quiet=True) == 0
    assert 1 <= len(results(config)) <= 2
    assert time.monotonic() - started < 60


def test_max_evals_below_one_is_a_one_line_config_error(
    search_config: SearchConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(search_config(), tmp_path)
    assert main(["tune", "--config", str(path), "--max-evals", "0"]) == 2
    expected = "error: --max-evals: max_evals = 0: Input should be greater than or equal to 1"
    assert capsys.readouterr().err == expected + "\n"


def write_config(config: Config, folder: Path) -> Path:
    path = folder / "search.toml"
    path.write_text(tomli_w.dumps(config.model_dump(mode="json", exclude_none=True)))
    return path


@pytest.fixture
def slow_trials(search_config: SearchConfig, tmp_path: Path) -> tuple[Config, Path]:
    """Trials of 8 epochs (a few seconds), so a signal can land in the middle of one."""
    config = search_config(max_evals=3, epochs=8)
    return config, write_config(config, tmp_path)


def restore_default_ctrl_c() -> None:
    """A shell starts background jobs with SIGINT ignored (CI may run so); the search must
    see Ctrl-C as a person's terminal delivers it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def search_process(tmp_path: Path) -> Iterator[Callable[[Path], subprocess.Popen[str]]]:
    """Starts ``hypertune.py tune`` in a subprocess; kills it if the test leaves it running."""
    started: list[subprocess.Popen[str]] = []

    def start(config_path: Path) -> subprocess.Popen[str]:
        command = [sys.executable, str(REPO_ROOT / "hypertune.py"), "tune", "--config"]
        process = subprocess.Popen(
            [*command, str(config_path), "--quiet"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=restore_default_ctrl_c,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_for_second_trial(config: Config, process: subprocess.Popen[str]) -> None:
    """Until trial 1 is training (trial 0 is finished and saved by then): its TensorBoard
    event file is opened after its MLflow run starts, as training begins."""
    pattern = f"{config.tracking.experiment}/search-*/trial-001/events.out.tfevents.*"
    deadline = time.monotonic() + 120
    while not list(config.tracking.tensorboard_dir.glob(pattern)):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "trial 1 never started"
        time.sleep(0.05)


def test_sigkill_during_a_trial_loses_only_that_trial(
    slow_trials: tuple[Config, Path],
    search_process: Callable[[Path], subprocess.Popen[str]],
) -> None:
    config, path = slow_trials
    process = search_process(path)
    wait_for_second_trial(config, process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = results(config)
    assert len(before) == 1

    assert tune_command(config, fresh=False, quiet=True) == 0

    after = results(config)
    assert len(after) == 3 and after[0] == before[0]
    parent, children = mlflow_runs(config)
    assert parent.info.status == "FINISHED"
    statuses = [(run.info.run_name, run.info.status) for run in children]
    assert sorted(statuses) == [
        ("trial-000", "FINISHED"),
        ("trial-001", "FINISHED"),
        ("trial-001", "KILLED"),
        ("trial-002", "FINISHED"),
    ]
    assert {run.info.run_id for run in children if run.info.status == "FINISHED"} == {
        result["run_id"] for result in after
    }


def test_ctrl_c_exits_130_with_the_finished_trials_saved(
    slow_trials: tuple[Config, Path],
    search_process: Callable[[Path], subprocess.Popen[str]],
) -> None:
    config, path = slow_trials
    process = search_process(path)
    wait_for_second_trial(config, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted: finished work is saved"
    assert [result["status"] for result in results(config)] == ["ok"]
    parent, children = mlflow_runs(config)
    assert parent.info.status == "KILLED"
    assert [run.info.status for run in children] == ["FINISHED", "KILLED"]


@pytest.mark.parametrize("verbose", [True, False])
def test_verbose_prints_the_model_summary_at_the_start_of_each_trial(
    search_config: SearchConfig, verbose: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    config = search_config(max_evals=2, epochs=1, tracking={"verbose": verbose})
    assert tune_command(config, fresh=False, quiet=True) == 0
    output = capsys.readouterr().out
    assert output.count("encoder.stage1") == (2 if verbose else 0)
