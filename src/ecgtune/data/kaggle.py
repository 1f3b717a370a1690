"""Ready-made beat files in the Kaggle "ECG Heartbeat Categorization" formats.

* CSV (``mitbih_train.csv``, ``mitbih_test.csv``, ``ptbdb_normal.csv``,
  ``ptbdb_abnormal.csv``): no header, one beat per row, ``data.beat_length`` signal values then
  the label (a float such as ``0.0``) in the last column.
* Parquet (``heart_big_train.parq``, ``heart_train.parq``, ...): the signal columns and a
  ``target`` column (without one, the last column is the label).

Labels must be whole numbers 0..K-1, K at most ``MAX_CLASSES`` (256): a label such as 1e9 is a
broken row, reported as one, not a class count to size arrays by. K is
``len(data.class_names)`` when given, else the largest label + 1; default class names are N,
S, V, F, Q for K = 5, normal/abnormal for K = 2 (the PTB task: 0 = normal, 1 = abnormal) and
"0".."K-1" otherwise. Every problem is a :class:`DataError` naming the file and its 1-based
row (the CSV line) and column.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from ecgtune.config import AAMI_CLASSES, MAX_CLASSES, DataConfig
from ecgtune.data.physionet import sha256_of
from ecgtune.errors import DataError

LABEL_COLUMN = "target"


@dataclass(frozen=True)
class BeatFile:
    """The beats of one file: float32 signals and integer labels."""

    path: Path
    signals: NDArray[np.float32]
    labels: NDArray[np.int64]


def file_digests(paths: list[Path], key: str) -> list[str]:
    """SHA-256 of each file (the cache key); a missing file is named with its config key."""
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: file not found (listed in {key})")
    return [sha256_of(path) for path in paths]


def read_beat_file(path: Path, config: DataConfig) -> BeatFile:
    """One CSV or parquet file of beats, checked cell by cell."""
    if config.source == "csv":
        frame = _read_csv(path, expected_columns=config.beat_length + 1)
    else:
        frame = _label_last(_read_parquet(path), path, config.beat_length)
    if frame.shape[0] == 0:
        raise DataError(f"{path}: the file holds no beats")
    values = numeric_matrix(frame, path)
    return BeatFile(path, values[:, :-1].astype(np.float32), whole_labels(values[:, -1], path))


def _label_last(frame: pd.DataFrame, path: Path, beat_length: int) -> pd.DataFrame:
    """The parquet columns reordered: ``beat_length`` signal columns, then the label."""
    label = LABEL_COLUMN if LABEL_COLUMN in frame.columns else frame.columns[-1]
    signal_columns = [column for column in frame.columns if column != label]
    if len(signal_columns) != beat_length:
        raise DataError(
            f"{path}: {len(signal_columns)} signal columns besides the label {label!r}, "
            f"expected data.beat_length = {beat_length}"
        )
    return frame[[*signal_columns, label]]


def _read_csv(path: Path, expected_columns: int) -> pd.DataFrame:
    """A headerless CSV whose every row has ``expected_columns`` fields."""
    lines = path.read_bytes().splitlines()
    if not lines:
        raise DataError(f"{path}: the file holds no beats")
    fields = np.fromiter((line.count(b",") + 1 for line in lines), dtype=np.int64, count=len(lines))
    wrong = np.flatnonzero(fields != expected_columns)
    if wrong.size:
        row = int(wrong[0])
        raise DataError(
            f"{path}: row {row + 1} has {fields[row]} columns, expected {expected_columns} "
            f"(data.beat_length = {expected_columns - 1} signal values, then the label)"
        )
    return pd.read_csv(io.BytesIO(b"\n".join(lines)), header=None)


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable parquet file ({exc})") from None


def numeric_matrix(frame: pd.DataFrame, path: Path) -> NDArray[np.float64]:
    """The frame as floats; the first non-numeric or missing cell is named by row and column."""
    for column_number, column in enumerate(frame.columns, start=1):
        values = frame[column]
        if not pd.api.types.is_numeric_dtype(values):
            numbers = pd.to_numeric(values, errors="coerce")
            bad = np.flatnonzero(numbers.isna().to_numpy() & values.notna().to_numpy())
            if bad.size:
                raise DataError(
                    f"{path}: row {bad[0] + 1}, column {column_number}: "
                    f"{values.iloc[bad[0]]!r} is not a number (CSV files have no header row)"
                )
    matrix: NDArray[np.float64] = frame.apply(pd.to_numeric).to_numpy(dtype=np.float64)
    missing = np.argwhere(~np.isfinite(matrix))
    if missing.size:
        row, column = missing[0]
        raise DataError(
            f"{path}: row {row + 1}, column {column + 1}: missing or non-finite value "
            f"({matrix[row, column]})"
        )
    return matrix


def whole_labels(values: NDArray[np.float64], path: Path) -> NDArray[np.int64]:
    """Labels as class indices; a negative, fractional or too large label is named by row,
    with the classes the file's other rows hold."""
    broken = (values < 0) | (values >= MAX_CLASSES) | (values != np.round(values))
    bad = np.flatnonzero(broken)
    if bad.size:
        raise DataError(
            f"{path}: row {bad[0] + 1}: label {values[bad[0]]:g} is not a class index; "
            f"{describe_classes(values[~broken].astype(np.int64))}"
        )
    return values.astype(np.int64)


def describe_classes(labels: NDArray[np.int64]) -> str:
    """``the file's other labels are 0-4`` (or ``0, 2, 7`` when not consecutive)."""
    classes = np.unique(labels).tolist()
    if not classes:
        return "the file has no other label"
    if classes == list(range(classes[0], classes[-1] + 1)) and len(classes) > 2:
        return f"the file's other labels are {classes[0]}-{classes[-1]}"
    return f"the file's other labels are {', '.join(str(label) for label in classes)}"


def class_names_for(files: list[BeatFile], config: DataConfig) -> tuple[str, ...]:
    """Names of labels 0..K-1 (rules in the module docstring), every label checked below K."""
    largest = max(int(file.labels.max(initial=-1)) for file in files)
    if config.class_names is not None:
        names = tuple(config.class_names)
        for file in files:
            over = np.flatnonzero(file.labels >= len(names))
            if over.size:
                raise DataError(
                    f"{file.path}: row {over[0] + 1}: label {file.labels[over[0]]} is not one of "
                    f"0..{len(names) - 1} (data.class_names has {len(names)} names)"
                )
        return names
    if largest < 1:
        raise DataError(
            f"{', '.join(str(file.path) for file in files)}: every label is {largest}; "
            f"a classifier needs at least two classes"
        )
    return default_class_names(largest + 1)


def default_class_names(n_classes: int) -> tuple[str, ...]:
    if n_classes == len(AAMI_CLASSES):
        return AAMI_CLASSES
    if n_classes == 2:
        return ("normal", "abnormal")
    return tuple(str(label) for label in range(n_classes))
