"""Three disjoint splits (train, validation, test), deterministic for a seed.

* ``intra``: beats are split at random, stratified by class (scikit-learn
  ``train_test_split``): the test split takes ``test_fraction`` of all beats, validation
  ``valid_fraction`` of all beats. A class with a single beat cannot be on both sides of a cut,
  so its beat stays in train; when the requested sizes are too small to hold every class, the
  cut falls back to an unstratified seeded shuffle.
* ``inter`` (de Chazal et al. 2004): DS2 records are the test split; validation is carved out
  of DS1 by whole records (see :func:`choose_valid_records`); paced records 102, 104, 107 and
  217 are in neither set and are excluded. No record has beats in two splits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from sklearn.model_selection import train_test_split

from ecgtune.errors import ConfigError

DS1 = (
    "101",
    "106",
    "108",
    "109",
    "112",
    "114",
    "115",
    "116",
    "118",
    "119",
    "122",
    "124",
    "201",
    "203",
    "205",
    "207",
    "208",
    "209",
    "215",
    "220",
    "223",
    "230",
)
DS2 = (
    "100",
    "103",
    "105",
    "111",
    "113",
    "117",
    "121",
    "123",
    "200",
    "202",
    "210",
    "212",
    "213",
    "214",
    "219",
    "221",
    "222",
    "228",
    "231",
    "232",
    "233",
    "234",
)
CANDIDATE_ORDERS = 2000


@dataclass(frozen=True)
class SplitIndex:
    """Row indices of each split into the pooled beats."""

    train: NDArray[np.intp]
    valid: NDArray[np.intp]
    test: NDArray[np.intp]


def carve(
    index: NDArray[np.intp], labels: NDArray[np.int64], fraction: float, seed: int
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Split ``index`` into (kept, carved) with ``fraction`` carved, stratified by ``labels``
    where the class sizes allow (rules in the module docstring). Both parts are sorted."""
    counts = np.bincount(labels[index])
    single = counts[labels[index]] < 2
    pool = index[~single]
    try:
        try:
            kept, carved = train_test_split(
                pool, test_size=fraction, random_state=seed, stratify=labels[pool]
            )
        except ValueError:
            kept, carved = train_test_split(pool, test_size=fraction, random_state=seed)
    except ValueError as exc:
        raise ConfigError(
            f"cannot carve {fraction:g} of {index.size} beats ({exc}); use more beats "
            f"(data.records, data.max_beats_per_record) or other data.*_fraction values"
        ) from None
    return np.sort(np.concatenate([kept, index[single]])), np.sort(carved)


def intra_split(
    labels: NDArray[np.int64], test_fraction: float, valid_fraction: float, seed: int
) -> SplitIndex:
    """Stratified random beats: test is ``test_fraction`` and validation ``valid_fraction`` of
    all beats."""
    rest, test = carve(np.arange(labels.size), labels, test_fraction, seed)
    train, valid = carve(rest, labels, valid_fraction / (1 - test_fraction), seed)
    return SplitIndex(train, valid, test)


def carve_given_test(labels: NDArray[np.int64], valid_fraction: float, seed: int) -> SplitIndex:
    """Train files with a separate test set: validation is ``valid_fraction`` of the train
    beats; ``test`` is left empty for the caller to fill."""
    train, valid = carve(np.arange(labels.size), labels, valid_fraction, seed)
    return SplitIndex(train, valid, np.zeros(0, dtype=np.intp))


def inter_split(
    records: NDArray[np.str_], labels: NDArray[np.int64], valid_fraction: float, seed: int
) -> SplitIndex:
    """De Chazal DS1 -> DS2 by whole records; beats of other records are in no split."""
    present = set(records.tolist())
    ds1 = [name for name in DS1 if name in present]
    ds2 = [name for name in DS2 if name in present]
    if len(ds1) < 2 or not ds2:
        raise ConfigError(
            f"data.split = 'inter' needs at least two DS1 records and one DS2 record in "
            f"data.records (got DS1 {ds1 or 'none'}, DS2 {ds2 or 'none'})"
        )
    n_classes = int(labels.max()) + 1
    per_record = np.stack(
        [np.bincount(labels[records == name], minlength=n_classes) for name in ds1]
    )
    chosen = choose_valid_records(per_record, valid_fraction, seed)
    valid_records = [ds1[i] for i in chosen]
    train_records = [name for name in ds1 if name not in valid_records]
    return SplitIndex(
        train=np.flatnonzero(np.isin(records, train_records)),
        valid=np.flatnonzero(np.isin(records, valid_records)),
        test=np.flatnonzero(np.isin(records, ds2)),
    )


def choose_valid_records(
    class_counts: NDArray[np.int64], valid_fraction: float, seed: int
) -> NDArray[np.intp]:
    """Rows (records) of ``class_counts`` that form the validation split.

    Candidates are the prefixes of :data:`CANDIDATE_ORDERS` seeded random orders of the
    records (a prefix never takes every record, so train keeps one). The chosen candidate is the
    best by, in order: fewest classes of DS1 missing from train, then fewest missing from
    validation, then the smallest cost ``sum over classes |log((v_c + 1) / (t_c + 1))| +
    K |log(v / t)|``, where ``v_c`` are the candidate's beats of class c, ``t_c =
    valid_fraction x`` the DS1 beats of class c, ``v`` and ``t`` their totals and K the number
    of classes in DS1: each class as close as records allow to ``valid_fraction`` of its beats,
    the size weighing as much as all classes together. Ties go to the first candidate.
    """
    n_records = class_counts.shape[0]
    orders = np.argsort(np.random.default_rng(seed).random((CANDIDATE_ORDERS, n_records)))
    valid = np.cumsum(class_counts[orders], axis=1)[:, :-1]
    train = class_counts.sum(axis=0) - valid
    present = class_counts.sum(axis=0) > 0
    missing_train = ((train == 0) & present).sum(axis=2)
    missing_valid = ((valid == 0) & present).sum(axis=2)
    target = valid_fraction * class_counts.sum(axis=0)
    class_gap = np.abs(np.log((valid + 1) / (target + 1))) * present
    size_gap = np.abs(np.log(valid.sum(axis=2) / target.sum()))
    cost = class_gap.sum(axis=2) + present.sum() * size_gap
    rank = np.lexsort((cost.ravel(), missing_valid.ravel(), missing_train.ravel()))
    order, length = np.unravel_index(rank[0], cost.shape)
    return np.sort(orders[order, : length + 1])
