"""Patients the model has never seen: the shipped inter-patient experiment over seeds, decided
on DS1 alone (out-of-fold), DS2 read only with ``--final``, beside a tuned gradient-boosting
baseline on the same folds.

For each seed (default 42, 43, 44), in its own process with its own torch threads
(``--parallel`` processes at once, ``--threads`` each), the benchmark reads the 22 DS1 records
alone (:func:`ecgtune.data.build.load_record_beats`: DS2's labels are never loaded) and trains
the config's base network exactly as ``hypertune.py train --config configs/inter_patient.toml
--set seed=N`` does with its ``search.folds`` (the same fold pool in record order, the same
``cross_validate``): one model per record-grouped fold, each predicting the DS1 patients it
never saw. Those out-of-fold predictions are the **development figures**: every setting of the
shipped config is chosen on them. Beside it, scikit-learn's ``HistGradientBoostingClassifier``
on the same beats (the RR columns the network reads plus a 32-point beat shape, the network's
class weights) is tuned on the same folds over a small grid (:data:`BASELINE_GRID`, chosen by
the development objective) and reported out-of-fold too.

With ``--final`` (once per shipped config, at the end) each seed's ensemble of fold models and
the tuned baseline refitted on all of DS1 predict DS2 once; DS2's figures carry a 95 % interval
from a record-level bootstrap (the 22 DS2 records drawn with replacement, the same draws for
every seed, so the interval is that of the mean over seeds). ``--models DIR`` keeps each seed's
ensemble (``seed-N.pt``); a later run with the same ``--models DIR`` (``--final``, or a change
of ``[inference]`` alone) predicts with the models kept there (checked to be trained by the same
config and seed) instead of training them again.

It writes the mean and the sample standard deviation over the seeds of S and V Se and +P, F1
per class, accuracy, macro-F1 and the jκ index of Mar et al. (2011) (the development
objective, :data:`OBJECTIVE`), per-record tables, the baseline, and with ``--final`` the goal and
by how much it is missed, the published references, the wall time, the machine and the command.

    .venv/bin/python benchmarks/bench_inter_patient.py --raw-dir ../shared/data/mitdb
    .venv/bin/python benchmarks/bench_inter_patient.py --raw-dir ../shared/data/mitdb --final
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from machine import machine, write_results
from numpy.typing import NDArray
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from ecgtune.config import AAMI_CLASSES, Config, load_config
from ecgtune.data import load_dataset
from ecgtune.data.beats import rr_column_indices
from ecgtune.data.build import load_record_beats
from ecgtune.data.dataset import BeatSet, Dataset
from ecgtune.data.splits import DS1
from ecgtune.metrics import (
    ClassificationMetrics,
    compute_metrics,
    metrics_from_confusion,
    record_bootstrap_confusions,
)
from ecgtune.models.ensemble import Ensemble
from ecgtune.report import load_checkpoint, save_checkpoint
from ecgtune.search.folds import (
    cross_validate,
    fold_datasets,
    pooled_in_record_order,
    predict_out_of_fold,
)
from ecgtune.training import TrainingObserver, class_weights, predict

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "configs" / "inter_patient.toml"
PACKAGES = ("torch", "scikit-learn", "numpy")
SEEDS = (42, 43, 44)
AAMI_FIGURES = ("se_S", "ppv_S", "se_V", "ppv_V")
OBJECTIVE = "jkappa"
"""What a development line is judged by: jκ (Mar et al. 2011), kappa / 2 plus the S and V Se
and +P / 8, the figures the goal is set in, where macro-F1 would weigh DS1's 8 Q beats as much
as its 45,866 N beats."""
MOST_S = "232"
"""The DS2 record that holds most of its S beats (1,382 of 1,837)."""
SHAPE_POINTS = 32
BASELINE_GRID = tuple(
    {"learning_rate": rate, "max_leaf_nodes": leaves}
    for rate in (0.05, 0.1, 0.2)
    for leaves in (15, 63, 255)
)
"""The baseline's grid, each point ``max_iter = 200``, tuned on the network's folds: the
learning rate and the trees' size, the two that matter most for gradient boosting (a first
grid of 15 and 63 leaves at 0.1 chose 63, its edge, for every seed)."""
BOOTSTRAP_DRAWS = 2000
GOAL = {"se_S": 0.80, "ppv_S": 0.50, "se_V": 0.92, "ppv_V": 0.90}
GOAL_SD_SE_S = 0.08
GOAL_N_AS_F = 300
PUBLISHED = {
    "de Chazal et al. 2004": {"se_S": 0.76, "ppv_S": 0.38, "se_V": 0.77, "ppv_V": 0.82},
    "Mar et al. 2011": {"se_S": 0.83, "ppv_S": 0.34, "se_V": 0.87, "ppv_V": 0.76},
    "Llamedo & Martinez 2011": {"se_S": 0.77, "ppv_S": 0.39, "se_V": 0.81, "ppv_V": 0.87},
    "Zhang et al. 2014": {"se_S": 0.79, "ppv_S": 0.36, "se_V": 0.86, "ppv_V": 0.93},
    "Garcia et al. 2017": {"se_S": 0.62, "ppv_S": 0.53, "se_V": 0.87, "ppv_V": 0.59},
    "Mondejar-Guerra et al. 2019": {"se_S": 0.78, "ppv_S": 0.50, "se_V": None, "ppv_V": None},
}


# ---- the options -------------------------------------------------------------------------


def seed_parser(description: str) -> argparse.ArgumentParser:
    """The options of a benchmark that trains the experiment over seeds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--raw-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "mitdb"
    )
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--parallel", type=int, default=3, help="seeds trained at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per seed")
    parser.add_argument(
        "--cache-dir", type=Path, default=REPO_ROOT / "data" / "cache", help="for --final"
    )
    return parser


def parse_args() -> argparse.Namespace:
    parser = seed_parser(__doc__.splitlines()[0])
    parser.add_argument("--final", action="store_true", help="read DS2 once, at the end")
    parser.add_argument("--models", type=Path, help="keep models here, or reuse those kept")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    name = "inter_patient.json" if args.final else "inter_patient_ds1.json"
    args.output = args.output or REPO_ROOT / "benchmarks" / "results" / name
    return resolved(args)


def resolved(args: argparse.Namespace) -> argparse.Namespace:
    """The arguments with absolute paths."""
    for key in ("raw_dir", "config", "output", "cache_dir", "models"):
        if getattr(args, key, None) is not None:
            setattr(args, key, getattr(args, key).resolve())
    return args


# ---- one seed, in its own process --------------------------------------------------------


@dataclass(frozen=True)
class SeedJob:
    """What one seed's process does: the config and its changes (``--set`` items), where the
    records are, its threads, whether it reads DS2, where its model is kept or found."""

    config: Path
    seed: int
    raw_dir: Path
    cache_dir: Path
    threads: int
    changes: tuple[str, ...] = ()
    final: bool = False
    models: Path | None = None
    baseline: bool = True


@dataclass
class SeedOutcome:
    """One seed's figures (JSON) and the DS2 predictions the bootstrap needs (``--final``)."""

    figures: dict[str, Any]
    ds2: dict[str, tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.str_]]] = field(
        default_factory=dict
    )


def job_config(job: SeedJob) -> Config:
    """The config of one seed's run: the file, the changes, the seed, records and threads."""
    machine_sets = [
        f"seed={job.seed}",
        f"data.raw_dir={json.dumps(str(job.raw_dir))}",
        f"data.cache_dir={json.dumps(str(job.cache_dir))}",
        f"training.num_threads={job.threads}",
    ]
    config = load_config(job.config, [*job.changes, *machine_sets])
    assert config.data.split == "inter" and config.search.folds, f"{job.config}: inter, folds"
    return config


def ds1_dataset(config: Config) -> Dataset:
    """DS1's 22 records as the one pool the folds cut (DS2 is not read)."""
    ds1 = load_record_beats(config, DS1)
    empty = ds1.take(np.zeros(0, dtype=np.intp))
    return Dataset(train=ds1, valid=empty, test=empty, class_names=AAMI_CLASSES)


def run_seed(job: SeedJob) -> SeedOutcome:
    """Train (or load) one seed's fold models on DS1, its out-of-fold figures, the tuned
    baseline's; with ``final``, both on DS2."""
    config = job_config(job)
    dataset = ds1_dataset(config)
    started = time.perf_counter()
    model, oof = seed_models(job, config, dataset)
    held_out, predicted = oof
    figures: dict[str, Any] = {
        "seed": job.seed,
        "ds1_oof": split_figures(held_out, predicted, without=None),
        "ds1_per_record": per_record_table(held_out, predicted),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    outcome = SeedOutcome(figures)
    test = load_dataset(config).test if job.final else None
    if test is not None:
        ds2 = predict(model, test, config)
        other = "none" if config.inference.adapt != "none" else "batch_norm"
        flipped = config.model_copy(
            update={"inference": config.inference.model_copy(update={"adapt": other})}
        )
        figures["adapt"] = config.inference.adapt
        figures["ds2"] = split_figures(test, ds2, without=MOST_S)
        figures[f"ds2_adapt_{other}"] = split_figures(
            test, predict(model, test, flipped), without=MOST_S
        )
        figures["ds2_per_record"] = per_record_table(test, ds2)
        outcome.ds2["network"] = (test.labels, ds2, test.records)
    if job.baseline:
        figures["baseline"] = tuned_baseline(config, dataset, test, outcome)
    return outcome


def seed_models(
    job: SeedJob, config: Config, dataset: Dataset
) -> tuple[Any, tuple[BeatSet, NDArray[np.int64]]]:
    """The seed's ensemble and out-of-fold predictions: trained (and kept in ``job.models``),
    or the fold models an earlier run kept there, trained by the same config save its
    ``[inference]`` (which only says how a trained model predicts), predicting again."""
    path = job.models / f"seed-{job.seed}.pt" if job.models else None
    if path is not None and path.exists():
        model, saved, _ = load_checkpoint(path)
        assert isinstance(model, Ensemble), f"{path}: not an ensemble of fold models"
        if trained_alike(saved) != trained_alike(config):
            raise SystemExit(f"{path}: trained by another config; remove it or use other --models")
        folds = fold_datasets(dataset, config.search.folds, config.seed)
        return model, predict_out_of_fold(list(model.members), folds, config)
    result = cross_validate(config, dataset, TrainingObserver())
    assert result.out_of_fold is not None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, result.model, config, AAMI_CLASSES)
    return result.model, result.out_of_fold


def trained_alike(config: Config) -> dict[str, Any]:
    """:func:`comparable` without ``[inference]``: what decides the trained weights."""
    dump = comparable(config)
    dump.pop("inference")
    return dump


MACHINE_KEYS = {"data": ("raw_dir", "cache_dir"), "training": ("num_threads",)}
"""Keys that say where and how fast a run goes, not what it measures."""
TRAINING_SEARCH_KEYS = ("folds", "fold_seeds")
"""The ``[search]`` keys a ``train`` run reads; the others shape the search alone."""


def comparable(config: Config) -> dict[str, Any]:
    """A config dump of what a benchmark's training measures: without the keys that differ
    between machines and runs, nor the ``[search]`` keys ``train`` does not read."""
    dump = config.model_dump(mode="json", exclude={"tracking"})
    for section, keys in MACHINE_KEYS.items():
        dump[section] = {key: value for key, value in dump[section].items() if key not in keys}
    dump["search"] = {key: dump["search"][key] for key in TRAINING_SEARCH_KEYS}
    return dump


# ---- the baseline ------------------------------------------------------------------------


def baseline_features(beats: BeatSet, rr_columns: list[int]) -> NDArray[np.float32]:
    """The model's RR columns and the beat at 32 evenly spaced samples (of the first lead)."""
    signals = beats.signals.reshape(len(beats), -1, beats.signals.shape[-1])[:, 0]
    points = np.linspace(0, signals.shape[1] - 1, SHAPE_POINTS).round().astype(int)
    return np.hstack([beats.rr[:, rr_columns], signals[:, points]]).astype(np.float32)


def fit_booster(
    config: Config, beats: BeatSet, params: dict[str, Any]
) -> Callable[[BeatSet], NDArray[np.int64]]:
    """Gradient boosting fitted on ``beats`` with the network's class weights; its predictor."""
    training, model = config.training, config.model
    columns = rr_column_indices(model.rr_features, model.rr_reference, model.rr_irregularity)
    counts = beats.class_counts(len(AAMI_CLASSES))
    weights = class_weights(
        counts, training.class_weights, training.effective_beta, training.class_weight_cap
    )
    booster = HistGradientBoostingClassifier(max_iter=200, random_state=config.seed, **params)
    with threadpool_limits(config.training.num_threads or None):
        booster.fit(baseline_features(beats, columns), beats.labels, weights[beats.labels])

    def predicted(other: BeatSet) -> NDArray[np.int64]:
        with threadpool_limits(config.training.num_threads or None):
            classes: NDArray[np.int64] = booster.predict(baseline_features(other, columns))
        return classes.astype(np.int64)

    return predicted


def tuned_baseline(
    config: Config, dataset: Dataset, test: BeatSet | None, outcome: SeedOutcome
) -> dict[str, Any]:
    """The baseline tuned on the network's folds by :data:`OBJECTIVE`: every grid point's
    out-of-fold score, the best's out-of-fold figures, and refitted on all of DS1, its DS2
    figures when ``test`` is given."""
    started = time.perf_counter()
    folds = fold_datasets(dataset, config.search.folds, config.seed)
    held_out = BeatSet.concatenate([fold.valid for fold in folds])
    scored = []
    for params in BASELINE_GRID:
        predicted = np.concatenate(
            [fit_booster(config, fold.train, params)(fold.valid) for fold in folds]
        )
        metrics = compute_metrics(held_out.labels, predicted, AAMI_CLASSES)
        scored.append((metrics.as_flat_dict()[OBJECTIVE], params, predicted))
    _, best, predicted = max(scored, key=lambda item: item[0])
    result: dict[str, Any] = {
        "grid": [{**params, OBJECTIVE: round(value, 4)} for value, params, _ in scored],
        "chosen": best,
        "ds1_oof": split_figures(held_out, predicted, without=None),
    }
    if test is not None:
        ds2 = fit_booster(config, pooled_in_record_order(dataset), best)(test)
        result["ds2"] = split_figures(test, ds2, without=MOST_S)
        outcome.ds2["baseline"] = (test.labels, ds2, test.records)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


# ---- figures -----------------------------------------------------------------------------


def figures(metrics: ClassificationMetrics) -> dict[str, Any]:
    """The headline of one model on one set of beats: AAMI Se/+P of S and V, F1 per class,
    accuracy, macro-F1, jκ, and the N beats called F."""
    flat = metrics.as_flat_dict()
    return {
        "beats": metrics.n_beats,
        "aami": {key: round(value, 4) for key, value in metrics.aami().items()},
        "f1": {item.name: _rounded(item.f1) for item in metrics.per_class},
        "accuracy": round(metrics.accuracy, 4),
        "macro_f1": round(metrics.macro_f1, 4),
        "jkappa": round(flat["jkappa"], 4),
        "n_called_f": int(metrics.confusion[0, AAMI_CLASSES.index("F")]),
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def split_figures(beats: BeatSet, predicted: NDArray[np.int64], without: str | None) -> Any:
    """The figures over all the beats (and without record ``without``), and the confusion."""
    whole = compute_metrics(beats.labels, predicted, AAMI_CLASSES)
    result = {**figures(whole), "confusion_matrix": whole.confusion.tolist()}
    if without is not None:
        rest = beats.records != without
        part = compute_metrics(beats.labels[rest], predicted[rest], AAMI_CLASSES)
        result[f"without_{without}"] = figures(part)
    return result


def per_record_table(beats: BeatSet, predicted: NDArray[np.int64]) -> list[dict[str, Any]]:
    """One row per record: its beats, per S and V the true and predicted beats, Se and +P
    (None where the record has no such beat: its false alarms are the predicted count), and its
    N beats called S and F."""
    rows = []
    for name in sorted(set(beats.records.tolist())):
        mine = beats.records == name
        metrics = compute_metrics(beats.labels[mine], predicted[mine], AAMI_CLASSES)
        row: dict[str, Any] = {"record": name, "beats": int(mine.sum())}
        for item in metrics.per_class:
            if item.name in ("S", "V"):
                row[f"{item.name}_beats"] = item.support
                row[f"{item.name}_predicted"] = item.predicted
                row[f"se_{item.name}"] = _rounded(item.recall)
                row[f"ppv_{item.name}"] = _rounded(item.precision)
        row["n_called_s"] = int(metrics.confusion[0, 1])
        row["n_called_f"] = int(metrics.confusion[0, 3])
        rows.append(row)
    return rows


def mean_sd(runs: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Mean and sample standard deviation over the seeds of every figure of :func:`figures`
    (and of its ``without_...`` part)."""

    def combine(values: list[Any], reduce: Any) -> Any:
        if isinstance(values[0], dict):
            return {key: combine([value[key] for value in values], reduce) for key in values[0]}
        if any(value is None for value in values):
            return None
        return round(float(reduce(values)), 4)

    picked = [
        {k: v for k, v in run.items() if k not in ("beats", "confusion_matrix")} for run in runs
    ]
    mean = combine(picked, np.mean)
    sd = combine(picked, lambda values: np.std(values, ddof=1) if len(values) > 1 else 0.0)
    return {"beats": runs[0]["beats"], **mean}, sd


def bootstrap_interval(
    predictions: Sequence[tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.str_]]],
) -> dict[str, list[float]]:
    """95 % interval of the mean over seeds of each AAMI figure and jκ, from a record-level
    bootstrap: the same draws of the records for every seed (a draw without a class's beats
    has no Se for it and is left out of that figure's interval)."""
    draws = [
        record_bootstrap_confusions(
            labels, predicted, records, len(AAMI_CLASSES), BOOTSTRAP_DRAWS, seed=0
        )
        for labels, predicted, records in predictions
    ]
    values: dict[str, list[float]] = {key: [] for key in (*AAMI_FIGURES, OBJECTIVE)}
    for index in range(BOOTSTRAP_DRAWS):
        per_seed = [metrics_from_confusion(seed[index], AAMI_CLASSES) for seed in draws]
        for key in AAMI_FIGURES:
            values[key].append(float(np.mean([m.aami().get(key, np.nan) for m in per_seed])))
        values[OBJECTIVE].append(float(np.mean([m.as_flat_dict()[OBJECTIVE] for m in per_seed])))
    return {
        key: [round(float(q), 4) for q in np.nanpercentile(series, [2.5, 97.5])]
        for key, series in values.items()
    }


def goal_gaps(mean: dict[str, Any], sd: dict[str, Any]) -> dict[str, float]:
    """How far each goal figure is from being met (0 where met)."""
    gaps = {key: max(0.0, goal - mean["aami"].get(key, 0.0)) for key, goal in GOAL.items()}
    gaps["sd_se_S"] = max(0.0, sd["aami"]["se_S"] - GOAL_SD_SE_S)
    gaps["n_called_f"] = max(0.0, mean["n_called_f"] - GOAL_N_AS_F)
    return {key: round(value, 4) for key, value in gaps.items()}


# ---- the runs ----------------------------------------------------------------------------


def run_seeds(args: argparse.Namespace, jobs: Sequence[SeedJob]) -> list[SeedOutcome]:
    """Every job in its own spawned process, ``args.parallel`` at a time."""
    with ProcessPoolExecutor(args.parallel, mp_context=get_context("spawn")) as pool:
        return list(pool.map(run_seed, jobs))


def seed_jobs(args: argparse.Namespace, changes: Sequence[str] = (), **rest: Any) -> list[SeedJob]:
    return [
        SeedJob(
            args.config, seed, args.raw_dir, args.cache_dir, args.threads, tuple(changes), **rest
        )
        for seed in args.seeds
    ]


def summary(runs: Sequence[dict[str, Any]], key: str) -> dict[str, Any]:
    """The mean and sd over seeds of the ``key`` figures of every run."""
    mean, sd = mean_sd([run[key] for run in runs])
    return {"mean": mean, "sd": sd}


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    config = load_config(args.config)
    outcomes = run_seeds(args, seed_jobs(args, final=args.final, models=args.models))
    runs = [outcome.figures for outcome in outcomes]
    baselines = [run["baseline"] for run in runs]
    result: dict[str, Any] = {
        "benchmark": (
            "inter-patient (de Chazal DS1 -> DS2): the shipped experiment over seeds on DS1 "
            "out-of-fold"
            + (", then DS2 once" if args.final else " (DS2 not read)")
            + ", beside a gradient-boosting baseline tuned on the same folds"
        ),
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(PACKAGES, torch_threads=args.threads, processes=args.parallel),
        "protocol": (
            f"per seed: DS1's 22 records read alone, one model per record-grouped fold "
            f"({config.search.folds} folds, search.fold_seeds = {config.search.fold_seeds!r}) "
            f"as hypertune.py train does; every DS1 beat predicted by the model that never saw "
            f"its patient (development figures, judged by {OBJECTIVE}); "
            + (
                f"the ensemble predicts DS2 (22 records) once, inference.adapt = "
                f"{config.inference.adapt!r}, with a 95 % record-level bootstrap interval "
                f"({BOOTSTRAP_DRAWS} draws) of the mean over seeds; "
                if args.final
                else "DS2 not read; "
            )
            + f"the seeds run {args.parallel} at a time, {args.threads} torch thread(s) each"
        ),
        "objective": OBJECTIVE,
        "seeds": args.seeds,
        "ds1_oof": summary(runs, "ds1_oof"),
        "baseline": {
            "model": (
                f"HistGradientBoostingClassifier(max_iter=200) on the model's RR columns and a "
                f"{SHAPE_POINTS}-point beat shape, the network's class weights as sample "
                f"weights, tuned per seed over {list(BASELINE_GRID)} by out-of-fold {OBJECTIVE} "
                f"on the network's folds"
            ),
            "ds1_oof": summary(baselines, "ds1_oof"),
        },
    }
    if args.final:
        ds2 = summary(runs, "ds2")
        result["ds2"] = {
            **ds2,
            "interval_95": bootstrap_interval([o.ds2["network"] for o in outcomes]),
        }
        result["baseline"]["ds2"] = {
            **summary(baselines, "ds2"),
            "interval_95": bootstrap_interval([o.ds2["baseline"] for o in outcomes]),
        }
        result["s_f1_above_baseline_every_seed"] = all(
            run["ds2"]["f1"]["S"] > run["baseline"]["ds2"]["f1"]["S"] for run in runs
        )
        result["goal"] = {**GOAL, "sd_se_S": GOAL_SD_SE_S, "n_called_f": GOAL_N_AS_F}
        result["goal_missed_by"] = goal_gaps(ds2["mean"], ds2["sd"])
        result["published"] = PUBLISHED
    result["per_seed"] = runs
    result["config"] = comparable(config)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_results(args.output, result)
    print(headline(result))
    print(f"wrote {args.output}")


def headline(result: dict[str, Any]) -> str:
    """One line per figure set: S and V Se/+P (and the sd of S Se), jκ."""
    lines = []
    for name, part in (
        ("DS1 out-of-fold", result["ds1_oof"]),
        ("DS2", result.get("ds2")),
        ("baseline DS1 out-of-fold", result["baseline"]["ds1_oof"]),
        ("baseline DS2", result["baseline"].get("ds2")),
    ):
        if part is None:
            continue
        aami, sd = part["mean"]["aami"], part["sd"]["aami"]
        lines.append(
            f"{name}: S Se {aami['se_S']:.3f} ± {sd['se_S']:.3f} +P {aami['ppv_S']:.3f}, "
            f"V Se {aami['se_V']:.3f} +P {aami['ppv_V']:.3f}, jκ {part['mean']['jkappa']:.3f}, "
            f"N called F {part['mean']['n_called_f']:.0f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
