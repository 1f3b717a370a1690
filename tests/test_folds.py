"""``search.folds``: record-grouped folds of the inter split's train and validation records,
a trial scored on its out-of-fold predictions, and the kept model trained as without folds."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
import torch

from ecgtune.commands.export import export_command
from ecgtune.commands.tune import tune_command
from ecgtune.config import Config, validate_config
from ecgtune.data import load_dataset
from ecgtune.data.beats import RR_COLUMNS
from ecgtune.data.build import load_record_beats
from ecgtune.data.dataset import BeatSet, Dataset
from ecgtune.errors import ConfigError, DataError
from ecgtune.export.onnx import ONNX_NAME, OnnxClassifier
from ecgtune.metrics import compute_metrics
from ecgtune.models import BeatClassifier, build_model
from ecgtune.models.ensemble import Ensemble, member_count
from ecgtune.report import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from ecgtune.search.folds import cross_validate, fold_config, fold_datasets, record_folds
from ecgtune.training import EpochRecord, TrainingObserver, predict, predict_proba, train_model
from tests.conftest import TINY_CNN, run_hypertune
from tests.search_helpers import mlflow_runs, results

DS1_RECORDS = ["101", "106", "109", "118", "119", "124", "201", "203", "208", "223"]
RECORDS = [*DS1_RECORDS, "100", "232"]


@pytest.fixture
def folds_config(small_config: Callable[..., Config]) -> Callable[..., Config]:
    def make(folds: int = 3, **search: object) -> Config:
        return small_config(
            data={"records": RECORDS, "split": "inter", "max_beats_per_record": 150},
            training={"epochs": 2},
            search={"folds": folds, **search},
        )

    return make


@pytest.fixture
def dataset(folds_config: Callable[..., Config]) -> Dataset:
    return load_dataset(folds_config())


class Epochs(TrainingObserver):
    def __init__(self) -> None:
        self.records: list[EpochRecord] = []
        self.starts: list[int] = []

    def on_epoch_start(self, epoch: int, n_batches: int) -> None:
        self.starts.append(epoch)

    def on_epoch_end(self, record: EpochRecord) -> None:
        self.records.append(record)


def tiny_members(count: int) -> list[BeatClassifier]:
    """``count`` untrained tiny CNNs reading the rhythm RR columns (seeded: different)."""
    config = validate_config(
        {"data": {"split": "inter"}, "model": {**TINY_CNN, "rr_features": "rhythm"}}
    )
    torch.manual_seed(0)
    return [build_model(config, 3) for _ in range(count)]


def test_an_ensemble_is_the_log_of_its_members_mean_probabilities() -> None:
    members = tiny_members(3)
    ensemble = Ensemble(members).eval()
    assert (ensemble.in_channels, ensemble.rr_features) == (1, "rhythm")
    assert torch.equal(ensemble.rr_index, members[0].rr_index) and member_count(ensemble) == 3
    assert member_count(members[0]) == 1
    assert not [key for key in ensemble.state_dict() if "rr_index" in key]  # from the config
    signals, rr = torch.randn(4, 1, 187), torch.rand(4, len(RR_COLUMNS))
    with torch.no_grad():
        mean = torch.stack([member(signals, rr).softmax(dim=1) for member in members]).mean(0)
        assert torch.allclose(ensemble(signals, rr), mean.log(), atol=1e-6)
        for member in members:  # every member sure of class 0: the others' log stays finite
            member.head[-1].bias.data = torch.tensor([1e3, -1e3, -1e3])
        floor = torch.full((4, 2), math.log(1e-12))
        assert torch.allclose(ensemble(signals, rr)[:, 1:], floor, atol=1e-5)


def test_an_ensemble_holds_2_to_10_classifiers() -> None:
    members = tiny_members(11)
    assert member_count(Ensemble(members[:2])) == 2 and member_count(Ensemble(members[:10])) == 10
    for count in (1, 11):
        with pytest.raises(ValueError, match=rf"^an ensemble holds 2 to 10 models, got {count}$"):
            Ensemble(members[:count])
    with pytest.raises(TypeError, match=r"^an ensemble holds ecgtune BeatClassifiers only$"):
        Ensemble([members[0], torch.nn.Linear(2, 2)])


def test_folds_hold_whole_records_and_cover_every_beat_once(dataset: Dataset) -> None:
    pool = BeatSet.concatenate([dataset.train, dataset.valid])
    folds = record_folds(pool, 3, seed=7)
    assert len(folds) == 3
    validated = np.concatenate([valid for _, valid in folds])
    assert np.array_equal(np.sort(validated), np.arange(len(pool)))
    for train, valid in folds:
        assert not set(pool.records[train]) & set(pool.records[valid])
        assert len(train) + len(valid) == len(pool)
    assert set(pool.records) == set(DS1_RECORDS)
    again = record_folds(pool, 3, seed=7)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    other = record_folds(pool, 3, seed=8)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(folds, other, strict=True))
    with pytest.raises(ConfigError, match=r"search\.folds = 11: the train and validation splits"):
        record_folds(pool, 11, seed=7)


def test_a_trial_is_scored_out_of_fold_and_keeps_the_ensemble_of_its_fold_models(
    folds_config: Callable[..., Config], dataset: Dataset
) -> None:
    config = folds_config(folds=3)
    epochs = Epochs()
    result = cross_validate(config, dataset, epochs)

    folds = fold_datasets(dataset, 3, config.seed)
    runs = [train_model(config, fold) for fold in folds]
    labels = np.concatenate([fold.valid.labels for fold in folds])
    assert len(labels) == len(dataset.train) + len(dataset.valid)
    predicted = np.concatenate(
        [predict(run.model, fold.valid, config) for run, fold in zip(runs, folds, strict=True)]
    )
    expected = compute_metrics(labels, predicted, dataset.class_names)
    for name, value in expected.as_flat_dict().items():
        assert result.best_valid[name] == pytest.approx(value), name
    losses = np.array([run.best_valid["loss"] for run in runs])
    sizes = np.array([len(fold.valid) for fold in folds])
    pooled_loss = float(losses @ sizes / sizes.sum())  # the loss over every out-of-fold beat
    assert result.best_valid["loss"] == pytest.approx(pooled_loss, rel=1e-12)
    assert pooled_loss != pytest.approx(losses.mean(), rel=1e-6)  # the folds differ in size
    assert result.best_epoch == round(float(np.mean([run.best_epoch for run in runs])))

    assert isinstance(result.model, Ensemble)
    for member, run in zip(result.model.members, runs, strict=True):
        for name, tensor in run.model.state_dict().items():
            assert torch.equal(tensor, member.state_dict()[name]), name
    probabilities = np.mean([predict_proba(run.model, dataset.test) for run in runs], axis=0)
    assert np.allclose(predict_proba(result.model, dataset.test), probabilities, atol=1e-6)
    assert np.array_equal(predict(result.model, dataset.test, config), probabilities.argmax(axis=1))

    numbers = [record.epoch for record in epochs.records]
    assert numbers == list(range(1, sum(len(run.history) for run in runs) + 1))
    assert epochs.starts == numbers
    assert result.history == epochs.records
    assert "3 record-grouped folds, an ensemble" in result.stop_reason


def test_distinct_fold_seeds_give_each_fold_model_its_own_seed(
    folds_config: Callable[..., Config], dataset: Dataset
) -> None:
    """``search.fold_seeds = "distinct"``: fold i trains with the seed NumPy's SeedSequence
    draws from (seed, i), each member is exactly the model trained with that seed, and the
    out-of-fold predictions are each held-out beat's by its fold's model."""
    config = folds_config(folds=3, fold_seeds="distinct")
    seeds = [int(np.random.SeedSequence([7, fold]).generate_state(1)[0]) for fold in range(3)]
    assert seeds == [fold_config(config, fold).seed for fold in range(3)]
    assert len(set(seeds)) == 3 and 7 not in seeds
    assert fold_config(folds_config(folds=3), 2) == folds_config(folds=3)  # shared: unchanged

    class Starts(TrainingObserver):
        def __init__(self) -> None:
            self.seeds: list[int] = []

        def on_train_start(self, config: Config, model: torch.nn.Module, n_train: int) -> None:
            self.seeds.append(config.seed)

    starts = Starts()
    result = cross_validate(config, dataset, starts)
    assert starts.seeds == seeds
    folds = fold_datasets(dataset, 3, config.seed)
    assert isinstance(result.model, Ensemble)
    for fold, (member, data) in enumerate(zip(result.model.members, folds, strict=True)):
        alone = train_model(fold_config(config, fold), data).model
        for name, tensor in alone.state_dict().items():
            assert torch.equal(tensor, member.state_dict()[name]), (fold, name)
    assert result.out_of_fold is not None
    held_out, predicted = result.out_of_fold
    assert np.array_equal(held_out.records, np.concatenate([f.valid.records for f in folds]))
    expected = [
        predict(m, f.valid, config) for m, f in zip(result.model.members, folds, strict=True)
    ]
    assert np.array_equal(predicted, np.concatenate(expected))
    confusion = compute_metrics(held_out.labels, predicted, dataset.class_names).confusion
    assert result.best_valid["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())


def test_ds1_read_alone_gives_the_same_folds_as_the_split_dataset(
    folds_config: Callable[..., Config], dataset: Dataset
) -> None:
    """The inter-patient benchmark reads DS1's records alone (DS2's labels unread) and must
    train what ``train`` trains: the fold pool is in record order whichever records the split
    put in validation, so both give the same folds, beat for beat."""
    config = folds_config(folds=3)
    assert set(dataset.valid.records) and set(dataset.test.records) == {"100", "232"}
    alone = load_record_beats(config, DS1_RECORDS)
    empty = alone.take(np.zeros(0, dtype=np.intp))
    read_alone = Dataset(alone, empty, empty, dataset.class_names)
    for split, single in zip(
        fold_datasets(dataset, 3, 7), fold_datasets(read_alone, 3, 7), strict=True
    ):
        for part in ("train", "valid"):
            a, b = getattr(split, part), getattr(single, part)
            assert np.array_equal(a.records, b.records), part
            assert np.array_equal(a.labels, b.labels) and np.array_equal(a.signals, b.signals)
            assert np.array_equal(a.rr, b.rr)
    with pytest.raises(ConfigError, match=re.escape("data.source = 'csv': records need 'mitdb'")):
        load_record_beats(config.model_copy(update={"data": config.data.model_copy(
            update={"source": "csv"})}), DS1_RECORDS)  # fmt: skip


@pytest.mark.slow
def test_an_ensemble_checkpoint_loads_exports_and_refuses_a_bad_member_count(
    folds_config: Callable[..., Config], dataset: Dataset, tmp_path: Path
) -> None:
    config = folds_config(folds=2)
    result = cross_validate(config, dataset, TrainingObserver())
    run_dir = tmp_path / "run"
    save_checkpoint(run_dir / CHECKPOINT_NAME, result.model, config, dataset.class_names)
    model, _, _ = load_checkpoint(run_dir / CHECKPOINT_NAME)
    assert isinstance(model, Ensemble) and len(model.members) == 2
    assert np.array_equal(
        predict_proba(model, dataset.test), predict_proba(result.model.eval(), dataset.test)
    )

    assert export_command(run_dir) == 0
    classifier = OnnxClassifier(run_dir / ONNX_NAME)
    assert np.allclose(
        classifier.probabilities(dataset.test), predict_proba(model, dataset.test), atol=1e-5
    )

    checkpoint = torch.load(run_dir / CHECKPOINT_NAME, weights_only=True)
    for members, problem in [(11, "it holds 11 models"), ("2", "its members entry is '2'")]:
        torch.save({**checkpoint, "members": members}, tmp_path / "bad.pt")
        with pytest.raises(DataError, match=problem):
            load_checkpoint(tmp_path / "bad.pt")


@pytest.mark.slow
def test_a_search_with_folds_reports_the_fold_score(
    folds_config: Callable[..., Config], in_tmp_path: None
) -> None:
    config = folds_config(folds=2, max_evals=2, space={"training.lr": {"choice": [1e-3, 3e-3]}})
    assert tune_command(config, quiet=True) == 0
    docs = results(config)
    _, children = mlflow_runs(config)
    for doc, child in zip(docs, children, strict=True):
        assert "2 record-grouped folds" in doc["row"]["note"]
        assert doc["row"]["objective"] == doc["valid"]["macro_f1"]
        assert child.data.metrics["best_epoch/macro_f1"] == pytest.approx(doc["valid"]["macro_f1"])
        assert child.data.metrics["epochs"] == doc["row"]["epochs"] > config.training.epochs
    report = (config.run_dir / "report.json").read_text()
    best = max(doc["row"]["objective"] for doc in docs)
    assert f'"best_valid_objective": {best}' in report


def test_folds_need_the_inter_split(tmp_path: Path, small_config: Callable[..., Config]) -> None:
    raw = small_config().model_dump(mode="json", exclude_none=True)
    path = tmp_path / "folds.toml"
    inter = {**raw["data"], "split": "inter", "records": RECORDS}
    cases: list[tuple[dict[str, Any], dict[str, Any], str]] = [
        (raw["data"], {"folds": 3}, "search.folds = 3 groups beats by record, which needs"),
        (inter, {"folds": 1}, "search.folds = 1: one fold validates on nothing"),
        (
            inter,
            {"folds": 2, "pruning": "asha", "grace_epochs": 1},
            "search.pruning = 'asha' with search.folds = 2: a trial's folds are separate",
        ),
    ]
    for data, search, message in cases:
        raw["data"], raw["search"] = data, {**raw["search"], **search}
        path.write_text(tomli_w.dumps(raw))
        done = run_hypertune("tune", "--config", str(path), cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr
        assert "Traceback" not in done.stderr
