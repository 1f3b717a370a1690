"""Inference speed of the default network: torch eager, ``torch.compile`` and ONNX Runtime, at
batch 1 (one beat at a time, the real-time case) and batch 2048, on this CPU with 2 threads
(``--threads``);
and the parity of the default network's ONNX export on real beats.

Speed: the base network of ``config.toml``, built untrained (speed does not depend on the
weights), exported with :func:`ecgtune.export.onnx.export_onnx`; seeded random beats of its
input shape. Each measurement is repeated ``--repeats`` times and the median reported; batch 1
times ``--single-beats`` calls of one beat, batch 2048 ``--large-calls`` calls. Compilation and
session start are warm-up, outside the timings (``torch.compile``'s warm-up time is reported).
Goal: ONNX Runtime >= 1.5x torch eager at batch 1.

Parity: the same network trained one epoch on a few real records (enough for weights that
are not the initial ones), exported, then ONNX Runtime against torch on every beat of its test
split: labels that agree and the largest logit difference.

    .venv/bin/python benchmarks/bench_inference.py --raw-dir ../shared/data/mitdb
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from machine import machine, write_results

from ecgtune.config import Config, load_config
from ecgtune.data import load_dataset
from ecgtune.export import Inputs, ServedClassifier, beat_inputs, synthetic_inputs
from ecgtune.export.onnx import OnnxClassifier, check_parity, export_onnx
from ecgtune.models import build_model
from ecgtune.training import train_model

PACKAGES = ("torch", "onnxruntime", "onnx", "numpy")
REPO_ROOT = Path(__file__).resolve().parents[1]
LARGE_BATCH = 2048
CLASSES = ("N", "S", "V", "F", "Q")
PARITY_RECORDS = ["100", "106", "119", "200", "208", "209", "221", "232"]
Runner = Callable[[Inputs], object]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "config.toml")
    parser.add_argument("--raw-dir", type=Path, help="MIT-BIH records (overrides data.raw_dir)")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of each measurement")
    parser.add_argument("--single-beats", type=int, default=300, help="batch-1 calls per repeat")
    parser.add_argument("--large-calls", type=int, default=3, help="batch-2048 calls per repeat")
    parser.add_argument("--beats-per-record", type=int, default=400, help="parity data")
    parser.add_argument(
        "--output", type=Path, default=REPO_ROOT / "benchmarks/results/bench_inference.json"
    )
    return parser.parse_args()


def torch_runner(model: Callable[..., torch.Tensor]) -> Runner:
    def run(inputs: Inputs) -> object:
        with torch.inference_mode():
            return model(*(torch.from_numpy(array) for array in inputs.values()))

    return run


def onnx_runner(classifier: OnnxClassifier) -> Runner:
    return classifier.logits


def beats_per_second(run: Runner, inputs: Inputs, calls: int, repeats: int) -> list[float]:
    """``repeats`` timings of ``calls`` calls on the same inputs, as beats per second."""
    batch = len(next(iter(inputs.values())))
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            run(inputs)
        rates.append(calls * batch / (time.perf_counter() - started))
    return rates


def warm_up(run: Runner, inputs: Inputs) -> float:
    """Seconds of the first calls (compilation, session start), left out of the timings."""
    started = time.perf_counter()
    for _ in range(3):
        run(inputs)
    return time.perf_counter() - started


def measure_speed(config: Config, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    torch.manual_seed(config.seed)
    model = build_model(config, len(CLASSES)).eval()
    spec = export_onnx(model, config, CLASSES, folder / "speed.onnx")
    served = ServedClassifier(model).eval()
    runners: dict[str, Runner] = {
        "torch_eager": torch_runner(served),
        "torch_compile": torch_runner(torch.compile(served)),
        "onnxruntime": onnx_runner(OnnxClassifier(folder / "speed.onnx", threads=args.threads)),
    }
    batches = {"1": (synthetic_inputs(spec, 1), args.single_beats)}
    batches[str(LARGE_BATCH)] = (synthetic_inputs(spec, LARGE_BATCH), args.large_calls)
    figures: dict[str, Any] = {}
    for name, run in runners.items():
        for batch, (inputs, calls) in batches.items():
            warm = warm_up(run, inputs)
            rates = beats_per_second(run, inputs, calls, args.repeats)
            figures.setdefault(name, {})[f"batch_{batch}"] = {
                "beats_per_second_median": statistics.median(rates),
                "beats_per_second": rates,
                "warm_up_seconds": warm,
            }
    ratios = {
        f"{runtime}_over_eager_batch_{batch}": figures[runtime][f"batch_{batch}"][
            "beats_per_second_median"
        ]
        / figures["torch_eager"][f"batch_{batch}"]["beats_per_second_median"]
        for runtime in ("torch_compile", "onnxruntime")
        for batch in batches
    }
    return {
        "model": {"kind": config.model.kind, "parameters": spec["model"]["parameters"]},
        "input": spec["inputs"],
        "threads": args.threads,
        "figures": figures,
        "ratios": ratios,
        "goal_onnxruntime_1_5x_eager_at_batch_1": ratios["onnxruntime_over_eager_batch_1"] >= 1.5,
    }


def measure_parity(config: Config, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    quick = config.model_copy(deep=True)
    quick.data.records = PARITY_RECORDS
    quick.data.max_beats_per_record = args.beats_per_record
    quick.data.cache_dir = folder / "cache"
    quick.training.epochs = 1
    quick.training.num_threads = args.threads
    quick.training.device = "cpu"
    dataset = load_dataset(quick)
    model = train_model(quick, dataset).model.eval()
    path = folder / "parity.onnx"
    spec = export_onnx(model, quick, dataset.class_names, path)
    parity = check_parity(path, model, beat_inputs(dataset.test, spec))
    return {
        "records": PARITY_RECORDS,
        "beats_per_record": args.beats_per_record,
        "epochs": 1,
        "test_beats": parity.beats,
        "same_labels": parity.same_labels,
        "max_abs_logit_difference": parity.max_abs_diff,
        "holds": parity.holds,
    }


def main() -> None:
    args = parse_args()
    config = load_config(args.config)
    if args.raw_dir is not None:
        config.data.raw_dir = args.raw_dir
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        speed = measure_speed(config, args, Path(folder))
        parity = measure_parity(config, args, Path(folder))
    results = {
        "command": " ".join(["python", *sys.argv]),
        "measured_at": datetime.now().isoformat(timespec="seconds"),
        "machine": machine(PACKAGES),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
        "speed": speed,
        "parity": parity,
    }
    write_results(args.output, results)


if __name__ == "__main__":
    main()
