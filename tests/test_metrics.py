"""Whole-split metrics against confusion matrices worked out by hand."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import (
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    precision_score,
    recall_score,
)

from ecgtune.metrics import (
    ClassMetrics,
    compute_metrics,
    improves,
    minimises,
    record_bootstrap_confusions,
)


def labels_from_confusion(matrix: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """y_true, y_pred with ``matrix[i][j]`` beats of true class i predicted as j."""
    pairs = [(i, j) for i, row in enumerate(matrix) for j, count in enumerate(row)
             for _ in range(count)]  # fmt: skip
    true, predicted = zip(*pairs, strict=True)
    return np.array(true), np.array(predicted)


def test_every_figure_matches_the_hand_computed_confusion_matrix() -> None:
    # true N: 4 -> N, 1 -> S;  true S: 2 -> S, 1 -> V;  true V: 2 -> V.
    matrix = [[4, 1, 0], [0, 2, 1], [0, 0, 2]]
    y_true, y_pred = labels_from_confusion(matrix)
    metrics = compute_metrics(y_true, y_pred, ["N", "S", "V"])

    assert metrics.confusion.tolist() == matrix
    assert metrics.accuracy == pytest.approx(8 / 10)
    precision = {"N": Fraction(4, 4), "S": Fraction(2, 3), "V": Fraction(2, 3)}
    recall = {"N": Fraction(4, 5), "S": Fraction(2, 3), "V": Fraction(2, 2)}
    specificity = {"N": Fraction(5, 5), "S": Fraction(6, 7), "V": Fraction(7, 8)}
    f1 = {c: 2 * precision[c] * recall[c] / (precision[c] + recall[c]) for c in precision}
    for item in metrics.per_class:
        assert item.precision == pytest.approx(float(precision[item.name]))
        assert item.recall == pytest.approx(float(recall[item.name]))
        assert item.f1 == pytest.approx(float(f1[item.name]))
        assert item.specificity == pytest.approx(float(specificity[item.name]))
    assert [item.support for item in metrics.per_class] == [5, 3, 2]
    assert [item.predicted for item in metrics.per_class] == [4, 3, 3]
    assert metrics.macro_f1 == pytest.approx(float(sum(f1.values()) / 3))
    assert metrics.macro_precision == pytest.approx(float(sum(precision.values()) / 3))
    assert metrics.balanced_accuracy == pytest.approx(float(sum(recall.values()) / 3))
    assert metrics.absent_classes == ()
    # AAMI: Se = recall, +P = precision, for S and V.
    assert metrics.aami() == pytest.approx(
        {"se_S": 2 / 3, "ppv_S": 2 / 3, "se_V": 1.0, "ppv_V": 2 / 3}
    )
    # Cohen's kappa: chance agreement (5*4 + 3*3 + 2*3) / 100 = 0.35, so (0.8 - 0.35) / 0.65.
    kappa = (0.8 - 0.35) / 0.65
    assert metrics.kappa == pytest.approx(kappa)
    flat = metrics.as_flat_dict()
    assert flat["jkappa"] == pytest.approx(kappa / 2 + (2 / 3 + 2 / 3 + 1.0 + 2 / 3) / 8)
    assert flat["sv_f1"] == pytest.approx(float(f1["S"] + f1["V"]) / 2)


def test_agrees_with_scikit_learn_on_a_random_split() -> None:
    rng = np.random.default_rng(3)
    y_true = rng.choice(5, size=500, p=[0.7, 0.1, 0.1, 0.05, 0.05])
    y_pred = np.where(rng.random(500) < 0.8, y_true, rng.integers(0, 5, 500))
    metrics = compute_metrics(y_true, y_pred, ["N", "S", "V", "F", "Q"])
    flat = metrics.as_flat_dict()
    assert flat["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert flat["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    per_class_recall = recall_score(y_true, y_pred, average=None)
    per_class_precision = precision_score(y_true, y_pred, average=None)
    assert flat["kappa"] == pytest.approx(cohen_kappa_score(y_true, y_pred))
    for k, name in enumerate("NSVFQ"):
        assert flat[f"recall_{name}"] == pytest.approx(per_class_recall[k])
        assert flat[f"precision_{name}"] == pytest.approx(per_class_precision[k])


def test_absent_class_is_reported_as_absent_and_left_out_of_macro_averages() -> None:
    # F has no beats in y_true but is predicted once (a true N beat).
    matrix = [[2, 0, 0, 1], [0, 1, 0, 0], [0, 1, 3, 0], [0, 0, 0, 0]]
    y_true, y_pred = labels_from_confusion(matrix)
    metrics = compute_metrics(y_true, y_pred, ["N", "S", "V", "F"])

    assert metrics.absent_classes == ("F",)
    absent = metrics.per_class[3]
    assert (absent.support, absent.predicted) == (0, 1)
    assert (absent.precision, absent.recall, absent.f1, absent.specificity) == (None,) * 4
    present = [0, 1, 2]
    assert metrics.macro_f1 == pytest.approx(
        f1_score(y_true, y_pred, labels=present, average="macro")
    )
    assert metrics.macro_recall == pytest.approx((2 / 3 + 1 + 3 / 4) / 3)
    assert metrics.accuracy == pytest.approx(6 / 8)
    flat = metrics.as_flat_dict()
    assert not [key for key in flat if key.endswith("_F")]
    assert all(np.isfinite(value) for value in flat.values())
    assert json.loads(json.dumps(metrics.to_json()))["per_class"]["F"]["recall"] is None


def test_present_but_never_predicted_class_counts_as_zero_in_the_macro_average() -> None:
    matrix = [[3, 0], [2, 0]]
    y_true, y_pred = labels_from_confusion(matrix)
    metrics = compute_metrics(y_true, y_pred, ["N", "S"])
    s_class = metrics.per_class[1]
    assert (s_class.precision, s_class.recall, s_class.f1) == (0.0, 0.0, 0.0)
    assert metrics.macro_f1 == pytest.approx((2 * 0.6 * 1.0 / 1.6 + 0.0) / 2)
    assert metrics.aami() == {"se_S": 0.0, "ppv_S": 0.0}


def test_json_holds_the_matrix_and_every_class() -> None:
    metrics = compute_metrics([0, 1, 1, 2], [0, 1, 2, 2], ["N", "S", "V"])
    report = json.loads(json.dumps(metrics.to_json()))
    assert report["confusion_matrix"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert report["class_names"] == ["N", "S", "V"]
    assert report["per_class"]["S"] == {
        "support": 2,
        "predicted": 1,
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
        "specificity": 1.0,
    }
    assert report["n_beats"] == 4
    assert list(report) == [
        "n_beats",
        "accuracy",
        "balanced_accuracy",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "kappa",
        "jkappa",
        "sv_f1",
        "macro_average_over",
        "absent_classes",
        "per_class",
        "aami",
        "class_names",
        "confusion_matrix",
        "confusion_matrix_orientation",
    ]
    assert report["accuracy"] == 0.75
    assert report["balanced_accuracy"] == report["macro_recall"] == pytest.approx(5 / 6)
    assert report["macro_precision"] == pytest.approx(5 / 6)
    assert report["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert report["kappa"] == pytest.approx((0.75 - 5 / 16) / (1 - 5 / 16))
    assert report["macro_average_over"] == "classes present in the true labels"
    assert report["absent_classes"] == []
    assert report["aami"] == {"se_S": 0.5, "ppv_S": 1.0, "se_V": 1.0, "ppv_V": 0.5}
    assert report["confusion_matrix_orientation"] == "rows: true class, columns: predicted class"


def test_empty_split_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"^no beats to evaluate: the split is empty$"):
        compute_metrics(np.array([], dtype=np.int64), np.array([], dtype=np.int64), ["N", "S"])


def test_one_beat_of_one_class_has_no_specificity_and_every_class_its_row() -> None:
    """All beats N: N has no negatives, so no specificity; S and V, in neither labels nor
    predictions, still have their row and column of the matrix (of integers)."""
    metrics = compute_metrics([0], [0], ["N", "S", "V"])
    assert metrics.confusion.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert metrics.confusion.dtype == np.int64
    assert metrics.per_class[0] == ClassMetrics("N", 1, 1, 1.0, 1.0, 1.0, None)
    assert metrics.absent_classes == ("S", "V")
    assert metrics.as_flat_dict() == {
        "macro_f1": 1.0,
        "macro_precision": 1.0,
        "macro_recall": 1.0,
        "accuracy": 1.0,
        "balanced_accuracy": 1.0,
        "kappa": 0.0,
        "jkappa": 0.0,
        "sv_f1": 0.0,
        "precision_N": 1.0,
        "recall_N": 1.0,
        "f1_N": 1.0,
    }


def test_ectopic_summaries_count_an_absent_class_as_zero_and_need_s_and_v() -> None:
    """No S beat in the split: its Se and +P add nothing to jκ and its F1 nothing to sv_f1, so
    folds are scored on one scale; classes without S and V have no such figures."""
    y_true, y_pred = labels_from_confusion([[5, 1, 0], [0, 0, 0], [0, 1, 3]])
    flat = compute_metrics(y_true, y_pred, ["N", "S", "V"]).as_flat_dict()
    kappa = compute_metrics(y_true, y_pred, ["N", "S", "V"]).kappa
    assert flat["jkappa"] == pytest.approx(kappa / 2 + (3 / 4 + 1.0) / 8)
    assert flat["sv_f1"] == pytest.approx((2 * 0.75 / 1.75) / 2)
    no_v = compute_metrics([0, 1, 1], [0, 1, 0], ["N", "S", "V"]).as_flat_dict()
    assert no_v["sv_f1"] == pytest.approx((2 * 0.5 / 1.5) / 2)  # V's F1 counts 0
    only_s_and_v = compute_metrics([0, 1], [0, 1], ["S", "V"]).as_flat_dict()
    assert (only_s_and_v["jkappa"], only_s_and_v["sv_f1"]) == (1.0, 1.0)
    binary = compute_metrics([0, 1, 1], [0, 1, 0], ["normal", "abnormal"]).as_flat_dict()
    assert "jkappa" not in binary and "sv_f1" not in binary and "kappa" in binary


@pytest.mark.parametrize(
    ("score", "best", "metric", "min_delta", "expected"),
    [
        (0.5, 0.5, "macro_f1", 0.0, False),  # a tie keeps the earlier epoch
        (0.5, 0.5, "loss", 0.0, False),
        (0.75, 0.5, "macro_f1", 0.25, False),  # a gain of exactly min_delta is not enough
        (0.25, 0.5, "loss", 0.25, False),
        (0.875, 0.5, "macro_f1", 0.25, True),
        (0.125, 0.5, "loss", 0.25, True),
        (0.25, 0.5, "macro_f1", 0.0, False),  # lower is worse but for the loss
        (0.75, 0.5, "loss", 0.0, False),
    ],
)
def test_improves_needs_more_than_min_delta_in_the_metrics_direction(
    score: float, best: float, metric: str, min_delta: float, expected: bool
) -> None:
    """Binary fractions, so the gains are exact: a tie at the threshold is no improvement."""
    assert improves(score, best, metric, min_delta) is expected


def test_improves_by_default_on_any_gain() -> None:
    assert improves(0.5 + 2**-20, 0.5, "macro_f1")
    assert improves(0.5 - 2**-20, 0.5, "loss")


def test_only_the_loss_is_minimised() -> None:
    assert minimises("loss")
    assert not any(minimises(name) for name in ("macro_f1", "kappa", "jkappa", "sv_f1"))


def test_a_record_bootstrap_draws_whole_records_with_replacement() -> None:
    """Record a (2 beats: N right, S called N), record b (1 beat: V right): each draw picks 2
    records with replacement and sums their confusion matrices, so a draw is a, a+b or b+b in
    the proportions of the seeded generator's picks; the same seed gives the same draws."""
    labels = np.array([0, 1, 2])
    predicted = np.array([0, 0, 2])
    records = np.array(["a", "a", "b"])
    draws = record_bootstrap_confusions(labels, predicted, records, 3, draws=50, seed=3)
    assert draws.shape == (50, 3, 3)
    picks = np.random.default_rng(3).integers(0, 2, size=(50, 2))
    a = np.zeros((3, 3), dtype=np.int64)
    a[0, 0], a[1, 0] = 1, 1
    b = np.zeros((3, 3), dtype=np.int64)
    b[2, 2] = 1
    expected = np.stack([sum((a, b)[pick] for pick in row) for row in picks])
    assert np.array_equal(draws, expected)
    assert {int(draw.sum()) for draw in draws} == {2, 3, 4}
    assert np.array_equal(draws, record_bootstrap_confusions(labels, predicted, records, 3, 50, 3))
    one = record_bootstrap_confusions(labels[:2], predicted[:2], records[:2], 3, 4, seed=0)
    assert all(np.array_equal(draw, a) for draw in one)
