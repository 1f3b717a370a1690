"""A saved search that is well-formed JSON but does not fit the search resuming it: values
outside the space, losses and figures of the wrong kinds, a missing best checkpoint, parent
run ids of the wrong form or of another MLflow experiment. Each is refused by the command
line's own ``main`` (in this process: a Python start per case made this file the slowest of
the suite) with one line naming the file, the trial and the key, exit 2, before any trial
trains (hyperopt used to index past a choice list with a traceback after a trial had
trained); and a locked experiment is refused for its lock, by a real ``hypertune.py``
process, before its saved search is read.

One real search of two trials is run once for the module; every test plants its damage in a
copy of it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from filelock import FileLock

from ecgtune.commands.tune import tune_command
from ecgtune.config import Config, validate_config
from ecgtune.search.loop import search_identity
from ecgtune.search.ray_store import RaySearchRecord, RayTrialStore
from ecgtune.search.store import METADATA
from ecgtune.search.trials import TrialRow
from tests.conftest import QUICK_RECORDS, REPO_ROOT, TINY_CNN, run_hypertune

SPACE = {
    "model.channels": {"each": {"choice": [4, 8, 16]}},
    "training.lr": {"loguniform": [1e-3, 1e-2]},
    "model.dropout": {"uniform": [0.1, 0.5]},
}
EXPERIMENT = "saved-search"
FRESH = "to start over, use --fresh (it keeps the old file)"

Saved = dict[str, Any]


def search_config(folder: Path, mitdb_dir: Path, experiment: str = EXPERIMENT) -> Config:
    """Two trials of one epoch on a few beats, every output inside ``folder``."""
    return validate_config(
        {
            "seed": 7,
            "data": {
                "raw_dir": str(mitdb_dir),
                "records": QUICK_RECORDS[:2],
                "max_beats_per_record": 200,
                "cache_dir": str(folder / "cache"),
            },
            "model": TINY_CNN,
            "training": {"epochs": 1, "batch_size": 64, "num_threads": 1, "device": "cpu"},
            "search": {"max_evals": 2, "no_progress_evals": 0, "space": SPACE},
            "tracking": {
                "mlflow_uri": f"sqlite:///{folder / 'mlflow.db'}",
                "tensorboard_dir": str(folder / "logs"),
                "output_dir": str(folder / "runs"),
                "experiment": experiment,
            },
        },
        source="test config",
    )


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory: pytest.TempPathFactory, mitdb_dir: Path) -> Path:
    """The folder of a real search of two finished trials (run once for the module)."""
    folder = tmp_path_factory.mktemp("finished-search")
    assert tune_command(search_config(folder, mitdb_dir), quiet=True) == 0
    return folder


@pytest.fixture
def search_copy(finished_search: Path, tmp_path: Path) -> Path:
    """A copy of the finished search (its run directory, MLflow store, logs and cache)."""
    copy = tmp_path / "search"
    shutil.copytree(finished_search, copy)
    return copy


def trials_path(config: Config) -> Path:
    return config.run_dir / "trials.json"


def read_saved(config: Config) -> Saved:
    saved: Saved = json.loads(trials_path(config).read_text(encoding="utf-8"))
    return saved


def best_doc(saved: Saved) -> dict[str, Any]:
    """The finished trial with the lowest loss: the one whose checkpoint is kept."""
    done = [doc for doc in saved["trials"] if doc["result"].get("status") == "ok"]
    best: dict[str, Any] = min(done, key=lambda doc: (doc["result"]["loss"], doc["tid"]))
    return best


def best_index(saved: Saved) -> int:
    """Where the best trial's document is in the file's list (its ``trials[i]``)."""
    return next(i for i, doc in enumerate(saved["trials"]) if doc is best_doc(saved))


def resume_command(config: Config, folder: Path, *extra: str) -> list[str]:
    """The arguments of ``hypertune.py`` resuming with one trial more than the saved search
    holds (so the old code trained one before it failed), its config written in ``folder``."""
    path = folder / "config.toml"
    path.write_text(tomli_w.dumps(config.model_dump(mode="json", exclude_none=True)))
    return ["tune", "--quiet", "--config", str(path), "--max-evals", "3", *extra]


def tune(config: Config, folder: Path, *extra: str) -> tuple[int, str]:
    """The resume through the command line's own ``main`` in this process: its exit status
    and stderr."""
    done = run_hypertune(*resume_command(config, folder, *extra), cwd=folder)
    return done.returncode, done.stderr


def refusal(config: Config, folder: Path) -> str:
    """The one line of a refused resume: exit 2, no traceback, the file named, --fresh
    suggested, and no trial trained (the planted file is as it was written)."""
    planted = trials_path(config).read_bytes()
    status, stderr = tune(config, folder)
    assert status == 2, stderr
    [line] = stderr.splitlines()
    assert line.startswith(f"error: {trials_path(config)}: "), line
    assert line.endswith(FRESH), line
    assert trials_path(config).read_bytes() == planted
    assert not list((config.tracking.tensorboard_dir).rglob("trial-002"))
    return line


def write_saved(config: Config, saved: Saved) -> None:
    trials_path(config).write_text(json.dumps(saved), encoding="utf-8")


def set_value(label: str, value: Any) -> Callable[[Saved], None]:
    """Plants a sampled value in the best trial (under a label of the space or not)."""

    def plant(saved: Saved) -> None:
        doc = best_doc(saved)
        doc["misc"]["vals"][label] = [value]
        doc["misc"]["idxs"][label] = [doc["tid"]]

    return plant


def set_result(path: tuple[str, ...], value: Any) -> Callable[[Saved], None]:
    """Plants a value at ``path`` of the best trial's result document."""

    def plant(saved: Saved) -> None:
        target = best_doc(saved)["result"]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return plant


@pytest.mark.slow
@pytest.mark.parametrize(
    ("plant", "expected"),
    [
        (
            set_value("model.channels[0]", 999),
            "misc.vals.model.channels[0] = 999 is not an index of the choices [4, 8, 16] "
            "(search.space 'model.channels[0]')",
        ),
        (
            set_value("model.channels[1]", 1.5),
            "misc.vals.model.channels[1] = 1.5 is not an index of the choices [4, 8, 16]",
        ),
        (
            set_value("training.lr", -5),
            "misc.vals.training.lr = -5 is outside loguniform = [0.001, 0.01] (search.space "
            "'training.lr')",
        ),
        (
            set_value("model.dropout", 0.99),
            "misc.vals.model.dropout = 0.99 is outside uniform = [0.1, 0.5]",
        ),
        (set_value("model.depth", 3), "misc.vals.model.depth = 3 is not drawn by any key"),
        (set_result(("loss",), float("nan")), "result.loss = NaN is not a finite number"),
        (set_result(("loss",), -float("inf")), "result.loss = -Infinity is not a finite number"),
        (
            set_result(("row", "status"), "great"),
            "result.row.status = \"great\" is not one of ('ok', 'pruned', 'failed', 'killed')",
        ),
        (
            set_result(("row", "objective"), None),
            "result.row.objective = null is not a finite number, as the status is ok",
        ),
        (
            set_result(("valid", "macro_f1"), "high"),
            'result.valid.macro_f1 = "high" is not a finite number',
        ),
        (set_result(("row", "number"), 7), "result.row.number = 7 is not the trial's tid"),
    ],
    ids=[
        "choice-index-999",
        "choice-index-fraction",
        "lr-minus-5",
        "dropout-past-range",
        "unknown-label",
        "nan-loss",
        "minus-inf-loss",
        "unknown-status",
        "finished-without-objective",
        "figure-of-text",
        "row-of-another-trial",
    ],
)
def test_a_saved_trial_that_does_not_fit_is_refused_naming_the_trial_and_key(
    search_copy: Path,
    mitdb_dir: Path,
    plant: Callable[[Saved], None],
    expected: str,
) -> None:
    config = search_config(search_copy, mitdb_dir)
    saved = read_saved(config)
    index = best_index(saved)
    plant(saved)
    write_saved(config, saved)

    line = refusal(config, search_copy)

    assert f": trials[{index}].{expected}" in line, line


def without_note(saved: Saved) -> None:
    del best_doc(saved)["result"]["row"]["note"]


def with_extra_field(saved: Saved) -> None:
    best_doc(saved)["result"]["row"]["rank"] = 1


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (set_result(("row", "seconds"), -1.0), "row.seconds = -1.0 is not a number of seconds"),
        (set_result(("row", "epochs"), -1), "row.epochs = -1 is not a count of epochs"),
        (set_result(("row", "number"), -1), "row.number = -1 is not a trial number"),
        (without_note, "row.note is missing"),
        (
            with_extra_field,
            "row has other fields than number, status, values, objective, epochs, seconds, note",
        ),
    ],
    ids=["negative-seconds", "negative-epochs", "negative-number", "no-note", "extra-field"],
)
def test_a_damaged_saved_row_is_refused_with_its_exact_line(
    search_copy: Path,
    mitdb_dir: Path,
    damage: Callable[[Saved], None],
    expected: str,
) -> None:
    config = search_config(search_copy, mitdb_dir)
    saved = read_saved(config)
    index = best_index(saved)
    damage(saved)
    write_saved(config, saved)

    line = refusal(config, search_copy)

    path = trials_path(config)
    assert line == f"error: {path}: trials[{index}].result.{expected}; {FRESH}"


def test_a_saved_search_without_its_best_checkpoint_is_refused_before_any_trial(
    search_copy: Path, mitdb_dir: Path
) -> None:
    config = search_config(search_copy, mitdb_dir)
    tid = best_doc(read_saved(config))["tid"]
    checkpoint = config.run_dir / "checkpoints" / f"trial-{tid:03d}.pt"
    checkpoint.unlink()

    line = refusal(config, search_copy)

    assert f"the best trial ({tid}) has no usable model: checkpoint not found: {checkpoint}" in line


@pytest.mark.parametrize(
    ("parent_run_id", "expected"),
    [
        ("../../mlruns/0", 'parent_run_id = "../../mlruns/0" is not an MLflow run id'),
        ("'abc'", "parent_run_id = \"'abc'\" is not an MLflow run id"),
        ("0" * 32, f"parent_run_id = '{'0' * 32}' is no run of the MLflow store"),
    ],
    ids=["path", "quoted", "unknown"],
)
def test_a_parent_run_id_of_the_wrong_form_or_unknown_is_refused(
    search_copy: Path,
    mitdb_dir: Path,
    parent_run_id: str,
    expected: str,
) -> None:
    config = search_config(search_copy, mitdb_dir)
    saved = read_saved(config)
    saved["attachments"][METADATA]["parent_run_id"] = parent_run_id
    write_saved(config, saved)

    line = refusal(config, search_copy)

    assert expected in line, line
    assert "cannot use the MLflow tracking store" not in line


def test_a_saved_search_copied_from_another_experiment_is_refused(
    search_copy: Path, mitdb_dir: Path
) -> None:
    """Same space and base config, another experiment in the same MLflow store: resuming
    would link the new trials to the other experiment's parent run."""
    source = search_config(search_copy, mitdb_dir)
    config = search_config(search_copy, mitdb_dir, experiment="copied-here")
    shutil.copytree(source.run_dir, config.run_dir)
    parent = read_saved(config)["attachments"][METADATA]["parent_run_id"]

    line = refusal(config, search_copy)

    assert (
        f"parent_run_id = '{parent}' is a run of the MLflow experiment '{EXPERIMENT}', not of "
        f"tracking.experiment = 'copied-here'" in line
    ), line


@pytest.fixture
def held_lock(search_copy: Path, mitdb_dir: Path) -> Iterator[Config]:
    """The experiment's lock held by this process, as a running search holds it."""
    config = search_config(search_copy, mitdb_dir)
    lock = FileLock(config.run_dir / ".ecgtune.lock", timeout=0)
    with lock:
        yield config


@pytest.mark.slow
def test_a_locked_experiment_is_refused_for_its_lock_before_its_saved_search_is_read(
    held_lock: Config, search_copy: Path
) -> None:
    """Another run's --set values (another identity) and a saved trial outside the space:
    neither is reported, the lock is."""
    saved = read_saved(held_lock)
    set_value("model.channels[0]", 999)(saved)
    write_saved(held_lock, saved)

    command = resume_command(held_lock, search_copy, "--set", "model.fc_sizes=[16]")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "hypertune.py"), *command],
        cwd=search_copy,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )

    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: another ecgtune run holds {held_lock.run_dir}/.ecgtune.lock")


@pytest.mark.parametrize(
    ("objective", "expected"),
    [
        (0.5, "the best trial (0) has no usable model: checkpoint not found: "),
        (float("nan"), "trials[0].row.objective = NaN is not a finite number or null"),
    ],
    ids=["no-checkpoint", "nan-objective"],
)
def test_the_ray_engines_saved_search_gets_the_same_checks(
    tmp_path: Path,
    mitdb_dir: Path,
    objective: float,
    expected: str,
) -> None:
    """``ray_trials.json`` is read by the same code: refused before Ray starts."""
    config, store = planted_ray_search(tmp_path, mitdb_dir, objective)

    status, stderr = tune(config, tmp_path)

    assert status == 2, stderr
    [line] = stderr.splitlines()
    assert line.startswith(f"error: {store.path}: {expected}"), line
    assert line.endswith(FRESH), line


def test_a_ray_search_saved_before_the_engine_was_a_package_is_refused(
    tmp_path: Path, mitdb_dir: Path
) -> None:
    """Version 1: Ray's experiment names ``ecgtune.search.ray_engine``, which
    ``Tuner.restore`` could not unpickle (a traceback once Ray had started)."""
    config, store = planted_ray_search(tmp_path, mitdb_dir, 0.5)
    saved = json.loads(store.path.read_text())
    store.path.write_text(json.dumps({**saved, "version": 1}))

    status, stderr = tune(config, tmp_path)

    assert status == 2, stderr
    assert stderr == (
        f"error: {store.path}: version = 1 is not 2, the format this ecgtune reads; {FRESH}\n"
    )


def planted_ray_search(
    folder: Path, mitdb_dir: Path, objective: float
) -> tuple[Config, RayTrialStore]:
    """A Ray engine's config and its saved search of one finished trial, planted."""
    config = search_config(folder, mitdb_dir)
    config = config.model_copy(
        update={"search": config.search.model_copy(update={"engine": "ray"})}
    )
    metadata = {
        "identity": search_identity(config),
        "parent_run_id": "0" * 32,
        "search_id": "search-20260101-120000",
    }
    record = RaySearchRecord(metadata)
    record.add(TrialRow(0, "ok", {}, objective, 1, 1.0, "trained"), {"macro_f1": 0.5})
    store = RayTrialStore(config.run_dir)
    config.run_dir.mkdir(parents=True)
    store.save(record)
    return config, store
