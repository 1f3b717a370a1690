"""``[inference]``: how a trained model classifies beats of records it was not trained on."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ecgtune.config.base import Section


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
