"""Record-grouped folds: a trial scored on every train and validation record of the inter split,
not on its few validation records alone (``search.folds``).

Why: the inter split's validation records are a handful of patients (5 of DS1's 22 at
``data.valid_fraction = 0.2``), and which trial does best on them says little about new
patients: over the 14 probes on the same 5 records, their validation macro-F1 and the DS2 S
sensitivity had a rank correlation of -0.06 (docs/inter-patient.md).

How: with ``search.folds = K`` the train and validation records are pooled and cut into K folds
of whole records by scikit-learn's ``StratifiedGroupKFold`` (no record on both sides of a fold;
the class mix as even as whole records allow; shuffled by ``seed``, so every trial sees the
same folds). A trial trains one model per fold on the other folds' records, choosing its epoch
on the fold's own records, and is scored by one confusion matrix over the out-of-fold
predictions: every train and validation beat predicted by the model that never saw its record.
With ``search.fold_seeds = "distinct"`` each fold model trains with its own seed
(:func:`fold_config`), so the members start from different weights. The trial keeps the
:class:`~ecgtune.models.ensemble.Ensemble` of its fold models (the mean of
their class probabilities): every train and validation record is learnt by K - 1 of them, and
no further training is needed. Its score is the fold models' (the ensemble's own figures on
these records would be optimistic: each record is in the training of most members).

Cost: a trial trains ``K - 1`` times the pooled beats where a trial without folds trains the
train split once: ``(K - 1) / (1 - data.valid_fraction)`` times the beats (2.5x for K = 3 at
0.2), in exchange for a score drawn from all 22 DS1 patients and an ensemble of K models.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
from numpy.typing import NDArray
from sklearn.model_selection import StratifiedGroupKFold
from torch import nn

from ecgtune.config import Config
from ecgtune.data.dataset import BeatSet, Dataset
from ecgtune.errors import ConfigError
from ecgtune.metrics import compute_metrics
from ecgtune.models.ensemble import Ensemble
from ecgtune.training import EpochRecord, TrainingObserver, TrainResult, predict, train_model


def record_folds(
    beats: BeatSet, n_folds: int, seed: int
) -> list[tuple[NDArray[np.intp], NDArray[np.intp]]]:
    """``(train, validation)`` beat indices of each fold; every record on one side only."""
    n_records = len(np.unique(beats.records))
    if n_records < n_folds:
        raise ConfigError(
            f"search.folds = {n_folds}: the train and validation splits hold {n_records} "
            f"records, fewer than the folds"
        )
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(beats)), beats.labels, groups=beats.records))


def fold_datasets(dataset: Dataset, n_folds: int, seed: int) -> list[Dataset]:
    """One dataset per fold: the train and validation beats pooled in record order (however
    the records were split between them: the beats of DS1 read alone give the same folds) and
    split by :func:`record_folds`; the test split is carried along untouched and never read."""
    pool = pooled_in_record_order(dataset)
    return [
        replace(dataset, train=pool.take(train), valid=pool.take(valid))
        for train, valid in record_folds(pool, n_folds, seed)
    ]


def pooled_in_record_order(dataset: Dataset) -> BeatSet:
    """The train and validation beats as one set, sorted by record (stable: each record's beats
    keep their order)."""
    pool = BeatSet.concatenate([dataset.train, dataset.valid])
    return pool.take(np.argsort(pool.records, kind="stable"))


def fit(config: Config, dataset: Dataset, observer: TrainingObserver) -> TrainResult:
    """The model a trial (or ``train``) keeps: :func:`train_model` on the split, or with
    ``search.folds`` the ensemble of the fold models (:func:`cross_validate`)."""
    if config.search.folds:
        return cross_validate(config, dataset, observer)
    return train_model(config, dataset, observer)


def fold_config(config: Config, fold: int) -> Config:
    """The config fold ``fold``'s model trains with: the run's, or with ``search.fold_seeds =
    "distinct"`` a seed drawn from the run's seed and the fold's number (NumPy's
    ``SeedSequence``: unrelated streams for every pair, where ``seed + fold`` would give fold 1
    of seed 42 the start of fold 0 of seed 43)."""
    if config.search.fold_seeds == "shared":
        return config
    seed = int(np.random.SeedSequence([config.seed, fold]).generate_state(1)[0])
    return config.model_copy(update={"seed": seed})


def predict_out_of_fold(
    models: list[nn.Module], folds: list[Dataset], config: Config
) -> tuple[BeatSet, NDArray[np.int64]]:
    """Every pooled beat, fold by fold, and its class as predicted by the model of its fold
    (the one that never saw its record)."""
    held_out = BeatSet.concatenate([fold.valid for fold in folds])
    predicted = [
        predict(model, fold.valid, config) for model, fold in zip(models, folds, strict=True)
    ]
    return held_out, np.concatenate(predicted)


def cross_validate(config: Config, dataset: Dataset, observer: TrainingObserver) -> TrainResult:
    """Train one model per fold (module docstring); the result holds their :class:`Ensemble`,
    the out-of-fold figures as its ``best_valid`` and the predictions as its ``out_of_fold``,
    and ``observer`` hears the runs as one whose epochs follow on."""
    started = time.perf_counter()
    runs = ConsecutiveRuns(observer, config.search.folds)
    folds = fold_datasets(dataset, config.search.folds, config.seed)
    results = [train_model(fold_config(config, i), fold, runs) for i, fold in enumerate(folds)]
    held_out, predicted = predict_out_of_fold([run.model for run in results], folds, config)
    pooled = compute_metrics(held_out.labels, predicted, dataset.class_names)
    pairs = zip(results, folds, strict=True)
    loss = sum(run.best_valid["loss"] * len(fold.valid) for run, fold in pairs) / len(held_out)
    best_epochs = [run.best_epoch for run in results]
    counts = held_out.class_counts(dataset.n_classes)
    result = TrainResult(
        model=Ensemble([run.model for run in results]),
        history=runs.history,
        best_epoch=round(float(np.mean(best_epochs))),
        best_valid={"loss": loss, **pooled.as_flat_dict()},
        stop_reason=(
            f"{len(folds)} record-grouped folds, an ensemble of their models (best epochs "
            f"{', '.join(map(str, best_epochs))})"
        ),
        seconds=time.perf_counter() - started,
        train_counts=dict(zip(dataset.class_names, counts.tolist(), strict=True)),
        class_names=dataset.class_names,
        out_of_fold=(held_out, predicted),
    )
    observer.on_train_end(result)
    return result


class ConsecutiveRuns(TrainingObserver):
    """Several training runs told to ``observer`` as one whose epochs follow on (the second
    run's first epoch is the first run's last plus one), so a trial's curves in the console,
    MLflow and TensorBoard run on through its folds; ``runs`` sizes the epoch count shown.
    Each run's end is kept back: the caller tells the whole trial's end once."""

    def __init__(self, observer: TrainingObserver, runs: int) -> None:
        self.observer = observer
        self.runs = runs
        self.offset = 0
        self.history: list[EpochRecord] = []

    def on_train_start(self, config: Config, model: nn.Module, n_train: int) -> None:
        epochs = self.runs * config.training.epochs
        shown = config.model_copy(
            update={"training": config.training.model_copy(update={"epochs": epochs})}
        )
        self.observer.on_train_start(shown, model, n_train)

    def on_resampled(self, method: str, before: dict[str, int], after: dict[str, int]) -> None:
        self.observer.on_resampled(method, before, after)

    def on_epoch_start(self, epoch: int, n_batches: int) -> None:
        self.observer.on_epoch_start(self.offset + epoch, n_batches)

    def on_batch_end(self, beats: int, loss: float) -> None:
        self.observer.on_batch_end(beats, loss)

    def on_epoch_end(self, record: EpochRecord) -> None:
        renumbered = replace(record, epoch=self.offset + record.epoch)
        self.history.append(renumbered)
        self.observer.on_epoch_end(renumbered)

    def on_train_end(self, result: TrainResult) -> None:
        self.offset += len(result.history)
