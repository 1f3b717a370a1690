"""Training against patient identity: a head that tells the training records apart from the
encoder's features, through a gradient-reversal layer (Ganin and Lempitsky 2015; Ganin et al.
2016, domain-adversarial training).

The head learns to name a beat's record; the layer hands the encoder the head's gradient times
``-strength``, so the encoder learns to make the records *harder* to tell apart: it keeps what
the training patients share and drops what identifies one of them, which is what a new
patient's beats lack. The head exists only while training (``training.patient_adversary``): the
saved model, its exports and its predictions never hold it.
"""

from __future__ import annotations

from torch import Tensor, nn

from ecgtune.config import Activation
from ecgtune.models.blocks import LinearAct


def reverse_gradient(features: Tensor, strength: float) -> Tensor:
    """``features`` going forward; ``-strength`` x the gradient going back: the part that
    carries the gradient is negated, and a detached copy makes up the value."""
    return (1.0 + strength) * features.detach() - strength * features


class PatientAdversary(nn.Module):
    """Gradient reversal, then a small MLP from the encoder's features to record logits."""

    def __init__(
        self, in_features: int, n_records: int, hidden: int, activation: Activation, strength: float
    ) -> None:
        super().__init__()
        self.strength = strength
        self.classify = nn.Sequential(
            LinearAct(in_features, hidden, activation, 0.0), nn.Linear(hidden, n_records)
        )

    def forward(self, features: Tensor) -> Tensor:
        logits: Tensor = self.classify(reverse_gradient(features, self.strength))
        return logits
