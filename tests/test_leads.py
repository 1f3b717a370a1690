"""``data.leads``: both leads of a mitdb record as input channels, from the build to the model,
``evaluate --database``, ``predict`` and ONNX export.

The two-lead dataset is built once for the module from records 100 (MLII, V5), 114 (V5, MLII)
and 201 (MLII, V1), 200 beats each; a tiny CNN is trained one epoch on it and saved as a run.
The expected beats are cut from the channels the headers name, read here with wfdb.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
import torch
import wfdb
from imblearn.over_sampling import SMOTE
from numpy.typing import NDArray
from torch import nn

from ecgtune.cli import main
from ecgtune.commands.export import export_command
from ecgtune.config import Config, DataConfig, validate_config
from ecgtune.data import Dataset, load_dataset
from ecgtune.data.beats import segment_record
from ecgtune.data.dataset import BeatSet
from ecgtune.data.records import Lead, lead_channels, read_annotations
from ecgtune.data.resampling import resample_train_split
from ecgtune.errors import ConfigError
from ecgtune.export import beat_inputs
from ecgtune.export.onnx import ONNX_NAME, PARITY_TOLERANCE, OnnxClassifier
from ecgtune.report import CHECKPOINT_NAME, save_checkpoint
from ecgtune.training import beats_to_tensors, predict_proba, train_model

from .conftest import REPO_ROOT, TINY_CNN, find_mitdb_dir

RECORDS = ["100", "114", "201"]
BEATS_PER_RECORD = 200
TWO_LEADS = ["MLII", "V1"]
HEADER_CHANNELS = {"100": (0, 1), "114": (1, 0), "201": (0, 1)}
"""The channels MLII and V1 (or the channel standing in for V1) are read from, by the headers:
100 holds MLII and V5, 114 V5 and MLII, 201 MLII and V1."""
# DESIGN.md's AAMI beat symbols, written out independently of the code under test.
BEAT_SYMBOLS = set("NLRejAaJSVEFQf/")


def lead_config(folder: Path, **data: Any) -> Config:
    raw = {
        "seed": 7,
        "data": {
            "raw_dir": str(find_mitdb_dir()),
            "records": RECORDS,
            "max_beats_per_record": BEATS_PER_RECORD,
            "cache_dir": str(folder / "cache"),
            "leads": TWO_LEADS,
            **data,
        },
        "model": TINY_CNN,
        "training": {"epochs": 1, "batch_size": 64, "num_threads": 1, "device": "cpu"},
        "tracking": {"output_dir": str(folder / "runs")},
    }
    return validate_config(raw, source="test config")


@dataclass(frozen=True)
class TwoLeadRun:
    folder: Path
    config: Config
    dataset: Dataset
    model: nn.Module


@pytest.fixture(scope="module")
def two_lead(tmp_path_factory: pytest.TempPathFactory) -> TwoLeadRun:
    """The two-lead dataset and a tiny CNN trained one epoch on it, saved in ``folder/run``."""
    folder = tmp_path_factory.mktemp("two-lead")
    config = lead_config(folder)
    dataset = load_dataset(config)
    model = train_model(config, dataset).model.eval()
    save_checkpoint(folder / "run" / CHECKPOINT_NAME, model, config, dataset.class_names)
    return TwoLeadRun(folder, config, dataset, model)


def header_lead(record: str, channel: int) -> Lead:
    """One channel of a mitdb record as wfdb reads it (digital samples)."""
    raw = wfdb.rdrecord(str(find_mitdb_dir() / record), physical=False)
    signal = np.asarray(raw.d_signal[:, channel], dtype=np.float64)
    return Lead(signal=signal, fs=float(raw.fs), name=str(raw.sig_name[channel]))


def header_beats(record: str, data: DataConfig) -> BeatSet:
    """The record's beats with channels 0 and 1 read from the channels :data:`HEADER_CHANNELS`
    names, each cut on its own by the one-lead (Kachuee layout) path."""
    annotations = read_annotations(find_mitdb_dir(), record)
    cuts = [
        segment_record(record, [header_lead(record, channel)], annotations, data)
        for channel in HEADER_CHANNELS[record]
    ]
    assert all(cut.signals.ndim == 2 for cut in cuts)
    signals = np.stack([cut.signals for cut in cuts], axis=1)
    return BeatSet(signals, cuts[0].labels, cuts[0].rr, np.full(len(cuts[0]), record))


def whole_records(data: DataConfig) -> DataConfig:
    return data.model_copy(update={"max_beats_per_record": None})


def all_signals(dataset: Dataset) -> NDArray[np.float32]:
    return np.concatenate([dataset.train.signals, dataset.valid.signals, dataset.test.signals])


def sorted_rows(signals: NDArray[np.float32]) -> NDArray[np.float32]:
    """The beats as flat rows in lexicographic order: compares two sets of beats whatever
    their order (the splits shuffle them)."""
    flat = signals.reshape(len(signals), -1)
    return flat[np.lexsort(flat.T[::-1])]


def beat_count(record: str) -> int:
    return int(
        np.isin(wfdb.rdann(str(find_mitdb_dir() / record), "atr").symbol, list(BEAT_SYMBOLS)).sum()
    )


# --- the channels a record's leads are read from -----------------------------------------------


@pytest.mark.parametrize(
    ("record", "wanted", "first_channel", "expected"),
    [
        ("100", ["MLII", "V1"], True, [0, 1]),
        ("100", ["MLII", "V1"], False, [0, None]),
        ("114", ["MLII", "V1"], True, [1, 0]),
        ("102", ["MLII", "V1"], True, [0, 1]),
        ("102", ["MLII"], True, [0]),
        ("102", ["V1", "V5"], True, [1, 0]),
        ("201", ["V1", "MLII"], False, [1, 0]),
    ],
)
def test_a_missing_lead_reads_the_first_channel_no_other_lead_takes(
    record: str, wanted: list[str], first_channel: bool, expected: list[int | None]
) -> None:
    header = wfdb.rdheader(str(find_mitdb_dir() / record))
    assert lead_channels(header.sig_name, wanted, first_channel) == expected


def test_one_channel_cannot_stand_in_for_two_leads() -> None:
    assert lead_channels(["II"], ["II", "V1"], first_channel=True) == [0, None]


# --- the build -----------------------------------------------------------------------------------


def test_two_lead_beats_stack_each_lead_cut_on_its_own(two_lead: TwoLeadRun) -> None:
    """Channel 0 is the one-lead build's beat, row for row; channel 1 is V1, or V5 where the
    record has no V1, cut exactly as a one-lead beat of that channel."""
    data = two_lead.config.data
    one_lead = load_dataset(lead_config(two_lead.folder, leads=["MLII"]))
    for split in ("train", "valid", "test"):
        two, one = getattr(two_lead.dataset, split), getattr(one_lead, split)
        assert two.signals.shape == (len(one), 2, data.beat_length)
        assert one.signals.shape == (len(one), data.beat_length)
        np.testing.assert_array_equal(two.signals[:, 0], one.signals)
        np.testing.assert_array_equal(two.labels, one.labels)
    expected = np.concatenate([header_beats(record, data).signals for record in RECORDS])
    assert expected.shape == (len(RECORDS) * BEATS_PER_RECORD, 2, data.beat_length)
    built = all_signals(two_lead.dataset)
    np.testing.assert_array_equal(sorted_rows(built), sorted_rows(expected))


def test_substitutions_are_reported_per_record_and_lead(
    two_lead: TwoLeadRun, capsys: pytest.CaptureFixture[str]
) -> None:
    info = two_lead.dataset.info
    assert info["leads"] == TWO_LEADS
    assert info["lead_substitutions"] == {"100": {"V1": "V5"}, "114": {"V1": "V5"}}
    assert info["skipped_records"] == {}
    path = two_lead.folder / "data.toml"
    raw = two_lead.config.model_dump(mode="json", exclude_none=True)
    path.write_text(tomli_w.dumps(raw), encoding="utf-8")
    assert main(["data", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "record 100: no V1 lead, used V5" in out
    assert "record 114: no V1 lead, used V5" in out
    assert "record 201" not in out


def test_skip_leaves_out_the_records_without_v1_and_says_why(two_lead: TwoLeadRun) -> None:
    dataset = load_dataset(lead_config(two_lead.folder, missing_lead="skip"))
    info = dataset.info
    reason = "no V1 lead (data.missing_lead = 'skip')"
    assert info["skipped_records"] == {"100": reason, "114": reason}
    assert info["lead_substitutions"] == {}
    assert sorted({r for split in info["records"].values() for r in split}) == ["201"]
    dropped = info["dropped_beats"]["record without V1 (data.missing_lead = 'skip')"]
    assert dropped == beat_count("100") + beat_count("114")
    assert all_signals(dataset).shape == (BEATS_PER_RECORD, 2, 187)


def test_the_cache_key_changes_with_the_leads(two_lead: TwoLeadRun) -> None:
    swapped = load_dataset(lead_config(two_lead.folder, leads=["V1", "MLII"]))
    assert swapped.info["cache_file"] != two_lead.dataset.info["cache_file"]
    assert swapped.info["lead_substitutions"] == {"100": {"V1": "V5"}, "114": {"V1": "V5"}}
    np.testing.assert_array_equal(swapped.train.signals[:, ::-1], two_lead.dataset.train.signals)


def test_smote_keeps_the_two_lead_shape(two_lead: TwoLeadRun) -> None:
    """SMOTE runs on a beat's leads laid end to end (channel 0, then 1) and its RR features;
    the synthetic rows get the (channels, length) shape back."""
    train = two_lead.dataset.train
    resample = two_lead.config.data.resample.model_copy(update={"method": "smote"})
    grown = resample_train_split(train, ("N", "S", "V", "F", "Q"), resample, seed=7)
    n, length = len(train), train.signals.shape[-1]
    assert grown.signals.shape == (len(grown), 2, length) and len(grown) > n
    np.testing.assert_array_equal(grown.signals[:n], train.signals)
    counts = np.bincount(train.labels)
    k = min(5, int(counts[counts > 0].min()) - 1)
    rows = np.hstack([train.signals[:, 0], train.signals[:, 1], train.rr])
    expected, _ = SMOTE(k_neighbors=k, random_state=7).fit_resample(rows, train.labels)
    synthetic = grown.signals[n:]
    np.testing.assert_allclose(synthetic[:, 0], expected[n:, :length], rtol=1e-6)
    np.testing.assert_allclose(synthetic[:, 1], expected[n:, length : 2 * length], rtol=1e-6)


# --- training and export -------------------------------------------------------------------------


def test_a_two_channel_model_trains_on_two_lead_beats(two_lead: TwoLeadRun) -> None:
    first_conv = next(m for m in two_lead.model.modules() if isinstance(m, nn.Conv1d))
    assert first_conv.in_channels == two_lead.config.data.input_channels == 2
    probabilities = predict_proba(two_lead.model, two_lead.dataset.test)
    assert probabilities.shape == (len(two_lead.dataset.test), 5)
    assert np.isfinite(probabilities).all()


@pytest.mark.slow
def test_onnx_export_of_a_two_channel_model_matches_torch(two_lead: TwoLeadRun) -> None:
    run_dir = two_lead.folder / "run"
    assert export_command(run_dir) == 0
    classifier = OnnxClassifier(run_dir / ONNX_NAME)
    assert classifier.spec["channels"] == 2
    assert classifier.spec["beat_rules"]["leads"] == TWO_LEADS
    test = two_lead.dataset.test
    signals, rr, _ = beats_to_tensors(test, torch.device("cpu"))
    assert signals.shape[1] == 2
    with torch.no_grad():
        reference = two_lead.model(signals, rr).numpy()
    logits = classifier.logits(beat_inputs(test, classifier.spec))
    assert np.abs(logits - reference).max() <= PARITY_TOLERANCE
    assert logits.argmax(axis=1).tolist() == reference.argmax(axis=1).tolist()


# --- evaluate --database and predict -------------------------------------------------------------


def test_evaluate_database_reads_both_leads_and_names_them(
    two_lead: TwoLeadRun, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = two_lead.folder / "run"
    mitdb = str(find_mitdb_dir())
    args = ["evaluate", str(run_dir), "--database", mitdb, "--records", "100", "201"]
    assert main([*args, "--lead", "MLII", "--lead", "V1", "--first-channel"]) == 0
    assert "record 100: no V1 lead, used V5" in capsys.readouterr().out
    report = json.loads((run_dir / "evaluation-mitdb.json").read_text())
    assert report["leads"] == TWO_LEADS
    rows = {row["record"]: row for row in report["records"]}
    assert rows["100"]["leads"] == ["MLII", "V5"] and rows["201"]["leads"] == ["MLII", "V1"]
    for record in ("100", "201"):
        beats = header_beats(record, whole_records(two_lead.config.data))
        predicted = predict_proba(two_lead.model, beats).argmax(axis=1)
        confusion = np.zeros((5, 5), dtype=np.int64)
        np.add.at(confusion, (beats.labels, predicted), 1)
        np.testing.assert_array_equal(rows[record]["confusion_matrix"], confusion)


def test_without_first_channel_a_record_lacking_a_lead_is_one_line(
    two_lead: TwoLeadRun, capsys: pytest.CaptureFixture[str]
) -> None:
    mitdb = find_mitdb_dir()
    args = ["evaluate", str(two_lead.folder / "run"), "--database", str(mitdb)]
    assert main([*args, "--records", "100"]) == 2
    assert capsys.readouterr().err == (
        f"error: record {mitdb}/100: no lead 'V1' (its leads: MLII, V5); choose one with "
        f"--lead NAME, or --first-channel to use V5\n"
    )


def test_predict_reads_the_leads_given_in_channel_order(
    two_lead: TwoLeadRun, tmp_path: Path
) -> None:
    """Record 114 holds V5 then MLII: ``--lead MLII --lead V5`` feeds MLII as channel 0."""
    for suffix in (".hea", ".dat", ".atr"):
        shutil.copy(find_mitdb_dir() / f"114{suffix}", tmp_path)
    record = tmp_path / "114"
    args = ["predict", str(two_lead.folder / "run"), str(record), "--annotator", "atr"]
    assert main([*args, "--lead", "MLII", "--lead", "V5"]) == 0
    lines = (tmp_path / "114.csv").read_text().splitlines()[1:]
    written = np.array([[float(p) for p in line.split(",")[3:]] for line in lines])
    own = predict_proba(two_lead.model, header_beats("114", whole_records(two_lead.config.data)))
    np.testing.assert_allclose(written, own, atol=2e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "leads", "message"),
    [
        (
            "evaluate",
            ["MLII"],
            "--lead MLII: the model reads 2 lead(s) (MLII, V1); give --lead once per lead, in "
            "channel order",
        ),
        (
            "predict",
            ["MLII", "V1", "V5"],
            "--lead MLII --lead V1 --lead V5: the model reads 2 lead(s) (MLII, V1); give --lead "
            "once per lead, in channel order",
        ),
    ],
    ids=["evaluate, one lead", "predict, three leads"],
)
def test_a_lead_count_other_than_the_model_s_exits_2_in_a_real_process(
    two_lead: TwoLeadRun, command: str, leads: list[str], message: str, tmp_path: Path
) -> None:
    run_dir = two_lead.folder / "run"
    mitdb = find_mitdb_dir()
    target = ["--database", str(mitdb)] if command == "evaluate" else [str(mitdb / "201")]
    argv = [command, str(run_dir), *target, *(arg for lead in leads for arg in ("--lead", lead))]
    if command == "predict":
        argv += ["--out", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "hypertune.py"), *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=False,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"error: {message}\n"
    assert not list(tmp_path.iterdir())


def test_a_lead_named_twice_is_one_line(
    two_lead: TwoLeadRun, capsys: pytest.CaptureFixture[str]
) -> None:
    mitdb = str(find_mitdb_dir())
    args = ["evaluate", str(two_lead.folder / "run"), "--database", mitdb, "--records", "201"]
    assert main([*args, "--lead", "V1", "--lead", "V1"]) == 2
    assert capsys.readouterr().err == (
        "error: --lead V1 --lead V1: a lead is named twice; each lead feeds its own channel\n"
    )


# --- the schema ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"leads": ["MLII", "II"]},
            "data.leads = ['MLII', 'II']: unknown lead 'II'; mitdb leads are MLII, V1, V2, V4, V5",
        ),
        (
            {"leads": ["MLII", "V1", "MLII"]},
            "data.leads = ['MLII', 'V1', 'MLII']: lead 'MLII' is given twice; each lead feeds "
            "one channel",
        ),
        (
            {"leads": ["MLII", "V1", "V5"]},
            "data.leads = ['MLII', 'V1', 'V5']: mitdb records hold 2 channels; give at most 2 "
            "leads",
        ),
        ({"leads": []}, "data.leads = []: List should have at least 1 item"),
        (
            {"source": "csv", "train_files": ["x.csv"], "leads": ["II", "V1"]},
            "data.leads = ['II', 'V1']: csv beat files hold one lead; give one name",
        ),
    ],
)
def test_bad_leads_are_one_line_config_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config({"data": data})
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_old_lead_key_is_unknown() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'data\.lead'"):
        validate_config({"data": {"lead": "MLII"}})
