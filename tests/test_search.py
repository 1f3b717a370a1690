"""The search end to end on real records with tiny models: outputs, MLflow runs, TensorBoard
files, resume, failing trials, Ctrl-C and SIGKILL, and the refusals that come before work."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hyperopt import space_eval
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

import ecgtune.training
from ecgtune.cli import main
from ecgtune.commands.tune import tune_command
from ecgtune.config import Config, load_config
from ecgtune.errors import ConfigError
from ecgtune.models import build_model
from ecgtune.search.space import build_search_space
from ecgtune.tracking.mlflow_runs import (
    FAILURE_TAG,
    PARENT_TAG,
    SEARCHED_TAG,
    TENSORBOARD_TAG,
    TRIAL_TAG,
)
from tests.conftest import REPO_ROOT
from tests.search_helpers import (
    EXPERIMENT,
    SPACE,
    SearchConfig,
    mlflow_runs,
    results,
    saved_trials,
    write_config,
)

pytestmark = pytest.mark.usefixtures("in_tmp_path")


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
        assert run.data.tags[TRIAL_TAG] == str(result["row"]["number"])
        assert float(run.data.params["training.lr"]) == result["row"]["values"]["training.lr"]
        assert set(run.data.params) == {
            "training.lr",
            "model.kernel_sizes",
            "model.dropout",
            "model.kind",
            "model.conv_layers",
            "training.loss",
            "training.batch_size",
            "data.resample.method",
        }  # the searched keys and the defining ones; no rnn key on a cnn trial
        assert run.data.tags[SEARCHED_TAG] == "training.lr, model.kernel_sizes, model.dropout"
        assert run.data.metrics["train_counts/N"] > 0
        config_text = client.download_artifacts(run.info.run_id, "config.toml")
        assert load_config(Path(config_text)).training.lr == result["row"]["values"]["training.lr"]
        history = client.get_metric_history(run.info.run_id, "valid/macro_f1")
        assert sorted(metric.step for metric in history) == [1, 2]
        assert run.data.metrics["best_epoch/macro_f1"] == result["row"]["objective"]
        assert not [name for name in run.data.metrics if name.startswith(("se_", "ppv_"))]
        assert_tensorboard_run(Path(run.data.tags[TENSORBOARD_TAG]), result)
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id)}
    expected = {"best_config.toml", "report.json", "confusion_matrix.png", "best_model.pt"}
    assert artifacts == expected | {"search_space.toml", "MODEL_CARD.md"}
    (logged,) = client.search_logged_models([experiment_id(config)])
    assert logged.source_run_id == parent.info.run_id and logged.name == "model"

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
    trial = space.trial_config(space_eval(space.expression, vals))
    assert best_config.model_dump(exclude={"tracking"}) == trial.model_dump(exclude={"tracking"})
    assert space.values_of(best_config) == best["values"]

    printed = capsys.readouterr().out
    assert "Top 4 of 4 trials" in printed
    assert f"Best trial {best['number']} on the test split" in printed
    assert printed.count("Top 4 of 4 trials") == 1 and "Done in " in printed


@pytest.mark.slow
def test_what_a_reader_of_the_search_sees_in_mlflow_and_the_report_files(
    search_config: SearchConfig,
) -> None:
    config = search_config(max_evals=3, epochs=2)
    assert tune_command(config, quiet=True) == 0
    client = MlflowClient(config.tracking.mlflow_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    parent, children = mlflow_runs(config)
    report = json.loads((config.run_dir / "report.json").read_text())
    best = report["best_trial"]
    best_run = next(run for run in children if run.data.tags[TRIAL_TAG] == str(best))

    settings = {
        "search.algorithm": "tpe",
        "search.max_evals": "3",
        "search.timeout": "None",
        "search.no_progress_evals": "0",
        "search.startup_evals": "10",
        "search.engine": "local",
        "training.objective": "macro_f1",
    }
    changed = {"training.epochs": "2", "model.conv_layers": "2", "data.max_beats_per_record": "400"}
    assert parent.data.params.items() >= (settings | changed).items()
    assert "training.lr" not in parent.data.params  # searched, at the schema's default
    assert parent.data.tags["ecgtune.best_trial"] == f"trial-{best:03d}"
    assert parent.data.tags["ecgtune.best_trial_run_id"] == best_run.info.run_id
    assert best_run.info.run_id in parent.data.tags["mlflow.note.content"]
    assert parent.data.metrics["test/macro_f1"] == pytest.approx(report["metrics"]["macro_f1"])
    assert (
        parent.data.metrics["best_trial/macro_f1"] == best_run.data.metrics["best_epoch/macro_f1"]
    )
    assert not [name for name in parent.data.metrics if name.startswith(("best_epoch/", "valid/"))]
    space_file = Path(client.download_artifacts(parent.info.run_id, "search_space.toml"))
    assert '"training.lr" = {loguniform = [0.001, 0.01]}' in space_file.read_text()

    assert list(report)[:2] == ["metrics", "split"] and list(report)[-1] == "trials"
    assert report["mlflow"]["parent_run_id"] == parent.info.run_id
    assert report["mlflow"]["best_trial_run_id"] == best_run.info.run_id
    assert (
        report["config"]["model"]["kernel_sizes"]
        == report["trials"][best]["values"]["model.kernel_sizes"]
    )
    assert report["metrics"]["confusion_matrix_orientation"].startswith("rows: true class")
    text = (config.run_dir / "best_config.toml").read_text()
    assert text.startswith(f"# The best trial ({best}) of search search-")
    assert re.search(r"\nkernel_sizes = \[\d, \d\]\n", text) and "[tracking]" not in text
    reloaded = load_config(config.run_dir / "best_config.toml")
    assert reloaded.model.model_dump(mode="json") == report["config"]["model"]
    assert reloaded.training.model_dump(mode="json") == report["config"]["training"]


def experiment_id(config: Config) -> str:
    experiment = MlflowClient(config.tracking.mlflow_uri).get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    return str(experiment.experiment_id)


def assert_tensorboard_run(directory: Path, result: dict[str, Any]) -> None:
    """The trial's curves and its hparams session, read back with TensorBoard's reader."""
    values = result["row"]["values"]
    assert directory.parent.parent.name == EXPERIMENT
    assert directory.name == f"trial-{result['row']['number']:03d}"
    events = EventAccumulator(str(directory))
    events.Reload()
    assert [event.step for event in events.Scalars("valid/macro_f1")] == [1, 2]
    (best,) = events.Scalars("best/valid_macro_f1")
    assert (best.step, best.value) == (
        result["best_epoch"],
        pytest.approx(result["row"]["objective"]),
    )
    content = events.PluginTagToContent("hparams")
    starts = [plugin_data_pb2.HParamsPluginData.FromString(data) for data in content.values()]
    start = next(s.session_start_info for s in starts if s.HasField("session_start_info"))
    assert start.group_name == directory.name
    assert start.hparams["training.lr"].number_value == pytest.approx(values["training.lr"])
    for index, size in enumerate(values["model.kernel_sizes"]):
        assert start.hparams[f"model.kernel_sizes[{index}]"].string_value == str(size)


@pytest.mark.slow
def test_tensorboard_declares_every_searched_key_with_its_domain(
    search_config: SearchConfig,
) -> None:
    config = search_config(max_evals=1, epochs=1)
    assert tune_command(config, quiet=True) == 0
    (root,) = (config.tracking.tensorboard_dir / EXPERIMENT).iterdir()
    events = EventAccumulator(str(root))
    events.Reload()
    (content,) = events.PluginTagToContent("hparams").values()
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    domains = {info.name: info for info in experiment.hparam_infos}
    assert list(domains) == [
        "training.lr",
        "model.dropout",
        "trial.status",
        "model.kernel_sizes[0]",
        "model.kernel_sizes[1]",
    ]
    lr = domains["training.lr"].domain_interval
    assert (lr.min_value, lr.max_value) == pytest.approx((1e-3, 1e-2))
    sizes = domains["model.kernel_sizes[0]"].domain_discrete.values
    assert [value.string_value for value in sizes] == ["-", "3", "5", "7"]
    assert [metric.name.tag for metric in experiment.metric_infos] == ["best/valid_macro_f1"]


@pytest.mark.slow
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
    assert [run.data.tags[TRIAL_TAG] for run in children] == ["0", "1", "2", "3"]
    assert {run.info.status for run in children} == {"FINISHED"}


@pytest.mark.slow
def test_a_changed_space_is_refused_and_fresh_starts_over_keeping_the_old_trials(
    search_config: SearchConfig,
) -> None:
    config = search_config(max_evals=1)
    assert tune_command(config, fresh=False, quiet=True) == 0
    changed = search_config(
        max_evals=1, search={"space": {**SPACE, "model.dropout": {"uniform": [0.2, 0.5]}}}
    )
    with pytest.raises(ConfigError, match=r"trials\.json holds a search made with different"):
        tune_command(changed, fresh=False, quiet=True)
    other_epochs = search_config(max_evals=1, epochs=3)
    with pytest.raises(ConfigError, match=r"different training\.epochs"):
        tune_command(other_epochs, fresh=False, quiet=True)

    assert tune_command(changed, fresh=True, quiet=True) == 0
    assert len(list(config.run_dir.glob("trials.*.json"))) == 1
    assert len(results(changed)) == 1
    client = MlflowClient(config.tracking.mlflow_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if PARENT_TAG not in run.data.tags]
    assert len(parents) == 2


@pytest.mark.slow
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
    assert [row["status"] for row in report["trials"]] == ["ok", "failed", "failed"]
    assert "forced failure" in report["trials"][1]["note"]


@pytest.mark.slow
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


@pytest.mark.slow
def test_the_timeout_stops_starting_trials(search_config: SearchConfig) -> None:
    """Trials of 4 epochs outlast the 0.5 s timeout: the base trial runs, no other starts."""
    config = search_config(max_evals=20, epochs=4, search={"timeout": 0.5})
    started = time.monotonic()
    assert tune_command(config, fresh=False, quiet=True) == 0
    assert len(results(config)) == 1
    assert results(config)[0]["row"]["epochs"] >= 1
    assert time.monotonic() - started < 120  # guards a hang, not a speed claim


def test_max_evals_below_one_is_a_one_line_config_error(
    search_config: SearchConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(search_config(), tmp_path)
    assert main(["tune", "--config", str(path), "--max-evals", "0"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and len(error.splitlines()) == 1
    assert error.endswith("search.max_evals = 0: Input should be greater than or equal to 1\n")


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
    pattern = f"{config.tracking.experiment}/*/trial-001/events.out.tfevents.*"
    deadline = time.monotonic() + 120
    while not list(config.tracking.tensorboard_dir.glob(pattern)):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "trial 1 never started"
        time.sleep(0.05)


@pytest.mark.slow
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
        ("trial-001 killed", "KILLED"),
        ("trial-002", "FINISHED"),
    ]
    finished = {run.data.tags[TRIAL_TAG] for run in children if run.info.status == "FINISHED"}
    assert finished == {"0", "1", "2"}
    killed, redone = (run for run in children if run.data.tags[TRIAL_TAG] == "1")
    assert killed.info.status == "KILLED" and redone.info.status == "FINISHED"
    assert killed.data.params == redone.data.params  # the same point was drawn again
    trial_dirs = [path.name for path in tensorboard_dirs(config)]
    assert trial_dirs == ["trial-000", "trial-001", "trial-002"]
    # The stale folder of the killed trial 1 was replaced: one event file (curves, hparams,
    # best value); the killed run's would make a second.
    assert len(list((tensorboard_dirs(config)[1]).glob("events.out.tfevents.*"))) == 1


def tensorboard_dirs(config: Config) -> list[Path]:
    """The search's trial directories under ``logs/<experiment>/<search id>/``."""
    (search_dir,) = (config.tracking.tensorboard_dir / config.tracking.experiment).iterdir()
    return sorted(path for path in search_dir.iterdir() if path.is_dir())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signal_number", "status", "last_line", "reason"),
    [
        (signal.SIGINT, 130, "interrupted: finished work is saved", "interrupted (Ctrl-C)"),
        (
            signal.SIGTERM,
            143,
            "terminated (SIGTERM): finished work is saved",
            "terminated (SIGTERM)",
        ),
    ],
)
def test_ctrl_c_and_sigterm_close_every_run_with_the_finished_trials_saved(
    slow_trials: tuple[Config, Path],
    search_process: Callable[[Path], subprocess.Popen[str]],
    signal_number: int,
    status: int,
    last_line: str,
    reason: str,
) -> None:
    config, path = slow_trials
    process = search_process(path)
    wait_for_second_trial(config, process)
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == status, stderr
    assert stderr.strip().splitlines()[-1] == last_line
    assert "Traceback" not in stderr
    assert [result["status"] for result in results(config)] == ["ok"]
    parent, children = mlflow_runs(config)
    assert parent.info.status == "KILLED" and parent.data.tags[FAILURE_TAG] == reason
    assert [run.info.status for run in children] == ["FINISHED", "KILLED"]
    assert children[1].data.tags[FAILURE_TAG] == reason
    assert not list(config.run_dir.rglob("*.part"))


@pytest.mark.slow
def test_a_second_run_of_the_same_experiment_is_refused_at_once(
    slow_trials: tuple[Config, Path],
    search_process: Callable[[Path], subprocess.Popen[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, path = slow_trials
    process = search_process(path)
    wait_for_second_trial(config, process)
    assert main(["tune", "--config", str(path), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: another ecgtune run holds {config.run_dir}/.ecgtune.lock")
    assert f"process {process.pid}" in error and "`tune`" in error
    assert len(error.splitlines()) == 1
    process.kill()
    process.wait()
    _, children = mlflow_runs(config)  # one parent: the refused run started none
    names = [run.info.run_name for run in children]
    assert len(names) >= 2 and names == [f"trial-{number:03d}" for number in range(len(names))]


def test_unwritable_output_is_refused_before_any_work(
    search_config: SearchConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder below a regular file cannot be created, whoever runs the test (root too)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = search_config(tracking={"tensorboard_dir": str(blocker / "logs")})
    assert main(["tune", "--config", str(write_config(config, tmp_path)), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: tracking.tensorboard_dir = '{blocker / 'logs'}': cannot")
    assert not config.run_dir.joinpath("trials.json").exists()
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_a_write_that_fails_mid_search_ends_it_with_one_line_and_closed_runs(
    search_config: SearchConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 1's TensorBoard folder cannot be made (a file sits at its path): the search
    ends with one line, trial 0 stays saved, and no MLflow run is left RUNNING."""
    config = search_config(max_evals=1, epochs=1)
    assert tune_command(config) == 0
    (trial_0,) = tensorboard_dirs(config)
    trial_0.with_name("trial-001").write_text("in the way")
    more = search_config(max_evals=3, epochs=1)
    assert main(["tune", "--config", str(write_config(more, tmp_path)), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "trial-001" in error and len(error.splitlines()) == 1
    assert [result["status"] for result in results(more)] == ["ok"]
    parent, children = mlflow_runs(more)
    assert parent.info.status == "FAILED"
    assert [(run.info.run_name, run.info.status) for run in children] == [
        ("trial-000", "FINISHED"),
        ("trial-001 failed", "FAILED"),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [True, False])
def test_verbose_prints_the_model_summary_at_the_start_of_each_trial(
    search_config: SearchConfig, verbose: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    config = search_config(max_evals=2, epochs=1, tracking={"verbose": verbose})
    assert tune_command(config, fresh=False, quiet=True) == 0
    output = capsys.readouterr().out
    assert output.count("encoder.stage1") == (2 if verbose else 0)
