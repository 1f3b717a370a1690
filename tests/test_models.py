"""The networks: every option builds, runs forward and backward, and keeps its promises.

No data and no training: random beats of the real length (187 samples), batches of 4, one
CPU thread. The search-space test reads the repo's config.toml, so a search space the models
cannot build fails here before any search starts.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from rich.console import Console
from torch import Tensor, nn

from ecgtune.config import Config, ModelConfig, load_config, validate_config
from ecgtune.errors import ConfigError
from ecgtune.models import BeatClassifier, build_model
from ecgtune.models.blocks import (
    AttentionPool1d,
    ConvNormAct,
    GlobalPool1d,
    Residual,
    same_padding,
)
from ecgtune.models.summary import model_summary, summary_blocks
from ecgtune.search_space import build_search_space

from .conftest import REPO_ROOT

BATCH = 4
REFERENCE_PARAMETERS = 841_773
"""The seeds' best model (the ModelConfig defaults), 5 classes, no RR features."""

SMALL_CNN: dict[str, Any] = {
    "conv_layers": 3,
    "channels": [8, 16, 16],
    "kernel_sizes": [7, 5, 3],
    "dilations": [1, 1, 1],
    "pooling": ["max", "none", "avg"],
    "se_blocks": [False, True, True],
    "residual": [False, True, True],
    "attention_heads": 2,
    "fc_sizes": [16],
}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Other helpers' tests share the machine's two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def model_config(raw_model: dict[str, Any], base: dict[str, Any] | None = None) -> Config:
    """A validated config whose [model] section is ``base`` (default: the schema's) updated."""
    return validate_config({"model": {**(base or {}), **raw_model}}, source="test")


def forward_backward(model: nn.Module, config: Config, n_classes: int) -> Tensor:
    """One training step's forward and backward pass on random beats; returns the logits."""
    torch.manual_seed(0)
    signals = torch.rand(BATCH, 1, config.data.beat_length)
    rr = 0.5 + torch.rand(BATCH, 2)
    labels = torch.arange(BATCH) % n_classes
    model.train()
    logits: Tensor = model(signals, rr)
    torch.autograd.backward(nn.functional.cross_entropy(logits, labels))
    return logits


def assert_builds_and_trains(config: Config, n_classes: int = 5) -> BeatClassifier:
    """Logits of the right shape, and gradients reaching every parameter and the first layer."""
    model = build_model(config, n_classes)
    logits = forward_backward(model, config, n_classes)
    assert logits.shape == (BATCH, n_classes)
    assert torch.isfinite(logits).all()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reached {missing}"
    first_layer = next(model.encoder.parameters())
    assert first_layer.grad is not None
    assert torch.isfinite(first_layer.grad).all()
    assert first_layer.grad.abs().sum() > 0, "the gradient vanished before the first layer"
    return model


def eval_logits(model: nn.Module, signals: Tensor, rr: Tensor | None = None) -> Tensor:
    model.eval()
    with torch.no_grad():
        result: Tensor = model(signals, rr)
    return result


def summary_text(model: nn.Module, config: Config) -> str:
    console = Console(record=True, width=200)
    console.print(model_summary(model, config))
    return console.export_text()


# --- the reference architecture -------------------------------------------------------------


def test_default_config_is_the_reference_architecture_with_its_parameter_count() -> None:
    config = validate_config({})
    model = build_model(config, 5)
    assert sum(p.numel() for p in model.parameters()) == REFERENCE_PARAMETERS
    stages = [model.get_submodule(f"encoder.stage{i}") for i in range(1, 6)]
    assert [hasattr(stage, "residual") for stage in stages] == [False, False, True, True, False]
    assert [hasattr(stage, "se") for stage in stages] == [False, True, True, True, True]
    assert [hasattr(stage, "pool") for stage in stages] == [False, True, False, False, False]
    assert isinstance(model.get_submodule("encoder.stage2.pool"), nn.MaxPool1d)
    text = summary_text(model, config)
    for name, shape in [
        ("stage1", "32 x 187"),
        ("stage2", "64 x 93"),
        ("stage3", "64 x 93"),
        ("stage4", "128 x 93"),
        ("stage5", "160 x 93"),
        ("pool", "1280"),
        ("fc1", "384"),
        ("fc2", "256"),
        ("fc3", "96"),
        ("classes", "5"),
    ]:
        assert any(name in line and f" {shape} " in line for line in text.splitlines()), name


def test_reference_architecture_trains_with_two_and_five_classes() -> None:
    for n_classes in (2, 5):
        assert_builds_and_trains(validate_config({}), n_classes)


# --- blocks -------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 4, 6, 11])
@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_same_padding_keeps_the_length_for_odd_and_even_kernels(
    kernel_size: int, dilation: int
) -> None:
    conv = ConvNormAct(1, 3, kernel_size, dilation)
    for length in (187, 16):
        assert conv(torch.rand(2, 1, length)).shape == (2, 3, length)
    left, right = same_padding(kernel_size, dilation)
    assert left + right == dilation * (kernel_size - 1)
    assert right - left in (0, 1)


def test_even_kernels_keep_the_length_through_a_whole_model() -> None:
    config = model_config(
        {"pooling": ["none", "none", "none"], "kernel_sizes": [4, 6, 2]}, base=SMALL_CNN
    )
    text = summary_text(assert_builds_and_trains(config), config)
    assert text.count(" x 187 ") == 4  # the input and three stages


def test_residual_stages_project_only_where_the_channels_change() -> None:
    config = model_config({"residual": True, "channels": [8, 8, 16]}, base=SMALL_CNN)
    model = assert_builds_and_trains(config)
    shortcuts = [model.get_submodule(f"encoder.stage{i}.residual.shortcut") for i in (1, 2, 3)]
    assert isinstance(shortcuts[0], ConvNormAct)  # 1 -> 8 channels
    assert isinstance(shortcuts[1], nn.Identity)  # 8 -> 8
    assert isinstance(shortcuts[2], ConvNormAct)  # 8 -> 16
    assert all(isinstance(shortcut.get_submodule("0"), nn.Conv1d) for shortcut in shortcuts[::2])
    assert shortcuts[0].get_submodule("0").kernel_size == (1,)


def test_residual_and_se_flags_are_per_stage_or_for_all() -> None:
    model = build_model(model_config({"se_blocks": True, "residual": False}, SMALL_CNN), 5)
    stages = [model.get_submodule(f"encoder.stage{i}") for i in (1, 2, 3)]
    assert all(hasattr(stage, "se") and not hasattr(stage, "residual") for stage in stages)
    model = build_model(model_config({"se_blocks": [True, False, True]}, SMALL_CNN), 5)
    stages = [model.get_submodule(f"encoder.stage{i}") for i in (1, 2, 3)]
    assert [hasattr(stage, "se") for stage in stages] == [True, False, True]
    assert all(isinstance(stage.get_submodule("residual"), Residual) for stage in stages[1:])


def test_attention_output_changes_the_logits() -> None:
    config = model_config({"attention": True}, base=SMALL_CNN)
    model = assert_builds_and_trains(config)
    signals = torch.rand(BATCH, 1, 187)
    before = eval_logits(model, signals)
    for name in ("in_proj_weight", "out_proj.weight"):
        weight = model.get_parameter(f"encoder.attention.attention.{name}")
        original = weight.detach().clone()
        with torch.no_grad():
            weight.add_(torch.randn_like(weight))
        assert not torch.allclose(before, eval_logits(model, signals)), name
        with torch.no_grad():
            weight.copy_(original)
        assert torch.allclose(before, eval_logits(model, signals))


@pytest.mark.parametrize("pool", [AttentionPool1d(6), GlobalPool1d("avg")])
def test_rnn_readouts_pool_every_time_step_not_the_last(pool: nn.Module) -> None:
    sequence = torch.rand(2, 6, 10)
    changed_early = sequence.clone()
    changed_early[:, :, 1] += 1.0
    assert pool(sequence).shape == (2, 6)
    assert not torch.allclose(pool(sequence), pool(changed_early))


def test_rr_features_change_the_output_and_are_required() -> None:
    config = model_config({"rr_features": True}, base=SMALL_CNN)
    model = assert_builds_and_trains(config)
    signals = torch.rand(BATCH, 1, 187)
    normal_rr = torch.full((BATCH, 2), 0.8)
    premature_rr = torch.tensor([[0.4, 1.2]] * BATCH)
    assert not torch.allclose(
        eval_logits(model, signals, normal_rr), eval_logits(model, signals, premature_rr)
    )
    with pytest.raises(ValueError, match="rr_features"):
        model(signals)
    with pytest.raises(ValueError, match=r"rr must be \(batch, 2\)"):
        model(signals, torch.zeros(BATCH, 3))


def test_without_rr_features_rr_is_ignored() -> None:
    model = build_model(model_config({}, base=SMALL_CNN), 5)
    signals = torch.rand(BATCH, 1, 187)
    assert torch.equal(
        eval_logits(model, signals, torch.zeros(BATCH, 2)),
        eval_logits(model, signals, torch.ones(BATCH, 2)),
    )


def test_bad_inputs_get_clear_errors() -> None:
    model = build_model(model_config({}, base=SMALL_CNN), 5)
    with pytest.raises(ValueError, match=r"signals must be \(batch, 1, length\)"):
        model(torch.rand(BATCH, 187))
    with pytest.raises(ValueError, match="n_classes = 1"):
        build_model(model_config({}, base=SMALL_CNN), 1)


# --- every CNN option ---------------------------------------------------------------------

CNN_OPTIONS: list[dict[str, Any]] = [
    *({"activation": name} for name in ("relu", "gelu", "leaky_relu", "silu")),
    {"batch_norm": False},
    *({"global_pool": kind} for kind in ("avg", "max", "avgmax", "adaptive")),
    {"global_pool": "adaptive", "adaptive_length": 64},
    {"pooling": ["max", "max", "none"], "pool_size": 8},
    {"pooling": ["avg", "avg", "avg"]},
    {"pooling": ["none", "none", "none"]},
    {"dilations": [1, 4, 8], "kernel_sizes": [11, 11, 11]},
    {"se_blocks": True, "se_reduction": 64},
    {"se_blocks": False, "residual": False},
    {"residual": True},
    {"attention": True, "attention_heads": 1},
    {"attention": True, "attention_heads": 16},
    {"fc_sizes": []},
    {"fc_sizes": [64, 32, 16, 8]},
    {"dropout": 0.0},
    {"rr_features": True},
    {
        "conv_layers": 2,
        "channels": [4, 4],
        "kernel_sizes": [3, 3],
        "dilations": [1, 1],
        "pooling": ["max", "max"],
        "se_blocks": True,
        "residual": True,
    },
    {
        "conv_layers": 8,
        "channels": [8] * 8,
        "kernel_sizes": [3] * 8,
        "dilations": [1] * 8,
        "pooling": ["max"] * 7 + ["none"],
        "se_blocks": True,
        "residual": True,
        "attention": True,
    },
]


@pytest.mark.parametrize("options", CNN_OPTIONS, ids=lambda options: str(options)[:60])
def test_every_cnn_option_builds_and_trains(options: dict[str, Any]) -> None:
    assert_builds_and_trains(model_config(options, base=SMALL_CNN))


# --- RNN extremes -------------------------------------------------------------------------


def schema_bounds(key: str) -> tuple[int, int]:
    """Smallest and largest value ModelConfig allows for an integer key."""
    metadata = ModelConfig.model_fields[key].metadata
    low = next(m.ge for m in metadata if hasattr(m, "ge"))
    high = next(m.le for m in metadata if hasattr(m, "le"))
    return int(low), int(high)


HIDDEN_MIN, HIDDEN_MAX = schema_bounds("hidden_size")
LAYERS_MIN, LAYERS_MAX = schema_bounds("rnn_layers")
RNN_SWITCHES = list(
    itertools.product(["gru", "lstm"], [False, True], ["attention", "mean"], [False, True])
)
RNN_SIZES = [
    (cell, hidden, layers, frontend)
    for cell in ("gru", "lstm")
    for hidden, layers in ((HIDDEN_MAX, LAYERS_MIN), (HIDDEN_MIN, LAYERS_MAX))
    for frontend in (False, True)
]


@pytest.mark.parametrize(("cell", "bidirectional", "readout", "conv_frontend"), RNN_SWITCHES)
def test_rnn_switches_build_and_train(
    cell: str, bidirectional: bool, readout: str, conv_frontend: bool
) -> None:
    rnn = {
        "kind": "rnn",
        "rnn_cell": cell,
        "hidden_size": HIDDEN_MIN,
        "rnn_layers": LAYERS_MIN,
        "bidirectional": bidirectional,
        "readout": readout,
        "conv_frontend": conv_frontend,
    }
    model = assert_builds_and_trains(model_config(rnn, base=SMALL_CNN))
    assert isinstance(model.get_submodule("encoder.rnn.rnn"), nn.GRU if cell == "gru" else nn.LSTM)
    assert hasattr(model.encoder, "stage1") == conv_frontend


@pytest.mark.parametrize(("cell", "hidden_size", "rnn_layers", "conv_frontend"), RNN_SIZES)
def test_rnn_sizes_at_the_schema_extremes_build_and_train(
    cell: str, hidden_size: int, rnn_layers: int, conv_frontend: bool
) -> None:
    rnn = {
        "kind": "rnn",
        "rnn_cell": cell,
        "hidden_size": hidden_size,
        "rnn_layers": rnn_layers,
        "conv_frontend": conv_frontend,
    }
    assert_builds_and_trains(model_config(rnn, base=SMALL_CNN))


# --- the default search space at its extremes -----------------------------------------------

CONFIG_TOML = REPO_ROOT / "config.toml"


def default_search_space_cases() -> list[tuple[str, Any, Config]]:
    """Every ``model.*`` key of config.toml's space at each candidate value (choice options,
    range ends), in the base config with per-stage lists as long as the search draws them."""
    space = build_search_space(load_config(CONFIG_TOML))
    return [case for case in space.candidate_configs() if case[0].startswith("model.")]


def test_config_toml_searches_model_keys() -> None:
    assert default_search_space_cases(), f"no model.* key in [search.space] of {CONFIG_TOML}"


@pytest.mark.parametrize("kind", ["cnn", "rnn"])
@pytest.mark.parametrize(
    "case", default_search_space_cases(), ids=lambda case: f"{case[0]}={case[1]!r}"
)
def test_default_search_space_extremes_build_and_train(
    case: tuple[str, Any, Config], kind: str
) -> None:
    key, _, config = case
    if key == "model.kind":
        if kind == "rnn":
            pytest.skip("the case sets model.kind itself")
    else:
        config = validate_config(
            {**config.model_dump(), "model": {**config.model.model_dump(), "kind": kind}}
        )
    assert_builds_and_trains(config)


# --- impossible combinations are config errors --------------------------------------------

IMPOSSIBLE: list[tuple[dict[str, Any], str]] = [
    (
        {
            "conv_layers": 8,
            "channels": [8] * 8,
            "kernel_sizes": [3] * 8,
            "dilations": [1] * 8,
            "pooling": ["max"] * 8,
            "se_blocks": True,
            "residual": True,
        },
        r"model\.pooling = .*below one sample at stage 8",
    ),
    ({"pooling": ["max", "max", "avg"], "pool_size": 8}, r"model\.pooling .*stage 3"),
    (
        {"kind": "rnn", "pooling": ["max", "max", "avg"], "pool_size": 8},
        r"model\.pooling .*stage 3",
    ),
    ({"attention": True, "attention_heads": 3}, r"model\.attention_heads = 3 does not divide"),
    (
        {"kind": "rnn", "attention": True, "attention_heads": 5},
        r"model\.attention_heads = 5 .*model\.channels\[2\] = 16",
    ),
    (
        {"kind": "rnn", "conv_frontend": False, "attention": True},
        r"model\.attention = true .*model\.conv_frontend = false",
    ),
    ({"kernel_sizes": [3, 3]}, r"model\.kernel_sizes has 2 entries but model\.conv_layers = 3"),
    ({"residual": [True]}, r"model\.residual has 1 entries"),
    ({"kernel_sizes": [3, 0, 3]}, r"model\.kernel_sizes = \[3, 0, 3\]: entries must be >= 1"),
    ({"activation": "tanh"}, r"model\.activation = 'tanh'"),
    ({"pooling": ["max", "sum", "none"]}, r"model\.pooling\.1 = 'sum'"),
]


@pytest.mark.parametrize(("model", "message"), IMPOSSIBLE, ids=lambda x: str(x)[:50])
def test_impossible_combinations_are_config_errors(model: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config({"model": {**SMALL_CNN, **model}})


def test_rnn_without_conv_frontend_ignores_the_conv_pooling() -> None:
    rnn = {"kind": "rnn", "conv_frontend": False, "pooling": ["max"] * 3, "pool_size": 8}
    assert_builds_and_trains(model_config(rnn, base=SMALL_CNN))


def test_rr_features_need_mitdb_beats() -> None:
    with pytest.raises(ConfigError, match=r"model\.rr_features = true"):
        validate_config(
            {
                "data": {"source": "csv", "train_files": ["train.csv"]},
                "model": {"rr_features": True},
            }
        )


# --- summary ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_options",
    [{}, {"attention": True, "rr_features": True}, {"kind": "rnn", "rr_features": True}],
    ids=["cnn", "cnn-attention-rr", "rnn-rr"],
)
def test_summary_rows_add_up_and_leave_the_model_as_it_was(
    model_options: dict[str, Any],
) -> None:
    config = model_config(model_options, base=SMALL_CNN)
    model = build_model(config, 5)
    model.train()
    text = summary_text(model, config)
    total = sum(p.numel() for p in model.parameters())
    block_params = sum(
        sum(p.numel() for p in block.parameters()) for _, block in summary_blocks(model)
    )
    assert block_params == total
    assert "total" in text and f"{total:,}" in text
    for name, _ in summary_blocks(model):
        assert name in text
    assert model.training
    assert all(not module._forward_hooks for module in model.modules())
    expected = ["stage1", "stage2", "stage3"] + (["attention"] if config.model.attention else [])
    expected += ["rnn", "readout"] if config.model.kind == "rnn" else ["pool"]
    expected += ["fc1", "classes"]
    assert [name.split(".")[1] for name, _ in summary_blocks(model)] == expected
