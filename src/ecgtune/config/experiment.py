"""The root :class:`Config`: the seed, one field per section, and the rules across sections."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, model_validator

from ecgtune.config.base import AAMI_CLASSES, Section, _rule_error
from ecgtune.config.data import DataConfig
from ecgtune.config.inference import InferenceConfig
from ecgtune.config.model import ModelConfig, check_model_fits
from ecgtune.config.search import SearchConfig
from ecgtune.config.tracking import TrackingConfig
from ecgtune.config.training import ECTOPIC_OBJECTIVES, TrainingConfig

MAX_SEED = 2**32 - 1
"""numpy's and torch's seeds are unsigned 32-bit."""


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
