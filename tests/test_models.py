"""The networks: every option builds what it names, runs forward and backward, and keeps its
promises.

Every model a test builds is compared, module by module, with what its ``[model]`` section asks
for (:func:`assert_built_as_configured`, worked out from the config here, not by the builder),
so an option the builder ignored fails. No data and no training: random beats of the real length
(187 samples), batches of 4, one CPU thread. The search-space test reads the repo's config.toml,
so a search space the models cannot build fails here before any search starts.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from rich.console import Console
from torch import Tensor, nn

from ecgtune.config import Config, ModelConfig, load_config, validate_config
from ecgtune.data.beats import RR_COLUMNS
from ecgtune.errors import ConfigError
from ecgtune.models import BeatClassifier, build_model
from ecgtune.models.blocks import (
    AttentionPool1d,
    ConvNormAct,
    GlobalPool1d,
    Recurrent,
    Residual,
    SqueezeExcite,
    same_padding,
)
from ecgtune.models.summary import model_summary, summary_blocks
from ecgtune.search.space import build_search_space

from .conftest import REPO_ROOT

BATCH = 4
REFERENCE_PARAMETERS = 841_773
"""The seeds' best model (the ModelConfig defaults), 5 classes, no RR features."""

RR_WIDTH = {"none": 0, "raw": 2, "normalised": 5, "all": 7, "rhythm": 6, "rhythm_record": 9}
"""RR features each ``model.rr_features`` option feeds to the head (of the RR_COLUMNS)."""

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
    rr = 0.5 + torch.rand(BATCH, len(RR_COLUMNS))
    labels = torch.arange(BATCH) % n_classes
    model.train()
    logits: Tensor = model(signals, rr)
    torch.autograd.backward(nn.functional.cross_entropy(logits, labels))
    return logits


def assert_builds_and_trains(config: Config, n_classes: int = 5) -> BeatClassifier:
    """The model the config asks for; logits of the right shape, and gradients reaching every
    parameter and the first layer."""
    model = build_model(config, n_classes)
    assert_built_as_configured(model, config.model, n_classes)
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


# --- what the config asks for, worked out here --------------------------------------------

ACTIVATION_CLASSES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}
STAGE_POOL_CLASSES: dict[str, type[nn.Module]] = {"max": nn.MaxPool1d, "avg": nn.AvgPool1d}


def built_stages(cfg: ModelConfig) -> int:
    """Conv stages the model holds: all of them, except for an RNN without its front-end."""
    return cfg.conv_layers if cfg.kind == "cnn" or cfg.conv_frontend else 0


def expected_module_counts(cfg: ModelConfig) -> dict[str, int]:
    """How many modules of each kind the whole model holds (by exact class name).

    A plain stage has one conv block and one activation; a residual stage two conv blocks, a
    1x1 projection block where the channels change, and an activation after the first conv and
    one after the sum; an SE block adds an activation, every fully connected layer one.
    """
    stages = range(built_stages(cfg))
    residual, se = cfg.stage_flags("residual"), cfg.stage_flags("se_blocks")
    in_channels = [1, *cfg.channels]
    conv_blocks = sum(2 + (in_channels[i] != cfg.channels[i]) if residual[i] else 1 for i in stages)
    activations = sum((2 if residual[i] else 1) + se[i] for i in stages) + len(cfg.fc_sizes)
    pooling = cfg.pooling[: len(stages)]
    rnn = cfg.kind == "rnn"
    return {
        **{cls.__name__: 0 for cls in ACTIVATION_CLASSES.values()},
        ACTIVATION_CLASSES[cfg.activation].__name__: activations,
        "ConvNormAct": conv_blocks,
        "BatchNorm1d": conv_blocks if cfg.batch_norm else 0,
        "Residual": sum(residual[i] for i in stages),
        "SqueezeExcite": sum(se[i] for i in stages),
        "MaxPool1d": pooling.count("max"),
        "AvgPool1d": pooling.count("avg"),
        "MultiheadAttention": int(cfg.attention),
        "LayerNorm": int(cfg.attention),
        "GRU": int(rnn and cfg.rnn_cell == "gru"),
        "LSTM": int(rnn and cfg.rnn_cell == "lstm"),
        "AttentionPool1d": int(rnn and cfg.readout == "attention"),
        "GlobalPool1d": int(not rnn or cfg.readout == "mean"),
        "Linear": len(cfg.fc_sizes) + 1,
        "Dropout": len(cfg.fc_sizes),
    }


def expected_encoder_layers(cfg: ModelConfig) -> list[str]:
    stages = [f"stage{i + 1}" for i in range(built_stages(cfg))]
    attention = ["attention"] if cfg.attention else []
    return stages + attention + (["rnn", "readout"] if cfg.kind == "rnn" else ["pool"])


def expected_features(cfg: ModelConfig) -> int:
    """Width of the encoder's output per beat, and so of the head's input without RR."""
    if cfg.kind == "rnn":
        return cfg.hidden_size * (2 if cfg.bidirectional else 1)
    per_channel = {"avg": 1, "max": 1, "avgmax": 2, "adaptive": cfg.adaptive_length}
    return cfg.channels[-1] * per_channel[cfg.global_pool]


def assert_built_as_configured(model: BeatClassifier, cfg: ModelConfig, n_classes: int) -> None:
    """Every ``model.*`` key shows in the module tree: the counts of each kind of module, the
    layout of each stage, the sizes of the convolutions, recurrent layers and head."""
    counted = Counter(type(module).__name__ for module in model.modules())
    expected = expected_module_counts(cfg)
    assert {name: counted[name] for name in expected} == expected
    assert [name for name, _ in model.encoder.named_children()] == expected_encoder_layers(cfg)
    for index in range(built_stages(cfg)):
        assert_stage_as_configured(model.encoder.get_submodule(f"stage{index + 1}"), cfg, index)
    for block in model.modules():
        if isinstance(block, ConvNormAct):
            conv = next(m for m in block.modules() if isinstance(m, nn.Conv1d))
            assert (conv.bias is None) == cfg.batch_norm, "batch norm replaces the conv bias"
    if cfg.attention:
        attention = model.get_submodule("encoder.attention.attention")
        assert isinstance(attention, nn.MultiheadAttention)
        assert (attention.num_heads, attention.embed_dim) == (cfg.attention_heads, cfg.channels[-1])
    if cfg.kind == "rnn":
        assert_recurrent_as_configured(model, cfg)
    else:
        pool = model.get_submodule("encoder.pool")
        assert isinstance(pool, GlobalPool1d)
        assert (pool.kind, pool.adaptive_length) == (cfg.global_pool, cfg.adaptive_length)
    assert_head_as_configured(model, cfg, n_classes)


def assert_stage_as_configured(stage: nn.Module, cfg: ModelConfig, index: int) -> None:
    """Conv (plain or residual), SE and pooling as the per-stage lists say, in that order."""
    residual = cfg.stage_flags("residual")[index]
    se = cfg.stage_flags("se_blocks")[index]
    pooling = cfg.pooling[index]
    layout = ["residual" if residual else "conv"] + (["se"] if se else [])
    layout += [] if pooling == "none" else ["pool"]
    assert [name for name, _ in stage.named_children()] == layout, f"stage {index + 1}"
    body = stage.get_submodule("residual.body" if residual else "conv")
    convs = [m for m in body.modules() if isinstance(m, nn.Conv1d)]
    assert len(convs) == (2 if residual else 1)
    for conv in convs:
        assert conv.out_channels == cfg.channels[index]
        assert conv.kernel_size == (cfg.kernel_sizes[index],)
        assert conv.dilation == (cfg.dilations[index],)
    if se:
        se_block = stage.get_submodule("se")
        assert isinstance(se_block, SqueezeExcite)
        assert se_block.reduce.out_channels == max(1, cfg.channels[index] // cfg.se_reduction)
    if pooling != "none":
        pool = stage.get_submodule("pool")
        assert type(pool) is STAGE_POOL_CLASSES[pooling]
        assert pool.kernel_size in (cfg.pool_size, (cfg.pool_size,))


def assert_recurrent_as_configured(model: BeatClassifier, cfg: ModelConfig) -> None:
    """Cell, sizes, direction, dropout between layers (PyTorch's: none for one layer), input
    from the front-end's last stage or the raw samples, and the readout over time."""
    recurrent = model.get_submodule("encoder.rnn")
    assert isinstance(recurrent, Recurrent)
    rnn = recurrent.rnn
    assert type(rnn) is (nn.GRU if cfg.rnn_cell == "gru" else nn.LSTM)
    assert rnn.input_size == (cfg.channels[-1] if cfg.conv_frontend else 1)
    assert (rnn.hidden_size, rnn.num_layers) == (cfg.hidden_size, cfg.rnn_layers)
    assert rnn.bidirectional == cfg.bidirectional
    assert rnn.dropout == (cfg.dropout if cfg.rnn_layers > 1 else 0.0)
    readout = model.get_submodule("encoder.readout")
    if cfg.readout == "attention":
        assert isinstance(readout, AttentionPool1d)
    else:
        assert isinstance(readout, GlobalPool1d) and readout.kind == "avg"


def assert_head_as_configured(model: BeatClassifier, cfg: ModelConfig, n_classes: int) -> None:
    """Linear layers from the encoder's width (plus the RR intervals) through ``fc_sizes`` to
    the classes, each hidden one followed by dropout of ``model.dropout``."""
    assert model.rr_features == cfg.rr_features
    linears = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    widths = [expected_features(cfg) + RR_WIDTH[cfg.rr_features], *cfg.fc_sizes, n_classes]
    assert [(m.in_features, m.out_features) for m in linears] == list(itertools.pairwise(widths))
    dropouts = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert dropouts == [cfg.dropout] * len(cfg.fc_sizes)


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
    assert_built_as_configured(model, config.model, 5)
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


@pytest.mark.parametrize(
    ("kind", "adaptive_length", "expected"),
    [("avg", 1, [3.0]), ("max", 1, [6.0]), ("avgmax", 1, [3.0, 6.0]), ("adaptive", 2, [1.5, 4.5])],
)
def test_global_pools_reduce_the_sequence_as_named(
    kind: Any, adaptive_length: int, expected: list[float]
) -> None:
    sequence = torch.tensor([[[1.0, 2.0, 3.0, 6.0]]])  # one beat, one channel, four steps
    assert GlobalPool1d(kind, adaptive_length)(sequence).tolist() == [expected]


def test_rr_features_change_the_output_and_are_required() -> None:
    config = model_config({"rr_features": "raw"}, base=SMALL_CNN)
    model = assert_builds_and_trains(config)
    signals = torch.rand(BATCH, 1, 187)
    normal_rr = torch.full((BATCH, len(RR_COLUMNS)), 0.8)
    premature_rr = torch.tensor([[0.4, 1.2, *[0.8] * (len(RR_COLUMNS) - 2)]] * BATCH)
    assert not torch.allclose(
        eval_logits(model, signals, normal_rr), eval_logits(model, signals, premature_rr)
    )
    with pytest.raises(ValueError, match="rr_features"):
        model(signals)
    with pytest.raises(ValueError, match=rf"rr must be \(batch, {len(RR_COLUMNS)}\)"):
        model(signals, torch.zeros(BATCH, 3))


def test_without_rr_features_rr_is_ignored() -> None:
    model = build_model(model_config({}, base=SMALL_CNN), 5)
    signals = torch.rand(BATCH, 1, 187)
    assert torch.equal(
        eval_logits(model, signals, torch.zeros(BATCH, len(RR_COLUMNS))),
        eval_logits(model, signals, torch.ones(BATCH, len(RR_COLUMNS))),
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
    *({"rr_features": option} for option in ("raw", "normalised", "all")),
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


def options_id(options: dict[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in options.items() if key != "kind")[:70]


@pytest.mark.parametrize("options", CNN_OPTIONS, ids=options_id)
def test_every_cnn_option_builds_what_it_names_and_trains(options: dict[str, Any]) -> None:
    assert_builds_and_trains(model_config(options, base=SMALL_CNN))


# --- RNN switches and extremes --------------------------------------------------------------


def schema_bounds(key: str) -> tuple[int, int]:
    """Smallest and largest value ModelConfig allows for an integer key."""
    metadata = ModelConfig.model_fields[key].metadata
    low = next(m.ge for m in metadata if hasattr(m, "ge"))
    high = next(m.le for m in metadata if hasattr(m, "le"))
    return int(low), int(high)


HIDDEN_MIN, HIDDEN_MAX = schema_bounds("hidden_size")
LAYERS_MIN, LAYERS_MAX = schema_bounds("rnn_layers")
RNN_SWITCHES: list[dict[str, Any]] = [
    {
        "kind": "rnn",
        "rnn_cell": cell,
        "hidden_size": HIDDEN_MIN,
        "rnn_layers": LAYERS_MIN,
        "bidirectional": bidirectional,
        "readout": readout,
        "conv_frontend": conv_frontend,
    }
    for cell, bidirectional, readout, conv_frontend in itertools.product(
        ["gru", "lstm"], [False, True], ["attention", "mean"], [False, True]
    )
]
RNN_SIZES: list[dict[str, Any]] = [
    {
        "kind": "rnn",
        "rnn_cell": cell,
        "hidden_size": hidden_size,
        "rnn_layers": rnn_layers,
        "conv_frontend": conv_frontend,
    }
    for cell in ("gru", "lstm")
    for hidden_size, rnn_layers in ((HIDDEN_MAX, LAYERS_MIN), (HIDDEN_MIN, LAYERS_MAX))
    for conv_frontend in (False, True)
]


@pytest.mark.parametrize("options", RNN_SWITCHES, ids=options_id)
def test_rnn_switches_build_what_they_name_and_train(options: dict[str, Any]) -> None:
    assert_builds_and_trains(model_config(options, base=SMALL_CNN))


@pytest.mark.slow
@pytest.mark.parametrize("options", RNN_SIZES, ids=options_id)
def test_rnn_sizes_at_the_schema_extremes_build_and_train(options: dict[str, Any]) -> None:
    assert_builds_and_trains(model_config(options, base=SMALL_CNN))


# --- the checks above catch an ignored option -----------------------------------------------


def configs_ignoring_one_key(options: dict[str, Any]) -> Iterator[tuple[str, Config]]:
    """For each key of ``options``, the config a builder that ignored it would build from: the
    key left at its SMALL_CNN or schema value. Left out: keys that change nothing there (their
    value is the default already), and keys the other options cannot do without (a shorter
    ``conv_layers`` than the per-stage lists given is no valid config)."""
    config = model_config(options, base=SMALL_CNN)
    for key in options:
        try:
            ignoring = model_config({k: v for k, v in options.items() if k != key}, SMALL_CNN)
        except ConfigError:
            continue
        if ignoring.model != config.model:
            yield key, ignoring


def passes_checks(model: BeatClassifier, cfg: ModelConfig) -> bool:
    try:
        assert_built_as_configured(model, cfg, 5)
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize("options", CNN_OPTIONS + RNN_SWITCHES + RNN_SIZES, ids=options_id)
def test_a_builder_ignoring_any_key_of_the_options_fails_the_checks(
    options: dict[str, Any],
) -> None:
    """Build as if one key were ignored: the model passes the checks against the config it was
    built from, and fails them against the options' config."""
    config = model_config(options, base=SMALL_CNN)
    ignored = list(configs_ignoring_one_key(options))
    assert ignored or config.model == model_config({}, SMALL_CNN).model, "nothing was checked"
    models = {key: build_model(ignoring, 5) for key, ignoring in ignored}
    assert all(passes_checks(models[key], ignoring.model) for key, ignoring in ignored)
    unnoticed = [key for key, model in models.items() if passes_checks(model, config.model)]
    assert unnoticed == [], f"a builder ignoring {unnoticed} would pass"


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
    with pytest.raises(ConfigError, match=r"model\.rr_features = 'raw' needs RR intervals"):
        validate_config(
            {
                "data": {"source": "csv", "train_files": ["train.csv"]},
                "model": {"rr_features": "raw"},
            }
        )


# --- summary ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_options",
    [{}, {"attention": True, "rr_features": "all"}, {"kind": "rnn", "rr_features": "raw"}],
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
