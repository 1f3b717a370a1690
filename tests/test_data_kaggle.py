"""Kaggle beat files (CSV and parquet), written by the tests from real beats of ../shared."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from numpy.typing import NDArray

from ecgtune.config import Config
from ecgtune.data import Dataset, load_dataset
from ecgtune.data.beats import RR_COLUMNS
from ecgtune.errors import ConfigError, DataError

SPLITS = ("train", "valid", "test")


Beats = tuple[NDArray[np.float32], NDArray[np.int64]]


@pytest.fixture
def real_beats(small_config: Callable[..., Config]) -> Beats:
    """1,600 real beats of records 107, 119, 208 and 232 (every class), in record order."""
    config = small_config(data={"records": ["107", "119", "208", "232"]})
    dataset = load_dataset(config)
    signals = np.concatenate([getattr(dataset, s).signals for s in SPLITS])
    labels = np.concatenate([getattr(dataset, s).labels for s in SPLITS])
    return signals, labels


def write_csv(path: Path, signals: NDArray[np.float32], labels: NDArray[np.int64]) -> Path:
    """The Kaggle CSV layout: no header, signal values then the label as a float."""
    np.savetxt(path, np.column_stack([signals, labels.astype(float)]), delimiter=",", fmt="%.18e")
    return path


def write_parquet(path: Path, signals: NDArray[np.float32], labels: NDArray[np.int64]) -> Path:
    """The heart_*.parq layout: signal columns "0".."186" and a float ``target`` column."""
    frame = pd.DataFrame(signals.astype(np.float64), columns=[str(i) for i in range(187)])
    frame["target"] = labels.astype(float)
    frame.to_parquet(path)
    return path


def kaggle_config(small_config: Callable[..., Config], source: str, **data: object) -> Config:
    return small_config(data={"source": source, "records": None, **data})


def all_labels(dataset: Dataset) -> NDArray[np.int64]:
    return np.concatenate([getattr(dataset, s).labels for s in SPLITS])


def test_mitbih_csv_train_and_test_files(
    tmp_path: Path, small_config: Callable[..., Config], real_beats: Beats
) -> None:
    signals, labels = real_beats
    order = np.random.default_rng(0).permutation(labels.size)
    signals, labels = signals[order], labels[order]
    train = write_csv(tmp_path / "mitbih_train.csv", signals[:1200], labels[:1200])
    test = write_csv(tmp_path / "mitbih_test.csv", signals[1200:], labels[1200:])
    config = kaggle_config(small_config, "csv", train_files=[str(train)], test_files=[str(test)])
    dataset = load_dataset(config)
    assert dataset.class_names == ("N", "S", "V", "F", "Q")
    np.testing.assert_array_equal(dataset.test.signals, signals[1200:])
    np.testing.assert_array_equal(dataset.test.labels, labels[1200:])
    assert len(dataset.valid) == 120 and len(dataset.train) == 1080
    assert set(dataset.test.records.tolist()) == {"mitbih_test.csv"}
    assert np.array_equal(dataset.test.rr, np.zeros((400, len(RR_COLUMNS)), dtype=np.float32))
    train_counts = np.bincount(labels[:1200], minlength=5)
    valid_counts = dataset.valid.class_counts(dataset.n_classes)
    np.testing.assert_allclose(valid_counts, train_counts * 0.1, atol=1)


def test_parquet_with_a_target_column_carves_the_test_split(
    tmp_path: Path, small_config: Callable[..., Config], real_beats: Beats
) -> None:
    signals, labels = real_beats
    train = write_parquet(tmp_path / "heart_big_train.parq", signals, labels)
    config = kaggle_config(small_config, "parquet", train_files=[str(train)])
    dataset = load_dataset(config)
    assert len(dataset.test) == 320 and len(dataset.valid) == 160
    np.testing.assert_array_equal(np.sort(all_labels(dataset)), np.sort(labels))
    rows = {row.tobytes() for row in signals}
    assert all(row.tobytes() in rows for row in dataset.test.signals)


def test_ptb_one_file_per_class_is_a_binary_task(
    tmp_path: Path, small_config: Callable[..., Config], real_beats: Beats
) -> None:
    signals, labels = real_beats
    abnormal = labels > 0
    normal_file = write_csv(
        tmp_path / "ptbdb_normal.csv", signals[~abnormal], labels[~abnormal] * 0
    )
    abnormal_file = write_csv(
        tmp_path / "ptbdb_abnormal.csv", signals[abnormal], np.ones(abnormal.sum(), dtype=np.int64)
    )
    config = kaggle_config(small_config, "csv", train_files=[str(normal_file), str(abnormal_file)])
    dataset = load_dataset(config)
    assert dataset.class_names == ("normal", "abnormal")
    assert np.bincount(all_labels(dataset)).tolist() == [(~abnormal).sum(), abnormal.sum()]
    assert {"ptbdb_normal.csv", "ptbdb_abnormal.csv"} == set(dataset.train.records.tolist())
    for split in SPLITS:
        assert getattr(dataset, split).class_counts(2).min() > 0


def test_ptb_parquet_pair_with_given_class_names(
    tmp_path: Path, small_config: Callable[..., Config], real_beats: Beats
) -> None:
    signals, labels = real_beats
    binary = (labels > 0).astype(np.int64)
    train = write_parquet(tmp_path / "heart_train.parq", signals[::2], binary[::2])
    test = write_parquet(tmp_path / "heart_test.parq", signals[1::2], binary[1::2])
    config = kaggle_config(
        small_config,
        "parquet",
        train_files=[str(train)],
        test_files=[str(test)],
        class_names=["healthy", "infarction"],
    )
    dataset = load_dataset(config)
    assert dataset.class_names == ("healthy", "infarction")
    np.testing.assert_array_equal(dataset.test.labels, binary[1::2])


def drop_first_field(line: str) -> str:
    return line.split(",", 1)[1]


def drop_label(line: str) -> str:
    return line.rsplit(",", 1)[0]


DAMAGES: dict[str, tuple[int, Callable[[str], str], str]] = {
    "extra column": (3, lambda line: line + ",0.5", "row 4 has 189 columns, expected 188"),
    "missing column": (2, drop_label, "row 3 has 187 columns"),
    "text": (5, lambda line: "abc," + drop_first_field(line), "row 6, column 1: 'abc' is not"),
    "NaN": (7, lambda line: "nan," + drop_first_field(line), "row 8, column 1: missing"),
    "empty cell": (8, lambda line: "," + drop_first_field(line), "row 9, column 1: missing"),
    "fractional label": (4, lambda line: drop_label(line) + ",1.5", "row 5: label 1.5 is not"),
    "negative label": (6, lambda line: drop_label(line) + ",-1", "row 7: label -1 is not"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_bad_csv_rows_are_named(
    tmp_path: Path,
    small_config: Callable[..., Config],
    real_beats: Beats,
    damage: str,
) -> None:
    signals, labels = real_beats
    path = write_csv(tmp_path / "mitbih_train.csv", signals[:20], labels[:20])
    lines = path.read_text().splitlines()
    row, edit, message = DAMAGES[damage]
    lines[row] = edit(lines[row])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message) as caught:
        load_dataset(kaggle_config(small_config, "csv", train_files=[str(path)]))
    assert str(caught.value).startswith(str(path))


def test_labels_beyond_the_class_names_are_named(
    tmp_path: Path, small_config: Callable[..., Config], real_beats: Beats
) -> None:
    path = write_parquet(tmp_path / "heart_train.parq", real_beats[0][:50], np.arange(50) % 3)
    config = kaggle_config(
        small_config, "parquet", train_files=[str(path)], class_names=["normal", "abnormal"]
    )
    with pytest.raises(DataError, match=r"heart_train.parq: row 3: label 2 is not one of 0..1"):
        load_dataset(config)


def test_missing_file_and_wrong_parquet_width(
    tmp_path: Path, small_config: Callable[..., Config], real_beats: Beats
) -> None:
    missing = tmp_path / "mitbih_test.csv"
    with pytest.raises(DataError, match=r"mitbih_test.csv: file not found \(listed in data.train"):
        load_dataset(kaggle_config(small_config, "csv", train_files=[str(missing)]))
    signals, labels = real_beats
    narrow = write_parquet(tmp_path / "heart.parq", signals[:10], labels[:10])
    pd.read_parquet(narrow).drop(columns=["186"]).to_parquet(narrow)
    with pytest.raises(DataError, match="186 signal columns besides the label 'target'"):
        load_dataset(kaggle_config(small_config, "parquet", train_files=[str(narrow)]))


def test_kaggle_files_have_no_records_to_split_by(
    tmp_path: Path, small_config: Callable[..., Config], real_beats: Beats
) -> None:
    signals, labels = real_beats
    path = write_csv(tmp_path / "mitbih_train.csv", signals[:20], labels[:20])
    with pytest.raises(ConfigError, match=r"data.split = 'inter' needs data.source = 'mitdb'"):
        kaggle_config(small_config, "csv", train_files=[str(path)], split="inter")
