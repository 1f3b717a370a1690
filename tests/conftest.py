"""Shared fixtures: the real MIT-BIH records from ../shared and small, fast configs."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ecgtune.cli import main
from ecgtune.config import Config, validate_config

pytest_plugins = ["tests.search_helpers"]  # the search tests' fixtures

REPO_ROOT = Path(__file__).resolve().parents[1]
QUICK_RECORDS = ["100", "106", "119", "208", "209", "232"]
TINY_CNN: dict[str, Any] = {
    "conv_layers": 2,
    "channels": [8, 16],
    "kernel_sizes": [7, 5],
    "dilations": [1, 1],
    "pooling": ["max", "max"],
    "se_blocks": True,
    "residual": [False, True],
    "fc_sizes": [32],
}
"""The tests' small, fast network: two stages, SE, one residual stage."""

LOCAL_HOSTS = ("127.0.0.1", "localhost")


@pytest.fixture(scope="session", autouse=True)
def no_proxy_for_local_servers() -> Iterator[None]:
    """The tests' HTTP and MLflow servers run on this machine: a proxy in the environment
    (``HTTP_PROXY``, ...) must not take requests to them elsewhere. urllib prefers
    ``no_proxy`` to ``NO_PROXY`` and requests reads either, so both get the union."""
    names = ("NO_PROXY", "no_proxy")
    hosts = [h.strip() for name in names for h in os.environ.get(name, "").split(",") if h.strip()]
    with pytest.MonkeyPatch.context() as patch:
        for name in names:
            patch.setenv(name, ",".join(dict.fromkeys([*hosts, *LOCAL_HOSTS])))
        yield


def find_mitdb_dir() -> Path:
    """The read-only records: $ECGTUNE_MITDB_DIR, else ../shared/data/mitdb beside the repo."""
    configured = os.environ.get("ECGTUNE_MITDB_DIR")
    path = Path(configured) if configured else REPO_ROOT.parent / "shared" / "data" / "mitdb"
    if not (path / "100.hea").is_file():
        source = "from ECGTUNE_MITDB_DIR" if configured else "the default: ECGTUNE_MITDB_DIR unset"
        pytest.fail(
            f"MIT-BIH records not found in {path} ({source}): set ECGTUNE_MITDB_DIR to the "
            f"folder holding 100.hea, 100.dat, 100.atr, ...",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def mitdb_dir() -> Path:
    return find_mitdb_dir()


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder this process cannot write to: made read-only with chmod or, where the mode does
    not bind (root), a path below a regular file, which no one can create."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            (tmp_path / "file.txt").write_text("a file, not a folder", encoding="utf-8")
            yield tmp_path / "file.txt" / "sub"
        else:
            yield folder
    finally:
        folder.chmod(0o755)


HIDDEN_BY_THE_INTERPRETER = (
    DeprecationWarning,
    PendingDeprecationWarning,
    ImportWarning,
    ResourceWarning,
)
"""What a fresh interpreter ignores (``warnings.filters`` at start-up, outside ``__main__``);
every other warning it prints to stderr."""


def run_hypertune(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``hypertune.py ARGV`` run in ``cwd`` through the command line's own ``main`` in this
    process (the code ``hypertune.py`` calls): its exit status, stdout and stderr, with the
    warnings a fresh interpreter would have printed to stderr (pytest would collect them).

    A fresh interpreter spends about 5 s importing torch and MLflow; tests keep one for what
    only a real process shows (signals, locks, a lost server, two processes)."""
    out, err = io.StringIO(), io.StringIO()
    with (
        contextlib.chdir(cwd),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.resetwarnings()
        for category in HIDDEN_BY_THE_INTERPRETER:
            warnings.simplefilter("ignore", category)
        status = main(list(argv))
    printed = "".join(
        warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in caught
    )
    return subprocess.CompletedProcess(
        ["hypertune.py", *argv], status, out.getvalue(), printed + err.getvalue()
    )


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.fixture
def small_config(tmp_path: Path, mitdb_dir: Path) -> Callable[..., Config]:
    """A config on a few real records, a tiny CNN and every output inside ``tmp_path``.

    Call it with nested dicts to override sections, e.g. ``small_config(model={"kind": "rnn"})``.
    """

    def make(**overrides: Any) -> Config:
        raw: dict[str, Any] = {
            "seed": 7,
            "data": {
                "raw_dir": str(mitdb_dir),
                "records": QUICK_RECORDS,
                "max_beats_per_record": 400,
                "cache_dir": str(tmp_path / "cache"),
            },
            "model": TINY_CNN,
            "training": {"epochs": 3, "batch_size": 64, "num_threads": 1, "device": "cpu"},
            "search": {"max_evals": 2, "no_progress_evals": 0},
            "tracking": {
                "mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                "tensorboard_dir": str(tmp_path / "logs"),
                "output_dir": str(tmp_path / "runs"),
            },
        }
        return validate_config(deep_merge(raw, overrides), source="test config")

    return make
