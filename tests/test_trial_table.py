"""The search's trial table as a terminal of 80 and of 140 columns shows it (rendered by rich,
read back from the text it exports), and the search's ETA from the first epoch on, pruning
counted."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console
from torch import nn

from ecgtune.config import load_config, validate_config
from ecgtune.console.search import SearchDisplay, column_names, top_trials_table
from ecgtune.search.pruning import Asha, expected_epochs
from ecgtune.search.space import build_search_space
from ecgtune.search.trials import TrialOutcome, TrialRow, TrialStart
from ecgtune.training import EpochRecord

REPO_ROOT = Path(__file__).resolve().parents[1]


def config_toml_rows() -> tuple[list[TrialRow], list[str]]:
    """Trials of config.toml's search (its 11 searched keys), with the values that broke the
    old table: an lr of 0.00151, four-entry lists, a long objective name."""
    config = load_config(REPO_ROOT / "config.toml")
    values = build_search_space(config).values_of(config)
    lrs = [0.00151, 0.000123, 0.0421]
    rows = [
        TrialRow(0, "ok", {**values, "training.lr": lrs[0]}, 0.912345, 20, 3725.0, ""),
        TrialRow(1, "pruned", {**values, "training.lr": lrs[1]}, 0.5, 4, 61.0, "pruned"),
        TrialRow(
            2, "ok", {**values, "training.lr": lrs[2], "model.dropout": 0.125}, 0.93, 1, 9, ""
        ),
    ]
    return rows, list(values)


def rendered(width: int) -> tuple[list[dict[str, str]], str, list[str]]:
    """The top-trials table at ``width`` columns: its rows (header -> cell), its caption and
    every line printed."""
    rows, keys = config_toml_rows()
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(top_trials_table(rows, "macro_f1", 5, keys))
    lines = console.export_text().splitlines()
    header_lines = [line for line in lines if line.startswith("┃")]
    split = [[cell.strip() for cell in line.strip("┃").split("┃")] for line in header_lines]
    headers = [" ".join(part for part in parts if part) for parts in zip(*split, strict=True)]
    body = [line for line in lines if line.startswith("│")]
    cells = [[cell.strip() for cell in line.strip("│").split("│")] for line in body]
    end = next(i for i, line in enumerate(lines) if line.startswith("└"))
    caption = " ".join(" ".join(lines[end + 1 :]).split())
    return [dict(zip(headers, row, strict=True)) for row in cells], caption, lines


@pytest.mark.parametrize("width", [80, 140])
def test_the_table_reads_at_80_and_140_columns(width: int) -> None:
    """Every line fits, no cell is cut (no ellipsis) or wrapped (one line a trial), every
    number reads back as the trial's value in 3 significant figures, lists as ``8,16,32``;
    the objective is always there in full; a column that did not fit is named below."""
    rows, keys = config_toml_rows()
    table, caption, lines = rendered(width)
    assert all(len(line) <= width for line in lines)
    assert "…" not in "\n".join(lines)
    ranked = sorted(rows, key=lambda row: -(row.objective or 0))
    assert [row["#"] for row in table] == [str(row.number) for row in ranked]
    names = column_names(keys)
    for shown, row in zip(table, ranked, strict=True):
        assert float(shown["valid macro_f1"]) == round(row.objective or 0, 4)
        assert shown["epochs"] == str(row.epochs)
        assert shown["status"] == row.status
        for key in keys:
            if names[key] not in shown:
                continue
            value, cell = row.values[key], shown[names[key]]
            if isinstance(value, float):
                assert float(cell) == float(f"{value:.3g}"), key
            elif isinstance(value, list):
                assert cell.split(",") == [str(item) for item in value], key
            else:
                assert cell == str(value), key
    by_number = {row["#"]: row for row in table}
    assert by_number["0"]["time"] == "1:02:05" if "time" in table[0] else "time" in caption
    hidden = [names[key] for key in keys if names[key] not in table[0]]
    assert [names[key] for key in keys if names[key] in table[0]] == [
        names[key] for key in keys[: len(keys) - len(hidden)]
    ]  # the last keys go first
    if hidden:
        assert caption.startswith("not shown at this width: " + ", ".join(hidden))
    else:
        assert caption == ""


def test_140_columns_show_more_than_80_and_the_objective_survives_any_width() -> None:
    wide, _, _ = rendered(140)
    narrow, _, _ = rendered(80)
    _, keys = config_toml_rows()
    names = set(column_names(keys).values())
    first = ["lr", "batch_size", "loss", "rr_features"]  # docs/search.md quotes these
    assert [name for name in narrow[0] if name in names] == first
    more = ["conv_layers", "channels", "kernel_sizes", "dilations"]
    assert [name for name in wide[0] if name in names] == [*first, *more]
    tiny, caption, _ = rendered(20)
    assert list(tiny[0]) == ["#", "valid macro_f1"]
    assert caption.endswith("dropout, epochs, time, status")


def test_expected_epochs_count_the_pruning() -> None:
    """ASHA keeps the top 1/eta at a rung another trial reached: config.toml's search (grace
    4, eta 3, 20 epochs) expects a later trial to train 4 + 8/3 + 8/9 epochs, not 20; the
    first trial, with no rung reached before it, all 20; without pruning, every epoch."""
    rule = Asha(grace=4, eta=3, objective="macro_f1")
    assert expected_epochs(rule, 20, 0, [20]) == pytest.approx(4 + 8 / 3 + 8 / 9)
    assert expected_epochs(rule, 20, 0, []) == 20
    assert expected_epochs(rule, 20, 5, [20]) == pytest.approx(5 + 7 + 8 / 3)  # past rung 1
    assert expected_epochs(None, 20, 3, [4]) == 20


def epoch(number: int, seconds: float) -> EpochRecord:
    metrics = {"macro_f1": 0.5, "loss": 1.0}
    return EpochRecord(number, 1.0, 1.0, metrics, 1e-3, seconds, 100.0)


def test_the_eta_counts_from_the_first_epoch_and_counts_the_pruning() -> None:
    """A search of 4 trials of 3 epochs, ASHA at epoch 1 (eta 3), 10 s an epoch, as its log
    lines show it. After trial 0's first epoch: its 2 epochs left, and 3 trials expected to
    train 1 + 2/3 epochs each (trial 0 reached rung 1 first): 7 epochs, 70 s. After it ends
    (3 epochs, 32 s: 2 s beyond its epochs): 3 x 5/3 epochs x 10 s + 3 x 2 s = 56 s."""
    config = validate_config(
        {
            "training": {"epochs": 3},
            "search": {"max_evals": 4, "pruning": "asha", "grace_epochs": 1},
        }
    )
    console = Console(width=200, record=True, file=io.StringIO())
    display = SearchDisplay(console, False, config, ["training.lr"])
    events = display.trial_started(TrialStart(0, config, {"training.lr": 1e-3}))
    events.on_train_start(config, nn.Linear(1, 1), 100)
    events.on_epoch_end(epoch(1, 10.0))
    assert console.export_text().strip().endswith("(10.0 s); search ETA 1:10")
    events.on_epoch_end(epoch(2, 10.0))
    events.on_epoch_end(epoch(3, 10.0))
    row = TrialRow(0, "ok", {"training.lr": 1e-3}, 0.5, 3, 32.0, "")
    display.trial_ended(TrialOutcome(row))
    assert display._eta() == "0:56"
    assert "3 epochs, 0:32" in console.export_text()
    events = display.trial_started(TrialStart(1, config, {"training.lr": 1e-7}))
    events.on_train_start(config, nn.Linear(1, 1), 100)
    events.on_epoch_end(epoch(1, 10.0))
    # trial 1: 2/3 epoch left; 2 trials to start: 10/3; 4 epochs x 10 s + 3 trials x 2 s
    assert console.export_text().strip().endswith("search ETA 0:46")
    display.trial_ended(TrialOutcome(TrialRow(1, "pruned", {}, 0.4, 1, 12.0, "pruned")))
    assert "1 epoch, 0:12" in console.export_text()
