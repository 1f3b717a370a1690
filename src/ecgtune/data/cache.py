"""The built dataset on disk (uncompressed npz, written atomically), keyed by its inputs.

The key hashes everything that changes the beats or the splits: the ``[data]`` keys except
where files live (``raw_dir``, ``base_url``, ``cache_dir``) and the train-time
``data.resample``, the seed, the resolved record list, the SHA-256 digests of the input files
(records or Kaggle files) and :data:`CACHE_VERSION`, bumped whenever the beat or split rules
change. A different input therefore gets a different file; an unreadable cache file is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from ecgtune.config import Config
from ecgtune.data.dataset import BeatSet, Dataset
from ecgtune.data.files import atomic_write

CACHE_VERSION = 4
"""2: ``data.window``, ``normalise``, ``baseline``, ``pre_r_seconds``, ``rr_local_beats``; RR
features of :data:`~ecgtune.data.beats.RR_COLUMNS` instead of two raw intervals. 3: the long
reference, previous / next and QRS width columns; ``data.rr_reference`` and its keys. 4: the
irregularity columns (``model.rr_irregularity``)."""
SPLITS = ("train", "valid", "test")
KEY_EXCLUDED = {"raw_dir", "base_url", "cache_dir", "resample", "train_files", "test_files"}


def cache_key(config: Config, records: list[str], digests: dict[str, str]) -> str:
    """SHA-256 of the inputs that decide the dataset's content."""
    data = config.data.model_dump(mode="json", exclude=KEY_EXCLUDED)
    data["records"] = records
    payload = {"version": CACHE_VERSION, "seed": config.seed, "data": data, "digests": digests}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cache_path(config: Config, key: str) -> Path:
    return config.data.cache_dir / f"{config.data.source}-{key[:24]}.npz"


def save_dataset(dataset: Dataset, path: Path) -> None:
    arrays: dict[str, np.ndarray] = {
        "class_names": np.array(dataset.class_names, dtype=np.str_),
        "info": np.array(json.dumps(dataset.info), dtype=np.str_),
    }
    for split in SPLITS:
        beats: BeatSet = getattr(dataset, split)
        arrays |= {
            f"{split}_signals": beats.signals,
            f"{split}_labels": beats.labels,
            f"{split}_rr": beats.rr,
            f"{split}_records": beats.records,
        }
    with atomic_write(path) as stream:
        np.savez(stream, allow_pickle=False, **arrays)


def load_dataset_file(path: Path) -> Dataset | None:
    """The cached dataset, or None when there is none or it cannot be read."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            splits = {
                split: BeatSet(
                    signals=arrays[f"{split}_signals"],
                    labels=arrays[f"{split}_labels"],
                    rr=arrays[f"{split}_rr"],
                    records=arrays[f"{split}_records"],
                )
                for split in SPLITS
            }
            class_names = tuple(str(name) for name in arrays["class_names"])
            info = json.loads(str(arrays["info"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    return Dataset(class_names=class_names, info=info, **splits)
