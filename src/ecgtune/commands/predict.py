"""``hypertune.py predict RUN_DIR RECORD [RECORD ...]``: label every beat of new recordings.

A RECORD is a WFDB record path without extension (header + signal). Its beats are at the
samples of its annotation file when ``--annotator EXT`` is given and the record has
``RECORD.EXT``; otherwise at the R peaks wfdb's XQRS detector finds
(:mod:`ecgtune.data.detect`). Either way they are cut by the model's own ``[data]`` rules
(:func:`ecgtune.data.wfdb_database.cut_record`) and classified on the CPU in fp32, as
``evaluate --database`` does, so both give the same label to the same beat.

Per record, in ``--out`` (default: beside the record):

* ``RECORD.ecgtune``: a WFDB annotation file, one AAMI symbol (N, S, V, F, Q; all standard
  WFDB beat symbols) at each beat's R-peak sample; ``wfdb.rdann(RECORD, "ecgtune")`` and WFDB
  viewers read it;
* ``RECORD.csv``: ``sample`` (at the record's rate), ``time_s``, ``label``, then ``p_N`` ...
  ``p_Q``, the model's probability of each class (they sum to 1).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import wfdb
from numpy.typing import NDArray

from ecgtune.commands.common import check_writable
from ecgtune.commands.evaluate import (
    Classifier,
    load_aami_model,
    record_probabilities,
    stand_in_notes,
    torch_classifier,
)
from ecgtune.config import AAMI_CLASSES
from ecgtune.console import make_console
from ecgtune.console.evaluation import beat_progress, class_count_table, skip_summary
from ecgtune.data.beats import describe_skips
from ecgtune.data.files import atomic_write
from ecgtune.data.records import annotation_path, check_header
from ecgtune.data.wfdb_database import CutRecord, choose_leads, cut_records
from ecgtune.errors import DataError, UserError
from ecgtune.export.onnx import OnnxClassifier, refuse_adaptation

ANNOTATION_EXTENSION = "ecgtune"
CSV_COLUMNS = ("sample", "time_s", "label", *(f"p_{name}" for name in AAMI_CLASSES))


def predict_command(
    run_dir: Path,
    records: Sequence[Path],
    leads: Sequence[str] | None = None,
    annotator: str | None = None,
    out: Path | None = None,
    first_channel: bool = False,
    onnx: Path | None = None,
    strict: bool = False,
) -> int:
    """Label every beat of each record, read from ``leads`` (default: the model's), and write
    its ``.ecgtune`` and ``.csv``; 0 when done. With ``onnx`` (a file written by ``export``)
    the beats go through ONNX Runtime instead of torch; the beat rules still come from
    ``run_dir``'s model. Annotations outside a record or at its edges are skipped and counted
    (``strict``: refused)."""
    model, config, _ = load_aami_model(run_dir)
    choice = choose_leads(leads, config.data, first_channel)
    if onnx is None:
        probabilities_of = torch_classifier(model, config.inference)
    else:
        refuse_adaptation(config, f"--onnx {onnx}")
        probabilities_of = onnx_classifier(onnx)
    targets = output_targets(records, out)
    console = make_console()
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    jobs = [(record, beats_from(record, annotator)) for record in records]
    cuts = cut_records(jobs, choice, config.data, strict)
    with beat_progress(console, len(records)) as record_done:
        for record, target, cut in zip(records, targets, cuts, strict=True):
            if not len(cut.beats):
                raise DataError(
                    f"record {record}: no beat left to label (skipped: "
                    f"{describe_skips(cut.beats.skipped)})"
                )
            probabilities = record_probabilities(probabilities_of, cut)
            predicted = probabilities.argmax(axis=1)
            write_annotation_file(target, cut, predicted)
            write_csv(target, cut, probabilities, predicted)
            counts = np.bincount(predicted, minlength=len(AAMI_CLASSES)).tolist()
            notes.extend(stand_in_notes(record.name, cut, choice))
            rows.append(
                {
                    "record": record.name,
                    "source": cut.source,
                    "counts": dict(zip(AAMI_CLASSES, counts, strict=True)),
                    "skipped": cut.beats.skipped,
                }
            )
            record_done(len(cut.beats))
    console.print(class_count_table(rows))
    for note in [*notes, skip_summary(rows)]:
        if note is not None:
            console.print(note)
    folders = sorted({str(target.parent) for target in targets})
    console.print(f"Wrote RECORD.{ANNOTATION_EXTENSION} and RECORD.csv in {', '.join(folders)}")
    return 0


def onnx_classifier(path: Path) -> Classifier:
    """An exported model run by ONNX Runtime; its classes must be the AAMI five."""
    classifier = OnnxClassifier(path)
    if tuple(classifier.spec["class_names"]) != AAMI_CLASSES:
        raise DataError(
            f"{path}: the model's classes {classifier.spec['class_names']} are not the AAMI "
            f"five {list(AAMI_CLASSES)}"
        )
    return classifier.probabilities


def beats_from(record: Path, annotator: str | None) -> str | None:
    """The annotator whose file gives the beat positions, or None for the QRS detector: the
    record has no ``--annotator`` file, or none was asked for."""
    if annotator is not None and annotation_path(record, annotator).is_file():
        return annotator
    return None


def output_targets(records: Sequence[Path], out: Path | None) -> list[Path]:
    """``<folder>/<record name>`` (no extension) of each record's output files, checked before
    any work: every record has a header, every folder is writable, no two records write the
    same files."""
    targets: list[Path] = []
    for record in records:
        check_header(record)
        folder = record.parent if out is None else out
        check_writable({"--out" if out else f"--out (default: beside record {record})": folder})
        target = (folder / record.name).resolve()
        if target in targets:
            raise UserError(
                f"records {records[targets.index(target)]} and {record} would both write "
                f"{target}.{ANNOTATION_EXTENSION}; predict them with different --out folders"
            )
        targets.append(target)
    return targets


def write_annotation_file(target: Path, cut: CutRecord, predicted: NDArray[np.int64]) -> None:
    """``target.ecgtune``: the predicted AAMI symbol at each beat's sample. wfdb writes it
    in a scratch folder beside ``target`` (under a name it accepts: record names with dots
    are refused), then it is moved into place, so no half-written file is ever left."""
    symbols = [AAMI_CLASSES[k] for k in predicted]
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".ecgtune-") as scratch:
        wfdb.wrann(
            "record",
            ANNOTATION_EXTENSION,
            sample=cut.beats.samples,
            symbol=symbols,
            fs=cut.fs,
            write_dir=scratch,
        )
        os.replace(
            Path(scratch) / f"record.{ANNOTATION_EXTENSION}",
            target.with_name(f"{target.name}.{ANNOTATION_EXTENSION}"),
        )


def write_csv(
    target: Path,
    cut: CutRecord,
    probabilities: NDArray[np.float32],
    predicted: NDArray[np.int64],
) -> None:
    """``target.csv``: one line per beat, the columns of :data:`CSV_COLUMNS`."""
    samples = cut.beats.samples
    lines = [",".join(CSV_COLUMNS)]
    for sample, label, row in zip(samples, predicted, probabilities, strict=True):
        chances = ",".join(f"{p:.6f}" for p in row)
        lines.append(f"{sample},{sample / cut.fs:.3f},{AAMI_CLASSES[label]},{chances}")
    with atomic_write(target.with_name(f"{target.name}.csv")) as stream:
        stream.write(("\n".join(lines) + "\n").encode("utf-8"))
