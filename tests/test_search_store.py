"""The saved search as JSON: a real hyperopt search survives the round trip and continues as
the one in memory would, and a planted pickle (as ``trials.json`` or an old ``trials.pkl``)
is refused with one line without running, in the store and from the real command line."""

from __future__ import annotations

import copy
import functools
import json
import os
import pickle
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
from hyperopt import STATUS_FAIL, STATUS_OK, Trials, fmin, hp, tpe
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_ERROR, JOB_STATE_NEW
from hyperopt.fmin import generate_trials_to_calculate

from ecgtune.config import Config
from ecgtune.errors import ConfigError, DataError
from ecgtune.search.loop import check_same_search, search_identity
from ecgtune.search.store import METADATA, TrialStore, json_value
from tests.conftest import run_hypertune

SPACE = {"x": hp.uniform("x", -3, 3), "kind": hp.choice("kind", ["good", "plain", "bad"])}
BASE_POINT = {"x": 0.5, "kind": 1}
"""The first trial, in hyperopt's own terms (the index of the choice), as loop.py starts one."""
METADATA_VALUE = {
    "identity": {"model.kind": "cnn", "model.channels": [8, 16], "training.lr": 0.001},
    "parent_run_id": "0123abcd",
    "search_id": "search-20250101-120000",
}
SEED = 2


def objective(sample: dict[str, Any]) -> dict[str, Any]:
    """Quadratic in x; the "bad" kind fails, as a trial that raises does in ecgtune. numpy
    numbers in the result, as a trainer's figures are."""
    if sample["kind"] == "bad":
        return {"status": STATUS_FAIL, "failure": "ValueError: bad kind"}
    loss = np.float64(sample["x"] ** 2) + (sample["kind"] == "plain")
    return {"status": STATUS_OK, "loss": loss, "counts": {"N": np.int64(180), "V": 20}}


def raising_objective(sample: dict[str, Any]) -> dict[str, Any]:
    """An objective that raises for the "bad" kind: hyperopt marks those trials as errors."""
    if sample["kind"] == "bad":
        raise ValueError("bad kind")
    return objective(sample)


def run_search(
    trials: Trials, max_evals: int, seed: int, fn: Callable[..., Any] = objective, **kw: Any
) -> None:
    """hyperopt's fmin with TPE modelling the results after 3 trials, so what it draws next
    depends on every saved point and loss."""
    fmin(
        fn,
        SPACE,
        algo=functools.partial(tpe.suggest, n_startup_jobs=3),
        max_evals=max_evals,
        trials=trials,
        rstate=np.random.default_rng(seed),
        show_progressbar=False,
        verbose=False,
        return_argmin=False,
        **kw,
    )


def new_search() -> Trials:
    """A new search as loop.py starts one: the base point pending, and the attachment."""
    trials = generate_trials_to_calculate([BASE_POINT])
    trials.refresh()
    trials.attachments[METADATA] = copy.deepcopy(METADATA_VALUE)
    return trials


@pytest.fixture
def five_trials() -> Trials:
    trials = new_search()
    run_search(trials, 5, SEED)
    statuses = [doc["result"]["status"] for doc in trials.trials]
    assert len(statuses) == 5 and {"ok", "fail"} <= set(statuses), statuses
    return trials


def numpy_values(value: Any) -> list[Any]:
    """Every numpy value inside a document."""
    if isinstance(value, dict):
        return [found for item in value.values() for found in numpy_values(item)]
    if isinstance(value, list | tuple):
        return [found for item in value for found in numpy_values(item)]
    return [value] if isinstance(value, np.generic | np.ndarray) else []


def test_a_real_search_survives_the_round_trip(tmp_path: Path, five_trials: Trials) -> None:
    five_trials.attachments["FMinIter_Domain"] = b"another attachment, not ecgtune's"
    TrialStore(tmp_path).save(five_trials)

    loaded = TrialStore(tmp_path).load()

    assert loaded is not None
    assert numpy_values(five_trials._dynamic_trials)  # there was something to convert
    assert not numpy_values(loaded._dynamic_trials)
    assert loaded._dynamic_trials == five_trials._dynamic_trials
    assert loaded.trials == five_trials.trials
    for doc in loaded.trials:
        assert isinstance(doc["misc"]["cmd"], tuple)
        assert isinstance(doc["book_time"], datetime) and isinstance(doc["refresh_time"], datetime)
    assert loaded.losses() == five_trials.losses()
    assert loaded.statuses() == five_trials.statuses()
    assert loaded.best_trial == five_trials.best_trial
    assert loaded.argmin == five_trials.argmin
    assert loaded.attachments == {METADATA: METADATA_VALUE}


def test_the_file_is_plain_json_with_a_format_marker(tmp_path: Path, five_trials: Trials) -> None:
    store = TrialStore(tmp_path)
    store.save(five_trials)

    text = store.path.read_text(encoding="utf-8")
    saved = json.loads(text)

    assert text.startswith('{\n "format": "ecgtune-trials",\n "version": 1,\n')  # indented 1
    assert store.path == tmp_path / "trials.json"
    assert (saved["format"], saved["version"]) == ("ecgtune-trials", 1)
    assert saved["attachments"] == {METADATA: METADATA_VALUE}
    first = saved["trials"][0]
    assert first["misc"]["cmd"] == ["domain_attachment", "FMinIter_Domain"]
    assert first["book_time"] == five_trials.trials[0]["book_time"].isoformat()
    assert first["result"]["counts"] == {"N": 180, "V": 20}
    assert [doc["tid"] for doc in saved["trials"]] == [0, 1, 2, 3, 4]
    assert not list(tmp_path.glob(".trials.json.*"))  # no temporary file left behind


def test_a_loaded_search_continues_as_the_one_in_memory(
    tmp_path: Path, five_trials: Trials
) -> None:
    TrialStore(tmp_path).save(five_trials)
    loaded = TrialStore(tmp_path).load()
    assert loaded is not None

    run_search(loaded, 8, seed=11)
    run_search(five_trials, 8, seed=11)

    assert [doc["tid"] for doc in loaded.trials] == list(range(8))
    assert [doc["state"] for doc in loaded.trials] == [JOB_STATE_DONE] * 8
    drawn = [doc["misc"]["vals"] for doc in loaded.trials[5:]]
    assert drawn == [doc["misc"]["vals"] for doc in five_trials.trials[5:]]
    assert loaded.losses() == five_trials.losses()


def test_a_new_search_keeps_its_pending_base_point(tmp_path: Path) -> None:
    TrialStore(tmp_path).save(new_search())
    loaded = TrialStore(tmp_path).load()
    assert loaded is not None
    assert [doc["state"] for doc in loaded.trials] == [JOB_STATE_NEW]

    run_search(loaded, 3, SEED)

    assert [doc["tid"] for doc in loaded.trials] == [0, 1, 2]
    assert loaded.trials[0]["misc"]["vals"] == {"x": [0.5], "kind": [1]}
    assert loaded.trials[0]["result"]["loss"] == 0.25 + 1


def test_trials_that_raised_keep_their_numbers(tmp_path: Path) -> None:
    """hyperopt keeps them out of ``trials.trials`` but has used their numbers."""
    trials = new_search()
    run_search(trials, 6, SEED, fn=raising_objective, catch_eval_exceptions=True)
    assert JOB_STATE_ERROR in [doc["state"] for doc in trials._dynamic_trials]
    TrialStore(tmp_path).save(trials)
    loaded = TrialStore(tmp_path).load()
    assert loaded is not None
    assert loaded._dynamic_trials == trials._dynamic_trials  # misc.error a tuple again

    run_search(loaded, 9, SEED, fn=raising_objective, catch_eval_exceptions=True)

    tids = [doc["tid"] for doc in loaded._dynamic_trials]
    assert sorted(tids) == list(range(len(tids)))


class Planted:
    """A pickle payload: unpickling it creates ``marker`` (harmless stand-in for any code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def planted_trials(marker: Path, protocol: int = pickle.HIGHEST_PROTOCOL) -> bytes:
    """A pickled ``Trials`` as the old format saved it, with a payload in its attachment."""
    trials = Trials()
    trials.attachments[METADATA] = Planted(marker)
    return pickle.dumps(trials, protocol=protocol)


def test_the_planted_payload_runs_when_unpickled(tmp_path: Path) -> None:
    """So the tests below, which check that it did not run, can fail."""
    marker = tmp_path / "payload-ran"
    pickle.loads(planted_trials(marker))
    assert marker.exists()


def damaged_store(
    folder: Path, trials: Trials, corrupt: Callable[[dict[str, Any]], None]
) -> TrialStore:
    """``trials`` saved in ``folder``, then its file changed by ``corrupt``."""
    store = TrialStore(folder)
    store.save(trials)
    saved = json.loads(store.path.read_text(encoding="utf-8"))
    corrupt(saved)
    store.path.write_text(json.dumps(saved), encoding="utf-8")
    return store


def refusal(store: TrialStore, path: Path | None = None) -> str:
    """The one-line DataError ``load`` raises, naming the file and --fresh."""
    with pytest.raises(DataError) as caught:
        store.load()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path or store.path}: ")
    assert message.endswith("to start over, use --fresh (it keeps the old file)")
    return message


@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
def test_pickle_bytes_in_trials_json_are_refused_unread(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "payload-ran"
    store = TrialStore(tmp_path / "run")
    store.run_dir.mkdir()
    store.path.write_bytes(planted_trials(marker, protocol))

    assert "not a UTF-8 JSON file" in refusal(store)
    assert not marker.exists()


def test_an_old_trials_pkl_is_refused_unread_and_fresh_sets_it_aside(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    store = TrialStore(tmp_path / "run")
    store.run_dir.mkdir()
    old = store.run_dir / "trials.pkl"
    old.write_bytes(planted_trials(marker))

    message = refusal(store, old)

    assert "trials.pkl from an older ecgtune is not read" in message
    assert "unpickling a file can run any code" in message
    assert not marker.exists()
    kept = store.set_aside()
    assert kept is not None and re.fullmatch(r"trials\.\d{8}-\d{6}\.pkl", kept.name)
    assert kept.read_bytes() == planted_trials(marker) and not old.exists()
    assert store.load() is None
    assert not marker.exists()


def test_fresh_sets_aside_the_trials_and_their_checkpoints(
    tmp_path: Path, five_trials: Trials
) -> None:
    store = TrialStore(tmp_path)
    assert store.set_aside() is None
    store.save(five_trials)
    saved = store.path.read_bytes()
    store.checkpoint(2).parent.mkdir()
    store.checkpoint(2).write_bytes(b"model")

    kept = store.set_aside()

    assert kept is not None and kept.read_bytes() == saved
    stamp = re.fullmatch(r"trials\.(\d{8}-\d{6})\.json", kept.name)
    assert stamp is not None
    assert (tmp_path / f"checkpoints.{stamp[1]}" / "trial-002.pt").read_bytes() == b"model"
    assert not store.path.exists() and not store.checkpoints.exists()
    assert store.load() is None


def test_a_directory_or_foreign_json_is_refused(tmp_path: Path) -> None:
    store = TrialStore(tmp_path)
    store.path.mkdir()
    assert "cannot read the saved search (Is a directory)" in refusal(store)
    store.path.rmdir()
    for foreign in ('{"trials": []}', "[1, 2]", '"trials"', '{"format": "mlflow"}'):
        store.path.write_text(foreign, encoding="utf-8")
        assert 'not an ecgtune trials file (no "format": "ecgtune-trials")' in refusal(store)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_is_refused(tmp_path: Path, five_trials: Trials) -> None:
    store = TrialStore(tmp_path)
    store.save(five_trials)
    store.path.chmod(0)
    assert "cannot read the saved search (Permission denied)" in refusal(store)


def newer_version(saved: dict[str, Any]) -> None:
    saved["version"] = 999


def unknown_state(saved: dict[str, Any]) -> None:
    saved["trials"][1]["state"] = 7


def mismatched_misc_tid(saved: dict[str, Any]) -> None:
    saved["trials"][1]["misc"]["tid"] = 4


def duplicated_trial(saved: dict[str, Any]) -> None:
    saved["trials"][2] = saved["trials"][1]


def unparsable_time(saved: dict[str, Any]) -> None:
    saved["trials"][3]["book_time"] = "yesterday"


def unknown_status(saved: dict[str, Any]) -> None:
    saved["trials"][0]["result"]["status"] = "great"


def ok_without_loss(saved: dict[str, Any]) -> None:
    doc = next(doc for doc in saved["trials"] if doc["result"]["status"] == "ok")
    del doc["result"]["loss"]


def nan_loss(saved: dict[str, Any]) -> None:
    doc = next(doc for doc in saved["trials"] if doc["result"]["status"] == "ok")
    doc["result"]["loss"] = float("nan")


def minus_infinite_loss(saved: dict[str, Any]) -> None:
    doc = next(doc for doc in saved["trials"] if doc["result"]["status"] == "ok")
    doc["result"]["loss"] = -float("inf")


def infinite_value(saved: dict[str, Any]) -> None:
    saved["trials"][1]["misc"]["vals"]["x"] = [float("inf")]


def path_parent_run(saved: dict[str, Any]) -> None:
    saved["attachments"][METADATA]["parent_run_id"] = "../../mlruns/0/abc"


def quoted_parent_run(saved: dict[str, Any]) -> None:
    saved["attachments"][METADATA]["parent_run_id"] = "'0123abcd'"


def path_search_id(saved: dict[str, Any]) -> None:
    saved["attachments"][METADATA]["search_id"] = "../../../etc"


def text_value(saved: dict[str, Any]) -> None:
    saved["trials"][1]["misc"]["vals"]["x"] = ["0.5"]


def missing_metadata(saved: dict[str, Any]) -> None:
    saved["attachments"] = {}


def missing_parent_run(saved: dict[str, Any]) -> None:
    del saved["attachments"][METADATA]["parent_run_id"]


def missing_misc(saved: dict[str, Any]) -> None:
    del saved["trials"][4]["misc"]


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (newer_version, "version = 999 comes from a newer ecgtune"),
        (unknown_state, "trials[1].state = 7 is not one of hyperopt's job states"),
        (mismatched_misc_tid, "trials[1].misc.tid = 4 is not the trial's tid 1"),
        (duplicated_trial, "trial number 1 is saved twice"),
        (unparsable_time, 'trials[3].book_time = "yesterday" is not null or an ISO date'),
        (unknown_status, 'trials[0].result = {"status": "great", '),
        (ok_without_loss, ".loss = null is not a finite number, as the status is ok"),
        (nan_loss, ".loss = NaN is not a finite number, as the status is ok"),
        (minus_infinite_loss, ".loss = -Infinity is not a finite number, as the status is ok"),
        (infinite_value, "trials[1].misc.vals.x = [Infinity] is not a list of finite numbers"),
        (text_value, 'trials[1].misc.vals.x = ["0.5"] is not a list of finite numbers'),
        (path_parent_run, 'parent_run_id = "../../mlruns/0/abc" is not an MLflow run id'),
        (quoted_parent_run, "parent_run_id = \"'0123abcd'\" is not an MLflow run id"),
        (path_search_id, 'search_id = "../../../etc" is not a search id (search-YYYYmmdd-HHMMSS)'),
        (missing_metadata, "attachments.ecgtune is missing"),
        (missing_parent_run, "attachments.ecgtune.parent_run_id is missing"),
        (missing_misc, "trials[4].misc is missing"),
    ],
)
def test_a_damaged_file_is_refused_with_the_field_named(
    tmp_path: Path,
    five_trials: Trials,
    corrupt: Callable[[dict[str, Any]], None],
    expected: str,
) -> None:
    assert expected in refusal(damaged_store(tmp_path, five_trials, corrupt))


def idxs_of_another_trial(saved: dict[str, Any]) -> None:
    saved["trials"][1]["misc"]["idxs"]["x"] = [4]


def idxs_of_true(saved: dict[str, Any]) -> None:
    saved["trials"][1]["misc"]["idxs"]["x"] = [True]  # equal to [1] in Python, not in JSON


def set_at(*path: str | int, value: Any = None, delete: bool = False) -> Callable[..., None]:
    """Plants ``value`` at ``path`` of the saved file (or deletes the key there)."""

    def plant(saved: dict[str, Any]) -> None:
        target: Any = saved
        for key in path[:-1]:
            target = target[key]
        if delete:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return plant


def version_zero(saved: dict[str, Any]) -> None:
    saved["version"] = 0


def version_of_text(saved: dict[str, Any]) -> None:
    saved["version"] = "1"


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (idxs_of_another_trial, "trials[1].misc.idxs.x = [4] is not [] or [1]"),
        (idxs_of_true, "trials[1].misc.idxs.x = [true] is not [] or [1]"),
        (version_zero, "version = 0 is not a format version (1, 2, ...)"),
        (version_of_text, 'version = "1" is not a format version (1, 2, ...)'),
        (set_at("trials", 2, value=5), "trials[2] = 5 is not an object"),
        (set_at("trials", 1, "tid", value=-1), "trials[1].tid = -1 is not a trial number"),
        (set_at("trials", 1, "misc", value=[]), "trials[1].misc = [] is not an object"),
        (set_at("trials", 1, "misc", "cmd", delete=True), "trials[1].misc.cmd is missing"),
        (set_at("trials", 1, "misc", "idxs", delete=True), "trials[1].misc.idxs is missing"),
        (
            set_at("trials", 1, "misc", "idxs", value=[]),
            "trials[1].misc.idxs = [] is not an object",
        ),
        (set_at("trials", 1, "misc", "vals", delete=True), "trials[1].misc.vals is missing"),
        (
            set_at("trials", 1, "misc", "vals", "x", value=[0.5, 0.5]),
            "trials[1].misc.vals.x = [0.5, 0.5] is not a list as long as idxs.x",
        ),
        (
            set_at("trials", 1, "misc", "vals", "x", value=0.5),
            "trials[1].misc.vals.x = 0.5 is not a list as long as idxs.x",
        ),
        (set_at("attachments", value=[]), "attachments = [] is not an object"),
        (set_at("trials", value={}), "trials = {} is not a list"),
        (set_at("attachments", METADATA, value=[]), "attachments.ecgtune = [] is not an object"),
        (
            set_at("trials", 1, "misc", "vals", value=[]),
            "trials[1].misc.vals = [] is not an object",
        ),
        (
            set_at("attachments", METADATA, "identity", value=[]),
            "attachments.ecgtune.identity = [] is not an object",
        ),
        (set_at("trials", 1, "version", value="1"), 'trials[1].version = "1" is not an integer'),
        (
            set_at("trials", 1, "result", value=[]),
            "trials[1].result = [] is not an object with a status of new/running/suspended/ok/fail",
        ),
        (
            set_at("trials", 1, "result", "curve", value=[float("nan")]),
            "trials[1].result.curve = [NaN] is not a list of finite numbers (one per epoch)",
        ),
        (
            set_at("trials", 1, "result", "curve", value="0.5"),
            'trials[1].result.curve = "0.5" is not a list of finite numbers (one per epoch)',
        ),
        (  # a value of 60 characters is written whole, a longer one cut to 57 and "..."
            set_at("trials", 1, "exp_key", value="k" * 58),
            f'trials[1].exp_key = "{"k" * 58}" is not null',
        ),
        (
            set_at("trials", 1, "exp_key", value="k" * 59),
            f'trials[1].exp_key = "{"k" * 56}... is not null',
        ),
    ],
)
def test_a_damaged_file_is_refused_with_its_exact_line(
    tmp_path: Path,
    five_trials: Trials,
    corrupt: Callable[[dict[str, Any]], None],
    expected: str,
) -> None:
    store = damaged_store(tmp_path, five_trials, corrupt)
    assert (
        refusal(store)
        == f"{store.path}: {expected}; to start over, use --fresh (it keeps the old file)"
    )


def test_an_empty_saved_search_numbers_its_first_trial_0(tmp_path: Path) -> None:
    store = TrialStore(tmp_path)
    store.save(new_search())
    saved = json.loads(store.path.read_text(encoding="utf-8"))
    saved["trials"] = []
    store.path.write_text(json.dumps(saved), encoding="utf-8")
    trials = store.load()
    assert trials is not None and trials.new_trial_ids(1) == [0]


def test_a_value_json_cannot_hold_is_named() -> None:
    with pytest.raises(TypeError, match=r"^set \{1\} cannot be saved in trials\.json$"):
        json_value({1})


def test_no_best_trial_keeps_no_checkpoint(tmp_path: Path) -> None:
    store = TrialStore(tmp_path)
    store.checkpoints.mkdir()
    for number in (1, 2):
        store.checkpoint(number).write_bytes(b"model")
    store.keep_only_checkpoint(2)
    assert [path.name for path in store.checkpoints.iterdir()] == ["trial-002.pt"]
    store.keep_only_checkpoint(None)
    assert not list(store.checkpoints.iterdir())


@pytest.mark.parametrize("planted", [["trials.pkl"], ["trials.pkl", "trials.json"]])
def test_tune_refuses_planted_files_without_running_them(
    tmp_path: Path, small_config: Callable[..., Config], planted: list[str]
) -> None:
    """The command line, with a payload in each planted file: exit 2, one line naming the file
    it refused (trials.json when there is one), no traceback, nothing run."""
    config = small_config(
        data={"records": ["100"], "max_beats_per_record": 200},
        training={"epochs": 1},
        search={"max_evals": 1, "space": {"training.lr": {"loguniform": [1e-3, 1e-2]}}},
        tracking={"experiment": "planted"},
    )
    config_path = tmp_path / "config.toml"
    config_path.write_text(tomli_w.dumps(config.model_dump(mode="json", exclude_none=True)))
    config.run_dir.mkdir(parents=True)
    markers = {name: tmp_path / f"payload-of-{name}-ran" for name in planted}
    for name, marker in markers.items():
        (config.run_dir / name).write_bytes(planted_trials(marker))

    result = run_hypertune("tune", "--config", str(config_path), cwd=tmp_path)

    assert [marker.name for marker in markers.values() if marker.exists()] == []
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {config.run_dir / planted[-1]}: "), line
    assert "--fresh" in line


def test_a_search_saved_before_a_new_key_resumes_while_the_key_keeps_its_default(
    small_config: Callable[..., Config], tmp_path: Path
) -> None:
    """A search saved by an ecgtune that predates ``search.folds`` and ``search.pruning``
    resumes under their defaults, and is refused when the resuming config sets them."""
    config = small_config()
    saved = search_identity(config)
    for key in ("search.folds", "search.pruning", "search.grace_epochs"):
        del saved[key]
    check_same_search(saved, search_identity(config), tmp_path / "trials.json")
    changed = small_config(search={"pruning": "asha", "grace_epochs": 1})
    with pytest.raises(ConfigError, match=r"different search\.grace_epochs, search\.pruning"):
        check_same_search(saved, search_identity(changed), tmp_path / "trials.json")
