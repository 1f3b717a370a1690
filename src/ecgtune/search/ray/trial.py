"""A trial on a Ray worker: its config (the base config with its sample in place, as many
torch threads as its CPUs), the function Ray runs (:func:`run_trial`) and what it reports to
the driver: every epoch's figures, with the model of its best epoch so far as a Ray checkpoint.
The report keys below are what the driver and the searcher read back."""

from __future__ import annotations

import math
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import tune
from torch import nn

from ecgtune.config import Config, SearchConfig
from ecgtune.data.dataset import Dataset
from ecgtune.metrics import improves
from ecgtune.models.budget import check_model_budget
from ecgtune.report import save_checkpoint
from ecgtune.search.folds import fit
from ecgtune.search.space import SearchSpace
from ecgtune.training import EpochRecord, TrainingObserver

NUMBER, SAMPLE = "number", "sample"
"""A Ray trial's config: its trial number (hyperopt's) and its hyperopt sample."""
EPOCH, OBJECTIVE, BEST = "epoch", "objective", "best_objective"
"""Report keys: the epoch (ASHA's time), its validation objective (ASHA's metric) and the
trial's best so far (what hyperopt is told when the trial ends, pruned or not)."""
FAILURE, FINAL, NODE = "failure", "final", "node"
MODEL_FILE = "model.pt"


def trial_threads(search: SearchConfig) -> int:
    """A trial's torch threads: the whole CPUs it holds (at least one)."""
    return max(1, math.floor(search.cpus_per_trial))


def ray_trial_config(space: SearchSpace, sample: dict[str, Any], search: SearchConfig) -> Config:
    """The trial's config: the base config with its sample in place, torch threads as many
    as its CPUs, and the CPU as its device when it holds no GPU."""
    config = space.trial_config(sample)
    training: dict[str, Any] = {"num_threads": trial_threads(search)}
    if not search.gpus_per_trial and config.training.device == "auto":
        training["device"] = "cpu"
    return config.model_copy(update={"training": config.training.model_copy(update=training)})


def without_test_split(dataset: Dataset) -> Dataset:
    """What the workers get: the train and validation splits, the test split emptied, so that
    no trial can read it (and the object store holds less)."""
    return replace(dataset, test=dataset.test.take(np.arange(0, dtype=np.intp)))


class EpochReports(TrainingObserver):
    """A trial's side on the worker: every epoch's figures to Ray, with the model of every
    epoch that is the trial's best so far (by the rule of early stopping) as a checkpoint.
    With ``search.folds`` the epochs' models are fold models, not the trial's: only the
    final report carries a model."""

    def __init__(self, dataset: Dataset, checkpoint_epochs: bool) -> None:
        self.checkpoint_epochs = checkpoint_epochs
        self.class_names = dataset.class_names
        counts = dataset.train.class_counts(dataset.n_classes).tolist()
        self.train_counts = dict(zip(dataset.class_names, counts, strict=True))
        self.node = ray.get_runtime_context().get_node_id()
        self.config: Config | None = None
        self.model: nn.Module | None = None
        self.n_train = 0
        self.best: EpochRecord | None = None

    def on_train_start(self, config: Config, model: nn.Module, n_train: int) -> None:
        self.config, self.model, self.n_train = config, model, n_train

    def on_resampled(self, method: str, before: dict[str, int], after: dict[str, int]) -> None:
        self.train_counts = after

    def on_epoch_end(self, record: EpochRecord) -> None:
        assert self.config is not None and self.model is not None
        objective = self.config.training.objective
        value = record.valid_metrics[objective]
        improved = self.best is None or improves(
            value, self.best.valid_metrics[objective], objective, self.config.training.min_delta
        )
        if improved:
            self.best = record
        assert self.best is not None
        metrics = {
            EPOCH: record.epoch,
            OBJECTIVE: value,
            BEST: self.best.valid_metrics[objective],
            "best_epoch": self.best.epoch,
            "train_loss": record.train_loss,
            "adversary_loss": record.adversary_loss,
            "lr": record.lr,
            "seconds": record.seconds,
            "beats_per_second": record.beats_per_second,
            "n_train": self.n_train,
            "valid": record.valid_metrics,
            "train_counts": self.train_counts,
            NODE: self.node,
        }
        if improved and self.checkpoint_epochs:
            report_with_model(metrics, self.model, self.config, self.class_names)
        else:
            tune.report(metrics)


def report_with_model(
    metrics: dict[str, Any], model: nn.Module, config: Config, class_names: tuple[str, ...]
) -> None:
    """``tune.report`` with the model as a checkpoint (Ray copies it to its storage)."""
    with tempfile.TemporaryDirectory(prefix="ecgtune-trial-") as folder:
        save_checkpoint(Path(folder) / MODEL_FILE, model, config, class_names)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def run_trial(trial: dict[str, Any], space: SearchSpace, dataset: Dataset) -> None:
    """Ray's trainable: one trial from its sample to its last report. The trial's own failure
    is its result (reported, not raised: Ray would retry it)."""
    search = space.base.search
    reports = EpochReports(dataset, checkpoint_epochs=not search.folds)
    try:
        config = ray_trial_config(space, trial[SAMPLE], search)
        check_model_budget(config, dataset.n_classes)
        result = fit(config, dataset, reports)
    except Exception as exc:  # any failure of one trial is its result; the search goes on
        tune.report({FAILURE: f"{type(exc).__name__}: {exc}"})
        return
    final = {
        FINAL: 1,
        BEST: result.best_valid[config.training.objective],
        "best_epoch": result.best_epoch,
        "stop_reason": result.stop_reason,
        "valid": result.best_valid,
        "train_counts": result.train_counts,
    }
    if search.folds:
        report_with_model(final, result.model, config, dataset.class_names)
    else:
        tune.report(final)


class TrainsFromItsStart:
    """Mixed into Ray's trainable of :func:`run_trial` (Ray's ``__mixins__``): a trial that Ray
    runs again (its worker died, or a resumed search) trains from its first epoch without
    asking for its last checkpoint, which :func:`run_trial` never reads. Ray's own restore
    would first demand that checkpoint, and Ray may have deleted it (``num_to_keep = 1``)
    before its saved experiment caught up: with the driver killed in between, the trial
    failed three times on a folder it does not need."""

    def restore(self, checkpoint_path: Any) -> None:
        """Nothing to restore: the trial starts over, its epochs counted from one."""


run_trial.__mixins__ = (TrainsFromItsStart,)  # type: ignore[attr-defined]  # read by Ray
