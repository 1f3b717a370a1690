"""Every ``[training]`` option reaches the loss, the optimiser, the schedule and the precision.

The expected values are worked out by hand in the tests (class weights, focal losses, learning
rates), not recomputed with the formulas under test, so an option that is ignored or computed
another way fails. No data: the parts are driven directly, on a one-layer model, on the CPU.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim import SGD, Adam, AdamW, Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, OneCycleLR, ReduceLROnPlateau

from ecgtune.config import AAMI_CLASSES, TrainingConfig, validate_config
from ecgtune.data.beats import RR_COLUMNS
from ecgtune.errors import ConfigError
from ecgtune.models import build_model
from ecgtune.report import load_checkpoint, save_checkpoint
from ecgtune.search.space import build_search_space
from ecgtune.training import (
    FocalLoss,
    autocast_context,
    class_weights,
    make_criterion,
    make_optimizer,
    make_scheduler,
)
from tests.conftest import TINY_CNN

CPU = torch.device("cpu")
LR = 0.01

# Two beats of two classes, logits [ln 9, 0]: p(class 0) = 0.9, so the beat of class 0 is easy
# (cross-entropy -ln 0.9 = ln(10/9)) and the beat of class 1 hard (-ln 0.1 = ln 10).
LOGITS = torch.tensor([[math.log(9.0), 0.0], [math.log(9.0), 0.0]])
TARGET = torch.tensor([0, 1])
EASY_CE = math.log(10 / 9)
HARD_CE = math.log(10)

# Train counts [90, 10, 0]: inverse frequencies 1/90 and 1/10 have mean 1/18, so the weights are
# 18/90 = 0.2 and 18/10 = 1.8; the class without beats gets 0.
INVERSE_COUNTS = np.array([90, 10, 0])
INVERSE_WEIGHTS = [0.2, 1.8, 0.0]
# Train counts [1, 2, 0], beta 0.9: (1 - beta) / (1 - beta^n) is 0.1 / 0.1 = 1 for n = 1 and
# 0.1 / 0.19 = 10/19 for n = 2; their mean is 29/38, so the weights are 38/29 and 20/29
# (inverse frequencies would give 4/3 and 2/3).
EFFECTIVE_COUNTS = np.array([1, 2, 0])
EFFECTIVE_WEIGHTS = [38 / 29, 20 / 29, 0.0]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Other helpers' tests share the machine's two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def training_config(**options: Any) -> TrainingConfig:
    return validate_config({"training": options}, source="test").training


# --- class weights and losses ---------------------------------------------------------------


def test_inverse_class_weights_have_mean_one_over_present_classes() -> None:
    weights = class_weights(INVERSE_COUNTS, "inverse", beta=0.9)
    assert weights.tolist() == pytest.approx(INVERSE_WEIGHTS)


def test_effective_number_class_weights_follow_beta() -> None:
    weights = class_weights(EFFECTIVE_COUNTS, "effective", beta=0.9)
    assert weights.tolist() == pytest.approx(EFFECTIVE_WEIGHTS)


def test_a_weight_cap_limits_every_class_to_cap_times_the_lightest() -> None:
    """Counts 1000, 100, 8, 0: inverse weights 1 : 10 : 125 before the mean is taken to 1; a
    cap of 20 makes them 1 : 10 : 20 (mean 31/3); a cap above the heaviest ratio changes
    nothing, and 0 is no cap."""
    counts = np.array([1000, 100, 8, 0])
    capped = class_weights(counts, "inverse", beta=0.9, cap=20.0)
    assert capped.tolist() == pytest.approx([3 / 31, 30 / 31, 60 / 31, 0.0])
    uncapped = [3 / 136, 30 / 136, 375 / 136, 0.0]
    assert class_weights(counts, "inverse", beta=0.9, cap=125.0).tolist() == pytest.approx(uncapped)
    assert class_weights(counts, "inverse", beta=0.9, cap=0.0).tolist() == pytest.approx(uncapped)
    effective = class_weights(counts, "effective", beta=0.5, cap=1.0)
    assert effective.tolist() == pytest.approx([1.0, 1.0, 1.0, 0.0])  # all capped to the lightest


def test_a_weight_cap_below_one_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=re.escape(
        "training.class_weight_cap = 0.5: a cap below 1 would weigh a class below the lightest; "
        "0 = no cap"
    )):  # fmt: skip
        training_config(class_weight_cap=0.5)
    assert training_config(class_weight_cap=1).class_weight_cap == 1


def test_focal_loss_at_gamma_zero_is_cross_entropy() -> None:
    assert FocalLoss(0.0)(LOGITS, TARGET).item() == pytest.approx((EASY_CE + HARD_CE) / 2)
    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    target = torch.arange(8) % 5
    expected = nn.functional.cross_entropy(logits, target).item()
    assert FocalLoss(0.0)(logits, target).item() == pytest.approx(expected)


def test_focal_loss_at_gamma_two_discounts_the_easy_beat_by_one_minus_p_squared() -> None:
    easy, hard = FocalLoss(2.0)(LOGITS[:1], TARGET[:1]), FocalLoss(2.0)(LOGITS[1:], TARGET[1:])
    assert easy.item() == pytest.approx(0.1**2 * EASY_CE)  # (1 - 0.9)^2 = 0.01
    assert hard.item() == pytest.approx(0.9**2 * HARD_CE)  # (1 - 0.1)^2 = 0.81
    both = FocalLoss(2.0)(LOGITS, TARGET).item()
    assert both == pytest.approx((0.01 * EASY_CE + 0.81 * HARD_CE) / 2)


def test_weighted_focal_loss_scales_each_beat_by_its_class_weight() -> None:
    loss = FocalLoss(2.0, torch.tensor([2.0, 0.5]))(LOGITS, TARGET).item()
    assert loss == pytest.approx((2.0 * 0.01 * EASY_CE + 0.5 * 0.81 * HARD_CE) / 2)


@pytest.mark.parametrize(
    ("options", "counts", "weights"),
    [
        ({"loss": "ce"}, INVERSE_COUNTS, None),
        ({"loss": "weighted_ce"}, INVERSE_COUNTS, INVERSE_WEIGHTS),
        (
            {"loss": "weighted_ce", "class_weights": "effective", "effective_beta": 0.9},
            EFFECTIVE_COUNTS,
            EFFECTIVE_WEIGHTS,
        ),
        ({"loss": "focal"}, INVERSE_COUNTS, None),
        ({"loss": "focal", "focal_weighted": True}, INVERSE_COUNTS, INVERSE_WEIGHTS),
        ({"loss": "weighted_ce", "class_weight_cap": 3}, INVERSE_COUNTS, [0.5, 1.5, 0.0]),
    ],
    ids=["ce", "weighted_ce", "weighted_ce-effective", "focal", "focal-weighted", "capped"],
)
def test_criterion_is_the_configured_loss_with_the_configured_weights(
    options: dict[str, Any], counts: np.ndarray[Any, Any], weights: list[float] | None
) -> None:
    criterion = make_criterion(training_config(**options), counts)
    loss_class = FocalLoss if options["loss"] == "focal" else nn.CrossEntropyLoss
    assert type(criterion) is loss_class
    weight = criterion.state_dict().get("weight")
    if weights is None:
        assert weight is None
    else:
        assert weight is not None and weight.tolist() == pytest.approx(weights)


@pytest.mark.parametrize(
    ("gamma", "expected"),
    [(0.0, (EASY_CE + HARD_CE) / 2), (2.0, (0.01 * EASY_CE + 0.81 * HARD_CE) / 2)],
    ids=["gamma0", "gamma2"],
)
def test_focal_criterion_uses_the_configured_gamma(gamma: float, expected: float) -> None:
    criterion = make_criterion(training_config(loss="focal", focal_gamma=gamma), INVERSE_COUNTS)
    assert criterion(LOGITS, TARGET).item() == pytest.approx(expected)


# --- optimisers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "optimizer_class", "settings"),
    [
        ("adam", Adam, {"lr": 0.012, "weight_decay": 0.034}),
        ("adamw", AdamW, {"lr": 0.012, "weight_decay": 0.034}),
        ("sgd", SGD, {"lr": 0.012, "weight_decay": 0.034, "momentum": 0.56}),
    ],
)
def test_optimiser_is_the_configured_class_with_its_settings_on_every_parameter(
    name: str, optimizer_class: type[Optimizer], settings: dict[str, float]
) -> None:
    model = nn.Linear(3, 2)
    optimizer = make_optimizer(training_config(optimizer=name, **settings), model)
    assert type(optimizer) is optimizer_class
    grouped = [param for group in optimizer.param_groups for param in group["params"]]
    assert grouped == list(model.parameters())
    for group in optimizer.param_groups:
        assert {key: group[key] for key in settings} == pytest.approx(settings)


# --- learning-rate schedules ----------------------------------------------------------------


def scheduled(**options: Any) -> tuple[Optimizer, Any]:
    """An AdamW on a one-layer model at ``LR`` and the schedule ``options`` configure."""
    cfg = training_config(lr=LR, **options)
    optimizer = make_optimizer(cfg, nn.Linear(3, 2))
    return optimizer, make_scheduler(cfg, optimizer, steps_per_epoch=5)


def lrs_per_batch(optimizer: Optimizer, scheduler: Any, steps: int) -> list[float]:
    """The learning rate of each of ``steps`` batches, the schedule stepping after each."""
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def lrs_after_epochs(optimizer: Optimizer, scheduler: Any, scores: list[float]) -> list[float]:
    """The learning rate after each epoch whose validation objective was ``scores[i]``."""
    lrs = []
    for score in scores:
        optimizer.step()
        scheduler.step(score)
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize(
    ("name", "scheduler_class"),
    [("plateau", ReduceLROnPlateau), ("cosine", CosineAnnealingLR), ("onecycle", OneCycleLR)],
)
def test_scheduler_is_the_configured_class(name: str, scheduler_class: type[Any]) -> None:
    _, scheduler = scheduled(scheduler=name)
    assert type(scheduler) is scheduler_class


def test_no_scheduler_keeps_the_lr() -> None:
    assert scheduled(scheduler="none")[1] is None


def test_cosine_anneals_the_lr_once_from_lr_to_zero_over_all_batches() -> None:
    optimizer, scheduler = scheduled(scheduler="cosine", epochs=4)  # 4 x 5 = 20 batches
    lrs = lrs_per_batch(optimizer, scheduler, 20)
    assert lrs[0] == pytest.approx(LR)
    assert lrs[5] == pytest.approx(LR * 0.8535534)  # (1 + cos(pi / 4)) / 2
    assert lrs[10] == pytest.approx(LR / 2)  # (1 + cos(pi / 2)) / 2
    assert all(earlier > later for earlier, later in itertools.pairwise(lrs)), "one cycle only"
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_onecycle_warms_up_from_lr_over_25_to_lr() -> None:
    optimizer, scheduler = scheduled(scheduler="onecycle", epochs=4)  # 20 batches
    lrs = lrs_per_batch(optimizer, scheduler, 20)
    assert lrs[0] == pytest.approx(LR / 25)
    assert max(lrs) == pytest.approx(LR)
    assert lrs.index(max(lrs)) == 5  # the peak after 30 % of the 20 batches
    assert lrs[-1] < LR / 25


def test_plateau_lowers_the_lr_after_patience_epochs_without_improvement() -> None:
    """A constant score: the first epoch sets the best, two more (the patience) are tolerated,
    the third without improvement multiplies the lr by the factor, and so on."""
    optimizer, scheduler = scheduled(scheduler="plateau", plateau_patience=2, plateau_factor=0.5)
    lrs = lrs_after_epochs(optimizer, scheduler, [0.5] * 7)
    assert lrs == pytest.approx([LR, LR, LR, LR / 2, LR / 2, LR / 2, LR / 4])
    optimizer, scheduler = scheduled(scheduler="plateau", plateau_patience=0, plateau_factor=0.1)
    assert lrs_after_epochs(optimizer, scheduler, [0.5] * 3) == pytest.approx(
        [LR, LR / 10, LR / 100]
    )


@pytest.mark.parametrize(
    ("objective", "mode"),
    [("macro_f1", "max"), ("accuracy", "max"), ("balanced_accuracy", "max"), ("loss", "min")],
)
def test_plateau_mode_follows_the_objective(objective: str, mode: str) -> None:
    """A rising score improves a metric and worsens the loss; a falling one the reverse."""
    rising, falling = [0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 0.4, 0.3, 0.2, 0.1]
    improving, worsening = (rising, falling) if mode == "max" else (falling, rising)
    stalled = [LR, LR, LR, LR / 2, LR / 2]  # patience 2, factor 0.5
    optimizer, scheduler = scheduled(scheduler="plateau", objective=objective)
    assert scheduler.mode == mode
    assert lrs_after_epochs(optimizer, scheduler, improving) == pytest.approx([LR] * 5)
    optimizer, scheduler = scheduled(scheduler="plateau", objective=objective)
    assert lrs_after_epochs(optimizer, scheduler, worsening) == pytest.approx(stalled)


def test_plateau_counts_gains_below_min_delta_as_no_improvement() -> None:
    optimizer, scheduler = scheduled(scheduler="plateau", plateau_patience=0, min_delta=0.1)
    lrs = lrs_after_epochs(optimizer, scheduler, [0.50, 0.55, 0.58, 0.80])
    assert lrs == pytest.approx([LR, LR / 2, LR / 4, LR / 4])  # +0.05, +0.08, then +0.3


# --- precision ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("precision", "dtype"), [("bf16", torch.bfloat16), ("fp32", torch.float32)]
)
def test_autocast_runs_layers_in_the_configured_precision_on_the_cpu(
    precision: str, dtype: torch.dtype
) -> None:
    layer = nn.Linear(4, 3)
    with autocast_context(precision, CPU):
        assert layer(torch.rand(2, 4)).dtype == dtype
    assert layer(torch.rand(2, 4)).dtype == torch.float32


def test_fp16_on_the_cpu_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"training\.precision = 'fp16' needs a CUDA device"):
        autocast_context("fp16", CPU)


def test_the_weight_cap_is_searchable_and_checked_in_the_space() -> None:
    """``training.class_weight_cap`` is a trial's setting; ``search.fold_seeds``, like every
    ``search.*`` key, is the search's own (refused in the space)."""
    space = {"training.class_weight_cap": {"choice": [0.0, 20.0, 50.0]}}
    config = validate_config({"search": {"space": space}})
    assert build_search_space(config).candidate_values("training.class_weight_cap") == [
        0.0,
        20.0,
        50.0,
    ]
    seeds = validate_config({"search": {"space": {"search.fold_seeds": {"choice": ["shared"]}}}})
    with pytest.raises(ConfigError, match=r"only model\.\*, training\.\*"):
        build_search_space(seeds)
    bad = validate_config({"search": {"space": {"training.class_weight_cap": {"choice": [0.5]}}}})
    with pytest.raises(ConfigError, match=r"can draw 0\.5, which the config rejects"):
        build_search_space(bad)


def test_a_checkpoint_saved_before_the_weight_cap_and_fold_seeds_loads_and_predicts_the_same(
    tmp_path: Path,
) -> None:
    """Both keys shape training only: a checkpoint whose config lacks them (saved before they
    existed) loads with their defaults and predicts exactly as before."""
    config = validate_config({"model": TINY_CNN, "training": {"class_weight_cap": 50}})
    model = build_model(config, 5)
    path = tmp_path / "best_model.pt"
    save_checkpoint(path, model, config, AAMI_CLASSES)
    saved = torch.load(path, weights_only=True)
    del saved["config"]["training"]["class_weight_cap"], saved["config"]["search"]["fold_seeds"]
    torch.save(saved, path)
    loaded, loaded_config, _ = load_checkpoint(path)
    assert loaded_config.training.class_weight_cap == 0.0
    assert loaded_config.search.fold_seeds == "shared"
    signals = torch.randn(4, 1, 187, generator=torch.Generator().manual_seed(0))
    rr = torch.rand(4, len(RR_COLUMNS), generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(signals, rr), loaded(signals, rr))
