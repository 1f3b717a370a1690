"""TPE against random search (and anneal) at the same budget, on one fixed small problem.

Each search is a real ``hypertune.py tune`` run (:func:`ecgtune.commands.tune.tune_command`: MLflow,
TensorBoard, trials file and all) on the beats of a dozen real records with a tiny CNN trained
for 2 epochs, over a space of 7 keys (learning rate, depth, per-stage kernel sizes and
channels, dropout, batch size, loss). Every algorithm runs with the same seeds; a seed fixes
the data split, the weights and the sampler, so at one seed the algorithms see the same data
and the same first trial (the base config). The figure is the best validation macro-F1 after
each evaluation, per seed, then the mean over seeds.

    .venv/bin/python benchmarks/bench_search.py --raw-dir ../shared/data/mitdb
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hyperopt import Trials
from machine import machine, write_results

from ecgtune.commands.tune import tune_command
from ecgtune.config import Config, validate_config
from ecgtune.search.loop import finished_rows
from ecgtune.search.store import TRIALS_FILE, TrialStore

REPO_ROOT = Path(__file__).resolve().parents[1]
RECORDS = ["100", "105", "106", "119", "200", "201", "203", "208", "209", "213", "223", "232"]
PACKAGES = ("torch", "hyperopt", "mlflow", "numpy")
SMALL_CNN: dict[str, Any] = {
    "conv_layers": 3,
    "channels": [8, 16, 16],
    "kernel_sizes": [7, 5, 3],
    "dilations": [1, 1, 1],
    "pooling": ["max", "max", "max"],
    "se_blocks": False,
    "residual": False,
    "fc_sizes": [32],
}
"""The small CNN the search benchmarks train (bench_scaling.py too): a trial takes seconds."""
SPACE: dict[str, Any] = {
    "training.lr": {"loguniform": [1e-4, 3e-2]},
    "model.conv_layers": {"choice": [1, 2, 3]},
    "model.kernel_sizes": {"each": {"choice": [3, 5, 7, 9]}},
    "model.channels": {"each": {"choice": [4, 8, 16, 32]}},
    "model.dropout": {"uniform": [0.0, 0.5]},
    "training.batch_size": {"choice": [32, 64, 128]},
    "training.loss": {"choice": ["weighted_ce", "ce"]},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--raw-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "mitdb"
    )
    parser.add_argument("--evals", type=int, default=20, help="trials per search")
    parser.add_argument("--seeds", type=int, default=5, help="searches per algorithm")
    parser.add_argument("--startup", type=int, default=5, help="tpe: random trials first")
    parser.add_argument("--algorithms", nargs="+", default=["tpe", "random", "anneal"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per trial")
    parser.add_argument(
        "--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "bench_search.json"
    )
    return parser.parse_args()


def problem_config(args: argparse.Namespace, folder: Path, algorithm: str, seed: int) -> Config:
    """The fixed problem: a tiny CNN on 12 records, 2 epochs, the search under test."""
    return validate_config(
        {
            "seed": seed,
            "data": {
                "raw_dir": str(args.raw_dir),
                "records": RECORDS,
                "max_beats_per_record": 600,
                "cache_dir": str(folder / "cache"),
            },
            "model": SMALL_CNN,
            "training": {"epochs": 2, "batch_size": 64, "num_threads": args.threads},
            "search": {
                "algorithm": algorithm,
                "max_evals": args.evals,
                "no_progress_evals": 0,
                "startup_evals": args.startup,
                "space": SPACE,
            },
            "tracking": {
                "mlflow_uri": f"sqlite:///{folder / 'mlflow.db'}",
                "experiment": f"{algorithm}-seed{seed}",
                "tensorboard_dir": str(folder / "logs"),
                "output_dir": str(folder / "runs"),
            },
        }
    )


def best_so_far(trials: Trials) -> list[float]:
    """The best validation macro-F1 after each evaluation (failed trials count as 0)."""
    curve, best = [], 0.0
    for row in finished_rows(trials):
        best = max(best, row.objective or 0.0)
        curve.append(round(best, 4))
    return curve


def run_search(config: Config) -> tuple[list[float], float]:
    started = time.perf_counter()
    assert tune_command(config, fresh=False, quiet=True) == 0
    trials = TrialStore(config.run_dir).load()
    assert trials is not None, config.run_dir / TRIALS_FILE
    return best_so_far(trials), time.perf_counter() - started


def summarise(curves: list[list[float]]) -> dict[str, Any]:
    """Mean (over seeds) best-so-far after each evaluation, and the final best's spread."""
    mean = [round(statistics.fmean(values), 4) for values in zip(*curves, strict=True)]
    finals = [curve[-1] for curve in curves]
    return {
        "mean_best_after_each_eval": mean,
        "final_best_mean": round(statistics.fmean(finals), 4),
        "final_best_stdev": round(statistics.stdev(finals), 4) if len(finals) > 1 else 0.0,
    }


def main() -> None:
    args = parse_args()
    args.raw_dir, args.output = args.raw_dir.resolve(), args.output.resolve()  # before chdir
    curves: dict[str, dict[str, list[float]]] = {name: {} for name in args.algorithms}
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        folder = Path(tmp)
        os.chdir(folder)  # MLflow keeps a SQLite store's artifacts in ./mlruns
        for seed in range(args.seeds):
            for algorithm in args.algorithms:
                config = problem_config(args, folder, algorithm, seed)
                curve, took = run_search(config)
                curves[algorithm][str(seed)] = curve
                seconds[f"{algorithm}-seed{seed}"] = round(took, 1)
                print(f"{algorithm} seed {seed}: best {curve[-1]:.4f} ({took:.0f} s)", flush=True)
    summary = {name: summarise(list(by_seed.values())) for name, by_seed in curves.items()}
    result = {
        "benchmark": "search: best validation macro-F1 after each evaluation, same budget",
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(PACKAGES),
        "problem": {
            "records": RECORDS,
            "max_beats_per_record": 600,
            "epochs": 2,
            "evals_per_search": args.evals,
            "seeds": args.seeds,
            "tpe_startup_evals": args.startup,
            "space": SPACE,
        },
        "curves": curves,
        "summary": summary,
        "search_seconds": seconds,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    write_results(args.output, result)
    for name, figures in summary.items():
        spread = figures["final_best_stdev"]
        print(f"{name}: final best {figures['final_best_mean']:.4f} (stdev {spread})")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
