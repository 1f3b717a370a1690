"""The dataset cache: a second run loads it, a changed input rebuilds, a bad record is never
hidden by it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ecgtune.config import Config
from ecgtune.data import Dataset, load_dataset
from ecgtune.errors import DataError

SPLITS = ("train", "valid", "test")


def assert_same(a: Dataset, b: Dataset) -> None:
    assert a.class_names == b.class_names
    for split in SPLITS:
        for field in ("signals", "labels", "rr", "records"):
            np.testing.assert_array_equal(
                getattr(getattr(a, split), field), getattr(getattr(b, split), field)
            )


def cache_files(config: Config) -> list[str]:
    return sorted(path.name for path in config.data.cache_dir.iterdir())


def test_a_second_run_loads_the_cache(small_config: Callable[..., Config]) -> None:
    config = small_config(data={"records": ["100", "119"], "max_beats_per_record": 200})
    built = load_dataset(config)
    cache_file = Path(built.info["cache_file"])
    written = cache_file.stat()
    loaded = load_dataset(config)
    assert not built.info["from_cache"] and loaded.info["from_cache"]
    assert loaded.info["build_seconds"] == built.info["build_seconds"]
    unchanged = cache_file.stat()  # read, not rebuilt and written again
    assert (unchanged.st_ino, unchanged.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    assert_same(built, loaded)
    assert loaded.train.signals.dtype == np.float32 and loaded.train.labels.dtype == np.int64
    files = cache_files(config)
    assert len(files) == 1 and files[0].endswith(".npz")  # no temporary file left


def test_a_changed_config_rebuilds_but_train_time_resampling_does_not(
    small_config: Callable[..., Config],
) -> None:
    base = {"records": ["100", "119"], "max_beats_per_record": 200}
    first = load_dataset(small_config(data=base))
    span = load_dataset(small_config(data={**base, "beat_span": 1.0}))
    seed = load_dataset(small_config(data=base, seed=11))
    resample = load_dataset(small_config(data={**base, "resample": {"method": "random_over"}}))
    assert not span.info["from_cache"] and not seed.info["from_cache"]
    assert resample.info["from_cache"]
    assert not np.array_equal(span.train.signals, first.train.signals)
    assert len(cache_files(small_config(data=base))) == 3


def test_a_corrupt_record_is_reported_even_when_cached(
    mitdb_dir: Path, tmp_path: Path, small_config: Callable[..., Config]
) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for suffix in (".hea", ".dat", ".atr"):
        shutil.copyfile(mitdb_dir / f"100{suffix}", raw / f"100{suffix}")
    config = small_config(data={"raw_dir": str(raw), "records": ["100"]})
    load_dataset(config)
    data = bytearray((raw / "100.atr").read_bytes())
    data[50] ^= 0x01
    (raw / "100.atr").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"100.atr: corrupt file, SHA-256"):
        load_dataset(config)


def test_a_changed_kaggle_file_rebuilds(
    tmp_path: Path, small_config: Callable[..., Config]
) -> None:
    rows = np.column_stack([np.random.default_rng(0).random((60, 187)), np.arange(60) % 2])
    path = tmp_path / "ptb.csv"
    np.savetxt(path, rows, delimiter=",")
    config = small_config(data={"source": "csv", "records": None, "train_files": [str(path)]})
    first = load_dataset(config)
    assert load_dataset(config).info["from_cache"]
    rows[:, 0] = 0.5
    np.savetxt(path, rows, delimiter=",")
    changed = load_dataset(config)
    assert not changed.info["from_cache"]
    assert (changed.train.signals[:, 0] == 0.5).all() and not (
        first.train.signals[:, 0] == 0.5
    ).all()


def test_an_unreadable_cache_file_is_rebuilt(small_config: Callable[..., Config]) -> None:
    config = small_config(data={"records": ["100"], "max_beats_per_record": 100})
    built = load_dataset(config)
    cache_file = Path(built.info["cache_file"])
    cache_file.write_bytes(cache_file.read_bytes()[:1000])
    rebuilt = load_dataset(config)
    assert not rebuilt.info["from_cache"]
    assert_same(built, rebuilt)
    assert load_dataset(config).info["from_cache"]
