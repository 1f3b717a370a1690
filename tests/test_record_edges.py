"""Real annotation files' odd beats: skipped and counted, not fatal; ``--strict`` refuses them.

The database holds copies of mitdb records written with ``wfdb.wrsamp``/``wfdb.wrann``: 100
with an extra beat at the sample equal to the signal's length (as PhysioNet's 128 Hz databases
have), 119 with an extra beat 5.6 ms after its first sample (within ``EDGE_SECONDS``), and 105
whose annotation file has a beat before the one it follows (written word by word: wfdb refuses
to write one).
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import wfdb

from ecgtune.cli import main
from ecgtune.config import DataConfig, validate_config
from ecgtune.data.beats import LONE, RR_COLUMNS, segment_record
from ecgtune.data.records import Annotations, Lead, read_annotations, read_named_leads

from .conftest import find_mitdb_dir, run_hypertune
from .test_evaluate_database import reference_beats, train_tiny_run

pytestmark = pytest.mark.filterwarnings(
    # wfdb.wrsamp's header writer uses a pandas keyword that pandas deprecates; not ours to fix.
    "ignore:The inplace keyword in DataFrame.drop::wfdb"
)

END, START = "edge_end", "edge_start"
RR_OWN_INTERVALS = ("rr_previous", "rr_next", "rr_previous_by_local", "rr_next_by_local")
"""RR features that do not depend on the record's mean RR."""


def write_copy(mitdb_dir: Path, record: str, folder: Path, name: str, extra: int) -> None:
    """``record`` as ``name`` in ``folder``: the same digital signal, and its annotations with
    one more normal beat at sample ``extra`` (negative: counted from the signal's length)."""
    source = wfdb.rdrecord(str(mitdb_dir / record), physical=False)
    wfdb.wrsamp(
        name,
        fs=source.fs,
        units=source.units,
        sig_name=source.sig_name,
        d_signal=source.d_signal,
        fmt=source.fmt,
        adc_gain=source.adc_gain,
        baseline=source.baseline,
        write_dir=str(folder),
    )
    annotation = wfdb.rdann(str(mitdb_dir / record), "atr")
    extra_sample = extra if extra >= 0 else source.sig_len + extra + 1
    samples = np.append(annotation.sample, extra_sample)
    symbols = [*annotation.symbol, "N"]
    order = np.argsort(samples, kind="stable")
    wfdb.wrann(
        name,
        "atr",
        samples[order],
        symbol=[symbols[k] for k in order],
        fs=source.fs,
        write_dir=str(folder),
    )


def write_decreasing_annotations(mitdb_dir: Path, folder: Path) -> None:
    """Record 105's header and signal, and an ``atr`` file in MIT format whose second beat
    (sample 50) comes before its first (sample 100): a SKIP word carries the interval -50."""
    for suffix in (".hea", ".dat"):
        shutil.copy(mitdb_dir / f"105{suffix}", folder)
    normal, skip = 1, 59
    minus_50 = (0xFFFF, 0xFFCE)  # a 32-bit -50, high 16 bits first (WFDB's PDP-11 order)
    words = [normal << 10 | 100, skip << 10, *minus_50, normal << 10, 0]
    (folder / "105.atr").write_bytes(struct.pack(f"<{len(words)}H", *words))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("run"), find_mitdb_dir())


@pytest.fixture(scope="module")
def odd_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("db") / "odddb"
    folder.mkdir()
    mitdb_dir = find_mitdb_dir()
    write_copy(mitdb_dir, "100", folder, END, extra=-1)
    write_copy(mitdb_dir, "119", folder, START, extra=2)
    (folder / "RECORDS").write_text(f"{END}\n{START}\n", encoding="utf-8")
    return folder


def evaluation(run_dir: Path, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((run_dir / f"evaluation-{name}.json").read_text())
    return result


def test_the_written_copies_hold_the_odd_beats(odd_db: Path) -> None:
    header = wfdb.rdheader(str(odd_db / END))
    assert wfdb.rdann(str(odd_db / END), "atr").sample[-1] == header.sig_len
    assert 2 in wfdb.rdann(str(odd_db / START), "atr").sample


def test_odd_beats_are_skipped_and_counted_and_every_other_beat_evaluated(
    run_dir: Path, odd_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mitdb = str(find_mitdb_dir())
    assert main(["evaluate", str(run_dir), "--database", mitdb, "--records", "100", "119"]) == 0
    originals = {row["record"]: row for row in evaluation(run_dir, "mitdb")["records"]}
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--database", str(odd_db)]) == 0
    out = capsys.readouterr().out
    assert (
        "Skipped annotations: 1 outside the signal, 1 window past the edge (records edge_end, "
        "edge_start; --strict refuses them)" in out
    )
    report = evaluation(run_dir, "odddb")
    rows = {row["record"]: row for row in report["records"]}
    assert rows[END]["skipped"] == {"outside the signal": 1}
    assert rows[START]["skipped"] == {"window past the edge": 1}
    assert report["skipped"] == {"outside the signal": 1, "window past the edge": 1}
    for copy, original in ((END, "100"), (START, "119")):
        _, truth = reference_beats(find_mitdb_dir(), original)
        assert rows[copy]["beats"] == originals[original]["beats"] == truth.size
    # The beat past the end changes no other beat: the same predictions as the original.
    assert rows[END]["confusion_matrix"] == originals["100"]["confusion_matrix"]
    assert report["metrics"]["n_beats"] == rows[END]["beats"] + rows[START]["beats"]
    assert report["beats_per_second"] == pytest.approx(
        report["metrics"]["n_beats"] / report["seconds"]
    )


def test_strict_refuses_a_record_with_skipped_beats_in_one_line(
    run_dir: Path, odd_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(run_dir / "best_model.pt", run)
    assert main(["evaluate", str(run), "--database", str(odd_db), "--strict"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        f"error: record {odd_db / END}: annotations skipped: 1 outside the signal (--strict; "
        f"without it they are skipped and counted)\n"
    )
    assert sorted(path.name for path in run.iterdir()) == ["best_model.pt"]
    args = ["predict", str(run), str(odd_db / START), "--annotator", "atr", "--out", str(tmp_path)]
    assert main([*args, "--strict"]) == 2
    assert "1 window past the edge (--strict;" in capsys.readouterr().err
    assert not list(tmp_path.glob(f"{START}.*"))


def test_predict_skips_the_same_beats_and_labels_the_rest(
    run_dir: Path, odd_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["predict", str(run_dir), str(odd_db / END), "--annotator", "atr"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    assert "Skipped annotations: 1 outside the signal (records edge_end;" in capsys.readouterr().out
    samples, _ = reference_beats(find_mitdb_dir(), "100")
    lines = (tmp_path / f"{END}.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in lines] == samples.tolist()


def test_an_annotation_file_with_decreasing_samples_is_refused(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_decreasing_annotations(find_mitdb_dir(), tmp_path)
    assert wfdb.rdann(str(tmp_path / "105"), "atr").sample.tolist() == [100, 50]
    assert main(["evaluate", str(run_dir), "--database", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / '105.atr'}: not a WFDB annotation file (its sample numbers are "
        f"negative or out of order)\n"
    )


def test_a_database_with_no_beat_left_to_evaluate_is_refused(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Record 100's signal with two beats only, at its first and last samples: both skipped."""
    for suffix in (".hea", ".dat"):
        shutil.copy(find_mitdb_dir() / f"100{suffix}", tmp_path)
    n = wfdb.rdheader(str(tmp_path / "100")).sig_len
    wfdb.wrann("100", "atr", np.array([1, n - 2]), symbol=["N", "N"], write_dir=str(tmp_path))
    assert main(["evaluate", str(run_dir), "--database", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"error: --database {tmp_path}: no beat left to evaluate in 1 record(s) (every beat "
        f"annotation was skipped)\n"
    )
    assert main(["predict", str(run_dir), str(tmp_path / "100"), "--annotator", "atr"]) == 2
    assert capsys.readouterr().err == (
        f"error: record {tmp_path / '100'}: no beat left to label (skipped: 2 window past the "
        f"edge)\n"
    )
    assert not list(tmp_path.glob("100.ecgtune"))


def test_a_one_beat_record_is_skipped_and_counted_like_the_other_odd_records(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Record 100's signal with one beat annotation, beside an intact record 119: the lone
    beat (no RR interval to measure) is skipped and counted and 119 evaluated; ``--strict``
    refuses it in one line from the real command line, writing nothing."""
    database = tmp_path / "lonedb"
    database.mkdir()
    mitdb = find_mitdb_dir()
    for name, suffixes in (("100", (".hea", ".dat")), ("119", (".hea", ".dat", ".atr"))):
        for suffix in suffixes:
            shutil.copy(mitdb / f"{name}{suffix}", database)
    wfdb.wrann("100", "atr", np.array([5000]), symbol=["N"], write_dir=str(database))
    (database / "RECORDS").write_text("100\n119\n", encoding="utf-8")
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(run_dir / "best_model.pt", run)
    strict = run_hypertune(
        "evaluate", str(run), "--database", str(database), "--strict", cwd=tmp_path
    )
    assert (strict.returncode, strict.stdout) == (2, "")
    assert strict.stderr == (
        f"error: record {database / '100'}: annotations skipped: 1 lone beat (no RR interval) "
        f"(--strict; without it they are skipped and counted)\n"
    )
    assert sorted(path.name for path in run.iterdir()) == ["best_model.pt"]
    assert main(["evaluate", str(run), "--database", str(database)]) == 0
    assert (
        "Skipped annotations: 1 lone beat (no RR interval) (records 100; --strict refuses them)"
        in capsys.readouterr().out
    )
    report = evaluation(run, "lonedb")
    rows = {row["record"]: row for row in report["records"]}
    assert rows["100"]["beats"] == 0 and rows["100"]["skipped"] == {LONE: 1}
    _, truth = reference_beats(mitdb, "119")
    assert rows["119"]["beats"] == report["metrics"]["n_beats"] == truth.size
    assert report["skipped"] == {LONE: 1}


def test_segment_record_counts_each_reason_and_keeps_every_other_beat() -> None:
    """Record 100 with a beat 3 samples before its end and an annotation symbol WFDB does not
    define: the same beats and labels as the record itself, and the same signals and RR features
    but where the extra beat's interval enters them (the last window's median RR, the last
    beat's next RR)."""
    mitdb_dir = find_mitdb_dir()
    config = validate_config({"data": {"raw_dir": str(mitdb_dir)}}, source="test").data
    leads = read_named_leads(mitdb_dir / "100", config.leads, first_channel=False)
    annotations = read_annotations(mitdb_dir, "100")
    n = leads[0].signal.size
    odd = Annotations(
        samples=np.append(annotations.samples, [n - 3, n - 2]),
        symbols=np.append(annotations.symbols, ["N", "Z"]),
    )
    clean = segment_record("100", leads, annotations, config)
    beats = segment_record("100", leads, odd, config)
    assert clean.skipped == {}
    assert beats.skipped == {"window past the edge": 1, "unknown symbol": 1}
    np.testing.assert_array_equal(beats.samples, clean.samples)
    np.testing.assert_array_equal(beats.labels, clean.labels)
    before_last_window = clean.samples < n - config.window_seconds * leads[0].fs
    np.testing.assert_array_equal(
        beats.signals[before_last_window], clean.signals[before_last_window]
    )
    own_intervals = [RR_COLUMNS.index(name) for name in RR_OWN_INTERVALS]
    np.testing.assert_array_equal(beats.rr[:-1, own_intervals], clean.rr[:-1, own_intervals])
    np.testing.assert_allclose(beats.rr[:-1], clean.rr[:-1], rtol=2e-3)


@pytest.mark.parametrize(
    ("samples", "kept", "skipped"),
    [
        ([4, 400, 800, 3595], [4, 400, 800, 3595], {}),
        ([3, 400, 800, 3596], [400, 800], {"window past the edge": 2}),
    ],
    ids=["just-inside", "just-outside"],
)
def test_the_edge_margin_is_exact_at_both_ends(
    samples: list[int], kept: list[int], skipped: dict[str, int]
) -> None:
    """10 s at 360 Hz: EDGE_SECONDS is round(3.6) = 4 samples, so sample 4 and sample 3595
    (3600 - 4 - 1) are the first and last R peaks kept."""
    lead = Lead(signal=np.random.default_rng(0).normal(size=3600), fs=360.0, name="MLII")
    annotations = Annotations(np.array(samples), np.array(["N"] * len(samples)))
    beats = segment_record("edges", [lead], annotations, DataConfig())
    assert beats.samples.tolist() == kept
    assert beats.skipped == skipped


@pytest.mark.parametrize("n_leads", [1, 2])
def test_a_record_of_one_beat_is_empty_in_every_array_and_counts_each_skip(n_leads: int) -> None:
    """One beat inside the signal, one past its end, one symbol WFDB does not define: no beat is
    kept, every array is empty with the shape and type of a record's beats (one lead or two),
    and each annotation is counted by its reason, the lone beat as a lone beat."""
    signal = np.random.default_rng(0).normal(size=3600)
    leads = [Lead(signal=signal, fs=360.0, name=name) for name in ("MLII", "V1")[:n_leads]]
    annotations = Annotations(
        samples=np.array([1800, 2000, 4000]), symbols=np.array(["N", "Z", "V"])
    )
    config = DataConfig(leads=["MLII", "V1"][:n_leads])
    beats = segment_record("lone", leads, annotations, config)
    length = config.beat_length
    assert beats.record == "lone"
    assert beats.signals.shape == ((0, length) if n_leads == 1 else (0, n_leads, length))
    assert beats.signals.dtype == np.float32
    assert beats.labels.shape == (0,) and beats.labels.dtype == np.int64
    assert beats.rr.shape == (0, len(RR_COLUMNS)) and beats.rr.dtype == np.float32
    assert beats.samples.shape == (0,) and beats.samples.dtype == np.int64
    assert beats.symbols.shape == (0,) and beats.symbols.dtype.kind == "U"
    assert beats.skipped == {"outside the signal": 1, "unknown symbol": 1, LONE: 1}
