"""``hypertune.py evaluate RUN_DIR``: reload a saved model and evaluate it on the test split
again, or (``--database DIR``) on every annotated beat of any WFDB database.

The model, its beat rules and its split come from the checkpoint; every path (where the
records are, where the cache goes, where results are written) comes from the command line and
the current config, never from the checkpoint: a checkpoint from elsewhere cannot choose
where this machine reads or writes. Writes ``evaluation.json`` (``evaluation-<database>.json``)
and its figure beside the training report, which is left as it was, as is the test split.

``--database`` reads no config: it runs on the CPU in fp32 whatever device and precision the
model was trained with, cuts each record's beats with the checkpoint's ``[data]`` rules
(:mod:`ecgtune.data.wfdb_database`) and reports one confusion matrix over every beat of the
database, with AAMI Se/+P of S and V, and the same figures per record. Annotations outside a
record's signal or at its edges, and unknown symbols, are skipped and counted per record and in
all (``--strict`` refuses them); records are read and cut in threads ahead of the one being
classified, and the report gives the wall time and beats per second.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import confusion_matrix
from torch import nn

from ecgtune.commands.common import check_writable, run_checkpoint
from ecgtune.config import AAMI_CLASSES, Config, InferenceConfig, validate_config
from ecgtune.console import make_console
from ecgtune.console.data import data_progress
from ecgtune.console.evaluation import aami_summary, beat_progress, record_table, skip_summary
from ecgtune.console.training import metrics_table
from ecgtune.data import load_dataset
from ecgtune.data.beats import total_skips
from ecgtune.data.build import pool_record_beats
from ecgtune.data.dataset import BeatSet
from ecgtune.data.wfdb_database import (
    CutRecord,
    LeadChoice,
    choose_leads,
    choose_records,
    cut_records,
    open_database,
)
from ecgtune.errors import DataError
from ecgtune.metrics import AAMI_REPORTED_CLASSES, metrics_from_confusion
from ecgtune.report import load_checkpoint, write_report
from ecgtune.training import evaluate_test_split, predict_proba, resolve_device

LOCAL_DATA_KEYS = ("raw_dir", "cache_dir", "base_url", "train_files", "test_files")
"""``[data]`` keys that say where files are on this machine: taken from the current config."""


def evaluate_command(run_dir: Path, config: Config) -> int:
    """Evaluate ``run_dir/best_model.pt`` on the test split its config defines; 0 when done."""
    checkpoint = run_checkpoint(run_dir)
    model, saved, class_names = load_checkpoint(checkpoint)
    config = with_local_paths(saved, config, source=str(checkpoint))
    check_writable({"RUN_DIR": run_dir, "data.cache_dir": config.data.cache_dir})
    console = make_console()
    dataset = load_dataset(config, data_progress(console))
    if dataset.class_names != class_names:
        raise DataError(
            f"{checkpoint}: the model's classes {list(class_names)} differ from the rebuilt "
            f"dataset's {list(dataset.class_names)}"
        )
    model.to(resolve_device(config.training.device))
    metrics = evaluate_test_split(model, dataset, config)
    extra = {"split": "test", "checkpoint": str(checkpoint)}
    write_report(
        run_dir,
        metrics,
        class_names,
        extra,
        json_name="evaluation.json",
        figure_name="evaluation_confusion_matrix.png",
    )
    console.print(metrics_table(metrics, title=f"Test split ({metrics.n_beats} beats)"))
    console.print(f"Wrote {run_dir / 'evaluation.json'} (report.json is left as it was)")
    return 0


def with_local_paths(saved: Config, local: Config, source: str) -> Config:
    """The checkpoint's config with this machine's file locations (``[data]`` paths, the
    whole ``[tracking]`` section) and device settings from the current config."""
    raw = saved.model_dump(mode="json")
    here = local.model_dump(mode="json")
    for key in LOCAL_DATA_KEYS:
        raw["data"][key] = here["data"][key]
    raw["tracking"] = here["tracking"]
    raw["training"]["device"] = here["training"]["device"]
    raw["training"]["num_threads"] = here["training"]["num_threads"]
    return validate_config(raw, source=source)


def evaluate_database_command(
    run_dir: Path,
    database_dir: Path,
    leads: Sequence[str] | None = None,
    records: Sequence[str] | None = None,
    annotator: str = "atr",
    first_channel: bool = False,
    strict: bool = False,
) -> int:
    """Evaluate ``run_dir/best_model.pt`` on every annotated beat of the records of a WFDB
    database (``--records``: some of them), read from ``leads`` (default: the model's); 0 when
    done. ``strict`` refuses a record with skipped annotations instead of counting them."""
    started = perf_counter()
    model, config, checkpoint = load_aami_model(run_dir)
    choice = choose_leads(leads, config.data, first_channel)
    database = open_database(database_dir)
    names = choose_records(database, records)
    check_writable({"RUN_DIR": run_dir})
    console = make_console()
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    jobs = [(database.folder / name, annotator) for name in names]
    classify = torch_classifier(model, config.inference)
    with beat_progress(console, len(names)) as record_done:
        for name, cut in zip(names, cut_records(jobs, choice, config.data, strict), strict=True):
            predicted = record_probabilities(classify, cut).argmax(axis=1)
            rows.append(record_row(name, cut, confusion_of(cut.beats.labels, predicted)))
            notes.extend(stand_in_notes(name, cut, choice))
            record_done(len(cut.beats))
    total = np.array([row["confusion_matrix"] for row in rows], dtype=np.int64).sum(axis=0)
    if not total.sum():
        raise DataError(
            f"--database {database.folder}: no beat left to evaluate in {len(rows)} record(s) "
            f"(every beat annotation was skipped)"
        )
    metrics = metrics_from_confusion(total, AAMI_CLASSES)
    seconds = perf_counter() - started
    json_name, figure_name = (f"evaluation-{database.name}.{ext}" for ext in ("json", "png"))
    extra = {
        "database": str(database.folder),
        "checkpoint": str(checkpoint),
        "leads": list(choice.names),
        "first_channel": first_channel,
        "annotator": annotator,
        "target_hz": config.data.target_hz,
        "adapt": config.inference.adapt,
        "seconds": seconds,
        "beats_per_second": metrics.n_beats / seconds,
        "skipped": total_skips(row["skipped"] for row in rows),
        "records": rows,
    }
    write_report(run_dir, metrics, AAMI_CLASSES, extra, json_name, figure_name)
    console.print(record_table(rows, title=f"{database.name}: per record"))
    title = f"{database.name}: {metrics.n_beats} beats, {len(rows)} records"
    console.print(metrics_table(metrics, title=title))
    console.print(aami_summary(metrics.aami()))
    for note in [*notes, skip_summary(rows)]:
        if note is not None:
            console.print(note)
    console.print(f"Wrote {run_dir / json_name} and {figure_name} (report.json is left as it was)")
    return 0


def load_aami_model(run_dir: Path) -> tuple[nn.Module, Config, Path]:
    """The run's model on the CPU in fp32 (eval mode) and its config; refused unless its
    classes are the AAMI five, which the beat annotations of any database map to."""
    checkpoint = run_checkpoint(run_dir)
    model, config, class_names = load_checkpoint(checkpoint)
    if class_names != AAMI_CLASSES:
        raise DataError(
            f"{checkpoint}: the model's classes are {', '.join(class_names)}, not the AAMI "
            f"five {', '.join(AAMI_CLASSES)}; only an AAMI model labels WFDB beats"
        )
    return model.float(), config, checkpoint


Classifier = Callable[[BeatSet], NDArray[np.float32]]
"""Class probabilities ``(beats, 5)`` of a set of beats."""


def torch_classifier(model: nn.Module, inference: InferenceConfig) -> Classifier:
    """The saved model on the CPU in fp32 (:func:`~ecgtune.training.predict_proba`), adapted
    to each record as its ``[inference]`` says."""
    return lambda beats: predict_proba(model, beats, inference)


def record_probabilities(classify: Classifier, cut: CutRecord) -> NDArray[np.float32]:
    """Class probabilities ``(beats, 5)`` of the record's beats (no rows when every beat was
    skipped)."""
    if not len(cut.beats):
        return np.zeros((0, len(AAMI_CLASSES)), dtype=np.float32)
    return classify(pool_record_beats([cut.beats]))


def confusion_of(labels: NDArray[np.int64], predicted: NDArray[np.int64]) -> NDArray[np.int64]:
    """5 x 5 beats per (true, predicted) AAMI class; zeros for a record whose every beat was
    skipped (scikit-learn's ``confusion_matrix`` refuses empty input)."""
    if not labels.size:
        return np.zeros((len(AAMI_CLASSES), len(AAMI_CLASSES)), dtype=np.int64)
    matrix: NDArray[np.int64] = confusion_matrix(
        labels, predicted, labels=np.arange(len(AAMI_CLASSES))
    ).astype(np.int64)
    return matrix


def stand_in_notes(name: str, cut: CutRecord, choice: LeadChoice) -> list[str]:
    """One line per lead the record lacked, naming the lead read in its place."""
    return [
        f"record {name}: no {wanted} lead, used {used}"
        for wanted, used in cut.stand_ins(choice).items()
    ]


def record_row(name: str, cut: CutRecord, confusion: NDArray[np.int64]) -> dict[str, Any]:
    """A record's line of the report: the leads used (in channel order) and its rate, beats,
    S and V Se/+P, the matrix."""
    return {
        "record": name,
        "leads": [lead.name for lead in cut.leads],
        "fs": cut.fs,
        "beats": int(confusion.sum()),
        "skipped": cut.beats.skipped,
        **aami_figures(confusion),
        "confusion_matrix": confusion.tolist(),
    }


def aami_figures(confusion: NDArray[np.int64]) -> dict[str, float | None]:
    """``se_S``, ``ppv_S``, ``se_V``, ``ppv_V`` of one record (EC57's per-record figures):
    Se = TP / true beats of the class, None when the record has none; +P = TP / beats
    predicted as the class, None when none were."""
    figures: dict[str, float | None] = {}
    for name in AAMI_REPORTED_CLASSES:
        k = AAMI_CLASSES.index(name)
        hits, support, predicted = confusion[k, k], confusion[k].sum(), confusion[:, k].sum()
        figures[f"se_{name}"] = float(hits / support) if support else None
        figures[f"ppv_{name}"] = float(hits / predicted) if predicted else None
    return figures
