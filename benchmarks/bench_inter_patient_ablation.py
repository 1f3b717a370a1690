"""What each ingredient of the shipped inter-patient experiment does, on DS1 alone.

Every line trains the shipped ``configs/inter_patient.toml`` with one ingredient changed (its
``--set`` items, the rest as shipped) over the same seeds, exactly as
``bench_inter_patient.py`` trains it (DS1's records read alone, one model per record-grouped
fold, each seed in its own process), and reports the mean and sd over the seeds of its DS1
out-of-fold figures and how far it moves from the shipped config's own line, run first in the
same invocation. DS2 is never read: these lines are what the shipped settings are decided by
(judged by jκ, ``bench_inter_patient.OBJECTIVE``). Results are written after every line, so an
interrupted run keeps what it finished; ``--models DIR`` keeps each line's models in
``DIR/<line>/`` (``bench_inter_patient.py --final --models DIR/shipped`` then reads DS2 with the
shipped line's models without training them again).

    .venv/bin/python benchmarks/bench_inter_patient_ablation.py --raw-dir ../shared/data/mitdb
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from bench_inter_patient import (
    AAMI_FIGURES,
    OBJECTIVE,
    PACKAGES,
    REPO_ROOT,
    comparable,
    mean_sd,
    resolved,
    run_seeds,
    seed_jobs,
    seed_parser,
)
from machine import machine, write_results

from ecgtune.config import load_config

INGREDIENTS: dict[str, tuple[str, list[str]]] = {
    "shipped": ("the shipped config as it is", []),
    "shared_fold_seeds": (
        "every fold model from the run's seed (search.fold_seeds = shared)",
        ['search.fold_seeds="shared"'],
    ),
    "uncapped_weights": (
        "inverse class weights without a cap (training.class_weight_cap = 0)",
        ["training.class_weight_cap=0"],
    ),
    "objective_macro_f1": (
        "early stopping and the best epoch by macro-F1 (training.objective)",
        ['training.objective="macro_f1"'],
    ),
    "second_push": (
        "the config of the second push: shared fold seeds, uncapped weights, macro-F1",
        [
            'search.fold_seeds="shared"',
            "training.class_weight_cap=0",
            'training.objective="macro_f1"',
        ],
    ),
}
"""Each line: what it changes, and its ``--set`` items."""


def parse_args() -> argparse.Namespace:
    parser = seed_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--only", nargs="+", choices=sorted(INGREDIENTS), default=list(INGREDIENTS),
        help="the lines to measure, in this order (the shipped line always first)",
    )  # fmt: skip
    parser.add_argument("--models", type=Path, help="keep each line's models in DIR/<line>/")
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO_ROOT / "benchmarks" / "results" / "inter_patient_ablation.json",
    )
    return resolved(parser.parse_args())


def line(runs: list[dict[str, Any]], shipped: dict[str, Any] | None) -> dict[str, Any]:
    """A line's mean figures over the seeds, the sd of S Se and jκ, per-seed figures, and the
    change of the mean from the shipped line's."""
    mean, sd = mean_sd([run["ds1_oof"] for run in runs])
    kept = {key: mean["aami"][key] for key in AAMI_FIGURES}
    figures = {
        **kept,
        "f1_S": mean["f1"]["S"],
        "f1_F": mean["f1"]["F"],
        OBJECTIVE: mean[OBJECTIVE],
        "macro_f1": mean["macro_f1"],
        "n_called_f": mean["n_called_f"],
        "sd_se_S": sd["aami"]["se_S"],
        f"sd_{OBJECTIVE}": sd[OBJECTIVE],
    }
    if shipped is not None:
        figures["change"] = {
            key: round(figures[key] - shipped[key], 4)
            for key in (*AAMI_FIGURES, OBJECTIVE, "sd_se_S", "n_called_f")
        }
    per_seed = [
        {"seed": run["seed"], **run["ds1_oof"]["aami"], OBJECTIVE: run["ds1_oof"][OBJECTIVE]}
        for run in runs
    ]
    return {**figures, "per_seed": per_seed}


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    config = load_config(args.config)
    names = ["shipped", *[name for name in args.only if name != "shipped"]]
    lines: dict[str, Any] = {}
    result: dict[str, Any] = {
        "benchmark": "inter-patient ablation on DS1 out-of-fold: one ingredient changed",
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(PACKAGES, torch_threads=args.threads, processes=args.parallel),
        "protocol": (
            f"per line and seed: {args.config.relative_to(REPO_ROOT)} with the line's --set "
            f"items, trained as bench_inter_patient.py trains it on DS1's 22 records alone; "
            f"the mean over the seeds of the out-of-fold figures (every DS1 beat predicted by "
            f"the fold model that never saw its patient), judged by {OBJECTIVE}; DS2 not read"
        ),
        "objective": OBJECTIVE,
        "seeds": args.seeds,
        "config": comparable(config),
        "lines": lines,
    }
    for name in names:
        what, sets = INGREDIENTS[name]
        began = time.perf_counter()
        models = args.models / name if args.models else None
        outcomes = run_seeds(args, seed_jobs(args, sets, models=models, baseline=False))
        shipped = lines.get("shipped")
        lines[name] = {
            "what": what,
            "set": sets,
            **line([outcome.figures for outcome in outcomes], shipped),
            "seconds": round(time.perf_counter() - began, 1),
        }
        result["wall_seconds"] = round(time.perf_counter() - started, 1)
        write_results(args.output, result)
        print(f"{name}: {lines[name].get('change', lines[name][OBJECTIVE])}", flush=True)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
