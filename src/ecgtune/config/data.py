"""``[data]`` and ``[data.resample]``: where the beats come from, how they are cut, normalised
and split, and how the train split is resampled."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from ecgtune.config.base import Section, _rule_error, _value_error
from ecgtune.mitdb import MITDB_LEADS, mitdb_record_names

MAX_CLASSES = 256
"""Most classes a csv/parquet dataset may have (labels 0..255): a label far above the classes
in use is a broken file, not a reason to size arrays by it."""
MAX_LEADS = 12
"""Most leads a beat may carry (a standard 12-lead ECG)."""
MITDB_CHANNELS = 2
"""Channels of every MIT-BIH record: MLII (or V5) and one of V1, V2, V4, V5."""


class ResampleConfig(Section):
    """Resampling of the train split with imbalanced-learn (validation and test never)."""

    method: Literal["none", "random_under", "random_over", "smote", "under_over"] = Field(
        "none", description="none | random_under | random_over | smote | under_over"
    )
    target_per_class: int = Field(
        15000,
        ge=1,
        le=1_000_000,
        description="under_over: classes above are under-sampled, below over-sampled",
    )
    drop_classes: list[str] = Field(
        default_factory=list, description="class names removed from the train split"
    )


class DataConfig(Section):
    """Where the beats come from and how they are split."""

    source: Literal["mitdb", "csv", "parquet"] = Field(
        "mitdb", description="mitdb: raw PhysioNet records | csv | parquet (Kaggle format)"
    )
    raw_dir: Path = Field(
        Path("data/raw/mitdb"),
        description="MIT-BIH records; missing ones are downloaded here and SHA-256 verified",
    )
    base_url: str = Field(
        "https://physionet.org/files/mitdb/1.0.0/", description="PhysioNet mitdb 1.0.0 files"
    )
    records: list[str] | None = Field(
        None, description="restrict the build to these records (default: all 48)"
    )
    leads: list[str] = Field(
        default_factory=lambda: ["MLII"],
        min_length=1,
        max_length=MAX_LEADS,
        description="leads found by their names in the header, one input channel each, in "
        'this order (["MLII", "V1"]: both leads of a mitdb record)',
    )
    missing_lead: Literal["first_channel", "skip"] = Field(
        "first_channel",
        description="a record without one of the leads (102, 104 lack MLII): use its first "
        "channel not taken by another of data.leads, or skip the record",
    )
    window_seconds: float = Field(
        10.0, gt=0, le=60, description="normalisation and median-RR window"
    )
    target_hz: int = Field(125, ge=50, le=360, description="beats are resampled to this rate")
    window: Literal["kachuee", "centered"] = Field(
        "kachuee",
        description="kachuee: from the R peak, beat_span median RRs | centered: beat_length "
        "samples from pre_r_seconds before the R peak (P wave and neighbours included)",
    )
    beat_length: int = Field(187, ge=16, le=2048, description="samples per beat after padding")
    beat_span: float = Field(
        1.2, gt=0, le=3, description="window = kachuee: beat length in median RR intervals"
    )
    pre_r_seconds: float = Field(
        0.5,
        ge=0,
        le=4,
        description="window = centered: the beat starts this long before its R peak",
    )
    normalise: Literal["window_minmax", "beat_zscore", "window_zscore"] = Field(
        "window_minmax",
        description="window_minmax: [0, 1] per window_seconds window | beat_zscore: z-score of "
        "the beat | window_zscore: z-score by the window_seconds around the R peak",
    )
    baseline: Literal["none", "median", "highpass"] = Field(
        "none",
        description="baseline wander removal: none | median (200 + 600 ms median filters) | "
        "highpass (0.5 Hz Butterworth, zero-phase)",
    )
    rr_local_beats: int = Field(
        10, ge=1, le=1000, description="RR intervals in the (causal) local mean RR"
    )
    rr_local_seconds: float = Field(
        60.0,
        ge=10,
        le=3600,
        description="the seconds and robust references: their window in s; at least 10, so "
        "that it holds several intervals even at 30 beats a minute (a window shorter than one "
        "interval holds only the previous one, and the ratios to it are always 1)",
    )
    rr_long_seconds: float = Field(
        300.0, gt=0, le=3600, description="the long reference: the robust one over this many s"
    )
    rr_premature: float = Field(
        0.9,
        gt=0,
        lt=1,
        description="an interval shorter than this x the seconds reference before it is "
        "premature, left out of the robust and long references",
    )
    max_beats_per_record: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="keep at most this many beats per record (quick experiments)",
    )
    split: Literal["intra", "inter"] = Field(
        "intra", description="intra: stratified random beats | inter: de Chazal DS1 -> DS2"
    )
    test_fraction: float = Field(0.2, gt=0, lt=1, description="intra split: share of test")
    valid_fraction: float = Field(
        0.1, gt=0, lt=1, description="share of validation (of all beats, or of DS1 in inter)"
    )
    train_files: list[Path] = Field(
        default_factory=list, description="csv/parquet: training files (concatenated)"
    )
    test_files: list[Path] = Field(
        default_factory=list, description="csv/parquet: test files; empty = carve test out"
    )
    class_names: list[str] | None = Field(
        None,
        min_length=2,
        max_length=MAX_CLASSES,
        description="csv/parquet: names of labels 0..K-1 (default N,S,V,F,Q or 0..K-1)",
    )
    cache_dir: Path = Field(Path("data/cache"), description="built datasets are cached here")
    resample: ResampleConfig = Field(default_factory=ResampleConfig)

    @field_validator("raw_dir", mode="before")
    @classmethod
    def _local_folder(cls, value: Any) -> Any:
        if isinstance(value, str) and "://" in value:
            raise _value_error(
                "a URL, not a folder: data.raw_dir is the local folder the records are read "
                "from (and downloaded to); the URL they are downloaded from is data.base_url"
            )
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not _is_http_url(value):
            raise _value_error("must be an http:// or https:// URL (the mitdb 1.0.0 folder)")
        return value

    @model_validator(mode="after")
    def _check_fractions(self) -> Self:
        if self.split == "intra" and self.test_fraction + self.valid_fraction >= 1:
            raise _rule_error(
                f"data.test_fraction + data.valid_fraction = "
                f"{self.test_fraction + self.valid_fraction:g}: must be below 1"
            )
        if self.source != "mitdb" and not self.train_files:
            raise _rule_error(f"data.train_files is empty: data.source = {self.source!r} needs it")
        return self

    @model_validator(mode="after")
    def _check_r_peak_in_beat(self) -> Self:
        """A centred beat holds its R peak: ``pre_r_seconds`` ends inside ``beat_length``."""
        pre = round(self.pre_r_seconds * self.target_hz)
        if self.window == "centered" and pre >= self.beat_length:
            raise _rule_error(
                f"data.pre_r_seconds = {self.pre_r_seconds:g} puts the R peak at sample {pre} "
                f"(at data.target_hz = {self.target_hz}), past a {self.beat_length}-sample "
                f"beat (data.beat_length): lower it below {self.beat_length / self.target_hz:g} s"
            )
        return self

    @property
    def input_channels(self) -> int:
        """Signal channels per beat, the one place that decides the models' input width: one
        per lead of ``data.leads``. ``BeatSet.signals`` are (n, beat_length) for one lead (the
        Kachuee layout) and (n, channels, beat_length) for several."""
        return len(self.leads)

    @field_validator("leads")
    @classmethod
    def _unique_leads(cls, value: list[str]) -> list[str]:
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise _value_error(f"lead {repeated[0]!r} is given twice; each lead feeds one channel")
        return value

    @model_validator(mode="after")
    def _check_mitdb_keys(self) -> Self:
        """Leads and records are MIT-BIH names, known without downloading anything."""
        if self.source != "mitdb":
            if self.split == "inter" or self.records is not None:
                key = "data.split = 'inter'" if self.split == "inter" else "data.records"
                raise _rule_error(
                    f"{key} needs data.source = 'mitdb' (Kaggle files have no records)"
                )
            if len(self.leads) > 1:
                raise _rule_error(
                    f"data.leads = {self.leads}: {self.source} beat files hold one lead; give "
                    f"one name"
                )
            return self
        self._check_mitdb_leads()
        if self.records == []:
            raise _rule_error(
                "data.records = []: give at least one record, or leave the key out for all 48"
            )
        valid = mitdb_record_names()
        unknown = [name for name in self.records or [] if name not in valid]
        if unknown:
            raise _rule_error(
                f"data.records: unknown records {unknown}; valid names: {', '.join(valid)}"
            )
        return self

    def _check_mitdb_leads(self) -> None:
        """Every lead is an MIT-BIH lead name, and at most two: a record holds two channels."""
        unknown = [name for name in self.leads if name not in MITDB_LEADS]
        if unknown:
            raise _rule_error(
                f"data.leads = {self.leads}: unknown lead {unknown[0]!r}; mitdb leads are "
                f"{', '.join(MITDB_LEADS)}"
            )
        if len(self.leads) > MITDB_CHANNELS:
            raise _rule_error(
                f"data.leads = {self.leads}: mitdb records hold {MITDB_CHANNELS} channels; give "
                f"at most {MITDB_CHANNELS} leads"
            )


def _is_http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)
