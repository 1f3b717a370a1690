"""``[training]`` and ``[training.augment]``: how one model is trained, and the random
transforms of its train batches."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ecgtune.config.base import CPU_CORES, Section, _value_error

Metric = Literal["macro_f1", "balanced_accuracy", "accuracy", "jkappa", "sv_f1", "loss"]
ECTOPIC_OBJECTIVES = ("jkappa", "sv_f1")
"""Objectives read off the S and V classes (:mod:`ecgtune.metrics`)."""


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
    class_weight_cap: float = Field(
        0.0,
        ge=0,
        le=1e6,
        description="weighted_ce/focal: no class weighs more than this many times the lightest "
        "(the most frequent class), so a class of a few beats cannot steer the loss (inverse "
        "weights give MIT-BIH DS1's 8 Q beats 5,700 times an N beat's weight); 0 = no cap",
    )
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

    @field_validator("class_weight_cap")
    @classmethod
    def _cap_of_at_least_one(cls, value: float) -> float:
        if 0 < value < 1:
            raise _value_error("a cap below 1 would weigh a class below the lightest; 0 = no cap")
        return value
