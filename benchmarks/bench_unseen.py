"""Speed of ``evaluate --database`` over all of mitdb and of ``predict`` with the detector.

* ``evaluate RUN_DIR --database RAW_DIR --first-channel``: every annotated beat of the 48
  records (109,494), reading, resampling, cutting, classifying and the report included; goal
  under 20 s on the 2-core CPU.
* The same on a database of all 48 records resampled to 128 Hz (a PhysioNet-like rate: their
  annotations rescaled, so a beat near a record's end can land past it and is skipped and
  counted), for the model and for an ensemble of 3 copies of it (3x the classifying work),
  with records read and cut one at a time (``CUT_WORKERS = 1``) and ahead in threads (the
  default): whether the threads help on this machine.
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
import copy
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

import numpy as np
import torch
import wfdb
from machine import machine, write_results
from scipy.signal import resample_poly

from ecgtune.cli import main as cli_main
from ecgtune.config import load_config
from ecgtune.data import load_dataset, wfdb_database
from ecgtune.data.detect import detect_beats
from ecgtune.data.records import read_named_leads
from ecgtune.models.ensemble import Ensemble
from ecgtune.report import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from ecgtune.training import train_model

REPO_ROOT = Path(__file__).resolve().parents[1]
HYPERTUNE = REPO_ROOT / "hypertune.py"
TRAIN_RECORDS = ["100", "106", "119", "200", "208", "209", "221", "232"]
PACKAGES = ("torch", "numpy", "scipy", "wfdb", "rich")
PREDICTED_RECORD = "100"
OTHER_HZ = 128
ENSEMBLE_MEMBERS = 3


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


def resampled_database(raw_dir: Path, folder: Path, fs: int) -> Path:
    """Every record of ``raw_dir`` at ``fs`` Hz in ``folder`` (both leads resampled, the
    annotation samples rescaled), with a ``RECORDS`` file."""
    folder.mkdir()
    records = sorted(path.stem for path in raw_dir.glob("*.hea"))
    for record in records:
        source = wfdb.rdrecord(str(raw_dir / record))
        signal = resample_poly(source.p_signal, fs, int(source.fs), axis=0)
        wfdb.wrsamp(
            record,
            fs=fs,
            units=source.units,
            sig_name=source.sig_name,
            p_signal=signal,
            fmt=["212"] * signal.shape[1],
            adc_gain=[200.0] * signal.shape[1],
            baseline=[0] * signal.shape[1],
            write_dir=str(folder),
        )
        annotation = wfdb.rdann(str(raw_dir / record), "atr")
        samples = np.rint(annotation.sample * fs / source.fs).astype(np.int64)
        wfdb.wrann(record, "atr", samples, symbol=annotation.symbol, fs=fs, write_dir=str(folder))
    (folder / "RECORDS").write_text("\n".join(records) + "\n", encoding="utf-8")
    return folder


def ensemble_run(run_dir: Path, folder: Path, members: int) -> Path:
    """A run whose checkpoint holds ``members`` copies of ``run_dir``'s model as an ensemble."""
    model, config, class_names = load_checkpoint(run_dir / CHECKPOINT_NAME)
    ensemble = Ensemble([copy.deepcopy(model) for _ in range(members)])
    folder.mkdir()
    save_checkpoint(folder / CHECKPOINT_NAME, ensemble, config, class_names)
    return folder


def database_figures(run_dir: Path, database: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``evaluate --database`` in this process with records cut one at a time and ahead in
    threads: median seconds, beats per second and the skipped annotations of each."""
    argv = ["evaluate", str(run_dir), "--database", str(database), "--first-channel"]
    default_workers = wfdb_database.CUT_WORKERS
    figures: dict[str, Any] = {"command": " ".join(["python hypertune.py", *argv])}
    for workers in (1, default_workers):
        wfdb_database.CUT_WORKERS = workers
        seconds = timed(in_process(argv), args.repeats)
        report = json.loads((run_dir / f"evaluation-{database.name}.json").read_text())
        figures[f"cut_workers_{workers}"] = {
            "in_process_seconds": seconds,
            "in_process_median_seconds": statistics.median(seconds),
            "beats": report["metrics"]["n_beats"],
            "beats_per_second": round(report["metrics"]["n_beats"] / statistics.median(seconds)),
            "skipped": report["skipped"],
        }
    wfdb_database.CUT_WORKERS = default_workers
    one, ahead = (
        figures[f"cut_workers_{w}"]["in_process_median_seconds"] for w in (1, default_workers)
    )
    figures["threads_speedup"] = round(one / ahead, 2)
    return figures


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

        database = resampled_database(args.raw_dir, scratch / f"mitdb{OTHER_HZ}", OTHER_HZ)
        ensemble = ensemble_run(run_dir, scratch / "ensemble", ENSEMBLE_MEMBERS)
        at_128_hz = {
            "hz": OTHER_HZ,
            "model": database_figures(run_dir, database, args),
            f"ensemble_of_{ENSEMBLE_MEMBERS}": database_figures(ensemble, database, args),
        }

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
        f"evaluate_{OTHER_HZ}_hz": at_128_hz,
        "predict": predict,
    }
    write_results(args.output, result)


if __name__ == "__main__":
    main()
