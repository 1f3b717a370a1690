"""The README's central claims about a search, each shown on a real (tiny) search: the default
path, the live display, the best model, the test split touched once, the exit-2 paths, and
what a resumed search may change."""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
import torch
from mlflow import MlflowClient

import ecgtune.commands.train
import ecgtune.search.loop
import ecgtune.training
from ecgtune.cli import main
from ecgtune.commands.tune import tune_command
from ecgtune.config import Config, load_config
from ecgtune.console import PLAIN_WIDTH, make_console
from ecgtune.console.search import top_trials_table
from ecgtune.data import load_dataset
from ecgtune.metrics import ClassificationMetrics, compute_metrics, metrics_from_confusion
from ecgtune.report import confusion_figure, load_checkpoint
from ecgtune.search.space import build_search_space
from ecgtune.search.trials import TrialRow
from ecgtune.training import predict, predict_logits
from tests.conftest import REPO_ROOT, run_hypertune
from tests.search_helpers import SearchConfig, mlflow_runs, results, write_config

pytestmark = pytest.mark.usefixtures("in_tmp_path")

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_terminal(command: list[str], cwd: Path, seconds: float = 300) -> tuple[int, str]:
    """Run ``command`` with a pseudo-terminal (160 columns) as stdout and stderr, as a person
    at a terminal would; returns the exit status and everything it wrote."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    size = {"COLUMNS": "160", "LINES": "50"}  # pytest's own terminal width must not leak in
    process = subprocess.Popen(
        command, cwd=cwd, stdout=follower, stderr=follower, env={**os.environ, **size}
    )
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + seconds
    try:
        while True:
            assert time.monotonic() < deadline, "the search did not finish"  # guards a hang
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the process has ended
                break
            if not chunk:
                break
            chunks.append(chunk)
        return process.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_plain_hypertune_runs_the_search_of_config_toml_with_the_live_display(
    search_config: SearchConfig, tmp_path: Path
) -> None:
    config = search_config(max_evals=3, epochs=4)
    (tmp_path / "config.toml").write_text(
        tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))
    )
    status, screen = run_in_terminal([sys.executable, str(REPO_ROOT / "hypertune.py")], tmp_path)
    text = ANSI.sub("", screen)

    assert status == 0, text[-3000:]
    assert (config.run_dir / "report.json").is_file()
    assert re.search(r"search .* 3/3 trials +best 0\.\d{4} +ETA \d+:\d{2}", text)
    running = r"trial \d epoch [2-4]/4 .* \d+/\d+ beats +loss \d\.\d{4} +epoch \d valid macro_f1"
    assert re.search(running, text)  # the last finished epoch's figure, labelled
    assert "Finished trials (3; the best in green)" in text
    best = json.loads((config.run_dir / "report.json").read_text())["best_trial"]
    green = r"\x1b\[1;32m"
    best_row = re.compile(rf"│{green} \x1b\[0m{green} *{best}\x1b\[0m")  # first cell: "#"
    assert best_row.search(screen), "the best trial's row is not bold green"


@pytest.mark.slow
def test_the_best_model_is_the_best_trials_best_epoch(search_config: SearchConfig) -> None:
    config = search_config(max_evals=3, epochs=3)
    assert tune_command(config, quiet=True) == 0
    report = json.loads((config.run_dir / "report.json").read_text())
    best = next(r for r in results(config) if r["row"]["number"] == report["best_trial"])

    model, best_config, class_names = load_checkpoint(config.run_dir / "best_model.pt")
    dataset = load_dataset(best_config)
    valid = figures(model, dataset.valid, best_config, class_names)
    assert valid.as_flat_dict() == pytest.approx(
        {key: value for key, value in best["valid"].items() if key != "loss"}, rel=1e-6
    )
    test = figures(model, dataset.test, best_config, class_names)
    assert json.loads(json.dumps(test.to_json())) == report["metrics"]
    assert best_config.training.epochs == 3 and best["best_epoch"] <= 3


def figures(
    model: torch.nn.Module, beats: Any, config: Config, class_names: tuple[str, ...]
) -> ClassificationMetrics:
    return compute_metrics(beats.labels, predict(model, beats, config), class_names)


class SplitSpy:
    """Counts every prediction of the test split, with the number of trials finished by
    then: wraps ``predict_logits`` (every prediction goes through it) and compares the beats
    predicted with the test split's."""

    def __init__(self, config: Config) -> None:
        self.test_signals = torch.from_numpy(load_dataset(config).test.signals)
        self.calls: list[int] = []
        self.trials_done = 0

    def wrap(self, original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def spied(model: Any, signals: torch.Tensor, *args: Any) -> torch.Tensor:
            if signals.shape[0] == len(self.test_signals) and torch.equal(
                signals.reshape(len(signals), -1).cpu(),
                self.test_signals.reshape(len(signals), -1),
            ):
                self.calls.append(self.trials_done)
            return original(model, signals, *args)

        return spied


@pytest.mark.slow
def test_the_test_split_is_predicted_once_after_the_last_trial(
    search_config: SearchConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = search_config(max_evals=3, epochs=1)
    spy = SplitSpy(config)
    monkeypatch.setattr(ecgtune.training, "predict_logits", spy.wrap(predict_logits))
    original_ended = ecgtune.search.loop.TrialRunner.__call__

    def counting(runner: Any, sample: dict[str, Any]) -> dict[str, Any]:
        result = original_ended(runner, sample)
        spy.trials_done += 1
        return result

    monkeypatch.setattr(ecgtune.search.loop.TrialRunner, "__call__", counting)
    assert tune_command(config, quiet=True) == 0
    assert spy.calls == [3]


@pytest.mark.slow
def test_train_predicts_the_test_split_once(
    search_config: SearchConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = search_config(epochs=2)
    spy = SplitSpy(config)
    monkeypatch.setattr(ecgtune.training, "predict_logits", spy.wrap(predict_logits))
    assert ecgtune.commands.train.train_command(config, quiet=True) == 0
    assert spy.calls == [0]


@pytest.mark.slow
def test_train_on_a_diverging_run_exits_2_with_one_line(
    search_config: SearchConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SGD at lr 10 with heavy momentum, tiny batches and no normalisation overflows within
    the first epoch (measured: a NaN loss at batch 110 of 420)."""
    training = {"optimizer": "sgd", "lr": 10.0, "momentum": 0.99, "scheduler": "none"}
    config = search_config(epochs=1, training={**training, "batch_size": 4})
    path = write_config(config, tmp_path)
    plain = ["model.batch_norm=false", "model.se_blocks=false", "model.residual=false"]
    command = ["train", "--config", str(path), "--quiet"]
    assert main([*command, *(part for key in plain for part in ("--set", key))]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: training diverged: epoch 1, batch")
    run = only_run(config)
    assert run.info.status == "FAILED"
    assert not list(config.run_dir.glob("train-*/best_model.pt"))


def only_run(config: Config) -> Any:
    client = MlflowClient(config.tracking.mlflow_uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    return run


@pytest.mark.slow
def test_a_search_in_which_every_trial_fails_exits_2(
    search_config: SearchConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def refuse(config: Config, n_classes: int) -> Any:
        raise RuntimeError("no model today")

    monkeypatch.setattr(ecgtune.training, "build_model", refuse)
    config = search_config(max_evals=2, epochs=1)
    assert main(["tune", "--config", str(write_config(config, tmp_path)), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        "error: no trial succeeded (2 finished, the first failure: RuntimeError: no model "
        "today); see the trial table or the MLflow runs"
    )
    parent, children = mlflow_runs(config)
    assert parent.info.status == "FAILED"
    assert [run.info.status for run in children] == ["FAILED", "FAILED"]


@pytest.mark.slow
def test_a_sampled_value_the_schema_rejects_fails_only_that_trial(
    search_config: SearchConfig,
) -> None:
    """``normal`` has no bounds: dropout drawn from N(0.3, 1) falls outside [0, 1) in about
    half the trials; those fail with the schema's message, the others train."""
    space = {"model.dropout": {"normal": [0.3, 1.0]}}
    config = search_config(max_evals=6, epochs=1, search={"space": space})
    assert tune_command(config, quiet=True) == 0
    rows = [result["row"] for result in results(config)]
    failed = [row for row in rows if row["status"] == "failed"]
    assert failed and len(failed) < len(rows)
    for row in failed:
        assert "model.dropout = " in row["note"] and row["epochs"] == 0
        assert not 0 <= row["values"]["model.dropout"] < 1
    assert all(0 <= row["values"]["model.dropout"] < 1 for row in rows if row["status"] == "ok")


@pytest.mark.slow
def test_a_resume_may_change_paths_device_and_threads(
    search_config: SearchConfig, tmp_path: Path
) -> None:
    config = search_config(max_evals=1, epochs=1)
    assert tune_command(config, quiet=True) == 0
    moved = search_config(
        max_evals=2,
        epochs=1,
        data={"cache_dir": str(tmp_path / "other-cache")},
        training={"device": "auto", "num_threads": 2},
        tracking={"tensorboard_dir": str(tmp_path / "other-logs")},
    )
    assert tune_command(moved, quiet=True) == 0
    assert [result["row"]["number"] for result in results(moved)] == [0, 1]
    assert (tmp_path / "other-logs").is_dir() and (tmp_path / "other-cache").is_dir()


@pytest.mark.slow
def test_fresh_keeps_the_old_checkpoints(search_config: SearchConfig) -> None:
    config = search_config(max_evals=1, epochs=1)
    assert tune_command(config, quiet=True) == 0
    old = (config.run_dir / "checkpoints" / "trial-000.pt").read_bytes()
    assert tune_command(config, fresh=True, quiet=True) == 0
    (kept,) = config.run_dir.glob("checkpoints.*")
    assert (kept / "trial-000.pt").read_bytes() == old
    assert (config.run_dir / "checkpoints" / "trial-000.pt").is_file()


@pytest.mark.slow
def test_two_processes_with_the_same_seed_give_the_same_search(
    search_config: SearchConfig, tmp_path: Path
) -> None:
    """Every trial's values and validation figures repeat exactly in a second process (the
    two run side by side, one torch thread each)."""
    configs, processes = [], []
    for name in ("first", "second"):
        folder = tmp_path / name
        folder.mkdir()
        config = search_config(
            max_evals=3,
            epochs=1,
            tracking={
                "output_dir": str(folder / "runs"),
                "tensorboard_dir": str(folder / "logs"),
                "mlflow_uri": f"sqlite:///{folder / 'mlflow.db'}",
            },
        )
        command = [sys.executable, str(REPO_ROOT / "hypertune.py"), "tune", "--quiet"]
        configs.append(config)
        processes.append(
            subprocess.Popen(
                [*command, "--config", str(write_config(config, folder))],
                cwd=folder,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for process in processes:
            _, stderr = process.communicate(timeout=300)
            assert process.returncode == 0, stderr
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    first, second = ([(r["row"]["values"], r["valid"]) for r in results(c)] for c in configs)
    assert first == second


@pytest.mark.slow
def test_the_terminal_shows_a_header_one_column_per_searched_key_and_the_top_trials_once(
    search_config: SearchConfig,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # the temporary paths are long
    config = search_config(max_evals=2, epochs=1)
    assert tune_command(config, quiet=True) == 0
    printed = capsys.readouterr().out
    header = printed[: printed.index("trial 0 started")]
    for label in ("experiment", "train split", "valid split", "test split", "device"):
        assert re.search(rf"^{label} +", header, re.MULTILINE), label
    assert "search-test" in header and "cpu, 1 thread" in header
    assert "mlflow ui --backend-store-uri" in header and "tensorboard --logdir=" in header
    columns = next(line for line in printed.splitlines() if line.startswith("┃ #"))
    cells = [cell.strip() for cell in columns.strip("┃ ").split("┃")]
    assert cells[:4] == ["#", "lr", "kernel_sizes", "dropout"]
    assert printed.count("Top 2 of 2 trials") == 1
    assert printed.count("┃ #") == 1  # one trial table, not the live one and the top one
    assert re.search(r"Done in \d+ min \d+ s", printed)


def test_a_log_file_gets_the_default_search_table_one_line_per_trial(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Output to a file or a pipe (here pytest's capture) is not bound to 80 columns: the
    table of config.toml's search (a column per searched key) keeps a trial per line, a
    pruned trial's long note included."""
    monkeypatch.delenv("COLUMNS", raising=False)
    config = load_config(REPO_ROOT / "config.toml")
    values = build_search_space(config).values_of(config)
    note = (
        "pruned at epoch 4 (ASHA rung 1): validation macro_f1 0.9120 is worse than 0.9165, "
        "the cutoff for the top 1/3 of the 3 earlier trials there"
    )
    rows = [
        TrialRow(0, "ok", values, 0.9513, 19, 270.0, "early stopping"),
        TrialRow(1, "pruned", values, 0.9120, 4, 60.0, note),
    ]
    console = make_console()
    assert console.width == PLAIN_WIDTH
    console.print(top_trials_table(rows, "macro_f1", 5, list(values)))
    body = [line for line in capsys.readouterr().out.splitlines() if line.startswith("│")]
    assert [line.split("│")[1].strip() for line in body] == ["0", "1"]
    assert body[1].split("│")[-2].strip() == "pruned"


def test_the_confusion_figure_names_its_split_and_marks_absent_classes() -> None:
    matrix = np.array([[5, 1, 0], [0, 3, 0], [0, 0, 0]], dtype=np.int64)
    metrics = metrics_from_confusion(matrix, ("N", "S", "Q"))
    figure = confusion_figure(metrics, "test split, best trial 3 — 9 beats")
    title = figure.get_suptitle()
    assert title.startswith("test split, best trial 3 — 9 beats: accuracy 0.8889")
    assert title.endswith("(absent: Q)")
    shares = figure.axes[1]
    texts = [text.get_text() for text in shares.texts]
    assert texts[-3:] == ["n/a", "n/a", "n/a"] and texts[:3] == ["0.83", "0.17", "0.00"]


class Planted:
    """A pickled object whose loading would create a file: what a planted checkpoint holds."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_a_planted_checkpoint_is_refused_in_one_line_without_running_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    torch.save({"config": Planted(marker)}, tmp_path / "best_model.pt")
    config = tmp_path / "here.toml"
    config.write_text('[data]\nraw_dir = "unused"\n')
    assert main(["evaluate", str(tmp_path), "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert len(error.splitlines()) == 1 and "Traceback" not in error
    assert re.search(r"best_model.pt: refused: it names [\w.]+ to run when loaded", error)
    assert not marker.exists()
    torch.load(tmp_path / "best_model.pt", weights_only=False)  # as a careless loader would
    assert marker.exists()


class RunsACommand:
    """A pickled object whose loading would run a shell command (``os.system``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def torch_file_with_a_command(path: Path, marker: Path) -> None:
    torch.save({"config": RunsACommand(marker)}, path)


def bare_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"config": RunsACommand(marker)}))


@pytest.mark.parametrize(
    ("plant", "expected"),
    [
        (torch_file_with_a_command, "refused: it names posix.system to run when loaded"),
        (bare_pickle, "refused unread: a bare pickle, not a torch checkpoint"),
    ],
)
def test_a_planted_checkpoint_is_refused_saying_what_and_why_and_only_that(
    tmp_path: Path, plant: Callable[[Path, Path], None], expected: str
) -> None:
    """The command line: stderr is our one line, no torch warning before it, and the payload
    never runs."""
    marker = tmp_path / "ran"
    plant(tmp_path / "best_model.pt", marker)
    config = tmp_path / "here.toml"
    config.write_text('[data]\nraw_dir = "unused"\n')
    result = run_hypertune("evaluate", str(tmp_path), "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {tmp_path / 'best_model.pt'}: {expected}"), line
    assert not marker.exists()


@pytest.mark.slow
def test_a_run_records_its_overrides(
    search_config: SearchConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = search_config(max_evals=1, epochs=2)
    path = write_config(config, tmp_path)
    assert main(["tune", "--config", str(path), "--quiet", "--set", "training.epochs=1"]) == 0
    report = json.loads((config.run_dir / "report.json").read_text())
    assert report["overrides"] == ["training.epochs=1"] and report["source_config"] == str(path)
    assert report["config"]["training"]["epochs"] == 1
    parent, _ = mlflow_runs(config)
    assert parent.data.tags["ecgtune.overrides"] == "training.epochs=1"
