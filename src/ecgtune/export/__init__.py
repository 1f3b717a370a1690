"""The tuned model outside ecgtune: the interface its exported forms share.

A saved model (``best_model.pt``) leaves the tool as an ONNX file (:mod:`ecgtune.export.onnx`)
or an MLflow Model (:mod:`ecgtune.tracking.mlflow_model`). Both take the same named inputs and
describe them in the same *beat spec* (:func:`beat_spec`), so another program can cut beats the
way the model was trained on:

* ``beats``: float32 ``(batch, channels, beat_length)``, beats cut and normalised by the
  spec's ``beat_rules`` (the ``[data]`` keys that define a beat);
* ``rr``: float32 ``(batch, len(rr_columns))``, only when the model uses RR features: the
  spec's ``rr_columns`` in that order (just the columns the model reads, not every column the
  data layer computes);
* output ``logits``: ``(batch, classes)`` in the order of the spec's ``class_names``.

Every shape comes from the checkpoint's config and the built model, never from constants.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from ecgtune.config import Config
from ecgtune.data.beats import RR_COLUMNS
from ecgtune.data.dataset import BeatSet
from ecgtune.models import BeatClassifier
from ecgtune.models.ensemble import Classifier, Ensemble

BEATS_INPUT = "beats"
RR_INPUT = "rr"
LOGITS_OUTPUT = "logits"
SPEC_FORMAT = 1
"""Version of the beat spec's layout; raised when a key changes meaning."""
NOT_BEAT_KEYS = frozenset(
    {
        "raw_dir",
        "base_url",
        "cache_dir",
        "records",
        "max_beats_per_record",
        "split",
        "test_fraction",
        "valid_fraction",
        "train_files",
        "test_files",
        "class_names",
        "resample",
    }
)
"""``[data]`` keys about where the data is, which records and how they are split: everything
else in ``[data]`` decides how a beat is cut, so it goes into the spec's ``beat_rules`` (a key
added to ``[data]`` later is taken as a beat rule unless it is listed here)."""

Inputs = dict[str, NDArray[np.float32]]
"""Named model inputs: ``beats`` and, when the model reads RR features, ``rr``."""


def as_beat_classifier(model: nn.Module) -> Classifier:
    """The model as a checkpoint holds it: the classifier ``build_model`` makes, or an
    ensemble of them."""
    if not isinstance(model, BeatClassifier | Ensemble):
        raise TypeError(f"expected an ecgtune BeatClassifier, got {type(model).__name__}")
    return model


def rr_columns(model: nn.Module) -> list[str]:
    """Names of the RR columns the model reads, in the order it reads them: its own
    ``rr_index`` buffer, built from ``model.rr_features`` by the models package."""
    return [RR_COLUMNS[index] for index in as_beat_classifier(model).rr_index.tolist()]


class ServedClassifier(nn.Module):
    """The classifier as it runs outside ecgtune: ``forward(beats, rr)`` with ``rr`` holding
    only the columns the model reads (:func:`rr_columns`).

    Inside ecgtune the model takes every RR column the data layer computes and selects its
    own; this wrapper places the given columns where the model selects them (the others stay
    zero, never read), so the model's own forward runs unchanged.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = as_beat_classifier(model)

    @property
    def uses_rr(self) -> bool:
        return bool(self.model.rr_index.numel())

    def forward(self, beats: Tensor, rr: Tensor | None = None) -> Tensor:
        if not self.uses_rr:
            logits: Tensor = self.model(beats)
            return logits
        selected = self.model.rr_index
        if rr is None:
            raise ValueError(f"the model reads {selected.numel()} RR columns: pass rr")
        every_column = rr.new_zeros((rr.shape[0], len(RR_COLUMNS)))
        logits = self.model(beats, every_column.index_copy(1, selected, rr))
        return logits

    def input_names(self) -> list[str]:
        return [BEATS_INPUT, RR_INPUT] if self.uses_rr else [BEATS_INPUT]


def beat_spec(config: Config, class_names: Sequence[str], model: nn.Module) -> dict[str, Any]:
    """What a program outside ecgtune needs to feed the model: its inputs and outputs, the
    classes, and the rules that cut a beat (``[data]`` less :data:`NOT_BEAT_KEYS`)."""
    classifier = as_beat_classifier(model)
    data = config.data
    columns = rr_columns(classifier)
    inputs: dict[str, Any] = {
        BEATS_INPUT: {
            "dtype": "float32",
            "shape": ["batch", classifier.in_channels, data.beat_length],
        }
    }
    if columns:
        inputs[RR_INPUT] = {"dtype": "float32", "shape": ["batch", len(columns)]}
    return {
        "format": SPEC_FORMAT,
        "class_names": list(class_names),
        "target_hz": data.target_hz,
        "beat_length": data.beat_length,
        "channels": classifier.in_channels,
        "rr_columns": columns,
        "beat_rules": data.model_dump(mode="json", exclude=set(NOT_BEAT_KEYS)),
        "inputs": inputs,
        "outputs": {LOGITS_OUTPUT: {"dtype": "float32", "shape": ["batch", len(class_names)]}},
        "model": {"kind": config.model.kind, "parameters": count_parameters(classifier)},
    }


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def beat_inputs(beats: BeatSet, spec: Mapping[str, Any]) -> Inputs:
    """A split's beats as the named inputs the spec describes: the signals as
    ``(n, channels, beat_length)`` and the spec's RR columns picked by name."""
    shape = (len(beats), spec["channels"], spec["beat_length"])
    inputs = {BEATS_INPUT: np.ascontiguousarray(beats.signals, dtype=np.float32).reshape(shape)}
    if spec["rr_columns"]:
        picked = [RR_COLUMNS.index(name) for name in spec["rr_columns"]]
        inputs[RR_INPUT] = np.ascontiguousarray(beats.rr[:, picked], dtype=np.float32)
    return inputs


def synthetic_inputs(spec: Mapping[str, Any], n_beats: int, seed: int = 0) -> Inputs:
    """Seeded random inputs of the spec's shapes (samples in [0, 1), RR values in [0.5, 1.5),
    the range of normalised beats and RR ratios): for shape and speed checks, not accuracy."""
    rng = np.random.default_rng(seed)
    beats = rng.random((n_beats, spec["channels"], spec["beat_length"]), dtype=np.float32)
    inputs = {BEATS_INPUT: beats}
    if spec["rr_columns"]:
        rr = rng.random((n_beats, len(spec["rr_columns"])), dtype=np.float32) + 0.5
        inputs[RR_INPUT] = rr
    return inputs


def torch_logits(served: ServedClassifier, inputs: Inputs) -> NDArray[np.float32]:
    """Logits of the named inputs through the torch model (eval mode, no gradients)."""
    served.eval()
    tensors = [torch.from_numpy(inputs[name]) for name in served.input_names()]
    with torch.inference_mode():
        logits: NDArray[np.float32] = served(*tensors).float().numpy()
    return logits


def softmax(logits: NDArray[np.float32]) -> NDArray[np.float32]:
    """Class probabilities of each row of logits (shifted by the row's maximum: no overflow)."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities: NDArray[np.float32] = (shifted / shifted.sum(axis=1, keepdims=True)).astype(
        np.float32
    )
    return probabilities
