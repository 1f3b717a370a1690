"""What every command does before its work: check that its output folders and its MLflow
store are writable, and hold the experiment's lock so that two runs never write one run
directory at once."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ecgtune.config import AAMI_CLASSES, Config
from ecgtune.data.files import atomic_write, writable_problem
from ecgtune.errors import UserError
from ecgtune.models.budget import check_model_budget
from ecgtune.report import CHECKPOINT_NAME
from ecgtune.tracking.local_store import check_local_store
from ecgtune.training import available_cores, resolve_device

LOCK_FILE = ".ecgtune.lock"
OWNER_FILE = ".ecgtune.lock.json"
"""Who holds the lock (pid, host, command, start time): named when a second run is refused."""


def quiet_library_logs(verbose: bool) -> None:
    """MLflow's INFO lines (database creation, "View run" links) only with ``verbose``, and
    never hyperopt's "job exception" line: a failed trial is reported by the search itself,
    and an error that ends a command must stay its one line."""
    logging.getLogger("mlflow").setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("hyperopt").setLevel(logging.CRITICAL)


def output_folders(config: Config) -> dict[str, Path]:
    """The folders a search or a training writes, by the config key that names them."""
    return {
        "tracking.output_dir": config.run_dir,
        "tracking.tensorboard_dir": config.tracking.tensorboard_dir,
        "data.cache_dir": config.data.cache_dir,
    }


def device_and_threads(config: Config) -> tuple[str, int]:
    """The device a run trains on and its torch threads, for the header."""
    device = resolve_device(config.training.device)
    return device.type, config.training.num_threads or available_cores()


def check_model_size(config: Config) -> None:
    """The base network's parameters and one batch's activations within bounds, before any
    download or training (the head's class count matters little: the AAMI five unless the
    config names others)."""
    check_model_budget(config, len(config.data.class_names or AAMI_CLASSES))


def run_checkpoint(run_dir: Path) -> Path:
    """The model file of ``RUN_DIR`` (``evaluate``, ``predict``, ``export``); a folder that
    does not exist is named as such, not as a missing checkpoint."""
    if not run_dir.is_dir():
        raise UserError(
            f"RUN_DIR {run_dir}: no such folder (a run folder holds {CHECKPOINT_NAME}; train and "
            f"tune write theirs under tracking.output_dir)"
        )
    return run_dir / CHECKPOINT_NAME


def check_writable(folders: Mapping[str, Path]) -> None:
    """Create each folder and write a scratch file in it, before any work: a read-only or
    missing-permission folder is one line naming the key and the path, not a failure hours
    later. ``folders`` maps the config key (or option) to its folder."""
    for key, folder in folders.items():
        if problem := writable_problem(folder):
            raise UserError(
                f"{key} = {str(folder)!r}: cannot write there ({problem}); choose a writable folder"
            )


def check_outputs(config: Config) -> None:
    """Every place a search or a training writes, checked before any work: the output
    folders and a local MLflow store (a SQLite file or a file store)."""
    check_writable(output_folders(config))
    check_local_store(config.tracking.mlflow_uri)


@contextmanager
def run_lock(run_dir: Path, command: str) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the whole command. The lock is the operating system's
    (``filelock``), so a killed process releases it; a second run is refused at once with the
    lock's path and its holder."""
    lock = FileLock(run_dir / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(
            f"another ecgtune run holds {run_dir / LOCK_FILE} ({lock_owner(run_dir)}); wait for "
            f"it to finish, or choose another tracking.experiment"
        ) from None
    try:
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "started": datetime.now().isoformat(timespec="seconds"),
        }
        with atomic_write(run_dir / OWNER_FILE) as stream:
            stream.write(json.dumps(owner).encode())
        yield
    finally:
        lock.release()


def lock_owner(run_dir: Path) -> str:
    """The holder as recorded in the owner file, in words."""
    try:
        owner: dict[str, Any] = json.loads((run_dir / OWNER_FILE).read_text(encoding="utf-8"))
        return (
            f"`{owner['command']}`, process {owner['pid']} on {owner['host']}, "
            f"started {owner['started']}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def timestamped_dir(root: Path, name: str) -> Path:
    """A new directory ``root/<name>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``... when taken), so a
    run never writes into the files of another."""
    path = root / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
    candidate, attempt = path, 1
    while candidate.exists():
        attempt += 1
        candidate = path.with_name(f"{path.name}-{attempt}")
    candidate.mkdir(parents=True)
    return candidate
