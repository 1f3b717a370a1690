"""``ecgtune.training`` exactly, on beats built in memory and a 17-parameter model: the epoch
loop and what its observers hear, the batches and their losses, early stopping and its tie
rule, a stop requested by an observer, divergence, the run's set-up, the patient adversary,
gradient clipping, prediction in chunks and per record, and the seeds
(tests/test_training_options.py pins the losses, optimisers and schedules; tests/test_training.py
trains on real records, slower)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import CosineAnnealingLR

from ecgtune.config import Config, InferenceConfig
from ecgtune.data.beats import RR_COLUMNS
from ecgtune.data.dataset import BeatSet, Dataset
from ecgtune.data.resampling import resample_train_split
from ecgtune.errors import ConfigError
from ecgtune.metrics import compute_metrics
from ecgtune.models import build_model
from ecgtune.models.adapt import record_statistics
from ecgtune.training import (
    EVAL_BATCH,
    BatchAugment,
    EarlyStopping,
    EpochRecord,
    ObserverFanOut,
    StopTraining,
    TrainingDiverged,
    adapted_logits,
    autocast_context,
    available_cores,
    batch_losses_of,
    beats_to_tensors,
    class_weights,
    diverged,
    evaluate_test_split,
    make_adversary,
    make_augment,
    predict,
    predict_logits,
    predict_proba,
    prepare_run,
    resolve_device,
    seed_everything,
    train_model,
    train_one_epoch,
)
from tests.tiny_beats import (
    BEAT_LENGTH,
    CLASSES,
    Heard,
    beat_set,
    tiny_config,
    tiny_dataset,
)

CPU = torch.device("cpu")
DIVERGED_ADVICE = "(lower training.lr, set training.grad_clip or use training.precision = 'fp32')"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def split(n_train: int = 10, records: str = "ab") -> Dataset:
    """``n_train`` train beats of the classes in turn, from ``records`` in turn; six
    validation beats of record v, numbered from 100."""
    train = beat_set(
        [records[i % len(records)] for i in range(n_train)], [i % 3 for i in range(n_train)]
    )
    return tiny_dataset(train, beat_set(["v"] * 6, [0, 1, 2, 2, 1, 0], first=100))


def config_of(**training: Any) -> Config:
    """The tiny model trained on the validation loss (it falls every epoch at this lr)."""
    return tiny_config(training={"objective": "loss", "lr": 0.05, "min_delta": 0.0, **training})


def same_weights(one: nn.Module, other: nn.Module) -> bool:
    pairs = zip(one.state_dict().values(), other.state_dict().values(), strict=True)
    return all(torch.equal(a, b) for a, b in pairs)


def first_order(n: int, seed: int) -> Tensor:
    """The first epoch's permutation of ``n`` train beats (the run's generator, unaugmented)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


class Batches(Heard):
    """Also every training batch the model sees: its beats' numbers and its logits."""

    def __init__(self, stop_after: tuple[int, ...] = ()) -> None:
        super().__init__(stop_after)
        self.batches: list[tuple[list[int], Tensor, bool]] = []

    def on_train_start(self, config: Config, model: nn.Module, n_train: int) -> None:
        super().on_train_start(config, model, n_train)
        model.register_forward_hook(self.seen)

    def seen(self, model: nn.Module, inputs: tuple[Tensor, Tensor], logits: Tensor) -> None:
        if model.training or torch.is_grad_enabled():
            numbers = [int(n) for n in inputs[1][:, 0]]
            self.batches.append((numbers, logits.detach().clone(), model.training))


# --- the epoch loop -----------------------------------------------------------------------------


def test_a_run_is_heard_in_order_and_records_every_epoch() -> None:
    dataset = split()
    heard = Heard()
    started = time.perf_counter()
    result = train_model(config_of(epochs=3), dataset, heard)
    took = time.perf_counter() - started
    assert heard.calls[0] == ("start", 3, 10)
    assert [call[0] for call in heard.calls] == [
        "start",
        *["epoch", "batch", "end"] * 3,
        "train end",
    ]
    assert [call for call in heard.calls if call[0] == "epoch"] == [
        ("epoch", 1, 3),
        ("epoch", 2, 3),
        ("epoch", 3, 3),
    ]
    assert heard.models == [result.model]
    assert heard.results == [result]
    assert result.history == heard.records
    assert [record.epoch for record in result.history] == [1, 2, 3]
    for record, call in zip(result.history, heard.calls[2::3], strict=True):
        assert call == ("batch", 10, record.train_loss)  # 3 batches: one report, the epoch's
        assert record.valid_loss == record.valid_metrics["loss"]
        assert record.lr == 0.05
        assert record.adversary_loss is None
        assert 0 < record.seconds < took
        assert record.beats_per_second > 10 / record.seconds
    losses = [record.valid_loss for record in result.history]
    assert losses == sorted(losses, reverse=True) and len(set(losses)) == 3
    assert result.best_epoch == 3
    assert result.best_valid == result.history[2].valid_metrics
    assert result.stop_reason == "trained the full training.epochs = 3"
    assert result.train_counts == {"N": 4, "S": 3, "V": 3}
    assert result.class_names == CLASSES
    assert result.pruned_at is None
    assert result.out_of_fold is None
    assert 0 < result.seconds <= took
    assert sum(record.seconds for record in result.history) <= result.seconds


def test_the_validation_figures_are_those_of_the_whole_split() -> None:
    dataset = split()
    config = config_of(epochs=2)
    result = train_model(config, dataset)
    best = result.history[-1]
    logits = predict_logits(result.model, *beats_to_tensors(dataset.valid, CPU)[:2], NO_AUTOCAST)
    labels = torch.from_numpy(dataset.valid.labels)
    weights = torch.from_numpy(class_weights(np.array([4, 3, 3]), "inverse", 0.999))
    assert best.valid_loss == pytest.approx(float(F.cross_entropy(logits, labels, weights)))
    predicted = logits.argmax(dim=1).numpy()
    figures = compute_metrics(dataset.valid.labels, predicted, CLASSES).as_flat_dict()
    assert best.valid_metrics == {"loss": best.valid_loss, **figures}


def test_train_loss_is_the_beat_weighted_mean_of_the_batches_reported_every_ten() -> None:
    """45 beats in batches of 2: 23 batches (22 of 2, one of 1); the observer hears batches
    1-10 (20 beats), 11-20 (20 beats) and 21-23 (5 beats)."""
    dataset = split(45)
    config = config_of(epochs=1, batch_size=2, loss="ce")
    heard = Batches()
    result = train_model(config, dataset, heard)
    order = first_order(45, config.seed).tolist()
    assert [numbers for numbers, _, _ in heard.batches] == [
        order[i : i + 2] for i in range(0, 45, 2)
    ]
    assert all(training for _, _, training in heard.batches)
    labels = dataset.train.labels
    sums = [
        float(F.cross_entropy(logits, torch.from_numpy(labels[numbers]))) * len(numbers)
        for numbers, logits, _ in heard.batches
    ]
    reports = [call for call in heard.calls if call[0] == "batch"]
    assert reports == [
        ("batch", 20, pytest.approx(sum(sums[:10]) / 20)),
        ("batch", 20, pytest.approx(sum(sums[10:20]) / 20)),
        ("batch", 5, pytest.approx(sum(sums[20:]) / 5)),
    ]
    assert result.history[0].train_loss == pytest.approx(sum(sums) / 45)


def test_every_epoch_draws_a_new_permutation_of_the_train_beats() -> None:
    heard = Batches()
    train_model(config_of(epochs=2, batch_size=16), split(10), heard)
    epochs = [numbers for numbers, _, _ in heard.batches]
    assert len(epochs) == 2
    assert epochs[0] == first_order(10, 3).tolist()
    assert sorted(epochs[1]) == list(range(10)) and epochs[1] != epochs[0]


def test_the_epoch_lr_is_the_one_it_started_with() -> None:
    """Cosine over 3 epochs of 3 batches: the lr falls by (1 + cos(pi t / 9)) / 2."""
    result = train_model(config_of(epochs=3, lr=0.04, scheduler="cosine"), split())
    assert [record.lr for record in result.history] == pytest.approx([0.04, 0.03, 0.01])


def test_the_plateau_schedule_steps_once_per_epoch_on_the_objective() -> None:
    """A gain below ``min_delta`` is no improvement: the first epoch sets the best, and with no
    patience the lr halves after every later epoch."""
    config = config_of(
        epochs=4,
        lr=1e-4,
        min_delta=0.5,
        scheduler="plateau",
        plateau_patience=0,
        plateau_factor=0.5,
        early_stopping_patience=10,
    )
    result = train_model(config, split())
    assert [record.lr for record in result.history] == pytest.approx([1e-4, 1e-4, 5e-5, 2.5e-5])


def test_early_stopping_ends_the_run_and_restores_the_best_epoch() -> None:
    """No gain is large enough: epoch 1 stays the best, and the run stops after patience (2)
    more epochs, with the first epoch's weights."""
    config = config_of(epochs=6, min_delta=1e9, early_stopping_patience=2)
    heard = Heard()
    result = train_model(config, split(), heard)
    assert [record.epoch for record in result.history] == [1, 2, 3]
    assert heard.calls[-2:] == [("end", 3), ("train end", 1)]
    assert result.best_epoch == 1
    assert result.best_valid == result.history[0].valid_metrics
    assert result.stop_reason == (
        "early stopping: validation loss did not improve by more than 1e+09 for 2 epochs"
    )
    assert same_weights(result.model, train_model(config_of(epochs=1), split()).model)
    assert not same_weights(result.model, train_model(config_of(epochs=3), split()).model)


def test_an_observer_stops_the_run_after_an_epoch() -> None:
    heard = Heard(stop_after=(2,))
    result = train_model(config_of(epochs=5), split(), heard)
    assert [record.epoch for record in result.history] == [1, 2]
    assert heard.calls[-2:] == [("end", 2), ("train end", 2)]
    assert (result.pruned_at, result.stop_reason) == (2, "stopped after 2")
    assert result.best_epoch == 2
    assert same_weights(result.model, train_model(config_of(epochs=2), split()).model)


def test_a_stop_request_carries_its_reason() -> None:
    stop = StopTraining("pruned: below the median")
    assert (stop.reason, str(stop)) == ("pruned: below the median", "pruned: below the median")


# --- divergence ---------------------------------------------------------------------------------


def test_a_nan_training_loss_names_its_epoch_and_batch() -> None:
    """The beat in the 23rd place of the first permutation is NaN: batch 12 of 13 (after the
    report of the first 10) is the first whose loss is not finite."""
    dataset = split(25)
    poisoned = int(first_order(25, 3)[22])
    dataset.train.signals[poisoned] = np.nan
    heard = Heard()
    with pytest.raises(TrainingDiverged) as stopped:
        train_model(config_of(epochs=2, batch_size=2), dataset, heard)
    assert str(stopped.value) == f"epoch 1, batch 12/13: the training loss is nan {DIVERGED_ADVICE}"
    assert [call[:2] for call in heard.calls if call[0] == "batch"] == [("batch", 20)]


def test_diverged_names_the_first_batch_that_is_not_finite_among_those_read() -> None:
    losses = torch.tensor([1.0, math.inf, 2.0, math.nan, 3.0])
    assert str(diverged(4, losses, slice(0, 5), 9)) == (
        f"epoch 4, batch 2/9: the training loss is inf {DIVERGED_ADVICE}"
    )
    assert str(diverged(2, losses, slice(2, 5), 5)) == (
        f"epoch 2, batch 4/5: the training loss is nan {DIVERGED_ADVICE}"
    )


def test_a_nan_validation_loss_names_its_epoch() -> None:
    dataset = split()
    dataset.valid.signals[4] = np.nan
    with pytest.raises(TrainingDiverged) as stopped:
        train_model(config_of(epochs=2), dataset)
    assert str(stopped.value) == "epoch 1: the validation loss is nan"


# --- early stopping -----------------------------------------------------------------------------


def record_of(epoch: int, score: float, objective: str = "macro_f1") -> EpochRecord:
    return EpochRecord(epoch, 0.0, 0.0, {objective: score}, 0.1, 1.0, 1.0)


def test_a_gain_of_exactly_min_delta_is_no_improvement() -> None:
    cfg = config_of(
        objective="macro_f1", min_delta=0.25, early_stopping_patience=2, epochs=5
    ).training
    stopper = EarlyStopping(cfg)
    assert (stopper.best, stopper.reason) == (None, "trained the full training.epochs = 5")
    model = nn.Linear(2, 1)
    assert stopper.update(record_of(1, 0.5), model) is False
    assert stopper.update(record_of(2, 0.75), model) is False  # + 0.25: a tie
    assert stopper.best is not None and stopper.best.epoch == 1
    assert stopper.reason == "trained the full training.epochs = 5"
    assert stopper.update(record_of(3, 0.75), model) is True  # 2 epochs without a gain
    assert stopper.reason == (
        "early stopping: validation macro_f1 did not improve by more than 0.25 for 2 epochs"
    )


def test_patience_counts_from_the_last_improvement() -> None:
    cfg = config_of(
        objective="macro_f1", min_delta=0.25, early_stopping_patience=2, epochs=9
    ).training
    stopper, model = EarlyStopping(cfg), nn.Linear(2, 1)
    assert not stopper.update(record_of(1, 0.1), model)
    assert not stopper.update(record_of(2, 0.3500001), model)  # a gain just over min_delta
    assert stopper.best is not None and stopper.best.epoch == 2
    assert not stopper.update(record_of(3, 0.0), model)
    assert stopper.update(record_of(4, 0.0), model)


def test_a_lower_loss_is_the_improvement_when_the_objective_is_the_loss() -> None:
    stopper, model = EarlyStopping(config_of(early_stopping_patience=5).training), nn.Linear(2, 1)
    stopper.update(record_of(1, 0.8, "loss"), model)
    stopper.update(record_of(2, 0.9, "loss"), model)
    stopper.update(record_of(3, 0.7, "loss"), model)
    assert stopper.best is not None and stopper.best.epoch == 3


def test_the_best_weights_are_a_copy_taken_at_the_best_epoch() -> None:
    stopper, model = EarlyStopping(config_of().training), nn.Linear(2, 1)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    stopper.update(record_of(1, 0.9, "loss"), model)
    with torch.no_grad():
        model.weight.add_(1.0)
    stopper.update(record_of(2, 1.0, "loss"), model)  # worse: the copy stays
    assert stopper.best_state.keys() == before.keys()
    assert all(torch.equal(stopper.best_state[key], before[key]) for key in before)


# --- the run's set-up ---------------------------------------------------------------------------


def test_a_run_is_set_up_from_the_split_and_the_config() -> None:
    dataset = split(10, records="bab")
    config = config_of(epochs=3, scheduler="cosine")
    run = prepare_run(config, dataset)
    assert (run.n_train, run.n_batches, run.batch_sizes) == (10, 3, [4, 3, 3])
    assert run.train_records.tolist() == [1, 0, 1] * 3 + [1]  # "a" -> 0, "b" -> 1
    assert run.train[0].shape == (10, 1, BEAT_LENGTH)
    assert run.valid[2].tolist() == dataset.valid.labels.tolist()
    assert run.class_names == CLASSES and run.device == CPU
    assert run.train_counts == {"N": 4, "S": 3, "V": 3}
    assert run.resampled_from is None
    assert run.adversary is None and run.augment is None
    assert run.generator.initial_seed() == config.seed
    assert not run.scaler.is_enabled()
    assert isinstance(run.scheduler, CosineAnnealingLR) and run.scheduler.T_max == 9
    weight = run.criterion.weight
    assert isinstance(weight, torch.Tensor)
    assert weight.tolist() == pytest.approx([9 / 11, 12 / 11, 12 / 11])  # 1/n, mean 1
    assert [p for group in run.optimizer.param_groups for p in group["params"]] == list(
        run.model.parameters()
    )


def test_the_weights_come_from_the_seed() -> None:
    config = config_of()
    first, again = prepare_run(config, split()), prepare_run(config, split())
    other = prepare_run(tiny_config(seed=4, training={"num_threads": 1}), split())
    assert same_weights(first.model, again.model)
    assert not same_weights(first.model, other.model)


def test_a_resampled_train_split_is_reported_with_its_counts_before_and_after() -> None:
    config = tiny_config(
        data={"resample": {"method": "random_over"}}, training={"epochs": 1, "num_threads": 1}
    )
    heard = Heard()
    result = train_model(config, split(10), heard)
    counts = {"N": 4, "S": 4, "V": 4}
    assert heard.calls[1] == ("resampled", "random_over", {"N": 4, "S": 3, "V": 3}, counts)
    assert heard.calls[0] == ("start", 1, 12)
    assert result.train_counts == counts
    drawn_beats = resample_train_split(split(10).train, CLASSES, config.data.resample, config.seed)
    run = prepare_run(config, split(10))
    assert torch.equal(run.train[0][:, 0], torch.from_numpy(drawn_beats.signals))
    other = resample_train_split(split(10).train, CLASSES, config.data.resample, config.seed + 1)
    assert not np.array_equal(drawn_beats.signals, other.signals)


def test_dropping_a_class_alone_is_reported_too() -> None:
    config = tiny_config(
        data={"resample": {"drop_classes": ["S"]}}, training={"epochs": 1, "num_threads": 1}
    )
    run = prepare_run(config, split(10))
    assert run.resampled_from == {"N": 4, "S": 3, "V": 3}
    assert run.train_counts == {"N": 4, "S": 0, "V": 3}
    assert run.n_train == 7


def test_threads_follow_the_config_and_zero_means_every_core() -> None:
    prepare_run(tiny_config(training={"num_threads": 0}), split())
    assert torch.get_num_threads() == available_cores() == len(os.sched_getaffinity(0))
    prepare_run(tiny_config(training={"num_threads": 1}), split())
    assert torch.get_num_threads() == 1


def test_the_cores_are_those_this_process_may_run_on() -> None:
    cores = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(cores)})
        assert available_cores() == 1
    finally:
        os.sched_setaffinity(0, cores)
    assert available_cores() == len(cores)


def test_seeding_repeats_torch_and_numpy() -> None:
    seed_everything(11)
    drawn = (torch.rand(3), np.random.rand(3))
    torch.manual_seed(11)
    np.random.seed(11)
    assert torch.equal(drawn[0], torch.rand(3)) and np.array_equal(drawn[1], np.random.rand(3))


def test_beats_become_tensors_of_one_channel_or_their_own() -> None:
    beats = split(4).train
    signals, rr, labels = beats_to_tensors(beats, CPU)
    assert signals.shape == (4, 1, BEAT_LENGTH)
    assert torch.equal(signals[:, 0], torch.from_numpy(beats.signals))
    assert torch.equal(rr, torch.from_numpy(beats.rr))
    assert labels.tolist() == [0, 1, 2, 0]
    two_leads = BeatSet(np.zeros((4, 2, 8), np.float32), beats.labels, beats.rr, beats.records)
    assert beats_to_tensors(two_leads, CPU)[0].shape == (4, 2, 8)


# --- devices and precision ----------------------------------------------------------------------


@pytest.mark.skipif(
    torch.cuda.is_available() or torch.backends.mps.is_available(), reason="a CPU-only machine"
)
def test_a_missing_device_is_refused_and_auto_falls_back_to_the_cpu() -> None:
    assert resolve_device("auto") == CPU and resolve_device("cpu") == CPU
    for name in ("cuda", "mps"):
        with pytest.raises(ConfigError) as refused:
            resolve_device(name)
        assert str(refused.value) == (
            f"training.device = '{name}': no {name} device on this machine; use 'auto' or 'cpu'"
        )


def test_fp16_on_the_cpu_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as refused:
        autocast_context("fp16", CPU)
    assert str(refused.value) == (
        "training.precision = 'fp16' needs a CUDA device (this run uses cpu); use 'bf16' or 'fp32'"
    )


NO_AUTOCAST = autocast_context("fp32", CPU)


# --- the patient adversary and gradient clipping ------------------------------------------------


def adversary_config(strength: float = 0.5, **training: Any) -> Config:
    """The tiny model, reading the RR intervals (here the beats' numbers), and a record head."""
    options = {"epochs": 1, "patient_adversary": strength, "adversary_hidden": 3, "batch_size": 4}
    return tiny_config(
        model={"rr_features": "raw"},
        training={"objective": "loss", "lr": 0.05, "num_threads": 1, **options, **training},
    )


def test_the_adversary_reads_the_encoder_width_and_leaves_its_statistics() -> None:
    config = tiny_config(
        model={"batch_norm": True}, training={"patient_adversary": 0.5, "adversary_hidden": 3}
    )
    model = build_model(config, 3)
    model.eval()
    statistics = {key: value.clone() for key, value in model.state_dict().items()}
    signals = torch.randn(5, 1, BEAT_LENGTH) + 3
    head = make_adversary(config, model, signals, 4)
    assert head is not None and model.training
    first, last = head.classify[0], head.classify[-1]
    assert isinstance(first, nn.Sequential) and isinstance(first[0], nn.Linear)
    assert isinstance(last, nn.Linear)
    assert (first[0].in_features, first[0].out_features) == (2, 3)  # 2 channels, averaged
    assert (last.in_features, last.out_features) == (3, 4)
    assert head.strength == 0.5
    assert head(torch.zeros(7, 2)).shape == (7, 4)
    assert all(torch.equal(statistics[key], value) for key, value in model.state_dict().items())


def test_no_adversary_at_strength_zero_and_none_with_one_record() -> None:
    config = tiny_config(training={"patient_adversary": 0.0})
    model = build_model(config, 3)
    assert make_adversary(config, model, torch.zeros(2, 1, BEAT_LENGTH), 1) is None
    config = adversary_config(0.5)
    with pytest.raises(ConfigError) as refused:
        make_adversary(config, build_model(config, 3), torch.zeros(2, 1, BEAT_LENGTH), 1)
    assert str(refused.value) == (
        "training.patient_adversary = 0.5 trains against telling the training records apart, "
        "and the train split holds 1 record: nothing to tell apart; set it to 0 or give "
        "data.records more DS1 records"
    )
    assert make_adversary(config, build_model(config, 3), torch.zeros(2, 1, BEAT_LENGTH), 2)


def test_the_adversary_trains_beside_the_classifier_on_the_records() -> None:
    config = adversary_config()
    run = prepare_run(config, split(10, records="abc"))
    assert run.adversary is not None
    parameters = [p for group in run.optimizer.param_groups for p in group["params"]]
    assert parameters == [*run.model.parameters(), *run.adversary.parameters()]
    signals, rr, labels = run.train
    loss, adversary_loss = batch_losses_of(run, signals, rr, labels, run.train_records)
    features, logits = run.model.features_and_logits(signals, rr)
    assert loss.item() == pytest.approx(run.criterion(logits, labels).item())
    expected = F.cross_entropy(run.adversary(features), run.train_records)
    assert adversary_loss is not None and adversary_loss.item() == pytest.approx(expected.item())

    seen: list[tuple[Tensor, Tensor]] = []
    run.adversary.register_forward_hook(lambda _, inputs, out: seen.append((inputs[0], out)))
    order = first_order(10, config.seed)
    records = run.train_records[order].tensor_split(3)
    train_loss, epoch_adversary_loss = train_one_epoch(run, 1, Heard())
    losses = [
        F.cross_entropy(out, rec).item() * len(rec)
        for (_, out), rec in zip(seen, records, strict=True)
    ]
    assert epoch_adversary_loss == pytest.approx(sum(losses) / 10)
    assert train_loss != epoch_adversary_loss


def test_the_adversary_head_steps_down_its_own_loss() -> None:
    """One SGD step on all 10 beats: the head's weights move by -lr times the gradient of its
    record cross-entropy (the classification loss does not reach it)."""
    config = adversary_config(batch_size=16, optimizer="sgd", momentum=0.0, weight_decay=0.0)
    run = prepare_run(config, split(10, records="abc"))
    assert run.adversary is not None
    signals, rr, _ = run.train
    features, _ = run.model.features_and_logits(signals, rr)
    head = list(run.adversary.parameters())
    loss = F.cross_entropy(run.adversary(features.detach()), run.train_records)
    gradients = torch.autograd.grad(loss, head)
    expected = [(p - 0.05 * g).detach() for p, g in zip(head, gradients, strict=True)]
    train_one_epoch(run, 1, Heard())
    for moved, wanted in zip(run.adversary.parameters(), expected, strict=True):
        assert torch.allclose(moved, wanted, atol=1e-6)


def test_a_run_with_the_adversary_records_its_loss_apart() -> None:
    result = train_model(adversary_config(), split(10, records="abc"))
    record = result.history[0]
    assert record.adversary_loss is not None and record.adversary_loss > 0
    assert record.adversary_loss != record.train_loss


def test_no_adversary_gives_the_classification_loss_alone() -> None:
    run = prepare_run(config_of(), split())
    signals, rr, labels = run.train
    loss, adversary_loss = batch_losses_of(run, signals, rr, labels, run.train_records)
    assert adversary_loss is None
    assert loss.item() == pytest.approx(run.criterion(run.model(signals, rr), labels).item())


def weight_change(**training: Any) -> float:
    """How far one SGD step of lr 1 on all 10 beats moves the weights."""
    heard = Heard()
    config = config_of(epochs=1, batch_size=16, optimizer="sgd", momentum=0.0, lr=1.0, **training)
    initial: dict[str, Tensor] = {}

    class Initial(Heard):
        def on_train_start(self, config: Config, model: nn.Module, n_train: int) -> None:
            initial.update({k: v.clone() for k, v in model.state_dict().items()})

    result = train_model(config.model_copy(), split(), ObserverFanOut([heard, Initial()]))
    moved = [(value - initial[key]).flatten() for key, value in result.model.state_dict().items()]
    return float(torch.cat(moved).norm())


def test_gradient_clipping_bounds_the_step_to_lr_times_the_norm() -> None:
    assert weight_change(grad_clip=1e-3, weight_decay=0.0) == pytest.approx(1e-3, rel=1e-4)
    assert weight_change(grad_clip=0.0, weight_decay=0.0) > 1e-2


# --- observers ----------------------------------------------------------------------------------


def test_a_fan_out_tells_every_observer_everything_in_order() -> None:
    first, second = Heard(), Heard()
    fan_out = ObserverFanOut([first, second])
    result = train_model(
        tiny_config(data={"resample": {"method": "random_over"}}, training={"num_threads": 1}),
        split(),
        fan_out,
    )
    alone = Heard()
    train_model(
        tiny_config(data={"resample": {"method": "random_over"}}, training={"num_threads": 1}),
        split(),
        alone,
    )
    assert first.calls == second.calls == alone.calls
    assert [call[0] for call in first.calls[:4]] == ["start", "resampled", "epoch", "batch"]
    assert first.results == second.results == [result]
    assert first.models == second.models == [result.model]


# --- prediction ---------------------------------------------------------------------------------


DROPOUT_MODEL = {"fc_sizes": [4], "dropout": 0.5, "batch_norm": True, "rr_features": "raw"}


def dropout_model() -> nn.Module:
    """The tiny model with batch norm, a hidden layer and dropout: eval mode shows."""
    config = tiny_config(model=DROPOUT_MODEL)
    torch.manual_seed(0)
    model = build_model(config, 3)
    model.train()
    return model


def test_logits_are_predicted_in_chunks_in_eval_mode() -> None:
    model = dropout_model()
    signals = torch.randn(
        EVAL_BATCH + 3, 1, BEAT_LENGTH, generator=torch.Generator().manual_seed(1)
    )
    rr = torch.randn(len(signals), len(RR_COLUMNS), generator=torch.Generator().manual_seed(2))
    logits = predict_logits(model, signals, rr, NO_AUTOCAST)
    assert not model.training
    with torch.no_grad():
        whole = model(signals, rr)
    assert logits.shape == (EVAL_BATCH + 3, 3)
    assert torch.allclose(logits, whole, atol=1e-6)
    assert torch.equal(logits[-3:], predict_logits(model, signals[-3:], rr[-3:], NO_AUTOCAST))


def record_beats() -> BeatSet:
    """Records a (4 beats), b (3 beats) and c (4 beats) interleaved, of different levels."""
    records = ["a", "b", "c", "a", "b", "c", "a", "b", "c", "a", "c"]
    beats = beat_set(records, [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 2])
    levels = {"a": 2.0, "b": -1.0, "c": 0.5}
    signals = beats.signals + np.array([levels[r] for r in records], np.float32)[:, None]
    return BeatSet(signals.astype(np.float32), beats.labels, beats.rr, beats.records)


def test_adapted_logits_use_each_record_s_statistics_from_enough_beats() -> None:
    model, beats = dropout_model(), record_beats()
    signals, rr, _ = beats_to_tensors(beats, CPU)
    plain = predict_logits(model, signals, rr, NO_AUTOCAST)
    assert torch.equal(adapted_logits(model, beats, NO_AUTOCAST, InferenceConfig()), plain)
    unadapted = InferenceConfig(adapt="none", adapt_min_beats=2)
    assert torch.equal(adapted_logits(model, beats, NO_AUTOCAST, unadapted), plain)
    rules = InferenceConfig(adapt="batch_norm", adapt_min_beats=4)
    adapted = adapted_logits(model, beats, NO_AUTOCAST, rules)
    assert adapted.shape == (11, 3)
    a = torch.from_numpy(np.flatnonzero(beats.records == "a"))
    with record_statistics(model, signals[a], rr[a], EVAL_BATCH) as own:
        expected_a = predict_logits(own, signals[a], rr[a], NO_AUTOCAST)
    assert torch.allclose(adapted[a], expected_a, atol=1e-6)
    assert not torch.allclose(adapted[a], plain[a], atol=1e-3)
    b = torch.from_numpy(np.flatnonzero(beats.records == "b"))  # 3 beats: too few
    assert torch.allclose(adapted[b], plain[b], atol=1e-6)
    three = adapted_logits(
        model, beats, NO_AUTOCAST, InferenceConfig(adapt="batch_norm", adapt_min_beats=3)
    )
    assert not torch.allclose(three[b], plain[b], atol=1e-3)


def test_predictions_are_the_argmax_and_probabilities_the_softmax() -> None:
    model, beats = dropout_model(), record_beats()
    config = tiny_config(
        model=DROPOUT_MODEL, inference={"adapt": "batch_norm", "adapt_min_beats": 2}
    )
    signals, rr, _ = beats_to_tensors(beats, CPU)
    adapted = adapted_logits(model, beats, NO_AUTOCAST, config.inference)
    predicted = predict(model, beats, config)
    assert predicted.dtype == np.int64
    assert predicted.tolist() == adapted.argmax(dim=1).tolist()
    proba = predict_proba(model, beats)
    assert proba.dtype == np.float32 and proba.shape == (11, 3)
    plain = torch.softmax(predict_logits(model, signals, rr, NO_AUTOCAST), dim=1)
    assert np.allclose(proba, plain.numpy(), atol=1e-6)
    adapted_proba = predict_proba(model, beats, config.inference)
    assert np.allclose(adapted_proba, torch.softmax(adapted, dim=1).numpy(), atol=1e-6)
    assert not np.allclose(adapted_proba, proba, atol=1e-3)


def test_predictions_run_in_the_configured_precision() -> None:
    """Classes 0 and 1 share their output weights, 1 has a bias 0.001 higher: in fp32 every beat
    is a 1, in bf16 (8 bits of mantissa) many ties go to 0."""
    config = tiny_config()
    model = build_model(config, 3)
    output = [module for module in model.modules() if isinstance(module, nn.Linear)][-1]
    with torch.no_grad():
        output.weight[1] = output.weight[0]
        output.bias.copy_(torch.tensor([0.0, 1e-3, -10.0]))
    beats = beat_set(["a"] * 200, [0] * 200)
    beats.signals[:] = np.random.default_rng(0).normal(0, 3, beats.signals.shape)
    rounded = adapted_logits(model, beats, autocast_context("bf16", CPU), InferenceConfig())
    assert 0 in rounded.argmax(dim=1).tolist()
    assert predict(model, beats, config).tolist() == [1] * 200


def test_the_test_split_is_scored_on_its_predictions() -> None:
    model = dropout_model()
    dataset = tiny_dataset(split().train, split().valid, record_beats())
    config = tiny_config()
    metrics = evaluate_test_split(model, dataset, config)
    expected = compute_metrics(dataset.test.labels, predict(model, dataset.test, config), CLASSES)
    assert metrics.as_flat_dict() == expected.as_flat_dict()


# --- augmentation -------------------------------------------------------------------------------


def test_augmentation_is_drawn_from_the_run_generator_only_when_on() -> None:
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    assert make_augment(tiny_config(), CPU, generator) is None
    assert torch.equal(generator.get_state(), state)
    augment = make_augment(tiny_config(training={"augment": {"noise": 0.1}}), CPU, generator)
    assert isinstance(augment, BatchAugment)
    expected = int(torch.randint(2**62, (1,), generator=torch.Generator().manual_seed(5)))
    assert augment.generator.initial_seed() == expected
    assert (augment.sample_hz, augment.cfg.noise) == (125, 0.1)


def test_an_augmented_run_sees_augmented_batches() -> None:
    heard = Batches()
    config = config_of(epochs=1, batch_size=16, augment={"noise": 0.5})
    train_model(config, split(), heard)
    plain = Batches()
    train_model(config_of(epochs=1, batch_size=16), split(), plain)
    assert heard.batches[0][0] != plain.batches[0][0]  # the augment seed was drawn first
    run = prepare_run(config, split())
    assert run.augment is not None and run.augment.cfg.noise == 0.5


def drawn(seed: int) -> torch.Generator:
    """The generator a :class:`BatchAugment` of ``seed`` draws from, for the expectations."""
    return torch.Generator().manual_seed(seed)


def augment_of(seed: int, **settings: float) -> BatchAugment:
    return BatchAugment(tiny_config(training={"augment": settings}), CPU, seed)


def ramps(batch: int = 6, channels: int = 2) -> Tensor:
    """Beat i, channel c: samples 1 .. BEAT_LENGTH, times (i + 1), negated on channel 1."""
    ramp = torch.arange(1, BEAT_LENGTH + 1, dtype=torch.float32)
    signs = torch.tensor([1.0, -1.0])[:channels]
    return (torch.arange(1, batch + 1)[:, None, None] * signs[None, :, None]) * ramp


def test_a_shift_moves_each_beat_by_its_own_draw_and_fills_with_zeros() -> None:
    signals = ramps()
    out = augment_of(7, shift=5)(signals)
    moves = torch.randint(-5, 6, (6, 1, 1), generator=drawn(7)).flatten().tolist()
    assert len(set(moves)) > 2
    for beat, move in enumerate(moves):
        for t in range(BEAT_LENGTH):
            source = t - move
            inside = 0 <= source < BEAT_LENGTH
            expected = signals[beat, :, source] if inside else torch.zeros(2)
            assert torch.equal(out[beat, :, t], expected)


def test_a_shift_of_zero_samples_leaves_the_beat() -> None:
    """Seeds whose draws include a move of 0: that beat is unchanged, to its first sample."""
    signals = ramps(32, 1)
    out = augment_of(0, shift=1)(signals)
    moves = torch.randint(-1, 2, (32, 1, 1), generator=drawn(0)).flatten()
    still = torch.nonzero(moves == 0).flatten()
    assert len(still) > 0 and torch.equal(out[still], signals[still])
    right = torch.nonzero(moves == 1).flatten()
    assert len(right) > 0 and torch.equal(out[right, :, 0], torch.zeros(len(right), 1))
    assert torch.equal(out[right, :, 1:], signals[right, :, :-1])


def test_scale_multiplies_each_beat_by_one_plus_scale_times_a_uniform_in_minus_one_one() -> None:
    signals = ramps()
    out = augment_of(3, scale=0.4)(signals)
    factors = 1 + 0.4 * (2 * torch.rand((6, 1, 1), generator=drawn(3)) - 1)
    assert torch.allclose(out, signals * factors, atol=1e-6)


def test_wander_adds_a_sinusoid_of_drawn_amplitude_frequency_and_phase() -> None:
    signals = ramps()
    out = augment_of(9, baseline=0.8)(signals)
    generator = drawn(9)
    amplitude, fraction, turn = (torch.rand((6, 1, 1), generator=generator) for _ in range(3))
    hertz = 0.05 + 0.45 * fraction
    seconds = torch.arange(BEAT_LENGTH) / 125
    wave = 0.8 * amplitude * torch.sin(2 * math.pi * hertz * seconds + 2 * math.pi * turn)
    assert torch.allclose(out, signals + wave, atol=1e-5)
    assert torch.allclose(out[:, 0] - signals[:, 0], out[:, 1] - signals[:, 1], atol=1e-4)


def test_noise_adds_gaussian_draws_times_its_standard_deviation() -> None:
    signals = ramps()
    out = augment_of(4, noise=0.3)(signals)
    assert torch.allclose(out, signals + 0.3 * torch.randn((6, 2, BEAT_LENGTH), generator=drawn(4)))


def test_the_transforms_apply_in_order_from_one_generator() -> None:
    """Shift, scale, wander, noise: each draws after the one before."""
    signals = ramps()
    out = augment_of(2, shift=3, scale=0.2, baseline=0.5, noise=0.1)(signals)
    generator = drawn(2)
    moves = torch.randint(-3, 4, (6, 1, 1), generator=generator)
    source = torch.arange(BEAT_LENGTH) - moves
    inside = (source >= 0) & (source < BEAT_LENGTH)
    index = source.clamp(0, BEAT_LENGTH - 1).expand(6, 2, BEAT_LENGTH)
    expected = torch.where(inside, signals.gather(2, index), 0.0)
    expected = expected * (1 + 0.2 * (2 * torch.rand((6, 1, 1), generator=generator) - 1))
    amplitude, fraction, turn = (torch.rand((6, 1, 1), generator=generator) for _ in range(3))
    seconds = torch.arange(BEAT_LENGTH) / 125
    phase = 2 * math.pi * (0.05 + 0.45 * fraction) * seconds + 2 * math.pi * turn
    expected = expected + 0.5 * amplitude * torch.sin(phase)
    expected = expected + 0.1 * torch.randn((6, 2, BEAT_LENGTH), generator=generator)
    assert torch.allclose(out, expected, atol=1e-5)
