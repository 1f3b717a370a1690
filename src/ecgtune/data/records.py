"""Reading one MIT-BIH record with wfdb: the chosen lead and the beat annotations.

Lead rule: the lead is found by its *name* in the header (``data.lead``, default MLII), never
by position: record 114 stores MLII as its second channel. Records 102 and 104 have no MLII
(their leads are V5 and V2, because of surgical dressings); with ``data.missing_lead =
"first_channel"`` (the default) their first channel (V5) is used, as the Kaggle/Kachuee
dataset evidently did (its 109,446 beats include theirs); with ``"skip"`` they are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import wfdb
from numpy.typing import NDArray

from ecgtune.config import DataConfig

MITDB_LEADS = ("MLII", "V1", "V2", "V4", "V5")


@dataclass(frozen=True)
class Annotations:
    """A record's reference annotations (``atr``): sample positions and symbols."""

    samples: NDArray[np.int64]
    symbols: NDArray[np.str_]


@dataclass(frozen=True)
class Lead:
    """One lead of a record: digital samples (ADC units) as float64, its rate and name.

    Min-max normalisation makes gain and baseline irrelevant, so the physical conversion is
    skipped.
    """

    signal: NDArray[np.float64]
    fs: float
    name: str


def lead_index(lead_names: list[str], config: DataConfig) -> int | None:
    """Channel of ``config.lead`` by name; the first channel, or None when the record lacks it
    (``config.missing_lead``)."""
    if config.lead in lead_names:
        return lead_names.index(config.lead)
    return 0 if config.missing_lead == "first_channel" else None


def read_lead(raw_dir: Path, record: str, config: DataConfig) -> Lead | None:
    """The record's selected lead; None when it lacks ``data.lead`` and
    ``data.missing_lead = "skip"``."""
    signals = wfdb.rdrecord(str(raw_dir / record), physical=False)
    channel = lead_index(list(signals.sig_name), config)
    if channel is None:
        return None
    samples = np.asarray(signals.d_signal[:, channel], dtype=np.float64)
    return Lead(signal=samples, fs=float(signals.fs), name=str(signals.sig_name[channel]))


def read_annotations(raw_dir: Path, record: str) -> Annotations:
    annotation = wfdb.rdann(str(raw_dir / record), "atr")
    return Annotations(
        samples=np.asarray(annotation.sample, dtype=np.int64),
        symbols=np.asarray(annotation.symbol, dtype=np.str_),
    )
