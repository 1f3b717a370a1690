"""The experiment's typed schema: defaults, validation and documentation in one place.

Every section of ``config.toml`` is a pydantic model that forbids unknown keys, so a typo is
caught before any work starts. :func:`load_config` turns every problem (missing file, TOML
syntax, unknown key, wrong type, value out of range) into one :class:`ConfigError` whose
message names the key path, the bad value and what is allowed; the command line prints it on
one line and exits with status 2.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from ecgtune.errors import ConfigError

AAMI_CLASSES = ("N", "S", "V", "F", "Q")
Activation = Literal["relu", "gelu", "leaky_relu", "silu"]
Pooling = Literal["max", "avg", "none"]
Metric = Literal["macro_f1", "balanced_accuracy", "accuracy", "loss"]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors and assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _rule_error(message: str) -> PydanticCustomError:
    """An error raised by a cross-field rule; its message already names the keys involved."""
    return PydanticCustomError("config_rule", message)


class ResampleConfig(Section):
    """Resampling of the train split with imbalanced-learn (validation and test never)."""

    method: Literal["none", "random_under", "random_over", "smote", "under_over"] = Field(
        "none", description="none | random_under | random_over | smote | under_over"
    )
    target_per_class: int = Field(
        15000, ge=1, description="under_over: classes above are under-sampled, below over-sampled"
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
    lead: str = Field("MLII", description="lead selected by its name in the header")
    missing_lead: Literal["first_channel", "skip"] = Field(
        "first_channel",
        description="records without the lead (102, 104): use their first channel, or skip them",
    )
    window_seconds: float = Field(10.0, gt=0, description="normalisation and median-RR window")
    target_hz: int = Field(125, ge=50, le=360, description="beats are resampled to this rate")
    beat_length: int = Field(187, ge=16, le=2048, description="samples per beat after padding")
    beat_span: float = Field(1.2, gt=0, le=3, description="beat length in median RR intervals")
    max_beats_per_record: int | None = Field(
        None, ge=1, description="keep at most this many beats per record (quick experiments)"
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
        None, description="csv/parquet: names of labels 0..K-1 (default N,S,V,F,Q or 0..K-1)"
    )
    cache_dir: Path = Field(Path("data/cache"), description="built datasets are cached here")
    resample: ResampleConfig = Field(default_factory=ResampleConfig)

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


PER_LAYER_KEYS = ("channels", "kernel_sizes", "dilations", "pooling")


def _reference_pooling() -> list[Pooling]:
    return ["none", "max", "none", "none", "none"]


class ModelConfig(Section):
    """The network. Per-layer lists give one entry per conv stage; entries past ``conv_layers``
    are cut away, so the resolved config (and ``best_config.toml``) lists exactly the stages
    that run; shorter lists are errors. A search over the depth draws its per-stage lists with
    ``each`` (see ``search_space``)."""

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
        default_factory=lambda: [384, 256, 96], description="fully connected layers of the head"
    )
    dropout: float = Field(
        0.3, ge=0, lt=1, description="dropout in the head (and between rnn layers)"
    )
    rr_features: bool = Field(
        False, description="feed each beat's RR intervals (previous, next) into the head"
    )
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
        for key in ("channels", "kernel_sizes", "dilations", "fc_sizes"):
            bad = [v for v in getattr(self, key) if v < 1]
            if bad:
                raise _rule_error(f"model.{key} = {getattr(self, key)}: entries must be >= 1")
        return self

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
        2, ge=0, description="plateau: epochs without improvement before the lr drops"
    )
    grad_clip: float = Field(0.0, ge=0, description="max gradient norm; 0 = off")
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
        "macro_f1", description="validation metric for early stopping and the best epoch"
    )
    early_stopping_patience: int = Field(10, ge=1, description="epochs without improvement")
    min_delta: float = Field(1e-4, ge=0, description="smallest change that counts")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="auto: cuda, then mps, then cpu"
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="autocast precision")
    num_threads: int = Field(0, ge=0, description="torch CPU threads; 0 = all cores")


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
    max_evals: int = Field(30, ge=1, description="total trials, the base config included")
    timeout: float | None = Field(None, gt=0, description="stop starting trials after seconds")
    no_progress_evals: int = Field(
        10, ge=0, description="stop after this many trials without improvement; 0 = never"
    )
    startup_evals: int = Field(
        10, ge=1, description="tpe: random trials before it models the results"
    )
    objective: Metric = Field("macro_f1", description="validation metric the search maximises")
    space: dict[str, Distribution] = Field(
        default_factory=dict, description="dotted config key -> hyperopt distribution"
    )


class TrackingConfig(Section):
    """Where results, MLflow runs and TensorBoard curves go."""

    mlflow_uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI")
    experiment: str = Field("ecg-arrhythmia", min_length=1, description="experiment name")
    tensorboard_dir: Path = Field(Path("logs"), description="TensorBoard run directories")
    output_dir: Path = Field(Path("runs"), description="results land in output_dir/experiment")
    verbose: bool = Field(False, description="print the model summary at each trial")


class Config(Section):
    """The whole experiment."""

    seed: int = Field(42, ge=0, description="seeds splits, resampling, weights and the search")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _check_model_fits_beats(self) -> Self:
        check_model_fits(self.model, self.data.beat_length)
        if self.model.rr_features and self.data.source != "mitdb":
            raise _rule_error(
                f"model.rr_features = true needs RR intervals, which data.source = "
                f"{self.data.source!r} does not have (only 'mitdb')"
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


def load_config(path: Path) -> Config:
    """Read and validate a TOML config; every problem becomes one :class:`ConfigError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    return validate_config(raw, source=str(path))


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
        return f"unknown key {key!r}{_did_you_mean(location)}"
    if error["type"] == "config_rule":
        return error["msg"] if key in error["msg"] else f"{key}: {error['msg']}"
    if error["type"] == "missing":
        return f"missing key {key!r}"
    value = error.get("input")
    return f"{key} = {value!r}: {error['msg']}"


def _did_you_mean(location: list[str]) -> str:
    section = _section_at(location[:-1])
    if section is None:
        return ""
    allowed = list(section.model_fields)
    close = difflib.get_close_matches(location[-1], allowed, n=1)
    hint = f" (did you mean {'.'.join([*location[:-1], close[0]])!r}?)" if close else ""
    return f"{hint}; allowed keys here: {', '.join(allowed)}"


def _section_at(location: list[str]) -> type[BaseModel] | None:
    """The schema class that owns the keys at a location, for did-you-mean hints."""
    section: type[BaseModel] = Config
    for part in location:
        field = section.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        section = annotation
    return section
