"""Training against patient identity (issue 19): ``training.patient_adversary`` adds a head
that names each training beat's record from the encoder's features, behind a gradient-reversal
layer, so the encoder learns features the records share. Trained on real records."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import torch
import torch.nn.functional as F

from ecgtune.config import Config, validate_config
from ecgtune.data import load_dataset
from ecgtune.errors import ConfigError
from ecgtune.models.adversary import PatientAdversary, reverse_gradient
from ecgtune.search.space import build_search_space
from ecgtune.training import prepare_run, train_model

from .conftest import TINY_CNN, find_mitdb_dir, run_hypertune


def run_train(
    folder: Path, data: dict[str, Any], training: dict[str, Any]
) -> tuple[list[str], list[str]]:
    """``hypertune.py train`` in a fresh interpreter in ``folder`` (the config's relative
    output paths land there) on the real records: its stderr lines (exit 2 checked) and what
    it left in the folder besides its config and the data cache."""
    config = folder / "config.toml"
    raw = {
        "data": {"raw_dir": str(find_mitdb_dir()), "cache_dir": str(folder / "cache"), **data},
        "model": TINY_CNN,
        "training": {"num_threads": 1, "device": "cpu", **training},
    }
    config.write_text(tomli_w.dumps(raw), encoding="utf-8")
    done = run_hypertune("train", "--config", str(config), cwd=folder)
    assert done.returncode == 2, done.stderr
    created = sorted(set(os.listdir(folder)) - {"config.toml", "cache"})
    return done.stderr.splitlines(), created


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
    inter = {"split": "inter"}  # the quick records: DS1 106, 119, 208, 209; DS2 100, 232
    plain = small_config(data=inter, training={"epochs": 2})
    adversarial = small_config(data=inter, training={"epochs": 2, "patient_adversary": 1.0})
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
    config = validate_config({"data": {"split": "inter"}, "search": {"space": space}})
    assert build_search_space(config).candidate_values("training.patient_adversary") == [
        0.0,
        0.3,
        1.0,
    ]


def test_the_train_loss_is_the_classification_loss_and_the_adversary_s_is_apart(
    small_config: Callable[..., Config],
) -> None:
    """With an lr too small to move a weight, an epoch's classification loss is the same with
    and without the adversary (the same weights, batches and, without dropout, forward pass):
    the train loss reported with it holds none of the adversary's record cross-entropy, which
    is reported apart (about ln 3 for three training records at the start)."""
    inter, model = {"split": "inter"}, {"dropout": 0.0}
    training = {"epochs": 1, "lr": 1e-12}
    plain_config = small_config(data=inter, model=model, training=training)
    plain = train_model(plain_config, load_dataset(plain_config)).history[0]
    adversarial = small_config(
        data=inter, model=model, training={**training, "patient_adversary": 1.0}
    )
    dataset = load_dataset(adversarial)
    with_adversary = train_model(adversarial, dataset).history[0]
    assert plain.adversary_loss is None and with_adversary.adversary_loss is not None
    assert with_adversary.train_loss == pytest.approx(plain.train_loss, abs=1e-5)
    n_records = len(set(dataset.train.records))
    assert with_adversary.adversary_loss == pytest.approx(math.log(n_records), rel=0.2)


@pytest.mark.parametrize("split", ["intra", "inter"])
def test_the_adversary_is_refused_where_it_cannot_help(split: str, tmp_path: Path) -> None:
    """``hypertune.py train``: on the intra split (its test beats come from the training
    records) at validation, before anything is written; on an inter split whose train records
    are one (DS1 106 and 119: one of them validates), when the split is known. One line, exit
    2."""
    data = {"split": split, "records": ["106", "119", "100"], "max_beats_per_record": 200}
    expected = {
        "intra": "training.patient_adversary = 0.3 trains against the training records' "
        "identity, which cannot help data.split = 'intra'",
        "inter": "training.patient_adversary = 0.3 trains against telling the training "
        "records apart, and the train split holds 1 record",
    }[split]
    lines, created = run_train(tmp_path, data, {"epochs": 1, "patient_adversary": 0.3})
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    if split == "intra":
        assert created == []
