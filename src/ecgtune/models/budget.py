"""The whole model's size, checked before any work: parameters and one batch's activations.

The per-key bounds of the schema cannot see products: 8 stages of 1024 channels with two
8192-unit layers pass every bound and still make a 186-million-parameter model, and a batch of
65,536 beats of the reference network needs about 77 GiB of activations.
:func:`check_model_budget` refuses such configs with one line that names the keys to lower,
before any data is downloaded or any memory allocated.

How: the model is built by :func:`ecgtune.models.build_model` on torch's ``meta`` device,
where tensors have shapes and dtypes but no storage, and one training batch
(``training.batch_size`` beats of ``data.beat_length`` samples) is run through it. The
activation estimate is the bytes of every tensor an operation of that forward pass creates
(views and in-place results share memory and are not counted), in float32 (an upper bound
under ``training.precision`` = bf16/fp16). No factor is added for the backward pass: it frees
the tensors the forward kept as it creates their gradients, and the forward's temporaries,
counted here, are mostly freed before it. Measured on CPU (growth of the peak RSS over one
AdamW step on random beats, torch 2.13), the step took 0.95 of the estimate for the
reference network at 512 beats, 0.82 at 1,024 beats, 0.74 with ``model.attention`` and 1.19
for ``model.kind = "rnn"`` at 256 beats. The parameters' own memory (weights, gradients, two
Adam moments) is left out; :data:`MAX_PARAMETERS` bounds it.

The first check in a process takes about a second (torch imports its compiler stack for meta
tensors); later ones take 10-100 ms.

GRU and LSTM layers are the exception: torch runs them on meta tensors step by step in Python
(about a second per layer for a 187-sample beat), so they are replaced by a stand-in that
returns their output shapes, and what their steps keep for backward is counted by formula
(see :class:`RecurrentShapes`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ecgtune.config import Config
from ecgtune.data.beats import RR_COLUMNS
from ecgtune.errors import ConfigError
from ecgtune.models import BeatClassifier, build_model

MAX_PARAMETERS = 50_000_000
"""About 800 MB to train with Adam (weights, gradients and two moments in float32), and some
60 times the reference network: beyond what 110,000 heartbeats can fit."""
MAX_ACTIVATION_BYTES = 4 * 1024**3
"""4 GiB of activations for one batch: within a laptop's memory and any current GPU's; the
reference network reaches it at about 3,300 beats a batch."""

PART_KEYS = {
    "head": "model.fc_sizes, model.adaptive_length",
    "recurrent layers": "model.hidden_size, model.rnn_layers",
    "conv stages": "model.channels, model.kernel_sizes",
}
"""The keys that size each part of the network, for the error message."""


@dataclass(frozen=True)
class ModelBudget:
    """A model's parameter count (in total and per part) and the estimated activation memory
    of one training step (module docstring)."""

    parameters: int
    parameters_by_part: dict[str, int]
    activation_bytes: int


def check_model_budget(config: Config, n_classes: int) -> ModelBudget:
    """The budget of ``config``'s model; a :class:`ConfigError` naming the keys to lower when
    it is above :data:`MAX_PARAMETERS` or :data:`MAX_ACTIVATION_BYTES`."""
    budget = model_budget(config, n_classes)
    if budget.parameters > MAX_PARAMETERS:
        raise ConfigError(_too_many_parameters(budget))
    if budget.activation_bytes > MAX_ACTIVATION_BYTES:
        raise ConfigError(_too_many_activations(config, budget))
    return budget


def model_budget(config: Config, n_classes: int) -> ModelBudget:
    """Build the model on the meta device and run one training batch through it."""
    batch, length = config.training.batch_size, config.data.beat_length
    with torch.device("meta"):
        model = build_model(config, n_classes)
        stand_ins = stand_in_for_recurrent_layers(model)
        signals = torch.empty(batch, config.data.input_channels, length)
        rr = torch.empty(batch, len(RR_COLUMNS))
        with CreatedBytes() as created:
            model(signals, rr)
    recurrent_bytes = sum(stand_in.saved_bytes for stand_in in stand_ins)
    by_part = parameters_by_part(model)
    return ModelBudget(
        parameters=sum(by_part.values()),
        parameters_by_part=by_part,
        activation_bytes=created.total + recurrent_bytes,
    )


def parameters_by_part(model: BeatClassifier) -> dict[str, int]:
    """Parameters of the head, the recurrent layers and the conv stages (attention included)."""
    head = {id(parameter) for parameter in model.head.parameters()}
    recurrent = {
        id(parameter)
        for module in model.modules()
        if isinstance(module, nn.RNNBase)
        for parameter in module.parameters()
    }
    parts: Counter[str] = Counter()
    for parameter in model.parameters():
        if id(parameter) in head:
            parts["head"] += parameter.numel()
        elif id(parameter) in recurrent:
            parts["recurrent layers"] += parameter.numel()
        else:
            parts["conv stages"] += parameter.numel()
    return dict(parts)


class CreatedBytes(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch's stub gap
    """Sums the bytes of the tensors that the operations run under it create. Operations whose
    results alias an input (views such as ``t`` or ``transpose``, in-place operations such as
    the batch-norm statistics' update) create no memory and are skipped; their schema says so.

    A dispatch mode sees every aten operation, also those inside composite functions such as
    ``F.multi_head_attention_forward`` (its attention matrices are the largest tensors)."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.total = 0

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        result = func(*args, **(kwargs or {}))
        if not any(output.alias_info is not None for output in func._schema.returns):
            for value in tree_leaves(result):
                if isinstance(value, Tensor):
                    self.total += value.numel() * value.element_size()
        return result


class RecurrentShapes(nn.Module):
    """Stands in for a GRU or LSTM during the estimate: returns outputs of the right shapes and
    counts what the real layer keeps for backward, per time step, layer and direction: its
    gates (3 GRU, 4 LSTM), its hidden state and its output (LSTM: cell state), in
    ``saved_bytes``. The layer stays a child, so its parameters are still counted."""

    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.rnn = rnn
        self.saved_bytes = 0

    def forward(self, x: Tensor) -> tuple[Tensor, Any]:
        rnn = self.rnn
        batch, steps = (x.shape[0], x.shape[1]) if rnn.batch_first else (x.shape[1], x.shape[0])
        directions = 2 if rnn.bidirectional else 1
        gates = 4 if isinstance(rnn, nn.LSTM) else 3
        kept = steps * rnn.num_layers * directions * rnn.hidden_size * (gates + 2)
        self.saved_bytes += batch * kept * x.element_size()
        width = directions * rnn.hidden_size
        output = x.new_empty((batch, steps, width) if rnn.batch_first else (steps, batch, width))
        state = x.new_empty(rnn.num_layers * directions, batch, rnn.hidden_size)
        return output, ((state, state) if isinstance(rnn, nn.LSTM) else state)


def stand_in_for_recurrent_layers(model: nn.Module) -> list[RecurrentShapes]:
    """Replace every GRU/LSTM of ``model`` by a :class:`RecurrentShapes`; return those."""
    stand_ins = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.RNNBase):
                stand_in = RecurrentShapes(child)
                parent.register_module(name, stand_in)
                stand_ins.append(stand_in)
    return stand_ins


def _too_many_parameters(budget: ModelBudget) -> str:
    parts = sorted(budget.parameters_by_part.items(), key=lambda item: -item[1])
    advice = ", ".join(f"{PART_KEYS[part]} ({part}: {count:,})" for part, count in parts if count)
    return (
        f"the model has {budget.parameters:,} parameters, above the limit of "
        f"{MAX_PARAMETERS:,}: lower {advice}"
    )


def _too_many_activations(config: Config, budget: ModelBudget) -> str:
    keys = ["training.batch_size", "model.channels", "model.pooling (pool earlier)"]
    if config.model.kind == "rnn":
        keys += ["model.hidden_size", "model.rnn_layers"]
    if config.model.attention:
        keys.append("model.attention")
    return (
        f"one training batch of {config.training.batch_size:,} beats needs about "
        f"{budget.activation_bytes / 1024**3:.1f} GiB of activations, "
        f"above the limit of {MAX_ACTIVATION_BYTES / 1024**3:g} GiB: lower {', '.join(keys)}"
    )
