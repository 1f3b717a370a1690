"""Whole-split classification metrics, all read off one confusion matrix.

Metrics are never averaged over batches: the caller predicts the whole split, and every figure
here comes from the single ``K x K`` confusion matrix of that split (rows: true class,
columns: predicted class, labels ``0..K-1``), so accuracy, recall and the rest always agree.

Absent classes. A class with no beats in ``y_true`` has no recall, F1 or specificity worth the
name (its recall is 0/0), so its per-class figures are ``None``, it is listed in
``absent_classes`` and it is left out of every macro average: macro precision, recall, F1 and
balanced accuracy are means over the classes *present* in ``y_true``. Its wrong predictions are
not lost: they sit in the confusion matrix and lower the recall of the classes they belong to.
A class that is present but never predicted has precision 0 (0/0 counted as 0, as scikit-learn's
``zero_division=0``), so never predicting a class cannot raise the macro precision.

AAMI terms (EC57): sensitivity Se = recall and positive predictivity +P = precision, reported
for the S (supraventricular ectopic) and V (ventricular ectopic) classes when they are present.

The field's summaries, for a search objective that weighs what inter-patient studies report:
``kappa`` (Cohen's, over all classes), ``jkappa``, the jκ index of Mar et al. (2011),
κ/2 + (S Se + S +P + V Se + V +P)/8, and ``sv_f1``, the mean of the S and V F1. They exist when
the class names hold S and V; a class absent from the split counts 0 in them (its Se and +P
have no value), so every fold and split is scored on the same scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import confusion_matrix

AAMI_REPORTED_CLASSES = ("S", "V")


@dataclass(frozen=True)
class ClassMetrics:
    """One class's figures; ``None`` where the class is absent from the split (support 0)."""

    name: str
    support: int
    predicted: int
    precision: float | None
    recall: float | None
    f1: float | None
    specificity: float | None


@dataclass(frozen=True)
class ClassificationMetrics:
    """Everything measured on one split; ``confusion[i, j]`` counts true ``i`` predicted ``j``."""

    class_names: tuple[str, ...]
    confusion: NDArray[np.int64]
    accuracy: float
    balanced_accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_class: tuple[ClassMetrics, ...]
    absent_classes: tuple[str, ...]

    @property
    def n_beats(self) -> int:
        return int(self.confusion.sum())

    @property
    def kappa(self) -> float:
        """Cohen's κ: agreement beyond what the class frequencies give by chance."""
        total = self.confusion.sum()
        chance = float((self.confusion.sum(axis=1) * self.confusion.sum(axis=0)).sum()) / total**2
        return (self.accuracy - chance) / (1.0 - chance) if chance < 1.0 else 0.0

    def ectopic_summaries(self) -> dict[str, float]:
        """``jkappa`` and ``sv_f1`` (module docstring) when the classes hold S and V, else {}."""
        if not set(AAMI_REPORTED_CLASSES) <= set(self.class_names):
            return {}
        found = {item.name: item for item in self.per_class}
        s, v = (found[name] for name in AAMI_REPORTED_CLASSES)
        detection = sum((item.recall or 0.0) + (item.precision or 0.0) for item in (s, v))
        return {
            "jkappa": self.kappa / 2 + detection / 8,
            "sv_f1": ((s.f1 or 0.0) + (v.f1 or 0.0)) / 2,
        }

    def aami(self) -> dict[str, float]:
        """Se and +P of the AAMI S and V classes that are present: ``se_S``, ``ppv_S``, ..."""
        figures: dict[str, float] = {}
        for item in self.per_class:
            if item.name in AAMI_REPORTED_CLASSES and item.recall is not None:
                assert item.precision is not None
                figures[f"se_{item.name}"] = item.recall
                figures[f"ppv_{item.name}"] = item.precision
        return figures

    def as_flat_dict(self) -> dict[str, float]:
        """Flat ``name -> value`` for MLflow, TensorBoard and early stopping.

        Keys: ``macro_f1``, ``macro_precision``, ``macro_recall``, ``accuracy``,
        ``balanced_accuracy``, ``kappa``, ``jkappa`` and ``sv_f1`` (with S and V), then
        ``precision_<c>``, ``recall_<c>``, ``f1_<c>``, ``specificity_<c>`` for every class
        present: one name per figure (the AAMI Se and +P of S and V are ``recall_S`` and
        ``precision_S``...; :meth:`aami` names them so for reports). Absent classes have no
        keys (a tracker cannot log ``None``).
        """
        flat = {
            "macro_f1": self.macro_f1,
            "macro_precision": self.macro_precision,
            "macro_recall": self.macro_recall,
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "kappa": self.kappa,
            **self.ectopic_summaries(),
        }
        for item in self.per_class:
            for key in ("precision", "recall", "f1", "specificity"):
                value = getattr(item, key)
                if value is not None:
                    flat[f"{key}_{item.name}"] = value
        return flat

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (not a string): summary figures, per-class rows, the matrix."""
        return {
            "n_beats": self.n_beats,
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "macro_precision": self.macro_precision,
            "macro_recall": self.macro_recall,
            "macro_f1": self.macro_f1,
            "kappa": self.kappa,
            **self.ectopic_summaries(),
            "macro_average_over": "classes present in the true labels",
            "absent_classes": list(self.absent_classes),
            "per_class": {
                item.name: {
                    "support": item.support,
                    "predicted": item.predicted,
                    "precision": item.precision,
                    "recall": item.recall,
                    "f1": item.f1,
                    "specificity": item.specificity,
                }
                for item in self.per_class
            },
            "aami": self.aami(),
            "class_names": list(self.class_names),
            "confusion_matrix": self.confusion.tolist(),
            "confusion_matrix_orientation": "rows: true class, columns: predicted class",
        }


def compute_metrics(
    y_true: ArrayLike, y_pred: ArrayLike, class_names: Sequence[str]
) -> ClassificationMetrics:
    """Metrics of a whole split from its one confusion matrix (labels are ``0..K-1``)."""
    names = tuple(class_names)
    if np.size(y_true) == 0:  # before scikit-learn, which refuses it in its own words
        raise ValueError("no beats to evaluate: the split is empty")
    matrix = confusion_matrix(y_true, y_pred, labels=np.arange(len(names))).astype(np.int64)
    return metrics_from_confusion(matrix, names)


def metrics_from_confusion(
    matrix: NDArray[np.int64], class_names: tuple[str, ...]
) -> ClassificationMetrics:
    """Per-class and summary figures from a confusion matrix (rows true, columns predicted)."""
    total = int(matrix.sum())
    true_positive = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    per_class = tuple(
        _class_metrics(
            name,
            tp=int(true_positive[k]),
            support=int(support[k]),
            predicted=int(predicted[k]),
            total=total,
        )
        for k, name in enumerate(class_names)
    )
    return ClassificationMetrics(
        class_names=class_names,
        confusion=matrix,
        accuracy=float(true_positive.sum() / total),
        balanced_accuracy=_mean([item.recall for item in per_class]),
        macro_precision=_mean([item.precision for item in per_class]),
        macro_recall=_mean([item.recall for item in per_class]),
        macro_f1=_mean([item.f1 for item in per_class]),
        per_class=per_class,
        absent_classes=tuple(item.name for item in per_class if item.support == 0),
    )


def record_bootstrap_confusions(
    labels: NDArray[np.int64],
    predicted: NDArray[np.int64],
    records: NDArray[np.str_],
    n_classes: int,
    draws: int,
    seed: int,
) -> NDArray[np.int64]:
    """``(draws, K, K)`` confusion matrices of a record-level bootstrap: each draw takes as many
    records as there are, with replacement (seeded), and sums their confusion matrices. Beats of
    one patient are not independent, so the interval of a figure over new patients comes from
    drawing patients, not beats; records in sorted order, so one seed gives the same draws for
    every model predicting the same records."""
    names, record_index = np.unique(records, return_inverse=True)
    cells = (record_index * n_classes + labels) * n_classes + predicted
    size = len(names) * n_classes * n_classes
    per_record = np.bincount(cells, minlength=size).reshape(len(names), n_classes, n_classes)
    chosen = np.random.default_rng(seed).integers(0, len(names), size=(draws, len(names)))
    counts = np.stack([np.bincount(row, minlength=len(names)) for row in chosen])
    draws_matrices: NDArray[np.int64] = np.einsum("dr,rij->dij", counts, per_record)
    return draws_matrices.astype(np.int64)


def _class_metrics(name: str, tp: int, support: int, predicted: int, total: int) -> ClassMetrics:
    if support == 0:
        return ClassMetrics(name, 0, predicted, None, None, None, None)
    false_positive = predicted - tp
    negatives = total - support
    precision = tp / predicted if predicted else 0.0
    recall = tp / support
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    specificity = (negatives - false_positive) / negatives if negatives else None
    return ClassMetrics(name, support, predicted, precision, recall, f1, specificity)


def _mean(values: Sequence[float | None]) -> float:
    """Mean over the classes present: an absent class's figures are ``None``."""
    return float(np.mean([value for value in values if value is not None]))


def minimises(metric: str) -> bool:
    """Whether a lower value of a validation figure is better: the one place that says so, for
    early stopping, the plateau schedule, pruning and the search alike (only the loss is)."""
    return metric == "loss"


def improves(score: float, best: float, metric: str, min_delta: float = 0.0) -> bool:
    """``score`` beats ``best`` by more than ``min_delta`` in ``metric``'s direction."""
    gain = best - score if minimises(metric) else score - best
    return gain > min_delta
