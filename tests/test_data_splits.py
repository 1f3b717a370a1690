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
from ecgtune.data.splits import (
    DS1,
    DS2,
    carve,
    carve_given_test,
    choose_valid_records,
    inter_split,
    intra_split,
)
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
    assert (kept.tolist(), carved.tolist()) == ([0, 1, 2, 3, 6, 7, 8, 9], [4, 5])
    assert carve(np.arange(10), labels, fraction=0.2, seed=4)[1].tolist() == [3, 8]
    with pytest.raises(ConfigError, match="cannot carve"):
        carve(np.arange(1), np.array([0]), fraction=0.2, seed=3)


def test_train_files_with_their_own_test_set_carve_only_validation() -> None:
    split = carve_given_test(np.array([0] * 6 + [1] * 2), valid_fraction=0.5, seed=0)
    assert (split.train.tolist(), split.valid.tolist()) == ([1, 2, 5, 6], [0, 3, 4, 7])
    assert split.test.size == 0 and split.test.dtype == np.intp


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
    by_seed = {seed: [DS1[i] for i in choose_valid_records(counts, 0.1, seed)] for seed in (1, 123)}
    assert by_seed == {1: ["101", "223"], 123: ["101", "124", "223"]}


def test_inter_split_takes_whole_records_by_their_own_class_counts() -> None:
    """Two DS1 records (the fewest allowed): 101 with 3 N and 1 S, 106 with 2 N and 2 S; half
    of DS1's 4 S beats is nearer in 106, which goes to validation; DS2's 100 is the test."""
    records = np.array(["101"] * 4 + ["106"] * 4 + ["100"] * 2)
    labels = np.array([0, 0, 0, 1, 0, 0, 1, 1, 0, 0])
    split = inter_split(records, labels, valid_fraction=0.5, seed=0)
    assert (split.train.tolist(), split.valid.tolist(), split.test.tolist()) == (
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9],
    )


def test_inter_split_breaks_ties_by_its_seed() -> None:
    """Six identical DS1 records: which one validates is the seed's first candidate."""
    records = np.array([name for name in DS1[:6] for _ in range(3)] + ["100"])
    labels = np.array([0, 0, 1] * 6 + [0])
    chosen = [
        records[inter_split(records, labels, 1 / 6, seed).valid].tolist() for seed in range(4)
    ]
    assert chosen == [["109"] * 3, ["108"] * 3, ["109"] * 3, ["101"] * 3]


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (["101", "100"], "(got DS1 ['101'], DS2 ['100'])"),
        (["101", "106"], "(got DS1 ['101', '106'], DS2 none)"),
        (["100", "103"], "(got DS1 none, DS2 ['100', '103'])"),
    ],
)
def test_inter_split_names_the_records_it_lacks(records: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        inter_split(np.array(records), np.zeros(len(records), dtype=np.int64), 0.2, seed=0)
    assert str(caught.value) == (
        "data.split = 'inter' needs at least two DS1 records and one DS2 record in "
        f"data.records {expected}"
    )


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
        # size weighing 1, record 2's class mix (0.78 + 0.35 = 1.13) would win. The fourth
        # class has no beat in DS1: it counts in neither the cost nor the size weight.
        ([[20, 20, 30, 0], [30, 30, 40, 0], [20, 60, 90, 0], [10, 60, 70, 0]], 0.25, [1]),
        # The only beat of the third class stays in train; validation may take all records
        # but one.
        ([[60, 60, 0], [50, 20, 0], [50, 10, 1]], 0.6, [0, 1]),
    ],
    ids=[
        "train-misses-no-class-first",
        "then-validation",
        "then-the-size-weighted-cost",
        "a-single-beat-class-in-train",
    ],
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
