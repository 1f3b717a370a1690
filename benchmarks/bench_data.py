"""Build time of the MIT-BIH dataset: cold (fresh cache) and cached, all 48 records.

Each cold run builds the dataset of ``--config`` (default ``config.toml``: intra split) into a
fresh temporary cache directory: SHA-256 verification of the 144 record files, wfdb reading,
resampling, beat cutting, split and cache write. The cached runs then load that cache (the
records are verified again, as every run does). One more cold build with ``data.split =
"inter"`` gives the de Chazal split counts. Medians over ``--repeats`` runs; the class counts
of the full build and of every split are written with the machine and the command. With
``--csv``, the intra train and test splits are also written as Kaggle ``mitbih_train.csv`` /
``mitbih_test.csv`` files (not timed) and the cold and cached loads of ``data.source = "csv"``
are timed.

    .venv/bin/python benchmarks/bench_data.py --raw-dir ../shared/data/mitdb [--csv]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from machine import machine, write_results

from ecgtune.config import Config, load_config, validate_config
from ecgtune.data import Dataset, load_dataset
from ecgtune.data.summary import dataset_summary

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("numpy", "scipy", "wfdb", "scikit-learn", "pandas", "pyarrow", "rich")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "config.toml")
    parser.add_argument(
        "--raw-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "mitdb"
    )
    parser.add_argument("--repeats", type=int, default=3, help="cold builds and cached loads")
    parser.add_argument("--csv", action="store_true", help="also time Kaggle CSV loading")
    parser.add_argument(
        "--output", type=Path, default=REPO_ROOT / "benchmarks/results/bench_data.json"
    )
    return parser.parse_args()


def timed_load(config: Config) -> tuple[float, Dataset]:
    """Seconds of one ``load_dataset`` call, and the dataset."""
    start = time.perf_counter()
    dataset = load_dataset(config)
    return time.perf_counter() - start, dataset


def with_split(config: Config, split: Literal["intra", "inter"], cache_dir: Path) -> Config:
    changed = config.model_copy(deep=True)
    changed.data.split = split
    changed.data.cache_dir = cache_dir
    return changed


def kaggle_csv_seconds(dataset: Dataset, scratch: Path) -> dict[str, float]:
    """Cold and cached load of the intra train/test splits written as Kaggle CSV files."""
    paths = []
    for name, beats in (("mitbih_train.csv", dataset.train), ("mitbih_test.csv", dataset.test)):
        table = np.column_stack([beats.signals, beats.labels.astype(np.float64)])
        pd.DataFrame(table).to_csv(scratch / name, header=False, index=False)
        paths.append(scratch / name)
    config = validate_config(
        {
            "data": {
                "source": "csv",
                "train_files": [str(paths[0])],
                "test_files": [str(paths[1])],
                "cache_dir": str(scratch / "csv-cache"),
            }
        }
    )
    cold, _ = timed_load(config)
    cached, _ = timed_load(config)
    return {"csv_cold_load_seconds": round(cold, 3), "csv_cached_load_seconds": round(cached, 3)}


def main() -> None:
    args = parse_args()
    config = load_config(args.config)
    config.data.raw_dir = args.raw_dir
    config.data.records = None
    config.data.max_beats_per_record = None
    cold, cached, csv_figures = [], [], {}
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        for run in range(args.repeats):
            seconds, dataset = timed_load(with_split(config, "intra", scratch / f"cache{run}"))
            assert not dataset.info["from_cache"]
            cold.append(seconds)
        for _ in range(args.repeats):
            seconds, loaded = timed_load(with_split(config, "intra", scratch / "cache0"))
            assert loaded.info["from_cache"]
            cached.append(seconds)
        inter_seconds, inter = timed_load(with_split(config, "inter", scratch / "inter"))
        if args.csv:
            csv_figures = kaggle_csv_seconds(dataset, scratch)
    intra_summary = dataset_summary(dataset, cold[-1])
    inter_summary = dataset_summary(inter, inter_seconds)
    result = {
        "benchmark": "data: MIT-BIH dataset build, all 48 records",
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(PACKAGES),
        "figures": {
            "cold_build_seconds": [round(s, 3) for s in cold],
            "cold_build_median_seconds": round(statistics.median(cold), 3),
            "cached_load_seconds": [round(s, 3) for s in cached],
            "cached_load_median_seconds": round(statistics.median(cached), 3),
            "inter_cold_build_seconds": round(inter_seconds, 3),
            "beats": intra_summary["total"]["beats"],
            **csv_figures,
        },
        "intra": {key: intra_summary[key] for key in ("total", "splits", "dropped_beats")},
        "inter": {key: inter_summary[key] for key in ("total", "splits", "skipped_records")},
        "lead_substitutions": intra_summary["lead_substitutions"],
        "beat_symbols": dataset.info["beat_symbols"],
    }
    write_results(args.output, result)


if __name__ == "__main__":
    main()
