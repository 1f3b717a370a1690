"""Reading one WFDB record with wfdb: the chosen leads and the beat annotations.

Lead rule: a lead is found by its *name* in the header, never by position: record 114 stores
MLII as its second channel. The names and what to do when a record lacks one are arguments,
so that records of any WFDB database can be read (their leads may be ``II``, ``ECG1``...).
:func:`lead_channels` decides, for every wanted lead in order, the channel it is read from:
its own when the record holds it; otherwise, when asked to, the record's first channel not
already taken by another wanted lead (by its own name or as an earlier stand-in). Record 100
holds MLII and V5: with ``["MLII", "V1"]``, V5 stands in for V1; record 102 holds V5 and V2:
MLII is read from V5 and V1 from V2.

* The MIT-BIH build reads ``data.leads`` with the stand-ins and applies ``data.missing_lead``
  itself (:mod:`ecgtune.data.build`): ``"first_channel"`` (the default) keeps the stand-ins,
  as the Kaggle/Kachuee dataset evidently did for 102 and 104, which lack MLII (surgical
  dressings; its 109,446 beats include theirs), ``"skip"`` leaves such a record out.
* A record of another database (``evaluate --database``, ``predict``) uses the stand-ins only
  when asked to (``--first-channel``); otherwise it is refused with a one-line error naming
  the missing lead and the record's leads.

A record that cannot be read (missing or malformed header or signal file, missing annotation
file) is a :class:`~ecgtune.errors.DataError` naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import wfdb
from numpy.typing import NDArray

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


def lead_channels(
    record_leads: Sequence[str], wanted: Sequence[str], first_channel: bool
) -> list[int | None]:
    """The channel each ``wanted`` lead is read from (module docstring): its own by name;
    when the record lacks it and ``first_channel``, the first channel no other wanted lead
    takes; None when the record lacks it and either no stand-in is allowed or none is left."""
    own = [record_leads.index(name) if name in record_leads else None for name in wanted]
    if not first_channel:
        return own
    free = [channel for channel in range(len(record_leads)) if channel not in own]
    return [free.pop(0) if channel is None and free else channel for channel in own]


def read_named_leads(path: Path, names: Sequence[str], first_channel: bool) -> list[Lead]:
    """Leads ``names`` of the record at ``path`` (no extension), in that order, each found as
    :func:`lead_channels` says; a lead without a channel is a one-line error naming it and the
    record's leads."""
    signals = read_signals(path)
    record_leads = [str(name) for name in signals.sig_name]
    channels = lead_channels(record_leads, names, first_channel)
    found = [channel for channel in channels if channel is not None]
    if len(found) < len(names):
        missing = channels.index(None)
        stand_in = lead_channels(record_leads, names, first_channel=True)[missing]
        its = f"record {path}: no lead {names[missing]!r} (its leads: {', '.join(record_leads)})"
        if stand_in is None:
            raise DataError(f"{its} and no other channel is left to read in its place")
        raise DataError(
            f"{its}; choose one with --lead NAME, or --first-channel to use "
            f"{record_leads[stand_in]}"
        )
    return [lead_of(signals, channel) for channel in found]


def lead_substitutions(wanted: Sequence[str], leads: Sequence[Lead]) -> dict[str, str]:
    """``{wanted lead: lead read in its place}`` for the leads a record lacks."""
    return {name: lead.name for name, lead in zip(wanted, leads, strict=True) if lead.name != name}


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
