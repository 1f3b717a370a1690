"""Beats and models small enough to train in milliseconds: the fast, exact tests of the trainer
and of the folds (tests/test_training_core.py, tests/test_folds_core.py), which
``tools/mutation.py`` reruns once per mutant.

A beat built here is ``BEAT_LENGTH`` samples of its class index plus seeded noise (so a model
can learn it), and carries its own number in its first RR column (the tiny model reads no RR
feature), so a test can follow every beat through permutations, folds and batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ecgtune.config import Config, validate_config
from ecgtune.data.beats import RR_COLUMNS
from ecgtune.data.dataset import BeatSet, Dataset
from ecgtune.models import build_model
from ecgtune.training import EpochRecord, StopTraining, TrainingObserver, TrainResult

BEAT_LENGTH = 16
CLASSES = ("N", "S", "V")
TINY_MODEL: dict[str, Any] = {
    "conv_layers": 1,
    "channels": [2],
    "kernel_sizes": [3],
    "dilations": [1],
    "pooling": ["none"],
    "se_blocks": False,
    "residual": False,
    "batch_norm": False,
    "global_pool": "avg",
    "fc_sizes": [],
    "dropout": 0.0,
}
"""One convolution of two channels, averaged, one linear layer: 17 parameters."""


def tiny_config(**sections: Any) -> Config:
    """A config of the tiny model on the CPU, one thread, no schedule; ``sections`` override
    whole keys of their section (``training={"epochs": 2}``)."""
    raw: dict[str, Any] = {
        "seed": 3,
        "data": {"beat_length": BEAT_LENGTH, "split": "inter"},
        "model": TINY_MODEL,
        "training": {
            "epochs": 3,
            "batch_size": 4,
            "num_threads": 1,
            "device": "cpu",
            "scheduler": "none",
        },
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    return validate_config(raw, source="test config")


def beat_set(records: Sequence[str], labels: Sequence[int], first: int = 0) -> BeatSet:
    """One beat per entry of ``records`` and ``labels``, numbered from ``first`` (its first RR
    column)."""
    numbers = np.arange(first, first + len(labels))
    noise = np.random.default_rng(first).normal(0.0, 0.3, (len(labels), BEAT_LENGTH))
    rr = np.zeros((len(labels), len(RR_COLUMNS)), dtype=np.float32)
    rr[:, 0] = numbers
    return BeatSet(
        signals=(np.asarray(labels)[:, None] + noise).astype(np.float32),
        labels=np.asarray(labels, dtype=np.int64),
        rr=rr,
        records=np.asarray(records, dtype=np.str_),
    )


def numbers_of(beats: BeatSet) -> list[int]:
    """The numbers :func:`beat_set` gave the beats, in their order."""
    return [int(number) for number in beats.rr[:, 0]]


def tiny_dataset(train: BeatSet, valid: BeatSet, test: BeatSet | None = None) -> Dataset:
    test = test if test is not None else beat_set(["t"] * 3, [0, 1, 2], first=900)
    return Dataset(train, valid, test, CLASSES, info={"source": "memory"})


def constant_model(config: Config, label: int) -> nn.Module:
    """The tiny model with its output layer set to choose ``label`` for every beat."""
    model = build_model(config, len(CLASSES))
    output = [module for module in model.modules() if isinstance(module, nn.Linear)][-1]
    with torch.no_grad():
        output.weight.zero_()
        output.bias.copy_(torch.eye(len(CLASSES))[label] * 5)
    return model


class Heard(TrainingObserver):
    """Everything an observer hears, in order, as tuples."""

    def __init__(self, stop_after: tuple[int, ...] = ()) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.models: list[nn.Module] = []
        self.records: list[EpochRecord] = []
        self.results: list[TrainResult] = []
        self.stop_after = stop_after

    def on_train_start(self, config: Config, model: nn.Module, n_train: int) -> None:
        self.calls.append(("start", config.training.epochs, n_train))
        self.models.append(model)

    def on_resampled(self, method: str, before: dict[str, int], after: dict[str, int]) -> None:
        self.calls.append(("resampled", method, before, after))

    def on_epoch_start(self, epoch: int, n_batches: int) -> None:
        self.calls.append(("epoch", epoch, n_batches))

    def on_batch_end(self, beats: int, loss: float) -> None:
        self.calls.append(("batch", beats, loss))

    def on_epoch_end(self, record: EpochRecord) -> None:
        self.calls.append(("end", record.epoch))
        self.records.append(record)
        if record.epoch in self.stop_after:
            raise StopTraining(f"stopped after {record.epoch}")

    def on_train_end(self, result: TrainResult) -> None:
        self.calls.append(("train end", result.best_epoch))
        self.results.append(result)
