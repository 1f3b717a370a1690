"""``hypertune.py data``: the JSON summary on stdout, the table, and one-line errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from ecgtune.cli import main
from ecgtune.config import Config


def write_config(tmp_path: Path, config: Config) -> Path:
    path = tmp_path / "config.toml"
    raw: dict[str, Any] = config.model_dump(mode="json", exclude_none=True)
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


def test_table_shows_counts_per_split(
    tmp_path: Path, small_config: Callable[..., Config], capsys: pytest.CaptureFixture[str]
) -> None:
    config = small_config(data={"records": ["102", "119"], "max_beats_per_record": 100})
    assert main(["data", "--config", str(write_config(tmp_path, config))]) == 0
    out = capsys.readouterr().out
    assert "Dataset: mitdb, intra split" in out
    assert all(word in out for word in ("train", "valid", "test", "total", "N", "Q"))
    assert "record 102: no MLII lead, used V5" in out
    assert "cached in" in out


def test_bad_records_exit_2_with_one_line(
    tmp_path: Path, small_config: Callable[..., Config], capsys: pytest.CaptureFixture[str]
) -> None:
    config = small_config(data={"records": ["100", "999"]})
    assert main(["data", "--json", "--config", str(write_config(tmp_path, config))]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: data.records: unknown records ['999']")
    assert len(captured.err.strip().splitlines()) == 1
