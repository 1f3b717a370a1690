"""Heartbeats in the 187-sample format of Kachuee, Fazeli and Sarrafzadeh (2018), vectorised.

Rules (one record at a time, every beat of the record cut at once with numpy indexing):

* **Beats and labels.** Every annotation whose symbol is in :data:`AAMI_SYMBOLS` is a beat,
  labelled with its AAMI class; other annotations (rhythm, noise, ``+ ~ ! " x | [ ]``) are not
  beats. ``B``, ``n``, ``r`` and ``?`` follow the usual AAMI convention (N, S, V, Q) for
  completeness but never occur in mitdb 1.0.0, so the counts equal those of DESIGN.md's
  mapping: N 90,631, S 2,781, V 7,236, F 803, Q 8,043 (109,494 beats).
* **Signal.** The lead is resampled from 360 Hz to ``target_hz`` with ``resample_poly``
  (``padtype="line"``: the record's DC offset causes no filter transient at its ends) and cut
  into consecutive ``window_seconds`` windows from the record start (the last one may be
  shorter); each window is min-max normalised to [0, 1] on its own.
* **Beat.** A beat starts at its annotated R peak (the annotation sample mapped to
  ``target_hz`` and rounded) and spans ``beat_span`` x the median RR interval of its window
  (RR between consecutive beats both inside the window; a window with fewer than two beats uses
  the record's median RR); the rest up to ``beat_length`` is zero, a longer span is cut.
* **Past the window end.** A beat that runs past its window's end keeps reading the signal,
  normalised with *its own window's* min and max and clipped to [0, 1], so every beat has its
  full shape; past the end of the record it is zero-padded. No beat is dropped.
* **RR intervals** (seconds, at 360 Hz): previous and next beat of the same record, whatever
  their class; the record's first beat uses its next interval as the previous one and the last
  beat its previous interval as the next one.
* ``max_beats_per_record`` keeps the first N beats after all of the above, so a beat is the
  same whether or not the record is truncated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.signal import resample_poly

from ecgtune.config import AAMI_CLASSES, DataConfig
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


@dataclass(frozen=True)
class RecordBeats:
    """The beats of one record, row-aligned; ``samples`` are the R peaks at the record's rate."""

    record: str
    signals: NDArray[np.float32]
    labels: NDArray[np.int64]
    rr: NDArray[np.float32]
    samples: NDArray[np.int64]
    symbols: NDArray[np.str_]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def aami_labels(symbols: NDArray[np.str_]) -> NDArray[np.int64]:
    """AAMI class index of each annotation symbol; -1 for annotations that are not beats."""
    unique, inverse = np.unique(symbols, return_inverse=True)
    table = np.array([SYMBOL_CLASS.get(str(symbol), -1) for symbol in unique], dtype=np.int64)
    return table[inverse.reshape(-1)]


def segment_record(
    record: str, lead: Lead, annotations: Annotations, config: DataConfig
) -> RecordBeats:
    """Cut every annotated beat of a record (rules in the module docstring)."""
    labels = aami_labels(annotations.symbols)
    is_beat = labels >= 0
    samples = annotations.samples[is_beat]
    if samples.size < 2:
        raise DataError(f"record {record}: fewer than two beat annotations, no RR interval")
    signal = resample_poly(lead.signal, config.target_hz, round(lead.fs), padtype="line")
    peaks = np.minimum(np.rint(samples * config.target_hz / lead.fs), signal.size - 1)
    peaks = peaks.astype(np.int64)
    window = round(config.window_seconds * config.target_hz)
    windows = peaks // window
    rr = np.diff(samples) / lead.fs
    median_rr = window_median_rr(rr, windows, n_windows=-(-signal.size // window))
    spans = np.rint(config.beat_span * median_rr[windows] * config.target_hz).astype(np.int64)
    low, high = window_extremes(signal, window)
    beats = cut_beats(signal, peaks, spans, low[windows], high[windows], config.beat_length)
    keep = slice(0, config.max_beats_per_record)
    return RecordBeats(
        record=record,
        signals=beats[keep],
        labels=labels[is_beat][keep],
        rr=neighbour_rr(rr)[keep],
        samples=samples[keep],
        symbols=annotations.symbols[is_beat][keep],
    )


def window_extremes(
    signal: NDArray[np.float64], window: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Minimum and maximum of each consecutive window (the last may be shorter)."""
    starts = np.arange(0, signal.size, window)
    return np.minimum.reduceat(signal, starts), np.maximum.reduceat(signal, starts)


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


def cut_beats(
    signal: NDArray[np.float64],
    peaks: NDArray[np.int64],
    spans: NDArray[np.int64],
    low: NDArray[np.float64],
    high: NDArray[np.float64],
    beat_length: int,
) -> NDArray[np.float32]:
    """All beats at once: ``signal[peak : peak + span]`` normalised with the beat's window
    ``low``/``high``, clipped to [0, 1], zero past the span or the record end."""
    offsets = np.arange(beat_length)
    index = peaks[:, None] + offsets[None, :]
    inside = (offsets[None, :] < spans[:, None]) & (index < signal.size)
    scale = np.where(high > low, high - low, 1.0)
    values = (signal[np.minimum(index, signal.size - 1)] - low[:, None]) / scale[:, None]
    return np.where(inside, np.clip(values, 0.0, 1.0), 0.0).astype(np.float32)


def neighbour_rr(rr: NDArray[np.float64]) -> NDArray[np.float32]:
    """(previous, next) RR of each beat; the ends borrow their only neighbour's interval."""
    previous = np.concatenate([rr[:1], rr])
    following = np.concatenate([rr, rr[-1:]])
    return np.stack([previous, following], axis=1).astype(np.float32)
