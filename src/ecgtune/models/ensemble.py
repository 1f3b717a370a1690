"""Several classifiers of one architecture heard as one: the mean of their class probabilities.

Why: on patients the models have never seen, one training run is a noisy draw (the same config
moved DS2 S sensitivity from 0.59 to 0.19 with the seed); the mean of models trained on
different records averages that noise out. ``search.folds`` keeps its fold models as one
:class:`Ensemble` (:mod:`ecgtune.search.folds`), saved and loaded like any checkpoint
(``"members"`` in it), evaluated, exported to ONNX and served like a single model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ecgtune.models.blocks import BeatClassifier

MAX_MEMBERS = 10
"""The most models one ensemble holds (``search.folds`` is at most 10)."""
PROBABILITY_FLOOR = 1e-12
"""Keeps the log of a probability every member rounds to zero finite."""


class Ensemble(nn.Module):
    """``forward(signals, rr)`` -> the log of the members' mean class probabilities, so that
    argmax and softmax of the output are the ensemble's class and probabilities, as they are
    of one classifier's logits. Takes the same inputs as its members (``in_channels``,
    ``rr_index``: the RR columns, the same for every member)."""

    rr_index: Tensor

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not 2 <= len(members) <= MAX_MEMBERS:
            raise ValueError(f"an ensemble holds 2 to {MAX_MEMBERS} models, got {len(members)}")
        if not all(isinstance(member, BeatClassifier) for member in members):
            raise TypeError("an ensemble holds ecgtune BeatClassifiers only")
        first = members[0]
        assert isinstance(first, BeatClassifier)
        self.members = nn.ModuleList(members)
        self.in_channels = first.in_channels
        self.rr_features = first.rr_features
        self.register_buffer("rr_index", first.rr_index.clone(), persistent=False)

    def forward(self, signals: Tensor, rr: Tensor | None = None) -> Tensor:
        probabilities = torch.stack(
            [member(signals, rr).float().softmax(dim=1) for member in self.members]
        ).mean(dim=0)
        return probabilities.clamp_min(PROBABILITY_FLOOR).log()


Classifier = BeatClassifier | Ensemble
"""What a checkpoint holds: one classifier or an ensemble of them."""


def member_count(model: nn.Module) -> int:
    """How many models ``model`` holds (1 for a single classifier)."""
    return len(model.members) if isinstance(model, Ensemble) else 1
