"""What a user opens after a search, read back as they see it: the MLflow parent run's
description (the search's table) and the trial runs' names from a real MLflow store, the
HParams domains and session statuses from TensorBoard's event files with TensorBoard's own
reader, and the shipped ``configs/quick.toml`` end to end (fewer records and beats)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

import ecgtune.training
from ecgtune.cli import main
from ecgtune.commands.tune import tune_command
from ecgtune.config import Config
from ecgtune.models import build_model
from ecgtune.search.store import TrialStore
from ecgtune.search.trials import TrialRow
from ecgtune.tracking.mlflow_runs import NOTE_TAG, STATUS_TAG, TAG_LIMIT, TRIAL_TAG
from ecgtune.tracking.mlflow_view import VIEW_KEY, VIEW_TAG, search_description
from ecgtune.tracking.tensorboard import STATUS_KEY, UNUSED
from tests.conftest import REPO_ROOT
from tests.search_helpers import SearchConfig, mlflow_runs, pruning_search, results

pytestmark = pytest.mark.usefixtures("in_tmp_path")


def description_rows(parent: Run) -> dict[int, list[str]]:
    """The trials table of the parent's description: trial number -> its cells (the number's
    link and the best trial's bold marks taken off)."""
    text = parent.data.tags[NOTE_TAG]
    table = text.split("Trials (", 1)[1].splitlines()[2:]
    rows: dict[int, list[str]] = {}
    for line in table[2:]:
        if not line.startswith("| "):
            break
        cells = [cell.strip().strip("*") for cell in line.strip("| ").split(" | ")]
        number = cells[0].lstrip("[").split("]", 1)[0]
        rows[int(number)] = cells
    return rows


def hparams_sessions(trial_dir: Path) -> tuple[dict[str, Any], int]:
    """A trial's HParams session, read with TensorBoard's reader: its values and status."""
    events = EventAccumulator(str(trial_dir))
    events.Reload()
    data = [
        plugin_data_pb2.HParamsPluginData.FromString(content)
        for content in events.PluginTagToContent("hparams").values()
    ]
    (start,) = [item.session_start_info for item in data if item.HasField("session_start_info")]
    (end,) = [item.session_end_info for item in data if item.HasField("session_end_info")]
    values = {
        name: value.string_value or value.number_value or value.bool_value
        for name, value in start.hparams.items()
    }
    return values, end.status


def results_in(experiment: str) -> list[dict[str, Any]]:
    """The finished trials' results of the search saved in ``runs/<experiment>``."""
    trials = TrialStore(Path("runs", experiment)).load()
    assert trials is not None
    return [doc["result"] for doc in trials.trials if doc["state"] == 2]


def hparams_domains(search_dir: Path) -> dict[str, Any]:
    """The experiment's declared keys, in order, with their discrete values or interval."""
    events = EventAccumulator(str(search_dir))
    events.Reload()
    (content,) = events.PluginTagToContent("hparams").values()
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    return {
        info.name: (
            [value.string_value for value in info.domain_discrete.values]
            if info.HasField("domain_discrete")
            else (info.domain_interval.min_value, info.domain_interval.max_value)
        )
        for info in experiment.hparam_infos
    }


@pytest.mark.slow
def test_pruned_and_failed_trials_are_told_apart_in_mlflow_and_tensorboard(
    search_config: SearchConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trials 0 and 2 train at lr 3e-3, 1 and 3 at 1e-7 (:func:`pruning_search`): 1 is
    pruned at the first rung; the third model built (trial 2) fails."""
    built = []

    def fail_the_third(config: Config, n_classes: int) -> Any:
        built.append(config.training.lr)
        if len(built) == 3:
            raise RuntimeError("forced failure of the third trial")
        return build_model(config, n_classes)

    monkeypatch.setattr(ecgtune.training, "build_model", fail_the_third)
    config = pruning_search(search_config, max_evals=4)
    assert tune_command(config, quiet=True) == 0
    rows = [result["row"] for result in results(config)]
    statuses = [row["status"] for row in rows]
    assert statuses[:3] == ["ok", "pruned", "failed"]

    parent, children = mlflow_runs(config)
    names = [run.info.run_name for run in children]
    expected = ["trial-000", "trial-001 pruned@1", "trial-002 failed"]
    assert names[:3] == expected
    assert [run.data.tags[STATUS_TAG] for run in children] == statuses

    table = description_rows(parent)
    assert sorted(table) == [0, 1, 2, 3]
    for row in rows:
        _, status, objective, epochs, lr = table[row["number"]]
        assert status.split(":")[0].split(" ")[0] == row["status"]
        assert epochs == str(row["epochs"])
        assert float(lr) == pytest.approx(row["values"]["training.lr"], rel=1e-2)
        score = row["objective"]
        assert objective == ("-" if score is None else f"{score:.4f}")
    report = json.loads((config.run_dir / "report.json").read_text())
    best_line = next(line for line in parent.data.tags[NOTE_TAG].splitlines() if "**[" in line)
    assert best_line.startswith(f"| **[{report['best_trial']}](#/experiments/")
    assert "Test split (" in parent.data.tags[NOTE_TAG]

    (search_dir,) = (config.tracking.tensorboard_dir / config.tracking.experiment).iterdir()
    domains = hparams_domains(search_dir)
    assert list(domains) == ["training.lr", STATUS_KEY]
    assert domains[STATUS_KEY] == sorted(["ok", "pruned", "failed", "killed"])
    expected_status = {
        "ok": api_pb2.STATUS_SUCCESS,
        "pruned": api_pb2.STATUS_SUCCESS,
        "failed": api_pb2.STATUS_FAILURE,
    }
    for row in rows:
        values, session_status = hparams_sessions(search_dir / f"trial-{row['number']:03d}")
        assert session_status == expected_status[row["status"]]
        assert values[STATUS_KEY] == row["status"]
        assert values["training.lr"] == str(row["values"]["training.lr"])  # a choice: text


@pytest.mark.slow
def test_the_quick_config_runs_a_search_worth_opening(
    mitdb_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``configs/quick.toml`` as shipped but on 3 records of 150 beats and 4 trials (the
    seeded draws give a later trial a 3-stage network): every trial in the parent's
    description, the changed keys on the parent, a placeholder for the 4th stage a 3-stage
    trial does not have, and the end of the run listing every file and both UIs."""
    overrides = {
        "data.raw_dir": json.dumps(str(mitdb_dir)),
        "data.records": '["100", "208", "232"]',
        "data.max_beats_per_record": "150",
        "search.max_evals": "4",
        "training.num_threads": "1",
    }
    argv = ["tune", "--quiet", "--config", str(REPO_ROOT / "configs" / "quick.toml")]
    for key, value in overrides.items():
        argv += ["--set", f"{key}={value}"]
    assert main(argv) == 0
    printed = capsys.readouterr().out

    client = MlflowClient("sqlite:///mlflow.db")
    experiment = client.get_experiment_by_name("quick")
    assert experiment is not None
    view = json.loads(experiment.tags[VIEW_TAG])
    assert "metrics.`best_epoch/macro_f1`" in view["selectedColumns"]
    assert "params.`model.channels`" in view["selectedColumns"]
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if TRIAL_TAG not in run.data.tags]
    assert sorted(description_rows(parent)) == [0, 1, 2, 3]
    assert parent.data.params["training.epochs"] == "6"  # from quick.toml, not the default
    assert parent.data.params["search.max_evals"] == "4"  # from --set
    assert parent.data.params["data.max_beats_per_record"] == "150"

    (search_dir,) = Path("logs", "quick").iterdir()
    domains = hparams_domains(search_dir)
    assert list(domains)[:3] == ["training.lr", "model.dropout", "training.loss"]
    assert domains["model.conv_layers"] == ["3", "4"]  # integers as integers, not 3.000
    assert domains["model.channels[3]"] == ["-", "16", "24", "32"]
    rows = {row["number"]: row for row in (result["row"] for result in results_in("quick"))}
    three = [number for number, row in rows.items() if row["values"]["model.conv_layers"] == 3]
    assert three
    for number, row in rows.items():
        values, status = hparams_sessions(search_dir / f"trial-{number:03d}")
        channels = [*map(str, row["values"]["model.channels"]), UNUSED][:4]
        assert [values[f"model.channels[{index}]"] for index in range(4)] == channels
        assert values["model.conv_layers"] == str(row["values"]["model.conv_layers"])
        assert status == api_pb2.STATUS_SUCCESS

    run_dir = Path("runs", "quick")
    for name in ("best_config.toml", "best_model.pt", "MODEL_CARD.md", "trials.json"):
        assert (run_dir / name).is_file() and f"\n  {name}\n" in printed
    assert f"the search's run {parent.info.run_id}, its model models:/" in printed
    url = f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs?"
    assert f"{url}workflowType=machine_learning&viewStateShareKey={VIEW_KEY}" in printed
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in printed
    assert "tensorboard --logdir=logs" in printed


def test_a_long_search_fits_its_description_and_counts_the_trials_left_out() -> None:
    """MLflow stores a tag of limited length: past it, the last trials are counted instead
    of cut mid-row."""
    rows = [
        TrialRow(n, "ok", {"training.lr": 1e-3 * (n + 1)}, 0.5, 3, 10.0, "") for n in range(300)
    ]
    text = search_description(rows, "macro_f1", ["training.lr"], rows[7], {}, None, TAG_LIMIT)
    assert len(text) <= TAG_LIMIT
    shown = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    shown += [line for line in text.splitlines() if line.startswith("| **")]
    assert text.endswith(f"{300 - len(shown)} more trials: see the runs table.")
    assert "| **7** | **ok** | **0.5000** | **3** | **0.008** |" in text
