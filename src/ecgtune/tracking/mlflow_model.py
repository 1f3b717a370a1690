"""The best model as an MLflow Model on its run: loadable with ``mlflow.pyfunc.load_model``,
servable with ``mlflow models serve``, and optionally registered.

It is a ``pyfunc`` model (:class:`BeatClassifierModel`) rather than MLflow's PyTorch flavour:
the network takes two inputs when it reads RR features and the answer is a label with class
probabilities, not raw logits. Its signature is tensor-based, with the inputs of
:mod:`ecgtune.export`: ``beats`` ``(-1, channels, beat_length)`` and, when the model reads RR
features, ``rr`` ``(-1, len(rr_columns))``, float32; the output has one row per beat:
``label`` (the class name) and ``p_<class>`` for every class. A REST client posts
``{"inputs": {"beats": [...], "rr": [...]}}`` to ``/invocations``.

Everything the model needs travels with it: the checkpoint (weights, resolved config, class
names), the resolved config as TOML, the beat spec (how to cut a beat, the RR columns), the
ecgtune source (``code_paths``) and ecgtune's dependencies pinned to the versions that
trained it. It is logged through :class:`mlflow.models.Model` with the run's id, so no
"active run" state is needed; with ``tracking.register_model`` it becomes a new version of
that registered model, tagged with the test figures.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc.model import PythonModel, PythonModelContext
from mlflow.types import ColSpec, Schema, TensorSpec
from numpy.typing import NDArray
from packaging.requirements import Requirement

import ecgtune
from ecgtune.config import config_toml
from ecgtune.data.dataset import BeatSet
from ecgtune.export import (
    BEATS_INPUT,
    RR_INPUT,
    Inputs,
    ServedClassifier,
    beat_inputs,
    beat_spec,
    softmax,
    torch_logits,
)
from ecgtune.report import CHECKPOINT_NAME, load_checkpoint
from ecgtune.tracking.mlflow_runs import MlflowTracker, bounded, run_params

MODEL_NAME = "model"
"""The model's name on its run: ``runs:/<run_id>/model``."""
CHECKPOINT_ARTIFACT = "checkpoint"
SPEC_ARTIFACT = "beat_spec"
CONFIG_ARTIFACT = "config"
LABEL_COLUMN = "label"
EXAMPLE_BEATS = 2
"""Beats of the input example stored with the model (the first of the split given)."""
TEST_TAG_PREFIX = "test/"
PICKLE_NOTICE = "Passing a Python object as `python_model`"
PROGRESS_BAR_SETTING = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


class BeatClassifierModel(PythonModel):
    """The checkpoint's network behind MLflow's pyfunc interface (torch on the CPU, fp32)."""

    _skip_type_hint_validation = True
    """The input is a dict of named tensors, checked against the tensor signature; MLflow's
    own type-hint validation knows only ``list[...]`` inputs and warns about any other."""

    def load_context(self, context: PythonModelContext) -> None:
        model, _, class_names = load_checkpoint(Path(context.artifacts[CHECKPOINT_ARTIFACT]))
        self.served = ServedClassifier(model).eval()
        self.class_names = class_names

    def predict(  # type: ignore[no-untyped-def]  # model_input: see below
        self,
        context: PythonModelContext,
        model_input,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """One row per beat: the label and the probability of every class.

        ``model_input`` (named float32 arrays, see :func:`named_inputs`) has no annotation on
        purpose: MLflow infers a signature from it when it logs the model and warns for any
        type but ``list[...]``; the tensor signature given at logging describes it."""
        logits = torch_logits(self.served, named_inputs(model_input))
        return prediction_frame(logits, self.class_names)


def named_inputs(model_input: Any) -> Inputs:
    """The named tensors MLflow passes (a dict after signature enforcement; a bare array is
    the beats alone), as float32 arrays."""
    if isinstance(model_input, np.ndarray):
        model_input = {BEATS_INPUT: model_input}
    if not isinstance(model_input, dict):
        raise TypeError(
            f"expected the named inputs {BEATS_INPUT!r} (and {RR_INPUT!r}), "
            f"got {type(model_input).__name__}"
        )
    return {name: np.asarray(value, dtype=np.float32) for name, value in model_input.items()}


def prediction_frame(logits: NDArray[np.float32], class_names: tuple[str, ...]) -> pd.DataFrame:
    probabilities = softmax(logits)
    frame = pd.DataFrame({LABEL_COLUMN: np.asarray(class_names)[logits.argmax(axis=1)]})
    for index, name in enumerate(class_names):
        frame[f"p_{name}"] = probabilities[:, index]
    return frame


def model_signature(spec: Mapping[str, Any]) -> ModelSignature:
    """Tensor inputs of the spec's shapes (batch axis -1); label and probability columns."""
    float32 = np.dtype(np.float32)
    shape = (-1, spec["channels"], spec["beat_length"])
    inputs: list[ColSpec | TensorSpec] = [TensorSpec(float32, shape, BEATS_INPUT)]
    if spec["rr_columns"]:
        inputs.append(TensorSpec(float32, (-1, len(spec["rr_columns"])), RR_INPUT))
    outputs: list[ColSpec | TensorSpec] = [ColSpec("string", LABEL_COLUMN)]
    outputs += [ColSpec("float", f"p_{name}") for name in spec["class_names"]]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def pip_requirements() -> list[str]:
    """ecgtune's own dependencies pinned to the versions installed here, for a server that
    rebuilds the environment (``--env-manager virtualenv``). Local version labels (torch's
    ``+cpu``) are dropped: no package index serves them."""
    texts = importlib.metadata.requires("ecgtune") or []
    names = [Requirement(text).name for text in texts if Requirement(text).marker is None]
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in names]


def log_model(
    tracker: MlflowTracker,
    run_id: str,
    run_dir: Path,
    examples: BeatSet,
    register_as: str | None = None,
    test_metrics: Mapping[str, float] | None = None,
) -> ModelInfo:
    """Log ``run_dir/best_model.pt`` as the MLflow Model ``runs:/<run_id>/model``, with the
    first beats of ``examples`` as its input example; with ``register_as``, register it as a
    new version of that model, tagged ``test/<metric>`` with ``test_metrics``."""
    model, config, class_names = load_checkpoint(run_dir / CHECKPOINT_NAME)
    spec = beat_spec(config, class_names, model)
    example = beat_inputs(examples.take(np.arange(min(EXAMPLE_BEATS, len(examples)))), spec)
    with tempfile.TemporaryDirectory() as folder:
        artifacts = write_artifacts(Path(folder), run_dir, spec, config_toml(config))
        info = log_pyfunc(tracker, run_id, run_params(config), spec, artifacts, example)
    if register_as:
        register(tracker, info, register_as, test_metrics or {})
    return info


@bounded
def log_pyfunc(
    tracker: MlflowTracker,
    run_id: str,
    params: Mapping[str, Any],
    spec: Mapping[str, Any],
    artifacts: dict[str, str],
    example: Inputs,
) -> ModelInfo:
    """The pyfunc model as a logged model of the run's experiment (created here, so that it
    lands in the run's experiment without MLflow's "active experiment" state), its run
    linked; ``params`` (the run's resolved config) go with it."""
    mlflow.set_tracking_uri(tracker.uri)
    logged = tracker.client.create_logged_model(
        tracker.experiment_id,
        name=MODEL_NAME,
        source_run_id=run_id,
        params={key: str(value) for key, value in params.items()},
    )
    with quiet_model_logging():
        info: ModelInfo = Model.log(
            artifact_path=None,
            name=MODEL_NAME,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=logged.model_id,
            python_model=BeatClassifierModel(),
            artifacts=artifacts,
            signature=model_signature(spec),
            input_example=example,
            code_paths=[str(Path(ecgtune.__file__).parent)],
            pip_requirements=pip_requirements(),
            metadata={"class_names": spec["class_names"]},
        )
    return info


class DropNotice(logging.Filter):
    """Drops the log records whose message starts with one text."""

    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


@contextmanager
def quiet_model_logging() -> Iterator[None]:
    """While the model is logged, MLflow warns that a pickled ``python_model`` must be trusted
    (it is ecgtune's own class, pickled by reference, with no state) and draws progress bars
    for local copies; neither concerns an ecgtune user, who would see them at every run."""
    logger = logging.getLogger("mlflow.pyfunc")
    notice = DropNotice(PICKLE_NOTICE)
    logger.addFilter(notice)
    progress_bar = os.environ.get(PROGRESS_BAR_SETTING)
    os.environ[PROGRESS_BAR_SETTING] = "false"
    try:
        yield
    finally:
        logger.removeFilter(notice)
        if progress_bar is None:
            del os.environ[PROGRESS_BAR_SETTING]
        else:
            os.environ[PROGRESS_BAR_SETTING] = progress_bar


@bounded
def register(
    tracker: MlflowTracker, info: ModelInfo, name: str, test_metrics: Mapping[str, float]
) -> None:
    """A new version of the registered model ``name`` (created when missing), tagged with
    the test figures as ``test/<metric>``."""
    tags = {f"{TEST_TAG_PREFIX}{metric}": value for metric, value in test_metrics.items()}
    version = mlflow.register_model(info.model_uri, name, tags=tags)
    info.registered_model_version = version.version


def write_artifacts(
    folder: Path, run_dir: Path, spec: Mapping[str, Any], config_text: str
) -> dict[str, str]:
    """The files the model carries, by artifact name: the checkpoint, the beat spec (JSON)
    and the resolved config (TOML)."""
    spec_path = folder / "beat_spec.json"
    spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    config_path = folder / "config.toml"
    config_path.write_text(config_text, encoding="utf-8")
    return {
        CHECKPOINT_ARTIFACT: str(run_dir / CHECKPOINT_NAME),
        SPEC_ARTIFACT: str(spec_path),
        CONFIG_ARTIFACT: str(config_path),
    }
