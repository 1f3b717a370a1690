"""Kaggle beat files with labels far outside any class count: a row-level DataError naming the
file, the row and the value, never arrays sized by the label."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from ecgtune.config import MAX_CLASSES, Config
from ecgtune.data import load_dataset
from ecgtune.data.kaggle import whole_labels
from ecgtune.errors import DataError

from .conftest import REPO_ROOT


@pytest.fixture
def real_signals(small_config: Callable[..., Config]) -> NDArray[np.float32]:
    """30 real beats of record 100 (187 samples each)."""
    dataset = load_dataset(small_config(data={"records": ["100"], "max_beats_per_record": 50}))
    signals = dataset.train.signals[:30]
    assert signals.shape == (30, 187)
    return signals


def write_csv(path: Path, signals: NDArray[np.float32], labels: list[str]) -> Path:
    """The Kaggle CSV layout: no header, the signal values, then the label as written."""
    rows = [
        ",".join(f"{value:.6f}" for value in row) + f",{label}"
        for row, label in zip(signals, labels, strict=True)
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("label", "shown"),
    [("1e9", "1e+09"), ("1e30", "1e+30"), (str(MAX_CLASSES), str(MAX_CLASSES)), ("-2", "-2")],
)
def test_a_label_far_outside_the_classes_is_named_by_row(
    tmp_path: Path,
    small_config: Callable[..., Config],
    real_signals: NDArray[np.float32],
    label: str,
    shown: str,
) -> None:
    labels = [str(i % 5) for i in range(len(real_signals))]
    labels[6] = label
    path = write_csv(tmp_path / "mitbih_train.csv", real_signals, labels)
    config = small_config(data={"source": "csv", "records": None, "train_files": [str(path)]})
    with pytest.raises(DataError) as caught:
        load_dataset(config)
    assert str(caught.value) == (
        f"{path}: row 7: label {shown} is not a class index; the file's other labels are 0-4"
    )


def test_labels_up_to_the_class_limit_are_class_indices(tmp_path: Path) -> None:
    labels = whole_labels(np.array([0.0, 4.0, MAX_CLASSES - 1.0]), tmp_path / "train.csv")
    assert labels.tolist() == [0, 4, MAX_CLASSES - 1] and labels.dtype == np.int64


@pytest.mark.slow
def test_a_huge_label_exits_2_from_the_real_entry_point(
    tmp_path: Path, real_signals: NDArray[np.float32]
) -> None:
    labels = ["0", "1"] * (len(real_signals) // 2)
    labels[3] = "1000000000.0"
    path = write_csv(tmp_path / "mitbih_train.csv", real_signals, labels)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[data]\nsource = "csv"\ntrain_files = ["{path}"]\ncache_dir = "{tmp_path / "cache"}"\n',
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "hypertune.py", "data", "--config", str(config)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [  # the only line: no progress bar left above it
        f"error: {path}: row 4: label 1e+09 is not a class index; the file's other labels are "
        f"0, 1"
    ]
