"""ONNX export of trained tiny models (CNN with SE, residual and attention; GRU; LSTM): the
file's interface, its sidecar, and parity with torch on every beat of a real test split."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from ecgtune.commands.export import export_command
from ecgtune.config import Config, validate_config
from ecgtune.data import load_dataset
from ecgtune.data.beats import RR_COLUMNS, rr_column_indices
from ecgtune.data.dataset import BeatSet, Dataset
from ecgtune.errors import DataError, UserError
from ecgtune.export import beat_inputs, synthetic_inputs
from ecgtune.export.onnx import (
    ONNX_NAME,
    PARITY_TOLERANCE,
    OnnxClassifier,
    check_parity,
    export_onnx,
    read_sidecar,
    sidecar_path,
)
from ecgtune.models import build_model
from ecgtune.report import CHECKPOINT_NAME, save_checkpoint
from ecgtune.training import (
    autocast_context,
    beats_to_tensors,
    predict,
    predict_logits,
    train_model,
)
from tests.conftest import QUICK_RECORDS, TINY_CNN, deep_merge, find_mitdb_dir


@dataclass(frozen=True)
class TrainedRun:
    """A tiny model trained on real beats and saved as a run directory would hold it."""

    run_dir: Path
    config: Config
    dataset: Dataset
    model: nn.Module


def trained_run(
    folder: Path, model: dict[str, Any], epochs: int = 1, split: str = "intra"
) -> TrainedRun:
    """Train ``model`` (``[model]`` keys) on a few real records (split ``split``) and save
    ``best_model.pt`` in ``folder/run``."""
    raw = {
        "seed": 7,
        "data": {
            "raw_dir": str(find_mitdb_dir()),
            "records": QUICK_RECORDS,
            "max_beats_per_record": 400,
            "split": split,
            "cache_dir": str(folder / "cache"),
        },
        "model": model,
        "training": {"epochs": epochs, "batch_size": 64, "num_threads": 1, "device": "cpu"},
        "tracking": {"output_dir": str(folder / "runs")},
    }
    config = validate_config(raw, source="test config")
    dataset = load_dataset(config)
    result = train_model(config, dataset)
    run_dir = folder / "run"
    save_checkpoint(run_dir / CHECKPOINT_NAME, result.model, config, dataset.class_names)
    return TrainedRun(run_dir, config, dataset, result.model.eval())


MODELS = {
    "cnn-se-residual-attention-rr": deep_merge(
        TINY_CNN, {"attention": True, "attention_heads": 4, "rr_features": "all"}
    ),
    "gru-rr": deep_merge(
        TINY_CNN, {"kind": "rnn", "rnn_cell": "gru", "hidden_size": 16, "rr_features": "raw"}
    ),
    "lstm-raw-samples": deep_merge(
        TINY_CNN,
        {
            "kind": "rnn",
            "rnn_cell": "lstm",
            "hidden_size": 8,
            "rnn_layers": 1,
            "conv_frontend": False,
            "readout": "mean",
        },
    ),
}
CLASSES = ("N", "S", "V", "F", "Q")


@pytest.fixture(scope="module", params=list(MODELS))
def exported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> TrainedRun:
    """A trained run exported by the export command (default target: RUN_DIR/model.onnx)."""
    run = trained_run(tmp_path_factory.mktemp(request.param), MODELS[request.param])
    assert export_command(run.run_dir) == 0
    return run


@pytest.mark.slow
def test_onnx_file_has_named_inputs_a_dynamic_batch_and_logits(exported: TrainedRun) -> None:
    graph = onnx.load(exported.run_dir / ONNX_NAME).graph
    uses_rr = exported.config.model.rr_features != "none"
    assert [node.name for node in graph.input] == (["beats", "rr"] if uses_rr else ["beats"])
    assert [node.name for node in graph.output] == ["logits"]
    for node in [*graph.input, *graph.output]:
        batch = node.type.tensor_type.shape.dim[0]
        assert batch.dim_param and not batch.HasField("dim_value"), f"{node.name}: fixed batch"
    beats_dims = [dim.dim_value for dim in graph.input[0].type.tensor_type.shape.dim[1:]]
    assert beats_dims == [exported.config.data.input_channels, exported.config.data.beat_length]
    if uses_rr:
        rr_width = graph.input[1].type.tensor_type.shape.dim[1].dim_value
        model = exported.config.model
        selected = rr_column_indices(model.rr_features, model.rr_reference, model.rr_irregularity)
        assert rr_width == len(selected)


def test_sidecar_says_how_to_cut_and_feed_a_beat(exported: TrainedRun) -> None:
    spec = json.loads(sidecar_path(exported.run_dir / ONNX_NAME).read_text(encoding="utf-8"))
    data = exported.config.data
    assert spec["class_names"] == list(exported.dataset.class_names)
    assert (spec["target_hz"], spec["beat_length"]) == (data.target_hz, data.beat_length)
    model = exported.config.model
    selected = rr_column_indices(model.rr_features, model.rr_reference, model.rr_irregularity)
    assert spec["rr_columns"] == [RR_COLUMNS[index] for index in selected]
    rules = spec["beat_rules"]
    for key in ("leads", "window", "beat_span", "normalise", "baseline", "rr_local_beats"):
        assert rules[key] == getattr(data, key), key
    assert not {"records", "raw_dir", "split", "cache_dir"} & set(rules)
    assert spec["model_file"] == ONNX_NAME


def ecgtune_logits(run: TrainedRun, beats: BeatSet) -> NDArray[np.float32]:
    """The logits the trainer and ``evaluate`` compute: the model's own forward on the beats
    and every RR column, untouched by the export code."""
    signals, rr, _ = beats_to_tensors(beats, torch.device("cpu"))
    fp32 = autocast_context("fp32", torch.device("cpu"))
    logits: NDArray[np.float32] = predict_logits(run.model, signals, rr, fp32).numpy()
    return logits


def test_onnx_runtime_matches_torch_on_every_test_beat(exported: TrainedRun) -> None:
    """Same label on every beat of the real test split and logits within 1e-4, whatever the
    batch (the whole split at once, one beat): the exported file fed by the beat spec against
    ecgtune's own torch forward."""
    classifier = OnnxClassifier(exported.run_dir / ONNX_NAME)
    test = exported.dataset.test
    assert len(test) > 100
    reference = ecgtune_logits(exported, test)
    exported_logits = classifier.logits(beat_inputs(test, classifier.spec))
    assert np.abs(exported_logits - reference).max() <= PARITY_TOLERANCE
    assert exported_logits.argmax(axis=1).tolist() == reference.argmax(axis=1).tolist()
    torch_labels = predict(exported.model, test, exported.config)
    assert classifier.probabilities(test).argmax(axis=1).tolist() == torch_labels.tolist()
    one_beat = test.take(np.array([len(test) - 1]))
    assert classifier.probabilities(one_beat).argmax(axis=1).tolist() == torch_labels[-1:].tolist()


def test_parity_check_agrees_on_the_test_split(exported: TrainedRun) -> None:
    """The check the export command runs, on real beats: every label, logits within 1e-4."""
    path = exported.run_dir / ONNX_NAME
    parity = check_parity(
        path, exported.model, beat_inputs(exported.dataset.test, read_sidecar(path))
    )
    assert parity.holds, parity.describe()
    assert parity.beats == len(exported.dataset.test)


class DataDependentGate(nn.Module):
    """A layer with a Python branch on the data: torch.export cannot trace it."""

    def forward(self, x: Tensor) -> Tensor:
        return x if float(x.mean()) > 0 else -x


@pytest.mark.slow
def test_a_layer_that_cannot_be_exported_is_named_in_one_line(tmp_path: Path) -> None:
    config = validate_config({"model": deep_merge(TINY_CNN, {"rr_features": "raw"})})
    model = build_model(config, len(CLASSES)).eval()
    stage = model.encoder.get_submodule("stage2")
    stage.add_module("gate", DataDependentGate())
    target = tmp_path / ONNX_NAME
    with pytest.raises(UserError) as caught:
        export_onnx(model, config, CLASSES, target)
    message = str(caught.value)
    assert "layer encoder.stage2.gate (DataDependentGate)" in message
    assert "\n" not in message
    assert not target.exists() and not sidecar_path(target).exists()


def untrained_run(run_dir: Path) -> tuple[Config, nn.Module]:
    """A run directory holding an untrained tiny CNN: enough where only the file matters."""
    config = validate_config({"model": TINY_CNN})
    model = build_model(config, len(CLASSES)).eval()
    save_checkpoint(run_dir / CHECKPOINT_NAME, model, config, CLASSES)
    return config, model


def test_export_writes_where_out_says(tmp_path: Path) -> None:
    untrained_run(tmp_path / "run")
    out = tmp_path / "elsewhere" / "beats.onnx"
    assert export_command(tmp_path / "run", "onnx", out) == 0
    assert OnnxClassifier(out).spec["model_file"] == "beats.onnx"
    assert sidecar_path(out).name == "beats.json"
    assert not (tmp_path / "run" / ONNX_NAME).exists()


@pytest.mark.parametrize(
    ("fmt", "out", "expected"),
    [
        ("torchscript", None, "--format 'torchscript': not a format ecgtune exports; use onnx"),
        ("onnx", "model.bin", "the file name must end in .onnx"),
    ],
)
def test_bad_export_options_are_one_line_errors(
    tmp_path: Path, fmt: str, out: str | None, expected: str
) -> None:
    with pytest.raises(UserError, match=expected):
        export_command(tmp_path, fmt, tmp_path / out if out else None)


def test_a_run_without_checkpoint_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="checkpoint not found"):
        export_command(tmp_path)


@pytest.mark.slow
def test_onnx_file_without_its_sidecar_is_refused(tmp_path: Path) -> None:
    untrained_run(tmp_path)
    export_command(tmp_path)
    sidecar_path(tmp_path / ONNX_NAME).unlink()
    with pytest.raises(DataError, match=r"model\.json: missing"):
        OnnxClassifier(tmp_path / ONNX_NAME)


def test_parity_sees_a_wrong_export(tmp_path: Path) -> None:
    """The check compares real outputs: another model's weights fail it."""
    config, model = untrained_run(tmp_path)
    spec = export_onnx(model, config, CLASSES, tmp_path / ONNX_NAME)
    other = build_model(config, len(CLASSES)).eval()
    assert not check_parity(tmp_path / ONNX_NAME, other, synthetic_inputs(spec, 64)).holds
