"""ONNX export: ``model.onnx`` with a JSON sidecar, a parity check against torch, and a runner.

The export uses torch's own exporter, the ``torch.export``-based one (``dynamo=True``, which
needs ``onnxscript``): the TorchScript exporter cannot translate adaptive average pooling to a
length that does not divide the input, which the default network's head uses. The file holds
the weights (no external data file), takes ``beats`` and (when the model reads RR features)
``rr`` with a dynamic batch axis, and returns ``logits``. The sidecar beside it (same name,
``.json``) is the beat spec of :func:`ecgtune.export.beat_spec`.

A model the exporter cannot translate is a :class:`~ecgtune.errors.UserError` naming the
layer: after a failed export every block is exported on its own, with the input it received in
a forward pass, and the deepest block that still fails is the one named.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from numpy.typing import NDArray
from torch import nn

from ecgtune.config import Config
from ecgtune.data.dataset import BeatSet
from ecgtune.data.files import atomic_write
from ecgtune.errors import DataError, UserError
from ecgtune.export import (
    LOGITS_OUTPUT,
    Inputs,
    ServedClassifier,
    beat_inputs,
    beat_spec,
    softmax,
    synthetic_inputs,
    torch_logits,
)

ONNX_NAME = "model.onnx"
PARITY_TOLERANCE = 1e-4
"""Largest difference between an ONNX Runtime logit and torch's that counts as the same."""
EXAMPLE_BATCH = 4
"""Beats of the example batch the exporter traces (at least 2: a batch of 1 would be taken
as a fixed size)."""
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
CapturedCall = tuple[tuple[Any, ...], dict[str, Any]]


def sidecar_path(onnx_path: Path) -> Path:
    """The beat spec written beside an ONNX file: same name, ``.json``."""
    return onnx_path.with_suffix(".json")


def refuse_adaptation(config: Config, what: str) -> None:
    """An ONNX graph holds the batch-norm statistics it was exported with, so it cannot adapt
    to each record as ``inference.adapt`` asks: refuse, in one line, rather than classify
    differently from ``evaluate`` and ``predict``."""
    if config.inference.adapt != "none":
        raise UserError(
            f"{what}: the model's inference.adapt = {config.inference.adapt!r} re-estimates its "
            f"batch-norm statistics on each record, which an ONNX graph's fixed statistics "
            f"cannot; classify with the torch model (predict without --onnx)"
        )


def export_onnx(
    model: nn.Module, config: Config, class_names: Sequence[str], path: Path
) -> dict[str, Any]:
    """Write ``path`` (the model in ONNX, weights included) and its sidecar; return the spec.
    The model is moved to the CPU and put in eval mode (the exported graph is inference's).

    Raises :class:`UserError` naming the layer when the model cannot be exported.
    """
    served = ServedClassifier(model.cpu()).eval()
    spec = beat_spec(config, class_names, model)
    example = synthetic_inputs(spec, EXAMPLE_BATCH)
    args = tuple(torch.from_numpy(example[name]) for name in served.input_names())
    batch = torch.export.Dim("batch")
    try:
        with quiet_exporter():
            program = torch.onnx.export(
                served,
                args,
                input_names=served.input_names(),
                output_names=[LOGITS_OUTPUT],
                dynamic_shapes={name: {0: batch} for name in served.input_names()},
                dynamo=True,
            )
    except Exception as exc:  # the exporter raises many kinds: each means "cannot export"
        raise export_failure(served, args, exc) from None
    assert program is not None  # dynamo=True always returns the program
    proto = program.model_proto
    spec["opset"] = next(entry.version for entry in proto.opset_import if entry.domain == "")
    spec["model_file"] = path.name
    with atomic_write(path) as stream:
        stream.write(proto.SerializeToString())
    with atomic_write(sidecar_path(path)) as stream:
        stream.write(json.dumps(spec, indent=2).encode("utf-8"))
    return spec


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """The exporter prints its progress on stdout; torch logs, warns and prints on stderr
    about things that do not concern a user (torchvision's absence, deprecations, the graph of
    a failed trace, which the one-line error replaces): silence all of it. Torch's loggers
    take their level from the ``torch`` logger."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_failure(served: ServedClassifier, args: tuple[Any, ...], exc: Exception) -> UserError:
    """One line naming the deepest layer that fails to export on its own, and why."""
    calls = capture_calls(served.model, args)
    found = failing_layer(served.model, calls, prefix="")
    name, layer, error = found or ("the model's own forward", served.model, exc)
    return UserError(
        f"cannot export the model to ONNX: layer {name} ({type(layer).__name__}) fails: "
        f"{first_line(error)}"
    )


def capture_calls(model: nn.Module, args: tuple[Any, ...]) -> dict[nn.Module, CapturedCall]:
    """Each block's arguments in one forward pass of ``model`` (its first call)."""
    calls: dict[nn.Module, CapturedCall] = {}

    def record(module: nn.Module, call_args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.setdefault(module, (call_args, kwargs))

    handles = [
        module.register_forward_pre_hook(record, with_kwargs=True) for module in model.modules()
    ]
    try:
        with torch.inference_mode():
            ServedClassifier(model)(*args)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def failing_layer(
    parent: nn.Module, calls: Mapping[nn.Module, CapturedCall], prefix: str
) -> tuple[str, nn.Module, Exception] | None:
    """The first child of ``parent`` (in forward order) that fails to export alone, or the
    deepest failing block inside it; None when every child exports."""
    for name, child in parent.named_children():
        if child not in calls:
            continue
        error = export_error(child, calls[child])
        if error is not None:
            dotted = f"{prefix}{name}"
            return failing_layer(child, calls, f"{dotted}.") or (dotted, child, error)
    return None


def export_error(module: nn.Module, call: CapturedCall) -> Exception | None:
    """Why ``module`` alone cannot be exported with the arguments it received, or None."""
    args, kwargs = call
    try:
        with quiet_exporter():
            torch.onnx.export(module, args, kwargs=kwargs, dynamo=True)
    except Exception as exc:  # the exporter raises many kinds: each means "cannot export"
        return exc
    return None


def first_line(error: BaseException) -> str:
    """The root cause's first line, without colour codes, at most 300 characters."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = ANSI_ESCAPE.sub("", str(error)).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line[:300]


@dataclass(frozen=True)
class Parity:
    """ONNX Runtime against torch on the same beats."""

    beats: int
    max_abs_diff: float
    same_labels: int

    @property
    def holds(self) -> bool:
        """Every label the same and every logit within :data:`PARITY_TOLERANCE`."""
        return self.same_labels == self.beats and self.max_abs_diff <= PARITY_TOLERANCE

    def describe(self) -> str:
        return (
            f"same label on {self.same_labels}/{self.beats} beats, largest logit difference "
            f"{self.max_abs_diff:.1e} (allowed {PARITY_TOLERANCE:g})"
        )


def check_parity(onnx_path: Path, model: nn.Module, inputs: Inputs) -> Parity:
    """Run the same inputs through the exported file (ONNX Runtime, CPU) and through torch."""
    exported = OnnxClassifier(onnx_path).logits(inputs)
    reference = torch_logits(ServedClassifier(model.cpu()), inputs)
    return Parity(
        beats=len(reference),
        max_abs_diff=float(np.abs(exported - reference).max()),
        same_labels=int((exported.argmax(axis=1) == reference.argmax(axis=1)).sum()),
    )


class OnnxClassifier:
    """An exported model run by ONNX Runtime on the CPU, with the beat spec beside it."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        """``threads``: ONNX Runtime's intra-op threads; 0 lets it choose (one per core)."""
        self.spec = read_sidecar(path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ONNX Runtime raises its own kinds for unreadable files
            raise DataError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
        self.input_names = [node.name for node in self.session.get_inputs()]

    def logits(self, inputs: Inputs) -> NDArray[np.float32]:
        """Logits ``(n, classes)`` of the named inputs (``beats`` and, when used, ``rr``)."""
        feed = {name: inputs[name] for name in self.input_names}
        outputs = self.session.run([LOGITS_OUTPUT], feed)
        logits: NDArray[np.float32] = np.asarray(outputs[0], dtype=np.float32)
        return logits

    def probabilities(self, beats: BeatSet) -> NDArray[np.float32]:
        """Class probabilities ``(n, classes)`` of a set of beats cut by the spec's rules."""
        return softmax(self.logits(beat_inputs(beats, self.spec)))


def read_sidecar(onnx_path: Path) -> dict[str, Any]:
    """The beat spec beside an ONNX file; a missing or unreadable one is a DataError."""
    path = sidecar_path(onnx_path)
    try:
        spec: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"{path}: missing; the ONNX model's beat spec is written beside it"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable beat spec ({exc})") from None
    return spec
