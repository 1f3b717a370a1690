"""The trainer: one model, one config, in-memory batches, early stopping on the validation split.

Read :func:`train_model` top to bottom: it is the whole training run (set up, then per epoch:
train one epoch, validate, observe, early-stop; restore the best epoch), written flat in the
manner of nanoGPT's ``train.py``, with the pieces as small functions below it. The splits live
on the device as tensors; every epoch draws a seeded permutation, permutes the train tensors
once and walks contiguous slices of them, so no beat is indexed from Python and no batch is
gathered or allocated. Losses stay on the device: the loop reads them back once every
``REPORT_EVERY`` batches (to feed observers and to stop on a NaN/inf loss), not after every
step. Validation and test figures come from whole-split predictions (:mod:`ecgtune.metrics`).
On CPU two runs with the same seed give identical metrics.

The trainer knows no console, no tracker and no writer: everything that shows or records a
run is a :class:`TrainingObserver` (the commands hand it one :class:`ObserverFanOut`).
Also here: :func:`predict` (labels for a whole split) and :func:`evaluate_test_split`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.optim import SGD, Adam, AdamW, Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, OneCycleLR, ReduceLROnPlateau

from ecgtune.config import Config, InferenceConfig, TrainingConfig
from ecgtune.data.dataset import BeatSet, Dataset
from ecgtune.data.resampling import resample_train_split
from ecgtune.errors import ConfigError
from ecgtune.metrics import ClassificationMetrics, compute_metrics, improves, minimises
from ecgtune.models import BeatClassifier, build_model
from ecgtune.models.adapt import record_statistics
from ecgtune.models.adversary import PatientAdversary

REPORT_EVERY = 10
"""Batches between two reads of the losses from the device (observer updates, NaN check)."""
EVAL_BATCH = 2048
"""Beats per forward pass when predicting a whole split (no gradients: memory is cheap)."""
PER_BATCH_SCHEDULERS = ("cosine", "onecycle")
WANDER_HZ = (0.05, 0.5)
"""Frequencies of ``training.augment.baseline``'s sinusoid: breathing and slow electrode drift."""


@dataclass
class EpochRecord:
    """One epoch: train loss (the classification loss, mean over its batches),
    whole-validation-split figures.

    ``valid_metrics`` is flat: ``loss``, ``macro_f1``, ``accuracy``, ``balanced_accuracy``,
    ``f1_N``, ... (see :meth:`ClassificationMetrics.as_flat_dict`). ``lr`` is the learning rate
    the epoch started with; ``beats_per_second`` counts training only (validation excluded),
    ``seconds`` the whole epoch.
    """

    epoch: int
    train_loss: float
    valid_loss: float
    valid_metrics: dict[str, float]
    lr: float
    seconds: float
    beats_per_second: float
    adversary_loss: float | None = None
    """``training.patient_adversary``'s record cross-entropy (mean over the epoch's beats),
    apart from ``train_loss``, which is the classification loss alone; None without it."""


@dataclass
class TrainResult:
    """A finished run; ``model`` holds the best epoch's weights (not the last epoch's)."""

    model: nn.Module
    history: list[EpochRecord]
    best_epoch: int
    best_valid: dict[str, float]
    stop_reason: str
    seconds: float
    train_counts: dict[str, int]
    class_names: tuple[str, ...]
    pruned_at: int | None = None
    """The epoch after which an observer ended the run (:class:`StopTraining`), or None."""
    out_of_fold: tuple[BeatSet, NDArray[np.int64]] | None = None
    """With ``search.folds``: every train and validation beat and its out-of-fold prediction
    (:func:`ecgtune.search.folds.predict_out_of_fold`); None for a single run."""


class TrainingDiverged(RuntimeError):  # noqa: N818 (the name the search codes against)
    """The loss became NaN or infinite; the message names the epoch, the batch and the cause."""


class StopTraining(Exception):  # noqa: N818 (a request to stop, not an error)
    """Raised by an observer's ``on_epoch_end`` to end the run after that epoch (a search's
    pruner does): :func:`train_model` stops as early stopping does, restoring the best epoch
    so far, with ``reason`` as the run's stop reason and the epoch as ``pruned_at``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TrainingObserver:
    """Hooks into a training run; every method is a no-op, subclasses override what they need."""

    def on_train_start(self, config: Config, model: nn.Module, n_train: int) -> None:
        """Before the first epoch; ``n_train`` beats in the (resampled) train split."""

    def on_resampled(self, method: str, before: dict[str, int], after: dict[str, int]) -> None:
        """The train split was resampled or had classes dropped: beats per class."""

    def on_epoch_start(self, epoch: int, n_batches: int) -> None:
        """An epoch of ``n_batches`` batches begins (epochs count from 1)."""

    def on_batch_end(self, beats: int, loss: float) -> None:
        """Every ``REPORT_EVERY`` batches and at the end of the epoch: the beats trained since
        the last call and their mean loss (one device sync per call, not per batch)."""

    def on_epoch_end(self, record: EpochRecord) -> None:
        """An epoch and its validation are done; raise :class:`StopTraining` to end the run
        here."""

    def on_train_end(self, result: TrainResult) -> None:
        """The run is over and the best epoch's weights are restored."""


class ObserverFanOut(TrainingObserver):
    """Several observers heard as one, in order: the console, MLflow and TensorBoard of a run."""

    def __init__(self, observers: Sequence[TrainingObserver]) -> None:
        self.observers = list(observers)

    def on_train_start(self, config: Config, model: nn.Module, n_train: int) -> None:
        for observer in self.observers:
            observer.on_train_start(config, model, n_train)

    def on_resampled(self, method: str, before: dict[str, int], after: dict[str, int]) -> None:
        for observer in self.observers:
            observer.on_resampled(method, before, after)

    def on_epoch_start(self, epoch: int, n_batches: int) -> None:
        for observer in self.observers:
            observer.on_epoch_start(epoch, n_batches)

    def on_batch_end(self, beats: int, loss: float) -> None:
        for observer in self.observers:
            observer.on_batch_end(beats, loss)

    def on_epoch_end(self, record: EpochRecord) -> None:
        for observer in self.observers:
            observer.on_epoch_end(record)

    def on_train_end(self, result: TrainResult) -> None:
        for observer in self.observers:
            observer.on_train_end(result)


def train_model(
    config: Config, dataset: Dataset, observer: TrainingObserver | None = None
) -> TrainResult:
    """Train ``config.model`` on ``dataset.train``, select the epoch on ``dataset.valid``.

    ``observer`` (one, or an :class:`ObserverFanOut` of several) hears every step; the trainer
    knows no writer and no console; it may end the run after an epoch by raising
    :class:`StopTraining`, which stops it as early stopping does (both apply). Raises
    :class:`TrainingDiverged` on a NaN/inf loss and :class:`ConfigError` for a device or
    precision this machine lacks.
    """
    started = time.perf_counter()
    observer = observer or TrainingObserver()
    cfg = config.training
    run = prepare_run(config, dataset)
    observer.on_train_start(config, run.model, run.n_train)
    if run.resampled_from is not None:
        observer.on_resampled(config.data.resample.method, run.resampled_from, run.train_counts)

    history: list[EpochRecord] = []
    stopper = EarlyStopping(cfg)
    pruned_at: int | None = None
    for epoch in range(1, cfg.epochs + 1):
        epoch_started = time.perf_counter()
        lr = float(run.optimizer.param_groups[0]["lr"])
        observer.on_epoch_start(epoch, run.n_batches)
        train_loss, adversary_loss = train_one_epoch(run, epoch, observer)
        train_seconds = time.perf_counter() - epoch_started
        valid_loss, valid_metrics = validate(run, dataset.valid, epoch)
        record = EpochRecord(
            epoch=epoch,
            train_loss=train_loss,
            valid_loss=valid_loss,
            valid_metrics=valid_metrics,
            lr=lr,
            seconds=time.perf_counter() - epoch_started,
            beats_per_second=run.n_train / train_seconds,
            adversary_loss=adversary_loss,
        )
        history.append(record)
        patience_over = stopper.update(record, run.model)
        try:
            observer.on_epoch_end(record)
        except StopTraining as stop:
            pruned_at, stopper.reason = epoch, stop.reason
            break
        if isinstance(run.scheduler, ReduceLROnPlateau):
            run.scheduler.step(valid_metrics[cfg.objective])
        if patience_over:
            break

    assert stopper.best is not None  # training.epochs >= 1
    run.model.load_state_dict(stopper.best_state)
    result = TrainResult(
        model=run.model,
        history=history,
        best_epoch=stopper.best.epoch,
        best_valid=stopper.best.valid_metrics,
        stop_reason=stopper.reason,
        seconds=time.perf_counter() - started,
        train_counts=run.train_counts,
        class_names=dataset.class_names,
        pruned_at=pruned_at,
    )
    observer.on_train_end(result)
    return result


@dataclass
class TrainingRun:
    """Everything one training run works with, set up once by :func:`prepare_run`: the
    (resampled) train split and the validation split as tensors on the device, the model (and
    the training-only patient adversary), the loss, the optimiser, its schedule, the batch
    layout and the train batches' augmentation."""

    config: Config
    class_names: tuple[str, ...]
    device: torch.device
    autocast: AbstractContextManager[Any]
    train: tuple[Tensor, Tensor, Tensor]
    train_records: Tensor
    valid: tuple[Tensor, Tensor, Tensor]
    train_counts: dict[str, int]
    resampled_from: dict[str, int] | None
    batch_sizes: list[int]
    model: BeatClassifier
    adversary: PatientAdversary | None
    criterion: nn.Module
    optimizer: Optimizer
    scheduler: LRScheduler | ReduceLROnPlateau | None
    scaler: torch.amp.GradScaler
    generator: torch.Generator
    augment: BatchAugment | None

    @property
    def n_train(self) -> int:
        return sum(self.batch_sizes)

    @property
    def n_batches(self) -> int:
        return len(self.batch_sizes)


def prepare_run(config: Config, dataset: Dataset) -> TrainingRun:
    """Seed, pick the device, resample the train split (train only), move both splits to the
    device and build the model, loss, optimiser and schedule. The seed is set first, so the
    weights and every batch are reproducible."""
    cfg = config.training
    seed_everything(config.seed)
    torch.set_num_threads(cfg.num_threads or available_cores())
    device = resolve_device(cfg.device)
    class_names = dataset.class_names
    train = resample_train_split(dataset.train, class_names, config.data.resample, config.seed)
    counts = train.class_counts(dataset.n_classes)
    resample = config.data.resample
    resampled = resample.method != "none" or bool(resample.drop_classes)
    before = dataset.train.class_counts(dataset.n_classes).tolist()
    n_batches = math.ceil(len(train) / cfg.batch_size)
    model = build_model(config, dataset.n_classes).to(device)
    train_tensors = beats_to_tensors(train, device)
    names, records = np.unique(train.records, return_inverse=True)
    adversary = make_adversary(config, model, train_tensors[0], len(names))
    optimizer = make_optimizer(
        cfg, nn.ModuleList([model] if adversary is None else [model, adversary])
    )
    generator = torch.Generator().manual_seed(config.seed)
    return TrainingRun(
        config=config,
        class_names=class_names,
        device=device,
        autocast=autocast_context(cfg.precision, device),
        train=train_tensors,
        train_records=torch.from_numpy(records.reshape(-1)).to(device),
        valid=beats_to_tensors(dataset.valid, device),
        train_counts=dict(zip(class_names, counts.tolist(), strict=True)),
        resampled_from=dict(zip(class_names, before, strict=True)) if resampled else None,
        batch_sizes=[len(chunk) for chunk in torch.arange(len(train)).tensor_split(n_batches)],
        model=model,
        adversary=adversary,
        criterion=make_criterion(cfg, counts).to(device),
        optimizer=optimizer,
        scheduler=make_scheduler(cfg, optimizer, n_batches),
        scaler=torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16"),
        generator=generator,
        augment=make_augment(config, device, generator),
    )


def train_one_epoch(
    run: TrainingRun, epoch: int, observer: TrainingObserver
) -> tuple[float, float | None]:
    """One pass over a seeded permutation of the train split; returns the mean classification
    loss and the patient adversary's mean loss (None without it). The optimiser steps on their
    sum; the observer hears the classification loss.

    The batches are views of the permuted tensors; ``training.augment``, when on, transforms
    each into a new tensor (the train split itself is never changed, and validation, test and
    prediction never augmented). Losses stay on the device and are read back every
    ``REPORT_EVERY`` batches, to feed the observer and to stop on a NaN/inf loss.
    """
    cfg = run.config.training
    model, optimizer, scaler = run.model, run.optimizer, run.scaler
    model.train()
    order = torch.randperm(run.n_train, generator=run.generator).to(run.device)
    permuted = (tensor[order] for tensor in (*run.train, run.train_records))
    batches = zip(*(tensor.tensor_split(run.n_batches) for tensor in permuted), strict=True)
    sizes = torch.tensor(run.batch_sizes, dtype=torch.float32, device=run.device)
    batch_losses = torch.zeros(run.n_batches, device=run.device)
    adversary_losses = torch.zeros(run.n_batches, device=run.device)
    reported = 0
    for step, (signals, rr, labels, records) in enumerate(batches):
        if run.augment is not None:
            signals = run.augment(signals)
        with run.autocast:
            loss, adversary_loss = batch_losses_of(run, signals, rr, labels, records)
        optimizer.zero_grad(set_to_none=True)
        total = loss if adversary_loss is None else loss + adversary_loss
        torch.autograd.backward(scaler.scale(total))
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if run.scheduler is not None and cfg.scheduler in PER_BATCH_SCHEDULERS:
            run.scheduler.step()
        batch_losses[step] = loss.detach()
        if adversary_loss is not None:
            adversary_losses[step] = adversary_loss.detach()
        if step + 1 - reported == REPORT_EVERY or step + 1 == run.n_batches:
            done = slice(reported, step + 1)
            beats = sum(run.batch_sizes[done])
            mean_loss = float((batch_losses[done] * sizes[done]).sum()) / beats
            if not math.isfinite(mean_loss):
                raise diverged(epoch, batch_losses, done, run.n_batches)
            observer.on_batch_end(beats, mean_loss)
            reported = step + 1
    train_loss = float((batch_losses * sizes).sum()) / run.n_train
    if run.adversary is None:
        return train_loss, None
    return train_loss, float((adversary_losses * sizes).sum()) / run.n_train


def batch_losses_of(
    run: TrainingRun, signals: Tensor, rr: Tensor, labels: Tensor, records: Tensor
) -> tuple[Tensor, Tensor | None]:
    """The classification loss, and the patient adversary's record cross-entropy when on (its
    gradient reaches the encoder reversed: :mod:`ecgtune.models.adversary`): kept apart, so
    that the train loss reported is the classification loss alone."""
    if run.adversary is None:
        plain: Tensor = run.criterion(run.model(signals, rr), labels)
        return plain, None
    features, logits = run.model.features_and_logits(signals, rr)
    loss: Tensor = run.criterion(logits, labels)
    return loss, F.cross_entropy(run.adversary(features), records)


def validate(run: TrainingRun, valid: BeatSet, epoch: int) -> tuple[float, dict[str, float]]:
    """Whole-split validation: the loss over every beat at once and one confusion matrix."""
    signals, rr, labels = run.valid
    logits = predict_logits(run.model, signals, rr, run.autocast)
    loss = float(run.criterion(logits.float(), labels))
    if not math.isfinite(loss):
        raise TrainingDiverged(f"epoch {epoch}: the validation loss is {loss}")
    predicted = logits.argmax(dim=1).cpu().numpy()
    metrics = compute_metrics(valid.labels, predicted, run.class_names)
    return loss, {"loss": loss, **metrics.as_flat_dict()}


class EarlyStopping:
    """Keeps the best epoch (its record and a copy of its weights) by ``training.objective``
    and says when ``early_stopping_patience`` epochs have passed without an improvement of
    more than ``min_delta``."""

    def __init__(self, cfg: TrainingConfig) -> None:
        self.cfg = cfg
        self.best: EpochRecord | None = None
        self.best_state: dict[str, Tensor] = {}
        self.reason = f"trained the full training.epochs = {cfg.epochs}"

    def update(self, record: EpochRecord, model: nn.Module) -> bool:
        """Take one finished epoch; True when training should stop now."""
        cfg, objective = self.cfg, self.cfg.objective
        score = record.valid_metrics[objective]
        if self.best is None or improves(
            score, self.best.valid_metrics[objective], objective, cfg.min_delta
        ):
            self.best = record
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        if record.epoch - self.best.epoch < cfg.early_stopping_patience:
            return False
        self.reason = (
            f"early stopping: validation {objective} did not improve by more than "
            f"{cfg.min_delta:g} for {cfg.early_stopping_patience} epochs"
        )
        return True


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and every GPU) and numpy: weights, dropout and batches repeat."""
    torch.manual_seed(seed)
    np.random.seed(seed)


def available_cores() -> int:
    """Cores this process may run on (``training.num_threads = 0``)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_device(name: str) -> torch.device:
    """``auto``: cuda, then mps, then cpu; a named device must exist here."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise ConfigError(
            f"training.device = {name!r}: no {name} device on this machine; use 'auto' or 'cpu'"
        )
    return torch.device(name)


def autocast_context(precision: str, device: torch.device) -> AbstractContextManager[Any]:
    """Autocast for ``training.precision``; fp16 needs CUDA (with a GradScaler), bf16 a device
    that supports it (any CPU; CUDA from Ampere on)."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"training.precision = 'fp16' needs a CUDA device (this run uses {device.type}); "
            f"use 'bf16' or 'fp32'"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("training.precision = 'bf16': this GPU has no bf16; use 'fp16'")
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=precision != "fp32")


def beats_to_tensors(beats: BeatSet, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Signals ``(n, channels, length)``, RR features ``(n, len(RR_COLUMNS))`` and labels
    ``(n,)`` on the device. The channels are the signals' own: one for the (n, length)
    layout of ``BeatSet.signals``, ``channels`` for an (n, channels, length) one."""
    signals = torch.from_numpy(beats.signals)
    signals = signals.reshape(len(beats), -1, signals.shape[-1]).to(device)
    return signals, torch.from_numpy(beats.rr).to(device), torch.from_numpy(beats.labels).to(device)


class BatchAugment:
    """``training.augment``: random per-beat transforms of a train batch, vectorised on its
    device and drawn from a generator seeded by the run's, so two runs with one seed augment
    alike. In order: a zero-filled time shift of up to ``shift`` samples either way, amplitude
    scaling by U(1 - scale, 1 + scale), a sinusoid of amplitude U(0, baseline), frequency
    U(:data:`WANDER_HZ`) (``data.target_hz`` sets the time axis) and random phase (baseline
    wander), Gaussian noise of standard deviation ``noise``."""

    def __init__(self, config: Config, device: torch.device, seed: int) -> None:
        self.cfg = config.training.augment
        self.sample_hz = config.data.target_hz
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, signals: Tensor) -> Tensor:
        cfg, batch = self.cfg, signals.shape[0]
        if cfg.shift:
            signals = self._shifted(signals)
        if cfg.scale:
            signals = signals * (1 + cfg.scale * (2 * self._uniform(batch, 1, 1) - 1))
        if cfg.baseline:
            signals = signals + self._wander(signals)
        if cfg.noise:
            noise = torch.randn(signals.shape, generator=self.generator, device=signals.device)
            signals = signals + cfg.noise * noise
        return signals

    def _uniform(self, *shape: int) -> Tensor:
        return torch.rand(shape, generator=self.generator, device=self.generator.device)

    def _shifted(self, signals: Tensor) -> Tensor:
        """Each beat moved by its own whole number of samples; vacated samples are zero."""
        batch, channels, length = signals.shape
        shift = self.cfg.shift
        moves = torch.randint(
            -shift, shift + 1, (batch, 1, 1), generator=self.generator, device=signals.device
        )
        source = torch.arange(length, device=signals.device) - moves
        valid = (source >= 0) & (source < length)
        index = source.clamp(0, length - 1).expand(batch, channels, length)
        return torch.where(valid, signals.gather(2, index), torch.zeros_like(signals))

    def _wander(self, signals: Tensor) -> Tensor:
        """A low-frequency sinusoid per beat, the same on every channel."""
        batch, length = signals.shape[0], signals.shape[-1]
        amplitude = self.cfg.baseline * self._uniform(batch, 1, 1)
        low, high = WANDER_HZ
        hertz = low + (high - low) * self._uniform(batch, 1, 1)
        phase = 2 * math.pi * self._uniform(batch, 1, 1)
        seconds = torch.arange(length, device=signals.device) / self.sample_hz
        return amplitude * torch.sin(2 * math.pi * hertz * seconds + phase)


def make_augment(config: Config, device: torch.device, run: torch.Generator) -> BatchAugment | None:
    """The run's augmentation, or None when every transform is off. Its seed is drawn from the
    run's generator only when it is on, so a run without augmentation batches as before."""
    if not config.training.augment.active:
        return None
    seed = int(torch.randint(2**62, (1,), generator=run))
    return BatchAugment(config, device, seed)


def class_weights(
    counts: NDArray[np.int64], kind: str, beta: float, cap: float = 0.0
) -> NDArray[np.float32]:
    """Per-class loss weights from the train split's class counts, mean 1 over present classes.

    ``inverse``: 1 / n_c. ``effective`` (Cui et al. 2019): (1 - beta) / (1 - beta^n_c), the
    inverse of the effective number of samples. A ``cap`` (0 = none) limits every weight to
    ``cap`` times the lightest before the mean is taken to 1. Classes without train beats get
    weight 0.
    """
    present = counts > 0
    n = counts[present].astype(np.float64)
    raw = 1.0 / n if kind == "inverse" else (1.0 - beta) / (1.0 - beta**n)
    if cap:
        raw = np.minimum(raw, cap * raw.min())
    weights = np.zeros(len(counts), dtype=np.float32)
    weights[present] = raw / raw.mean()
    return weights


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by ``(1 - p_true)^gamma``, so that
    well-classified beats count less; optional per-class weights; mean over the batch."""

    weight: Tensor | None

    def __init__(self, gamma: float, weight: Tensor | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        loss = -((1.0 - log_p.exp()) ** self.gamma) * log_p
        if self.weight is not None:
            loss = loss * self.weight[target]
        return loss.mean()


def make_criterion(cfg: TrainingConfig, counts: NDArray[np.int64]) -> nn.Module:
    """``training.loss``; class weights come from the (resampled) train split's counts."""
    weights = torch.from_numpy(
        class_weights(counts, cfg.class_weights, cfg.effective_beta, cfg.class_weight_cap)
    )
    if cfg.loss == "ce":
        return nn.CrossEntropyLoss()
    if cfg.loss == "weighted_ce":
        return nn.CrossEntropyLoss(weight=weights)
    return FocalLoss(cfg.focal_gamma, weights if cfg.focal_weighted else None)


def make_adversary(
    config: Config, model: BeatClassifier, signals: Tensor, n_records: int
) -> PatientAdversary | None:
    """``training.patient_adversary``'s record head on the encoder's features, or None (off);
    the features' width is read off one beat in eval mode, which changes no statistic."""
    cfg = config.training
    if cfg.patient_adversary == 0:
        return None
    if n_records < 2:
        raise ConfigError(
            f"training.patient_adversary = {cfg.patient_adversary:g} trains against telling "
            f"the training records apart, and the train split holds {n_records} record: "
            f"nothing to tell apart; set it to 0 or give data.records more DS1 records"
        )
    model.eval()
    with torch.no_grad():
        width = model.encoder(signals[:1]).shape[1]
    model.train()
    head = PatientAdversary(
        width, n_records, cfg.adversary_hidden, config.model.activation, cfg.patient_adversary
    )
    return head.to(signals.device)


def make_optimizer(cfg: TrainingConfig, model: nn.Module) -> Optimizer:
    params = model.parameters()
    if cfg.optimizer == "sgd":
        return SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    optimizer_class = Adam if cfg.optimizer == "adam" else AdamW
    return optimizer_class(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(
    cfg: TrainingConfig, optimizer: Optimizer, steps_per_epoch: int
) -> LRScheduler | ReduceLROnPlateau | None:
    """``plateau`` steps once per epoch on the validation objective; ``cosine`` and
    ``onecycle`` step after every batch over ``training.epochs`` epochs."""
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.scheduler == "plateau":
        return ReduceLROnPlateau(
            optimizer,
            mode="min" if minimises(cfg.objective) else "max",
            factor=cfg.plateau_factor,
            patience=cfg.plateau_patience,
            threshold=cfg.min_delta,
            threshold_mode="abs",
        )
    if cfg.scheduler == "cosine":
        return CosineAnnealingLR(optimizer, T_max=total_steps)
    if cfg.scheduler == "onecycle":
        return OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total_steps)
    return None


def diverged(epoch: int, batch_losses: Tensor, done: slice, n_batches: int) -> TrainingDiverged:
    """Name the first batch among ``done`` whose loss is not finite."""
    losses = batch_losses[done].tolist()
    index, value = next((i, v) for i, v in enumerate(losses) if not math.isfinite(v))
    return TrainingDiverged(
        f"epoch {epoch}, batch {done.start + index + 1}/{n_batches}: the training loss is {value} "
        f"(lower training.lr, set training.grad_clip or use training.precision = 'fp32')"
    )


def predict_logits(
    model: nn.Module, signals: Tensor, rr: Tensor, autocast: AbstractContextManager[Any]
) -> Tensor:
    """Logits of every beat, ``EVAL_BATCH`` beats per forward pass, in eval mode."""
    model.eval()
    with torch.inference_mode(), autocast:
        chunks = [
            model(signals[start : start + EVAL_BATCH], rr[start : start + EVAL_BATCH])
            for start in range(0, len(signals), EVAL_BATCH)
        ]
    return torch.cat(chunks)


def adapted_logits(
    model: nn.Module,
    beats: BeatSet,
    autocast: AbstractContextManager[Any],
    inference: InferenceConfig,
) -> Tensor:
    """Logits of every beat of records the model was not trained on, as ``[inference]`` says:
    with ``adapt = "batch_norm"``, each record's beats (``beats.records``) go through the model
    with batch-norm statistics of that record's own beats (:mod:`ecgtune.models.adapt`), a
    record with fewer than ``adapt_min_beats`` beats through the training statistics."""
    device = next(model.parameters()).device
    signals, rr, _ = beats_to_tensors(beats, device)
    if inference.adapt == "none":
        return predict_logits(model, signals, rr, autocast)
    groups = [np.flatnonzero(beats.records == record) for record in np.unique(beats.records)]
    chunks = [
        one_record_logits(model, signals[index], rr[index], autocast, inference)
        for index in (torch.from_numpy(group).to(device) for group in groups)
    ]
    order = torch.from_numpy(np.argsort(np.concatenate(groups))).to(device)
    return torch.cat(chunks)[order]


def one_record_logits(
    model: nn.Module,
    signals: Tensor,
    rr: Tensor,
    autocast: AbstractContextManager[Any],
    inference: InferenceConfig,
) -> Tensor:
    """One record's logits through the model adapted to it (or not: too few beats)."""
    if len(signals) < inference.adapt_min_beats:
        return predict_logits(model, signals, rr, autocast)
    with record_statistics(model, signals, rr, EVAL_BATCH) as adapted:
        return predict_logits(adapted, signals, rr, autocast)


def predict(model: nn.Module, beats: BeatSet, config: Config) -> NDArray[np.int64]:
    """Predicted class of every beat of a split, on the model's device (``[inference]``)."""
    device = next(model.parameters()).device
    autocast = autocast_context(config.training.precision, device)
    logits = adapted_logits(model, beats, autocast, config.inference)
    return logits.argmax(dim=1).cpu().numpy().astype(np.int64)


def evaluate_test_split(
    model: nn.Module, dataset: Dataset, config: Config
) -> ClassificationMetrics:
    """The test split's metrics: call it once per finished model, never to choose one."""
    predicted = predict(model, dataset.test, config)
    return compute_metrics(dataset.test.labels, predicted, dataset.class_names)


def predict_proba(
    model: nn.Module, beats: BeatSet, inference: InferenceConfig | None = None
) -> NDArray[np.float32]:
    """Class probabilities ``(n, K)`` of every beat, on the model's device and in fp32 whatever
    ``training.precision`` the model was trained with (fp16 autocast exists on CUDA only, and
    a saved model's weights are fp32): evaluation and prediction of a saved model on the CPU,
    adapted to each record as ``inference`` says (default: not adapted)."""
    device = next(model.parameters()).device
    rules = inference or InferenceConfig()
    logits = adapted_logits(model, beats, autocast_context("fp32", device), rules)
    return torch.softmax(logits.float(), dim=1).cpu().numpy()
