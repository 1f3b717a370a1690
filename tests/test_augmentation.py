"""``[training.augment]``: per-beat transforms of the train batches only, seeded by the run.

The statistics of each transform are checked on large synthetic batches whose expected result
is known (ones, zeros, a ramp); the train-only promise on the real trainer, by recording what
the model receives in training and in validation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from ecgtune.config import Config, validate_config
from ecgtune.data import load_dataset
from ecgtune.data.dataset import Dataset
from ecgtune.errors import ConfigError
from ecgtune.search.space import build_search_space
from ecgtune.training import (
    BatchAugment,
    TrainingObserver,
    make_augment,
    prepare_run,
    train_model,
    train_one_epoch,
    validate,
)

BATCH, LENGTH = 4096, 188
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def augment(seed: int = 0, **settings: Any) -> BatchAugment:
    config = validate_config({"data": {"beat_length": LENGTH}, "training": {"augment": settings}})
    return BatchAugment(config, CPU, seed)


def test_every_transform_off_is_no_augmentation() -> None:
    config = validate_config({"training": {"augment": {"scale": 0, "noise": 0.0}}})
    assert make_augment(config, CPU, torch.Generator().manual_seed(0)) is None
    signals = torch.rand(8, 1, LENGTH)
    assert torch.equal(augment()(signals), signals)


def test_scale_multiplies_each_beat_within_its_bounds() -> None:
    out = augment(scale=0.1)(torch.ones(BATCH, 1, LENGTH))
    factors = out[:, 0, 0]
    assert torch.equal(out, factors[:, None, None].expand_as(out))  # one factor per beat
    assert factors.min() >= 0.9 and factors.max() <= 1.1
    assert factors.min() < 0.91 and factors.max() > 1.09  # the whole range is drawn
    assert abs(float(factors.mean()) - 1.0) < 0.005


def test_noise_has_the_configured_standard_deviation() -> None:
    out = augment(noise=0.2)(torch.zeros(BATCH, 1, LENGTH))
    assert abs(float(out.std()) - 0.2) < 0.002 and abs(float(out.mean())) < 0.002
    assert float(out[:, 0, :].std(dim=1).std()) < 0.02  # every beat gets the same noise level


def test_baseline_adds_a_slow_sinusoid_of_bounded_amplitude() -> None:
    out = augment(baseline=0.5)(torch.zeros(BATCH, 1, LENGTH))[:, 0, :]
    assert out.abs().max() <= 0.5
    assert out.abs().amax(dim=1).max() > 0.45  # amplitudes up to the bound are drawn
    # 0.5 Hz at most: a sample-to-sample step of at most 2 pi f A / 125 Hz.
    steepest = 2 * math.pi * 0.5 * 0.5 / 125
    assert out.diff(dim=1).abs().max() <= steepest * 1.001
    # A sinusoid of frequency f: its second difference is 2 (cos(2 pi f / 125) - 1) times itself.
    ratio = out.double().diff(n=2, dim=1) / out[:, 1:-1].double()
    ratio = torch.where(out[:, 1:-1].abs() > 0.2, ratio, torch.nan).nanmedian(dim=1).values
    hertz = torch.arccos(1 + ratio[~ratio.isnan()] / 2) * 125 / (2 * math.pi)
    assert hertz.min() > 0.045 and hertz.max() < 0.505
    assert hertz.min() < 0.07 and hertz.max() > 0.48


def test_shift_moves_each_beat_by_at_most_shift_samples_zero_filled() -> None:
    ramp = torch.arange(1, LENGTH + 1, dtype=torch.float32).repeat(BATCH, 1, 1)
    out = augment(shift=5)(ramp)[:, 0, :]
    moves = []
    for row in out:
        kept = torch.nonzero(row).squeeze(1)
        move = int(kept[0] + 1 - row[kept[0]])
        assert torch.equal(row[kept], kept.float() + 1 - move)  # one shift for the whole beat
        assert (row == 0).sum() == abs(move)  # the vacated samples are zero
        moves.append(move)
    assert set(moves) == set(range(-5, 6))


def test_the_same_seed_gives_the_same_augmentation() -> None:
    signals = torch.rand(64, 1, LENGTH)
    settings = {"scale": 0.2, "baseline": 0.3, "noise": 0.1, "shift": 4}
    first, again = augment(3, **settings)(signals), augment(3, **settings)(signals)
    assert torch.equal(first, again)
    assert not torch.equal(first, augment(4, **settings)(signals))


@pytest.fixture
def config_for(small_config: Callable[..., Config]) -> Callable[..., Config]:
    """Three real records, the tests' tiny CNN, two epochs, these augmentation settings."""

    def make(**augment_settings: float) -> Config:
        training = {"epochs": 2, "augment": augment_settings}
        return small_config(data={"records": ["100", "106", "119"]}, training=training)

    return make


@pytest.fixture
def dataset(config_for: Callable[..., Config]) -> Dataset:
    return load_dataset(config_for())


def rows(tensor: Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in tensor.reshape(len(tensor), -1)}


def inputs_seen(config: Config, dataset: Dataset) -> dict[bool, list[Tensor]]:
    """The signals the model received in one training epoch (True) and one validation (False)."""
    run = prepare_run(config, dataset)
    seen: dict[bool, list[Tensor]] = {True: [], False: []}

    def record(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        seen[module.training].append(inputs[0].detach().clone())

    run.model.register_forward_pre_hook(record)
    train_one_epoch(run, 1, TrainingObserver())
    validate(run, dataset.valid, 1)
    return seen


def test_augmentation_changes_only_the_train_batches(
    config_for: Callable[..., Config], dataset: Dataset
) -> None:
    train_rows = rows(torch.from_numpy(dataset.train.signals))
    valid_rows = rows(torch.from_numpy(dataset.valid.signals))
    train_before = dataset.train.signals.copy()
    plain = inputs_seen(config_for(), dataset)
    assert all(rows(batch) <= train_rows for batch in plain[True])  # control: beats as stored
    augmented = inputs_seen(config_for(noise=0.05, scale=0.1), dataset)
    assert all(not rows(batch) & train_rows for batch in augmented[True])
    assert sum(len(batch) for batch in augmented[True]) == len(dataset.train)
    assert all(rows(batch) <= valid_rows for batch in augmented[False])
    np.testing.assert_array_equal(dataset.train.signals, train_before)


def test_augmented_training_repeats_exactly_with_the_seed(
    config_for: Callable[..., Config], dataset: Dataset
) -> None:
    config = config_for(scale=0.1, baseline=0.1, noise=0.05, shift=3)
    first, second = train_model(config, dataset), train_model(config, dataset)
    assert [r.train_loss for r in first.history] == [r.train_loss for r in second.history]
    assert [r.valid_metrics for r in first.history] == [r.valid_metrics for r in second.history]
    plain = train_model(config_for(), dataset)
    assert plain.history[0].train_loss != first.history[0].train_loss


def test_augmentation_keys_are_searchable_and_bounded() -> None:
    config = validate_config(
        {
            "search": {
                "space": {
                    "training.augment.scale": {"uniform": [0.0, 0.2]},
                    "training.augment.shift": {"choice": [0, 4, 8]},
                }
            }
        }
    )
    space = build_search_space(config)
    trial = space.trial_config({"training.augment.scale": 0.15, "training.augment.shift": 8})
    assert trial.training.augment.scale == 0.15 and trial.training.augment.shift == 8
    with pytest.raises(ConfigError, match=r"training\.augment\.scale = 1\.5: Input should be less"):
        validate_config({"training": {"augment": {"scale": 1.5}}})
    with pytest.raises(ConfigError, match=r"training\.augment\.shift = 40: must be below"):
        validate_config({"data": {"beat_length": 40}, "training": {"augment": {"shift": 40}}})
