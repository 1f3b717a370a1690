"""Networks built from the ``[model]`` section: ``build_model(config, n_classes)``.

Every model maps ``signals (batch, channels, beat_length)`` (``channels`` from
``DataConfig.input_channels``) and, with ``model.rr_features``, the beats' RR features
``rr (batch, len(RR_COLUMNS))`` (it selects its columns) to logits ``(batch, n_classes)``.
"""

from __future__ import annotations

from ecgtune.config import Config
from ecgtune.models.blocks import BeatClassifier
from ecgtune.models.cnn import build_cnn
from ecgtune.models.rnn import build_rnn

__all__ = ["BeatClassifier", "build_model"]


def build_model(config: Config, n_classes: int) -> BeatClassifier:
    """The network ``config.model`` describes, with ``n_classes`` outputs (5 AAMI, 2 binary).

    The config was validated (``check_model_fits``), so every combination reaching here runs
    on a ``config.data.beat_length``-sample beat.
    """
    if n_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got n_classes = {n_classes}")
    builder = build_cnn if config.model.kind == "cnn" else build_rnn
    return builder(config.model, n_classes, config.data.input_channels)
