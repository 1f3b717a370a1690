"""What a run leaves on disk: the model checkpoint, ``report.json`` and the confusion matrix.

Every file is written with :func:`ecgtune.data.files.atomic_write` (a temporary file moved
into place), so an interrupted run never leaves half a file under the final name.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from pickle import UnpicklingError
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay
from torch import nn

from ecgtune.config import Config, validate_config
from ecgtune.data.files import atomic_write
from ecgtune.errors import DataError
from ecgtune.metrics import ClassificationMetrics
from ecgtune.models import build_model
from ecgtune.models.ensemble import MAX_MEMBERS, Ensemble, member_count

CHECKPOINT_FORMAT = 1
ZIP_MAGIC = b"PK\x03\x04"
"""How every file ``torch.save`` writes begins (a zip archive)."""
PICKLE_PROTOCOL = b"\x80"
"""How a pickle of protocol 2 or later begins."""
GLOBAL_REFUSED = re.compile(r"(?:Unsupported global: |unsupported )GLOBAL ([\w.]+)")
"""torch's words for a global that ``weights_only`` refuses (two wordings, by the module)."""
CHECKPOINT_NAME = "best_model.pt"
"""The model a run leaves behind (a search's best trial, a training's best epoch)."""


def save_checkpoint(
    path: Path, model: nn.Module, config: Config, class_names: Sequence[str]
) -> None:
    """The model's weights with the resolved config (as a dict) and the class names."""
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "state_dict": {name: tensor.cpu() for name, tensor in model.state_dict().items()},
        "config": config.model_dump(mode="json"),
        "class_names": list(class_names),
        "members": member_count(model),
    }
    with atomic_write(path) as stream:
        torch.save(checkpoint, stream)


def load_checkpoint(path: Path) -> tuple[nn.Module, Config, tuple[str, ...]]:
    """The model (on the CPU, eval mode), its config and class names, from ``save_checkpoint``.

    Only a zip archive (what ``torch.save`` writes) reaches ``torch.load``, with
    ``weights_only=True``: a bare pickle is refused unread, and torch's warnings about a file
    it refuses anyway are silenced, so the refusal is one line."""
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        with path.open("rb") as stream:
            head = stream.read(len(ZIP_MAGIC))
        if head != ZIP_MAGIC:
            raise DataError(f"{path}: {not_a_torch_file(head)}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        config = validate_config(checkpoint["config"], source=str(path))
        class_names = tuple(checkpoint["class_names"])
        model = build_classifier(config, len(class_names), checkpoint.get("members", 1))
        model.load_state_dict(checkpoint["state_dict"])
    except (OSError, RuntimeError, KeyError, TypeError, EOFError, UnpicklingError) as exc:
        raise DataError(f"{path}: {checkpoint_problem(exc)}") from None
    return model.eval(), config, class_names


def not_a_torch_file(head: bytes) -> str:
    """Why a file that is no zip archive is refused: a bare pickle (which would run any code
    it names when unpickled) by name, anything else as not a checkpoint."""
    if head.startswith(PICKLE_PROTOCOL):
        return (
            "refused unread: a bare pickle, not a torch checkpoint (torch.save writes a zip "
            "archive), and unpickling a file runs any code it names"
        )
    return "not a readable ecgtune checkpoint (not the zip archive that torch.save writes)"


def build_classifier(config: Config, n_classes: int, members: object) -> nn.Module:
    """The model a checkpoint holds: one classifier, or an :class:`Ensemble` of ``members``."""
    if not isinstance(members, int) or isinstance(members, bool):
        raise TypeError(f"its members entry is {members!r}, not a count")
    if members == 1:
        return build_model(config, n_classes)
    if not 2 <= members <= MAX_MEMBERS:
        raise TypeError(f"it holds {members} models; an ensemble holds 2 to {MAX_MEMBERS}")
    return Ensemble([build_model(config, n_classes) for _ in range(members)])


def checkpoint_problem(exc: BaseException) -> str:
    """Why a checkpoint was not loaded, in one line (torch's own messages run to several
    paragraphs): a file that names code to run (a class or function, which
    ``torch.load(weights_only=True)`` never calls) is refused by name, and so is one that
    holds anything else ``weights_only`` refuses."""
    text = str(exc).strip()
    if found := GLOBAL_REFUSED.search(text):
        return (
            f"refused: it names {found.group(1)} to run when loaded, and checkpoints are "
            f"loaded with torch.load(weights_only=True), which runs nothing; not an ecgtune "
            f"checkpoint"
        )
    if isinstance(exc, UnpicklingError):
        return (
            "refused: it holds what torch.load(weights_only=True) does not load, which no "
            "ecgtune checkpoint holds"
        )
    reason = text.splitlines()[0][:200] if text else type(exc).__name__
    return f"not a readable ecgtune checkpoint ({reason})"


def write_report(
    run_dir: Path,
    metrics: ClassificationMetrics,
    class_names: Sequence[str],
    extra: dict[str, Any],
    json_name: str = "report.json",
    figure_name: str = "confusion_matrix.png",
    *,
    title: str = "",
) -> None:
    """``run_dir/json_name``: the metrics first (``"metrics"``), then ``extra`` in its order
    (put long parts such as the trial table last); and ``run_dir/figure_name``: the confusion
    matrix in counts and row-normalised (recall), under ``title`` (which split, which model;
    the beat count is added)."""
    if tuple(class_names) != metrics.class_names:
        raise ValueError(
            f"class names {class_names} differ from the metrics' {metrics.class_names}"
        )
    text = json.dumps({"metrics": metrics.to_json(), **extra}, indent=2)
    with atomic_write(run_dir / json_name) as stream:
        stream.write(text.encode("utf-8"))
    with atomic_write(run_dir / figure_name) as stream:
        figure_title = (
            f"{title} — {metrics.n_beats:,} beats" if title else f"{metrics.n_beats:,} beats"
        )
        confusion_figure(metrics, figure_title).savefig(stream, format="png", dpi=120)


def confusion_figure(metrics: ClassificationMetrics, title: str) -> Figure:
    """Two panels: beats per (true, predicted) class, and the same divided by each row's
    support (the diagonal is each class's recall); rows true, columns predicted. An absent
    class's row reads "n/a" in the second panel: it has no recall, not a recall of 0.

    A bare :class:`Figure` (no pyplot state) renders with Agg when saved as PNG, on any machine.
    """
    counts = metrics.confusion
    support = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
    figure = Figure(figsize=(11, 5.2), layout="constrained")
    panels = figure.subplots(1, 2)
    for axes, matrix, panel_title, value_format in (
        (panels[0], counts, "Beats", "d"),
        (panels[1], rates, "Share of the true class (recall on the diagonal)", ".2f"),
    ):
        display = ConfusionMatrixDisplay(matrix, display_labels=list(metrics.class_names))
        display.plot(ax=axes, values_format=value_format, colorbar=False, cmap="Blues")
        axes.set_title(panel_title)
    for row, name in enumerate(metrics.class_names):
        if name in metrics.absent_classes:
            for text in display.text_[row]:
                text.set_text("n/a")
    figure.suptitle(
        f"{title}: accuracy {metrics.accuracy:.4f}, macro-F1 {metrics.macro_f1:.4f}"
        + (f" (absent: {', '.join(metrics.absent_classes)})" if metrics.absent_classes else "")
    )
    return figure
