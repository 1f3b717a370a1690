"""What each ingredient of the shipped inter-patient experiment does, on DS1 alone.

Every line trains the shipped ``configs/inter_patient.toml`` with its ``--set`` items (the
rest as shipped; :data:`INGREDIENTS` says what each changes and, where it is not the shipped
line, against which line it is one change) over the same seeds, exactly as
``bench_inter_patient.py`` trains it (DS1's records read alone, one model per record-grouped
fold, each seed in its own process), and reports the mean and sd over the seeds of its DS1
out-of-fold figures and how far it moves from the shipped config's own line, run first. DS2 is
never read: these lines are what the shipped settings are decided by (judged by jκ,
``bench_inter_patient.OBJECTIVE``). Results are written after every line, so an interrupted run
keeps what it finished, and ``--resume`` takes over from the output file every line whose
effective config (the file with the line's changes; a stored one is read by today's schema, so
a key added since reads as its default) was measured with the same seeds, whatever the line was
called then, unless its models are kept. ``--models DIR`` keeps each line's models in
``DIR/<line>/`` and has those kept there predict again instead of training them (a line that
changes ``[inference]`` alone predicts with ``DIR/shipped/``'s; a stored line they no longer
reproduce is named); ``bench_inter_patient.py --final --models DIR/shipped`` then reads DS2
with the shipped line's models without training them again. Each run also counts the N beats
called S in DS1's records with atrial fibrillation (:data:`AF_RECORDS`).

    .venv/bin/python benchmarks/bench_inter_patient_ablation.py --raw-dir ../shared/data/mitdb
"""

from __future__ import annotations

import argparse
import json
import os
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

from ecgtune.config import Config, load_config, validate_config

NO_ADVERSARY = "training.patient_adversary=0"
NO_IRREGULARITY = "model.rr_irregularity=false"
DISTINCT = 'search.fold_seeds="distinct"'
MACRO_F1 = 'training.objective="macro_f1"'
BEFORE = [NO_ADVERSARY, NO_IRREGULARITY]
"""This release's first candidate: the shipped config without the adversary and irregularity."""
INGREDIENTS: dict[str, tuple[str, list[str]]] = {
    "shipped": ("the shipped config as it is", []),
    "without_adversary": (
        "without training against patient identity (training.patient_adversary = 0)",
        [NO_ADVERSARY],
    ),
    "without_adversary_macro_f1": (
        "without the adversary, early stopping and the best epoch by macro-F1 "
        "(training.objective): against without_adversary",
        [NO_ADVERSARY, MACRO_F1],
    ),
    "without_adversary_irregularity": (
        "without the adversary and the rhythm-irregularity columns (model.rr_irregularity = "
        "false): against without_adversary",
        BEFORE,
    ),
    "distinct_fold_seeds": (
        "as without_adversary_irregularity, each fold model its own seed (search.fold_seeds = "
        "distinct): against without_adversary_irregularity",
        [*BEFORE, DISTINCT],
    ),
    "distinct_uncapped": (
        "as distinct_fold_seeds, inverse weights without a cap (training.class_weight_cap = 0): "
        "against distinct_fold_seeds",
        [*BEFORE, DISTINCT, "training.class_weight_cap=0"],
    ),
    "distinct_macro_f1": (
        "as distinct_fold_seeds, early stopping and the best epoch by macro-F1: against "
        "distinct_fold_seeds",
        [*BEFORE, DISTINCT, MACRO_F1],
    ),
    "second_push": (
        "the config of the second push: no adversary, no irregularity, uncapped weights, "
        "macro-F1",
        [*BEFORE, "training.class_weight_cap=0", MACRO_F1],
    ),
    "no_augmentation": (
        "no augmentation of the train batches",
        [f"training.augment.{key}=0" for key in ("scale", "baseline", "noise", "shift")],
    ),
    "two_leads": ("both leads, MLII and V1", ['data.leads=["MLII", "V1"]']),
    "weaker_adversary": (
        "training against patient identity at 0.1 (training.patient_adversary)",
        ["training.patient_adversary=0.1"],
    ),
    "stronger_adversary": (
        "training against patient identity at 0.5 (training.patient_adversary)",
        ["training.patient_adversary=0.5"],
    ),
    "adapted": (
        "each DS1 record classified with batch-norm statistics of its own beats "
        "(inference.adapt = batch_norm): the shipped line's fold models, predicting again",
        ['inference.adapt="batch_norm"'],
    ),
    "effective_weights": (
        "effective-number class weights (training.class_weights = effective) for inverse ones",
        ['training.class_weights="effective"'],
    ),
    "rhythm_features": (
        "the rhythm features without the by-record RR ratios (model.rr_features = rhythm)",
        ['model.rr_features="rhythm"'],
    ),
    "rr_concat": (
        "the RR numbers concatenated to the morphology features, no MLP (model.rr_head = concat)",
        ['model.rr_head="concat"'],
    ),
    "without_irregularity": (
        "without the rhythm-irregularity columns, the adversary kept (model.rr_irregularity = "
        "false)",
        [NO_IRREGULARITY],
    ),
    "under_over": (
        "the train folds resampled to 15,000 beats a class (data.resample.method = under_over): "
        "the weights then see balanced classes",
        ['data.resample.method="under_over"'],
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
    parser.add_argument("--resume", action="store_true", help="reuse lines already measured")
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO_ROOT / "benchmarks" / "results" / "inter_patient_ablation.json",
    )
    return resolved(parser.parse_args())


def line(runs: list[dict[str, Any]], shipped: dict[str, Any] | None) -> dict[str, Any]:
    """A line's mean figures over the seeds' out-of-fold figures (``runs``), the sd of S Se and
    jκ, per-seed figures, and the change of the mean from the shipped line's."""
    mean, sd = mean_sd([{k: v for k, v in run.items() if k != "seed"} for run in runs])
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
    if "n_called_s_af" in mean:
        figures["n_called_s_af"] = mean["n_called_s_af"]
    if shipped is not None:
        figures["change"] = {
            key: round(figures[key] - shipped[key], 4)
            for key in (*AAMI_FIGURES, OBJECTIVE, "sd_se_S", "n_called_f")
        }
    per_seed = [{"seed": run["seed"], **run["aami"], OBJECTIVE: run[OBJECTIVE]} for run in runs]
    return {**figures, "per_seed": per_seed}


AF_RECORDS = ("201", "203")
"""DS1's records with atrial fibrillation or flutter, whose beats are labelled N: where a
premature-looking interval is no S beat, and where false S alarms gather."""


def called_s_in_af(per_record: list[dict[str, Any]]) -> dict[str, int]:
    """N beats called S in each of :data:`AF_RECORDS` (from a seed's per-record table)."""
    return {row["record"]: row["n_called_s"] for row in per_record if row["record"] in AF_RECORDS}


def measure(args: argparse.Namespace, sets: list[str], models: Path | None) -> list[dict[str, Any]]:
    """Each seed's out-of-fold figures for a line (trained, or predicted by its kept models)."""
    outcomes = run_seeds(args, seed_jobs(args, sets, models=models, baseline=False))
    return [
        outcome.figures["ds1_oof"]
        | {
            "seed": outcome.figures["seed"],
            "n_called_s_af": called_s_in_af(outcome.figures["ds1_per_record"]),
        }
        for outcome in outcomes
    ]


def confusions(runs: list[dict[str, Any]]) -> list[Any]:
    """The runs' confusion matrices, seed by seed."""
    return [run["confusion_matrix"] for run in runs]


def models_of(name: str, sets: list[str]) -> str:
    """The folder of ``--models`` a line keeps its models in: its own, or for a line that changes
    ``[inference]`` alone (how a trained model predicts) the shipped line's, whose fold models
    it predicts with, so that its figures differ by that change only."""
    return "shipped" if all(item.startswith("inference.") for item in sets) else name


def effective(args: argparse.Namespace, sets: list[str]) -> dict[str, Any]:
    """The config a line trains (machine keys and the seed left out)."""
    return seedless(load_config(args.config, sets))


def seedless(config: Config) -> dict[str, Any]:
    """:func:`comparable` without the seed: what a line over several seeds measures."""
    dump = comparable(config)
    dump.pop("seed")
    return dump


def measured_lines(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """With ``--resume``: the lines of the output file by their effective config, each stored
    config read by today's schema (same seeds only)."""
    if not args.resume or not args.output.exists():
        return {}
    stored = json.loads(args.output.read_text())
    if stored["seeds"] != args.seeds:
        return {}
    return {
        json.dumps(today(line["config"]), sort_keys=True): line for line in stored["lines"].values()
    }


def today(dump: dict[str, Any]) -> dict[str, Any]:
    """A stored effective config as today's schema reads it."""
    return seedless(validate_config({**dump, "seed": 0}, source="a measured line"))


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
            f"per line and seed: {os.path.relpath(args.config, REPO_ROOT)} with the line's --set "
            f"items, trained as bench_inter_patient.py trains it on DS1's 22 records alone; "
            f"the mean over the seeds of the out-of-fold figures (every DS1 beat predicted by "
            f"the fold model that never saw its patient), judged by {OBJECTIVE}; DS2 not read"
        ),
        "objective": OBJECTIVE,
        "seeds": args.seeds,
        "config": comparable(config),
        "lines": lines,
    }
    done = measured_lines(args)
    for name in names:
        what, sets = INGREDIENTS[name]
        config_of_line = effective(args, sets)
        previous = done.get(json.dumps(config_of_line, sort_keys=True))
        models = args.models / models_of(name, sets) if args.models else None
        kept = models is not None and all(
            (models / f"seed-{seed}.pt").exists() for seed in args.seeds
        )
        if previous is not None and not kept:
            runs, seconds = previous["runs"], previous["seconds"]
        else:
            began = time.perf_counter()
            runs = measure(args, sets, models)
            # a line measured before keeps its training time; kept models alone time a prediction
            seconds = previous["seconds"] if previous else round(time.perf_counter() - began, 1)
            if previous is not None and confusions(runs) != confusions(previous["runs"]):
                print(f"{name}: the kept models predict otherwise than measured before", flush=True)
        lines[name] = {
            "what": what,
            "set": sets,
            **line(runs, lines.get("shipped")),
            "seconds": seconds,
            "runs": runs,
            "seeds": args.seeds,
            "config": config_of_line,
        }
        result["wall_seconds"] = round(time.perf_counter() - started, 1)
        write_results(args.output, result)
        print(f"{name}: {lines[name].get('change', lines[name][OBJECTIVE])}", flush=True)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
