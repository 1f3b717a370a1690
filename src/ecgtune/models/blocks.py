"""Small building blocks the CNN and the RNN are assembled from.

Every block works on channels-first feature sequences ``(batch, channels, length)``, the layout
of ``nn.Conv1d``, so blocks chain in any order. Blocks that form one row of the model summary
subclass ``nn.Sequential`` or ``nn.Module`` under their own name; plain ``nn.Sequential``
containers only group them (see :mod:`ecgtune.models.summary`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
from torch import Tensor, nn

from ecgtune.config import Activation, RRFeatures, RRHead, RRReference
from ecgtune.data.beats import RR_COLUMNS, rr_column_indices

GlobalPoolName = Literal["avg", "max", "avgmax", "adaptive"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}


def make_activation(name: Activation) -> nn.Module:
    """A fresh activation module (never in-place: residual sums and summary hooks read inputs)."""
    return ACTIVATIONS[name]()


def same_padding(kernel_size: int, dilation: int) -> tuple[int, int]:
    """Left and right zero padding that keep a stride-1 convolution's output length.

    The kernel spans ``dilation * (kernel_size - 1)`` extra samples; an odd span (even kernel,
    odd dilation) cannot be split evenly, so the extra sample goes to the right, as in
    PyTorch's ``padding="same"`` (which warns about such kernels).
    """
    span = dilation * (kernel_size - 1)
    return span // 2, span - span // 2


class ConvNormAct(nn.Sequential):
    """Conv1d with "same" padding, optional batch norm, optional activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        dilation: int = 1,
        batch_norm: bool = True,
        activation: Activation | None = "relu",
    ) -> None:
        left, right = same_padding(kernel_size, dilation)
        layers: list[nn.Module] = []
        if left != right:
            layers.append(nn.ConstantPad1d((left, right), 0.0))
        layers.append(
            nn.Conv1d(
                in_channels,
                out_channels,
                kernel_size,
                dilation=dilation,
                padding=left if left == right else 0,
                bias=not batch_norm,
            )
        )
        if batch_norm:
            layers.append(nn.BatchNorm1d(out_channels))
        if activation is not None:
            layers.append(make_activation(activation))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Channel gating from the sequence's mean (Hu et al. 2018; as timm's ``SqueezeExcite``)."""

    def __init__(self, channels: int, reduction: int, activation: Activation = "relu") -> None:
        super().__init__()
        reduced = max(1, channels // reduction)
        self.reduce = nn.Conv1d(channels, reduced, 1)
        self.activation = make_activation(activation)
        self.expand = nn.Conv1d(reduced, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        squeezed = x.mean(dim=2, keepdim=True)
        gate = self.expand(self.activation(self.reduce(squeezed)))
        return x * torch.sigmoid(gate)


class Residual(nn.Module):
    """``activation(body(x) + shortcut(x))``: the shortcut is identity or a projection."""

    def __init__(self, body: nn.Module, shortcut: nn.Module, activation: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = self.activation(self.body(x) + self.shortcut(x))
        return result


def residual_block(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    dilation: int,
    batch_norm: bool,
    activation: Activation,
) -> Residual:
    """A ResNet basic block: two convolutions, and a 1x1 projection where the channels change."""
    body = nn.Sequential(
        ConvNormAct(in_channels, out_channels, kernel_size, dilation, batch_norm, activation),
        ConvNormAct(out_channels, out_channels, kernel_size, dilation, batch_norm, None),
    )
    shortcut: nn.Module = (
        nn.Identity()
        if in_channels == out_channels
        else ConvNormAct(in_channels, out_channels, 1, 1, batch_norm, None)
    )
    return Residual(body, shortcut, make_activation(activation))


def stage_pool(kind: Literal["max", "avg"], size: int) -> nn.Module:
    """Pooling after a conv stage: window and stride ``size`` (the length is floor-divided)."""
    return nn.MaxPool1d(size) if kind == "max" else nn.AvgPool1d(size)


class ConvStage(nn.Sequential):
    """One stage of the conv stack: convolution (plain or residual), optional SE, pooling."""


class TemporalSelfAttention(nn.Module):
    """Multi-head self-attention across time steps, with its own residual path and LayerNorm.

    Post-norm, as in the original Transformer: ``LayerNorm(x + attention(x))`` per time step.
    The residual path keeps the conv features reachable; the sequence keeps its shape. No
    positional encoding: the conv features already carry local context.
    """

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        steps = x.transpose(1, 2)
        attended, _ = self.attention(steps, steps, steps, need_weights=False)
        normed: Tensor = self.norm(steps + attended)
        return normed.transpose(1, 2)


class GlobalPool1d(nn.Module):
    """Sequence to vector: mean, max, both concatenated, or adaptive mean to a fixed length."""

    def __init__(self, kind: GlobalPoolName, adaptive_length: int = 1) -> None:
        super().__init__()
        self.kind = kind
        self.adaptive_length = adaptive_length

    def out_features(self, channels: int) -> int:
        if self.kind == "avgmax":
            return 2 * channels
        if self.kind == "adaptive":
            return channels * self.adaptive_length
        return channels

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "avg":
            return x.mean(dim=2)
        if self.kind == "max":
            return x.amax(dim=2)
        if self.kind == "avgmax":
            return torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1)
        return nn.functional.adaptive_avg_pool1d(x, self.adaptive_length).flatten(1)

    def extra_repr(self) -> str:
        suffix = f", adaptive_length={self.adaptive_length}" if self.kind == "adaptive" else ""
        return f"kind={self.kind!r}{suffix}"


class AttentionPool1d(nn.Module):
    """Sequence to vector by a learned softmax weighting of the time steps."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.score = nn.Conv1d(channels, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        weights = torch.softmax(self.score(x), dim=2)
        return (x * weights).sum(dim=2)


class Recurrent(nn.Module):
    """A GRU or LSTM over a channels-first sequence; returns every time step's output.

    Output shape ``(batch, hidden_size * directions, length)``. Dropout acts between stacked
    layers only (PyTorch's rule), so it is off for a single layer.
    """

    def __init__(
        self,
        cell: Literal["gru", "lstm"],
        in_channels: int,
        hidden_size: int,
        layers: int,
        bidirectional: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        rnn_class = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn_class(
            in_channels,
            hidden_size,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.out_channels = hidden_size * (2 if bidirectional else 1)

    def forward(self, x: Tensor) -> Tensor:
        outputs, _ = self.rnn(x.transpose(1, 2))
        result: Tensor = outputs.transpose(1, 2)
        return result


class LinearAct(nn.Sequential):
    """A fully connected layer of the head: linear, activation, dropout."""

    def __init__(
        self, in_features: int, out_features: int, activation: Activation, dropout: float
    ) -> None:
        super().__init__(
            nn.Linear(in_features, out_features), make_activation(activation), nn.Dropout(dropout)
        )


def classifier_head(
    in_features: int,
    fc_sizes: list[int],
    activation: Activation,
    dropout: float,
    n_classes: int,
) -> nn.Sequential:
    """The fully connected layers, then the class layer (logits, no softmax)."""
    layers: dict[str, nn.Module] = {}
    for index, size in enumerate(fc_sizes):
        layers[f"fc{index + 1}"] = LinearAct(in_features, size, activation, dropout)
        in_features = size
    layers["classes"] = nn.Linear(in_features, n_classes)
    return nn.Sequential(OrderedDict(layers))


def rr_path(
    width: int, rr_head: RRHead, hidden: int, activation: Activation
) -> tuple[nn.Module, int]:
    """What ``width`` selected RR features go through before the head, and the width they
    reach it with: nothing (``concat``), or their own two-layer MLP (``mlp``), so that a
    handful of rhythm numbers reaches the head as wide as a learnt code of them, not as a few
    columns beside hundreds of morphology features."""
    if rr_head == "concat" or width == 0:
        return nn.Identity(), width
    mlp = nn.Sequential(
        LinearAct(width, hidden, activation, 0.0), LinearAct(hidden, hidden, activation, 0.0)
    )
    return mlp, hidden


class BeatClassifier(nn.Module):
    """Encoder (beat to feature vector), the selected RR features through their path, then
    the head.

    ``forward(signals (batch, channels, length), rr (batch, len(RR_COLUMNS)) | None) -> logits
    (batch, classes)``. ``rr`` holds every RR column the data layer computes; the model takes
    the ones ``model.rr_features`` selects (``rr_index``, a buffer outside the state dict: it
    follows from the config) and passes them through ``rr_encoder`` (``model.rr_head``). ``rr``
    is required when the selection is not empty and ignored otherwise, so a trainer can always
    pass it.
    """

    rr_index: Tensor

    def __init__(
        self,
        encoder: nn.Sequential,
        head: nn.Sequential,
        in_channels: int,
        rr_features: RRFeatures,
        rr_encoder: nn.Module | None = None,
        rr_reference: RRReference = "beats",
        rr_irregularity: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.rr_encoder = nn.Identity() if rr_encoder is None else rr_encoder
        self.head = head
        self.in_channels = in_channels
        self.rr_features = rr_features
        columns = rr_column_indices(rr_features, rr_reference, rr_irregularity)
        index = torch.tensor(columns, dtype=torch.long)
        self.register_buffer("rr_index", index, persistent=False)

    def forward(self, signals: Tensor, rr: Tensor | None = None) -> Tensor:
        return self.features_and_logits(signals, rr)[1]

    def features_and_logits(
        self, signals: Tensor, rr: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The encoder's features of each beat (before the RR features join them), and the
        logits: what a training-time head on the features (``training.patient_adversary``)
        reads beside the classification."""
        if signals.dim() != 3 or signals.shape[1] != self.in_channels:
            raise ValueError(
                f"signals must be (batch, {self.in_channels}, length), "
                f"got {tuple(signals.shape)}"
            )
        features = self.encoder(signals)
        joined = features
        if self.rr_index.numel():
            rhythm = self.rr_encoder(self._selected_rr(rr, features))
            joined = torch.cat([features, rhythm], dim=1)
        logits: Tensor = self.head(joined)
        return features, logits

    def _selected_rr(self, rr: Tensor | None, features: Tensor) -> Tensor:
        width = len(RR_COLUMNS)
        if rr is None:
            raise ValueError(
                f"model.rr_features = {self.rr_features!r}: forward needs rr, "
                f"shape (batch, {width})"
            )
        expected = (features.shape[0], width)
        if tuple(rr.shape) != expected:
            raise ValueError(f"rr must be (batch, {width}) = {expected}, got {tuple(rr.shape)}")
        return rr.index_select(1, self.rr_index).to(features.dtype)
