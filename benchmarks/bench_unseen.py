"""Speed of ``evaluate --database`` over all of mitdb and of ``predict`` with the detector.

* ``evaluate RUN_DIR --database RAW_DIR --first-channel``: every annotated beat of the 48
  records (109,494), reading, resampling, cutting, classifying and the report included; goal
  under 20 s on the 2-core CPU.
* ``predict RUN_DIR 100`` on record 100 (30 min 5 s) copied without its annotation file, so the
  beats come from wfdb's XQRS detector; seconds and x real time; goal >= 100x. The detector's
  own share is timed apart.

Both are timed twice: as a user runs them, a new ``python hypertune.py ...`` process (torch's
import included), and inside this process through ``ecgtune.cli.main`` (imports done), the
medians of ``--repeats`` runs. The model is ``--run-dir``'s, or else the base network of
``--config`` (default ``config.toml``) trained for one epoch on a few records (speed does not
depend on the weights).

    .venv/bin/python benchmarks/bench_unseen.py --raw-dir ../shared/data/mitdb [--run-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import torch
from machine import machine, write_results

from ecgtune.cli import main as cli_main
from ecgtune.config import load_config
from ecgtune.data import load_dataset
from ecgtune.data.detect import detect_beats
from ecgtune.data.records import read_named_leads
from ecgtune.report import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from ecgtune.training import train_model

REPO_ROOT = Path(__file__).resolve().parents[1]
HYPERTUNE = REPO_ROOT / "hypertune.py"
TRAIN_RECORDS = ["100", "106", "119", "200", "208", "209", "221", "232"]
PACKAGES = ("torch", "numpy", "scipy", "wfdb", "rich")
PREDICTED_RECORD = "100"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw-dir", type=Path, required=True, help="the 48 MIT-BIH records")
    parser.add_argument("--run-dir", type=Path, help="a run holding best_model.pt")
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "config.toml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (OMP_NUM_THREADS)")
    parser.add_argument(
        "--output", type=Path, default=REPO_ROOT / "benchmarks/results/bench_unseen.json"
    )
    return parser.parse_args()


def default_run(config_path: Path, raw_dir: Path, folder: Path) -> Path:
    """``config_path``'s base network trained one epoch on 8 records x 500 beats."""
    config = load_config(config_path)
    config.data.raw_dir = raw_dir
    config.data.records = TRAIN_RECORDS
    config.data.max_beats_per_record = 500
    config.data.cache_dir = folder / "cache"
    config.training.epochs = 1
    dataset = load_dataset(config)
    model = train_model(config, dataset).model
    save_checkpoint(folder / CHECKPOINT_NAME, model, config, dataset.class_names)
    return folder


def timed(action: Callable[[], object], repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        seconds.append(round(time.perf_counter() - started, 3))
    return seconds


def new_process(argv: list[str], threads: int) -> Callable[[], object]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MPLBACKEND": "Agg"}
    command = [sys.executable, str(HYPERTUNE), *argv]
    return lambda: subprocess.run(command, check=True, env=env, capture_output=True)


def in_process(argv: list[str]) -> Callable[[], object]:
    def run() -> None:
        with open(os.devnull, "w") as quiet, redirect_stdout(quiet):
            status = cli_main(argv)
        if status != 0:
            raise RuntimeError(f"hypertune.py {' '.join(argv)} failed")

    return run


def figures(argv: list[str], args: argparse.Namespace) -> dict[str, Any]:
    process = timed(new_process(argv, args.threads), args.repeats)
    inside = timed(in_process(argv), args.repeats)
    return {
        "command": " ".join(["python hypertune.py", *argv]),
        "new_process_seconds": process,
        "new_process_median_seconds": statistics.median(process),
        "in_process_seconds": inside,
        "in_process_median_seconds": statistics.median(inside),
    }


def record_copy(raw_dir: Path, folder: Path) -> Path:
    """Record 100's header and signal without its annotation file."""
    for suffix in (".hea", ".dat"):
        shutil.copy(raw_dir / f"{PREDICTED_RECORD}{suffix}", folder)
    return folder / PREDICTED_RECORD


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        run_dir = args.run_dir or default_run(args.config, args.raw_dir, scratch / "run")
        model, config, _ = load_checkpoint(run_dir / CHECKPOINT_NAME)
        evaluate_argv = ["evaluate", str(run_dir), "--database", str(args.raw_dir)]
        evaluate = figures([*evaluate_argv, "--first-channel"], args)
        report = json.loads((run_dir / "evaluation-mitdb.json").read_text())
        evaluate["beats"] = report["metrics"]["n_beats"]
        evaluate["records"] = len(report["records"])
        evaluate["in_command_seconds"] = round(report["seconds"], 3)

        record = record_copy(args.raw_dir, scratch)
        predict = figures(["predict", str(run_dir), str(record), "--out", str(scratch)], args)
        lead = read_named_leads(record, config.data.leads, first_channel=False)[0]
        duration = lead.signal.size / lead.fs
        detection = timed(lambda: detect_beats(PREDICTED_RECORD, lead), args.repeats)
        for key in ("new_process", "in_process"):
            predict[f"{key}_times_real_time"] = round(
                duration / predict[f"{key}_median_seconds"], 1
            )
        predict["record_seconds"] = round(duration, 1)
        predict["xqrs_seconds"] = detection
        predict["beats"] = sum(1 for _ in (scratch / f"{PREDICTED_RECORD}.csv").open()) - 1
    result = {
        "benchmark": "unseen data: evaluate --database (all of mitdb), predict with XQRS",
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(PACKAGES, torch_threads=args.threads),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "model": {
            "run_dir": str(args.run_dir) if args.run_dir else "default config, 1 epoch",
            "kind": config.model.kind,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "goals": {"evaluate_seconds": 20, "predict_times_real_time": 100},
        "evaluate": evaluate,
        "predict": predict,
    }
    write_results(args.output, result)


if __name__ == "__main__":
    main()
