"""Patients the model has never seen: the shipped inter-patient experiment, DS1 -> DS2, over
seeds, beside a gradient-boosting baseline fitted in the same run on the same beats.

For each seed (default 42, 43, 44) the benchmark runs the real command line,
``hypertune.py train --config configs/inter_patient.toml --set seed=N`` (the config's base
network with its ``search.folds``: one model per record-grouped fold of DS1's 22 records, kept
as their ensemble; DS2 is touched once, by that ensemble), each seed in its own process with
its own torch threads (``--parallel`` processes at once, ``--threads`` each), every output in a
temporary folder. Then, from each seed's saved model, it predicts DS2 as the config's
``[inference]`` says and, as the one ablation that needs no training, with the other
adaptation setting; and it fits scikit-learn's ``HistGradientBoostingClassifier`` on the same
DS1 beats (the RR features the config's model reads plus a coarse 32-point beat shape, the
same inverse-frequency class weights), seeded like the network: the reference any deep model
must beat. It writes ``benchmarks/results/inter_patient.json``: per seed, the mean and the
standard deviation of S and V Se and +P, F1 per class, accuracy, macro-F1 and the jκ index of
Mar et al. (2011), the same without record 232 (1,382 of DS2's 1,837 S beats), the baseline's
figures, the per-record table of each seed, the goal and by how much it is missed, the
published references, the wall time, the machine and the command.

    .venv/bin/python benchmarks/bench_inter_patient.py --raw-dir ../shared/data/mitdb
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from machine import machine, write_results
from numpy.typing import NDArray
from sklearn.ensemble import HistGradientBoostingClassifier
from torch import nn

from ecgtune.config import Config, load_config
from ecgtune.data import load_dataset
from ecgtune.data.beats import rr_column_indices
from ecgtune.data.dataset import BeatSet
from ecgtune.metrics import ClassificationMetrics, compute_metrics
from ecgtune.report import load_checkpoint
from ecgtune.training import class_weights, predict

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "configs" / "inter_patient.toml"
PACKAGES = ("torch", "scikit-learn", "numpy")
SEEDS = (42, 43, 44)
AAMI_CLASSES = ("S", "V")
MOST_S = "232"
"""The DS2 record that holds most of its S beats (1,382 of 1,837)."""
SHAPE_POINTS = 32
GOAL = {"se_S": 0.80, "ppv_S": 0.50, "se_V": 0.92, "ppv_V": 0.90}
GOAL_SD_SE_S = 0.08
PUBLISHED = {
    "de Chazal et al. 2004": {"se_S": 0.76, "ppv_S": 0.38, "se_V": 0.77, "ppv_V": 0.82},
    "Mar et al. 2011": {"se_S": 0.83, "ppv_S": 0.34, "se_V": 0.87, "ppv_V": 0.76},
    "Llamedo & Martinez 2011": {"se_S": 0.77, "ppv_S": 0.39, "se_V": 0.81, "ppv_V": 0.87},
    "Zhang et al. 2014": {"se_S": 0.79, "ppv_S": 0.36, "se_V": 0.86, "ppv_V": 0.93},
    "Garcia et al. 2017": {"se_S": 0.62, "ppv_S": 0.53, "se_V": 0.87, "ppv_V": 0.59},
    "Mondejar-Guerra et al. 2019": {"se_S": 0.78, "ppv_S": 0.50, "se_V": None, "ppv_V": None},
}


def seed_parser(description: str) -> argparse.ArgumentParser:
    """The options of a benchmark that trains the experiment over seeds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--raw-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "mitdb"
    )
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--parallel", type=int, default=2, help="seeds trained at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per seed")
    return parser


def resolved(args: argparse.Namespace) -> argparse.Namespace:
    """The arguments with absolute paths (the runs happen in other folders)."""
    for key in ("raw_dir", "config", "output"):
        setattr(args, key, getattr(args, key).resolve())
    return args


def parse_args() -> argparse.Namespace:
    parser = seed_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "inter_patient.json"
    )
    return resolved(parser.parse_args())


def seed_overrides(args: argparse.Namespace, seed: int, folder: Path) -> list[str]:
    """``--set`` items of one seed's run: the seed, the records, its threads, every output in
    ``folder`` (the cache is shared: the key holds the seed)."""
    return [
        f"seed={seed}",
        f"data.raw_dir={json.dumps(str(args.raw_dir))}",
        f"data.cache_dir={json.dumps(str(folder.parent / 'cache'))}",
        f"training.num_threads={args.threads}",
        f"tracking.mlflow_uri={json.dumps('sqlite:///' + str(folder / 'mlflow.db'))}",
        f"tracking.tensorboard_dir={json.dumps(str(folder / 'logs'))}",
        f"tracking.output_dir={json.dumps(str(folder / 'runs'))}",
    ]


def train_command(config: Path, items: Sequence[str]) -> list[str]:
    sets = [part for item in items for part in ("--set", item)]
    return [sys.executable, str(REPO_ROOT / "hypertune.py"), "train", "--config", str(config),
            "--quiet", *sets]  # fmt: skip


def train_seed(
    args: argparse.Namespace, config: Path, folder: Path, seed: int, changes: Sequence[str]
) -> Path:
    """One seed's ``train`` run in its own process (``changes``: more ``--set`` items), its
    output in ``train.log``; its run folder (``best_model.pt``, ``report.json``)."""
    place = folder / f"seed-{seed}"
    place.mkdir(parents=True)
    command = train_command(config, [*seed_overrides(args, seed, place), *changes])
    with (place / "train.log").open("w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
    assert done.returncode == 0, (place / "train.log").read_text()[-3000:]
    (checkpoint,) = place.glob("runs/*/train-*/best_model.pt")
    return checkpoint.parent


def train_seeds(
    args: argparse.Namespace, config: Path, folder: Path, changes: Sequence[str] = ()
) -> dict[int, Path]:
    """Every seed's run, ``args.parallel`` processes at a time."""
    with ThreadPoolExecutor(args.parallel) as pool:
        runs = {
            seed: pool.submit(train_seed, args, config, folder, seed, changes)
            for seed in args.seeds
        }
    return {seed: run.result() for seed, run in runs.items()}


def figures(metrics: ClassificationMetrics) -> dict[str, Any]:
    """The DS2 headline of one model: AAMI Se/+P of S and V, F1 per class, accuracy,
    macro-F1, jκ."""
    flat = metrics.as_flat_dict()
    return {
        "beats": metrics.n_beats,
        "aami": {key: round(value, 4) for key, value in metrics.aami().items()},
        "f1": {item.name: _rounded(item.f1) for item in metrics.per_class},
        "accuracy": round(metrics.accuracy, 4),
        "macro_f1": round(metrics.macro_f1, 4),
        "jkappa": round(flat["jkappa"], 4),
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def split_figures(test: BeatSet, predicted: NDArray[np.int64], names: tuple[str, ...]) -> Any:
    """The figures over all of DS2 and without record 232, and the confusion matrix."""
    whole = compute_metrics(test.labels, predicted, names)
    rest = test.records != MOST_S
    return {
        **figures(whole),
        "without_232": figures(compute_metrics(test.labels[rest], predicted[rest], names)),
        "confusion_matrix": whole.confusion.tolist(),
    }


def per_record_table(
    test: BeatSet, predicted: NDArray[np.int64], names: tuple[str, ...]
) -> list[dict[str, Any]]:
    """One row per DS2 record: its beats, and per S and V the true and predicted beats, Se and
    +P (None where the record has no such beat: its false alarms are the predicted count)."""
    rows = []
    for name in sorted(set(test.records.tolist())):
        mine = test.records == name
        metrics = compute_metrics(test.labels[mine], predicted[mine], names)
        row: dict[str, Any] = {"record": name, "beats": int(mine.sum())}
        for item in metrics.per_class:
            if item.name in AAMI_CLASSES:
                row[f"{item.name}_beats"] = item.support
                row[f"{item.name}_predicted"] = item.predicted
                row[f"se_{item.name}"] = _rounded(item.recall)
                row[f"ppv_{item.name}"] = _rounded(item.precision)
        rows.append(row)
    return rows


@dataclass(frozen=True)
class SeedRun:
    """One seed's saved model, its config and class names, DS2, the model's DS2 predictions
    as its ``[inference]`` says, and the run's own report."""

    model: nn.Module
    config: Config
    names: tuple[str, ...]
    test: BeatSet
    predicted: NDArray[np.int64]
    report: dict[str, Any]


def predict_seed(run_dir: Path) -> SeedRun:
    """One seed's model on DS2, checked against the figures its own run reported."""
    model, config, names = load_checkpoint(run_dir / "best_model.pt")
    test = load_dataset(config).test
    predicted = predict(model, test, config)
    report = json.loads((run_dir / "report.json").read_text())
    assert (
        report["metrics"]["confusion_matrix"]
        == compute_metrics(test.labels, predicted, names).confusion.tolist()
    ), "DS2 predictions differ from the run's own test figures"
    return SeedRun(model, config, names, test, predicted, report)


def seed_figures(run: SeedRun) -> dict[str, Any]:
    """The seed, its adaptation setting and its DS2 figures (whole, without 232)."""
    return {
        "seed": run.config.seed,
        "adapt": run.config.inference.adapt,
        **split_figures(run.test, run.predicted, run.names),
    }


def evaluate_seed(run_dir: Path) -> tuple[dict[str, Any], Config]:
    """One seed's model on DS2: as its ``[inference]`` says, and with the other adaptation."""
    run = predict_seed(run_dir)
    inference = run.config.inference
    other = "none" if inference.adapt != "none" else "batch_norm"
    flipped = run.config.model_copy(
        update={"inference": inference.model_copy(update={"adapt": other})}
    )
    result = {
        **seed_figures(run),
        f"adapt_{other}": split_figures(run.test, predict(run.model, run.test, flipped), run.names),
        "per_record": per_record_table(run.test, run.predicted, run.names),
        "train_seconds": round(run.report["seconds"], 1),
    }
    return result, run.config


def beat_shape_features(beats: BeatSet, rr_columns: list[int]) -> NDArray[np.float32]:
    """The baseline's features: the model's RR columns and the beat at 32 evenly spaced
    samples (of the first lead)."""
    signals = beats.signals.reshape(len(beats), -1, beats.signals.shape[-1])[:, 0]
    points = np.linspace(0, signals.shape[1] - 1, SHAPE_POINTS).round().astype(int)
    return np.hstack([beats.rr[:, rr_columns], signals[:, points]]).astype(np.float32)


def gbm_baseline(config: Config, seed: int) -> dict[str, Any]:
    """Gradient boosting on the DS1 beats of the experiment (its train and validation records
    pooled, as the folds pool them), DS2 predicted once."""
    started = time.perf_counter()
    dataset = load_dataset(config)
    ds1 = BeatSet.concatenate([dataset.train, dataset.valid])
    model = config.model
    columns = rr_column_indices(model.rr_features, model.rr_reference, model.rr_irregularity)
    counts = ds1.class_counts(dataset.n_classes)
    weights = class_weights(counts, "inverse", 0.999)[ds1.labels]
    booster = HistGradientBoostingClassifier(max_iter=200, random_state=seed)
    booster.fit(beat_shape_features(ds1, columns), ds1.labels, sample_weight=weights)
    predicted = booster.predict(beat_shape_features(dataset.test, columns)).astype(np.int64)
    return {
        "seed": seed,
        **split_figures(dataset.test, predicted, dataset.class_names),
        "fit_seconds": round(time.perf_counter() - started, 1),
    }


def mean_sd(runs: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Mean and sample standard deviation over the seeds of every figure of :func:`figures`."""

    def combine(values: list[Any], reduce: Any) -> Any:
        if isinstance(values[0], dict) and "beats" in values[0]:
            return {
                "beats": values[0]["beats"],
                **combine([without_beats(v) for v in values], reduce),
            }
        if isinstance(values[0], dict):
            return {key: combine([value[key] for value in values], reduce) for key in values[0]}
        if any(value is None for value in values):
            return None
        return round(float(reduce(values)), 4)

    keys = ["aami", "f1", "accuracy", "macro_f1", "jkappa", "without_232"]
    picked = [{key: run[key] for key in keys} for run in runs]
    mean = combine(picked, np.mean)
    sd = combine(picked, lambda values: np.std(values, ddof=1) if len(values) > 1 else 0.0)
    sd["without_232"] = without_beats(sd["without_232"])
    return {"beats": runs[0]["beats"], **mean}, sd


def without_beats(figures: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in figures.items() if key != "beats"}


def goal_gaps(mean: dict[str, Any], sd: dict[str, Any]) -> dict[str, float]:
    """How far each goal figure is from being met (0 where met)."""
    gaps = {key: max(0.0, goal - mean["aami"].get(key, 0.0)) for key, goal in GOAL.items()}
    gaps["sd_se_S"] = max(0.0, sd["aami"]["se_S"] - GOAL_SD_SE_S)
    return {key: round(value, 4) for key, value in gaps.items()}


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    config = load_config(args.config)
    assert config.data.split == "inter" and config.search.folds, f"{args.config}: inter, folds"
    with tempfile.TemporaryDirectory(prefix="bench-inter-") as tmp:
        run_dirs = train_seeds(args, args.config, Path(tmp) / "seeds")
        train_seconds = time.perf_counter() - started
        runs, baselines = [], []
        for seed in args.seeds:
            run, config = evaluate_seed(run_dirs[seed])
            runs.append(run)
            baselines.append(gbm_baseline(config, seed))
    mean, sd = mean_sd(runs)
    baseline_mean, baseline_sd = mean_sd(baselines)
    beats_baseline = [
        run["f1"]["S"] > base["f1"]["S"] for run, base in zip(runs, baselines, strict=True)
    ]
    result = {
        "benchmark": (
            "inter-patient (de Chazal DS1 -> DS2): the shipped experiment over seeds, and a "
            "gradient-boosting baseline on the same beats"
        ),
        "command": " ".join(["python", *sys.argv]),
        "equivalent_cli": (
            f"python hypertune.py train --config {os.path.relpath(args.config, REPO_ROOT)} "
            f"--set seed=N --set 'data.raw_dir=\"{args.raw_dir}\"' "
            f"--set training.num_threads={args.threads}"
        ),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(PACKAGES, torch_threads=args.threads, processes=args.parallel),
        "protocol": (
            f"per seed: train on DS1 (22 records) one model per record-grouped fold "
            f"({config.search.folds} folds), keep their ensemble; predict DS2 "
            f"(22 records) once, inference.adapt = {config.inference.adapt!r}; the seeds "
            f"run {args.parallel} at a time, {args.threads} torch thread(s) each"
        ),
        "seeds": args.seeds,
        "ds2": mean,
        "ds2_sd": sd,
        "per_seed": runs,
        "baseline": {
            "model": (
                f"HistGradientBoostingClassifier(max_iter=200) on the model's RR columns and a "
                f"{SHAPE_POINTS}-point beat shape, inverse-frequency sample weights"
            ),
            "ds2": baseline_mean,
            "ds2_sd": baseline_sd,
            "per_seed": baselines,
        },
        "s_f1_above_baseline_every_seed": all(beats_baseline),
        "goal": {**GOAL, "sd_se_S": GOAL_SD_SE_S},
        "goal_missed_by": goal_gaps(mean, sd),
        "published": PUBLISHED,
        "config": config.model_dump(mode="json", exclude={"tracking", "seed"}),
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_results(args.output, result)
    aami, spread = mean["aami"], sd["aami"]
    print(
        f"DS2 over {len(runs)} seeds: S Se {aami['se_S']:.3f} ± {spread['se_S']:.3f} "
        f"+P {aami['ppv_S']:.3f}, V Se {aami['se_V']:.3f} +P {aami['ppv_V']:.3f}, jκ "
        f"{mean['jkappa']:.3f}; baseline S {baseline_mean['aami']['se_S']:.3f}/"
        f"{baseline_mean['aami']['ppv_S']:.3f} ({result['wall_seconds'] / 60:.1f} min)"
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
