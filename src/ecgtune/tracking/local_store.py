"""A local MLflow store checked before any work, and where its experiments keep artifacts.

MLflow opens a SQLite file with SQLAlchemy, which retries a file it cannot open for about
100 seconds (``mlflow.store.db.utils.MAX_RETRY_COUNT``, no setting changes it) and then
fails with a long traceback. So the file's folder is checked as the output folders are (it
must be writable: SQLite writes its journal beside the file), and an existing file must open
as an SQLite database for reading and writing; a file store's folder must be writable. Each
problem is one line naming ``tracking.mlflow_uri``, within a second.

A database store (SQLite, PostgreSQL, ...) has no folder of its own for artifacts: MLflow
puts them in ``./mlruns`` of the working folder. An experiment ecgtune creates there keeps
them under its run directory instead (:func:`artifact_location`), so a run writes nowhere but
the folders its config names.

This module imports no MLflow: every command checks its outputs, and MLflow loads slowly.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from ecgtune.config import MLFLOW_DATABASES, Config, uri_scheme
from ecgtune.data.files import writable_problem
from ecgtune.errors import UserError

ARTIFACTS_DIR = "mlflow-artifacts"
"""The run directory's folder for the MLflow artifacts of an experiment in a database store."""
SQLITE_PREFIX = "sqlite:///"
"""What precedes the file's path in a SQLite URI (``sqlite:////abs/path`` for an absolute one)."""


def check_local_store(uri: str) -> None:
    """A SQLite file or a file store that MLflow could not open or write, refused now with
    one line; other stores (servers, remote databases) are checked by connecting."""
    scheme = uri_scheme(uri)
    if scheme == "sqlite":
        path = sqlite_path(uri)
        if path is not None:
            check_sqlite_file(uri, path)
    elif scheme in ("", "file"):
        folder = Path(url2pathname(urlsplit(uri).path)) if scheme else Path(uri)
        if problem := writable_problem(folder):
            raise UserError(
                f"tracking.mlflow_uri = {uri!r}: cannot write the file store's folder {folder} "
                f"({problem}); choose a writable folder"
            )


def sqlite_path(uri: str) -> Path | None:
    """The database file of a SQLite URI, as MLflow reads it; None for an in-memory one."""
    _, _, rest = uri.partition(":///")
    path = unquote(rest.partition("?")[0])
    return None if path in ("", ":memory:") else Path(path)


def check_sqlite_file(uri: str, path: Path) -> None:
    """The file's folder writable (SQLite writes a journal beside the file), and an existing
    file a database this process can read and write."""
    where = f"tracking.mlflow_uri = {uri!r}"
    if problem := writable_problem(path.parent):
        raise UserError(
            f"{where}: cannot write the database's folder {path.parent} ({problem}); choose a "
            f"writable path"
        )
    if not path.exists():
        return
    if not path.is_file() or not os.access(path, os.R_OK | os.W_OK):
        what = "a folder" if path.is_dir() else "not a file this process can read and write"
        raise UserError(f"{where}: {path} is {what}; give an SQLite database file")
    try:
        database = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True)
        with contextlib.closing(database):
            database.execute("PRAGMA schema_version")
    except sqlite3.Error as exc:
        raise UserError(
            f"{where}: {path} is not an SQLite database ({exc}); give a new file name or an "
            f"MLflow database"
        ) from None


def artifact_location(config: Config) -> Path | None:
    """Where a new experiment keeps its artifacts: under the run directory for a database
    store (MLflow's default is ``./mlruns`` of the working folder); None for a file store
    (its own folder) or a tracking server (which decides)."""
    if uri_scheme(config.tracking.mlflow_uri) in MLFLOW_DATABASES:
        return config.run_dir / ARTIFACTS_DIR
    return None
