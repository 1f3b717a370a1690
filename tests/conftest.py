"""Shared fixtures: the real MIT-BIH records from ../shared and small, fast configs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ecgtune.config import Config, validate_config

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


def find_mitdb_dir() -> Path:
    """The read-only records: $ECGTUNE_MITDB_DIR, else ../shared/data/mitdb beside the repo."""
    configured = os.environ.get("ECGTUNE_MITDB_DIR")
    path = Path(configured) if configured else REPO_ROOT.parent / "shared" / "data" / "mitdb"
    if not (path / "100.hea").is_file():
        pytest.fail(f"MIT-BIH records not found in {path} (set ECGTUNE_MITDB_DIR)")
    return path


@pytest.fixture(scope="session")
def mitdb_dir() -> Path:
    return find_mitdb_dir()


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
            "training": {"epochs": 3, "batch_size": 64, "num_threads": 1},
            "search": {"max_evals": 2, "no_progress_evals": 0},
            "tracking": {
                "mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                "tensorboard_dir": str(tmp_path / "logs"),
                "output_dir": str(tmp_path / "runs"),
            },
        }
        return validate_config(deep_merge(raw, overrides), source="test config")

    return make
