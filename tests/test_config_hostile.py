"""Hostile and careless configs: every one is refused with one line naming the key, the value
and what is allowed, before any work starts; the real entry point exits 2 without a traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ecgtune.config import (
    CPU_CORES,
    Config,
    load_config,
    parse_overrides,
    schema_field,
    validate_config,
)
from ecgtune.dotted import flatten, get_dotted, set_dotted
from ecgtune.errors import ConfigError

from .conftest import REPO_ROOT, run_hypertune

UNREACHABLE = "http://127.0.0.1:9/"
"""Nothing listens on port 9: a config that got as far as downloading would fail differently."""


def write_config(tmp_path: Path, text: str | bytes, name: str = "config.toml") -> Path:
    """A config file whose records (if it ever came to that) could come from nowhere."""
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


def safe_data(tmp_path: Path) -> str:
    """A ``[data]`` table that cannot download: an empty folder and an unreachable server."""
    return f'[data]\nraw_dir = "{tmp_path / "raw"}"\nbase_url = "{UNREACHABLE}"\n'


def run_data_command(config: Path, *extra: str) -> str:
    """``hypertune.py data`` in a fresh interpreter; its one-line error (exit 2, no traceback)."""
    result = subprocess.run(
        [sys.executable, "hypertune.py", "data", "--config", str(config), *extra],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def refused(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        validate_config(raw)
    return str(caught.value)


# --- dotted keys -------------------------------------------------------------------------------


def test_dotted_keys_get_set_and_flatten() -> None:
    raw: dict[str, Any] = {"seed": 1, "model": {"channels": [8, 16]}}
    set_dotted(raw, "data.resample.method", "smote")
    set_dotted(raw, "model.dropout", 0.2)
    assert get_dotted(raw, "data.resample.method") == "smote"
    assert get_dotted(raw, "model.channels") == [8, 16]
    assert flatten(raw) == {
        "seed": 1,
        "model.channels": [8, 16],
        "model.dropout": 0.2,
        "data.resample.method": "smote",
    }
    with pytest.raises(KeyError):
        get_dotted(raw, "training.lr")


def test_setting_below_a_value_is_refused_not_overwritten() -> None:
    raw: dict[str, Any] = {"data": 5}
    with pytest.raises(ConfigError, match=r"cannot set 'data.leads': data = 5 is a value"):
        set_dotted(raw, "data.leads", ["V1"])
    assert raw == {"data": 5}


# --- one lookup of a dotted key ----------------------------------------------------------------


def test_schema_field_gives_the_type_of_a_leaf_key() -> None:
    assert schema_field("training.lr") is float
    assert schema_field("model.channels") == list[int]
    assert schema_field("seed") is int


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("training.lrr", "unknown key 'training.lrr' (did you mean 'training.lr'?); allowed keys"),
        ("trainng.lr", "unknown key 'trainng.lr' (did you mean 'training.lr'?)"),
        ("epochs", "unknown key 'epochs' (did you mean 'training.epochs'?)"),
        ("seed.x", "unknown key 'seed.x': 'seed' is a key, not a section"),
        ("data.resample", "'data.resample' is a section, not a key: name one of its keys"),
    ],
)
def test_schema_field_refuses_unknown_keys_and_sections(key: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        schema_field(key)


def test_a_typo_in_the_file_gets_the_same_message_as_the_lookup(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as in_file:
        load_config(write_config(tmp_path, "[training]\nlrr = 0.1\n"))
    with pytest.raises(ConfigError) as looked_up:
        schema_field("training.lrr")
    assert str(in_file.value).endswith(str(looked_up.value))
    assert "epochs, batch_size, optimizer, lr," in str(looked_up.value)


# --- --set KEY=VALUE ---------------------------------------------------------------------------


def test_overrides_are_toml_values_applied_before_validation(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[training]\nepochs = 30\n")
    overrides = [
        "training.epochs=2",
        'data.records=["100", "101"]',
        "data.missing_lead=skip",
        "training.lr = 1e-4",
        "model.se_blocks=false",
    ]
    config = load_config(path, overrides)
    assert config.training.epochs == 2
    assert config.data.records == ["100", "101"]
    assert config.data.missing_lead == "skip"
    assert config.training.lr == pytest.approx(1e-4)
    assert config.model.se_blocks is False
    assert parse_overrides(overrides) == {
        "training.epochs": 2,
        "data.records": ["100", "101"],
        "data.missing_lead": "skip",
        "training.lr": 1e-4,
        "model.se_blocks": False,
    }
    assert load_config(path, ['data.leads=["V2"]']).data.leads == ["V2"]
    assert load_config(path, ["training.epochs=3", "training.epochs=4"]).training.epochs == 4


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("training.lrr=3", "--set 'training.lrr=3': unknown key 'training.lrr' (did you mean "),
        ("epochs", "--set 'epochs': expected KEY=VALUE"),
        ("=3", "--set '=3': expected KEY=VALUE"),
        ("training.epochs=", "--set 'training.epochs=': no value after '='"),
        ('data.records=["100"', "not a TOML value (Unclosed array"),
        ("training.epochs=1\nseed = 3", "give one value after '=', not several lines"),
        ("training", "expected KEY=VALUE"),
        ("training={}", "'training' is a section, not a key"),
    ],
)
def test_bad_overrides_are_named(tmp_path: Path, item: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(write_config(tmp_path, "seed = 1\n"), [item])


def test_a_bad_overridden_value_names_the_override(tmp_path: Path) -> None:
    path = write_config(tmp_path, "seed = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, ["training.epochs=0"])
    assert str(caught.value).startswith(f"{path} with --set training.epochs: training.epochs = 0")


def test_override_typo_exits_2_from_the_real_entry_point(tmp_path: Path) -> None:
    path = write_config(tmp_path, safe_data(tmp_path))
    message = run_data_command(path, "--set", "training.lrr=3")
    assert "unknown key 'training.lrr' (did you mean 'training.lr'?)" in message


# --- upper bounds on what sizes memory or time -------------------------------------------------

ONE_STAGE = {"conv_layers": 1, "pooling": ["none"], "se_blocks": False, "residual": False}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"model": {**ONE_STAGE, "channels": [1025]}}, "model.channels = [1025]: entries must be"),
        ({"model": {**ONE_STAGE, "kernel_sizes": [257]}}, "model.kernel_sizes = [257]: entries"),
        ({"model": {**ONE_STAGE, "dilations": [65]}}, "model.dilations = [65]: entries must be"),
        ({"model": {"fc_sizes": [8193]}}, "model.fc_sizes = [8193]: entries must be >= 1 and <="),
        ({"model": {"fc_sizes": [8] * 9}}, "model.fc_sizes = [8, 8, 8, 8, 8, 8, 8, 8, 8]: List"),
        ({"model": {"hidden_size": 1025}}, "model.hidden_size = 1025"),
        ({"training": {"num_threads": CPU_CORES + 1}}, f"more than the {CPU_CORES} CPU cores"),
        ({"data": {"resample": {"target_per_class": 1_000_001}}}, "target_per_class = 1000001"),
        ({"data": {"window_seconds": 61}}, "data.window_seconds = 61"),
        ({"data": {"max_beats_per_record": 100_001}}, "data.max_beats_per_record = 100001"),
        ({"training": {"early_stopping_patience": 1001}}, "early_stopping_patience = 1001"),
        ({"training": {"plateau_patience": 1001}}, "training.plateau_patience = 1001"),
        ({"training": {"batch_size": 65537}}, "training.batch_size = 65537"),
        ({"search": {"max_evals": 10_001}}, "search.max_evals = 10001"),
        ({"search": {"timeout": 30 * 86400 + 1}}, "search.timeout = 2592001"),
        ({"search": {"no_progress_evals": 10_001}}, "search.no_progress_evals = 10001"),
        ({"seed": 2**32}, "seed = 4294967296: Input should be less than or equal to 4294967295"),
        ({"seed": -1}, "seed = -1"),
    ],
)
def test_everything_that_sizes_memory_or_time_is_bounded(
    raw: dict[str, Any], expected: str
) -> None:
    assert expected in refused(raw)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[training]\nlr = nan", "training.lr = nan: not a finite number"),
        ("[training]\nlr = -nan", "training.lr = nan: not a finite number"),
        ("[model]\ndropout = inf", "model.dropout = inf: not a finite number"),
        ("[search]\ntimeout = -inf", "search.timeout = -inf: not a finite number"),
        ("[training]\nepochs = nan", "training.epochs = nan: not a finite number"),
        ("[model]\nfc_sizes = [32, inf]", "entry [1] = inf is not a finite number"),
        (
            '[search.space]\n"training.lr" = {uniform = [0.001, inf]}',
            "entry [1] = inf is not a finite number",
        ),
    ],
)
def test_nan_and_inf_are_named_as_not_finite(tmp_path: Path, text: str, expected: str) -> None:
    """nan compares false with every bound, so pydantic blamed the upper one ("<= 10")."""
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, text))
    assert expected in str(caught.value)
    assert "less than" not in str(caught.value) and "greater than" not in str(caught.value)


def test_nan_exits_2_from_the_real_entry_point(tmp_path: Path) -> None:
    path = write_config(tmp_path, safe_data(tmp_path))
    message = run_data_command(path, "--set", "training.lr=nan")
    assert "training.lr = nan: not a finite number (nan and inf are refused)" in message


def test_the_bounds_themselves_are_allowed() -> None:
    config = validate_config(
        {
            "seed": 2**32 - 1,
            "model": {**ONE_STAGE, "channels": [1024], "kernel_sizes": [255], "dilations": [64]},
            "training": {"num_threads": CPU_CORES, "early_stopping_patience": 1000},
            "search": {"max_evals": 10_000, "timeout": 30 * 86400},
            "data": {"window_seconds": 60, "resample": {"target_per_class": 1_000_000}},
        }
    )
    assert config.seed == 2**32 - 1 and config.model.channels == [1024]


# --- one line and exit 2 from the real entry point ---------------------------------------------


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = write_config(tmp_path, "seed = 1\n# café\n".encode("latin-1"))
    message = run_data_command(path)
    assert message == f"error: {path}: not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8"
    with_bom = write_config(tmp_path, b"\xef\xbb\xbfseed = 1\n\n# \xff\n", "bom.toml")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xff on line 3\)"):
        load_config(with_bom)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = write_config(tmp_path, "\ufeffseed = 5\n[training]\nepochs = 2\n")
    config = load_config(path)
    assert config.seed == 5 and config.training.epochs == 2


@pytest.mark.parametrize("text", ["", "\n  \n", "# only a comment\n"])
def test_an_empty_config_is_refused_before_any_download(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, text))
    message = str(caught.value)
    assert "the config is empty (no keys), so every key would take its default" in message
    assert "config.toml" in message and "--set KEY=VALUE" in message


def test_an_empty_config_exits_2_from_the_real_entry_point(tmp_path: Path) -> None:
    path = write_config(tmp_path, "# nothing here yet\n")
    assert run_data_command(path).startswith(f"error: {path}: the config is empty (no keys)")


def test_a_huge_file_is_not_read_whole(tmp_path: Path) -> None:
    message = run_data_command(Path("/dev/zero"))
    assert message == "error: /dev/zero: larger than 1,048,576 bytes, not a config file"


def test_base_url_must_be_http(tmp_path: Path) -> None:
    path = write_config(tmp_path, f'[data]\nraw_dir = "{tmp_path / "raw"}"\nbase_url = "ftp://x"')
    message = run_data_command(path)
    assert "data.base_url = 'ftp://x': must be an http:// or https:// URL" in message
    assert "must be an http" in refused({"data": {"base_url": "physionet.org/files/mitdb/"}})
    assert "must be an http" in refused({"data": {"base_url": "https://"}})
    mirror = "http://127.0.0.1:8000/mitdb"
    assert validate_config({"data": {"base_url": mirror}}).data.base_url == mirror


@pytest.mark.parametrize(
    "args",
    [
        ["tune", "--set", 'data.raw_dir="https://physionet.org/files/mitdb/1.0.0/"'],
        ["train", "--set", 'data.raw_dir="s3://bucket/mitdb"'],
        ["data", "--set", 'data.raw_dir="https://physionet.org/files/mitdb/1.0.0/"'],
    ],
    ids=["tune https", "train s3", "data https"],
)
def test_a_url_as_raw_dir_is_refused_naming_the_url_key_and_creating_nothing(
    tmp_path: Path, args: list[str]
) -> None:
    """``data.raw_dir`` is a local folder: a URL there would become ``./https:/...`` (and the
    run's mlflow.db, runs/ and logs/ beside it) before failing on the download; it is refused
    at validation, naming the key that takes the download URL, in a folder left as it was."""
    path = write_config(tmp_path, "[training]\nepochs = 3\n")
    result = run_hypertune(*args[:1], "--config", str(path), *args[1:], cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    value = args[-1].split("=", 1)[1].strip('"')
    assert result.stderr == (
        f"error: {path} with --set data.raw_dir: data.raw_dir = {value!r}: a URL, not a folder: "
        f"data.raw_dir is the local folder the records are read from (and downloaded to); the "
        f"URL they are downloaded from is data.base_url\n"
    )
    assert [entry.name for entry in tmp_path.iterdir()] == ["config.toml"]


def test_a_local_window_too_short_to_hold_an_interval_is_refused(tmp_path: Path) -> None:
    """``data.rr_local_seconds = 1e-6`` would make the seconds reference the previous interval
    itself, its ratios always 1: refused below 10 s from the real command line; 10 s, which
    holds five intervals at 30 beats a minute, is accepted."""
    path = write_config(tmp_path, safe_data(tmp_path))
    message = run_data_command(path, "--set", "data.rr_local_seconds=1e-6")
    assert message.endswith(
        "with --set data.rr_local_seconds: data.rr_local_seconds = 1e-06: Input should be "
        "greater than or equal to 10"
    )
    assert validate_config({"data": {"rr_local_seconds": 10}}).data.rr_local_seconds == 10


def test_irregularity_without_a_rhythm_selection_is_refused(tmp_path: Path) -> None:
    """``model.rr_irregularity`` adds columns to the rhythm selections only: true with
    ``rr_features = "all"`` is one line and exit 2 from the real command line, naming both
    keys and what is allowed; off by default, it goes with any selection."""
    path = write_config(tmp_path, safe_data(tmp_path) + '[model]\nrr_features = "all"\n')
    message = run_data_command(path, "--set", "model.rr_irregularity=true")
    assert message.endswith(
        "model.rr_irregularity = true adds columns to the rhythm selections, and "
        "model.rr_features = 'all' is none of them: use 'rhythm' or 'rhythm_record', or "
        "model.rr_irregularity = false"
    )
    assert validate_config({"model": {"rr_features": "all"}}).model.rr_irregularity is False
    for selection in ("rhythm", "rhythm_record"):
        raw = {"model": {"rr_features": selection, "rr_irregularity": True}}
        assert validate_config(raw).model.rr_irregularity is True


def test_mlflow_uri_scheme_must_be_one_mlflow_supports(tmp_path: Path) -> None:
    text = safe_data(tmp_path) + '[tracking]\nmlflow_uri = "s3://bucket/mlruns"\n'
    message = run_data_command(write_config(tmp_path, text))
    assert "tracking.mlflow_uri = 's3://bucket/mlruns': MLflow has no tracking store" in message
    assert "file:, sqlite:, postgresql:, mysql:, mssql:, http: or https: URI, or databricks" in (
        message
    )


@pytest.mark.parametrize(
    "uri",
    [
        "sqlite:///mlflow.db",
        "mlruns",
        "/tmp/mlruns",
        "file:///tmp/mlruns",
        "postgresql+psycopg2://user@host/db",
        "mysql://user@host/db",
        "mssql+pyodbc://user@host/db",
        "http://127.0.0.1:5000",
        "https://mlflow.example.org",
        "databricks",
        "databricks://profile",
        "C:\\mlruns",
    ],
)
def test_mlflow_uris_that_mlflow_supports_are_accepted(uri: str) -> None:
    assert validate_config({"tracking": {"mlflow_uri": uri}}).tracking.mlflow_uri == uri


@pytest.mark.parametrize("uri", ["s3://bucket", "uc:catalog", "http://[::1", ""])
def test_mlflow_uris_without_a_tracking_store_are_refused(uri: str) -> None:
    assert "tracking.mlflow_uri = " in refused({"tracking": {"mlflow_uri": uri}})


# --- no surprising coercion --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"training": {"lr": "0.001"}},
            "training.lr = '0.001': a string, but the key takes a valid number "
            "(write it without quotes)",
        ),
        (
            {"training": {"epochs": True}},
            "training.epochs = True: a boolean, but the key takes a valid integer",
        ),
        ({"seed": "42"}, "seed = '42': a string, but the key takes a valid integer"),
        ({"model": {"se_blocks": 1}}, "model.se_blocks = 1: a number, but the key takes true"),
        ({"model": {"attention": "yes"}}, "model.attention = 'yes': a string, but the key takes"),
        (
            {"model": {"channels": [32, "64", 64, 128, 160]}},
            "model.channels = [32, '64', 64, 128, 160]: entry [1] = '64' is a string",
        ),
        (
            {"search": {"space": {"training.lr": {"loguniform": ["1e-5", 1e-2]}}}},
            "entry [0] = '1e-5' is a string, but the key takes a valid number",
        ),
        ({"training": {"grad_clip": False}}, "training.grad_clip = False: a boolean"),
    ],
)
def test_values_of_the_wrong_type_are_not_coerced(raw: dict[str, Any], expected: str) -> None:
    assert expected in refused(raw)


def test_coercions_that_surprise_no_one_stay_accepted(tmp_path: Path) -> None:
    text = (
        "[data]\nraw_dir = 'somewhere'\n"
        "[training]\nlr = 1\nepochs = 3.0\n"
        "[search.space]\n'training.lr' = { loguniform = [1e-4, 1e-2] }\n"
        "'model.dropout' = { quniform = [0.1, 0.5, 0.1] }\n"
    )
    config = load_config(write_config(tmp_path, text))
    assert config.data.raw_dir == Path("somewhere")
    assert config.training.lr == 1.0 and isinstance(config.training.lr, float)
    assert config.training.epochs == 3 and isinstance(config.training.epochs, int)
    assert config.search.space["training.lr"].loguniform == (1e-4, 1e-2)
    assert validate_config(config.model_dump()) == config


def test_the_wrong_type_exits_2_from_the_real_entry_point(tmp_path: Path) -> None:
    text = safe_data(tmp_path) + '[training]\nlr = "0.001"\n'
    message = run_data_command(write_config(tmp_path, text))
    assert message.endswith(
        "training.lr = '0.001': a string, but the key takes a valid number "
        "(write it without quotes)"
    )


# --- the experiment is a name ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../elsewhere", "it holds a path separator"),
        ("runs/x", "it holds a path separator"),
        ("a\\b", "it holds a path separator"),
        ("..", "'..' is a path"),
        (".", "'.' is a path"),
        (" padded", "it starts or ends with whitespace"),
        ("padded\n", "it starts or ends with whitespace"),
        ("tab\there", "it holds a control character"),
        ("", "String should have at least 1 character"),
    ],
)
def test_experiment_is_a_name_not_a_path(name: str, problem: str) -> None:
    message = refused({"tracking": {"experiment": name}})
    assert message.startswith(f"config: tracking.experiment = {name!r}: {problem}")


def test_experiment_names_with_dots_and_unicode_are_fine() -> None:
    config = validate_config({"tracking": {"experiment": "ecg-v1.2_inter patient é"}})
    assert config.run_dir == Path("runs") / "ecg-v1.2_inter patient é"


# --- checks that need no data ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"leads": ["II"]}, "data.leads = ['II']: unknown lead 'II'; mitdb leads are MLII, V1, V2"),
        ({"records": []}, "data.records = []: give at least one record, or leave the key out"),
        ({"records": ["100", "110"]}, "data.records: unknown records ['110']; valid names: 100,"),
        (
            {"source": "csv", "train_files": ["a.csv"], "split": "inter"},
            "data.split = 'inter' needs data.source = 'mitdb' (Kaggle files have no records)",
        ),
        (
            {"source": "parquet", "train_files": ["a.parq"], "records": ["100"]},
            "data.records needs data.source = 'mitdb'",
        ),
    ],
)
def test_mitdb_names_are_checked_by_the_schema(data: dict[str, Any], expected: str) -> None:
    assert expected in refused({"data": data})


def test_every_mitdb_record_and_lead_is_accepted(mitdb_dir: Path) -> None:
    on_disk = sorted(path.stem for path in mitdb_dir.glob("*.hea"))
    assert len(on_disk) == 48
    for leads in (["MLII"], ["V1"], ["V2"], ["V4"], ["V5"], ["MLII", "V1"], ["V5", "V2"]):
        assert validate_config({"data": {"records": on_disk, "leads": leads}}).data.leads == leads
    assert validate_config({"data": {"source": "csv", "train_files": ["x.csv"], "leads": ["II"]}})


def test_unknown_records_exit_2_before_any_download(tmp_path: Path) -> None:
    text = safe_data(tmp_path) + 'records = ["100", "999"]\n'
    path = write_config(tmp_path, text)
    message = run_data_command(path)
    assert f"error: {path}: data.records: unknown records ['999']" in message
    assert not (tmp_path / "raw").exists()


def test_a_valid_config_round_trips_through_its_dump() -> None:
    config = load_config(REPO_ROOT / "config.toml")
    assert Config.model_validate(config.model_dump()) == config
    assert Config.model_validate(config.model_dump(mode="json")) == config
