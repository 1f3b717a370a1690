"""``ecgtune.search.folds`` exactly, on beats built in memory and a 17-parameter model: the
folds, their pool, the fold seeds, the out-of-fold predictions, the trial's result and the
renumbered epochs (tests/test_folds.py runs the same on real records, slower)."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from ecgtune.config import Config
from ecgtune.data.dataset import BeatSet
from ecgtune.errors import ConfigError
from ecgtune.metrics import compute_metrics
from ecgtune.models.ensemble import Ensemble
from ecgtune.search.folds import (
    ConsecutiveRuns,
    cross_validate,
    fit,
    fold_config,
    fold_datasets,
    pooled_in_record_order,
    predict_out_of_fold,
    record_folds,
)
from ecgtune.training import (
    EpochRecord,
    TrainingObserver,
    TrainResult,
    predict,
    train_model,
)
from tests.tiny_beats import (
    CLASSES,
    Heard,
    beat_set,
    constant_model,
    numbers_of,
    tiny_config,
    tiny_dataset,
)

# Six records of four beats (every class in each), numbered 0-23 record by record.
SIX_RECORDS = [name for name in "abcdef" for _ in range(4)]
SIX_LABELS = [0, 0, 1, 2] * 6


def six_records() -> BeatSet:
    return beat_set(SIX_RECORDS, SIX_LABELS)


def records_of(beats: BeatSet, index: np.ndarray) -> set[str]:
    return {str(record) for record in beats.records[index]}


# --- record_folds -----------------------------------------------------------------------------


def test_record_folds_put_each_record_on_one_side_and_every_beat_in_one_validation() -> None:
    beats = six_records()
    folds = record_folds(beats, 3, seed=0)
    assert len(folds) == 3
    held_out = np.sort(np.concatenate([valid for _, valid in folds]))
    assert held_out.tolist() == list(range(24))
    for train, valid in folds:
        assert np.sort(np.concatenate([train, valid])).tolist() == list(range(24))
        assert len(records_of(beats, valid)) == 2
        assert not records_of(beats, train) & records_of(beats, valid)


def test_record_folds_are_shuffled_by_the_seed_and_repeat_with_it() -> None:
    beats = six_records()

    def held_out_records(seed: int) -> list[list[str]]:
        return [sorted(records_of(beats, valid)) for _, valid in record_folds(beats, 3, seed)]

    assert held_out_records(0) == held_out_records(0)
    assert len({str(held_out_records(seed)) for seed in range(6)}) > 1


def test_record_folds_follow_the_class_mix_of_the_records() -> None:
    """Two records hold every S and V beat: stratification puts them in different folds."""
    records = [name for name in "abcd" for _ in range(4)]
    labels = [1, 2, 1, 2] + [1, 2, 1, 2] + [0] * 8
    beats = beat_set(records, labels)
    for seed in range(4):
        folds = record_folds(beats, 2, seed)
        assert [len(records_of(beats, valid) & {"a", "b"}) for _, valid in folds] == [1, 1]


def test_as_many_records_as_folds_is_enough() -> None:
    beats = beat_set(["a", "a", "b", "b"], [0, 1, 0, 1])
    folds = record_folds(beats, 2, seed=0)
    assert sorted(records_of(beats, valid).pop() for _, valid in folds) == ["a", "b"]


def test_fewer_records_than_folds_is_refused_naming_the_counts() -> None:
    beats = beat_set(["a", "a", "b", "b"], [0, 1, 0, 1])
    with pytest.raises(ConfigError) as refused:
        record_folds(beats, 3, seed=0)
    assert str(refused.value) == (
        "search.folds = 3: the train and validation splits hold 2 records, fewer than the folds"
    )


# --- the pool and the fold datasets -------------------------------------------------------------


def test_the_pool_is_sorted_by_record_keeping_each_records_beat_order() -> None:
    """Enough beats that an unstable sort would mix a record's beats (numpy sorts fewer than
    17 elements by insertion, which is stable anyway)."""
    rng = np.random.default_rng(0)
    train_records = rng.choice(["c", "a", "b"], size=60).tolist()
    valid_records = rng.choice(["b", "a"], size=30).tolist()
    dataset = tiny_dataset(
        beat_set(train_records, [0] * 60), beat_set(valid_records, [1] * 30, first=60)
    )
    pool = pooled_in_record_order(dataset)
    records = [*train_records, *valid_records]
    expected = [i for name in "abc" for i, record in enumerate(records) if record == name]
    assert numbers_of(pool) == expected
    assert pool.records.tolist() == sorted(records)
    assert pool.labels.tolist() == [0 if i < 60 else 1 for i in expected]


def test_fold_datasets_split_the_pool_and_carry_the_test_split_untouched() -> None:
    dataset = tiny_dataset(six_records().take(np.arange(16)), six_records().take(np.arange(16, 24)))
    folds = fold_datasets(dataset, 3, seed=0)
    pool = pooled_in_record_order(dataset)
    assert len(folds) == 3
    for fold, (train, valid) in zip(folds, record_folds(pool, 3, 0), strict=True):
        assert numbers_of(fold.train) == train.tolist()
        assert numbers_of(fold.valid) == valid.tolist()
        assert fold.test is dataset.test
        assert (fold.class_names, fold.info) == (CLASSES, {"source": "memory"})


def test_the_folds_do_not_depend_on_how_the_records_were_split() -> None:
    """Records given as train and validation, or all as train in another order: the same folds."""
    beats = six_records()
    split = tiny_dataset(beats.take(np.arange(8, 24)), beats.take(np.arange(8)))
    alone = tiny_dataset(beats.take(np.arange(24)[::-1]), beats.take(np.arange(0)))
    reordered = tiny_dataset(
        beats.take(np.r_[np.arange(12, 24), np.arange(12)]), beats.take(np.arange(0))
    )
    for one, other in [(split, alone), (split, reordered)]:
        for a, b in zip(fold_datasets(one, 3, 5), fold_datasets(other, 3, 5), strict=True):
            assert sorted(numbers_of(a.valid)) == sorted(numbers_of(b.valid))


# --- fold seeds -------------------------------------------------------------------------------


def test_shared_fold_seeds_give_every_fold_the_run_config_itself() -> None:
    config = tiny_config(search={"folds": 3})
    assert fold_config(config, 0) is config and fold_config(config, 2) is config


def test_distinct_fold_seeds_come_from_the_run_seed_and_the_fold_number() -> None:
    config = tiny_config(seed=42, search={"folds": 3, "fold_seeds": "distinct"})
    seeds = [fold_config(config, fold).seed for fold in range(3)]
    assert seeds == [3444837047, 3329053876, 955475868]  # SeedSequence([42, fold])'s first word
    next_seed = fold_config(tiny_config(seed=43, search={"folds": 3, "fold_seeds": "distinct"}), 0)
    assert next_seed.seed not in seeds
    assert fold_config(config, 1).model_dump() == {**config.model_dump(), "seed": seeds[1]}
    assert config.seed == 42


# --- out-of-fold predictions ----------------------------------------------------------------------


def test_each_pooled_beat_is_predicted_by_the_model_of_its_fold() -> None:
    config = tiny_config(search={"folds": 3})
    folds = fold_datasets(tiny_dataset(six_records(), beat_set([], [])), 3, seed=0)
    models = [constant_model(config, label) for label in (2, 0, 1)]
    held_out, predicted = predict_out_of_fold(models, folds, config)
    assert numbers_of(held_out) == [n for fold in folds for n in numbers_of(fold.valid)]
    expected = [
        label for label, fold in zip((2, 0, 1), folds, strict=True) for _ in range(len(fold.valid))
    ]
    assert predicted.tolist() == expected
    assert predicted.dtype == np.int64


def test_one_model_per_fold_is_required() -> None:
    config = tiny_config(search={"folds": 3})
    folds = fold_datasets(tiny_dataset(six_records(), beat_set([], [])), 3, seed=0)
    with pytest.raises(ValueError, match="zip"):
        predict_out_of_fold([constant_model(config, 0)] * 2, folds, config)


# --- the trial: cross_validate and fit --------------------------------------------------------


def folds_run_config(**training: object) -> Config:
    """Two folds, three epochs, the validation loss as the objective (it falls every epoch)."""
    return tiny_config(
        training={"epochs": 3, "objective": "loss", "lr": 0.05, "min_delta": 0.0, **training},
        search={"folds": 2},
    )


def test_a_trial_is_its_fold_models_their_ensemble_and_the_out_of_fold_figures() -> None:
    config = folds_run_config()
    dataset = tiny_dataset(six_records(), beat_set([], []))
    heard = Heard(stop_after=(1,))  # the first fold stops after its first epoch
    started = time.perf_counter()
    result = cross_validate(config, dataset, heard)
    took = time.perf_counter() - started

    folds = fold_datasets(dataset, 2, config.seed)
    alone = [
        train_model(config, folds[0], Heard(stop_after=(1,))),
        train_model(config, folds[1]),
    ]
    assert [run.best_epoch for run in alone] == [1, 3]
    assert isinstance(result.model, Ensemble) and len(result.model.members) == 2
    held_out, predicted = result.out_of_fold or (None, None)
    assert held_out is not None and predicted is not None
    expected = np.concatenate(
        [predict(run.model, fold.valid, config) for run, fold in zip(alone, folds, strict=True)]
    )
    assert predicted.tolist() == expected.tolist()
    assert numbers_of(held_out) == numbers_of(folds[0].valid) + numbers_of(folds[1].valid)
    for member, run in zip(result.model.members, alone, strict=True):
        for mine, theirs in zip(
            member.state_dict().values(), run.model.state_dict().values(), strict=True
        ):
            assert torch.equal(mine, theirs)

    sizes = [len(fold.valid) for fold in folds]
    loss = sum(run.best_valid["loss"] * size for run, size in zip(alone, sizes, strict=True)) / 24
    figures = compute_metrics(held_out.labels, predicted, CLASSES).as_flat_dict()
    assert result.best_valid == pytest.approx({"loss": loss, **figures}, rel=1e-12)
    assert result.best_epoch == 2  # round(mean(1, 3))
    assert result.stop_reason == (
        "2 record-grouped folds, an ensemble of their models (best epochs 1, 3)"
    )
    assert result.train_counts == {"N": 12, "S": 6, "V": 6}
    assert result.class_names == CLASSES
    assert result.pruned_at is None
    assert 0 < result.seconds <= took
    assert [record.epoch for record in result.history] == [1, 2, 3, 4]
    assert [r.valid_loss for r in result.history] == [
        r.valid_loss for run in alone for r in run.history
    ]
    assert heard.calls[-1] == ("train end", 2)
    assert [call for call in heard.calls if call[0] in ("start", "train end")] == [
        ("start", 6, len(folds[0].train)),
        ("start", 6, len(folds[1].train)),
        ("train end", 2),
    ]


def test_the_trial_best_epoch_is_the_rounded_mean_of_its_folds() -> None:
    """Best epochs 1 and 2: a mean of 1.5, rounded half to even to 2 (a cut would say 1)."""
    config = folds_run_config(epochs=2)
    dataset = tiny_dataset(six_records(), beat_set([], []))
    result = cross_validate(config, dataset, Heard(stop_after=(1,)))
    assert result.stop_reason.endswith("(best epochs 1, 2)")
    assert result.best_epoch == 2


def test_fit_without_folds_is_one_training_run() -> None:
    config = tiny_config(training={"epochs": 1})
    dataset = tiny_dataset(six_records().take(np.arange(16)), six_records().take(np.arange(16, 24)))
    heard = Heard()
    result = fit(config, dataset, heard)
    assert heard.calls[0] == ("start", 1, 16) and heard.calls[-1] == ("train end", 1)
    alone = train_model(config, dataset)
    assert result.out_of_fold is None
    assert result.best_valid == alone.best_valid
    assert result.stop_reason == "trained the full training.epochs = 1"


def test_fit_with_folds_is_the_cross_validation() -> None:
    config = folds_run_config(epochs=1)
    dataset = tiny_dataset(six_records(), beat_set([], []))
    result = fit(config, dataset, TrainingObserver())
    assert isinstance(result.model, Ensemble)
    assert result.best_valid == cross_validate(config, dataset, TrainingObserver()).best_valid


def test_the_trial_folds_are_the_seeded_record_folds() -> None:
    dataset = tiny_dataset(six_records(), beat_set([], []))
    for seed in range(4):
        config = tiny_config(seed=seed, training={"epochs": 1}, search={"folds": 3})
        held_out, _ = cross_validate(config, dataset, TrainingObserver()).out_of_fold or (None, 0)
        assert held_out is not None
        folds = fold_datasets(dataset, 3, seed)
        assert numbers_of(held_out) == [n for fold in folds for n in numbers_of(fold.valid)]


def test_distinct_fold_seeds_train_each_fold_model_with_its_own_seed() -> None:
    config = tiny_config(training={"epochs": 1}, search={"folds": 2, "fold_seeds": "distinct"})
    dataset = tiny_dataset(six_records(), beat_set([], []))
    result = cross_validate(config, dataset, TrainingObserver())
    assert isinstance(result.model, Ensemble)
    folds = fold_datasets(dataset, 2, config.seed)
    for i, (member, fold) in enumerate(zip(result.model.members, folds, strict=True)):
        alone = train_model(fold_config(config, i), fold).model
        for mine, theirs in zip(
            member.state_dict().values(), alone.state_dict().values(), strict=True
        ):
            assert torch.equal(mine, theirs)


# --- ConsecutiveRuns ----------------------------------------------------------------------------


def epoch_record(epoch: int) -> EpochRecord:
    return EpochRecord(epoch, 1.0, 2.0, {"loss": 2.0}, 0.1, 1.0, 10.0)


def finished(epochs: int) -> TrainResult:
    history = [epoch_record(epoch) for epoch in range(1, epochs + 1)]
    return TrainResult(torch.nn.Linear(1, 1), history, 1, {}, "", 1.0, {}, CLASSES)


def test_consecutive_runs_number_their_epochs_on_and_keep_each_runs_end_back() -> None:
    heard = Heard()
    runs = ConsecutiveRuns(heard, 3)
    config = tiny_config(training={"epochs": 4})
    model = torch.nn.Linear(1, 1)
    runs.on_train_start(config, model, 17)
    runs.on_resampled("random_over", {"N": 3}, {"N": 5})
    for epoch in (1, 2):
        runs.on_epoch_start(epoch, 7)
        runs.on_batch_end(4, 0.5)
        runs.on_epoch_end(epoch_record(epoch))
    runs.on_train_end(finished(2))
    runs.on_epoch_start(1, 7)
    runs.on_epoch_end(epoch_record(1))
    runs.on_train_end(finished(1))
    runs.on_epoch_start(1, 7)
    assert heard.calls == [
        ("start", 12, 17),
        ("resampled", "random_over", {"N": 3}, {"N": 5}),
        ("epoch", 1, 7),
        ("batch", 4, 0.5),
        ("end", 1),
        ("epoch", 2, 7),
        ("batch", 4, 0.5),
        ("end", 2),
        ("epoch", 3, 7),
        ("end", 3),
        ("epoch", 4, 7),
    ]
    assert heard.models == [model]
    assert [record.epoch for record in runs.history] == [1, 2, 3]
    assert runs.history[2] == replace(epoch_record(1), epoch=3)
    assert config.training.epochs == 4


def test_consecutive_runs_show_the_run_config_but_for_the_epoch_count() -> None:
    shown: list[Config] = []

    class Keeps(TrainingObserver):
        def on_train_start(self, config: Config, model: torch.nn.Module, n_train: int) -> None:
            shown.append(config)

    config = tiny_config(training={"epochs": 4, "lr": 0.5})
    ConsecutiveRuns(Keeps(), 2).on_train_start(config, torch.nn.Linear(1, 1), 3)
    dumped = config.model_dump()
    dumped["training"]["epochs"] = 8
    assert shown[0].model_dump() == dumped


def test_a_loss_weighted_by_fold_size_is_not_a_mean_of_fold_losses() -> None:
    """Folds of 8 and 16 beats: the trial's loss weighs the second twice as much."""
    records = [name for name in "abc" for _ in range(8)]
    labels = [0, 0, 0, 0, 1, 1, 2, 2] * 3
    dataset = tiny_dataset(beat_set(records, labels), beat_set([], []))
    config = folds_run_config(epochs=1)
    result = cross_validate(config, dataset, TrainingObserver())
    folds = fold_datasets(dataset, 2, config.seed)
    sizes = sorted(len(fold.valid) for fold in folds)
    assert sizes == [8, 16]
    losses = [train_model(config, fold).best_valid["loss"] for fold in folds]
    weighted = sum(loss * len(fold.valid) for loss, fold in zip(losses, folds, strict=True)) / 24
    assert result.best_valid["loss"] == pytest.approx(weighted, rel=1e-12)
    assert not math.isclose(weighted, sum(losses) / 2, rel_tol=1e-6)
