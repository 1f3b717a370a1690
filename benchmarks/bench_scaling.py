"""Pruning and parallel trials at the same wall-clock budget: local without pruning, local with
ASHA, Ray with one trial at a time (2 threads) and Ray with two at a time (1 thread each).

Each run is a real ``hypertune.py tune`` (:func:`ecgtune.commands.tune.tune_command`: MLflow,
TensorBoard, trials file and all) on one fixed problem: the beats of a dozen real records, a
small CNN trained for up to 6 epochs (seconds a trial on 2 cores), a 6-key space (learning
rate, depth, kernel sizes, channels, dropout, batch size). Every setup runs with the same seeds
(a seed fixes the split, the weights and the sampler) and the same budget (``search.timeout``:
no trial starts after it). What is measured comes from the MLflow runs, the same for both
engines: each trial's child run gives its start, its end and its best validation macro-F1; time
0 is the first trial's start, so the set-up before it (the dataset, Ray's start) is reported
apart as ``startup_seconds``. Per setup and seed: trials finished within the budget (pruned
ones count: they are finished trials), per hour; the best validation macro-F1 over time; the
mean trial duration. The summary compares, over the seeds: ASHA's trials per hour and best
objective against no pruning, Ray at concurrency 1 against local per trial (same trials: at
concurrency 1 Ray's HyperOptSearch proposes the local engine's points: the mean of the trials'
ratios, and the ratio of their summed durations), and two 1-thread trials at once against one
2-thread trial.

    .venv/bin/python benchmarks/bench_scaling.py --raw-dir ../shared/data/mitdb
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_search import RECORDS, SMALL_CNN
from machine import machine, write_results
from mlflow import MlflowClient

from ecgtune.commands.tune import tune_command
from ecgtune.config import Config, validate_config
from ecgtune.tracking.mlflow_runs import PARENT_TAG

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "hyperopt", "mlflow", "ray", "numpy")
SPACE: dict[str, Any] = {
    "training.lr": {"loguniform": [1e-5, 3e-2]},
    "model.conv_layers": {"choice": [1, 2, 3]},
    "model.kernel_sizes": {"each": {"choice": [3, 5, 7, 9]}},
    "model.channels": {"each": {"choice": [4, 8, 16, 32]}},
    "model.dropout": {"uniform": [0.0, 0.5]},
    "training.batch_size": {"choice": [32, 64, 128]},
}
SETUPS: dict[str, dict[str, Any]] = {
    "local": {"engine": "local", "pruning": "none"},
    "local_asha": {"engine": "local", "pruning": "asha"},
    "ray_1x2threads": {
        "engine": "ray",
        "pruning": "asha",
        "max_concurrent": 1,
        "cpus_per_trial": 2,
    },
    "ray_2x1thread": {
        "engine": "ray",
        "pruning": "asha",
        "max_concurrent": 2,
        "cpus_per_trial": 1,
    },
}
"""The four setups; the Ray ones prune too, so they differ from ``local_asha`` only in the
engine (and the number of trials at once)."""
OBJECTIVE = "best_epoch/macro_f1"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--raw-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "mitdb"
    )
    parser.add_argument("--budget", type=float, default=600, help="seconds per search")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument(
        "--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "bench_scaling.json"
    )
    return parser.parse_args()


def search_config(args: argparse.Namespace, setup: str, seed: int, folder: Path) -> Config:
    """The fixed problem and space, with ``setup``'s engine keys, every output in ``folder``."""
    engine = SETUPS[setup]
    threads = 2 if engine["engine"] == "local" else int(engine["cpus_per_trial"])
    raw = {
        "seed": seed,
        "data": {
            "raw_dir": str(args.raw_dir),
            "records": RECORDS,
            "cache_dir": str(folder.parent / "cache"),
        },
        "model": SMALL_CNN,
        "training": {
            "epochs": 6,
            "early_stopping_patience": 3,
            "num_threads": threads,
            "device": "cpu",
        },
        "search": {
            "max_evals": 1000,
            "timeout": args.budget,
            "no_progress_evals": 0,
            "startup_evals": 5,
            "grace_epochs": 1,
            "reduction_factor": 3,
            "space": SPACE,
            **engine,
        },
        "tracking": {
            "mlflow_uri": f"sqlite:///{folder / 'mlflow.db'}",
            "experiment": f"scaling-{setup}-{seed}",
            "tensorboard_dir": str(folder / "logs"),
            "output_dir": str(folder / "runs"),
        },
    }
    return validate_config(raw, source=f"bench_scaling {setup} seed {seed}")


@dataclass(frozen=True)
class TrialTimes:
    """One trial as its MLflow child run recorded it: seconds from the first trial's start."""

    start: float
    end: float
    objective: float | None


def trial_times(config: Config) -> tuple[float, list[TrialTimes]]:
    """The set-up time (the parent run's start to the first trial's start) and every finished
    trial's times and best validation macro-F1, from the search's MLflow runs."""
    client = MlflowClient(config.tracking.mlflow_uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    parent = next(run for run in runs if PARENT_TAG not in run.data.tags)
    children = [
        run
        for run in runs
        if run.data.tags.get(PARENT_TAG) == parent.info.run_id and run.info.status == "FINISHED"
    ]
    first = min(run.info.start_time for run in children)
    trials = sorted(
        (
            TrialTimes(
                (run.info.start_time - first) / 1000,
                (run.info.end_time - first) / 1000,
                run.data.metrics.get(OBJECTIVE),
            )
            for run in children
        ),
        key=lambda trial: trial.end,
    )
    return (first - parent.info.start_time) / 1000, trials


def best_over_time(trials: list[TrialTimes], budget: float) -> list[tuple[float, float]]:
    """(seconds, best objective so far) at each trial that improved it within the budget."""
    curve: list[tuple[float, float]] = []
    for trial in trials:
        improves = trial.objective is not None and (not curve or trial.objective > curve[-1][1])
        if trial.end <= budget and trial.objective is not None and improves:
            curve.append((round(trial.end, 1), round(trial.objective, 4)))
    return curve


def measure(args: argparse.Namespace, setup: str, seed: int, folder: Path) -> dict[str, Any]:
    """One search; its figures within the budget."""
    config = search_config(args, setup, seed, folder)
    started = time.perf_counter()
    assert tune_command(config, fresh=True, quiet=True) == 0
    wall = time.perf_counter() - started
    startup, trials = trial_times(config)
    within = [trial for trial in trials if trial.end <= args.budget]
    curve = best_over_time(trials, args.budget)
    return {
        "seed": seed,
        "startup_seconds": round(startup, 1),
        "wall_seconds": round(wall, 1),
        "trials_finished_within_budget": len(within),
        "trials_per_hour": round(len(within) * 3600 / args.budget, 1),
        "best_valid_macro_f1": curve[-1][1] if curve else None,
        "best_over_time": curve,
        "trial_seconds": [round(trial.end - trial.start, 1) for trial in trials],
    }


def mean(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return round(statistics.fmean(present), 4) if present else None


def matched_trials(
    ray: list[dict[str, Any]], local: list[dict[str, Any]]
) -> list[tuple[float, float]]:
    """(Ray's, the local engine's) duration of each trial both finished: same seed, same trial
    number, the same point."""
    return [
        (ray_seconds, local_seconds)
        for ray_run, local_run in zip(ray, local, strict=True)
        for ray_seconds, local_seconds in zip(
            ray_run["trial_seconds"], local_run["trial_seconds"], strict=False
        )
        if local_seconds > 0
    ]


def per_trial_cost(ray: list[dict[str, Any]], local: list[dict[str, Any]]) -> dict[str, Any]:
    """Ray's trial durations against the local engine's: the mean of the trials' ratios (a
    pruned trial of a second weighs as much as a full one) and the ratio of the summed
    durations (the time a search spends), with the mean extra seconds per trial."""
    pairs = matched_trials(ray, local)
    if not pairs:
        return {"trials": 0}
    return {
        "trials": len(pairs),
        "mean_of_ratios": round(statistics.fmean(r / loc for r, loc in pairs), 3),
        "ratio_of_sums": round(sum(r for r, _ in pairs) / sum(loc for _, loc in pairs), 3),
        "extra_seconds_per_trial": round(statistics.fmean(r - loc for r, loc in pairs), 2),
        "mean_local_trial_seconds": round(statistics.fmean(loc for _, loc in pairs), 1),
    }


def summary(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The figures the goals ask for, means over the seeds."""
    means = {
        setup: {
            "trials_per_hour": mean([run["trials_per_hour"] for run in runs]),
            "best_valid_macro_f1": mean([run["best_valid_macro_f1"] for run in runs]),
            "startup_seconds": mean([run["startup_seconds"] for run in runs]),
        }
        for setup, runs in results.items()
    }
    out: dict[str, Any] = {"means": means}
    if "local" in means and "local_asha" in means:
        base, asha = means["local"], means["local_asha"]
        out["asha_trials_per_hour_ratio"] = round(
            (asha["trials_per_hour"] or 0) / (base["trials_per_hour"] or 1), 2
        )
        out["asha_best_minus_none"] = round(
            (asha["best_valid_macro_f1"] or 0) - (base["best_valid_macro_f1"] or 0), 4
        )
    if "ray_1x2threads" in results and "local_asha" in results:
        out["ray_c1_per_trial_cost_over_local"] = per_trial_cost(
            results["ray_1x2threads"], results["local_asha"]
        )
    if "ray_1x2threads" in means and "ray_2x1thread" in means:
        out["two_1thread_over_one_2thread_trials_per_hour"] = round(
            (means["ray_2x1thread"]["trials_per_hour"] or 0)
            / (means["ray_1x2threads"]["trials_per_hour"] or 1),
            2,
        )
    return out


def main() -> None:
    args = parse_args()
    args.raw_dir, args.output = args.raw_dir.resolve(), args.output.resolve()
    results: dict[str, list[dict[str, Any]]] = {setup: [] for setup in args.setups}
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        os.chdir(tmp)  # MLflow keeps a SQLite store's artifacts in ./mlruns
        for seed in args.seeds:
            for setup in args.setups:
                folder = Path(tmp) / f"{setup}-{seed}"
                results[setup].append(measure(args, setup, seed, folder))
                print(f"{setup} seed {seed}: {results[setup][-1]['trials_per_hour']} trials/h")
    write_results(
        args.output,
        {
            "benchmark": "pruning and parallel trials at the same wall-clock budget",
            "command": " ".join(["python", *sys.argv]),
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": machine(PACKAGES),
            "budget_seconds": args.budget,
            "seeds": args.seeds,
            "setups": {setup: SETUPS[setup] for setup in args.setups},
            "summary": summary(results),
            "runs": results,
        },
    )


if __name__ == "__main__":
    main()
