"""The recurrent network: optional conv front-end, GRU or LSTM, readout over time, head.

The readout pools every time step (attention weights or the mean), never the last step: beats
are zero-padded to a fixed length, so the last step is mostly padding.
"""

from __future__ import annotations

from ecgtune.config import ModelConfig
from ecgtune.models.blocks import AttentionPool1d, BeatClassifier, GlobalPool1d, Recurrent
from ecgtune.models.cnn import NamedLayers, assemble_classifier, conv_features


def build_rnn(model: ModelConfig, n_classes: int, in_channels: int) -> BeatClassifier:
    """``conv_frontend`` runs the CNN's conv stages first, shortening the sequence by their
    pooling; without it the recurrent layers read the raw samples."""
    layers: NamedLayers = []
    channels = in_channels
    if model.conv_frontend:
        layers, channels = conv_features(model, in_channels)
    recurrent = Recurrent(
        model.rnn_cell,
        channels,
        model.hidden_size,
        model.rnn_layers,
        model.bidirectional,
        model.dropout,
    )
    readout = (
        AttentionPool1d(recurrent.out_channels)
        if model.readout == "attention"
        else GlobalPool1d("avg")
    )
    layers += [("rnn", recurrent), ("readout", readout)]
    return assemble_classifier(layers, recurrent.out_channels, model, n_classes, in_channels)
