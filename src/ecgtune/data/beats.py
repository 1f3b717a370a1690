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
  local mean RR, the mean of the last ``rr_local_beats`` intervals (the first beats average
  the intervals there are); the local mean divided by the record's mean; both divided by the
  *seconds* reference, the mean of the intervals that ended in the last ``rr_local_seconds``
  (a short interval weighs less than in a mean over beats, so a run of premature beats pulls it
  down less); both divided by the *robust* reference, the same without the premature
  intervals (shorter than ``rr_premature`` x the seconds reference before them), or the
  seconds reference where its window holds no other interval; both divided by the *long*
  reference, the robust one over ``rr_long_seconds``; the previous interval over the next
  one (prematurity and compensatory pause in one number); and the rhythm's *irregularity* over
  the seconds reference's window: the standard deviation of its intervals
  (``rr_spread_by_robust``) and the mean absolute difference of its successive pairs, both
  intervals inside it (``rr_successive_by_robust``, 0 where it holds one interval), both
  divided by the robust reference, and the fraction of its intervals that are premature
  (``rr_premature_fraction``). In atrial fibrillation every interval looks premature against
  a mean; these tell a beat inside an irregular rhythm from a lone premature beat in a regular
  one. Ratios make patients with different heart rates comparable: a premature beat has a
  previous-RR ratio well below 1 whatever the patient's rate. Every reference (and the
  irregularity) is causal (a later beat never changes it, so it can be computed on a stream)
  and taken over the intervals up to and including the beat's previous one; the first beat
  has none and borrows its next interval. Only the ``by_record`` columns
  read the whole record, future beats included; ``model.rr_features`` picks the columns the
  head reads (:func:`rr_selection`), ``model.rr_reference`` which local reference the
  ``rhythm`` selections use, ``model.rr_irregularity`` whether they add the irregularity.
* **QRS width** (column ``qrs_width``, seconds, from the first of ``data.leads`` after
  resampling and baseline removal): the slope ``|x[t+1] - x[t-1]| / 2`` smoothed over
  :data:`QRS_SMOOTH_SECONDS`, within :data:`QRS_SEARCH_SECONDS` either side of the R peak; the
  width runs from the first to the last sample there whose slope is at least
  :data:`QRS_SLOPE_FRACTION` of the window's steepest. A wide QRS (a ventricular origin) or a
  narrow one (supraventricular) reads the same on every gain, since the threshold is relative.
* **Record edges.** A beat annotation is skipped, and counted by reason in ``RecordBeats.skipped``
  (:data:`SKIP_REASONS`), when its sample lies outside the signal (real annotation files may hold
  a beat at the sample just past the last one), when its R peak lies within :data:`EDGE_SECONDS`
  of the record's first or last sample (too little of its QRS complex is in the record to cut
  a window around it), when its symbol is not a WFDB annotation code at all, or when it is the
  record's only beat inside the signal (no RR interval to measure: a record of one beat has
  none to cut, as one of none). RR
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

from ecgtune.config import (
    AAMI_CLASSES,
    RHYTHM_SELECTIONS,
    DataConfig,
    RRFeatures,
    RRReference,
)
from ecgtune.data.records import Annotations, Lead

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
    "rr_previous_by_seconds",
    "rr_next_by_seconds",
    "rr_previous_by_robust",
    "rr_next_by_robust",
    "rr_previous_by_long",
    "rr_next_by_long",
    "rr_previous_by_next",
    "qrs_width",
    "rr_spread_by_robust",
    "rr_successive_by_robust",
    "rr_premature_fraction",
)
"""The columns of every beat's ``rr`` row (module docstring): seconds, ratios, the QRS width.
New columns go at the end, so the selections of models saved before them read what they did."""
LOCAL_PAIRS: dict[RRReference, tuple[str, str]] = {
    "beats": ("rr_previous_by_local", "rr_next_by_local"),
    "seconds": ("rr_previous_by_seconds", "rr_next_by_seconds"),
    "robust": ("rr_previous_by_robust", "rr_next_by_robust"),
}
"""The previous and next RR over each local reference (``model.rr_reference``)."""
RHYTHM_REST = ("rr_previous_by_long", "rr_next_by_long", "rr_previous_by_next", "qrs_width")
BY_RECORD = ("rr_previous_by_record", "rr_next_by_record", "rr_local_by_record")
IRREGULARITY = ("rr_spread_by_robust", "rr_successive_by_robust", "rr_premature_fraction")
"""How irregular the rhythm before a beat is (``model.rr_irregularity``): in atrial
fibrillation every interval looks premature against a mean, and these tell that rhythm from a
lone premature beat in a regular one."""
FIXED_SELECTIONS: dict[str, tuple[str, ...]] = {
    "none": (),
    "raw": RR_COLUMNS[:2],
    "normalised": RR_COLUMNS[2:7],
    "all": RR_COLUMNS[:7],
}
"""The selections that existed before the rhythm columns: the same seven columns as then."""


WFDB_SYMBOLS = frozenset(str(symbol) for symbol in ann_label_table["symbol"])
"""Every annotation code WFDB defines (beats and the rest): a symbol outside it is unknown."""
EDGE_SECONDS = 0.01
"""A beat whose R peak lies closer than this to the record's first or last sample is skipped:
less than a quarter of the narrowest QRS complex (about 40 ms) would be in the record, too
little to be told from the record's edge. MIT-BIH's nearest beat to an edge lies 17 ms from it
(record 113's last), so the mitdb build keeps all of its beats."""
OUTSIDE, EDGE, UNKNOWN = "outside the signal", "window past the edge", "unknown symbol"
LONE = "lone beat (no RR interval)"
SKIP_REASONS = (OUTSIDE, EDGE, UNKNOWN, LONE)
"""Why an annotation is skipped (module docstring, "Record edges")."""
QRS_SEARCH_SECONDS = 0.15
"""The QRS complex is looked for this far either side of the R peak: wider than the widest
ventricular QRS (about 0.2 s in all), short of the T wave and most P waves."""
QRS_SMOOTH_SECONDS = 0.024
QRS_SLOPE_FRACTION = 0.2
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
        """Beat annotations left out: at the record's edges, outside its signal, or alone."""
        return sum(self.skipped.get(reason, 0) for reason in (OUTSIDE, EDGE, LONE))


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


def rr_selection(
    features: RRFeatures, reference: RRReference = "beats", irregularity: bool = False
) -> tuple[str, ...]:
    """The columns a ``model.rr_features`` option feeds to the head: the fixed selections, or
    ``rhythm`` (previous and next RR over the ``reference`` and over the long reference,
    previous / next, QRS width: nothing read from the whole record) and ``rhythm_record``
    (``rhythm`` and the by-record ratios), each followed by the :data:`IRREGULARITY` columns
    when ``irregularity`` (``model.rr_irregularity``, which the config allows only with them)."""
    if features not in RHYTHM_SELECTIONS:
        return FIXED_SELECTIONS[features]
    by_record = BY_RECORD if features == "rhythm_record" else ()
    return LOCAL_PAIRS[reference] + RHYTHM_REST + by_record + (IRREGULARITY if irregularity else ())


def rr_column_indices(
    features: RRFeatures, reference: RRReference = "beats", irregularity: bool = False
) -> list[int]:
    """Positions in :data:`RR_COLUMNS` of the columns :func:`rr_selection` picks."""
    return [RR_COLUMNS.index(name) for name in rr_selection(features, reference, irregularity)]


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
        return beatless_record(record, len(leads), annotations, labels, inside, config)
    samples = annotations.samples[in_signal]
    rr = np.diff(samples) / leads[0].fs
    edge = round(EDGE_SECONDS * leads[0].fs)
    whole = (samples >= edge) & (samples < n_samples - edge)
    is_beat = in_signal.copy()
    is_beat[in_signal] = whole
    skipped = skip_counts(annotations.symbols, labels >= 0, inside, in_signal & ~is_beat)
    prepared = [prepared_signal(lead, config) for lead in leads]
    peaks = target_peaks(samples, leads[0].fs, prepared[0].size, config)
    per_lead = [
        lead_beats(signal, lead, peaks, rr, config)[whole]
        for signal, lead in zip(prepared, leads, strict=True)
    ]
    signals = per_lead[0] if len(per_lead) == 1 else np.stack(per_lead, axis=1)
    widths = qrs_widths(prepared[0], peaks, config)
    features = np.insert(rr_features(rr, config), RR_COLUMNS.index("qrs_width"), widths, axis=1)
    keep = slice(0, config.max_beats_per_record)
    return RecordBeats(
        record=record,
        signals=signals[keep],
        labels=labels[is_beat][keep],
        rr=features.astype(np.float32)[whole][keep],
        samples=samples[whole][keep],
        symbols=annotations.symbols[is_beat][keep],
        skipped=skipped,
    )


def beatless_record(
    record: str,
    n_leads: int,
    annotations: Annotations,
    labels: NDArray[np.int64],
    inside: NDArray[np.bool_],
    config: DataConfig,
) -> RecordBeats:
    """A record with fewer than two beats inside its signal: no beat, each annotation counted
    by its reason (the lone beat as :data:`LONE`)."""
    in_signal = (labels >= 0) & inside
    skipped = skip_counts(annotations.symbols, labels >= 0, inside, np.zeros_like(inside))
    if in_signal.any():
        skipped[LONE] = int(np.count_nonzero(in_signal))
    shape = (0, config.beat_length) if n_leads == 1 else (0, n_leads, config.beat_length)
    return RecordBeats(
        record=record,
        signals=np.zeros(shape, dtype=np.float32),
        labels=np.zeros(0, dtype=np.int64),
        rr=np.zeros((0, len(RR_COLUMNS)), dtype=np.float32),
        samples=np.zeros(0, dtype=np.int64),
        symbols=np.zeros(0, dtype=np.str_),
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


def prepared_signal(lead: Lead, config: DataConfig) -> NDArray[np.float64]:
    """One lead resampled to ``target_hz`` and without its baseline wander, as configured."""
    signal = resample_poly(lead.signal, config.target_hz, round(lead.fs), padtype="line")
    return remove_baseline(signal, config)


def target_peaks(
    samples: NDArray[np.int64], fs: float, n_samples: int, config: DataConfig
) -> NDArray[np.int64]:
    """The R peaks at ``samples`` (the record's rate) as samples of the resampled signal."""
    peaks = np.minimum(np.rint(samples * config.target_hz / fs), n_samples - 1)
    return peaks.astype(np.int64)


def lead_beats(
    signal: NDArray[np.float64],
    lead: Lead,
    peaks: NDArray[np.int64],
    rr: NDArray[np.float64],
    config: DataConfig,
) -> NDArray[np.float32]:
    """The beats at ``peaks`` cut from one lead's prepared signal and normalised on their own:
    float32 (beats, beat_length); the flat threshold follows the lead's raw amplitude."""
    starts, spans = beat_extents(signal.size, peaks, rr, config)
    values, inside = read_beats(signal, starts, spans, config.beat_length)
    flat_std = FLAT_FRACTION * float(np.abs(lead.signal).max())
    normalised = normalise_beats(values, inside, signal, peaks, config, flat_std)
    return np.where(inside, normalised, 0.0).astype(np.float32)


def qrs_widths(
    signal: NDArray[np.float64], peaks: NDArray[np.int64], config: DataConfig
) -> NDArray[np.float64]:
    """Each beat's QRS width in seconds by the slope rule of the module docstring."""
    smooth = max(round(QRS_SMOOTH_SECONDS * config.target_hz), 1)
    slope = np.convolve(np.abs(np.gradient(signal)), np.ones(smooth) / smooth, mode="same")
    reach = round(QRS_SEARCH_SECONDS * config.target_hz)
    values, inside = read_beats(
        slope, peaks - reach, np.full(peaks.size, 2 * reach + 1), 2 * reach + 1
    )
    values = np.where(inside, values, 0.0)
    steep = values >= QRS_SLOPE_FRACTION * values.max(axis=1, keepdims=True)
    first = steep.argmax(axis=1)
    last = steep.shape[1] - 1 - steep[:, ::-1].argmax(axis=1)
    width: NDArray[np.float64] = (last - first + 1) / config.target_hz
    return width


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


def rr_features(rr: NDArray[np.float64], config: DataConfig) -> NDArray[np.float64]:
    """The RR columns of :data:`RR_COLUMNS` (all but ``qrs_width``, in their order) of every
    beat from the record's RR intervals (module docstring)."""
    previous = np.concatenate([rr[:1], rr])
    following = np.concatenate([rr, rr[-1:]])
    record_mean = rr.mean()
    local = local_mean_rr(rr, config.rr_local_beats)
    seconds = seconds_mean_rr(rr, config.rr_local_seconds)
    regular = rr >= config.rr_premature * seconds[:-1]
    robust = seconds_mean_rr(rr, config.rr_local_seconds, regular)
    long = seconds_mean_rr(rr, config.rr_long_seconds, regular)
    columns = (
        previous,
        following,
        previous / record_mean,
        following / record_mean,
        previous / local,
        following / local,
        local / record_mean,
        previous / seconds,
        following / seconds,
        previous / robust,
        following / robust,
        previous / long,
        following / long,
        previous / following,
    )
    spread, successive, premature = irregularity(rr, ~regular, config.rr_local_seconds)
    return np.stack((*columns, spread / robust, successive / robust, premature), axis=1)


def irregularity(
    rr: NDArray[np.float64], premature: NDArray[np.bool_], seconds: float
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Per beat, how irregular the intervals of its ``seconds`` window are (the window of
    :func:`seconds_mean_rr`): their standard deviation, the mean absolute difference of the
    successive pairs inside it (0 where it holds one interval) and the fraction of them that
    is ``premature``. The first beat borrows the second's window, its next interval alone.

    The running sums are of the intervals minus the record's first one: the variance does not
    move with that shift, a regular rhythm's sums of squares cancel to exactly 0 instead of to
    rounding noise on the squares of whole seconds, and the shift is known to a stream from
    its start."""
    starts, stops = seconds_windows(rr, seconds)
    centred = rr - rr[0]
    mean = mean_between(centred, None, starts, stops)
    variance = mean_between(centred**2, None, starts, stops) - mean**2
    spread = np.sqrt(np.maximum(variance, 0.0))
    pairs = mean_between(np.abs(np.diff(rr)), None, starts, stops - 1)
    successive = np.nan_to_num(pairs, nan=0.0)
    fraction = mean_between(premature.astype(np.float64), None, starts, stops)
    return borrowed(spread), borrowed(successive), borrowed(fraction)


def borrowed(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """One value per interval (its window ending with it) to one per beat: a beat reads its
    previous interval's, the first beat its next one's."""
    return np.concatenate([values[:1], values])


def seconds_windows(
    rr: NDArray[np.float64], seconds: float
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Per interval, the range ``[start, stop)`` of the intervals that ended in the ``seconds``
    up to and including its end: it always holds the interval itself."""
    ends = np.cumsum(rr)
    starts = np.searchsorted(ends, ends - seconds, side="right")
    return starts, np.arange(1, rr.size + 1)


def seconds_mean_rr(
    rr: NDArray[np.float64], seconds: float, kept: NDArray[np.bool_] | None = None
) -> NDArray[np.float64]:
    """Per beat, the mean of the intervals (only the ``kept`` ones, when given) that ended in
    the ``seconds`` up to and including its previous one (the end of that interval); where none
    is kept, the mean of all of them. The first beat has no interval before it and takes its
    next."""
    starts, last = seconds_windows(rr, seconds)
    mean = mean_between(rr, None, starts, last)
    if kept is not None:
        some = mean_between(rr, kept, starts, last)
        mean = np.where(np.isnan(some), mean, some)
    return borrowed(mean)


def mean_between(
    values: NDArray[np.float64],
    kept: NDArray[np.bool_] | None,
    starts: NDArray[np.int64],
    stops: NDArray[np.int64],
) -> NDArray[np.float64]:
    """Mean of ``values[start:stop]`` (over the ``kept`` entries, when given) for every pair
    at once from running sums; NaN where a range keeps none."""
    if kept is None:
        kept = np.ones(values.size, dtype=np.bool_)
    sums = np.concatenate([[0.0], np.cumsum(np.where(kept, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(kept)])
    n = counts[stops] - counts[starts]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean: NDArray[np.float64] = (sums[stops] - sums[starts]) / n
    return mean


def local_mean_rr(rr: NDArray[np.float64], local_beats: int) -> NDArray[np.float64]:
    """Per beat, the mean of the last ``local_beats`` intervals up to and including its
    previous one (fewer for the first beats; the first beat has none and takes its next)."""
    ends = np.maximum(np.arange(rr.size + 1), 1)
    starts = np.maximum(ends - local_beats, 0)
    return mean_between(rr, None, starts, ends)
