"""Class rebalancing of the train split with imbalanced-learn (validation and test never).

Random under- and over-sampling only choose rows, so they run on a column of row indices and
the chosen rows are taken from the :class:`BeatSet` at once: signals, RR features, labels and
records stay aligned without copying beats through imbalanced-learn. SMOTE makes new beats by
interpolation, so it runs on each beat's signal and RR features side by side (one row; the
leads of a several-lead beat laid end to end, and the new rows given the beats' shape back),
which keeps a synthetic beat's RR features those of the same interpolation; synthetic beats
come from record ``"smote"``. Every sampler is seeded with the experiment's seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from imblearn.base import BaseSampler
from imblearn.over_sampling import SMOTE, RandomOverSampler
from imblearn.under_sampling import RandomUnderSampler
from numpy.typing import NDArray

from ecgtune.config import ResampleConfig
from ecgtune.data.dataset import BeatSet
from ecgtune.errors import ConfigError

SMOTE_NEIGHBOURS = 5
SYNTHETIC_RECORD = "smote"


def resample_train_split(
    beats: BeatSet, class_names: Sequence[str], config: ResampleConfig, seed: int
) -> BeatSet:
    """The train split after ``data.resample``: dropped classes removed, then rebalanced."""
    beats = drop_classes(beats, class_names, config.drop_classes)
    if config.method == "none":
        return beats
    if config.method == "smote":
        return smote(beats, seed)
    rows = np.arange(len(beats))
    if config.method == "random_under":
        rows = _sample_rows(RandomUnderSampler(random_state=seed), rows, beats.labels)
    elif config.method == "random_over":
        rows = _sample_rows(RandomOverSampler(random_state=seed), rows, beats.labels)
    else:
        rows = _under_then_over(rows, beats.labels, config.target_per_class, seed)
    return beats.take(rows)


def drop_classes(beats: BeatSet, class_names: Sequence[str], names: Sequence[str]) -> BeatSet:
    """Remove the beats of the named classes; unknown names are a :class:`ConfigError`."""
    if not names:
        return beats
    unknown = [name for name in names if name not in class_names]
    if unknown:
        raise ConfigError(
            f"data.resample.drop_classes = {list(names)}: unknown class {unknown[0]!r}; "
            f"the classes are {', '.join(class_names)}"
        )
    dropped = [class_names.index(name) for name in names]
    kept = beats.take(np.flatnonzero(~np.isin(beats.labels, dropped)))
    if len(np.unique(kept.labels)) < 2:
        raise ConfigError(
            f"data.resample.drop_classes = {list(names)} leaves fewer than 2 classes in the "
            f"train split"
        )
    return kept


def _sample_rows(
    sampler: BaseSampler, rows: NDArray[np.intp], labels: NDArray[np.int64]
) -> NDArray[np.intp]:
    """The rows a random sampler keeps (with repeats when over-sampling)."""
    chosen, _ = sampler.fit_resample(rows[:, None], labels[rows])
    return np.asarray(chosen[:, 0], dtype=np.intp)


def _under_then_over(
    rows: NDArray[np.intp], labels: NDArray[np.int64], target: int, seed: int
) -> NDArray[np.intp]:
    """Classes above ``target`` beats are cut to it, classes below are raised to it."""
    counts = np.bincount(labels)
    above = {int(c): target for c in np.flatnonzero(counts > target)}
    below = {int(c): target for c in np.flatnonzero((counts > 0) & (counts < target))}
    if above:
        rows = _sample_rows(
            RandomUnderSampler(sampling_strategy=above, random_state=seed), rows, labels
        )
    if below:
        rows = _sample_rows(
            RandomOverSampler(sampling_strategy=below, random_state=seed), rows, labels
        )
    return rows


def smote(beats: BeatSet, seed: int) -> BeatSet:
    """SMOTE every class up to the majority's count, on signal and RR features jointly.

    SMOTE needs ``k_neighbors + 1`` beats in a class: ``k`` is lowered to the smallest class
    to grow minus one (at most 5), and a class of a single beat is first doubled (SMOTE
    between a beat and its copy is that beat: plain over-sampling for that class).
    """
    counts = np.bincount(beats.labels)
    singletons = {int(c): 2 for c in np.flatnonzero(counts == 1)}
    if singletons:
        rows = np.arange(len(beats))
        sampler = RandomOverSampler(sampling_strategy=singletons, random_state=seed)
        beats = beats.take(_sample_rows(sampler, rows, beats.labels))
        counts = np.bincount(beats.labels)
    to_grow = counts[(counts > 0) & (counts < counts.max())]
    if to_grow.size == 0:
        return beats
    neighbours = min(SMOTE_NEIGHBOURS, int(to_grow.min()) - 1)
    flat = beats.signals.reshape(len(beats), -1)
    features = np.hstack([flat, beats.rr])
    sampler = SMOTE(k_neighbors=neighbours, random_state=seed)
    resampled, labels = sampler.fit_resample(features, beats.labels)
    new = resampled[len(beats) :]
    length = flat.shape[1]
    signals = new[:, :length].astype(np.float32).reshape(-1, *beats.signals.shape[1:])
    return BeatSet(
        signals=np.concatenate([beats.signals, signals]),
        labels=np.asarray(labels, dtype=np.int64),
        rr=np.concatenate([beats.rr, new[:, length:].astype(np.float32)]),
        records=np.concatenate([beats.records, np.full(len(new), SYNTHETIC_RECORD)]),
    )
