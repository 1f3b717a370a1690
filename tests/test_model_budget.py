"""The whole-model budget: parameters and one batch's activations, estimated on torch's meta
device before any work; too large a model is one ConfigError naming the keys to lower."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from ecgtune.config import Config, load_config, validate_config
from ecgtune.errors import ConfigError
from ecgtune.models import build_model
from ecgtune.models.budget import (
    MAX_ACTIVATION_BYTES,
    MAX_PARAMETERS,
    check_model_budget,
    model_budget,
)

from .conftest import REPO_ROOT

BIG = {
    "conv_layers": 8,
    "channels": [1024] * 8,
    "kernel_sizes": [3] * 8,
    "dilations": [1] * 8,
    "pooling": ["none"] * 8,
    "se_blocks": True,
    "residual": True,
    "fc_sizes": [8192, 8192],
}
"""Every per-key bound respected, 186 million parameters in all."""
DEEP_RNN = {"kind": "rnn", "conv_frontend": False, "rnn_layers": 6, "hidden_size": 1024}
"""Six recurrent layers over the raw 187 samples: seconds on the meta device without the
stand-in for recurrent layers."""


def real_parameter_count(config: Config) -> int:
    return sum(parameter.numel() for parameter in build_model(config, 5).parameters())


@pytest.mark.parametrize("path", ["config.toml", "configs/reference.toml"])
def test_shipped_configs_are_within_budget(path: str) -> None:
    config = load_config(REPO_ROOT / path)
    budget = check_model_budget(config, n_classes=5)
    assert budget.parameters == real_parameter_count(config)
    assert budget.parameters == sum(budget.parameters_by_part.values())
    assert 0 < budget.activation_bytes < MAX_ACTIVATION_BYTES


def test_reference_network_has_its_documented_size() -> None:
    budget = check_model_budget(load_config(REPO_ROOT / "configs/reference.toml"), 5)
    assert budget.parameters == 841_773  # as config.toml says
    assert set(budget.parameters_by_part) == {"conv stages", "head"}


def test_a_model_too_large_names_the_keys_that_size_it() -> None:
    config = validate_config({"model": BIG})
    with pytest.raises(ConfigError) as caught:
        check_model_budget(config, 5)
    message = str(caught.value)
    assert message.startswith("the model has 185,704,453 parameters, above the limit of ")
    assert f"{MAX_PARAMETERS:,}" in message
    head, conv = message.index("model.fc_sizes"), message.index("model.channels")
    assert head < conv, "the larger part (the head) comes first"
    assert re.search(r"\(head: [\d,]+\)", message) and "(conv stages: " in message


def test_a_huge_batch_fails_on_activations() -> None:
    config = validate_config({"training": {"batch_size": 65536}})
    with pytest.raises(ConfigError) as caught:
        check_model_budget(config, 5)
    message = str(caught.value)
    assert message.startswith("one training batch of 65,536 beats needs about ")
    assert "GiB of activations, above the limit of 4 GiB: lower training.batch_size" in message
    assert "model.channels" in message


def test_activations_grow_linearly_with_the_batch() -> None:
    """Every beat adds the same bytes; what does not grow is only batch norm's per-channel
    statistics (6 KB): the linear layers' transposed weights are views, not new memory."""
    sizes = {
        batch: model_budget(validate_config({"training": {"batch_size": batch}}), 5)
        for batch in (64, 128, 256)
    }
    per_64_beats = sizes[128].activation_bytes - sizes[64].activation_bytes
    assert sizes[256].activation_bytes - sizes[128].activation_bytes == 2 * per_64_beats
    assert 0 <= sizes[64].activation_bytes - per_64_beats < 10_000
    assert sizes[256].parameters == sizes[64].parameters


def test_attention_matrices_are_counted() -> None:
    """Temporal attention over the 94 steps left after one pooling: each of 4 heads holds a
    94 x 94 matrix per beat, created inside ``F.multi_head_attention_forward``."""
    batch, heads, steps = 64, 4, 187 // 2
    plain = model_budget(validate_config({"training": {"batch_size": batch}}), 5)
    with_attention = model_budget(
        validate_config({"training": {"batch_size": batch}, "model": {"attention": True}}), 5
    )
    scores_bytes = batch * heads * steps * steps * 4
    assert with_attention.activation_bytes - plain.activation_bytes > scores_bytes


@pytest.mark.parametrize(
    "model",
    [
        {"kind": "rnn"},
        {"kind": "rnn", "rnn_cell": "lstm", "attention": True},
        {"kind": "rnn", "conv_frontend": False, "bidirectional": False},
    ],
)
def test_recurrent_models_are_counted_in_full(model: dict[str, Any]) -> None:
    config = validate_config({"model": model})
    budget = check_model_budget(config, 5)
    assert budget.parameters == real_parameter_count(config)
    assert budget.parameters_by_part["recurrent layers"] > 0
    wider = model_budget(validate_config({"model": {**model, "hidden_size": 128}}), 5)
    assert wider.activation_bytes > budget.activation_bytes


def test_the_check_is_fast() -> None:
    """On the meta device even BIG (743 MB of float32 weights) takes milliseconds. Timed after
    one warm-up call: the first meta operation of a process imports torch's
    compiler stack (about a second)."""
    model_budget(validate_config({}), 5)
    configs = [
        load_config(REPO_ROOT / "config.toml"),
        load_config(REPO_ROOT / "configs/reference.toml"),
        validate_config({"model": BIG}),
        validate_config({"model": DEEP_RNN}),
        validate_config({"training": {"batch_size": 65536}}),
    ]
    for config in configs:
        start = time.perf_counter()
        budget = model_budget(config, 5)
        assert time.perf_counter() - start < 1.0, config.model
        assert budget.parameters > 0
