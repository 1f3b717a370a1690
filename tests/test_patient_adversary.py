"""Training against patient identity (issue 19): ``training.patient_adversary`` adds a head
that names each training beat's record from the encoder's features, behind a gradient-reversal
layer, so the encoder learns features the records share. Trained on real records."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from ecgtune.config import Config, validate_config
from ecgtune.data import load_dataset
from ecgtune.errors import ConfigError
from ecgtune.models.adversary import PatientAdversary, reverse_gradient
from ecgtune.search.space import build_search_space
from ecgtune.training import prepare_run, train_model


def test_reverse_gradient_is_the_identity_forward_and_negates_the_gradient() -> None:
    features = torch.randn(4, 6, requires_grad=True)
    weights = torch.randn(4, 6)
    reversed_features = reverse_gradient(features, 0.5)
    torch.testing.assert_close(reversed_features, features)
    torch.autograd.backward((reversed_features * weights).sum())
    assert features.grad is not None
    torch.testing.assert_close(features.grad, -0.5 * weights)


def test_the_adversary_learns_records_while_the_encoder_gets_the_opposite_gradient() -> None:
    torch.manual_seed(0)
    adversary = PatientAdversary(8, 3, 16, "relu", strength=2.0)
    features = torch.randn(10, 8, requires_grad=True)
    records = torch.arange(10) % 3
    torch.autograd.backward(F.cross_entropy(adversary(features), records))
    through_reversal = features.grad.clone() if features.grad is not None else None
    head_grads = [p.grad.clone() for p in adversary.parameters() if p.grad is not None]
    features.grad, plain = None, features.detach().clone().requires_grad_(True)
    adversary.zero_grad()
    torch.autograd.backward(F.cross_entropy(adversary.classify(plain), records))
    assert through_reversal is not None and plain.grad is not None
    torch.testing.assert_close(through_reversal, -2.0 * plain.grad)
    for reversed_grad, parameter in zip(head_grads, adversary.parameters(), strict=True):
        torch.testing.assert_close(reversed_grad, parameter.grad)  # the head itself: unchanged


def test_training_with_the_adversary_changes_the_encoder_but_not_the_saved_model(
    small_config: Callable[..., Config],
) -> None:
    plain = small_config(training={"epochs": 2})
    adversarial = small_config(training={"epochs": 2, "patient_adversary": 1.0})
    dataset = load_dataset(plain)
    run = prepare_run(adversarial, dataset)
    assert run.adversary is not None
    assert run.adversary.classify[-1].out_features == len(set(dataset.train.records))
    assert prepare_run(plain, dataset).adversary is None
    first = train_model(plain, dataset).model.state_dict()
    second = train_model(adversarial, dataset).model.state_dict()
    assert first.keys() == second.keys()  # the adversary is not part of the model
    encoder = [key for key in first if key.startswith("encoder.")]
    assert any(not torch.equal(first[key], second[key]) for key in encoder)


def test_the_adversary_keys_are_validated_and_searchable() -> None:
    with pytest.raises(ConfigError, match=r"training\.patient_adversary = -1") as caught:
        validate_config({"training": {"patient_adversary": -1}})
    assert "\n" not in str(caught.value)
    space = {"training.patient_adversary": {"choice": [0.0, 0.3, 1.0]}}
    config = validate_config({"search": {"space": space}})
    assert build_search_space(config).candidate_values("training.patient_adversary") == [
        0.0,
        0.3,
        1.0,
    ]
