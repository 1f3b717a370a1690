"""``evaluate RUN_DIR --database DIR`` on a small "other database" built from real mitdb records.

The other database holds records 100, 119 and 208 rewritten with ``wfdb.wrsamp`` at another
sampling rate (100 and 119 at 250 Hz, 208 at 128 Hz), their two leads in swapped order, and
their ``atr`` annotations at the rescaled samples (``wfdb.wrann``), listed in a ``RECORDS``
file. A tiny CNN is trained once for the module on six mitdb records and saved as a run.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import wfdb
from numpy.typing import NDArray
from scipy.signal import resample_poly
from sklearn.metrics import confusion_matrix

from ecgtune.cli import main
from ecgtune.config import validate_config
from ecgtune.data import load_dataset
from ecgtune.data.beats import segment_record
from ecgtune.data.build import pool_record_beats
from ecgtune.data.records import read_annotations, read_named_leads
from ecgtune.models import build_model
from ecgtune.report import load_checkpoint, save_checkpoint
from ecgtune.training import beats_to_tensors, train_model

from .conftest import QUICK_RECORDS, REPO_ROOT, TINY_CNN, find_mitdb_dir, run_hypertune

pytestmark = pytest.mark.filterwarnings(
    # wfdb.wrsamp's header writer uses a pandas keyword that pandas deprecates; not ours to fix.
    "ignore:The inplace keyword in DataFrame.drop::wfdb"
)

OTHER_RATES = {"100": 250, "119": 250, "208": 128}
"""Records of the other database and their new sampling rates (mitdb: 360 Hz)."""
# DESIGN.md's AAMI mapping, written out independently of the code under test.
AAMI = {"N": "NLRej", "S": "AaJS", "V": "VE", "F": "F", "Q": "/fQ"}
CLASS_OF = {symbol: index for index, symbols in enumerate(AAMI.values()) for symbol in symbols}
S, V = 1, 2


def train_tiny_run(run_dir: Path, mitdb_dir: Path) -> Path:
    """A run folder holding ``best_model.pt``: a tiny CNN, 3 epochs on 6 records x 400 beats."""
    raw = {
        "seed": 7,
        "data": {
            "raw_dir": str(mitdb_dir),
            "records": QUICK_RECORDS,
            "max_beats_per_record": 400,
            "cache_dir": str(run_dir / "cache"),
        },
        "model": TINY_CNN,
        "training": {"epochs": 3, "batch_size": 64, "num_threads": 1, "device": "cpu"},
    }
    config = validate_config(raw, source="test config")
    dataset = load_dataset(config)
    model = train_model(config, dataset).model
    save_checkpoint(run_dir / "best_model.pt", model, config, dataset.class_names)
    return run_dir


def write_resampled_copy(mitdb_dir: Path, record: str, folder: Path, fs: int) -> None:
    """``record`` at ``fs`` Hz in ``folder``: physical signal resampled, leads swapped,
    annotation samples rescaled."""
    source = wfdb.rdrecord(str(mitdb_dir / record))
    ratio = Fraction(fs, int(source.fs))
    signal = resample_poly(source.p_signal, ratio.numerator, ratio.denominator, axis=0)
    wfdb.wrsamp(
        record,
        fs=fs,
        units=source.units[::-1],
        sig_name=source.sig_name[::-1],
        p_signal=signal[:, ::-1],
        fmt=["212", "212"],
        adc_gain=[200.0, 200.0],
        baseline=[0, 0],
        write_dir=str(folder),
    )
    annotation = wfdb.rdann(str(mitdb_dir / record), "atr")
    samples = np.rint(annotation.sample * fs / source.fs).astype(np.int64)
    wfdb.wrann(record, "atr", samples, symbol=annotation.symbol, fs=fs, write_dir=str(folder))


def build_other_database(mitdb_dir: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for record, fs in OTHER_RATES.items():
        write_resampled_copy(mitdb_dir, record, folder, fs)
    (folder / "RECORDS").write_text("\n".join(OTHER_RATES) + "\n", encoding="utf-8")
    return folder


def reference_beats(folder: Path, record: str) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Sample and AAMI class of every beat annotation of the record, read with wfdb.rdann."""
    annotation = wfdb.rdann(str(folder / record), "atr")
    is_beat = np.isin(annotation.symbol, list(CLASS_OF))
    classes = [CLASS_OF[symbol] for symbol in np.asarray(annotation.symbol)[is_beat]]
    return np.asarray(annotation.sample)[is_beat], np.array(classes, dtype=np.int64)


def own_probabilities(run_dir: Path, folder: Path, record: str) -> NDArray[np.float32]:
    """The model's class probabilities for every beat, computed here: beats cut by
    ``segment_record`` with the checkpoint's rules (all beats), pooled and made tensors as the
    trainer does, one plain forward pass in fp32."""
    model, config, _ = load_checkpoint(run_dir / "best_model.pt")
    rules = config.data.model_copy(update={"max_beats_per_record": None})
    leads = read_named_leads(folder / record, config.data.leads, first_channel=False)
    beats = segment_record(record, leads, read_annotations(folder, record), rules)
    signals, rr, _ = beats_to_tensors(pool_record_beats([beats]), torch.device("cpu"))
    with torch.no_grad():
        probabilities: NDArray[np.float32] = torch.softmax(model(signals, rr), dim=1).numpy()
    return probabilities


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def se_ppv(matrix: NDArray[np.int64], k: int) -> tuple[float | None, float | None]:
    hits, true, predicted = matrix[k, k], matrix[k].sum(), matrix[:, k].sum()
    return (hits / true if true else None), (hits / predicted if predicted else None)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("run"), find_mitdb_dir())


@pytest.fixture(scope="module")
def other_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_other_database(find_mitdb_dir(), tmp_path_factory.mktemp("db") / "otherdb")


def evaluation(run_dir: Path, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((run_dir / f"evaluation-{name}.json").read_text())
    return result


def test_every_beat_counted_and_figures_agree_with_own_confusion_matrix(
    run_dir: Path, other_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (run_dir / "report.json").write_text('{"training": "report"}')
    assert main(["evaluate", str(run_dir), "--database", str(other_db)]) == 0
    out = capsys.readouterr().out
    assert "otherdb: per record" in out and "AAMI: S Se" in out and "macro avg" in out
    report = evaluation(run_dir, "otherdb")
    rows = {row["record"]: row for row in report["records"]}
    assert list(rows) == list(OTHER_RATES)
    total = np.zeros((5, 5), dtype=np.int64)
    for record, fs in OTHER_RATES.items():
        _, truth = reference_beats(other_db, record)
        predicted = own_probabilities(run_dir, other_db, record).argmax(axis=1)
        own = confusion_matrix(truth, predicted, labels=range(5))
        row = rows[record]
        assert (row["leads"], row["fs"], row["beats"]) == (["MLII"], fs, truth.size)
        np.testing.assert_array_equal(row["confusion_matrix"], own)
        assert (row["se_S"], row["ppv_S"]) == pytest.approx(se_ppv(own, S))
        assert (row["se_V"], row["ppv_V"]) == pytest.approx(se_ppv(own, V))
        total += own
    metrics = report["metrics"]
    assert metrics["n_beats"] == total.sum() == 2273 + 1987 + 2955
    np.testing.assert_array_equal(metrics["confusion_matrix"], total)
    aami = metrics["aami"]
    assert (aami["se_S"], aami["ppv_S"]) == pytest.approx(se_ppv(total, S))
    assert (aami["se_V"], aami["ppv_V"]) == pytest.approx(se_ppv(total, V))
    assert (run_dir / "evaluation-otherdb.png").read_bytes().startswith(b"\x89PNG")
    assert (run_dir / "report.json").read_text() == '{"training": "report"}'
    assert not (run_dir / "evaluation.json").exists()


def test_resampled_copies_label_like_the_360_hz_originals(
    run_dir: Path, other_db: Path, tmp_path: Path
) -> None:
    """The 250 Hz and 128 Hz copies (leads swapped) against the original records: the same
    beats, at the rescaled samples, and the same label for at least 97% of them (measured with
    this tiny model: 98.6%)."""
    mitdb_dir = find_mitdb_dir()
    originals = [str(mitdb_dir / record) for record in OTHER_RATES]
    copies = [str(other_db / record) for record in OTHER_RATES]
    for records, out in ((originals, "360"), (copies, "copy")):
        args = ["predict", str(run_dir), *records, "--annotator", "atr", "--out"]
        assert main([*args, str(tmp_path / out)]) == 0
    same = beats = 0
    for record, fs in OTHER_RATES.items():
        original = read_csv(tmp_path / "360" / f"{record}.csv")
        copy = read_csv(tmp_path / "copy" / f"{record}.csv")
        rescaled = np.rint(np.array([int(row["sample"]) for row in original]) * fs / 360)
        np.testing.assert_array_equal([int(row["sample"]) for row in copy], rescaled)
        same += sum(a["label"] == b["label"] for a, b in zip(original, copy, strict=True))
        beats += len(original)
    assert same / beats >= 0.97


def test_the_model_s_lead_is_found_by_name_or_the_first_channel_on_request(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """mitdb 102 has no MLII: --first-channel evaluates its first channel (V5) and says so."""
    mitdb = str(find_mitdb_dir())
    args = ["evaluate", str(run_dir), "--database", mitdb, "--records", "102", "--first-channel"]
    assert main(args) == 0
    assert "record 102: no MLII lead, used V5" in capsys.readouterr().out
    (row,) = evaluation(run_dir, "mitdb")["records"]
    assert (row["record"], row["leads"], row["beats"]) == ("102", ["V5"], 2187)


def test_a_model_trained_for_a_gpu_in_fp16_evaluates_on_the_cpu_in_fp32(
    run_dir: Path, other_db: Path, tmp_path: Path
) -> None:
    """The stored config says cuda and fp16 (neither usable here): same figures as fp32."""
    model, config, names = load_checkpoint(run_dir / "best_model.pt")
    stored = config.model_copy(deep=True)
    stored.training.device, stored.training.precision = "cuda", "fp16"
    save_checkpoint(tmp_path / "best_model.pt", model, stored, names)
    assert main(["evaluate", str(run_dir), "--database", str(other_db)]) == 0
    assert main(["evaluate", str(tmp_path), "--database", str(other_db)]) == 0
    gpu, cpu = evaluation(tmp_path, "otherdb"), evaluation(run_dir, "otherdb")
    assert gpu["metrics"] == cpu["metrics"] and gpu["records"] == cpu["records"]


@pytest.fixture(scope="module")
def two_class_run(tmp_path_factory: pytest.TempPathFactory, run_dir: Path) -> Path:
    """A run whose model has two classes (a Kaggle-style labelling): not the AAMI five."""
    _, config, _ = load_checkpoint(run_dir / "best_model.pt")
    folder = tmp_path_factory.mktemp("two-class")
    save_checkpoint(folder / "best_model.pt", build_model(config, 2), config, ["normal", "other"])
    return folder


BAD_INPUTS = [
    pytest.param(
        ["{run}", "--database", "{tmp}/nowhere"],
        "--database {tmp}/nowhere: no such folder",
        id="missing folder",
    ),
    pytest.param(
        ["{run}", "--database", "{tmp}"],
        "--database {tmp}: not a WFDB database (no RECORDS file and no .hea headers)",
        id="not a database",
    ),
    pytest.param(
        ["{run}", "--database", "{db}", "--records", "100", "999"],
        "--records: unknown record '999' in {db} (3 records: 100, 119, 208)",
        id="unknown record",
    ),
    pytest.param(
        ["{run}", "--database", "{db}", "--lead", "V9"],
        "record {db}/100: no lead 'V9' (its leads: V5, MLII); choose one with --lead NAME, "
        "or --first-channel to use V5",
        id="record without the lead",
    ),
    pytest.param(
        ["{run}", "--database", "{db}", "--annotator", "qrs"],
        "record {db}/100: no annotation file {db}/100.qrs (--annotator qrs)",
        id="record without the annotator",
    ),
    pytest.param(
        ["{two}", "--database", "{db}"],
        "{two}/best_model.pt: the model's classes are normal, other, not the AAMI five "
        "N, S, V, F, Q; only an AAMI model labels WFDB beats",
        id="not an AAMI model",
    ),
    pytest.param(
        ["{run}", "--lead", "MLII"],
        "--lead needs --database DIR (it chooses records of a database)",
        id="record option without a database",
    ),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_2_with_nothing_written(
    args: list[str],
    message: str,
    run_dir: Path,
    two_class_run: Path,
    other_db: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(run_dir / "best_model.pt", run)
    (tmp_path / "notes.txt").write_text("no records here")
    places = {"run": str(run), "two": str(two_class_run), "db": str(other_db), "tmp": str(tmp_path)}
    argv = ["evaluate", *(arg.format(**places) for arg in args)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {message.format(**places)}\n"
    assert captured.out == ""
    assert sorted(path.name for path in run.iterdir()) == ["best_model.pt"]
    assert not list(two_class_run.glob("evaluation*"))


@pytest.mark.slow
def test_a_folder_that_is_not_a_database_fails_in_a_real_process(
    run_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "100.dat").write_bytes(b"a signal file without its header")
    result = subprocess.run(
        [sys.executable, REPO_ROOT / "hypertune.py", "evaluate", run_dir, "--database", tmp_path],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"error: --database {tmp_path}: not a WFDB database (no RECORDS file and no .hea "
        f"headers)\n"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["evaluate", "--config", "{repo}/config.toml"],
        ["evaluate", "--database", "{mitdb}"],
        ["predict", "{mitdb}/100"],
        ["export"],
    ],
    ids=["evaluate", "evaluate --database", "predict", "export"],
)
def test_a_run_dir_that_does_not_exist_is_named_as_a_missing_folder(
    args: list[str], tmp_path: Path
) -> None:
    """Every command that reads a run's model, from the real command line: the folder is
    missing (not "checkpoint not found"), one line, exit 2, nothing created."""
    missing = tmp_path / "runs" / "nowhere"
    mitdb = str(find_mitdb_dir())
    command, *rest = (arg.format(mitdb=mitdb, repo=REPO_ROOT) for arg in args)
    result = run_hypertune(command, str(missing), *rest, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"error: RUN_DIR {missing}: no such folder (a run folder holds best_model.pt; train "
        f"and tune write theirs under tracking.output_dir)\n"
    )
    assert list(tmp_path.iterdir()) == []
