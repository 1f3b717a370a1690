"""Resampling of the train split on real beats: counts, alignment, seeding, SMOTE edge cases."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ecgtune.config import Config, ResampleConfig
from ecgtune.data import load_dataset
from ecgtune.data.dataset import BeatSet, Dataset
from ecgtune.data.resampling import SYNTHETIC_RECORD, resample_train_split
from ecgtune.errors import ConfigError

CLASSES = ("N", "S", "V", "F", "Q")


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One dataset cache for the module: the beats are built once, then read back."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def dataset(small_config: Callable[..., Config], shared_cache: Path) -> Dataset:
    return load_dataset(small_config(data={"cache_dir": str(shared_cache)}))


def with_counts(beats: BeatSet, wanted: dict[str, int]) -> BeatSet:
    """The first ``wanted[c]`` real beats of each class c (an imbalance chosen by the test)."""
    rows = [
        np.flatnonzero(beats.labels == CLASSES.index(name))[:count]
        for name, count in wanted.items()
    ]
    for name, row in zip(wanted, rows, strict=True):
        assert len(row) == wanted[name], f"the quick records have fewer than {wanted} beats"
    return beats.take(np.concatenate(rows))


def counts(beats: BeatSet) -> dict[str, int]:
    found = np.bincount(beats.labels, minlength=len(CLASSES))
    return {name: int(n) for name, n in zip(CLASSES, found, strict=True) if n}


def assert_rows_are_original_beats(resampled: BeatSet, original: BeatSet) -> None:
    """Every beat is an original one, with that beat's label, RR features and record."""
    row_of = {signal.tobytes(): row for row, signal in enumerate(original.signals)}
    rows = np.array([row_of[signal.tobytes()] for signal in resampled.signals])
    np.testing.assert_array_equal(resampled.labels, original.labels[rows])
    np.testing.assert_array_equal(resampled.rr, original.rr[rows])
    np.testing.assert_array_equal(resampled.records, original.records[rows])


def resample(beats: BeatSet, seed: int = 7, **settings: object) -> BeatSet:
    return resample_train_split(beats, CLASSES, ResampleConfig.model_validate(settings), seed)


def test_random_under_cuts_every_class_to_the_smallest(dataset: Dataset) -> None:
    beats = with_counts(dataset.train, {"N": 200, "S": 40, "V": 25})
    resampled = resample(beats, method="random_under")
    assert counts(resampled) == {"N": 25, "S": 25, "V": 25}
    assert_rows_are_original_beats(resampled, beats)


def test_random_over_raises_every_class_to_the_largest(dataset: Dataset) -> None:
    beats = with_counts(dataset.train, {"N": 200, "S": 40, "V": 25})
    resampled = resample(beats, method="random_over")
    assert counts(resampled) == {"N": 200, "S": 200, "V": 200}
    assert_rows_are_original_beats(resampled, beats)


def test_under_over_meets_the_target_from_both_sides(dataset: Dataset) -> None:
    beats = with_counts(dataset.train, {"N": 200, "S": 40, "V": 25})
    resampled = resample(beats, method="under_over", target_per_class=60)
    assert counts(resampled) == {"N": 60, "S": 60, "V": 60}
    assert_rows_are_original_beats(resampled, beats)


def test_smote_interpolates_signal_and_rr_together_within_each_class(dataset: Dataset) -> None:
    beats = with_counts(dataset.train, {"N": 120, "S": 30, "V": 20})
    resampled = resample(beats, method="smote")
    assert counts(resampled) == {"N": 120, "S": 120, "V": 120}
    n = len(beats)
    np.testing.assert_array_equal(resampled.signals[:n], beats.signals)
    np.testing.assert_array_equal(resampled.rr[:n], beats.rr)
    assert set(resampled.records[n:]) == {SYNTHETIC_RECORD}
    assert resampled.signals.dtype == np.float32 and resampled.rr.dtype == np.float32
    joint = np.hstack([resampled.signals, resampled.rr])
    for label in np.unique(beats.labels):
        real = joint[:n][beats.labels == label]
        for synthetic in joint[n:][resampled.labels[n:] == label]:
            assert distance_to_nearest_segment(synthetic, real) < 1e-5


def distance_to_nearest_segment(point: np.ndarray, beats: np.ndarray) -> float:
    """How far ``point`` is from the nearest segment between two of ``beats`` (signal and RR
    as one vector: a beat whose RR features were interpolated apart from its signal is off)."""
    starts, ends = beats[:, None, :], beats[None, :, :]
    direction = ends - starts
    offset = point - starts
    length = np.maximum((direction**2).sum(axis=2, keepdims=True), 1e-12)
    share = np.clip((offset * direction).sum(axis=2, keepdims=True) / length, 0.0, 1.0)
    return float(np.sqrt(((offset - share * direction) ** 2).sum(axis=2)).min())


def test_smote_handles_classes_smaller_than_its_neighbourhood(dataset: Dataset) -> None:
    beats = with_counts(dataset.train, {"N": 50, "S": 3, "V": 1})
    resampled = resample(beats, method="smote")
    assert counts(resampled) == {"N": 50, "S": 50, "V": 50}
    single_v = beats.signals[beats.labels == CLASSES.index("V")][0]
    every_v = resampled.signals[resampled.labels == CLASSES.index("V")]
    np.testing.assert_allclose(every_v, np.broadcast_to(single_v, every_v.shape), atol=1e-6)


def test_drop_classes_removes_them_before_resampling(dataset: Dataset) -> None:
    beats = with_counts(dataset.train, {"N": 200, "S": 40, "V": 25})
    resampled = resample(beats, method="random_under", drop_classes=["V"])
    assert counts(resampled) == {"N": 40, "S": 40}
    assert_rows_are_original_beats(resampled, beats)
    kept = resample(beats, method="none", drop_classes=["S"])
    assert counts(kept) == {"N": 200, "V": 25}


def test_unknown_drop_class_names_the_key(dataset: Dataset) -> None:
    with pytest.raises(ConfigError, match=r"data\.resample\.drop_classes = \['X'\].*'X'.*N, S"):
        resample(dataset.train, method="none", drop_classes=["X"])
    with pytest.raises(ConfigError, match="fewer than 2 classes"):
        resample(with_counts(dataset.train, {"N": 5, "V": 5}), drop_classes=["V"])


def test_resampling_is_seeded(dataset: Dataset) -> None:
    beats = with_counts(dataset.train, {"N": 200, "S": 40, "V": 25})
    for method in ("random_under", "random_over", "smote"):
        first, again = resample(beats, method=method), resample(beats, method=method)
        np.testing.assert_array_equal(first.signals, again.signals)
        other = resample(beats, seed=8, method=method)
        assert not np.array_equal(first.signals, other.signals), method


def test_method_none_leaves_the_split_as_it_is(dataset: Dataset) -> None:
    assert resample(dataset.train, method="none") is dataset.train
