"""Beats against an independent reading of the records with wfdb (acceptance tests of issue 2)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import wfdb
from numpy.typing import NDArray
from scipy.signal import resample_poly

from ecgtune.config import Config, DataConfig
from ecgtune.data import load_dataset
from ecgtune.data.beats import RecordBeats, segment_record
from ecgtune.data.records import read_annotations, read_named_leads

# DESIGN.md's AAMI mapping, written out independently of the code under test.
AAMI = {"N": "NLRej", "S": "AaJS", "V": "VE", "F": "F", "Q": "/fQ"}
CLASS_OF = {symbol: index for index, symbols in enumerate(AAMI.values()) for symbol in symbols}


def beats_of(mitdb_dir: Path, record: str, **data: object) -> RecordBeats:
    config = DataConfig.model_validate(data)
    leads = read_named_leads(mitdb_dir / record, config.leads, first_channel=True)
    return segment_record(record, leads, read_annotations(mitdb_dir, record), config)


def annotated_beats(mitdb_dir: Path, record: str) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(sample, AAMI class) of every beat annotation, read with wfdb.rdann."""
    annotation = wfdb.rdann(str(mitdb_dir / record), "atr")
    pairs = [
        (s, CLASS_OF[c])
        for s, c in zip(annotation.sample, annotation.symbol, strict=True)
        if c in CLASS_OF
    ]
    samples, classes = zip(*pairs, strict=True)
    return np.array(samples), np.array(classes)


def reference_beat(
    signal_125: NDArray[np.float64], samples: NDArray[np.int64], k: int
) -> NDArray[np.float64]:
    """Beat ``k`` computed the slow, obvious way from the documented rule."""
    peaks = np.rint(samples * 125 / 360).astype(int)
    window = peaks[k] // 1250
    part = signal_125[window * 1250 : (window + 1) * 1250]
    in_window = [i for i in range(len(peaks)) if peaks[i] // 1250 == window]
    rr = [(samples[i + 1] - samples[i]) / 360 for i in in_window[:-1]]
    if not rr:
        rr = list(np.diff(samples) / 360)
    span = int(np.rint(1.2 * np.median(rr) * 125))
    beat = np.zeros(187)
    stop = min(span, 187, signal_125.size - peaks[k])
    values = (signal_125[peaks[k] : peaks[k] + stop] - part.min()) / (part.max() - part.min())
    beat[:stop] = np.clip(values, 0, 1)
    return beat


def test_record_100_has_one_beat_per_aami_annotation(mitdb_dir: Path) -> None:
    samples, classes = annotated_beats(mitdb_dir, "100")
    beats = beats_of(mitdb_dir, "100")
    # The documented rules drop no beat: 2,273 annotated beats, 2,273 beats.
    assert len(beats) == samples.size == 2273
    np.testing.assert_array_equal(beats.samples, samples)
    np.testing.assert_array_equal(beats.labels, classes)
    assert beats.signals.shape == (2273, 187) and beats.signals.dtype == np.float32
    assert beats.signals.min() >= 0.0 and beats.signals.max() <= 1.0
    assert np.bincount(beats.labels, minlength=5).tolist() == [2239, 33, 1, 0, 0]


def test_record_100_beats_match_the_rule_computed_independently(mitdb_dir: Path) -> None:
    samples, _ = annotated_beats(mitdb_dir, "100")
    record = wfdb.rdrecord(str(mitdb_dir / "100"), channel_names=["MLII"], physical=False)
    signal_125 = resample_poly(record.d_signal[:, 0].astype(float), 125, 360, padtype="line")
    beats = beats_of(mitdb_dir, "100")
    peaks = np.rint(samples * 125 / 360).astype(int)
    crossing = np.flatnonzero(peaks // 1250 != (peaks + 150) // 1250)[:5]
    inside = np.flatnonzero(peaks // 1250 == (peaks + 187) // 1250)[:5]
    for k in [0, 1, *crossing, *inside, len(samples) - 1]:
        np.testing.assert_allclose(
            beats.signals[k], reference_beat(signal_125, samples, k), atol=1e-6
        )
    assert crossing.size == 5 and inside.size == 5


def test_rr_intervals_are_the_neighbours_and_the_ends_borrow(mitdb_dir: Path) -> None:
    samples, _ = annotated_beats(mitdb_dir, "100")
    rr = np.diff(samples) / 360
    beats = beats_of(mitdb_dir, "100")
    np.testing.assert_allclose(beats.rr[1:, 0], rr, rtol=1e-6)
    np.testing.assert_allclose(beats.rr[:-1, 1], rr, rtol=1e-6)
    assert beats.rr[0, 0] == beats.rr[0, 1] and beats.rr[-1, 1] == beats.rr[-1, 0]


def test_max_beats_per_record_keeps_the_first_beats_unchanged(mitdb_dir: Path) -> None:
    full = beats_of(mitdb_dir, "208")
    first = beats_of(mitdb_dir, "208", max_beats_per_record=50)
    assert len(first) == 50
    np.testing.assert_array_equal(first.signals, full.signals[:50])
    np.testing.assert_array_equal(first.rr, full.rr[:50])


def test_lead_is_chosen_by_name_not_position(mitdb_dir: Path) -> None:
    raw = wfdb.rdrecord(str(mitdb_dir / "114"), physical=False)
    assert raw.sig_name == ["V5", "MLII"]
    (lead,) = read_named_leads(mitdb_dir / "114", ["MLII"], first_channel=False)
    assert lead.name == "MLII"
    np.testing.assert_array_equal(lead.signal, raw.d_signal[:, 1])
    (v5,) = read_named_leads(mitdb_dir / "114", ["V5"], first_channel=False)
    np.testing.assert_array_equal(v5.signal, raw.d_signal[:, 0])


@pytest.mark.parametrize("rule", ["first_channel", "skip"])
def test_records_without_mlii_follow_the_missing_lead_rule(
    small_config: Callable[..., Config], rule: str
) -> None:
    config = small_config(data={"records": ["102", "114", "119"], "missing_lead": rule})
    dataset = load_dataset(config)
    info = dataset.info
    records = sorted({r for split in info["records"].values() for r in split})
    if rule == "first_channel":
        assert info["lead_substitutions"] == {"102": {"MLII": "V5"}}
        assert records == ["102", "114", "119"]
        assert info["dropped_beats"]["beyond data.max_beats_per_record"] > 0
    else:
        assert info["lead_substitutions"] == {}
        assert "102" in info["skipped_records"] and records == ["114", "119"]
        assert info["dropped_beats"]["record without MLII (data.missing_lead = 'skip')"] == 2187


def test_class_counts_of_a_few_records_match_the_annotations(
    mitdb_dir: Path, small_config: Callable[..., Config]
) -> None:
    records = ["106", "208", "232"]
    dataset = load_dataset(small_config(data={"records": records, "max_beats_per_record": None}))
    expected = sum(np.bincount(annotated_beats(mitdb_dir, r)[1], minlength=5) for r in records)
    got = sum(getattr(dataset, s).class_counts(5) for s in ("train", "valid", "test"))
    np.testing.assert_array_equal(got, expected)
    assert dataset.info["dropped_beats"] == {}
    assert dataset.info["beat_symbols"]["F"] == 373
