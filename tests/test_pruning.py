"""ASHA pruning (``search.pruning = "asha"``): the rule against hand-worked rung tables, a real
search on a few records that prunes its useless trial and keeps it pruned when resumed, the
trainer's graceful stop, and the config errors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from ecgtune.commands.tune import tune_command
from ecgtune.config import validate_config
from ecgtune.data import load_dataset
from ecgtune.errors import ConfigError
from ecgtune.metrics import compute_metrics
from ecgtune.search.pruning import Asha, TrialPruner, check_pruning
from ecgtune.search.space import build_search_space
from ecgtune.tracking.mlflow_runs import PRUNED_TAG, STATUS_TAG
from ecgtune.training import (
    EpochRecord,
    StopTraining,
    TrainingObserver,
    predict,
    train_model,
)
from tests.conftest import run_hypertune
from tests.search_helpers import USELESS_LR, SearchConfig, mlflow_runs, pruning_search, results

# --- the rule ----------------------------------------------------------------------------------


def pruned_epochs(
    curves: list[list[float]], grace: int, eta: int, objective: str, epochs: int = 20
) -> list[int | None]:
    """Each trial's would-be curve (its objective per epoch until its own early stop) fed to a
    :class:`TrialPruner` in order, as the local search runs them, each seeing the curves the
    trials before it left; the epoch each trial was pruned at (None: it trained on)."""
    raw = {
        "training": {"epochs": epochs, "objective": objective},
        "search": {"pruning": "asha", "grace_epochs": grace, "reduction_factor": eta},
    }
    config = validate_config(raw)
    saved: list[list[float]] = []
    outcome: list[int | None] = []
    for curve in curves:
        pruner = TrialPruner(config, list(saved))
        outcome.append(None)
        for epoch, value in enumerate(curve, start=1):
            try:
                pruner.on_epoch_end(EpochRecord(epoch, 0.0, 0.0, {objective: value}, 0.0, 0.0, 0.0))
            except StopTraining as stop:
                assert stop.reason.startswith(f"pruned at epoch {epoch} (ASHA rung ")
                outcome[-1] = epoch
                break
        assert pruner.curve == curve[: outcome[-1] or len(curve)]
        saved.append(pruner.curve)
    return outcome


def test_rungs_are_at_grace_times_powers_of_eta() -> None:
    rule = Asha(grace=2, eta=3, objective="macro_f1")
    assert {epoch: rule.rung(epoch) for epoch in (2, 6, 18, 54)} == {2: 1, 6: 2, 18: 3, 54: 4}
    assert [epoch for epoch in range(1, 60) if rule.rung(epoch) is None] == [
        epoch for epoch in range(1, 60) if epoch not in (2, 6, 18, 54)
    ]


@pytest.mark.parametrize(
    ("eta", "objective", "recorded", "cutoff"),
    [
        (2, "macro_f1", [0.25, 0.75], 0.5),  # the median
        (3, "macro_f1", [0.75], 0.75),  # one value: at least as good as it
        (3, "macro_f1", [0.25, 0.5], 0.25 + 2 / 3 * 0.25),  # fewer than eta: interpolated
        (3, "macro_f1", [0.75, 0.25, 0.5, 0.5], 0.5),  # 66.7th percentile of 4: the 3rd
        (4, "macro_f1", [0.0, 1.0], 0.75),
        (3, "loss", [0.25, 0.5], 0.5 - 2 / 3 * 0.25),  # negated: the 33.3rd of the losses
        (3, "loss", [], None),  # the first trial at a rung
    ],
)
def test_the_cutoff_is_the_interpolated_percentile_of_the_earlier_values(
    eta: int, objective: str, recorded: list[float], cutoff: float | None
) -> None:
    assert Asha(grace=1, eta=eta, objective=objective).cutoff(recorded) == (
        cutoff if cutoff is None else pytest.approx(cutoff, rel=1e-12)
    )


def test_eta_3_grace_1_maximised() -> None:
    """Rungs at epochs 1, 3, 9; the cutoff is the 66.7th percentile (linear) of the earlier
    trials' values at the rung; a value equal to it goes on.

    ========  ===========================  ======================  ========================
    trial     rung 1 (epoch 1)             rung 3 (epoch 3)        rung 9 (epoch 9)
    ========  ===========================  ======================  ========================
    0         0.5, first: on               0.6, first: on          0.7, first: on
    1         0.25 < 0.5 (one value): out
    2         0.5 >= 0.4167 of .5 .25: on  0.6 = 0.6: on (tie)     early-stopped at epoch 5
    3         0.75 >= 0.5 of .25 .5 .5     0.875 >= 0.6 of .6 .6   0.6875 < 0.7 (trial 2
                                                                   never got there): out
    4         0.5 = 0.5 = 3rd of 4: on     0.625 < 0.6917 of .6    -
                                           .6 .875: out
    ========  ===========================  ======================  ========================
    """
    curves = [
        [0.5, 0.55, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.7, 0.72],
        [0.25, 0.9, 0.9],
        [0.5, 0.55, 0.6, 0.55, 0.55],
        [0.75, 0.8, 0.875, 0.875, 0.875, 0.875, 0.875, 0.875, 0.6875, 0.9],
        [0.5, 0.55, 0.625, 0.9, 0.9],
    ]
    assert pruned_epochs(curves, grace=1, eta=3, objective="macro_f1") == [None, 1, None, 9, 3]


def test_eta_2_grace_2_minimised() -> None:
    """The loss is minimised: Ray negates it, so the cutoff is the median of the earlier
    losses and a higher loss is worse. Rungs at epochs 2, 4, 8.

    =====  ============================  ===================================  ===============
    trial  rung 2                        rung 4                               rung 8
    =====  ============================  ===================================  ===============
    0      0.5, first: on                0.25, first: on                      0.2, first: on
    1      0.75 > 0.5: out
    2      0.5 <= 0.625 (median): on     0.375 > 0.25: out
    3      0.5 = 0.5 of .5 .75 .5: on    0.3125 = 0.3125 of .25 .375: on      0.125 <= 0.2
    =====  ============================  ===================================  ===============
    """
    curves = [
        [1.0, 0.5, 0.45, 0.25, 0.25, 0.25, 0.25, 0.2, 0.2],
        [0.9, 0.75, 0.1],
        [2.0, 0.5, 0.4, 0.375, 0.1],
        [1.5, 0.5, 0.4, 0.3125, 0.3, 0.3, 0.3, 0.125, 0.1],
    ]
    assert pruned_epochs(curves, grace=2, eta=2, objective="loss") == [None, 2, 4, None]


def test_no_decision_at_the_last_epoch() -> None:
    """With training.epochs = 4 the rung at epoch 4 decides nothing (Ray ends a trial at max_t
    before its bracket): the second trial, worse there, trained in full. Epochs 1 and 2 are
    ties, which go on."""
    curves = [[0.5, 0.5, 0.5, 0.75], [0.5, 0.5, 0.5, 0.25]]
    assert pruned_epochs(curves, grace=1, eta=2, objective="macro_f1", epochs=4) == [None, None]


# --- the trainer's graceful stop ----------------------------------------------------------------


class StopAfter(TrainingObserver):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, record: EpochRecord) -> None:
        if record.epoch == self.epoch:
            raise StopTraining("asked to stop")


def test_an_observer_ends_training_with_the_best_epoch_restored(small_config: Any) -> None:
    """StopTraining after epoch 3 of 6 ends the run as early stopping does; and early stopping
    still ends a run before an observer asks."""
    config = small_config(training={"epochs": 6, "early_stopping_patience": 5})
    dataset = load_dataset(config)
    result = train_model(config, dataset, StopAfter(3))
    assert (len(result.history), result.pruned_at, result.stop_reason) == (3, 3, "asked to stop")
    best = max(result.history, key=lambda record: record.valid_metrics["macro_f1"])
    assert result.best_epoch == best.epoch and result.best_valid == best.valid_metrics
    restored = compute_metrics(
        dataset.valid.labels, predict(result.model, dataset.valid, config), dataset.class_names
    )
    assert restored.as_flat_dict()["macro_f1"] == pytest.approx(best.valid_metrics["macro_f1"])
    stale = {"epochs": 6, "early_stopping_patience": 1, "min_delta": 1.0}  # no epoch improves
    early = train_model(small_config(training=stale), dataset, StopAfter(3))
    assert early.pruned_at is None and len(early.history) == 2
    assert early.stop_reason.startswith("early stopping")


# --- a real search -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("in_tmp_path")
def test_a_search_prunes_its_useless_trial_at_the_grace_epoch_and_keeps_it_pruned(
    search_config: SearchConfig,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Trials 0, 2 and 4 train at lr 3e-3 (the same model: ties at every rung, which go on),
    trials 1, 3 and 5 at 1e-7 (hyperopt's random draws with seed 4); rungs at epochs 1 and 2.
    The resumed search prunes trial 5 by the curves saved in trials.json."""
    config = pruning_search(search_config, max_evals=4)
    monkeypatch.setenv("COLUMNS", "400")  # one table row per trial
    assert tune_command(config, quiet=True) == 0
    printed = capsys.readouterr().out
    rows = [result["row"] for result in results(config)]
    assert [row["values"]["training.lr"] for row in rows] == [3e-3, USELESS_LR, 3e-3, USELESS_LR]
    assert [(row["status"], row["epochs"]) for row in rows] == [
        ("ok", 3),
        ("pruned", 1),
        ("ok", 3),
        ("pruned", 1),
    ]
    assert rows[1]["note"].startswith("pruned at epoch 1 (ASHA rung 1): validation macro_f1")
    assert [len(result["curve"]) for result in results(config)] == [3, 1, 3, 1]
    note = re.escape(rows[1]["note"])
    assert re.search(rf"trial 1 done: valid macro_f1 [\d.]+, 1 epoch, [\d:]+; {note}", printed)
    table_row = next(line for line in printed.splitlines() if line.startswith("│ 1 │"))
    cells = [cell.strip() for cell in table_row.split("│")[1:-1]]
    assert (cells[-3], cells[-1]) == ("1", "pruned")  # its epochs; the rung: in the line above

    _, children = mlflow_runs(config)
    assert [run.data.tags.get(STATUS_TAG) for run in children] == ["ok", "pruned", "ok", "pruned"]
    assert [run.data.tags.get(PRUNED_TAG) for run in children] == [None, "1", None, "1"]
    assert {run.info.status for run in children} == {"FINISHED"}

    report = json.loads((config.run_dir / "report.json").read_text())
    assert [row["status"] for row in report["trials"]] == ["ok", "pruned", "ok", "pruned"]
    assert report["trials"][1] == rows[1]

    more = pruning_search(search_config, max_evals=6)
    assert tune_command(more, quiet=True) == 0
    resumed = [result["row"] for result in results(more)]
    assert resumed[:4] == rows
    assert [(row["values"]["training.lr"], row["status"]) for row in resumed[4:]] == [
        (3e-3, "ok"),
        (USELESS_LR, "pruned"),
    ]


# --- config errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        (
            {"pruning": "asha", "grace_epochs": 3},
            "search.grace_epochs = 3 must be below training.epochs = 3 when search.pruning = "
            "'asha': a trial ends at training.epochs anyway, so none could be pruned; set "
            "search.grace_epochs to 2 or less, or training.epochs to 4 or more, or "
            "search.pruning = 'none'",
        ),
        ({"pruning": "median"}, "search.pruning = 'median'"),
        ({"reduction_factor": 1}, "search.reduction_factor = 1"),
        ({"grace_epochs": 0}, "search.grace_epochs = 0"),
    ],
)
def test_a_bad_pruning_config_exits_2_with_one_line(
    tmp_path: Path, search: dict[str, Any], expected: str
) -> None:
    """``hypertune.py tune`` in a folder of its own, with records that could come from nowhere
    (were the config let through)."""
    raw = {
        "data": {"raw_dir": str(tmp_path / "raw"), "base_url": "http://127.0.0.1:9/"},
        "training": {"epochs": 3},
        "search": search,
        "tracking": {"mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    path = tmp_path / "config.toml"
    path.write_text(tomli_w.dumps(raw))
    done = run_hypertune("tune", "--config", str(path), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and expected in line, line


def test_a_grace_past_the_epochs_refuses_the_search_not_the_config() -> None:
    """``train`` never prunes: a config with ASHA and a grace of 4 (config.toml's) validates
    with 2 epochs (``train --set training.epochs=2``, and the model it saves loads: a
    checkpoint's config is validated by the same schema); a search of it is refused, and so
    is one whose space can draw fewer epochs than the grace."""
    search = {"pruning": "asha", "grace_epochs": 4}
    short = validate_config({"training": {"epochs": 2}, "search": search})
    with pytest.raises(ConfigError, match=r"grace_epochs = 4 must be below training.epochs = 2"):
        check_pruning(build_search_space(short))
    drawn = validate_config(
        {
            "training": {"epochs": 8},
            "search": {**search, "space": {"training.epochs": {"choice": [8, 3]}}},
        }
    )
    with pytest.raises(ConfigError, match=r"the fewest training.epochs the space draws = 3"):
        check_pruning(build_search_space(drawn))
    check_pruning(
        build_search_space(validate_config({"training": {"epochs": 5}, "search": search}))
    )


@pytest.mark.parametrize(("grace", "epochs"), [(4, 3), (3, 3), (2, 1)])
def test_the_grace_error_names_settings_that_pass(grace: int, epochs: int) -> None:
    """The refusal says what to set, and each setting it names, applied alone, lets the
    search through (with one epoch, no grace is small enough: it names the others)."""
    search: dict[str, Any] = {"pruning": "asha", "grace_epochs": grace}
    raw: dict[str, dict[str, Any]] = {"training": {"epochs": epochs}, "search": search}
    with pytest.raises(ConfigError) as caught:
        check_pruning(build_search_space(validate_config(raw)))
    fixes: dict[str, dict[str, dict[str, Any]]] = {
        f"search.grace_epochs to {epochs - 1} or less": {"search": {"grace_epochs": epochs - 1}},
        f"training.epochs to {grace + 1} or more": {"training": {"epochs": grace + 1}},
        "search.pruning = 'none'": {"search": {"pruning": "none"}},
    }
    named = [fix for fix in fixes if fix in str(caught.value)]
    assert named == list(fixes)[epochs == 1 :], str(caught.value)
    for fix in named:
        changed = {section: {**raw[section], **fixes[fix].get(section, {})} for section in raw}
        check_pruning(build_search_space(validate_config(changed)))
