"""The trainer on beats of six real records, with the real dataset builder and the real models.

Every run is a tiny CNN (``small_config``) on one CPU thread, one to six epochs. The dataset is
built once per module (a shared cache directory) and read back by every test.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
import torch
from mlflow import MlflowClient
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from ecgtune import training
from ecgtune.cli import main
from ecgtune.commands.evaluate import evaluate_command
from ecgtune.commands.train import train_command
from ecgtune.config import Config
from ecgtune.console.training import TrainingDisplay
from ecgtune.data import load_dataset
from ecgtune.data.dataset import BeatSet, Dataset
from ecgtune.errors import ConfigError, DataError
from ecgtune.metrics import compute_metrics
from ecgtune.report import load_checkpoint, save_checkpoint
from ecgtune.tracking.tensorboard import TensorBoardEpochs, epoch_scalars
from ecgtune.training import (
    EpochRecord,
    TrainingDiverged,
    TrainingObserver,
    TrainResult,
    class_weights,
    make_criterion,
    predict,
    train_model,
)

from .conftest import deep_merge

MakeConfig = Callable[..., Config]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_config(small_config: MakeConfig, shared_cache: Path) -> MakeConfig:
    """``small_config`` whose dataset is built once for the module and then read from cache."""

    def make(**overrides: Any) -> Config:
        return small_config(**deep_merge({"data": {"cache_dir": str(shared_cache)}}, overrides))

    return make


@pytest.fixture
def dataset(make_config: MakeConfig) -> Dataset:
    return load_dataset(make_config())


def majority_macro_f1(labels: np.ndarray, n_classes: int) -> float:
    """Macro-F1 of always predicting the most frequent class."""
    majority = np.full_like(labels, np.bincount(labels).argmax())
    return compute_metrics(labels, majority, [str(k) for k in range(n_classes)]).macro_f1


def without_timings(history: list[EpochRecord]) -> list[dict[str, Any]]:
    """The history minus its wall-clock figures, which differ between identical runs."""
    return [dataclasses.asdict(r) | {"seconds": None, "beats_per_second": None} for r in history]


@pytest.mark.slow
def test_small_cnn_beats_the_majority_baseline_and_repeats_exactly(
    make_config: MakeConfig, dataset: Dataset
) -> None:
    config = make_config(training={"epochs": 6})
    first = train_model(config, dataset)
    second = train_model(config, dataset)

    baseline = majority_macro_f1(dataset.valid.labels, dataset.n_classes)
    assert baseline < 0.3
    assert first.best_valid["macro_f1"] > baseline + 0.4
    assert without_timings(first.history) == without_timings(second.history)
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name
    other_seed = train_model(make_config(seed=8, training={"epochs": 1}), dataset)
    assert other_seed.history[0].train_loss != first.history[0].train_loss


def test_early_stopping_stops_after_patience_epochs(
    make_config: MakeConfig, dataset: Dataset
) -> None:
    # min_delta = 1: no later epoch can improve on the first one.
    config = make_config(training={"epochs": 10, "early_stopping_patience": 2, "min_delta": 1.0})
    result = train_model(config, dataset)
    assert [record.epoch for record in result.history] == [1, 2, 3]
    assert result.best_epoch == 1
    assert "early stopping" in result.stop_reason and "2 epochs" in result.stop_reason
    full = train_model(make_config(training={"epochs": 2}), dataset)
    assert len(full.history) == 2 and "training.epochs = 2" in full.stop_reason


@pytest.mark.parametrize("objective", ["loss", "macro_f1", "balanced_accuracy", "accuracy"])
def test_the_best_epoch_is_the_best_by_the_objective(
    make_config: MakeConfig, dataset: Dataset, objective: str
) -> None:
    config = make_config(training={"epochs": 3, "objective": objective, "min_delta": 0.0})
    result = train_model(config, dataset)
    values = [record.valid_metrics[objective] for record in result.history]
    best = min(values) if objective == "loss" else max(values)
    assert result.best_valid[objective] == best
    assert result.best_epoch == values.index(best) + 1


def test_best_epoch_weights_are_restored_not_the_last(
    make_config: MakeConfig, dataset: Dataset
) -> None:
    config = make_config(training={"epochs": 10, "early_stopping_patience": 3, "min_delta": 1.0})
    result = train_model(config, dataset)
    best, last = result.history[0], result.history[-1]
    assert result.best_epoch == 1 and last.epoch == 4
    assert best.valid_metrics["macro_f1"] != last.valid_metrics["macro_f1"]
    restored = compute_metrics(
        dataset.valid.labels, predict(result.model, dataset.valid, config), dataset.class_names
    )
    assert restored.as_flat_dict() == {k: v for k, v in best.valid_metrics.items() if k != "loss"}
    assert result.best_valid == best.valid_metrics


def poisoned(dataset: Dataset, rows: slice) -> Dataset:
    signals = dataset.train.signals.copy()
    signals[rows] = np.nan
    train = BeatSet(signals, dataset.train.labels, dataset.train.rr, dataset.train.records)
    return dataclasses.replace(dataset, train=train)


def test_nan_loss_ends_training_with_the_epoch_and_batch(
    make_config: MakeConfig, dataset: Dataset
) -> None:
    config = make_config()
    n_batches = math.ceil(len(dataset.train) / config.training.batch_size)
    with pytest.raises(TrainingDiverged, match=rf"epoch 1, batch \d+/{n_batches}: .* nan"):
        train_model(config, poisoned(dataset, slice(100, 101)))
    # Losses are read every few batches, yet the message names the first bad one.
    with pytest.raises(TrainingDiverged, match=rf"epoch 1, batch 1/{n_batches}: .* nan"):
        train_model(config, poisoned(dataset, slice(None)))


@pytest.mark.parametrize(
    "settings",
    [
        {"optimizer": "adam", "scheduler": "none", "loss": "ce"},
        {"optimizer": "adamw", "scheduler": "plateau", "loss": "weighted_ce"},
        {"optimizer": "sgd", "scheduler": "cosine", "loss": "focal", "grad_clip": 1.0},
        {"optimizer": "adamw", "scheduler": "onecycle", "loss": "focal", "focal_weighted": True},
        {"optimizer": "adam", "loss": "weighted_ce", "class_weights": "effective"},
        {"precision": "bf16"},
    ],
    ids=["adam-none-ce", "adamw-plateau-wce", "sgd-cosine-focal", "onecycle", "effective", "bf16"],
)
def test_every_optimiser_scheduler_and_loss_trains(
    make_config: MakeConfig, dataset: Dataset, settings: dict[str, Any]
) -> None:
    config = make_config(training={"epochs": 2, **settings})
    result = train_model(config, dataset)
    assert len(result.history) == 2
    first, second = result.history
    assert math.isfinite(first.train_loss) and math.isfinite(second.valid_loss)
    assert second.train_loss < first.train_loss
    lr = config.training.lr
    expected_second_lr = {
        "none": lr,
        "plateau": lr,  # plateau_patience = 2: no drop after one epoch
        "cosine": lr * (1 + math.cos(math.pi / 2)) / 2,  # half-way through the schedule
    }.get(config.training.scheduler)
    if expected_second_lr is not None:
        assert second.lr == pytest.approx(expected_second_lr)
    if config.training.scheduler == "onecycle":
        assert first.lr == pytest.approx(lr / 25) and second.lr > first.lr


def test_plateau_lowers_the_lr_when_the_objective_stalls(
    make_config: MakeConfig, dataset: Dataset
) -> None:
    config = make_config(
        training={
            "epochs": 3,
            "plateau_patience": 0,
            "plateau_factor": 0.1,
            "min_delta": 1.0,
            "early_stopping_patience": 5,
        }
    )
    lrs = [record.lr for record in train_model(config, dataset).history]
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-4])


def test_precision_and_device_this_machine_lacks_are_config_errors(
    make_config: MakeConfig, dataset: Dataset
) -> None:
    with pytest.raises(ConfigError, match=r"training\.precision = 'fp16' needs a CUDA device"):
        train_model(make_config(training={"precision": "fp16", "device": "cpu"}), dataset)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"training\.device = 'cuda': no cuda device"):
            train_model(make_config(training={"device": "cuda"}), dataset)


def test_threads_follow_the_config(make_config: MakeConfig, dataset: Dataset) -> None:
    train_model(make_config(training={"epochs": 1, "num_threads": 2}), dataset)
    assert torch.get_num_threads() == 2
    train_model(make_config(training={"epochs": 1, "num_threads": 1}), dataset)
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize(
    ("settings", "weighted"),
    [
        ({"loss": "ce"}, False),
        ({"loss": "weighted_ce"}, True),
        ({"loss": "focal"}, False),
        ({"loss": "focal", "focal_weighted": True, "class_weights": "effective"}, True),
    ],
)
def test_criterion_weights_come_from_the_train_counts(
    make_config: MakeConfig, settings: dict[str, Any], weighted: bool
) -> None:
    cfg = make_config(training=settings).training
    counts = np.array([500, 50, 20, 5, 0])
    criterion = make_criterion(cfg, counts)
    weight = criterion.state_dict().get("weight")
    if weighted:
        expected = class_weights(counts, cfg.class_weights, cfg.effective_beta)
        assert weight is not None and weight.tolist() == pytest.approx(expected.tolist())
    else:
        assert weight is None


class Recorder(TrainingObserver):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def on_train_start(self, config: Config, model: nn.Module, n_train: int) -> None:
        self.calls.append(("train_start", n_train))

    def on_resampled(self, method: str, before: dict[str, int], after: dict[str, int]) -> None:
        self.calls.append(("resampled", (method, before, after)))

    def on_epoch_start(self, epoch: int, n_batches: int) -> None:
        self.calls.append(("epoch_start", (epoch, n_batches)))

    def on_batch_end(self, beats: int, loss: float) -> None:
        self.calls.append(("batch_end", beats))

    def on_epoch_end(self, record: EpochRecord) -> None:
        self.calls.append(("epoch_end", record))

    def on_train_end(self, result: TrainResult) -> None:
        self.calls.append(("train_end", result))


def test_resampled_train_counts_reach_result_and_observers(
    make_config: MakeConfig, dataset: Dataset
) -> None:
    config = make_config(
        data={"resample": {"method": "under_over", "target_per_class": 150}},
        training={"epochs": 1},
    )
    recorder = Recorder()
    result = train_model(config, dataset, recorder)

    before = dict(zip(dataset.class_names, dataset.train.class_counts(5).tolist(), strict=True))
    present = {name: 150 for name, n in before.items() if n}
    assert result.train_counts == present | {name: 0 for name, n in before.items() if not n}
    n_train = sum(present.values())
    calls = dict(recorder.calls[:2])
    assert calls["train_start"] == n_train
    assert calls["resampled"] == ("under_over", before, result.train_counts)
    n_batches = math.ceil(n_train / config.training.batch_size)
    assert recorder.calls[2] == ("epoch_start", (1, n_batches))
    beats = [value for name, value in recorder.calls if name == "batch_end"]
    assert sum(beats) == n_train and len(beats) == math.ceil(n_batches / training.REPORT_EVERY)
    assert recorder.calls[-2] == ("epoch_end", result.history[0])
    assert recorder.calls[-1] == ("train_end", result)


def test_terminal_display_shows_progress_epochs_and_resampled_counts(
    make_config: MakeConfig, dataset: Dataset
) -> None:
    config = make_config(data={"resample": {"method": "random_over"}}, training={"epochs": 1})
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=150, highlight=False)
    train_model(config, dataset, TrainingDisplay(console, progress=True, summary=True))
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())  # colours, cursor moves
    assert "total" in text and "ConvStage" in text  # the model summary
    n_max = int(dataset.train.class_counts(5).max())
    assert f"Train split resampled (random_over): N {n_max} -> {n_max}, S " in text
    assert re.search(r"epoch 1/1 .* \d+/\d+ \d+ beats/s  loss \d\.\d{4} valid macro_f1", text)
    assert re.search(r"epoch 1/1  train loss \d\.\d{4}  valid loss \d\.\d{4}", text)
    assert "Best epoch 1: valid macro_f1" in text


def test_tensorboard_scalars_equal_the_history(
    make_config: MakeConfig, dataset: Dataset, tmp_path: Path
) -> None:
    tensorboard = TensorBoardEpochs(tmp_path / "tb-run")
    result = train_model(make_config(training={"epochs": 2}), dataset, tensorboard)
    tensorboard.close()
    events = EventAccumulator(str(tmp_path / "tb-run"))
    events.Reload()
    expected = [epoch_scalars(record) for record in result.history]
    assert set(events.Tags()["scalars"]) == set(expected[0])
    assert {"train/loss", "train/lr", "valid/loss", "valid/macro_f1", "valid/f1_N"} <= set(
        expected[0]
    )
    for tag in expected[0]:
        logged = [(event.step, event.value) for event in events.Scalars(tag)]
        wanted = [(step, pytest.approx(s[tag], rel=1e-6)) for step, s in enumerate(expected, 1)]
        assert logged == wanted, tag


def test_predict_does_not_depend_on_the_chunk_size(
    make_config: MakeConfig, dataset: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(training={"epochs": 1})
    model = train_model(config, dataset).model
    whole = predict(model, dataset.test, config)
    monkeypatch.setattr(training, "EVAL_BATCH", 7)
    np.testing.assert_array_equal(predict(model, dataset.test, config), whole)
    assert whole.dtype == np.int64 and whole.shape == (len(dataset.test),)


def test_validation_figures_are_whole_split_figures_not_chunk_averages(
    make_config: MakeConfig, dataset: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 7 beats per evaluation pass, averaging per chunk would give other figures: the
    epoch's loss and metrics must equal those of the whole split's predictions at once."""
    monkeypatch.setattr(training, "EVAL_BATCH", 7)
    config = make_config(training={"epochs": 1, "loss": "ce"})
    result = train_model(config, dataset)
    record = result.history[0]
    signals, rr, labels = training.beats_to_tensors(dataset.valid, torch.device("cpu"))
    result.model.eval()
    with torch.inference_mode():
        logits = result.model(signals, rr)
    whole_loss = float(nn.functional.cross_entropy(logits, labels))
    whole = compute_metrics(dataset.valid.labels, logits.argmax(1).numpy(), dataset.class_names)
    assert len(dataset.valid) % 7 and len(dataset.valid) > 7 * 10
    assert record.valid_loss == pytest.approx(whole_loss, rel=1e-5)
    assert record.valid_metrics == {"loss": record.valid_loss, **whole.as_flat_dict()}


def test_train_command_writes_its_own_run_and_evaluate_reproduces_it(
    make_config: MakeConfig,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow puts a SQLite store's artifacts in ./mlruns
    config = make_config(training={"epochs": 2})
    assert train_command(config, quiet=True) == 0
    assert train_command(config, quiet=True) == 0
    out = capsys.readouterr().out
    assert "macro avg" in out and "specificity" in out and "epoch 2/2" in out

    first, second = sorted(config.run_dir.glob("train-*"))
    run_dir = second
    for name in ("best_model.pt", "report.json", "confusion_matrix.png"):
        assert (first / name).is_file() and (run_dir / name).is_file(), name
    assert (run_dir / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")
    report = json.loads((run_dir / "report.json").read_text())
    assert report["split"] == "test"
    assert len(report["history"]) == 2
    assert sum(report["metrics"]["per_class"][c]["support"] for c in "NSVFQ") == 480
    tensorboard_runs = sorted((config.tracking.tensorboard_dir / "ecg-arrhythmia").iterdir())
    assert [run.name for run in tensorboard_runs] == [first.name, second.name]

    client = MlflowClient(config.tracking.mlflow_uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    assert experiment is not None
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {first.name, second.name}
    run = runs[second.name]
    assert run.info.status == "FINISHED" and "mlflow.parentRunId" not in run.data.tags
    assert run.info.run_id == report["mlflow"]["run_id"]
    assert float(run.data.params["training.lr"]) == config.training.lr
    history = client.get_metric_history(run.info.run_id, "valid/macro_f1")
    assert sorted(metric.step for metric in history) == [1, 2]
    assert run.data.metrics["test/macro_f1"] == pytest.approx(report["metrics"]["macro_f1"])

    _, loaded_config, class_names = load_checkpoint(run_dir / "best_model.pt")
    assert loaded_config == config and class_names == ("N", "S", "V", "F", "Q")
    report_before = (run_dir / "report.json").read_bytes()
    config_path = tmp_path / "here.toml"
    config_path.write_text(tomli_w.dumps(config.model_dump(mode="json", exclude_none=True)))
    assert main(["evaluate", str(run_dir), "--config", str(config_path)]) == 0
    assert "macro avg" in capsys.readouterr().out
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert evaluation["metrics"] == report["metrics"]
    assert (run_dir / "report.json").read_bytes() == report_before
    assert (run_dir / "evaluation_confusion_matrix.png").is_file()


def test_evaluate_takes_paths_from_the_current_config_not_the_checkpoint(
    make_config: MakeConfig, dataset: Dataset, tmp_path: Path
) -> None:
    """A checkpoint whose stored config names another cache folder cannot make evaluate write
    there: the cache folder comes from the config given on the command line."""
    config = make_config(training={"epochs": 1})
    model = train_model(config, dataset).model
    planted = tmp_path / "planted-cache"
    stored = make_config(training={"epochs": 1}, data={"cache_dir": str(planted)})
    save_checkpoint(tmp_path / "best_model.pt", model, stored, dataset.class_names)
    assert evaluate_command(tmp_path, config) == 0
    assert not planted.exists()
    assert (tmp_path / "evaluation.json").is_file()


def test_evaluate_without_a_checkpoint_is_a_one_line_error(
    make_config: MakeConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = tmp_path / "here.toml"
    config_path.write_text(tomli_w.dumps(make_config().model_dump(mode="json", exclude_none=True)))
    assert main(["evaluate", str(tmp_path), "--config", str(config_path)]) == 2
    assert (
        capsys.readouterr().err.strip() == f"error: checkpoint not found: {tmp_path}/best_model.pt"
    )
    with pytest.raises(DataError, match="not a readable ecgtune checkpoint"):
        (tmp_path / "best_model.pt").write_bytes(b"not a checkpoint")
        evaluate_command(tmp_path, make_config())
