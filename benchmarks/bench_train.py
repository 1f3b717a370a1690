"""Training throughput of the trainer against a bare loop, and (``--quality``) what
``hypertune.py train`` reaches with the default config.

Throughput: the default model (``config.toml``) trains on beats of a few real records, one
epoch at a time, with :func:`ecgtune.training.train_model` (its per-epoch training beats/s,
validation excluded) and with a bare loop in the same process: the same model, loss and
optimiser, one pre-made batch, nothing but forward, backward and step. The two alternate
``--repeats`` times; the medians and their ratio are reported (goal: trainer / bare >= 0.9).

Quality: ``train_command`` on the default config (all 48 records, intra split): test macro-F1,
accuracy, per-class F1, wall time and epochs. Slow on a laptop CPU, hence a separate flag.

    .venv/bin/python benchmarks/bench_train.py --raw-dir ../shared/data/mitdb [--quality]
    (add --no-throughput to run the quality part alone)

Each part is written to ``--output`` with its own command, date and machine; a part not
measured in this run is kept from the file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from machine import machine, write_results

from ecgtune.commands.train import train_command
from ecgtune.config import Config, load_config
from ecgtune.data import load_dataset
from ecgtune.data.dataset import Dataset
from ecgtune.models import build_model
from ecgtune.training import (
    TrainingObserver,
    beats_to_tensors,
    make_criterion,
    make_optimizer,
    resolve_device,
    train_model,
)

PACKAGES = ("torch", "numpy")
REPO_ROOT = Path(__file__).resolve().parents[1]
THROUGHPUT_RECORDS = ["100", "106", "119", "200", "208", "209", "221", "232"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "config.toml")
    parser.add_argument("--raw-dir", type=Path, help="MIT-BIH records (overrides data.raw_dir)")
    parser.add_argument("--beats-per-record", type=int, default=500, help="throughput data")
    parser.add_argument("--repeats", type=int, default=7, help="trainer/bare alternations")
    parser.add_argument("--quality", action="store_true", help="also run the default `train`")
    parser.add_argument("--no-throughput", action="store_true", help="skip the throughput part")
    parser.add_argument(
        "--output", type=Path, default=REPO_ROOT / "benchmarks/results/bench_train.json"
    )
    return parser.parse_args()


def base_config(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    if args.raw_dir is not None:
        config.data.raw_dir = args.raw_dir
    return config


def throughput_config(config: Config, args: argparse.Namespace, cache_dir: Path) -> Config:
    """The default model and training settings on a few records, one epoch per call."""
    quick = config.model_copy(deep=True)
    quick.data.records = THROUGHPUT_RECORDS
    quick.data.max_beats_per_record = args.beats_per_record
    quick.data.cache_dir = cache_dir
    quick.training.epochs = 1
    return quick


class EpochClock(TrainingObserver):
    """Wall-clock seconds from an epoch's start to its last batch (validation excluded)."""

    def on_epoch_start(self, epoch: int, n_batches: int) -> None:
        self.started = time.perf_counter()

    def on_batch_end(self, beats: int, loss: float) -> None:
        self.ended = time.perf_counter()


def trainer_speed(config: Config, dataset: Dataset) -> float:
    """Training beats/s of one epoch of the real trainer."""
    clock = EpochClock()
    result = train_model(config, dataset, clock)
    return sum(result.train_counts.values()) / (clock.ended - clock.started)


def bare_speed(config: Config, dataset: Dataset, steps: int) -> float:
    """Beats/s of forward, backward and step on one pre-made batch, nothing else."""
    device = resolve_device(config.training.device)
    model = build_model(config, dataset.n_classes).to(device).train()
    criterion = make_criterion(config.training, dataset.train.class_counts(dataset.n_classes))
    criterion = criterion.to(device)
    optimizer = make_optimizer(config.training, model)
    signals, rr, labels = beats_to_tensors(dataset.train, device)
    batch = slice(0, config.training.batch_size)
    signals, rr, labels = signals[batch].clone(), rr[batch].clone(), labels[batch].clone()
    started = time.perf_counter()
    for _ in range(steps):
        loss = criterion(model(signals, rr), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    loss.item()
    return steps * len(labels) / (time.perf_counter() - started)


def measure_throughput(config: Config, args: argparse.Namespace) -> dict[str, Any]:
    """Alternate trainer and bare loop; medians and best runs (a shared machine slows some
    runs of either several-fold: the best run is each one's speed when left alone)."""
    with tempfile.TemporaryDirectory() as cache:
        quick = throughput_config(config, args, Path(cache))
        dataset = load_dataset(quick)
    steps = len(dataset.train) // quick.training.batch_size
    load_before = os.getloadavg()[0]
    trainer_speed(quick, dataset)  # warm-up: allocator, kernels, thread pool
    bare_speed(quick, dataset, steps)
    trainer, bare = [], []
    for repeat in range(args.repeats):
        trainer.append(trainer_speed(quick, dataset))
        bare.append(bare_speed(quick, dataset, steps))
        print(f"repeat {repeat + 1}: trainer {trainer[-1]:.0f} beats/s, bare {bare[-1]:.0f}")
    return {
        "records": THROUGHPUT_RECORDS,
        "train_beats": len(dataset.train),
        "batch_size": quick.training.batch_size,
        "optimizer": quick.training.optimizer,
        "loss": quick.training.loss,
        "threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
        "trainer_beats_per_second": trainer,
        "bare_beats_per_second": bare,
        "trainer_median": statistics.median(trainer),
        "bare_median": statistics.median(bare),
        "ratio_of_medians": statistics.median(trainer) / statistics.median(bare),
        "trainer_best": max(trainer),
        "bare_best": max(bare),
        "ratio_of_best": max(trainer) / max(bare),
    }


def measure_quality(config: Config) -> dict[str, Any]:
    """``hypertune.py train`` on the default config, outputs in a temporary folder."""
    with tempfile.TemporaryDirectory() as output:
        config = config.model_copy(deep=True)
        config.tracking.output_dir = Path(output)
        config.tracking.tensorboard_dir = Path(output) / "logs"
        config.tracking.mlflow_uri = f"sqlite:///{Path(output) / 'mlflow.db'}"
        started = time.perf_counter()
        train_command(config, quiet=True)
        wall = time.perf_counter() - started
        (run_dir,) = config.run_dir.glob("train-*")
        report = json.loads((run_dir / "report.json").read_text())
    metrics = report["metrics"]
    return {
        "split": config.data.split,
        "wall_seconds": wall,
        "training_seconds": report["seconds"],
        "epochs": len(report["history"]),
        "best_epoch": report["best_epoch"],
        "stop_reason": report["stop_reason"],
        "test_beats": metrics["n_beats"],
        "test_macro_f1": metrics["macro_f1"],
        "test_accuracy": metrics["accuracy"],
        "test_balanced_accuracy": metrics["balanced_accuracy"],
        "test_f1_per_class": {name: row["f1"] for name, row in metrics["per_class"].items()},
        "test_aami": metrics["aami"],
        "best_valid_macro_f1": report["best_valid"]["macro_f1"],
    }


def main() -> None:
    """Measure the parts asked for; the other part already in ``--output`` is kept, so each
    part carries its own command, machine and date."""
    args = parse_args()
    config = base_config(args)
    results: dict[str, Any] = json.loads(args.output.read_text()) if args.output.is_file() else {}
    about = {
        "command": " ".join(["python", *sys.argv]),
        "measured_at": datetime.now().isoformat(timespec="seconds"),
        "machine": machine(PACKAGES),
    }
    if not args.no_throughput:
        results["throughput"] = about | measure_throughput(config, args)
    if args.quality:
        results["quality"] = about | measure_quality(config)
    write_results(args.output, results)


if __name__ == "__main__":
    main()
