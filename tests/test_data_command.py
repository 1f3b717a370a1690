"""``hypertune.py data``: the JSON summary on stdout, the table, and one-line errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w

from ecgtune.cli import main
from ecgtune.config import Config
from ecgtune.data import Dataset, load_dataset

from .conftest import run_hypertune


def write_config(tmp_path: Path, config: Config, **data: Any) -> Path:
    """``config`` as a TOML file, with ``data`` keys replaced as given (unchecked, so a test
    can write values the schema refuses)."""
    path = tmp_path / "config.toml"
    raw: dict[str, Any] = config.model_dump(mode="json", exclude_none=True)
    raw["data"].update(data)
    path.write_text(tomli_w.dumps(raw), encoding="utf-8")
    return path


def test_json_summary_on_stdout_matches_the_dataset(
    tmp_path: Path, small_config: Callable[..., Config], capsys: pytest.CaptureFixture[str]
) -> None:
    config = small_config(data={"records": ["100", "208"], "max_beats_per_record": 300})
    path = write_config(tmp_path, config)
    assert main(["data", "--json", "--config", str(path)]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["class_names"] == ["N", "S", "V", "F", "Q"]
    assert summary["total"]["beats"] == 600 and summary["total"]["records"] == ["100", "208"]
    assert sum(split["beats"] for split in summary["splits"].values()) == 600
    for split in summary["splits"].values():
        assert sum(split["classes"].values()) == split["beats"]
        assert split["records"] == ["100", "208"]
    assert summary["total"]["classes"]["F"] > 0
    assert summary["from_cache"] is False and summary["seconds"] > 0
    assert summary["dropped_beats"] == {"beyond data.max_beats_per_record": 2273 + 2955 - 600}
    assert main(["data", "--json", "--config", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["from_cache"] is True


def table_rows(out: str) -> dict[str, list[str]]:
    """The body rows of the rich table in ``out``: split name -> its other cells."""
    rows = [[cell.strip() for cell in line.strip("│").split("│")] for line in out.splitlines()]
    return {row[0]: row[1:] for row in rows if len(row) > 1}


def expected_rows(dataset: Dataset) -> dict[str, list[str]]:
    """Beats per class, beats and records of each split and of all, counted from the data."""
    splits = {name: getattr(dataset, name) for name in ("train", "valid", "test")}

    def row(labels: np.ndarray, records: np.ndarray) -> list[str]:
        counts = np.bincount(labels, minlength=dataset.n_classes).tolist()
        return [f"{n:,}" for n in [*counts, len(labels), len(np.unique(records))]]

    rows = {name: row(beats.labels, beats.records) for name, beats in splits.items()}
    everything = splits.values()
    rows["total"] = row(
        np.concatenate([beats.labels for beats in everything]),
        np.concatenate([beats.records for beats in everything]),
    )
    return rows


def test_table_shows_counts_per_split(
    tmp_path: Path, small_config: Callable[..., Config], capsys: pytest.CaptureFixture[str]
) -> None:
    config = small_config(data={"records": ["102", "119"], "max_beats_per_record": 100})
    assert main(["data", "--config", str(write_config(tmp_path, config))]) == 0
    out = capsys.readouterr().out
    assert "Dataset: mitdb, intra split" in out
    assert "┃ split ┃ N ┃ S ┃ V ┃ F ┃ Q ┃ beats ┃ records ┃" in " ".join(out.split())
    assert table_rows(out) == expected_rows(load_dataset(config))
    assert "record 102: no MLII lead, used V5" in out
    assert "cached in" in out


def test_bad_records_exit_2_with_one_line(
    tmp_path: Path, small_config: Callable[..., Config], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, small_config(), records=["100", "999"])
    assert main(["data", "--json", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error: {path}: data.records")
    assert "unknown records ['999']" in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_an_unwritable_raw_dir_exits_2_with_one_line(
    tmp_path: Path,
    small_config: Callable[..., Config],
    unwritable_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    unreachable = "http://127.0.0.1:9/"  # the folder is refused before anything is fetched
    config = small_config(
        data={"raw_dir": str(unwritable_dir), "base_url": unreachable, "records": ["100"]}
    )
    assert main(["data", "--json", "--config", str(write_config(tmp_path, config))]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert errors == [captured.err.splitlines()[-1]]
    assert errors[0].startswith(f"error: cannot write to data.raw_dir = {unwritable_dir}: ")
    assert "Traceback" not in captured.err


def test_records_that_cannot_be_fetched_leave_their_one_line_alone(
    tmp_path: Path, small_config: Callable[..., Config]
) -> None:
    """``hypertune.py data`` whose record is missing and cannot be downloaded: its one-line
    error is all of stderr, no progress bar's last state above it."""
    unreachable = "http://127.0.0.1:9/"
    config = small_config(
        data={"raw_dir": str(tmp_path / "raw"), "base_url": unreachable, "records": ["100"]}
    )
    done = run_hypertune("data", "--config", str(write_config(tmp_path, config)), cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("error: ") and unreachable in line, line
