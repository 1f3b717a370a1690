"""Splits: disjoint, deterministic for a seed, stratified (intra) or record-pure (inter)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import wfdb
from numpy.typing import NDArray

from ecgtune.config import Config
from ecgtune.data import Dataset, load_dataset
from ecgtune.data.splits import DS1, DS2, carve, choose_valid_records, intra_split
from ecgtune.errors import ConfigError

SPLITS = ("train", "valid", "test")


def beat_keys(dataset: Dataset, split: str) -> set[tuple[str, bytes]]:
    """Each beat identified by its record and its samples (beats of one record are distinct)."""
    beats = getattr(dataset, split)
    return {(r, s.tobytes()) for r, s in zip(beats.records, beats.signals, strict=True)}


def annotated_class_counts(mitdb_dir: Path, record: str) -> NDArray[np.int64]:
    """Beats per AAMI class (N, S, V, F, Q) of a record, from its annotations."""
    aami = ["NLRej", "AaJS", "VE", "F", "/fQ"]
    symbols = wfdb.rdann(str(mitdb_dir / record), "atr").symbol
    return np.array([sum(symbol in group for symbol in symbols) for group in aami])


def assert_same(a: Dataset, b: Dataset) -> None:
    for split in SPLITS:
        np.testing.assert_array_equal(getattr(a, split).signals, getattr(b, split).signals)
        np.testing.assert_array_equal(getattr(a, split).labels, getattr(b, split).labels)


def test_intra_splits_are_disjoint_complete_and_stratified(
    small_config: Callable[..., Config],
) -> None:
    dataset = load_dataset(small_config())
    keys = {split: beat_keys(dataset, split) for split in SPLITS}
    assert not keys["train"] & keys["valid"] and not keys["train"] & keys["test"]
    assert not keys["valid"] & keys["test"]
    sizes = {split: len(getattr(dataset, split)) for split in SPLITS}
    assert sum(sizes.values()) == 6 * 400 == sum(len(k) for k in keys.values())
    assert sizes["test"] == pytest.approx(0.2 * 2400, abs=1)
    assert sizes["valid"] == pytest.approx(0.1 * 2400, abs=1)
    shares = {s: getattr(dataset, s).class_counts(5) / sizes[s] for s in SPLITS}
    np.testing.assert_allclose(shares["test"], shares["train"], atol=0.01)
    np.testing.assert_allclose(shares["valid"], shares["train"], atol=0.01)


def test_splits_are_deterministic_for_a_seed(
    small_config: Callable[..., Config], tmp_path: Path
) -> None:
    first = load_dataset(small_config())
    again = load_dataset(small_config(data={"cache_dir": str(tmp_path / "other-cache")}))
    assert not again.info["from_cache"]
    assert_same(first, again)
    other = load_dataset(small_config(seed=8))
    assert beat_keys(other, "test") != beat_keys(first, "test")


def test_a_class_with_one_beat_stays_in_train_and_the_rest_is_stratified() -> None:
    labels = np.array([0] * 60 + [1] * 30 + [2] * 9 + [3])
    split = intra_split(labels, test_fraction=0.2, valid_fraction=0.1, seed=1)
    assert 99 in split.train
    assert np.bincount(labels[split.test], minlength=4).tolist() == [12, 6, 2, 0]
    everything = np.concatenate([split.train, split.valid, split.test])
    assert np.array_equal(np.sort(everything), np.arange(100))


def test_too_few_beats_to_stratify_falls_back_to_a_plain_shuffle() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    kept, carved = carve(np.arange(10), labels, fraction=0.2, seed=3)
    assert kept.size == 8 and carved.size == 2
    with pytest.raises(ConfigError, match="cannot carve"):
        carve(np.arange(1), np.array([0]), fraction=0.2, seed=3)


def test_inter_keeps_every_record_in_one_split(
    small_config: Callable[..., Config], tmp_path: Path
) -> None:
    records = ["100", "101", "106", "107", "118", "119", "203", "208", "232"]
    dataset = load_dataset(small_config(data={"records": records, "split": "inter"}))
    used = {split: set(getattr(dataset, split).records.tolist()) for split in SPLITS}
    assert used["test"] == {"100", "232"}
    assert used["train"] | used["valid"] == {"101", "106", "118", "119", "203", "208"}
    assert not used["train"] & used["valid"]
    assert list(dataset.info["skipped_records"]) == ["107"]
    assert "not in de Chazal DS1/DS2" in dataset.info["skipped_records"]["107"]
    fresh = {"records": records, "split": "inter", "cache_dir": str(tmp_path / "other-cache")}
    again = load_dataset(small_config(data=fresh))
    assert not again.info["from_cache"]
    assert_same(dataset, again)


def test_inter_validation_records_cover_the_classes_of_ds1(mitdb_dir: Path) -> None:
    counts = np.stack([annotated_class_counts(mitdb_dir, record) for record in DS1])
    assert counts.sum() == 51021
    for seed in (1, 42, 123):
        chosen = choose_valid_records(counts, valid_fraction=0.1, seed=seed)
        valid = counts[chosen].sum(axis=0)
        train = counts.sum(axis=0) - valid
        assert (valid > 0).all() and (train > 0).all()
        assert 0.07 < valid.sum() / counts.sum() < 0.14


@pytest.mark.parametrize(
    ("counts", "fraction", "chosen"),
    [
        # Record 2 holds every S beat: it stays in train, though validation then lacks S (the
        # cost alone, or fewest missing from validation first, would take records 1 and 2).
        ([[100, 0], [90, 0], [0, 10]], 0.5, [0]),
        # Record 0 alone is nearest 10 % of the beats but has no S beat: record 2 is chosen,
        # the one of the two S records that leaves train nearer its share.
        ([[100, 0], [300, 0], [300, 10], [320, 10]], 0.1, [2]),
        # Costs (classes + 3 x size) of the single records: 2.98, 1.63, 1.83, 1.64; with the
        # size weighing 1, record 2's class mix (0.78 + 0.35 = 1.13) would win.
        ([[20, 20, 30], [30, 30, 40], [20, 60, 90], [10, 60, 70]], 0.25, [1]),
    ],
    ids=["train-misses-no-class-first", "then-validation", "then-the-size-weighted-cost"],
)
def test_the_validation_records_are_chosen_by_missing_classes_then_cost(
    counts: list[list[int]], fraction: float, chosen: list[int]
) -> None:
    """Few records: the seeded orders' prefixes hold every candidate, so no seed changes the
    choice."""
    for seed in (0, 1, 2):
        assert choose_valid_records(np.array(counts), fraction, seed).tolist() == chosen


def test_unknown_records_name_the_key_and_the_valid_names(
    small_config: Callable[..., Config],
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_dataset(small_config(data={"records": ["100", "110"]}))
    message = str(caught.value)
    assert "data.records: unknown records ['110']" in message
    assert "100, 101, 102" in message and "234" in message


def test_inter_needs_records_on_both_sides(small_config: Callable[..., Config]) -> None:
    with pytest.raises(ConfigError, match="at least two DS1 records and one DS2 record"):
        load_dataset(small_config(data={"records": ["100", "101", "103"], "split": "inter"}))
    assert set(DS1).isdisjoint(DS2)
