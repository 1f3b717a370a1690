"""The config schema: defaults, the shipped config.toml, and one-line errors with exit 2."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from ecgtune.cli import main
from ecgtune.config import Config, load_config, validate_config
from ecgtune.errors import ConfigError

from .conftest import REPO_ROOT


def run_cli_with_config(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``data`` on a config file holding ``text``; return the one-line error it printed."""
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    status = main(["data", "--config", str(path)])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_unknown_key_names_it_and_suggests_the_right_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = run_cli_with_config(tmp_path, "[model]\nchanels = [8, 16]\n", capsys)
    assert "unknown key 'model.chanels'" in message
    assert "did you mean 'model.channels'?" in message


def test_unknown_section_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    message = run_cli_with_config(tmp_path, "[trainng]\nepochs = 3\n", capsys)
    assert "unknown key 'trainng'" in message and "did you mean 'training'?" in message


def test_wrong_type_names_key_value_and_expected_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = run_cli_with_config(tmp_path, '[training]\nepochs = "many"\n', capsys)
    assert message.startswith("error: ")
    assert "training.epochs = 'many'" in message and "valid integer" in message


def test_out_of_range_value_says_the_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = run_cli_with_config(tmp_path, "[data]\ntest_fraction = 1.5\n", capsys)
    assert "data.test_fraction = 1.5" in message and "less than 1" in message


def test_unknown_enum_value_lists_the_allowed_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = run_cli_with_config(tmp_path, '[training]\noptimizer = "adagrad"\n', capsys)
    assert "training.optimizer = 'adagrad'" in message
    assert all(name in message for name in ("'adam'", "'adamw'", "'sgd'"))


def test_per_layer_lists_shorter_than_the_stack_are_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "[model]\nconv_layers = 6\n"
    message = run_cli_with_config(tmp_path, text, capsys)
    assert "model.channels has 5 entries but model.conv_layers = 6" in message


def test_missing_config_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.toml"
    assert main(["data", "--config", str(missing)]) == 2
    assert f"config file not found: {missing}" in capsys.readouterr().err


def test_toml_syntax_error_gives_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = run_cli_with_config(tmp_path, "seed = 1\n[model\nkind = 'cnn'\n", capsys)
    assert "TOML syntax error" in message and "line 2" in message


def test_bad_config_exits_2_without_traceback_from_the_real_entry_point(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[model]\nkind = 'mlp'\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "hypertune.py"), "data", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    expected = f"error: {path}: model.kind = 'mlp': Input should be 'cnn' or 'rnn'"
    assert result.stderr.strip() == expected


def test_longer_per_layer_lists_are_cut_to_the_stack() -> None:
    config = validate_config({"model": {"conv_layers": 2}})
    assert config.model.channels == [32, 64]
    assert config.model.pooling == ["none", "max"]
    assert config.model.stage_flags("se_blocks") == [False, True]


def test_one_bool_applies_to_every_stage() -> None:
    config = validate_config({"model": {"residual": True, "se_blocks": False}})
    assert config.model.stage_flags("residual") == [True] * 5
    assert config.model.stage_flags("se_blocks") == [False] * 5


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"model": {"pooling": ["max"] * 5, "pool_size": 8}}, "below one sample at stage 3"),
        ({"data": {"test_fraction": 0.6, "valid_fraction": 0.5}}, "must be below 1"),
        ({"data": {"source": "csv"}}, "data.train_files is empty"),
        (
            {"model": {"attention": True, "attention_heads": 3}},
            "model.attention_heads = 3 does not divide",
        ),
        (
            {"search": {"space": {"training.lr": {"uniform": [0.1, 0.2], "choice": [1]}}}},
            "search.space.training.lr: give exactly one of",
        ),
    ],
)
def test_rules_across_keys_name_the_keys(raw: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        validate_config(raw)


def test_shipped_config_is_valid_and_documents_every_key() -> None:
    """Each key under its own section header: ``training.objective`` documented under
    ``[training]`` does not document ``search.objective``."""
    config = load_config(REPO_ROOT / "config.toml")
    text = (REPO_ROOT / "config.toml").read_text(encoding="utf-8")
    missing = undocumented_keys(text, schema_keys(Config))
    assert missing == [], f"config.toml does not document: {missing}"
    assert config.search.space, "the default experiment searches"


def test_a_key_documented_only_in_another_section_is_undocumented() -> None:
    text = (
        "seed = 1\n"
        "[training]                # header comment\n"
        "objective = 'loss'\n"
        "# epochs = 3              # commented out: still documented\n"
        "[search]\n"
        "#   [training]            (a header in a comment opens no section)\n"
        "max_evals = 3\n"
        "[search.space]\n"
        "# objective = 'macro_f1'  # in [search.space], not [search]\n"
    )
    keys = [("", "seed"), ("training", "objective"), ("training", "epochs")]
    keys += [("search", "max_evals"), ("search", "objective"), ("", "max_evals")]
    assert undocumented_keys(text, keys) == ["search.objective", "max_evals"]


def test_reference_config_spells_out_the_schema_defaults() -> None:
    """configs/reference.toml and an empty [model] give the same (reference) network."""
    reference = load_config(REPO_ROOT / "configs" / "reference.toml")
    assert reference.model == Config().model


SECTION_HEADER = re.compile(r"^\[([^\[\]]+)\]\s*(#.*)?$")
DOCUMENTED_KEY = re.compile(r"^#? ?([A-Za-z_][A-Za-z0-9_]*) = ")


def undocumented_keys(text: str, keys: list[tuple[str, str]]) -> list[str]:
    """The ``(section, key)`` pairs (section "" for the top level) that no line of a TOML text
    sets or shows commented out (``# key = ...``) between the section's header and the next."""
    documented: set[tuple[str, str]] = set()
    section = ""
    for line in text.splitlines():
        if header := SECTION_HEADER.match(line):
            section = header.group(1).strip()
        elif key := DOCUMENTED_KEY.match(line):
            documented.add((section, key.group(1)))
    return [".".join(filter(None, pair)) for pair in keys if pair not in documented]


def schema_keys(section: type[BaseModel], prefix: str = "") -> list[tuple[str, str]]:
    """Every leaf key of a schema section with the TOML table it belongs in (sub-sections
    recurse into their own tables; ``search.space`` holds no fixed keys)."""
    keys: list[tuple[str, str]] = []
    for name, field in section.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += schema_keys(annotation, f"{prefix}.{name}".lstrip("."))
        elif name != "space":
            keys.append((prefix, name))
    return keys
