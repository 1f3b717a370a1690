"""Beat features for patients the model has never seen (issue 10): the centred window, the
z-score normalisations, baseline removal, the RR feature columns, and how the model, the
config and the cache follow them.

Expected values are worked out here, independently of the code under test: from the raw record
read with wfdb and resampled with scipy, and from RR intervals computed by hand.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import wfdb
from numpy.typing import NDArray
from scipy.signal import resample_poly
from torch import nn

from ecgtune.config import Config, DataConfig, validate_config
from ecgtune.data import load_dataset
from ecgtune.data.beats import RR_COLUMNS, RecordBeats, segment_record
from ecgtune.data.cache import cache_key
from ecgtune.data.records import Annotations, Lead, read_annotations, read_named_leads
from ecgtune.errors import ConfigError
from ecgtune.models import build_model
from ecgtune.training import train_model

from .conftest import TINY_CNN

CENTRED = {"window": "centered", "beat_length": 188, "pre_r_seconds": 0.5}
"""1.5 s at 125 Hz, the R peak at sample 62."""
R_SAMPLE = 62
BEAT_SYMBOLS = set("NLRejAaJSVEF/fQ")


def beats_of(mitdb_dir: Path, record: str, **data: Any) -> RecordBeats:
    config = DataConfig.model_validate(data)
    (lead,) = read_named_leads(mitdb_dir / record, config.leads, first_channel=True)
    return segment_record(record, [lead], read_annotations(mitdb_dir, record), config)


def record_100(mitdb_dir: Path) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """MLII of record 100 resampled to 125 Hz, and the 125 Hz R peaks of its beats."""
    record = wfdb.rdrecord(str(mitdb_dir / "100"), channel_names=["MLII"], physical=False)
    signal = resample_poly(record.d_signal[:, 0].astype(float), 125, 360, padtype="line")
    annotation = wfdb.rdann(str(mitdb_dir / "100"), "atr")
    samples = np.array(
        [s for s, c in zip(annotation.sample, annotation.symbol, strict=True) if c in BEAT_SYMBOLS]
    )
    return signal, np.rint(samples * 125 / 360).astype(int)


def centred_slice(
    signal: NDArray[np.float64], peak: int
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """The 188 samples from 62 before ``peak``, zero (and marked outside) past the record."""
    beat, inside = np.zeros(188), np.zeros(188, dtype=bool)
    for i in range(188):
        j = peak - R_SAMPLE + i
        if 0 <= j < signal.size:
            beat[i], inside[i] = signal[j], True
    return beat, inside


# --- the centred window and the z-scores ----------------------------------------------------


def test_centred_beats_hold_the_r_peak_at_pre_r_seconds(mitdb_dir: Path) -> None:
    signal, peaks = record_100(mitdb_dir)
    beats = beats_of(mitdb_dir, "100", **CENTRED, normalise="beat_zscore")
    assert beats.signals.shape == (2273, 188)
    for k in [0, 1, 2, 1000, 2271, 2272]:
        raw, inside = centred_slice(signal, peaks[k])
        part = raw[inside]
        expected = np.where(inside, (raw - part.mean()) / part.std(), 0.0)
        np.testing.assert_allclose(beats.signals[k], expected, atol=1e-5)
    # Every beat: sample 62 is its annotated R peak, z-scored with the beat's own statistics.
    index = peaks[:, None] - R_SAMPLE + np.arange(188)[None, :]
    inside = (index >= 0) & (index < signal.size)
    values = np.where(inside, signal[np.clip(index, 0, signal.size - 1)], np.nan)
    mean, std = np.nanmean(values, axis=1), np.nanstd(values, axis=1)
    np.testing.assert_allclose(beats.signals[:, R_SAMPLE], (signal[peaks] - mean) / std, atol=1e-4)
    # The R peak is the largest sample near the middle of a centred beat of this clean record.
    near_r = beats.signals[2:-2, R_SAMPLE - 5 : R_SAMPLE + 6]
    assert (np.abs(near_r.argmax(axis=1) - 5) <= 1).mean() > 0.99


def test_beat_zscore_beats_have_mean_zero_and_unit_deviation(mitdb_dir: Path) -> None:
    beats = beats_of(mitdb_dir, "208", **CENTRED, normalise="beat_zscore")
    peaks = np.rint(beats.samples * 125 / 360)
    whole = beats.signals[(peaks >= R_SAMPLE) & (peaks + 188 - R_SAMPLE <= 650_000 * 125 / 360)]
    assert len(whole) > 2900  # a few beats at the record's ends reach past it
    np.testing.assert_allclose(whole.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(whole.std(axis=1), 1.0, atol=1e-4)


def test_window_zscore_uses_the_ten_seconds_around_the_r_peak(mitdb_dir: Path) -> None:
    signal, peaks = record_100(mitdb_dir)
    beats = beats_of(mitdb_dir, "100", **CENTRED, normalise="window_zscore")
    for k in [0, 500, 2272]:
        around = signal[max(peaks[k] - 625, 0) : peaks[k] + 625]
        raw, inside = centred_slice(signal, peaks[k])
        expected = np.where(inside, (raw - around.mean()) / around.std(), 0.0)
        np.testing.assert_allclose(beats.signals[k], expected, atol=1e-4)


def test_z_scores_ignore_a_spike_that_rescales_a_min_max_window(mitdb_dir: Path) -> None:
    """One artefact sample 3 s before a beat, in its 10-s window, changes the min-max beat
    entirely and the beat's z-score not at all."""
    config = DataConfig.model_validate({**CENTRED, "normalise": "beat_zscore"})
    (lead,) = read_named_leads(mitdb_dir / "100", config.leads, first_channel=True)
    annotations = read_annotations(mitdb_dir, "100")
    peaks = segment_record("100", [lead], annotations, config).samples
    k = int(np.flatnonzero(peaks % 3600 > 5 * 360)[0])  # 5 s into its window
    spiked = lead.signal.copy()
    spiked[peaks[k] - 3 * 360] += 20_000
    changes = {}
    for normalise in ("window_minmax", "beat_zscore"):
        rules = config.model_copy(update={"normalise": normalise})
        clean = segment_record("100", [lead], annotations, rules).signals[k]
        spike = segment_record("100", [_with_signal(lead, spiked)], annotations, rules).signals[k]
        changes[normalise] = np.abs(spike - clean).max() / np.abs(clean).max()
    assert changes["window_minmax"] > 0.5 and changes["beat_zscore"] < 1e-6


def _with_signal(lead: Lead, signal: NDArray[np.float64]) -> Lead:
    return Lead(signal=signal, fs=lead.fs, name=lead.name)


def test_a_flat_signal_gives_zero_beats_not_noise() -> None:
    lead = Lead(signal=np.full(20 * 360, 1024.0), fs=360.0, name="MLII")
    annotations = Annotations(np.array([720, 1080, 1440, 1800]), np.array(["N"] * 4))
    for normalise in ("beat_zscore", "window_zscore"):
        config = DataConfig.model_validate({**CENTRED, "normalise": normalise})
        beats = segment_record("flat", [lead], annotations, config)
        assert np.array_equal(beats.signals, np.zeros((4, 188), dtype=np.float32))


@pytest.mark.parametrize("baseline", ["median", "highpass"])
def test_baseline_removal_takes_out_a_slow_wander(mitdb_dir: Path, baseline: str) -> None:
    (lead,) = read_named_leads(mitdb_dir / "100", ["MLII"], first_channel=False)
    annotations = read_annotations(mitdb_dir, "100")
    seconds = np.arange(lead.signal.size) / 360
    wandering = _with_signal(lead, lead.signal + 300 * np.sin(2 * np.pi * 0.2 * seconds))
    errors = {}
    for option in ("none", baseline):
        config = DataConfig.model_validate(
            {**CENTRED, "normalise": "beat_zscore", "baseline": option}
        )
        clean = segment_record("100", [lead], annotations, config).signals
        moved = segment_record("100", [wandering], annotations, config).signals
        errors[option] = np.abs(moved - clean).mean()
    assert errors["none"] > 0.5 and errors[baseline] < errors["none"] / 4


# --- RR features ----------------------------------------------------------------------------


def synthetic_record(rr_seconds: list[float]) -> tuple[Lead, Annotations]:
    """A noise signal and beats ``rr_seconds`` apart (with a rhythm annotation in between)."""
    samples = np.rint(360 * (1.0 + np.concatenate([[0.0], np.cumsum(rr_seconds)]))).astype(int)
    symbols = ["N"] * samples.size
    symbols[3] = "A"
    signal = np.random.default_rng(0).normal(size=int(samples[-1]) + 720)
    with_rhythm = np.insert(samples, 2, samples[1] + 10), np.insert(np.array(symbols), 2, "+")
    return Lead(signal=signal, fs=360.0, name="MLII"), Annotations(*with_rhythm)


def test_rr_columns_on_a_short_annotation_list() -> None:
    # Intervals 0.8 0.8 0.4 1.2 0.8 s: record mean 0.8; local mean over the last 2 intervals;
    # the long reference (300 s) is the mean of every interval so far.
    lead, annotations = synthetic_record([0.8, 0.8, 0.4, 1.2, 0.8])
    config = DataConfig.model_validate({"rr_local_beats": 2})
    rr = segment_record("synthetic", [lead], annotations, config).rr
    local = [0.8, 0.8, 0.8, 0.6, 0.8, 1.0]  # beat 0 borrows; beat 1: one interval; then two
    # The seconds reference (60 s) holds every interval so far; the robust and long ones leave
    # out the 0.4 s interval, shorter than 0.9 x the 0.8 s before it.
    seconds = [0.8, 0.8, 0.8, 2.0 / 3, 0.8, 0.8]
    robust = [0.8, 0.8, 0.8, 0.8, 2.8 / 3, 0.9]
    previous = [0.8, 0.8, 0.8, 0.4, 1.2, 0.8]
    following = [0.8, 0.8, 0.4, 1.2, 0.8, 0.8]
    expected = [
        [p, f, p / 0.8, f / 0.8, p / m, f / m, m / 0.8, *(p / t, f / t), *(p / r, f / r) * 2, p / f]
        for p, f, m, t, r in zip(previous, following, local, seconds, robust, strict=True)
    ]
    assert rr.shape == (6, len(RR_COLUMNS)) and rr.dtype == np.float32
    np.testing.assert_allclose(rr[:, : RR_COLUMNS.index("qrs_width")], expected, rtol=1e-6)


def test_rr_columns_of_record_100_by_hand(mitdb_dir: Path) -> None:
    annotation = wfdb.rdann(str(mitdb_dir / "100"), "atr")
    pairs = zip(annotation.sample, annotation.symbol, strict=True)
    samples = [sample for sample, symbol in pairs if symbol in BEAT_SYMBOLS]
    intervals = [(b - a) / 360 for a, b in itertools.pairwise(samples)]
    record_mean = sum(intervals) / len(intervals)
    rr = beats_of(mitdb_dir, "100").rr
    for k in range(15):
        previous = intervals[k - 1] if k else intervals[0]
        following = intervals[k]
        window = intervals[max(k - 10, 0) : k] or intervals[:1]
        local = sum(window) / len(window)
        expected = [
            previous,
            following,
            previous / record_mean,
            following / record_mean,
            previous / local,
            following / local,
            local / record_mean,
        ]
        np.testing.assert_allclose(rr[k, :7], expected, rtol=1e-5, err_msg=f"beat {k}")


def test_the_local_mean_rr_is_causal(mitdb_dir: Path) -> None:
    """Moving beat 1000 later (its two intervals keep their sum, so the record's mean RR stays)
    changes no feature of the beats before 999, whose intervals all end before it: no local,
    seconds, robust or long reference reads ahead."""
    config = DataConfig()
    (lead,) = read_named_leads(mitdb_dir / "100", config.leads, first_channel=True)
    annotations = read_annotations(mitdb_dir, "100")
    is_beat = np.isin(annotations.symbols, list(BEAT_SYMBOLS))
    moved_samples = annotations.samples.copy()
    moved_samples[np.flatnonzero(is_beat)[1000]] += 30
    before = segment_record("100", [lead], annotations, config).rr
    after = segment_record(
        "100", [lead], Annotations(moved_samples, annotations.symbols), config
    ).rr
    np.testing.assert_array_equal(after[:999], before[:999])
    local = RR_COLUMNS.index("rr_local_by_record")
    assert after[1000, local] != before[1000, local]


# --- the model, the config and the cache follow the features ---------------------------------


RECORD_WIDE = {"rr_previous_by_record", "rr_next_by_record", "rr_local_by_record"}
RHYTHM = {
    "rr_previous_by_robust",
    "rr_next_by_robust",
    "rr_previous_by_long",
    "rr_next_by_long",
    "rr_previous_by_next",
    "qrs_width",
}
COLUMNS_READ = {
    "none": set(),
    "raw": {"rr_previous", "rr_next"},
    "normalised": RECORD_WIDE | {"rr_previous_by_local", "rr_next_by_local"},
    "all": RECORD_WIDE | {"rr_previous", "rr_next", "rr_previous_by_local", "rr_next_by_local"},
    "rhythm": RHYTHM,
    "rhythm_record": RHYTHM | RECORD_WIDE,
}
"""What each ``model.rr_features`` option is documented to read (the rhythm ones at the
default ``model.rr_reference = "robust"``); models saved before the rhythm columns existed
(none .. all) read the same seven columns as then."""


def test_rr_features_option_sets_the_head_width_and_the_columns_used() -> None:
    widths, signals = {}, torch.rand(3, 1, 187)
    for option, expected in COLUMNS_READ.items():
        config = validate_config({"model": {**TINY_CNN, "rr_features": option}})
        model = build_model(config, 5).eval()
        first = next(m for m in model.head.modules() if isinstance(m, nn.Linear))
        widths[option] = first.in_features
        rr = torch.rand(3, len(RR_COLUMNS))
        with torch.no_grad():
            logits = model(signals, rr)
            for column, name in enumerate(RR_COLUMNS):
                changed = rr.clone()
                changed[:, column] += 1.0
                used = not torch.equal(model(signals, changed), logits)
                assert used == (name in expected), f"{option}: {name}"
    encoder = widths["none"]
    assert widths == {option: encoder + len(names) for option, names in COLUMNS_READ.items()}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"model": {"rr_features": True}},
            r"model\.rr_features = True: takes 'none', 'raw', 'normalised', 'all', 'rhythm' or "
            r"'rhythm_record' \(the former true is 'raw', false is 'none'\)",
        ),
        (
            {"model": {"rr_features": "relative"}},
            r"model\.rr_features = 'relative': Input should be 'none', 'raw', 'normalised', "
            r"'all', 'rhythm' or 'rhythm_record'",
        ),
        (
            {"data": {"window": "centered", "beat_length": 100, "pre_r_seconds": 0.8}},
            r"data\.pre_r_seconds = 0\.8 puts the R peak at sample 100 \(at data\.target_hz = "
            r"125\), past a 100-sample beat \(data\.beat_length\): lower it below 0\.8 s",
        ),
        ({"data": {"pre_r_seconds": 5}}, r"data\.pre_r_seconds = 5: Input should be less"),
        ({"data": {"normalise": "minmax"}}, r"data\.normalise = 'minmax': Input should be"),
        ({"data": {"baseline": "wavelet"}}, r"data\.baseline = 'wavelet': Input should be"),
        ({"data": {"rr_local_beats": 0}}, r"data\.rr_local_beats = 0: Input should be greater"),
        (
            {"model": {"rr_reference": "median"}},
            r"model\.rr_reference = 'median': Input should be 'beats', 'seconds' or 'robust'",
        ),
        ({"data": {"rr_local_seconds": 0}}, r"data\.rr_local_seconds = 0: Input should be greater"),
        (
            {"data": {"rr_long_seconds": 7200}},
            r"data\.rr_long_seconds = 7200: Input should be less",
        ),
        ({"data": {"rr_premature": 1.0}}, r"data\.rr_premature = 1\.0: Input should be less"),
    ],
)
def test_bad_feature_keys_are_one_line_config_errors(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        validate_config(raw)
    assert "\n" not in str(caught.value)


NEW_DATA_KEYS = {
    "window": "centered",
    "pre_r_seconds": 0.4,
    "normalise": "beat_zscore",
    "baseline": "median",
    "rr_local_beats": 20,
    "rr_local_seconds": 30.0,
    "rr_long_seconds": 600.0,
    "rr_premature": 0.8,
}


def test_every_new_data_key_is_in_the_cache_key() -> None:
    base = validate_config({})
    key = cache_key(base, ["100"], {"100.dat": "digest"})
    for name, value in NEW_DATA_KEYS.items():
        changed = validate_config({"data": {name: value}})
        assert cache_key(changed, ["100"], {"100.dat": "digest"}) != key, name
    augmented = validate_config({"training": {"augment": {"noise": 0.1}}})
    assert cache_key(augmented, ["100"], {"100.dat": "digest"}) == key


def test_centred_zscore_dataset_builds_caches_and_trains_with_every_loss(
    small_config: Callable[..., Config],
) -> None:
    data = {**CENTRED, "normalise": "window_zscore", "baseline": "highpass", "split": "inter"}
    data["records"] = ["100", "101", "106", "119", "208", "232"]
    config = small_config(data=data, model={"rr_features": "all"}, training={"epochs": 1})
    built = load_dataset(config)
    loaded = load_dataset(config)
    assert loaded.info["from_cache"] and not built.info["from_cache"]
    for split in ("train", "valid", "test"):
        beats = getattr(built, split)
        assert beats.signals.shape == (len(beats), 188) and beats.rr.shape == (
            len(beats),
            len(RR_COLUMNS),
        )
        np.testing.assert_array_equal(getattr(loaded, split).signals, beats.signals)
        np.testing.assert_array_equal(getattr(loaded, split).rr, beats.rr)
    assert built.beat_length == 188
    for training in (
        {"loss": "weighted_ce", "class_weights": "effective"},
        {"loss": "focal", "focal_weighted": True, "class_weights": "effective"},
    ):
        run = config.model_copy(update={"training": config.training.model_copy(update=training)})
        result = train_model(run, built)
        assert np.isfinite(result.history[0].train_loss)
        assert np.isfinite(result.best_valid["loss"])
