"""Heartbeats cut from a record, vectorised: the 187-sample format of Kachuee, Fazeli and
Sarrafzadeh (2018) by default, or a window centred on the R peak; and RR features.

Rules (one record at a time, every beat of the record cut at once with numpy indexing):

* **Beats and labels.** Every annotation whose symbol is in :data:`AAMI_SYMBOLS` is a beat,
  labelled with its AAMI class; other annotations (rhythm, noise, ``+ ~ ! " x | [ ]``) are not
  beats. ``B``, ``n``, ``r`` and ``?`` follow the usual AAMI convention (N, S, V, Q) for
  completeness but never occur in mitdb 1.0.0, so the counts equal those of DESIGN.md's
  mapping: N 90,631, S 2,781, V 7,236, F 803, Q 8,043 (109,494 beats).
* **Signal.** Each lead (``data.leads``) is resampled from the record's rate to
  ``target_hz`` with ``resample_poly`` (``padtype="line"``: the record's DC offset causes no
  filter transient at its ends). ``data.baseline`` then optionally removes the baseline wander
  from the whole record: ``median`` subtracts a 200 ms then 600 ms median filter of the signal
  (de Chazal et al. 2004), ``highpass`` runs a zero-phase 2nd-order Butterworth high-pass at
  0.5 Hz. Every lead goes through this and the rules below on its own (its own windows,
  extremes and flat threshold), at the same beats; the leads' beats are then stacked: a beat
  is (beat_length,) for one lead, the Kachuee layout, and (leads, beat_length) for several.
* **R peak.** The annotation sample mapped to ``target_hz`` and rounded.
* **Window** (``data.window``). ``kachuee``: a beat starts at its R peak and spans
  ``beat_span`` x the median RR interval of its ``window_seconds`` window (RR between
  consecutive beats both inside the window; a window with fewer than two beats uses the
  record's median RR); the rest up to ``beat_length`` is zero, a longer span is cut. The P wave
  before the R peak is not in the beat. ``centered``: a beat is ``beat_length`` samples starting
  ``pre_r_seconds`` before its R peak, so the R peak is sample ``round(pre_r_seconds x
  target_hz)`` and the beat carries its P wave and, when long enough (1.5-2 s), its neighbours.
* **Past the record ends** a beat is zero (Kachuee's padding): zero is the window's minimum
  under min-max and the mean level under a z-score, a flat line that invents no waveform,
  where repeating the edge value would draw a step at an arbitrary level.
* **Amplitude** (``data.normalise``). ``window_minmax``: the record is cut into consecutive
  ``window_seconds`` windows from its start (the last may be shorter) and a beat is scaled to
  [0, 1] by its R peak's window's minimum and maximum, clipped to [0, 1] where it reads past
  that window. ``beat_zscore``: the beat's samples (inside the record and, for ``kachuee``, its
  span) minus their mean, divided by their standard deviation. ``window_zscore``: the same with
  the mean and standard deviation of the ``window_seconds`` of signal centred on the R peak (cut
  at the record's ends). The z-scores depend on no single extreme sample, unlike min-max, where
  one artefact spike rescales a whole window; a flat beat or window (standard deviation below
  :data:`FLAT_FRACTION` of the record's largest absolute sample) becomes zeros.
* **RR features** (:data:`RR_COLUMNS`, from the annotations at the record's own rate): the
  previous and next RR interval of a beat in seconds, whatever the neighbours' class (the
  record's first beat uses its next interval as the previous one, the last beat its previous
  interval as the next one); both divided by the record's mean RR; both divided by the beat's
  local mean RR, the mean of the last ``rr_local_beats`` intervals up to and including its
  previous one (causal: a later beat never changes it, so it can be computed on a stream; the
  first beats average the intervals there are, the first beat borrows its next interval); and
  the local mean divided by the record's mean. Ratios make patients with different heart rates
  comparable: a premature beat has a previous-RR ratio well below 1 whatever the patient's rate.
* **Record edges.** A beat annotation is skipped, and counted by reason in ``RecordBeats.skipped``
  (:data:`SKIP_REASONS`), when its sample lies outside the signal (real annotation files may hold
  a beat at the sample just past the last one), when its R peak lies within :data:`EDGE_SECONDS`
  of the record's first or last sample (too little of its QRS complex is in the record to cut
  a window around it), or when its symbol is not a WFDB annotation code at all. RR
  intervals are measured over every beat inside the signal, edge beats included; the rest of a
  window past the record's ends is zero, as above. Known annotations that are not beats (rhythm,
  noise, ``+``, ``~``) are neither beats nor skipped.
* ``max_beats_per_record`` keeps the first N beats after all of the above (the record means use
  every beat), so a beat is the same whether or not the record is truncated.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import median_filter
from scipy.signal import butter, resample_poly, sosfiltfilt
from wfdb.io.annotation import ann_label_table

from ecgtune.config import AAMI_CLASSES, DataConfig, RRFeatures
from ecgtune.data.records import Annotations, Lead
from ecgtune.errors import DataError

AAMI_SYMBOLS: dict[str, str] = {
    "N": "NLRejB",
    "S": "AaJSn",
    "V": "VEr",
    "F": "F",
    "Q": "/fQ?",
}
SYMBOL_CLASS: dict[str, int] = {
    symbol: AAMI_CLASSES.index(name) for name, symbols in AAMI_SYMBOLS.items() for symbol in symbols
}
RR_COLUMNS = (
    "rr_previous",
    "rr_next",
    "rr_previous_by_record",
    "rr_next_by_record",
    "rr_previous_by_local",
    "rr_next_by_local",
    "rr_local_by_record",
)
"""The columns of every beat's ``rr`` row (module docstring): seconds, then ratios."""
RR_SELECTIONS: dict[RRFeatures, tuple[str, ...]] = {
    "none": (),
    "raw": RR_COLUMNS[:2],
    "normalised": RR_COLUMNS[2:],
    "all": RR_COLUMNS,
}
"""The columns each ``model.rr_features`` option feeds to the head."""
WFDB_SYMBOLS = frozenset(str(symbol) for symbol in ann_label_table["symbol"])
"""Every annotation code WFDB defines (beats and the rest): a symbol outside it is unknown."""
EDGE_SECONDS = 0.01
"""A beat whose R peak lies closer than this to the record's first or last sample is skipped:
less than a quarter of the narrowest QRS complex (about 40 ms) would be in the record, too
little to be told from the record's edge. MIT-BIH's nearest beat to an edge lies 17 ms from it
(record 113's last), so the mitdb build keeps all of its beats."""
OUTSIDE, EDGE, UNKNOWN = "outside the signal", "window past the edge", "unknown symbol"
SKIP_REASONS = (OUTSIDE, EDGE, UNKNOWN)
"""Why an annotation is skipped (module docstring, "Record edges")."""
MEDIAN_SECONDS = (0.2, 0.6)
"""De Chazal's baseline estimate: a 200 ms median filter (removes the QRS and P waves), then a
600 ms one (removes the T wave)."""
HIGHPASS_HZ = 0.5
HIGHPASS_ORDER = 2
FLAT_FRACTION = 1e-4
"""A beat or window whose standard deviation is below this fraction of the record's largest
absolute sample is flat and becomes zeros. Resampling leaves a ripple of about 1e-5 of the
signal's level on a flat line (the polyphase filter's DC gain differs slightly by phase), which
a z-score would blow up to unit size; a real beat varies by far more (MIT-BIH: a standard
deviation of tens of ADC units at levels of about 1,000)."""


@dataclass(frozen=True)
class RecordBeats:
    """The beats of one record, row-aligned; ``signals`` are (n, beat_length) for one lead and
    (n, leads, beat_length) for several, ``samples`` the R peaks at the record's rate, ``rr``
    has one column per :data:`RR_COLUMNS` entry."""

    record: str
    signals: NDArray[np.float32]
    labels: NDArray[np.int64]
    rr: NDArray[np.float32]
    samples: NDArray[np.int64]
    symbols: NDArray[np.str_]
    skipped: dict[str, int] = field(default_factory=dict)
    """Annotations left out, by reason (:data:`SKIP_REASONS`); reasons with none are absent."""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def skipped_beats(self) -> int:
        """Beat annotations left out at the record's edges or outside its signal."""
        return self.skipped.get(OUTSIDE, 0) + self.skipped.get(EDGE, 0)


def total_skips(skips: Iterable[dict[str, int]]) -> dict[str, int]:
    """Skipped annotations of several records added up, by reason."""
    totals: Counter[str] = Counter()
    for skipped in skips:
        totals.update(skipped)
    return dict(totals)


def describe_skips(skipped: dict[str, int]) -> str:
    """``"1 outside the signal, 2 window past the edge"``; ``"none"`` when nothing was."""
    return ", ".join(f"{count:,} {reason}" for reason, count in skipped.items()) or "none"


def aami_labels(symbols: NDArray[np.str_]) -> NDArray[np.int64]:
    """AAMI class index of each annotation symbol; -1 for annotations that are not beats."""
    unique, inverse = np.unique(symbols, return_inverse=True)
    table = np.array([SYMBOL_CLASS.get(str(symbol), -1) for symbol in unique], dtype=np.int64)
    return table[inverse.reshape(-1)]


def rr_column_indices(selection: RRFeatures) -> list[int]:
    """Positions in :data:`RR_COLUMNS` of the columns ``model.rr_features`` selects."""
    return [RR_COLUMNS.index(name) for name in RR_SELECTIONS[selection]]


def segment_record(
    record: str, leads: Sequence[Lead], annotations: Annotations, config: DataConfig
) -> RecordBeats:
    """Cut every annotated beat of a record from each of its ``leads`` (rules in the module
    docstring); the leads share the record's rate."""
    n_samples = leads[0].signal.size
    labels = aami_labels(annotations.symbols)
    inside = (annotations.samples >= 0) & (annotations.samples < n_samples)
    in_signal = (labels >= 0) & inside
    if np.count_nonzero(in_signal) < 2:
        raise DataError(f"record {record}: fewer than two beat annotations, no RR interval")
    rr = np.diff(annotations.samples[in_signal]) / leads[0].fs
    edge = round(EDGE_SECONDS * leads[0].fs)
    samples = annotations.samples[in_signal]
    whole = (samples >= edge) & (samples < n_samples - edge)
    is_beat = in_signal.copy()
    is_beat[in_signal] = whole
    skipped = skip_counts(annotations.symbols, labels >= 0, inside, in_signal & ~is_beat)
    per_lead = [lead_beats(lead, samples, rr, config)[whole] for lead in leads]
    signals = per_lead[0] if len(per_lead) == 1 else np.stack(per_lead, axis=1)
    keep = slice(0, config.max_beats_per_record)
    return RecordBeats(
        record=record,
        signals=signals[keep],
        labels=labels[is_beat][keep],
        rr=rr_features(rr, config.rr_local_beats)[whole][keep],
        samples=annotations.samples[is_beat][keep],
        symbols=annotations.symbols[is_beat][keep],
        skipped=skipped,
    )


def skip_counts(
    symbols: NDArray[np.str_],
    beat: NDArray[np.bool_],
    inside: NDArray[np.bool_],
    at_edge: NDArray[np.bool_],
) -> dict[str, int]:
    """How many annotations each :data:`SKIP_REASONS` entry leaves out: beats outside the
    signal, beats at its edges, and symbols WFDB does not define."""
    unknown = ~np.isin(symbols, list(WFDB_SYMBOLS))
    counts = {
        OUTSIDE: int(np.count_nonzero(beat & ~inside)),
        EDGE: int(np.count_nonzero(at_edge)),
        UNKNOWN: int(np.count_nonzero(unknown)),
    }
    return {reason: count for reason, count in counts.items() if count}


def lead_beats(
    lead: Lead, samples: NDArray[np.int64], rr: NDArray[np.float64], config: DataConfig
) -> NDArray[np.float32]:
    """The beats at ``samples`` (R peaks at the record's rate) cut from one lead, resampled,
    baseline-removed and normalised on their own: float32 (beats, beat_length)."""
    signal = resample_poly(lead.signal, config.target_hz, round(lead.fs), padtype="line")
    signal = remove_baseline(signal, config)
    peaks = np.minimum(np.rint(samples * config.target_hz / lead.fs), signal.size - 1)
    peaks = peaks.astype(np.int64)
    starts, spans = beat_extents(signal.size, peaks, rr, config)
    values, inside = read_beats(signal, starts, spans, config.beat_length)
    flat_std = FLAT_FRACTION * float(np.abs(lead.signal).max())
    normalised = normalise_beats(values, inside, signal, peaks, config, flat_std)
    return np.where(inside, normalised, 0.0).astype(np.float32)


def remove_baseline(signal: NDArray[np.float64], config: DataConfig) -> NDArray[np.float64]:
    """The signal without its baseline wander, as ``data.baseline`` asks (module docstring)."""
    if config.baseline == "none":
        return signal
    if config.baseline == "median":
        baseline = signal
        for seconds in MEDIAN_SECONDS:
            size = 2 * round(seconds * config.target_hz / 2) + 1
            baseline = median_filter(baseline, size=size, mode="nearest")
        filtered: NDArray[np.float64] = signal - baseline
        return filtered
    sos = butter(HIGHPASS_ORDER, HIGHPASS_HZ, "highpass", fs=config.target_hz, output="sos")
    high: NDArray[np.float64] = sosfiltfilt(sos, signal)
    return high


def beat_extents(
    n_samples: int, peaks: NDArray[np.int64], rr: NDArray[np.float64], config: DataConfig
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """First sample of each beat and how many samples of signal it holds (``data.window``)."""
    if config.window == "centered":
        pre = round(config.pre_r_seconds * config.target_hz)
        return peaks - pre, np.full(peaks.size, config.beat_length, dtype=np.int64)
    window = round(config.window_seconds * config.target_hz)
    windows = peaks // window
    median_rr = window_median_rr(rr, windows, n_windows=-(-n_samples // window))
    spans = np.rint(config.beat_span * median_rr[windows] * config.target_hz).astype(np.int64)
    return peaks, spans


def read_beats(
    signal: NDArray[np.float64], starts: NDArray[np.int64], spans: NDArray[np.int64], length: int
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """``signal[start : start + length]`` of every beat, and which samples are the beat's:
    within its span and inside the record (the others read an edge sample, to be zeroed)."""
    offsets = np.arange(length)
    index = starts[:, None] + offsets[None, :]
    inside = (offsets[None, :] < spans[:, None]) & (index >= 0) & (index < signal.size)
    return signal[np.clip(index, 0, signal.size - 1)], inside


def normalise_beats(
    values: NDArray[np.float64],
    inside: NDArray[np.bool_],
    signal: NDArray[np.float64],
    peaks: NDArray[np.int64],
    config: DataConfig,
    flat_std: float,
) -> NDArray[np.float64]:
    """The beats' amplitudes as ``data.normalise`` asks (module docstring); a z-score with a
    standard deviation below ``flat_std`` is zeros."""
    window = round(config.window_seconds * config.target_hz)
    if config.normalise == "window_minmax":
        low, high = window_extremes(signal, window)
        windows = peaks // window
        scale = np.where(high > low, high - low, 1.0)[windows]
        return np.clip((values - low[windows, None]) / scale[:, None], 0.0, 1.0)
    if config.normalise == "beat_zscore":
        mean, std = masked_mean_std(values, inside)
    else:
        mean, std = centred_window_mean_std(signal, peaks, window)
    flat = std < flat_std
    scaled = (values - mean[:, None]) / np.where(flat, 1.0, std)[:, None]
    return np.where(flat[:, None], 0.0, scaled)


def window_extremes(
    signal: NDArray[np.float64], window: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Minimum and maximum of each consecutive window (the last may be shorter)."""
    starts = np.arange(0, signal.size, window)
    return np.minimum.reduceat(signal, starts), np.maximum.reduceat(signal, starts)


def masked_mean_std(
    values: NDArray[np.float64], inside: NDArray[np.bool_]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean and standard deviation of each row over its ``inside`` samples."""
    count = np.maximum(inside.sum(axis=1), 1)
    mean = np.where(inside, values, 0.0).sum(axis=1) / count
    centred = np.where(inside, values - mean[:, None], 0.0)
    return mean, np.sqrt((centred**2).sum(axis=1) / count)


def centred_window_mean_std(
    signal: NDArray[np.float64], peaks: NDArray[np.int64], window: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean and standard deviation of the ``window`` samples centred on each peak (cut at the
    record's ends), from running sums: no loop, whatever the window."""
    offset = signal.mean()
    centred = signal - offset
    sums = np.concatenate([[0.0], np.cumsum(centred)])
    squares = np.concatenate([[0.0], np.cumsum(centred**2)])
    low = np.maximum(peaks - window // 2, 0)
    high = np.minimum(peaks - window // 2 + window, signal.size)
    count = high - low
    mean = (sums[high] - sums[low]) / count
    variance = (squares[high] - squares[low]) / count - mean**2
    return mean + offset, np.sqrt(np.maximum(variance, 0.0))


def window_median_rr(
    rr: NDArray[np.float64], windows: NDArray[np.int64], n_windows: int
) -> NDArray[np.float64]:
    """Median RR of each window over the intervals whose two beats lie in it; the record's
    median RR for windows with fewer than two beats."""
    inside = windows[1:] == windows[:-1]
    values, groups = rr[inside], windows[:-1][inside]
    order = np.lexsort((values, groups))
    values = values[order]
    counts = np.bincount(groups, minlength=n_windows)
    starts = np.cumsum(counts) - counts
    medians = np.full(n_windows, float(np.median(rr)))
    has = counts > 0
    lower = starts[has] + (counts[has] - 1) // 2
    upper = starts[has] + counts[has] // 2
    medians[has] = (values[lower] + values[upper]) / 2
    return medians


def rr_features(rr: NDArray[np.float64], local_beats: int) -> NDArray[np.float32]:
    """The :data:`RR_COLUMNS` of every beat from the record's RR intervals (module docstring)."""
    previous = np.concatenate([rr[:1], rr])
    following = np.concatenate([rr, rr[-1:]])
    record_mean = rr.mean()
    local = local_mean_rr(rr, local_beats)
    columns = (
        previous,
        following,
        previous / record_mean,
        following / record_mean,
        previous / local,
        following / local,
        local / record_mean,
    )
    return np.stack(columns, axis=1).astype(np.float32)


def local_mean_rr(rr: NDArray[np.float64], local_beats: int) -> NDArray[np.float64]:
    """Per beat, the mean of the last ``local_beats`` intervals up to and including its
    previous one (fewer for the first beats; the first beat has none and takes its next)."""
    sums = np.concatenate([[0.0], np.cumsum(rr)])
    ends = np.maximum(np.arange(rr.size + 1), 1)
    starts = np.maximum(ends - local_beats, 0)
    mean: NDArray[np.float64] = (sums[ends] - sums[starts]) / (ends - starts)
    return mean
