"""The experiment's typed schema: defaults, validation and documentation in one place.

Every section of ``config.toml`` is a pydantic model that forbids unknown keys, so a typo is
caught before any work starts. :func:`load_config` turns every problem (missing, empty or
non-UTF-8 file, TOML syntax, unknown key, wrong type, value out of range, a ``--set`` override
that does not parse) into one :class:`ConfigError` whose message names the key path, the bad
value and what is allowed; the command line prints it on one line and exits with status 2.

Hostile input is refused here rather than deep in the work: everything that sizes memory or
time has an upper bound (see the ``le=`` of each field and :data:`PER_ENTRY_BOUNDS`), values of
the wrong TOML type are not coerced (``lr = "0.001"``, ``epochs = true``; see
:func:`coercion_problem`), and the checks that need no data (MIT-BIH leads and record names,
URLs, the experiment name) run with the rest of the schema.
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
import types
import typing
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import Any, Literal, Self
from urllib.parse import urlsplit

import tomlkit
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from ecgtune.dotted import set_dotted
from ecgtune.errors import ConfigError
from ecgtune.mitdb import MITDB_LEADS, mitdb_record_names

AAMI_CLASSES = ("N", "S", "V", "F", "Q")
Activation = Literal["relu", "gelu", "leaky_relu", "silu"]
Pooling = Literal["max", "avg", "none"]
Metric = Literal["macro_f1", "balanced_accuracy", "accuracy", "jkappa", "sv_f1", "loss"]
RRFeatures = Literal["none", "raw", "normalised", "all", "rhythm", "rhythm_record"]
ECTOPIC_OBJECTIVES = ("jkappa", "sv_f1")
"""Objectives read off the S and V classes (:mod:`ecgtune.metrics`)."""
RRReference = Literal["beats", "seconds", "robust"]
RRHead = Literal["concat", "mlp"]

MAX_CLASSES = 256
"""Most classes a csv/parquet dataset may have (labels 0..255): a label far above the classes
in use is a broken file, not a reason to size arrays by it."""
MAX_LEADS = 12
"""Most leads a beat may carry (a standard 12-lead ECG)."""
MITDB_CHANNELS = 2
"""Channels of every MIT-BIH record: MLII (or V5) and one of V1, V2, V4, V5."""
MAX_SEED = 2**32 - 1
"""numpy's and torch's seeds are unsigned 32-bit."""
THIRTY_DAYS_SECONDS = 30 * 24 * 3600
MAX_CONFIG_BYTES = 1 << 20
"""A config file is a few kilobytes; reading stops past 1 MiB (``--config /dev/zero``)."""
MLFLOW_DATABASES = ("sqlite", "postgresql", "mysql", "mssql")
MLFLOW_SCHEMES = ("file", *MLFLOW_DATABASES, "http", "https", "databricks")
"""The tracking stores MLflow registers itself (``mlflow.tracking._tracking_service.utils``:
file store, SQLAlchemy databases, REST server, Databricks); a plain path is a file store. The
Unity Catalog schemes hold model registries only, and plugins' schemes are not accepted."""


def _usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


CPU_CORES = _usable_cores()


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated and
    values of the wrong TOML type are refused instead of coerced (:func:`coercion_problem`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _refuse_surprising_coercion(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        problem = coercion_problem(field.annotation, value) if field else None
        if problem:
            raise _value_error(problem)
        return value


def _rule_error(message: str) -> PydanticCustomError:
    """An error raised by a cross-field rule; its message already names the keys involved."""
    return PydanticCustomError("config_rule", message)


def _value_error(message: str) -> PydanticCustomError:
    """An error about one key's value; reported as ``key = value: message``."""
    return PydanticCustomError("config_value", message)


def coercion_problem(annotation: Any, value: Any) -> str | None:
    """Why pydantic's lax mode would surprise the user with ``value`` for a key, or None.

    Lax mode turns ``"0.001"`` into a float, ``true`` into 1 and ``1`` or ``"yes"`` into
    True; those are refused here. Strict mode would refuse too much: a whole float for an
    integer key (hyperopt's ``quniform`` draws 64.0), a string for a path, an array for a
    tuple. So a number key takes numbers (an int for a float key too) and a boolean key
    booleans; keys of text need no check (lax mode coerces nothing into a string), and every
    other rule is the schema's. Lists are checked entry by entry.
    """
    if isinstance(value, list | tuple):
        entry_types = _entry_annotations(annotation, len(value))
        for index, (item, entry_type) in enumerate(zip(value, entry_types, strict=False)):
            problem = _scalar_problem(entry_type, item)
            if problem:
                return f"entry [{index}] = {item!r} is {problem}"
        return None
    return _scalar_problem(annotation, value)


EXPECTED = {"boolean": "true or false", "integer": "a valid integer", "float": "a valid number"}
VALUE_KINDS = {"boolean": {"boolean"}, "number": {"integer", "float"}, "string": set()}
"""Which schema types take a value of each TOML type without surprise."""


def _scalar_problem(annotation: Any, value: Any) -> str | None:
    """Why a scalar does not fit a key of numbers or booleans: the wrong TOML type, or nan
    and inf, which TOML writes as floats but which no bound of the schema can say it refuses
    (``lr = nan`` compares false with every bound)."""
    kind = _toml_kind(value)
    accepted = _accepted_types(annotation)
    if kind == "number" and accepted & VALUE_KINDS["number"] and not math.isfinite(value):
        return "not a finite number (nan and inf are refused)"
    if kind is None or not accepted or VALUE_KINDS[kind] & accepted:
        return None
    takes = " or ".join(EXPECTED[name] for name in sorted(accepted))
    return f"a {kind}, but the key takes {takes}{_unquote_hint(value, accepted)}"


def _unquote_hint(value: Any, accepted: set[str]) -> str:
    """A quoted value of the right type (``"0.001"``, ``"true"``) is most likely a slip."""
    if not isinstance(value, str):
        return ""
    try:
        unquoted = _toml_kind(tomllib.loads(f"value = {value}")["value"])
    except tomllib.TOMLDecodeError:
        return ""
    fits = unquoted is not None and VALUE_KINDS[unquoted] & accepted
    return " (write it without quotes)" if fits else ""


def _toml_kind(value: Any) -> str | None:
    """The TOML type of a scalar value (bool before int: Python's bool is an int)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def _accepted_types(annotation: Any) -> set[str]:
    """The scalar types a number or boolean key takes: boolean, integer, float. Empty for
    keys that take text or anything (strings, paths, names, ``Any``): lax mode coerces no
    number or boolean into those, and their own errors list what is allowed."""
    members = union_members(annotation)
    if any(_takes_text(member) for member in members):
        return set()
    names = {bool: "boolean", int: "integer", float: "float"}
    return {names[member] for member in members if member in names}


def _takes_text(member: Any) -> bool:
    if member is Any or typing.get_origin(member) is Literal:
        return True
    return isinstance(member, type) and issubclass(member, str | PurePath)


def _entry_annotations(annotation: Any, length: int) -> list[Any]:
    """The type of each entry of a list value, from the key's list or tuple annotation."""
    for member in union_members(annotation):
        args = typing.get_args(member)
        if typing.get_origin(member) is list:
            return [args[0]] * length
        if typing.get_origin(member) is tuple:
            return [args[0]] * length if args[-1] is Ellipsis else list(args)
    return []


def union_members(annotation: Any) -> tuple[Any, ...]:
    """The members of a union type (``bool | list[bool]``), or the type itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


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


PER_LAYER_KEYS = ("channels", "kernel_sizes", "dilations", "pooling")
PER_ENTRY_BOUNDS = {"channels": 1024, "kernel_sizes": 255, "dilations": 64, "fc_sizes": 8192}
"""Largest entry of each integer list of ``[model]``: 1024 channels, kernels of 255 samples
(a beat is 187), dilations of 64 and fully connected layers of 8192 units are beyond any
useful beat classifier; the whole model is further checked by ``models.budget``."""


def _reference_pooling() -> list[Pooling]:
    return ["none", "max", "none", "none", "none"]


RNN_ONLY_KEYS = (
    "rnn_cell",
    "hidden_size",
    "rnn_layers",
    "bidirectional",
    "conv_frontend",
    "readout",
)
CNN_HEAD_KEYS = ("global_pool", "adaptive_length")
CONV_STAGE_KEYS = (
    "conv_layers",
    *PER_LAYER_KEYS,
    "pool_size",
    "batch_norm",
    "se_blocks",
    "se_reduction",
    "residual",
    "attention",
    "attention_heads",
)


class ModelConfig(Section):
    """The network. Per-layer lists give one entry per conv stage; entries past ``conv_layers``
    are cut away, so the resolved config (and ``best_config.toml``) lists exactly the stages
    that run; shorter lists are errors. A search over the depth draws its per-stage lists with
    ``each`` (see ``ecgtune.search.space``)."""

    kind: Literal["cnn", "rnn"] = Field("cnn", description="cnn | rnn")
    conv_layers: int = Field(5, ge=1, le=16, description="conv stages (rnn: front-end stages)")
    channels: list[int] = Field(
        default_factory=lambda: [32, 64, 64, 128, 160], description="output channels per stage"
    )
    kernel_sizes: list[int] = Field(
        default_factory=lambda: [11, 7, 5, 3, 3], description="kernel size per stage"
    )
    dilations: list[int] = Field(
        default_factory=lambda: [1, 1, 1, 1, 1], description="dilation per stage"
    )
    pooling: list[Pooling] = Field(
        default_factory=lambda: _reference_pooling(),
        description="pooling after each stage: max | avg | none",
    )
    pool_size: int = Field(2, ge=2, le=8, description="window and stride of stage pooling")
    batch_norm: bool = Field(True, description="batch norm after every convolution")
    activation: Activation = Field("relu", description="relu | gelu | leaky_relu | silu")
    se_blocks: bool | list[bool] = Field(
        default_factory=lambda: [False, True, True, True, True],
        description="squeeze-excitation after each stage (one bool for all, or per stage)",
    )
    se_reduction: int = Field(4, ge=1, le=64, description="squeeze-excitation reduction ratio")
    residual: bool | list[bool] = Field(
        default_factory=lambda: [False, False, True, True, False],
        description="residual blocks of two convs (one bool for all, or per stage)",
    )
    attention: bool = Field(
        False, description="temporal self-attention after the conv stages (cnn, rnn front-end)"
    )
    attention_heads: int = Field(
        4, ge=1, le=32, description="heads; must divide the last stage's channels"
    )
    global_pool: Literal["avg", "max", "avgmax", "adaptive"] = Field(
        "adaptive", description="head pooling: avg | max | avgmax | adaptive (then flatten)"
    )
    adaptive_length: int = Field(8, ge=1, le=64, description="global_pool = adaptive: length")
    fc_sizes: list[int] = Field(
        default_factory=lambda: [384, 256, 96],
        max_length=8,
        description="fully connected layers of the head",
    )
    dropout: float = Field(
        0.3, ge=0, lt=1, description="dropout in the head (and between rnn layers)"
    )
    rr_features: RRFeatures = Field(
        "none",
        description="RR features fed to the head: none | raw (previous, next in s) | "
        "normalised (by the record's and the local mean RR) | all (raw and normalised) | "
        "rhythm (by the local and long references, previous / next, QRS width: nothing from "
        "the whole record) | rhythm_record (rhythm and the by-record ratios)",
    )
    rr_reference: RRReference = Field(
        "robust",
        description="rr_features = rhythm | rhythm_record: the local reference RR they divide "
        "by: beats (mean of the last data.rr_local_beats intervals) | seconds (mean of the "
        "intervals of the last data.rr_local_seconds) | robust (the same without premature "
        "intervals)",
    )
    rr_head: RRHead = Field(
        "concat",
        description="how the RR features reach the head: concat (appended to the encoder's "
        "output) | mlp (through their own two-layer MLP of rr_hidden units first, fused late)",
    )
    rr_hidden: int = Field(32, ge=2, le=512, description="rr_head = mlp: its width")
    rnn_cell: Literal["gru", "lstm"] = Field("gru", description="rnn: gru | lstm")
    hidden_size: int = Field(64, ge=4, le=1024, description="rnn: hidden units per direction")
    rnn_layers: int = Field(2, ge=1, le=6, description="rnn: stacked recurrent layers")
    bidirectional: bool = Field(True, description="rnn: read the beat both ways")
    conv_frontend: bool = Field(
        True, description="rnn: run the conv stages first to shorten the sequence"
    )
    readout: Literal["attention", "mean"] = Field(
        "attention", description="rnn: attention pooling or mean over time"
    )

    @model_validator(mode="after")
    def _cut_and_check_per_layer_lists(self) -> Self:
        n = self.conv_layers
        per_layer = {key: getattr(self, key) for key in PER_LAYER_KEYS}
        for key in ("se_blocks", "residual"):
            if isinstance(getattr(self, key), list):
                per_layer[key] = getattr(self, key)
        for key, values in per_layer.items():
            if len(values) < n:
                raise _rule_error(
                    f"model.{key} has {len(values)} entries but model.conv_layers = {n}: "
                    f"give at least one per stage"
                )
            if len(values) > n:
                object.__setattr__(self, key, list(values[:n]))
        for key, high in PER_ENTRY_BOUNDS.items():
            values = getattr(self, key)
            if any(not 1 <= value <= high for value in values):
                raise _rule_error(f"model.{key} = {values}: entries must be >= 1 and <= {high}")
        return self

    @field_validator("rr_features", mode="before")
    @classmethod
    def _rr_features_is_no_longer_a_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise _value_error(
                "takes 'none', 'raw', 'normalised', 'all', 'rhythm' or 'rhythm_record' (the "
                "former true is 'raw', false is 'none')"
            )
        return value

    def uses(self, key: str) -> bool:
        """Whether a dotted config key shapes this network: recurrent keys only an RNN's,
        conv-stage keys only a CNN's or an RNN's conv front-end, the CNN head's pooling only a
        CNN's. Keys outside ``[model]`` always count."""
        section, _, name = key.partition(".")
        if section != "model":
            return True
        if name in RNN_ONLY_KEYS:
            return self.kind == "rnn"
        if name in CNN_HEAD_KEYS:
            return self.kind == "cnn"
        if name in CONV_STAGE_KEYS:
            return self.kind == "cnn" or self.conv_frontend
        if name in ("rr_head", "rr_hidden"):
            return self.rr_features != "none" and (name == "rr_head" or self.rr_head == "mlp")
        if name == "rr_reference":
            return self.rr_features in ("rhythm", "rhythm_record")
        return True

    @property
    def has_batch_norm(self) -> bool:
        """Whether the network holds batch-norm layers: its conv stages, when it has them."""
        return self.batch_norm and (self.kind == "cnn" or self.conv_frontend)

    def stage_flags(self, key: Literal["se_blocks", "residual"]) -> list[bool]:
        """One flag per stage, whether the config gave one bool or a list."""
        value = getattr(self, key)
        return list(value) if isinstance(value, list) else [bool(value)] * self.conv_layers

    def sequence_lengths(self, input_length: int) -> list[int]:
        """Length of the feature sequence after each conv stage ("same" padding, pooling)."""
        lengths, length = [], input_length
        for pool in self.pooling:
            if pool != "none":
                length //= self.pool_size
            lengths.append(length)
        return lengths


class AugmentConfig(Section):
    """Random per-beat transforms of the train batches (never validation or test) that mimic
    patient and device differences; drawn on the device from the run's seeded generator, in the
    units of the normalised beat. 0 turns a transform off."""

    scale: float = Field(
        0.0, ge=0, le=0.9, description="amplitude x U(1 - scale, 1 + scale) per beat"
    )
    baseline: float = Field(
        0.0, ge=0, le=5, description="amplitude of a random 0.05-0.5 Hz sinusoid added per beat"
    )
    noise: float = Field(0.0, ge=0, le=5, description="standard deviation of Gaussian noise added")
    shift: int = Field(
        0, ge=0, le=256, description="the beat moves by up to this many samples (zero-filled)"
    )

    @property
    def active(self) -> bool:
        return any((self.scale, self.baseline, self.noise, self.shift))


class TrainingConfig(Section):
    """How one model is trained; the search calls the same trainer for every trial."""

    epochs: int = Field(30, ge=1, le=1000, description="maximum epochs")
    batch_size: int = Field(64, ge=2, le=65536, description="beats per optimiser step")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adamw", description="adam | adamw | sgd")
    lr: float = Field(1e-3, gt=0, le=10, description="learning rate")
    weight_decay: float = Field(1e-4, ge=0, le=1, description="weight decay")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd momentum")
    scheduler: Literal["none", "plateau", "cosine", "onecycle"] = Field(
        "plateau", description="none | plateau (on the objective) | cosine | onecycle"
    )
    plateau_factor: float = Field(0.5, gt=0, lt=1, description="plateau: lr is multiplied by this")
    plateau_patience: int = Field(
        2, ge=0, le=1000, description="plateau: epochs without improvement before the lr drops"
    )
    grad_clip: float = Field(0.0, ge=0, description="max gradient norm; 0 = off")
    patient_adversary: float = Field(
        0.0,
        ge=0,
        le=10,
        description="gradient reversal strength: a head learns to tell the training records "
        "apart from the encoder's features and the encoder gets its gradient x -strength, so "
        "it keeps what patients share; 0 = off",
    )
    adversary_hidden: int = Field(
        64, ge=2, le=1024, description="patient_adversary > 0: the record head's hidden units"
    )
    loss: Literal["ce", "weighted_ce", "focal"] = Field(
        "weighted_ce", description="ce | weighted_ce | focal"
    )
    class_weights: Literal["inverse", "effective"] = Field(
        "inverse", description="weighted_ce/focal: inverse frequency or effective number"
    )
    effective_beta: float = Field(0.999, gt=0, lt=1, description="class_weights = effective")
    focal_gamma: float = Field(2.0, ge=0, le=10, description="focal loss focusing parameter")
    focal_weighted: bool = Field(False, description="focal loss with class weights")
    objective: Metric = Field(
        "macro_f1",
        description="validation metric for early stopping, the best epoch and the search: "
        "macro_f1 | balanced_accuracy | accuracy | jkappa (Mar et al. 2011: kappa / 2 + the S "
        "and V Se and +P / 8) | sv_f1 (mean of the S and V F1) | loss (minimised; the others "
        "maximised)",
    )
    early_stopping_patience: int = Field(
        10, ge=1, le=1000, description="epochs without improvement"
    )
    min_delta: float = Field(1e-4, ge=0, description="smallest change that counts")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="auto: cuda, then mps, then cpu"
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="autocast precision")
    num_threads: int = Field(0, ge=0, description="torch CPU threads; 0 = all cores")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @field_validator("num_threads")
    @classmethod
    def _at_most_the_cores(cls, value: int) -> int:
        if value > CPU_CORES:
            raise _value_error(f"more than the {CPU_CORES} CPU cores this process may use; 0 = all")
        return value


class Distribution(Section):
    """One hyperopt distribution of ``[search.space]``: exactly one kind is given.

    Bounds are in the value's own terms (``loguniform = [1e-5, 1e-2]``, not their logs);
    ``randint = [low, high]`` draws low .. high - 1 as hyperopt does; ``normal = [mu, sigma]``.
    ``each`` draws every entry of a list independently; ``when`` opens extra keys for some
    options of a ``choice`` (keyed by the option as written in TOML: ``rnn``, ``3``, ``true``).
    """

    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    quniform: tuple[float, float, float] | None = None
    loguniform: tuple[float, float] | None = None
    qloguniform: tuple[float, float, float] | None = None
    randint: tuple[int, int] | None = None
    normal: tuple[float, float] | None = None
    each: Distribution | None = None
    when: dict[str, dict[str, Distribution]] | None = None

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> Self:
        kinds = [k for k in DISTRIBUTION_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise _rule_error(
                f"give exactly one of {', '.join(DISTRIBUTION_KINDS)} (got {kinds or 'none'})"
            )
        if self.when is not None and self.choice is None:
            raise _rule_error("'when' opens sub-spaces of a 'choice' only")
        problem = self._shape_problem()
        if problem:
            raise _rule_error(problem)
        return self

    def _shape_problem(self) -> str | None:
        """What makes this distribution unusable by hyperopt, or None."""
        kind = self.kind
        if self.choice is not None:
            return _choice_problem(self.choice, self.when)
        if self.each is not None:
            if self.each.each is not None or self.each.when is not None:
                return "'each' draws single values: no 'each' or 'when' inside it"
            return None
        if self.normal is not None:
            sigma_ok = self.normal[1] > 0
            return None if sigma_ok else f"normal = {list(self.normal)}: sigma must be > 0"
        low, high, *step = getattr(self, kind)
        written = f"{kind} = {list(getattr(self, kind))}"
        if not low < high:
            return f"{written}: low must be below high"
        if step and step[0] <= 0:
            return f"{written}: the step q must be > 0"
        if kind in ("loguniform", "qloguniform") and low <= 0:
            return f"{written}: log-uniform bounds must be > 0"
        return None

    @property
    def kind(self) -> str:
        return next(k for k in DISTRIBUTION_KINDS if getattr(self, k) is not None)


def option_label(option: Any) -> str:
    """How a ``choice`` option is named as a ``when`` key: as TOML writes it (true, 3, rnn)."""
    if isinstance(option, bool):
        return "true" if option else "false"
    return str(option)


def _choice_problem(
    options: list[Any], when: dict[str, dict[str, Distribution]] | None
) -> str | None:
    if not options:
        return "choice = []: give at least one option"
    if any(isinstance(option, dict) for option in options):
        return "choice options are values, not tables"
    labels = [option_label(option) for option in options]
    unknown = [key for key in when or {} if key not in labels]
    if unknown:
        return f"when = {{ {unknown[0]} = ... }}: {unknown[0]!r} is not one of the choices {labels}"
    return None


DISTRIBUTION_KINDS = (
    "choice",
    "uniform",
    "quniform",
    "loguniform",
    "qloguniform",
    "randint",
    "normal",
    "each",
)


class SearchConfig(Section):
    """The hyperopt search over config keys."""

    algorithm: Literal["tpe", "random", "anneal"] = Field(
        "tpe", description="tpe | random | anneal"
    )
    max_evals: int = Field(
        30, ge=1, le=10_000, description="total trials, the base config included"
    )
    timeout: float | None = Field(
        None,
        gt=0,
        le=THIRTY_DAYS_SECONDS,
        description="stop starting trials after seconds (at most 30 days)",
    )
    no_progress_evals: int = Field(
        10,
        ge=0,
        le=10_000,
        description="stop after this many trials without improvement; 0 = never",
    )
    startup_evals: int = Field(
        10, ge=1, le=10_000, description="tpe: random trials before it models the results"
    )
    folds: int = Field(
        0,
        ge=0,
        le=10,
        description="inter split: score each trial on this many record-grouped folds of the "
        "train and validation records, not on the validation records alone (0), and keep the "
        "ensemble of its fold models; a trial trains (folds - 1) / (1 - data.valid_fraction) "
        "times as many beats",
    )

    @field_validator("folds")
    @classmethod
    def _not_one_fold(cls, value: int) -> int:
        if value == 1:
            raise _value_error("one fold validates on nothing: give 0 (no folds) or 2 to 10")
        return value

    pruning: Literal["none", "asha"] = Field(
        "none",
        description="none | asha: asynchronous successive halving ends a trial at a rung "
        "(grace_epochs x reduction_factor^k epochs) unless its validation objective there is "
        "in the top 1/reduction_factor of the trials that reached the rung",
    )
    grace_epochs: int = Field(
        2, ge=1, le=1000, description="asha: epochs every trial trains before it can be ended"
    )
    reduction_factor: int = Field(
        3, ge=2, le=100, description="asha: eta, the rungs' spacing and the share kept (1/eta)"
    )
    engine: Literal["local", "ray"] = Field(
        "local",
        description="local: hyperopt in this process, one trial at a time | ray: Ray Tune "
        "(pip install -e '.[ray]'), several trials at once, on this machine or a cluster",
    )
    max_concurrent: int = Field(1, ge=1, le=1000, description="ray: trials trained at once")
    cpus_per_trial: float = Field(
        1.0, gt=0, le=1024, description="ray: CPUs each trial holds (its torch threads)"
    )
    gpus_per_trial: float = Field(
        0.0, ge=0, le=64, description="ray: GPUs each trial holds; 0.25 packs four on one GPU"
    )
    ray_address: str = Field(
        "",
        description="ray: '' starts Ray on this machine; 'auto' or 'host:port' joins a running "
        "cluster (ray start --head)",
    )
    ray_storage: str = Field(
        "",
        description="ray: where Ray keeps trial checkpoints and its saved search; '' = under "
        "the run directory; on a cluster a path or URI every node can reach",
    )
    space: dict[str, Distribution] = Field(
        default_factory=dict, description="dotted config key -> hyperopt distribution"
    )


class InferenceConfig(Section):
    """How a trained model classifies beats of records it was not trained on: the test split,
    the out-of-fold predictions of ``search.folds``, ``evaluate`` and ``predict``."""

    adapt: Literal["none", "batch_norm"] = Field(
        "none",
        description="per-record adaptation without labels: none | batch_norm (AdaBN: the "
        "batch-norm statistics re-estimated on each record's own beats)",
    )
    adapt_min_beats: int = Field(
        100,
        ge=2,
        le=100_000,
        description="adapt = batch_norm: a record with fewer beats keeps the training statistics",
    )


class TrackingConfig(Section):
    """Where results, MLflow runs and TensorBoard curves go."""

    mlflow_uri: str = Field("sqlite:///mlflow.db", min_length=1, description="MLflow tracking URI")
    experiment: str = Field("ecg-arrhythmia", min_length=1, description="experiment name")
    tensorboard_dir: Path = Field(Path("logs"), description="TensorBoard run directories")
    output_dir: Path = Field(Path("runs"), description="results land in output_dir/experiment")
    verbose: bool = Field(
        False, description="print the model summary at each trial, and MLflow's own INFO lines"
    )
    register_model: str | None = Field(
        None,
        min_length=1,
        description="register the best model in MLflow's model registry under this name",
    )

    @field_validator("mlflow_uri")
    @classmethod
    def _mlflow_store(cls, value: str) -> str:
        scheme = uri_scheme(value)
        if scheme is None or (scheme and scheme not in MLFLOW_SCHEMES):
            raise _value_error(
                "MLflow has no tracking store for it: give a local path, a file:, sqlite:, "
                "postgresql:, mysql:, mssql:, http: or https: URI, or databricks"
            )
        return value

    @field_validator("experiment")
    @classmethod
    def _a_name_not_a_path(cls, value: str) -> str:
        problem = _name_problem(value)
        if problem:
            raise _value_error(
                f"{problem}: the experiment names a folder of tracking.output_dir and an MLflow "
                f"experiment, so it must be a plain name"
            )
        return value


def uri_scheme(uri: str) -> str | None:
    """The scheme as MLflow reads it (``postgresql+psycopg2`` -> ``postgresql``); "" for a
    local path (a one-letter scheme is a Windows drive); None when the URI does not parse."""
    try:
        scheme = urlsplit(uri).scheme.lower()
    except ValueError:
        return None
    database = scheme.split("+")[0]
    if database in MLFLOW_DATABASES:
        return database
    return "" if len(scheme) == 1 else scheme


def _name_problem(name: str) -> str | None:
    """Why ``name`` is not a plain folder name, or None."""
    if name in (".", ".."):
        return f"{name!r} is a path"
    if "/" in name or "\\" in name:
        return "it holds a path separator (/ or \\)"
    if name != name.strip():
        return "it starts or ends with whitespace"
    if any(not character.isprintable() for character in name):
        return "it holds a control character"
    return None


class Config(Section):
    """The whole experiment."""

    seed: int = Field(
        42, ge=0, le=MAX_SEED, description="seeds splits, resampling, weights and the search"
    )
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @property
    def has_s_and_v(self) -> bool:
        """Whether the classes hold the AAMI S and V (mitdb, or csv/parquet naming them)."""
        names = AAMI_CLASSES if self.data.source == "mitdb" else self.data.class_names or ()
        return {"S", "V"} <= set(names)

    @model_validator(mode="after")
    def _check_model_fits_beats(self) -> Self:
        check_model_fits(self.model, self.data.beat_length)
        if self.model.rr_features != "none" and self.data.source != "mitdb":
            raise _rule_error(
                f"model.rr_features = {self.model.rr_features!r} needs RR intervals, which "
                f"data.source = {self.data.source!r} does not have (only 'mitdb'); use 'none'"
            )
        if self.training.objective in ECTOPIC_OBJECTIVES and not self.has_s_and_v:
            raise _rule_error(
                f"training.objective = {self.training.objective!r} scores the S and V classes: "
                f"use data.source = 'mitdb' or data.class_names that hold 'S' and 'V'"
            )
        if self.inference.adapt == "batch_norm" and not self.model.has_batch_norm:
            raise _rule_error(
                "inference.adapt = 'batch_norm' re-estimates batch-norm statistics, and this "
                "network has none: set model.batch_norm = true (and, for an rnn, "
                "model.conv_frontend = true) or inference.adapt = 'none'"
            )
        if self.search.folds and self.data.split != "inter":
            raise _rule_error(
                f"search.folds = {self.search.folds} groups beats by record, which needs "
                f"data.split = 'inter' (the intra split has every record on both sides)"
            )
        if self.training.patient_adversary and self.data.split != "inter":
            raise _rule_error(
                f"training.patient_adversary = {self.training.patient_adversary:g} trains "
                f"against the training records' identity, which cannot help data.split = "
                f"{self.data.split!r} (its test beats come from those same records); use "
                f"data.split = 'inter' or set it to 0"
            )
        shift = self.training.augment.shift
        if shift >= self.data.beat_length:
            raise _rule_error(
                f"training.augment.shift = {shift}: must be below data.beat_length = "
                f"{self.data.beat_length}"
            )
        return self

    @property
    def run_dir(self) -> Path:
        """One output directory per experiment."""
        return self.tracking.output_dir / self.tracking.experiment


def check_model_fits(model: ModelConfig, input_length: int) -> None:
    """Catch architectures that cannot run on a beat before any training starts.

    The conv stages run for ``kind = "cnn"`` and for an RNN with ``conv_frontend``; only they
    pool the sequence, and the temporal attention works on their output.
    """
    if model.kind == "rnn" and not model.conv_frontend:
        if model.attention:
            raise _rule_error(
                "model.attention = true attends over conv features, but model.kind = 'rnn' "
                "with model.conv_frontend = false has none: set model.conv_frontend = true or "
                "model.attention = false"
            )
        return
    lengths = model.sequence_lengths(input_length)
    if lengths[-1] < 1:
        stage = next(i for i, n in enumerate(lengths) if n < 1)
        raise _rule_error(
            f"model.pooling = {model.pooling}: pooling by {model.pool_size} "
            f"(model.pool_size) shrinks a {input_length}-sample beat below one sample at "
            f"stage {stage + 1}"
        )
    if model.attention and model.channels[-1] % model.attention_heads:
        raise _rule_error(
            f"model.attention_heads = {model.attention_heads} does not divide the last stage's "
            f"channels (model.channels[{model.conv_layers - 1}] = {model.channels[-1]})"
        )


def config_toml(config: Config, header: Sequence[str] = (), drop: Sequence[str] = ()) -> str:
    """A config as TOML a person reads and ``load_config`` loads back: ``header`` lines as
    comments on top, lists on one line, each search distribution as one inline table, the
    sections in ``drop`` left out."""
    raw = config.model_dump(mode="json", exclude_none=True)
    document = tomlkit.document()
    for line in header:
        document.add(tomlkit.comment(line))
    for key, value in raw.items():
        if key in drop:
            continue
        if key == "search":
            space = tomlkit.table()
            for name, distribution in value.pop("space").items():
                inline = tomlkit.inline_table()
                inline.update(distribution)
                space.add(name, inline)
            value["space"] = space
        document.add(key, value)
    return tomlkit.dumps(document)


def load_config(path: Path, overrides: Sequence[str] = ()) -> Config:
    """Read and validate a TOML config, with ``--set KEY=VALUE`` overrides applied on top;
    every problem becomes one :class:`ConfigError`."""
    changes = parse_overrides(overrides)
    raw = read_config_file(path)
    for key, value in changes.items():
        set_dotted(raw, key, value)
    source = f"{path} with --set {', '.join(changes)}" if changes else str(path)
    return validate_config(raw, source=source)


def read_config_file(path: Path) -> dict[str, Any]:
    """The parsed TOML of a config file: UTF-8 (a byte-order mark is skipped), at most
    :data:`MAX_CONFIG_BYTES`, and not empty.

    An empty file is refused: every key would take its default, so a typo in the path to an
    empty file would start the full default experiment, downloads included.
    """
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES:,} bytes, not a config file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line {line}); "
            f"save it as UTF-8"
        ) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    if not raw:
        raise ConfigError(
            f"{path}: the config is empty (no keys), so every key would take its default; "
            f"start from config.toml, which lists every key with its default, or run with "
            f"--config config.toml --set KEY=VALUE"
        )
    return raw


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as ``{dotted key: value}``, in order (a repeated key: the
    last wins), for :func:`load_config` to apply and for a run to record.

    VALUE is TOML (``2``, ``1e-3``, ``true``, ``["100", "101"]``, ``"V1"``); a bare word that
    is not TOML is taken as a string (``data.split=inter``). Keys are checked against the schema
    here, so a typo gets the same did-you-mean as in the file.
    """
    overrides: dict[str, Any] = {}
    for item in items:
        key, separator, text = item.partition("=")
        key = key.strip()
        if not separator or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. training.epochs=2")
        try:
            schema_field(key)
        except ConfigError as exc:
            raise ConfigError(f"--set {item!r}: {exc}") from None
        overrides[key] = _override_value(item, text.strip())
    return overrides


def _override_value(item: str, text: str) -> Any:
    if not text:
        raise ConfigError(f"--set {item!r}: no value after '=' (an empty string is written \"\")")
    try:
        parsed = tomllib.loads(f"value = {text}")
    except tomllib.TOMLDecodeError as exc:
        if text[0] in "[{\"'":
            raise ConfigError(f"--set {item!r}: not a TOML value ({exc})") from None
        return text
    if list(parsed) != ["value"]:
        raise ConfigError(f"--set {item!r}: give one value after '=', not several lines")
    return parsed["value"]


def validate_config(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a parsed config mapping (from TOML, or a search trial)."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_error(exc)}") from None


def describe_error(exc: ValidationError) -> str:
    """The first validation error as 'key = value: what is allowed', plus a count of others."""
    errors = exc.errors()
    message = _describe_one(errors[0])
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return message


def _describe_one(error: ErrorDetails) -> str:
    location = [str(part) for part in error["loc"]]
    key = ".".join(location)
    if error["type"] == "extra_forbidden":
        return unknown_key_message(location)
    if error["type"] == "config_rule":
        return error["msg"] if key in error["msg"] else f"{key}: {error['msg']}"
    if error["type"] == "missing":
        return f"missing key {key!r}"
    value = error.get("input")
    return f"{key} = {value!r}: {error['msg']}"


def schema_field(key: str) -> Any:
    """The schema type of a dotted leaf key (``"training.lr"`` -> ``float``).

    An unknown key is a :class:`ConfigError` with the message the file would get (did you
    mean, allowed keys); so is a section (``"training"``), which holds keys but is none.
    """
    parts = key.split(".")
    section: type[BaseModel] = Config
    for depth in range(len(parts) - 1):
        section = _subsection(section, parts, depth)
    field = section.model_fields.get(parts[-1])
    if field is None:
        raise ConfigError(unknown_key_message(parts))
    inner = _section_class(field.annotation)
    if inner is not None:
        raise ConfigError(
            f"{key!r} is a section, not a key: name one of its keys "
            f"({', '.join(f'{key}.{name}' for name in inner.model_fields)})"
        )
    return field.annotation


def _subsection(section: type[BaseModel], parts: list[str], depth: int) -> type[BaseModel]:
    """The section ``parts[depth]`` of ``section``, on the way to the key ``parts``."""
    field = section.model_fields.get(parts[depth])
    if field is None:
        raise ConfigError(unknown_key_message(parts[: depth + 1], parts[depth + 1 :]))
    inner = _section_class(field.annotation)
    if inner is None:
        raise ConfigError(
            f"unknown key {'.'.join(parts)!r}: {'.'.join(parts[: depth + 1])!r} is a key, "
            f"not a section"
        )
    return inner


def unknown_key_message(location: Sequence[str], rest: Sequence[str] = ()) -> str:
    """'unknown key' for the last part of ``location`` (followed by ``rest``), with the closest
    key of its section and every key allowed there, when the section is part of the schema."""
    key = ".".join([*location, *rest])
    section = _section_at(location[:-1])
    if section is None:
        return f"unknown key {key!r}"
    allowed = list(section.model_fields)
    suggestion = _closest_key(section, location, rest)
    hint = f" (did you mean {suggestion!r}?)" if suggestion else ""
    return f"unknown key {key!r}{hint}; allowed keys here: {', '.join(allowed)}"


def _closest_key(
    section: type[BaseModel], location: Sequence[str], rest: Sequence[str]
) -> str | None:
    """The key of ``section`` closest in spelling to the last part of ``location``; else a key
    of that name in one of its sub-sections (``lr`` -> ``training.lr``)."""
    *parents, name = location
    close = difflib.get_close_matches(name, list(section.model_fields), n=1)
    if close:
        return ".".join([*parents, close[0], *rest])
    nested = [key for key in _leaf_keys(section, parents) if key.rsplit(".", 1)[-1] == name]
    return nested[0] if nested and not rest else None


def _leaf_keys(section: type[BaseModel], prefix: Sequence[str]) -> list[str]:
    """Every dotted leaf key below ``section`` (whose own key is ``prefix``)."""
    keys: list[str] = []
    for name, field in section.model_fields.items():
        inner = _section_class(field.annotation)
        keys += _leaf_keys(inner, [*prefix, name]) if inner else [".".join([*prefix, name])]
    return keys


def _section_at(location: Sequence[str]) -> type[BaseModel] | None:
    """The schema class that owns the keys at a location; None below a value (a key of the
    free-form ``search.space`` table, say)."""
    section: type[BaseModel] = Config
    for part in location:
        field = section.model_fields.get(part)
        inner = _section_class(field.annotation) if field else None
        if inner is None:
            return None
        section = inner
    return section


def _section_class(annotation: Any) -> type[BaseModel] | None:
    """The section class a field holds, or None for a value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None
