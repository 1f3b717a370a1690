"""``MODEL_CARD.md``: generated beside the checkpoint from the checkpoint, the report and the
dataset; every figure in it is the one those hold."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from ecgtune.config import validate_config
from ecgtune.data.splits import DS2
from ecgtune.errors import DataError
from ecgtune.export import count_parameters
from ecgtune.export.card import MODEL_CARD_NAME, write_model_card
from ecgtune.metrics import ClassificationMetrics
from ecgtune.models.summary import summary_blocks
from ecgtune.report import write_report
from ecgtune.training import evaluate_test_split
from tests.conftest import TINY_CNN, deep_merge
from tests.test_export_onnx import TrainedRun, trained_run


def reported_run(folder: Path, split: str) -> tuple[TrainedRun, ClassificationMetrics]:
    """A trained run with its ``report.json``, as ``train`` leaves it."""
    run = trained_run(folder, deep_merge(TINY_CNN, {"rr_features": "normalised"}), split=split)
    metrics = evaluate_test_split(run.model, run.dataset, run.config)
    write_report(run.run_dir, metrics, run.dataset.class_names, {"split": "test"})
    return run, metrics


@pytest.fixture(scope="module", params=["intra", "inter"])
def carded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainedRun, ClassificationMetrics, str]:
    run, metrics = reported_run(tmp_path_factory.mktemp(request.param), request.param)
    path = write_model_card(run.run_dir, run.dataset)
    assert path == run.run_dir / MODEL_CARD_NAME
    return run, metrics, path.read_text(encoding="utf-8")


def section(card: str, title: str) -> str:
    """The text of one ``## title`` section."""
    return card.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str) -> dict[str, list[str]]:
    """Markdown table rows by their first cell (header and rule included)."""
    cells = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|")
    ]
    return {row[0]: row[1:] for row in cells}


def test_model_section_lists_the_blocks_and_parameters(
    carded: tuple[TrainedRun, ClassificationMetrics, str],
) -> None:
    run, _, card = carded
    model = section(card, "Model")
    assert f"{count_parameters(run.model):,} parameters" in model
    rows = table_rows(model)
    for name, block in summary_blocks(run.model):
        assert rows[f"`{name}`"] == [type(block).__name__, f"{count_parameters(block):,}"]
    assert "rr_previous_by_record" in model and '`model.rr_features = "normalised"`' in model
    assert "its unlabelled later beats included" in model
    data = run.config.data
    assert f"{data.beat_length} samples per beat at {data.target_hz} Hz" in model


def test_data_section_gives_records_and_beats_per_split(
    carded: tuple[TrainedRun, ClassificationMetrics, str],
) -> None:
    run, _, card = carded
    data = section(card, "Data")
    rows = table_rows(data)
    for split in ("train", "valid", "test"):
        beats = getattr(run.dataset, split)
        records = sorted(set(beats.records.tolist()))
        counts = beats.class_counts(run.dataset.n_classes).tolist()
        assert rows[split] == [
            f"{len(records)}: {' '.join(records)}",
            f"{len(beats):,}",
            *(f"{n:,}" for n in counts),
        ]
    assert "MIT-BIH Arrhythmia Database" in data and "lead MLII" in data


def test_split_protocol_says_what_it_means_for_new_patients(
    carded: tuple[TrainedRun, ClassificationMetrics, str],
) -> None:
    run, _, card = carded
    data, limits = section(card, "Data"), section(card, "Intended use and limits")
    if run.config.data.split == "intra":
        assert "intra-patient" in data and "overstate what to expect on a new patient" in limits
    else:
        test_records = set(run.dataset.test.records.tolist())
        assert test_records <= set(DS2)
        assert "inter-patient" in data and "no patient is in two splits" in limits


def test_test_figures_are_the_reports(
    carded: tuple[TrainedRun, ClassificationMetrics, str],
) -> None:
    _, metrics, card = carded
    figures = section(card, "Test figures")
    assert f"accuracy {metrics.accuracy:.4f}, macro-F1 {metrics.macro_f1:.4f}" in figures
    rows = table_rows(figures)
    assert rows["class"] == ["beats", "Se", "+P", "F1", "specificity"]
    for item in metrics.per_class:
        expected = [
            "absent" if value is None else f"{value:.4f}"
            for value in (item.recall, item.precision, item.f1, item.specificity)
        ]
        assert rows[item.name] == [f"{item.support:,}", *expected]


def test_config_block_rebuilds_the_same_model(
    carded: tuple[TrainedRun, ClassificationMetrics, str],
) -> None:
    run, _, card = carded
    block = re.search(r"```toml\n(.*?)\n```", section(card, "Config"), re.DOTALL)
    assert block is not None
    config = validate_config(tomllib.loads(block.group(1)))
    assert (config.seed, config.data, config.model, config.training) == (
        run.config.seed,
        run.config.data,
        run.config.model,
        run.config.training,
    )


def test_intended_use_says_research_only(
    carded: tuple[TrainedRun, ClassificationMetrics, str],
) -> None:
    limits = section(carded[2], "Intended use and limits")
    assert "Research and teaching only" in limits and "not a medical device" in limits


def test_a_run_without_report_gets_a_one_line_error(tmp_path: Path) -> None:
    run, _ = reported_run(tmp_path, "intra")
    (run.run_dir / "report.json").unlink()
    with pytest.raises(DataError, match=r"report\.json: missing"):
        write_model_card(run.run_dir, run.dataset)
    assert not (run.run_dir / MODEL_CARD_NAME).exists()
