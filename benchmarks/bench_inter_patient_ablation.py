"""What each ingredient of the shipped inter-patient experiment does, over the same seeds.

For each ingredient the benchmark trains the shipped ``configs/inter_patient.toml`` with that
one ingredient changed (a ``--set``, the rest as shipped), every seed through the real
``hypertune.py train`` exactly as ``bench_inter_patient.py`` runs it (same processes, threads
and seeds), predicts DS2 once per seed, and reports the mean over the seeds and how far it
moves from the shipped experiment's mean in ``benchmarks/results/inter_patient.json`` (which
must come from the same config: the benchmark checks). Adaptation at prediction time needs no
training: ``inter_patient.json`` holds it already (``adapt_batch_norm`` per seed). Results are
written after every ingredient, so an interrupted run keeps what it finished.

    .venv/bin/python benchmarks/bench_inter_patient_ablation.py --raw-dir ../shared/data/mitdb
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_inter_patient import (
    PACKAGES,
    REPO_ROOT,
    mean_sd,
    predict_seed,
    resolved,
    seed_figures,
    seed_parser,
    train_seeds,
)
from machine import machine, write_results

from ecgtune.config import Config, load_config

SHIPPED = REPO_ROOT / "benchmarks" / "results" / "inter_patient.json"
INGREDIENTS = {
    "patient_adversary": (
        "training against patient identity added (gradient reversal, weight 0.3)",
        ["training.patient_adversary=0.3"],
    ),
    "rr_features_all": (
        "rhythm features replaced by the mean-of-10 RR features of before (rr_features = all)",
        ['model.rr_features="all"'],
    ),
    "rr_head_concat": (
        "the RR features' own MLP replaced by concatenation (rr_head = concat)",
        ['model.rr_head="concat"'],
    ),
    "rr_features_rhythm": (
        "without the features over the record's own mean RR (rr_features = rhythm)",
        ['model.rr_features="rhythm"'],
    ),
}
FIGURES = ("se_S", "ppv_S", "se_V", "ppv_V")
MACHINE_KEYS = {"data": ("raw_dir", "cache_dir"), "training": ("num_threads",)}
"""Keys that say where and how fast a run goes, not what it measures."""


def parse_args() -> argparse.Namespace:
    parser = seed_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--only", nargs="+", choices=sorted(INGREDIENTS), default=list(INGREDIENTS),
        help="the ingredients to measure, in this order",
    )  # fmt: skip
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO_ROOT / "benchmarks" / "results" / "inter_patient_ablation.json",
    )
    return resolved(parser.parse_args())


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A config dump without the keys that differ between machines and runs of a benchmark."""
    kept = {
        section: {key: value for key, value in config[section].items() if key not in keys}
        for section, keys in MACHINE_KEYS.items()
    }
    return {**config, **kept}


def shipped_figures(config: Config, seeds: list[int]) -> dict[str, Any]:
    """The shipped experiment's mean over the same seeds, from ``inter_patient.json``; refused
    where that file was measured with another config or other seeds."""
    shipped: dict[str, Any] = json.loads(SHIPPED.read_text())
    dump = config.model_dump(mode="json", exclude={"tracking", "seed"})
    assert comparable(shipped["config"]) == comparable(dump), f"{SHIPPED}: another config"
    assert shipped["seeds"] == seeds, f"{SHIPPED}: seeds {shipped['seeds']}, not {seeds}"
    return shipped


def line(mean: dict[str, Any], sd: dict[str, Any], shipped: dict[str, Any]) -> dict[str, Any]:
    """One ingredient's mean figures, the sd of S Se, and the change from the shipped mean."""
    figures = {key: mean["aami"][key] for key in FIGURES}
    return {
        **figures,
        "f1_S": mean["f1"]["S"],
        "jkappa": mean["jkappa"],
        "sd_se_S": sd["aami"]["se_S"],
        "se_S_without_232": mean["without_232"]["aami"]["se_S"],
        "change": {
            **{key: round(figures[key] - shipped["aami"][key], 4) for key in FIGURES},
            "jkappa": round(mean["jkappa"] - shipped["jkappa"], 4),
        },
    }


def adaptation_line(shipped: dict[str, Any]) -> dict[str, Any]:
    """Adaptation on, from the shipped models' own second prediction (no training)."""
    adapted = [run["adapt_batch_norm"] for run in shipped["per_seed"]]
    mean, sd = mean_sd(adapted)
    return line(mean, sd, shipped["ds2"])


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    config = load_config(args.config)
    shipped = shipped_figures(config, args.seeds)
    lines: dict[str, Any] = {
        "shipped": line(shipped["ds2"], shipped["ds2_sd"], shipped["ds2"]),
        "adapt_batch_norm": {
            "what": "batch-norm statistics re-estimated on each DS2 record (inference.adapt)",
            "set": ['inference.adapt="batch_norm"'],
            **adaptation_line(shipped),
        },
    }
    result: dict[str, Any] = {
        "benchmark": "inter-patient ablation: one ingredient of the shipped experiment changed",
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(PACKAGES, torch_threads=args.threads, processes=args.parallel),
        "protocol": (
            f"per ingredient and seed: hypertune.py train --config "
            f"{args.config.relative_to(REPO_ROOT)} --set seed=N --set <the ingredient>, as "
            f"bench_inter_patient.py runs it; DS2 predicted once; mean over the seeds, and its "
            f"change from the shipped mean of {SHIPPED.name}"
        ),
        "seeds": args.seeds,
        "lines": lines,
    }
    for name in args.only:
        what, sets = INGREDIENTS[name]
        began = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"bench-ablation-{name}-") as tmp:
            run_dirs = train_seeds(args, args.config, Path(tmp) / "seeds", sets)
            runs = [seed_figures(predict_seed(run_dirs[seed])) for seed in args.seeds]
        mean, sd = mean_sd(runs)
        lines[name] = {
            "what": what,
            "set": sets,
            **line(mean, sd, shipped["ds2"]),
            "per_seed": [{"seed": run["seed"], **run["aami"]} for run in runs],
            "seconds": round(time.perf_counter() - began, 1),
        }
        result["wall_seconds"] = round(time.perf_counter() - started, 1)
        write_results(args.output, result)
        print(f"{name}: {json.dumps(lines[name]['change'])}", flush=True)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
