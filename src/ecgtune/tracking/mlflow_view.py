"""What ``mlflow ui`` shows of a search beyond the runs' own data: the link that opens the
experiment's runs table, the columns it opens with, the trial runs' names and the parent
run's description (the search's table).

MLflow 3 opens an experiment on its GenAI overview unless the URL says
``workflowType=machine_learning``; a runs-table view (its columns) is an experiment tag
``mlflow.sharedViewState.<key>`` that the URL names with ``viewStateShareKey=<key>``; a run's
description is its tag ``mlflow.note.content``, rendered as Markdown. A pruned, failed or
killed trial has its status in its run name (``trial-003 pruned@2``), so the runs table tells
it apart without a column: MLflow's own status is FINISHED for a pruned trial (it counts with
its best epoch) as for a complete one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from ecgtune.config import Config
from ecgtune.dotted import flatten
from ecgtune.metrics import ClassificationMetrics
from ecgtune.search.trials import TrialRow, short_value

LOCAL_UI = "http://127.0.0.1:5000"
"""Where ``mlflow ui`` serves a local store (its default address)."""
VIEW_KEY = "ecgtune-search"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
"""The experiment tag holding the runs table's view: its columns."""
STATUS_COLUMN = "tags.`ecgtune.status`"
RUN_NAME_COLUMN = "attributes.`Run Name`"
FIXED_COLUMNS = ("metrics.`epochs`", STATUS_COLUMN)
UNLOGGED_PREFIXES = ("search.space", "tracking.")
"""Keys left out of a search's changed keys: the space is the artifact ``search_space.toml``;
the tracking settings are where the run is, not what it did."""


def runs_table_url(tracking_uri: str, experiment_id: str) -> str:
    """The address of the experiment's runs table in the model-training view with the
    search's columns: on the tracking server for an HTTP store, else where ``mlflow ui``
    serves a local one."""
    remote = tracking_uri.startswith(("http://", "https://"))
    address = tracking_uri.rstrip("/") if remote else LOCAL_UI
    query = urlencode({"workflowType": "machine_learning", "viewStateShareKey": VIEW_KEY})
    return f"{address}/#/experiments/{experiment_id}/runs?{query}"


def runs_view_state(objective: str, searched: Sequence[str]) -> str:
    """The runs table's view as MLflow's UI shares it (JSON): the best epoch's objective, the
    epochs, the status, the searched keys and the test objective as columns, the run names
    (``trial-003 pruned@1``) and the objective wide enough to read; runs newest first."""
    columns = [
        f"metrics.`best_epoch/{objective}`",
        *FIXED_COLUMNS,
        *(f"params.`{key}`" for key in searched),
        f"metrics.`test/{objective}`",
    ]
    return json.dumps(
        {
            "orderByKey": "attributes.start_time",
            "orderByAsc": False,
            "selectedColumns": columns,
            "columnOrder": [RUN_NAME_COLUMN, *columns],
            "columnWidths": {RUN_NAME_COLUMN: 240, columns[0]: 170},
            "runsHiddenMode": "SHOW_ALL",
        }
    )


def trial_run_name(row: TrialRow) -> str:
    """``trial-003`` for a trial that trained to its own end, else with its status:
    ``trial-003 pruned@2`` (the epoch it was ended at), ``trial-003 failed``."""
    name = f"trial-{row.number:03d}"
    if row.status == "ok":
        return name
    return f"{name} pruned@{row.epochs}" if row.status == "pruned" else f"{name} {row.status}"


def changed_keys(config: Config) -> dict[str, Any]:
    """Every config key whose value differs from the schema's default (``training.epochs``
    set by ``--set``, the records of a quick run), but the space and the tracking settings."""
    defaults = flatten(Config().model_dump(mode="json"))
    return {
        key: value
        for key, value in flatten(config.model_dump(mode="json")).items()
        if not key.startswith(UNLOGGED_PREFIXES) and defaults.get(key) != value
    }


def search_description(
    rows: Sequence[TrialRow],
    objective: str,
    keys: Sequence[str],
    best: TrialRow | None,
    run_links: Mapping[int, str],
    test: ClassificationMetrics | None,
    limit: int,
) -> str:
    """The parent run's description (Markdown, at most ``limit`` characters): the best trial
    and its test figures, then every trial (linked to its run), its status, objective, epochs
    and searched values, the best in bold; past ``limit``, the last trials are counted in a
    line instead."""
    lines = []
    if best is not None:
        name = _linked(best.number, run_links)
        lines.append(f"**Best: {name}**, validation {objective} {_number(best.objective)}.")
    if test is not None:
        lines += ["", f"Test split ({test.n_beats:,} beats):", "", *test_table(test)]
    lines += ["", f"Trials ({len(rows)}):", ""]
    table = trials_markdown(rows, objective, keys, best, run_links)
    room = limit - len("\n".join(lines)) - 100
    shown = 0
    while shown < len(table) and len("\n".join(table[: shown + 1])) < room:
        shown += 1
    lines += table[:shown]
    if shown < len(table):
        lines += ["", f"{len(table) - shown} more trials: see the runs table."]
    return "\n".join(lines)


def trials_markdown(
    rows: Sequence[TrialRow],
    objective: str,
    keys: Sequence[str],
    best: TrialRow | None,
    run_links: Mapping[int, str],
) -> list[str]:
    """A Markdown table of the trials in trial order, the best one in bold."""
    short = [key.rsplit(".", 1)[-1] for key in keys]
    header = ["trial", "status", f"valid {objective}", "epochs", *short]
    lines = [_cells(header), _cells(["---:", "---", "---:", "---:", *("---" for _ in keys)])]
    for row in sorted(rows, key=lambda item: item.number):
        values = [_text(row.values[key]) if key in row.values else "" for key in keys]
        number = _linked(row.number, run_links, str(row.number))
        cells = [number, _status(row), _number(row.objective), str(row.epochs), *values]
        is_best = best is not None and row.number == best.number
        lines.append(_cells([f"**{cell}**" for cell in cells] if is_best else cells))
    return lines


def test_table(test: ClassificationMetrics) -> list[str]:
    """The test figures as a Markdown table: the overall ones, then per class."""
    flat = test.as_flat_dict()
    overall = [name for name in ("macro_f1", "accuracy", "balanced_accuracy") if name in flat]
    lines = [_cells(overall), _cells(["---:" for _ in overall])]
    lines.append(_cells([_number(flat[name]) for name in overall]))
    lines += ["", _cells(["class", "Se (recall)", "+P (precision)", "F1"])]
    lines.append(_cells(["---", "---:", "---:", "---:"]))
    for name in test.class_names:
        figures = [flat.get(f"{kind}_{name}") for kind in ("recall", "precision", "f1")]
        lines.append(_cells([name, *(_number(value) for value in figures)]))
    return lines


def _linked(number: int, run_links: Mapping[int, str], text: str = "") -> str:
    """``[trial 3](#/experiments/1/runs/...)``, or the text alone when the run is gone."""
    label = text or f"trial {number}"
    link = run_links.get(number)
    return f"[{label}]({link})" if link else label


def _status(row: TrialRow) -> str:
    """``ok``, ``pruned at epoch 2`` (its rung and cutoff are in ``trials.json`` and
    ``report.json``: here they would widen the table past reading), or the failure with its
    reason."""
    if row.status == "ok":
        return "ok"
    return (
        f"pruned at epoch {row.epochs}" if row.status == "pruned" else f"{row.status}: {row.note}"
    )


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _text(value: Any) -> str:
    """A searched value in the description's table: ``0.00151``, ``[16, 24, 32]``."""
    return f"[{short_value(value, ', ')}]" if isinstance(value, list) else short_value(value)


def _cells(cells: Sequence[str]) -> str:
    """A Markdown table row; a ``|`` in a cell (a failure reason) is escaped."""
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
