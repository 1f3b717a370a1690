"""Per-record adaptation without labels (issue 19): ``inference.adapt = "batch_norm"``
re-estimates a model's batch-norm statistics on each record's own beats (AdaBN) wherever the
model classifies records it was not trained on: the test split and out-of-fold predictions
(``ecgtune.training.predict``), ``evaluate --database`` and ``predict``; ONNX refuses it.

The model is a tiny CNN trained for the module on real records; the beats are real mitdb
beats, cut by the data layer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from ecgtune.cli import main
from ecgtune.config import Config, InferenceConfig, validate_config
from ecgtune.data.build import pool_record_beats
from ecgtune.data.dataset import BeatSet
from ecgtune.errors import ConfigError
from ecgtune.models.adapt import batch_norms, record_statistics
from ecgtune.report import load_checkpoint, save_checkpoint
from ecgtune.training import predict, predict_proba

from .conftest import TINY_CNN, find_mitdb_dir
from .test_evaluate_database import train_tiny_run
from .test_rhythm_features import beats_of

ADAPTED = InferenceConfig(adapt="batch_norm", adapt_min_beats=100)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("run"), find_mitdb_dir())


@pytest.fixture(scope="module")
def adapted_run(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights saved with ``inference.adapt = "batch_norm"`` in their config."""
    model, config, class_names = load_checkpoint(run_dir / "best_model.pt")
    folder = tmp_path_factory.mktemp("adapted")
    adapted = config.model_copy(update={"inference": ADAPTED})
    save_checkpoint(folder / "best_model.pt", model, adapted, class_names)
    return folder


def record_set(*records: str, gain: float = 1.0) -> BeatSet:
    """Real beats of mitdb records cut by the data layer, signals times ``gain``."""
    parts = [beats_of(find_mitdb_dir(), record) for record in records]
    pooled = pool_record_beats(parts)
    return BeatSet(pooled.signals * np.float32(gain), pooled.labels, pooled.rr, pooled.records)


class MeanAndFirstRR(nn.Module):
    """One batch norm over two features of a beat: its mean sample and its first RR column."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(2)

    def forward(self, signals: torch.Tensor, rr: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = self.norm(features_of(signals, rr))
        return output


def features_of(signals: torch.Tensor, rr: torch.Tensor) -> torch.Tensor:
    return torch.cat([signals.mean(dim=(1, 2))[:, None], rr[:, :1]], dim=1)


def test_record_statistics_are_the_beats_mean_and_the_chunks_variance() -> None:
    """10 beats in chunks of 4, 4 and 2: the mean is every beat's, the variance the chunks'
    own (unbiased, as batch norm keeps it), weighted by their beats; afterwards the model's
    statistics and momentum are as they were."""
    model = MeanAndFirstRR()
    mean, var = model.norm.running_mean, model.norm.running_var  # updated in place
    assert mean is not None and var is not None
    mean.fill_(5.0)
    generator = torch.Generator().manual_seed(0)
    signals, rr = torch.randn(10, 1, 8, generator=generator), torch.rand(10, 3, generator=generator)
    features = features_of(signals, rr)
    chunks = [features[start : start + 4] for start in range(0, 10, 4)]
    variance = torch.stack([len(chunk) * chunk.var(dim=0) for chunk in chunks]).sum(dim=0) / 10

    with record_statistics(model, signals, rr, batch_size=4) as adapted:
        assert adapted is model and not model.training and not model.norm.training
        assert torch.allclose(mean, features.mean(dim=0), atol=1e-6)
        assert torch.allclose(var, variance, atol=1e-6)

    assert mean.tolist() == [5.0, 5.0]
    assert var.tolist() == [1.0, 1.0] and model.norm.momentum == 0.1


def test_adapted_statistics_remove_a_record_gain_and_are_put_back(run_dir: Path) -> None:
    """A gain on the beats a model sees (another amplifier, a beat normalisation the model was
    not trained with) is removed exactly by the first batch-norm after a convolution once its
    statistics are the record's own (up to batch norm's epsilon); without adaptation it
    changes the model's output many times more."""
    model, _, _ = load_checkpoint(run_dir / "best_model.pt")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    momenta = [norm.momentum for norm in batch_norms(model)]  # not in the state_dict
    plain, louder = record_set("119"), record_set("119", gain=3.0)
    unadapted = np.abs(predict_proba(model, plain) - predict_proba(model, louder)).max()
    adapted = np.abs(predict_proba(model, plain, ADAPTED) - predict_proba(model, louder, ADAPTED))
    assert adapted.max() < 0.01 and unadapted > 20 * adapted.max()
    assert not np.allclose(predict_proba(model, plain, ADAPTED), predict_proba(model, plain))
    after = model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert [norm.momentum for norm in batch_norms(model)] == momenta == [0.1] * len(momenta)
    assert batch_norms(model) and all(not norm.training for norm in batch_norms(model))


def test_each_record_adapts_on_its_own_beats_in_their_order(run_dir: Path) -> None:
    """Beats of two records shuffled together: each beat gets what its record's beats alone
    give, at its own place."""
    model, _, _ = load_checkpoint(run_dir / "best_model.pt")
    both = record_set("100", "119")
    shuffled = both.take(np.random.default_rng(0).permutation(len(both)))
    together = predict_proba(model, shuffled, ADAPTED)
    for record in ("100", "119"):
        mine = np.flatnonzero(shuffled.records == record)
        alone = predict_proba(model, shuffled.take(mine), ADAPTED)
        np.testing.assert_allclose(together[mine], alone, atol=1e-6)
    assert not np.allclose(together, predict_proba(model, shuffled), atol=1e-3)


def test_a_record_with_too_few_beats_keeps_the_training_statistics(run_dir: Path) -> None:
    model, _, _ = load_checkpoint(run_dir / "best_model.pt")
    few = record_set("119").take(np.arange(50))
    np.testing.assert_array_equal(predict_proba(model, few, ADAPTED), predict_proba(model, few))
    many = InferenceConfig(adapt="batch_norm", adapt_min_beats=20)
    assert not np.allclose(predict_proba(model, few, many), predict_proba(model, few))


def test_evaluate_database_adapts_each_record_as_the_saved_config_says(
    adapted_run: Path, tmp_path: Path
) -> None:
    database = tmp_path / "db"
    database.mkdir()
    for record in ("100", "119"):
        for ext in ("hea", "dat", "atr"):
            shutil.copy(find_mitdb_dir() / f"{record}.{ext}", database)
    (database / "RECORDS").write_text("100\n119\n", encoding="utf-8")
    assert main(["evaluate", str(adapted_run), "--database", str(database)]) == 0
    report: dict[str, Any] = json.loads((adapted_run / "evaluation-db.json").read_text())
    assert report["adapt"] == "batch_norm"
    model, _, _ = load_checkpoint(adapted_run / "best_model.pt")
    for row in report["records"]:
        beats = record_set(row["record"])
        predicted = predict_proba(model, beats, ADAPTED).argmax(axis=1)
        expected = np.zeros((5, 5), dtype=np.int64)
        np.add.at(expected, (beats.labels, predicted), 1)
        assert row["confusion_matrix"] == expected.tolist(), row["record"]


def test_onnx_refuses_an_adapted_model_in_one_line(
    adapted_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", str(adapted_run), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "inference.adapt = 'batch_norm'" in err and "\n" not in err
    assert not (tmp_path / "m.onnx").exists()
    record = find_mitdb_dir() / "100"
    onnx = tmp_path / "any.onnx"
    onnx.write_bytes(b"")
    args = ["predict", str(adapted_run), str(record), "--onnx", str(onnx), "--out", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "an ONNX graph's fixed statistics cannot" in err and "\n" not in err


def test_adaptation_needs_batch_norm_layers() -> None:
    raw: dict[str, Any] = {"model": {**TINY_CNN, "batch_norm": False}}
    with pytest.raises(ConfigError, match=r"inference\.adapt = 'batch_norm' .* has none") as caught:
        validate_config({**raw, "inference": {"adapt": "batch_norm"}})
    assert "\n" not in str(caught.value)
    config: Config = validate_config({"inference": {"adapt": "batch_norm"}})
    assert config.inference.adapt == "batch_norm"
    with pytest.raises(ConfigError, match=r"inference\.adapt = 'adabn': Input should be"):
        validate_config({"inference": {"adapt": "adabn"}})


def test_the_test_split_and_out_of_fold_predictions_adapt_too(adapted_run: Path) -> None:
    """``predict`` (behind the test split's figures and the folds' out-of-fold ones) reads the
    config's ``[inference]``: the same labels as the adapted probabilities."""
    model, config, _ = load_checkpoint(adapted_run / "best_model.pt")
    beats = record_set("100", "119")
    expected = predict_proba(model, beats, ADAPTED).argmax(axis=1)
    np.testing.assert_array_equal(predict(model, beats, config), expected)
    plain = config.model_copy(update={"inference": InferenceConfig()})
    assert not np.array_equal(predict(model, beats, plain), expected)
