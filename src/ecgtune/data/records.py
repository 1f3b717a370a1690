"""Reading one WFDB record with wfdb: the chosen lead and the beat annotations.

Lead rule: the lead is found by its *name* in the header, never by position: record 114 stores
MLII as its second channel. The name and what to do when a record lacks it are arguments, so
that records of any WFDB database can be read (their leads may be ``II``, ``ECG1``...):

* the MIT-BIH build (:func:`read_lead`) takes them from ``data.lead`` and
  ``data.missing_lead``. Records 102 and 104 have no MLII (their leads are V5 and V2, because
  of surgical dressings); with ``"first_channel"`` (the default) their first channel (V5) is
  used, as the Kaggle/Kachuee dataset evidently did (its 109,446 beats include theirs); with
  ``"skip"`` they are left out;
* a record of another database (:func:`read_named_lead`) either uses its first channel, when
  asked to, or is refused with a one-line error that lists its leads.

A record that cannot be read (missing or malformed header or signal file, missing annotation
file) is a :class:`~ecgtune.errors.DataError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import wfdb
from numpy.typing import NDArray

from ecgtune.config import DataConfig
from ecgtune.errors import DataError

PHYSICAL_UNITS_PER_MV = {"mv": 1.0, "uv": 1000.0, "µv": 1000.0, "v": 0.001}
"""Header units the detector's millivolts are derived from; other units are taken as mV."""
WFDB_READ_ERRORS = (OSError, ValueError, IndexError, KeyError, TypeError)
"""What wfdb raises on a missing, truncated or malformed file (it does not check its input)."""
DEFAULT_ADC_GAIN = 200.0
"""WFDB's gain for a header that gives none (0): ADC units per physical unit."""


@dataclass(frozen=True)
class Annotations:
    """A record's reference annotations (``atr``): sample positions and symbols."""

    samples: NDArray[np.int64]
    symbols: NDArray[np.str_]


@dataclass(frozen=True)
class Lead:
    """One lead of a record: digital samples (ADC units) as float64, its rate and name.

    Min-max normalisation makes gain and baseline irrelevant to the beats, so the physical
    conversion is skipped; ``adc_per_mv`` and ``adc_zero`` are kept for the QRS detector,
    whose thresholds are in millivolts (:meth:`millivolts`).
    """

    signal: NDArray[np.float64]
    fs: float
    name: str
    adc_per_mv: float = DEFAULT_ADC_GAIN
    adc_zero: float = 0.0

    def millivolts(self) -> NDArray[np.float64]:
        return (self.signal - self.adc_zero) / self.adc_per_mv


def lead_index(lead_names: list[str], lead: str, first_channel: bool) -> int | None:
    """Channel of ``lead`` by name; the first channel when the record lacks it and
    ``first_channel``, else None."""
    if lead in lead_names:
        return lead_names.index(lead)
    return 0 if first_channel else None


def read_lead(raw_dir: Path, record: str, config: DataConfig) -> Lead | None:
    """The MIT-BIH build's lead: ``data.lead``; None when the record lacks it and
    ``data.missing_lead = "skip"``."""
    signals = read_signals(raw_dir / record)
    channel = lead_index(
        list(signals.sig_name), config.lead, config.missing_lead == "first_channel"
    )
    return None if channel is None else lead_of(signals, channel)


def read_named_lead(path: Path, lead: str, first_channel: bool) -> Lead:
    """Lead ``lead`` of the record at ``path`` (no extension); its first channel when it lacks
    it and ``first_channel``, else a one-line error naming the record's leads."""
    signals = read_signals(path)
    names = [str(name) for name in signals.sig_name]
    channel = lead_index(names, lead, first_channel)
    if channel is None:
        raise DataError(
            f"record {path}: no lead {lead!r} (its leads: {', '.join(names)}); choose one "
            f"with --lead NAME, or --first-channel to use {names[0]}"
        )
    return lead_of(signals, channel)


def check_header(path: Path) -> None:
    """A record path names a header file (``path`` has no extension)."""
    if not Path(f"{path}.hea").is_file():
        raise DataError(f"record {path}: no header file {path}.hea")


def read_signals(path: Path) -> wfdb.Record:
    """The record's digital signals and header."""
    check_header(path)
    try:
        signals = wfdb.rdrecord(str(path), physical=False)
    except WFDB_READ_ERRORS as exc:
        raise DataError(f"record {path}: not a readable WFDB record ({first_line(exc)})") from None
    if not signals.sig_name:
        raise DataError(f"record {path}: its header lists no signals")
    return signals


def lead_of(signals: wfdb.Record, channel: int) -> Lead:
    units = str(signals.units[channel]).lower()
    gain = float(signals.adc_gain[channel]) or DEFAULT_ADC_GAIN
    return Lead(
        signal=np.asarray(signals.d_signal[:, channel], dtype=np.float64),
        fs=float(signals.fs),
        name=str(signals.sig_name[channel]),
        adc_per_mv=gain * PHYSICAL_UNITS_PER_MV.get(units, 1.0),
        adc_zero=float(signals.baseline[channel]),
    )


def read_annotations(raw_dir: Path, record: str, annotator: str = "atr") -> Annotations:
    """The record's annotation file ``<record>.<annotator>`` (the reference beats: ``atr``)."""
    path = raw_dir / record
    if not annotation_path(path, annotator).is_file():
        raise DataError(
            f"record {path}: no annotation file {annotation_path(path, annotator)} "
            f"(--annotator {annotator})"
        )
    try:
        annotation = wfdb.rdann(str(path), annotator)
    except WFDB_READ_ERRORS as exc:
        raise DataError(
            f"{annotation_path(path, annotator)}: not a readable WFDB annotation file "
            f"({first_line(exc)})"
        ) from None
    samples = np.asarray(annotation.sample, dtype=np.int64)
    if samples.size and (samples[0] < 0 or np.any(np.diff(samples) < 0)):
        raise DataError(
            f"{annotation_path(path, annotator)}: not a WFDB annotation file (its sample "
            f"numbers are negative or out of order)"
        )
    return Annotations(samples=samples, symbols=np.asarray(annotation.symbol, dtype=np.str_))


def annotation_path(path: Path, annotator: str) -> Path:
    return Path(f"{path}.{annotator}")


def first_line(exc: BaseException) -> str:
    """A library's message kept to one line (some span several)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
