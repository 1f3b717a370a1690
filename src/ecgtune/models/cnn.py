"""The convolutional network: conv stages, optional temporal attention, global pooling, head.

The conv stages (with the attention) also serve as the RNN's front-end, so they are built by
:func:`conv_features` from the ``model.*`` keys alone.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ecgtune.config import ModelConfig
from ecgtune.data.beats import rr_column_indices
from ecgtune.models.blocks import (
    BeatClassifier,
    ConvNormAct,
    ConvStage,
    GlobalPool1d,
    SqueezeExcite,
    TemporalSelfAttention,
    classifier_head,
    residual_block,
    rr_path,
    stage_pool,
)

NamedLayers = list[tuple[str, nn.Module]]


def conv_stage(model: ModelConfig, index: int, in_channels: int) -> ConvStage:
    """Stage ``index`` (0-based) from the per-layer lists and the stack-wide options."""
    out_channels = model.channels[index]
    conv_args = (
        in_channels,
        out_channels,
        model.kernel_sizes[index],
        model.dilations[index],
        model.batch_norm,
        model.activation,
    )
    residual = model.stage_flags("residual")[index]
    body = residual_block(*conv_args) if residual else ConvNormAct(*conv_args)
    layers: NamedLayers = [("residual" if residual else "conv", body)]
    if model.stage_flags("se_blocks")[index]:
        layers.append(("se", SqueezeExcite(out_channels, model.se_reduction, model.activation)))
    pooling = model.pooling[index]
    if pooling != "none":
        layers.append(("pool", stage_pool(pooling, model.pool_size)))
    return ConvStage(OrderedDict(layers))


def conv_features(model: ModelConfig, in_channels: int) -> tuple[NamedLayers, int]:
    """The conv stages, then temporal self-attention if ``model.attention``; and the number
    of channels they output."""
    layers: NamedLayers = []
    channels = in_channels
    for index in range(model.conv_layers):
        layers.append((f"stage{index + 1}", conv_stage(model, index, channels)))
        channels = model.channels[index]
    if model.attention:
        layers.append(("attention", TemporalSelfAttention(channels, model.attention_heads)))
    return layers, channels


def build_cnn(model: ModelConfig, n_classes: int, in_channels: int) -> BeatClassifier:
    """Conv features, global pooling to a vector, then the fully connected head."""
    layers, channels = conv_features(model, in_channels)
    pool = GlobalPool1d(model.global_pool, model.adaptive_length)
    layers.append(("pool", pool))
    return assemble_classifier(layers, pool.out_features(channels), model, n_classes, in_channels)


def assemble_classifier(
    encoder: NamedLayers, features: int, model: ModelConfig, n_classes: int, in_channels: int
) -> BeatClassifier:
    """The encoder layers (ending in ``features`` per beat) joined to the head; the RR
    features ``model.rr_features`` selects widen the head's input, through their own path
    (``model.rr_head``)."""
    selected = len(rr_column_indices(model.rr_features, model.rr_reference, model.rr_irregularity))
    rr_encoder, rr_width = rr_path(selected, model.rr_head, model.rr_hidden, model.activation)
    head = classifier_head(
        features + rr_width, model.fc_sizes, model.activation, model.dropout, n_classes
    )
    encoder_module = nn.Sequential(OrderedDict(encoder))
    return BeatClassifier(
        encoder_module,
        head,
        in_channels,
        model.rr_features,
        rr_encoder,
        model.rr_reference,
        model.rr_irregularity,
    )
