"""The trainer: one model, one config, in-memory batches, early stopping on the validation split.

Read :func:`train_model` top to bottom: it is the whole training run, written flat in the
manner of nanoGPT's ``train.py``. The splits live on the device as tensors; every epoch draws a
seeded permutation, permutes the train tensors once and walks contiguous slices of them, so no
beat is indexed from Python and no batch is gathered or allocated. Losses stay on the device:
the loop reads them back once every ``REPORT_EVERY`` batches (to feed observers and to stop on
a NaN/inf loss), not after every step. Validation and test figures come from whole-split
predictions (:mod:`ecgtune.metrics`). On CPU two runs with the same seed give identical
metrics.

Also here: :func:`predict` (labels for a whole split), and the ``train`` and ``evaluate``
commands of ``hypertune.py``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.optim import SGD, Adam, AdamW, Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, OneCycleLR, ReduceLROnPlateau

from ecgtune.config import Config, TrainingConfig
from ecgtune.console import make_console
from ecgtune.data import load_dataset
from ecgtune.data.dataset import BeatSet, Dataset
from ecgtune.data.resampling import resample_train_split
from ecgtune.errors import ConfigError, DataError
from ecgtune.metrics import ClassificationMetrics, compute_metrics
from ecgtune.models import build_model
from ecgtune.report import load_checkpoint, save_checkpoint, write_report
from ecgtune.tracking.tensorboard import log_epoch, open_writer, timestamped_run_dir

REPORT_EVERY = 10
"""Batches between two reads of the losses from the device (observer updates, NaN check)."""
EVAL_BATCH = 2048
"""Beats per forward pass when predicting a whole split (no gradients: memory is cheap)."""
PER_BATCH_SCHEDULERS = ("cosine", "onecycle")
CHECKPOINT_NAME = "best_model.pt"


@dataclass
class EpochRecord:
    """One epoch: train loss (mean over its batches), whole-validation-split figures.

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


class TrainingDiverged(RuntimeError):  # noqa: N818 (the name the search codes against)
    """The loss became NaN or infinite; the message names the epoch, the batch and the cause."""


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
        """An epoch and its validation are done."""

    def on_train_end(self, result: TrainResult) -> None:
        """The run is over and the best epoch's weights are restored."""


def train_model(
    config: Config,
    dataset: Dataset,
    observers: Sequence[TrainingObserver] = (),
    tensorboard_dir: Path | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``dataset.train``, select the epoch on ``dataset.valid``.

    ``tensorboard_dir`` is this run's own event directory (created), or None for no
    TensorBoard. Raises :class:`TrainingDiverged` on a NaN/inf loss and :class:`ConfigError`
    for a device or precision this machine lacks.
    """
    started = time.perf_counter()
    cfg = config.training
    seed_everything(config.seed)
    torch.set_num_threads(cfg.num_threads or available_cores())
    device = resolve_device(cfg.device)
    autocast = autocast_context(cfg.precision, device)
    class_names = dataset.class_names

    # The train split, resampled (train only), and the two splits as tensors on the device.
    train = resample_train_split(dataset.train, class_names, config.data.resample, config.seed)
    counts = train.class_counts(dataset.n_classes)
    train_counts = dict(zip(class_names, counts.tolist(), strict=True))
    x_train, rr_train, y_train = beats_to_tensors(train, device)
    x_valid, rr_valid, y_valid = beats_to_tensors(dataset.valid, device)
    n_train = len(train)
    n_batches = math.ceil(n_train / cfg.batch_size)
    sizes = [len(chunk) for chunk in torch.arange(n_train).tensor_split(n_batches)]
    batch_sizes = torch.tensor(sizes, dtype=torch.float32, device=device)

    # Model, loss, optimiser, schedule. The seed was set first: the weights are reproducible.
    model = build_model(config, dataset.n_classes).to(device)
    criterion = make_criterion(cfg, counts).to(device)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(cfg, optimizer, n_batches)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    generator = torch.Generator().manual_seed(config.seed)

    for observer in observers:
        observer.on_train_start(config, model, n_train)
    if config.data.resample.method != "none" or config.data.resample.drop_classes:
        before = dataset.train.class_counts(dataset.n_classes).tolist()
        for observer in observers:
            observer.on_resampled(
                config.data.resample.method,
                dict(zip(class_names, before, strict=True)),
                train_counts,
            )

    history: list[EpochRecord] = []
    best: EpochRecord | None = None
    best_state: dict[str, Tensor] = {}
    stop_reason = f"trained the full training.epochs = {cfg.epochs}"
    writer = open_writer(tensorboard_dir) if tensorboard_dir is not None else None
    try:
        for epoch in range(1, cfg.epochs + 1):
            epoch_started = time.perf_counter()
            lr = float(optimizer.param_groups[0]["lr"])
            for observer in observers:
                observer.on_epoch_start(epoch, n_batches)

            # One permutation per epoch; the batches are views of the permuted tensors.
            model.train()
            order = torch.randperm(n_train, generator=generator).to(device)
            batches = zip(
                x_train[order].tensor_split(n_batches),
                rr_train[order].tensor_split(n_batches),
                y_train[order].tensor_split(n_batches),
                strict=True,
            )
            batch_losses = torch.zeros(n_batches, device=device)
            reported = 0
            for step, (signals, rr, labels) in enumerate(batches):
                with autocast:
                    loss = criterion(model(signals, rr), labels)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                if scheduler is not None and cfg.scheduler in PER_BATCH_SCHEDULERS:
                    scheduler.step()
                batch_losses[step] = loss.detach()
                if step + 1 - reported == REPORT_EVERY or step + 1 == n_batches:
                    done = slice(reported, step + 1)
                    beats = sum(sizes[done])
                    mean_loss = float((batch_losses[done] * batch_sizes[done]).sum()) / beats
                    if not math.isfinite(mean_loss):
                        raise diverged(epoch, batch_losses, done, n_batches)
                    for observer in observers:
                        observer.on_batch_end(beats, mean_loss)
                    reported = step + 1
            train_seconds = time.perf_counter() - epoch_started
            train_loss = float((batch_losses * batch_sizes).sum()) / n_train

            # Whole-split validation: one confusion matrix, the loss over every beat at once.
            logits = predict_logits(model, x_valid, rr_valid, autocast)
            valid_loss = float(criterion(logits.float(), y_valid))
            if not math.isfinite(valid_loss):
                raise TrainingDiverged(f"epoch {epoch}: the validation loss is {valid_loss}")
            predicted = logits.argmax(dim=1).cpu().numpy()
            metrics = compute_metrics(dataset.valid.labels, predicted, class_names)
            record = EpochRecord(
                epoch=epoch,
                train_loss=train_loss,
                valid_loss=valid_loss,
                valid_metrics={"loss": valid_loss, **metrics.as_flat_dict()},
                lr=lr,
                seconds=time.perf_counter() - epoch_started,
                beats_per_second=n_train / train_seconds,
            )
            history.append(record)
            if writer is not None:
                log_epoch(writer, record)
            for observer in observers:
                observer.on_epoch_end(record)

            # Schedule on the objective, keep the best epoch's weights, stop when stalled.
            score = record.valid_metrics[cfg.objective]
            if isinstance(scheduler, ReduceLROnPlateau):
                scheduler.step(score)
            if best is None or improves(score, best.valid_metrics[cfg.objective], cfg):
                best = record
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            elif epoch - best.epoch >= cfg.early_stopping_patience:
                stop_reason = (
                    f"early stopping: validation {cfg.objective} did not improve by more than "
                    f"{cfg.min_delta:g} for {cfg.early_stopping_patience} epochs"
                )
                break
    finally:
        if writer is not None:
            writer.close()

    assert best is not None  # training.epochs >= 1
    model.load_state_dict(best_state)
    result = TrainResult(
        model=model,
        history=history,
        best_epoch=best.epoch,
        best_valid=best.valid_metrics,
        stop_reason=stop_reason,
        seconds=time.perf_counter() - started,
        train_counts=train_counts,
        class_names=class_names,
    )
    for observer in observers:
        observer.on_train_end(result)
    return result


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
    """Signals ``(n, 1, length)``, RR features ``(n, 2)`` and labels ``(n,)`` on the device."""
    signals = torch.from_numpy(beats.signals).unsqueeze(1).to(device)
    return signals, torch.from_numpy(beats.rr).to(device), torch.from_numpy(beats.labels).to(device)


def class_weights(counts: NDArray[np.int64], kind: str, beta: float) -> NDArray[np.float32]:
    """Per-class loss weights from the train split's class counts, mean 1 over present classes.

    ``inverse``: 1 / n_c. ``effective`` (Cui et al. 2019): (1 - beta) / (1 - beta^n_c), the
    inverse of the effective number of samples. Classes without train beats get weight 0.
    """
    present = counts > 0
    n = counts[present].astype(np.float64)
    raw = 1.0 / n if kind == "inverse" else (1.0 - beta) / (1.0 - beta**n)
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
    weights = torch.from_numpy(class_weights(counts, cfg.class_weights, cfg.effective_beta))
    if cfg.loss == "ce":
        return nn.CrossEntropyLoss()
    if cfg.loss == "weighted_ce":
        return nn.CrossEntropyLoss(weight=weights)
    return FocalLoss(cfg.focal_gamma, weights if cfg.focal_weighted else None)


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
            mode="min" if cfg.objective == "loss" else "max",
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


def improves(score: float, best: float, cfg: TrainingConfig) -> bool:
    """Better than the best by more than ``training.min_delta`` (lower for the loss)."""
    gain = best - score if cfg.objective == "loss" else score - best
    return gain > cfg.min_delta


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


def predict(model: nn.Module, beats: BeatSet, config: Config) -> NDArray[np.int64]:
    """Predicted class of every beat of a split, on the model's device."""
    device = next(model.parameters()).device
    signals, rr, _ = beats_to_tensors(beats, device)
    logits = predict_logits(model, signals, rr, autocast_context(config.training.precision, device))
    return logits.argmax(dim=1).cpu().numpy().astype(np.int64)


def evaluate_test_split(
    model: nn.Module, dataset: Dataset, config: Config
) -> ClassificationMetrics:
    """The test split's metrics: call it once per finished model, never to choose one."""
    predicted = predict(model, dataset.test, config)
    return compute_metrics(dataset.test.labels, predicted, dataset.class_names)


def train_command(config: Config, quiet: bool) -> int:
    """``hypertune.py train``: train the base config once, evaluate once on the test split."""
    from ecgtune.console.training import TrainingDisplay, metrics_table  # (an import cycle)

    console = make_console()
    dataset = load_dataset(config, console=console)
    display = TrainingDisplay(console, progress=not quiet, summary=True)
    tensorboard_dir = timestamped_run_dir(config.tracking.tensorboard_dir, "train")
    try:
        result = train_model(config, dataset, [display], tensorboard_dir)
    except TrainingDiverged as exc:
        raise ConfigError(f"training diverged: {exc}") from exc
    run_dir = config.run_dir / "train"
    save_checkpoint(run_dir / CHECKPOINT_NAME, result.model, config, dataset.class_names)
    metrics = evaluate_test_split(result.model, dataset, config)
    extra = {
        "split": "test",
        "best_epoch": result.best_epoch,
        "stop_reason": result.stop_reason,
        "seconds": result.seconds,
        "train_counts": result.train_counts,
        "best_valid": result.best_valid,
        "history": [asdict(record) for record in result.history],
        "checkpoint": CHECKPOINT_NAME,
        "tensorboard_dir": str(tensorboard_dir),
        "config": config.model_dump(mode="json"),
    }
    write_report(run_dir, metrics, dataset.class_names, extra)
    console.print(metrics_table(metrics, title=f"Test split ({metrics.n_beats} beats)"))
    console.print(f"Wrote {run_dir / CHECKPOINT_NAME}, report.json and confusion_matrix.png")
    return 0


def evaluate_command(run_dir: Path) -> int:
    """``hypertune.py evaluate RUN_DIR``: reload ``best_model.pt`` and its config, rebuild the
    dataset and evaluate on the test split again; writes ``evaluation.json`` (and its figure)
    beside the training report, which is left as it was."""
    from ecgtune.console.training import metrics_table

    console = make_console()
    model, config, class_names = load_checkpoint(run_dir / CHECKPOINT_NAME)
    dataset = load_dataset(config, console=console)
    if dataset.class_names != class_names:
        raise DataError(
            f"{run_dir / CHECKPOINT_NAME}: the model's classes {list(class_names)} differ from "
            f"the rebuilt dataset's {list(dataset.class_names)}"
        )
    model.to(resolve_device(config.training.device))
    metrics = evaluate_test_split(model, dataset, config)
    extra = {"split": "test", "checkpoint": str(run_dir / CHECKPOINT_NAME)}
    write_report(
        run_dir,
        metrics,
        class_names,
        extra,
        json_name="evaluation.json",
        figure_name="evaluation_confusion_matrix.png",
    )
    console.print(metrics_table(metrics, title=f"Test split ({metrics.n_beats} beats)"))
    console.print(f"Wrote {run_dir / 'evaluation.json'} (report.json is left as it was)")
    return 0
