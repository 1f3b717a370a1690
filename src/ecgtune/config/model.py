"""``[model]``: the network, its per-stage lists and which keys shape which kind of network,
and :func:`check_model_fits`, the check that an architecture runs on a beat."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from ecgtune.config.base import Section, _rule_error, _value_error

Activation = Literal["relu", "gelu", "leaky_relu", "silu"]
Pooling = Literal["max", "avg", "none"]
RRFeatures = Literal["none", "raw", "normalised", "all", "rhythm", "rhythm_record"]
RRReference = Literal["beats", "seconds", "robust"]
RHYTHM_SELECTIONS: tuple[RRFeatures, ...] = ("rhythm", "rhythm_record")
"""The ``rr_features`` options that read the rhythm columns, and so ``rr_reference`` and
``rr_irregularity``."""
RRHead = Literal["concat", "mlp"]


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
    rr_irregularity: bool = Field(
        False,
        description="rr_features = rhythm | rhythm_record: add the three irregularity columns "
        "over the data.rr_local_seconds window (the spread and the successive differences of "
        "its intervals by the robust reference, the fraction of them premature), which tell "
        "atrial fibrillation from premature beats",
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

    @model_validator(mode="after")
    def _check_irregularity_has_rhythm(self) -> Self:
        if self.rr_irregularity and self.rr_features not in RHYTHM_SELECTIONS:
            raise _rule_error(
                f"model.rr_irregularity = true adds columns to the rhythm selections, and "
                f"model.rr_features = {self.rr_features!r} is none of them: use 'rhythm' or "
                f"'rhythm_record', or model.rr_irregularity = false"
            )
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
        if name in ("rr_reference", "rr_irregularity"):
            return self.rr_features in RHYTHM_SELECTIONS
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
