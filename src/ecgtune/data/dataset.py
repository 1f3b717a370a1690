"""The in-memory dataset every later stage works on: three disjoint splits of beats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class BeatSet:
    """Beats of one split, row-aligned arrays.

    ``signals`` are float32 (n, beat_length) for one lead and (n, channels, beat_length) for
    several (``DataConfig.input_channels``), normalised as ``data.normalise`` says; ``labels``
    int64 class indices; ``rr`` float32 (n, len(RR_COLUMNS)): the RR features of
    :data:`ecgtune.data.beats.RR_COLUMNS` (zeros where the source has none, e.g. Kaggle files);
    ``records`` the source record of each beat (for inter-patient splits; the file name for
    Kaggle files).
    """

    signals: NDArray[np.float32]
    labels: NDArray[np.int64]
    rr: NDArray[np.float32]
    records: NDArray[np.str_]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, index: NDArray[np.intp]) -> BeatSet:
        """The beats at ``index``, every array kept aligned."""
        return BeatSet(self.signals[index], self.labels[index], self.rr[index], self.records[index])

    def class_counts(self, n_classes: int) -> NDArray[np.int64]:
        return np.bincount(self.labels, minlength=n_classes).astype(np.int64)

    @staticmethod
    def concatenate(sets: list[BeatSet]) -> BeatSet:
        """The beats of several sets, in order, as one."""
        return BeatSet(
            np.concatenate([part.signals for part in sets]),
            np.concatenate([part.labels for part in sets]),
            np.concatenate([part.rr for part in sets]),
            np.concatenate([part.records for part in sets]),
        )


@dataclass(frozen=True)
class Dataset:
    """Train, validation and test splits (disjoint) and the names of the classes."""

    train: BeatSet
    valid: BeatSet
    test: BeatSet
    class_names: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def beat_length(self) -> int:
        return int(self.train.signals.shape[-1])
