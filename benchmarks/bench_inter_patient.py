"""Patients the model has never seen: the shipped inter-patient experiment, DS1 -> DS2.

Runs ``configs/inter_patient.toml`` through the real search (:func:`ecgtune.commands.tune.
tune_command`, the code behind ``hypertune.py tune``: MLflow, TensorBoard, trials file and
all) with every output in a temporary folder. The search trains on DS1 records and chooses
trials, epochs and the best model on DS1 only (record-grouped folds with ``search.folds``,
else whole validation records); DS2 is touched once, after the search, by the best model.
The benchmark then predicts DS2 again with that saved model to break the figures down per
record, checks that its confusion matrix is the one the search reported, and writes
``benchmarks/results/inter_patient.json``: the AAMI figures (S and V sensitivity and positive
predictivity), F1 per class, accuracy, macro-F1, the per-record table, the confusion matrix,
the best trial's config, the trial table, the wall time, the machine and the command.

    .venv/bin/python benchmarks/bench_inter_patient.py --raw-dir ../shared/data/mitdb
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from machine import machine, write_results
from numpy.typing import NDArray

from ecgtune.commands.tune import tune_command
from ecgtune.config import Config, load_config
from ecgtune.data import load_dataset
from ecgtune.metrics import ClassificationMetrics, compute_metrics
from ecgtune.report import load_checkpoint
from ecgtune.training import predict

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "configs" / "inter_patient.toml"
PACKAGES = ("torch", "hyperopt", "mlflow", "numpy")
AAMI_CLASSES = ("S", "V")
GOAL = {"se_S": 0.80, "ppv_S": 0.60, "se_V": 0.92, "ppv_V": 0.90}
PUBLISHED = {
    "de Chazal et al. 2004": {"se_S": 0.76, "ppv_S": 0.38, "se_V": 0.77, "ppv_V": 0.82},
    "Mar et al. 2011": {"se_S": 0.83, "ppv_S": 0.34, "se_V": 0.87, "ppv_V": 0.76},
    "Llamedo & Martinez 2011": {"se_S": 0.77, "ppv_S": 0.39, "se_V": 0.81, "ppv_V": 0.87},
    "Zhang et al. 2014": {"se_S": 0.79, "ppv_S": 0.36, "se_V": 0.86, "ppv_V": 0.93},
    "Garcia et al. 2017": {"se_S": 0.62, "ppv_S": 0.53, "se_V": 0.87, "ppv_V": 0.59},
    "Mondejar-Guerra et al. 2019": {"se_S": 0.78, "ppv_S": 0.50, "se_V": None, "ppv_V": None},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--raw-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "mitdb"
    )
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--max-evals", type=int, help="override search.max_evals")
    parser.add_argument("--timeout", type=int, help="override search.timeout (seconds)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "inter_patient.json"
    )
    return parser.parse_args()


def overrides(args: argparse.Namespace, folder: Path) -> list[str]:
    """``--set`` items: the records, every output in ``folder``, and the budget overrides."""
    items = [
        f"data.raw_dir={json.dumps(str(args.raw_dir))}",
        f"data.cache_dir={json.dumps(str(folder / 'cache'))}",
        f"training.num_threads={args.threads}",
        f"tracking.mlflow_uri={json.dumps('sqlite:///' + str(folder / 'mlflow.db'))}",
        f"tracking.tensorboard_dir={json.dumps(str(folder / 'logs'))}",
        f"tracking.output_dir={json.dumps(str(folder / 'runs'))}",
    ]
    if args.max_evals is not None:
        items.append(f"search.max_evals={args.max_evals}")
    if args.timeout is not None:
        items.append(f"search.timeout={args.timeout}")
    return items


def per_record_table(
    records: NDArray[np.str_],
    truth: NDArray[np.int64],
    predicted: NDArray[np.int64],
    class_names: tuple[str, ...],
) -> list[dict[str, Any]]:
    """One row per DS2 record: its beats, and per S and V the true and predicted beats, Se and
    +P (None where the record has no such beat: its false alarms are the predicted count)."""
    rows = []
    for name in sorted(set(records.tolist())):
        mine = records == name
        metrics = compute_metrics(truth[mine], predicted[mine], class_names)
        row: dict[str, Any] = {"record": name, "beats": int(mine.sum())}
        for item in metrics.per_class:
            if item.name in AAMI_CLASSES:
                row[f"{item.name}_beats"] = item.support
                row[f"{item.name}_predicted"] = item.predicted
                row[f"se_{item.name}"] = _rounded(item.recall)
                row[f"ppv_{item.name}"] = _rounded(item.precision)
        rows.append(row)
    return rows


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def summary(metrics: ClassificationMetrics) -> dict[str, Any]:
    """The DS2 headline: AAMI Se/+P of S and V, F1 per class, accuracy and macro-F1."""
    return {
        "beats": metrics.n_beats,
        "aami": {key: round(value, 4) for key, value in metrics.aami().items()},
        "f1": {item.name: _rounded(item.f1) for item in metrics.per_class},
        "accuracy": round(metrics.accuracy, 4),
        "macro_f1": round(metrics.macro_f1, 4),
        "class_names": list(metrics.class_names),
        "confusion_matrix": metrics.confusion.tolist(),
        "confusion_matrix_orientation": "rows: true class, columns: predicted class",
    }


def protocol(config: Config) -> str:
    """How the experiment chose its model, in one sentence (``search.folds`` or not)."""
    if config.search.folds:
        return (
            f"train on DS1 (22 records); score every trial by the out-of-fold predictions of "
            f"{config.search.folds} record-grouped folds of the DS1 records, keep the best "
            f"trial's ensemble of its fold models; evaluate DS2 (22 records) once"
        )
    return (
        "train on DS1 (22 records, minus whole validation records), choose epochs, trials and "
        "the best model on the validation records only, evaluate DS2 (22 records) once"
    )


def goal_gaps(aami: dict[str, float]) -> dict[str, float]:
    """How far each goal figure is from being met (0 where met)."""
    return {key: round(max(0.0, goal - aami.get(key, 0.0)), 4) for key, goal in GOAL.items()}


def evaluate_ds2(run_dir: Path) -> tuple[ClassificationMetrics, list[dict[str, Any]], Config]:
    """The best model's DS2 metrics and per-record table, from its saved checkpoint."""
    model, best_config, class_names = load_checkpoint(run_dir / "best_model.pt")
    test = load_dataset(best_config).test
    predicted = predict(model, test, best_config)
    metrics = compute_metrics(test.labels, predicted, class_names)
    table = per_record_table(test.records, test.labels, predicted, class_names)
    return metrics, table, best_config


def main() -> None:
    args = parse_args()
    args.raw_dir, args.output = args.raw_dir.resolve(), args.output.resolve()  # before chdir
    config_path = args.config.resolve()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-inter-") as tmp:
        folder = Path(tmp)
        os.chdir(folder)  # MLflow keeps a SQLite store's artifacts in ./mlruns
        items = overrides(args, folder)
        config = load_config(config_path, items)
        assert config.data.split == "inter", f"{config_path}: data.split must be 'inter'"
        done = tune_command(
            config, fresh=True, quiet=True, overrides=items, source=str(config_path)
        )
        assert done == 0, f"the search ended with {done}"
        search_seconds = time.perf_counter() - started
        report = json.loads((config.run_dir / "report.json").read_text())
        metrics, table, best_config = evaluate_ds2(config.run_dir)
    reported = report["metrics"]["confusion_matrix"]
    assert metrics.confusion.tolist() == reported, "DS2 predictions differ from the search's"
    figures = summary(metrics)
    result = {
        "benchmark": "inter-patient (de Chazal DS1 -> DS2): the shipped experiment's best model",
        "command": " ".join(["python", *sys.argv]),
        "equivalent_cli": (
            f"python hypertune.py --config {config_path.relative_to(REPO_ROOT)} "
            + " ".join(f"--set '{item}'" for item in items if not item.startswith("tracking."))
        ),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(PACKAGES, torch_threads=args.threads),
        "protocol": protocol(config),
        "ds2": figures,
        "goal": GOAL,
        "goal_missed_by": goal_gaps(figures["aami"]),
        "published": PUBLISHED,
        "per_record": table,
        "best_trial": report["best_trial"],
        "best_valid_objective": {report["objective"]: report["best_valid_objective"]},
        "best_config": best_config.model_dump(mode="json", exclude={"tracking"}),
        "trials": report["trials"],
        "search_seconds": round(search_seconds, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_results(args.output, result)
    aami = figures["aami"]
    print(
        f"DS2: S Se {aami['se_S']:.3f} +P {aami['ppv_S']:.3f}, V Se {aami['se_V']:.3f} "
        f"+P {aami['ppv_V']:.3f}, macro-F1 {figures['macro_f1']:.3f} "
        f"({result['wall_seconds'] / 60:.1f} min)"
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
