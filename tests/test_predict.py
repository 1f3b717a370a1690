"""``predict RUN_DIR RECORD ...`` on mitdb record 100, copied without its annotation file.

The tiny run of :mod:`tests.test_evaluate_database` is trained once for the module. Beats come
from wfdb's XQRS detector (no ``--annotator``) or from the reference ``atr`` file (given with
``--annotator atr``); the reference beats are read here with ``wfdb.rdann``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import wfdb
from numpy.typing import NDArray

from ecgtune.cli import main

from .conftest import find_mitdb_dir
from .test_evaluate_database import own_probabilities, read_csv, reference_beats, train_tiny_run

CLASSES = "NSVFQ"
COLUMNS = ["sample", "time_s", "label", "p_N", "p_S", "p_V", "p_F", "p_Q"]
TOLERANCE = 54
"""150 ms at 360 Hz: a detected beat this close to a reference beat is that beat."""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("run"), find_mitdb_dir())


@pytest.fixture
def record_100(tmp_path: Path) -> Path:
    """Record 100's header and signal, without its annotation file."""
    folder = tmp_path / "records"
    folder.mkdir()
    for suffix in (".hea", ".dat"):
        shutil.copy(find_mitdb_dir() / f"100{suffix}", folder)
    return folder / "100"


def nearest(detected: NDArray[np.int64], reference: NDArray[np.int64]) -> NDArray[np.intp]:
    """Index of the detected beat nearest to each reference beat."""
    after = np.searchsorted(detected, reference).clip(1, detected.size - 1)
    before = after - 1
    closer = np.abs(detected[after] - reference) < np.abs(detected[before] - reference)
    return np.where(closer, after, before)


@pytest.mark.slow
def test_detected_beats_are_the_reference_beats_and_keep_their_labels(
    run_dir: Path, record_100: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """XQRS finds >= 99% of record 100's reference beats within 150 ms (measured: all 2273,
    none extra); on the matched beats the labels equal those predicted at the reference
    positions for >= 98% (measured with the tiny model: 99.96%)."""
    assert main(["predict", str(run_dir), str(record_100)]) == 0
    out = capsys.readouterr().out
    assert "XQRS" in out and "Predicted beats per class" in out
    detected = read_csv(record_100.with_suffix(".csv"))
    samples = np.array([int(row["sample"]) for row in detected])
    reference, _ = reference_beats(find_mitdb_dir(), "100")
    match = nearest(samples, reference)
    found = np.abs(samples[match] - reference) <= TOLERANCE
    assert found.mean() >= 0.99
    shutil.copy(find_mitdb_dir() / "100.atr", record_100.parent)
    annotated = tmp_path / "annotated"
    assert (
        main(
            [
                "predict",
                str(run_dir),
                str(record_100),
                "--annotator",
                "atr",
                "--out",
                str(annotated),
            ]
        )
        == 0
    )
    at_reference = [row["label"] for row in read_csv(annotated / "100.csv")]
    assert len(at_reference) == reference.size
    same = [detected[j]["label"] == at_reference[i] for i, j in enumerate(match) if found[i]]
    assert np.mean(same) >= 0.98


def test_with_the_annotation_file_predict_labels_every_reference_beat_as_evaluate_does(
    run_dir: Path, record_100: Path, tmp_path: Path
) -> None:
    """Beat for beat: the probabilities equal the model's own on the beats cut here, and the
    labels against the reference give ``evaluate --database``'s confusion matrix."""
    shutil.copy(find_mitdb_dir() / "100.atr", record_100.parent)
    assert main(["predict", str(run_dir), str(record_100), "--annotator", "atr"]) == 0
    rows = read_csv(record_100.with_suffix(".csv"))
    samples, classes = reference_beats(find_mitdb_dir(), "100")
    np.testing.assert_array_equal([int(row["sample"]) for row in rows], samples)

    own = own_probabilities(run_dir, record_100.parent, "100")
    written = np.array([[float(row[column]) for column in COLUMNS[3:]] for row in rows])
    np.testing.assert_allclose(written, own, atol=2e-6)
    labels = np.array([CLASSES.index(row["label"]) for row in rows])
    np.testing.assert_array_equal(labels, own.argmax(axis=1))

    assert main(["evaluate", str(run_dir), "--database", str(record_100.parent)]) == 0
    report = json.loads((run_dir / "evaluation-records.json").read_text())
    confusion = np.zeros((5, 5), dtype=np.int64)
    np.add.at(confusion, (classes, labels), 1)
    np.testing.assert_array_equal(report["records"][0]["confusion_matrix"], confusion)


def test_written_files_read_back_with_wfdb_and_csv(
    run_dir: Path, record_100: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert main(["predict", str(run_dir), str(record_100), "--out", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["100.csv", "100.ecgtune"]
    rows = read_csv(out / "100.csv")
    assert list(rows[0]) == COLUMNS
    annotation = wfdb.rdann(str(out / "100"), "ecgtune")
    np.testing.assert_array_equal(annotation.sample, [int(row["sample"]) for row in rows])
    assert annotation.symbol == [row["label"] for row in rows]
    assert annotation.fs == 360
    assert set(annotation.symbol) <= set(CLASSES)
    probabilities = np.array([[float(row[c]) for c in COLUMNS[3:]] for row in rows])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    labels = [CLASSES[k] for k in probabilities.argmax(axis=1)]
    assert labels == [row["label"] for row in rows]
    times = np.array([float(row["time_s"]) for row in rows])
    np.testing.assert_allclose(times, annotation.sample / 360, atol=5e-4)


BAD_INPUTS = [
    pytest.param(
        ["{tmp}/nope"], "record {tmp}/nope: no header file {tmp}/nope.hea", id="no record"
    ),
    pytest.param(
        ["{record}", "{record}", "--out", "{tmp}/out"],
        "records {record} and {record} would both write {tmp}/out/100.ecgtune; predict them "
        "with different --out folders",
        id="two records, one output",
    ),
    pytest.param(
        ["{record}", "--lead", "II"],
        "record {record}: no lead 'II' (its leads: MLII, V5); choose one with --lead NAME, or "
        "--first-channel to use MLII",
        id="record without the lead",
    ),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_2_with_nothing_written(
    args: list[str],
    message: str,
    run_dir: Path,
    record_100: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    places = {"record": str(record_100), "tmp": str(tmp_path)}
    assert main(["predict", str(run_dir), *(arg.format(**places) for arg in args)]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", f"error: {message.format(**places)}\n")
    assert sorted(path.name for path in record_100.parent.iterdir()) == ["100.dat", "100.hea"]
    assert not list(tmp_path.glob("out/*"))


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(
    run_dir: Path, record_100: Path, unwritable_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", str(run_dir), str(record_100), "--out", str(unwritable_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out = '{unwritable_dir}': cannot write there (")
    assert err.endswith("); choose a writable folder\n") and err.count("\n") == 1


def test_predict_through_onnx_runtime_gives_torchs_labels(
    run_dir: Path, record_100: Path, tmp_path: Path
) -> None:
    """``--onnx``: the exported model, run by ONNX Runtime, labels every beat as torch does."""
    shutil.copy(find_mitdb_dir() / "100.atr", record_100.parent)
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", str(run_dir), "--out", str(onnx_file)]) == 0
    by_torch, by_onnx = tmp_path / "torch", tmp_path / "onnx"
    command = ["predict", str(run_dir), str(record_100), "--annotator", "atr", "--out"]
    assert main([*command, str(by_torch)]) == 0
    assert main([*command, str(by_onnx), "--onnx", str(onnx_file)]) == 0
    torch_rows, onnx_rows = read_csv(by_torch / "100.csv"), read_csv(by_onnx / "100.csv")
    assert len(torch_rows) == len(onnx_rows) > 2000
    assert [row["label"] for row in onnx_rows] == [row["label"] for row in torch_rows]
    probabilities = [[float(row[column]) for column in COLUMNS[3:]] for row in onnx_rows]
    reference = [[float(row[column]) for column in COLUMNS[3:]] for row in torch_rows]
    np.testing.assert_allclose(probabilities, reference, atol=1e-4)
