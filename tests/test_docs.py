"""The README and docs/ cannot drift from the project: every relative link resolves (to a file,
and to a heading where it names one), every ``hypertune.py`` command they show parses with the
CLI's own parser (and its ``--set`` keys and values validate), every figure of the results
tables equals the benchmark JSON it names at the table's rounding, and the reference pages
(config keys, guarantees, code layout) list what the code holds."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from ecgtune.cli import build_parser, check_record_options, parse_command_line
from ecgtune.config import Config, load_config, parse_overrides
from ecgtune.errors import UserError
from tests.conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
RESULTS = REPO_ROOT / "benchmarks" / "results"

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
SHELL_FENCE = re.compile(r"^```(?:bash|sh|shell|console)\n(.*?)^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^()\s]+)\)")


def page_id(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def prose(text: str) -> str:
    """The text without its code blocks and code spans (where brackets are not links)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def code_blocks(text: str) -> list[str]:
    return [match.group(0) for match in FENCE.finditer(text)]


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a page: lower case, punctuation dropped,
    spaces as hyphens, a repeated heading numbered ``-1``, ``-2``..."""
    anchors: set[str] = set()
    for line in FENCE.sub("", text).splitlines():
        if heading := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line):
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
            anchor, number = slug, 0
            while anchor in anchors:
                number += 1
                anchor = f"{slug}-{number}"
            anchors.add(anchor)
    return anchors


def relative_links(path: Path) -> Iterator[str]:
    for target in LINK.findall(prose(path.read_text(encoding="utf-8"))):
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            yield target


def broken_link(page: Path, target: str) -> str | None:
    """Why ``target`` (as written on ``page``) does not resolve, or None."""
    file_part, _, anchor = target.partition("#")
    resolved = (page.parent / file_part).resolve() if file_part else page
    if not resolved.is_relative_to(REPO_ROOT):
        return f"{target}: outside the repository"
    if not resolved.exists():
        return f"{target}: no such file"
    if anchor and resolved.suffix != ".md":
        return (
            f"{target}: a #{anchor} fragment on a {resolved.suffix} file goes nowhere in a "
            f"browser; link the file (or a docs heading that quotes the figure)"
        )
    anchors = heading_anchors(resolved.read_text(encoding="utf-8")) if anchor else set()
    if anchor and resolved.suffix == ".md" and anchor not in anchors:
        return f"{target}: no heading #{anchor} in {page_id(resolved)}"
    return None


def test_the_readme_links_to_every_docs_page() -> None:
    linked = {
        (README.parent / target.partition("#")[0]).resolve() for target in relative_links(README)
    }
    assert DOCS, "docs/*.md"
    assert [page_id(page) for page in DOCS if page.resolve() not in linked] == []


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_resolves(page: Path) -> None:
    targets = list(relative_links(page))
    broken = [problem for target in targets if (problem := broken_link(page, target))]
    assert broken == [], f"{page_id(page)}: broken links"


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    page = REPO_ROOT / "docs" / "config.md"
    assert broken_link(page, "../README.md") is None
    assert broken_link(page, "search.md#gpus") is None
    assert broken_link(page, "serach.md") == "serach.md: no such file"
    assert "no heading #gpu" in str(broken_link(page, "search.md#gpu"))
    json_part = "../benchmarks/results/inter_patient.json#baseline"
    assert "#baseline fragment on a .json file goes nowhere" in str(broken_link(page, json_part))


# The commands. A usage line from the commands table (``[--max-evals N]``, ``RECORD ...``)
# is run as one call with every option given: brackets dropped, ``...`` dropped, and N, the
# one placeholder that must be a number, given one.
PLACEHOLDER_VALUES = {"N": "3"}
SHELL_ENDS = {"&&", "||", "|", ";", ">", "2>"}
USAGE_WORD = re.compile(r"\[*([\w./<>:-]+|\.\.\.)\]*")


def hypertune_calls(text: str) -> Iterator[str]:
    """Every ``hypertune.py`` call shown: in shell code blocks (continued lines joined) and in
    code spans of the prose (a span may wrap over lines)."""
    for block in SHELL_FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            yield from re.findall(r"hypertune\.py(?=\s|$)(.*)", line)
    spans = CODE_SPAN.findall(FENCE.sub("", text).replace("\n", " "))
    for span in spans:
        if match := re.match(r"`(?:\S*/)?python3? hypertune\.py(?=\s|`)(.*)`$", span):
            yield match.group(1)


def arguments(call: str) -> list[str]:
    """The words after ``hypertune.py`` up to the end of the shell command, usage syntax
    resolved."""
    words: list[str] = []
    for word in shlex.split(call, comments=True):
        if word in SHELL_ENDS:
            break
        if USAGE_WORD.fullmatch(word):  # not a TOML value such as '["100","101"]'
            word = word.strip("[]")
        if word and word != "...":
            words.append(PLACEHOLDER_VALUES.get(word, word))
    return words


def check_call(words: list[str]) -> None:
    """Parse with the CLI's own parser and check what the command checks before any work; a
    config named in the repository is loaded with the call's overrides (so a renamed key or
    a refused value fails here, not on a reader's machine)."""
    try:
        args = parse_command_line(words)
    except SystemExit as exc:
        raise AssertionError(f"hypertune.py {shlex.join(words)}: the parser refuses it") from exc
    if args.command == "evaluate":
        check_record_options(args)
    overrides = [item for item in getattr(args, "overrides", []) if item != "KEY=VALUE"]
    if getattr(args, "max_evals", None) is not None:
        overrides.append(f"search.max_evals={args.max_evals}")
    config = REPO_ROOT / getattr(args, "config", "")
    if args.command in ("tune", "train", "data") and config.is_file():
        load_config(config, overrides)
    else:
        parse_overrides(overrides)


def shown_calls() -> list[tuple[str, list[str]]]:
    return [
        (page_id(page), arguments(call))
        for page in PAGES
        for call in hypertune_calls(page.read_text(encoding="utf-8"))
    ]


def test_the_readme_shows_the_commands() -> None:
    readme = [words for page, words in shown_calls() if page == "README.md"]
    assert [] in readme, "the main job: python hypertune.py"
    subcommands = next(
        action.choices
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    shown = {words[0] for words in readme if words}
    assert sorted(set(subcommands) - shown) == [], "commands the README does not show"


@pytest.mark.parametrize(
    "words",
    [
        pytest.param(words, id=f"{page}: hypertune.py {shlex.join(words)}".strip())
        for page, words in shown_calls()
    ],
)
def test_every_command_shown_parses_with_the_cli(words: list[str]) -> None:
    check_call(words)


@pytest.mark.parametrize(
    "call",
    [
        "evalute runs/x",  # a renamed command
        "tune --max-evals N --frsh",  # a renamed option
        "train --set training.epoch=2",  # a renamed key
        "train --set training.optimizer=adagrad",  # a refused value
        "evaluate runs/x --records 100",  # --records without --database
    ],
)
def test_a_command_the_cli_refuses_fails_the_check(call: str) -> None:
    with pytest.raises((AssertionError, UserError)):
        check_call(arguments(call))


def test_the_readme_shows_the_quick_try_the_main_job_and_the_test_command_ci_runs() -> None:
    """The quick start installs torch 2.13.0 (and says how to take the CPU-only build), then
    the project; runs the quick config first, then the main job and the tests; CI runs the
    same test command."""
    lines = [
        line
        for block in code_blocks(README.read_text(encoding="utf-8"))
        for line in block.splitlines()
        if line.startswith(".venv/bin/")
    ]
    assert lines[:2] == [".venv/bin/pip install torch==2.13.0", '.venv/bin/pip install -e ".[dev]"']
    cpu_only = (
        "`.venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu`"
    )
    assert cpu_only in README.read_text(encoding="utf-8")
    assert [line for line in lines if line.startswith(".venv/bin/python")] == [
        ".venv/bin/python hypertune.py tune --config configs/quick.toml",
        ".venv/bin/python hypertune.py",
        ".venv/bin/python -m pytest",
    ]
    assert ".venv/bin/python -m pytest" in (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")


def results(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RESULTS / name).read_text(encoding="utf-8"))
    return data


# The figures. A row of a table whose header has ``S Se`` is checked when its first cell links
# a results JSON (the columns it shows come from FIELDS) or names a published result of
# inter_patient.json; a cell holds the JSON value at the cell's own rounding.
FIELDS: dict[str, dict[str, str]] = {
    "default_search.json": {
        "beats": "test.n_beats",
        "macro-F1": "test.macro_f1",
        "S Se": "test_aami.se_S",
        "S +P": "test_aami.ppv_S",
        "V Se": "test_aami.se_V",
        "V +P": "test_aami.ppv_V",
        "time": "wall_seconds",
    },
    "bench_train.json": {
        "beats": "quality.test_beats",
        "macro-F1": "quality.test_macro_f1",
        "S Se": "quality.test_aami.se_S",
        "S +P": "quality.test_aami.ppv_S",
        "V Se": "quality.test_aami.se_V",
        "V +P": "quality.test_aami.ppv_V",
        "time": "quality.wall_seconds",
    },
    "inter_patient.json": {
        "beats": "ds2.mean.beats",
        "macro-F1": "ds2.mean.macro_f1",
        "S Se": "ds2.mean.aami.se_S",
        "S +P": "ds2.mean.aami.ppv_S",
        "V Se": "ds2.mean.aami.se_V",
        "V +P": "ds2.mean.aami.ppv_V",
        "jκ": "ds2.mean.jkappa",
        "sd of S Se": "ds2.sd.aami.se_S",
        "S Se 95 %": "ds2.interval_95.se_S",
        "S +P 95 %": "ds2.interval_95.ppv_S",
        "N called F": "ds2.mean.n_called_f",
        "time": "wall_seconds",
    },
    "inter_patient.json#ds1": {
        "beats": "ds1_oof.mean.beats",
        "macro-F1": "ds1_oof.mean.macro_f1",
        "S Se": "ds1_oof.mean.aami.se_S",
        "S +P": "ds1_oof.mean.aami.ppv_S",
        "V Se": "ds1_oof.mean.aami.se_V",
        "V +P": "ds1_oof.mean.aami.ppv_V",
        "jκ": "ds1_oof.mean.jkappa",
        "sd of S Se": "ds1_oof.sd.aami.se_S",
        "N called F": "ds1_oof.mean.n_called_f",
    },
    "inter_patient.json#baseline": {
        "beats": "baseline.ds2.mean.beats",
        "macro-F1": "baseline.ds2.mean.macro_f1",
        "S Se": "baseline.ds2.mean.aami.se_S",
        "S +P": "baseline.ds2.mean.aami.ppv_S",
        "V Se": "baseline.ds2.mean.aami.se_V",
        "V +P": "baseline.ds2.mean.aami.ppv_V",
        "jκ": "baseline.ds2.mean.jkappa",
        "sd of S Se": "baseline.ds2.sd.aami.se_S",
        "S Se 95 %": "baseline.ds2.interval_95.se_S",
        "S +P 95 %": "baseline.ds2.interval_95.ppv_S",
        "N called F": "baseline.ds2.mean.n_called_f",
    },
    "inter_patient.json#baseline_ds1": {
        "beats": "baseline.ds1_oof.mean.beats",
        "macro-F1": "baseline.ds1_oof.mean.macro_f1",
        "S Se": "baseline.ds1_oof.mean.aami.se_S",
        "S +P": "baseline.ds1_oof.mean.aami.ppv_S",
        "V Se": "baseline.ds1_oof.mean.aami.se_V",
        "V +P": "baseline.ds1_oof.mean.aami.ppv_V",
        "jκ": "baseline.ds1_oof.mean.jkappa",
        "sd of S Se": "baseline.ds1_oof.sd.aami.se_S",
        "N called F": "baseline.ds1_oof.mean.n_called_f",
    },
}
ABLATION = "inter_patient_ablation.json"
ONE_CHANGE_LINES = [
    "shipped",
    "without_adversary",
    "without_irregularity",
    "two_leads",
    "rhythm_features",
    "rr_concat",
    "effective_weights",
    "no_augmentation",
    "under_over",
    "adapted",
    "weaker_adversary",
    "stronger_adversary",
]
"""The ablation lines one change from the shipped config: the README shows these (the chains of
changes, each against another line, are in docs/inter-patient.md)."""
ABLATION_FIELDS = {
    "S Se": "se_S",
    "S +P": "ppv_S",
    "V Se": "se_V",
    "V +P": "ppv_V",
    "jκ": "jkappa",
    "sd of S Se": "sd_se_S",
    "sd of jκ": "sd_jkappa",
    "N called F": "n_called_f",
    "N called S in 201": "n_called_s_af.201",
    "N called S in 203": "n_called_s_af.203",
}
FIELDS.update(
    {
        f"{ABLATION}#{line}": {
            column: f"lines.{line}.{key}" for column, key in ABLATION_FIELDS.items()
        }
        for line in results(ABLATION)["lines"]
    }
)
"""A row whose link reads ``[JSON: part](.../FILE.json)`` shows that part of the file (the
in-run baseline, one line of the ablation): its key here is ``FILE.json#part``."""
JSON_LINK = r"\[JSON(?:: (\w+))?\]\([^)\s]*benchmarks/results/([\w.]+\.json)\)"
"""A row's link to its results JSON: the part it shows (if one) and the file."""
PUBLISHED_FIELDS = {"S Se": "se_S", "S +P": "ppv_S", "V Se": "se_V", "V +P": "ppv_V"}


def at(data: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        data = data[part]
    return data


def ascii_name(text: str) -> str:
    """``Mondéjar-Guerra`` and ``Mondejar-Guerra`` alike (the JSON is ASCII)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


def cells(row: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


def figure_tables(text: str) -> Iterator[tuple[list[str], list[list[str]]]]:
    """(header, rows) of every table whose header has an ``S Se`` column."""
    lines = FENCE.sub("", text).splitlines()
    for number, line in enumerate(lines):
        if line.startswith("|") and "S Se" in cells(line) and number + 1 < len(lines):
            rows = []
            for row in lines[number + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append(cells(row))
            yield [re.sub(r"\s*\(.*\)$", "", cell) for cell in cells(line)], rows


def cell_matches(cell: str, value: Any) -> bool:
    """The cell shows ``value`` at its own rounding: ``0.945``, ``21,899``, ``28 min 38 s``,
    ``–`` for none, ``0.61–0.93`` for an interval ``[0.61, 0.93]``."""
    text = cell.replace("*", "").strip()
    if value is None:
        return text == "–"
    if isinstance(value, list):
        ends = text.split("–")
        return len(ends) == 2 == len(value) and all(map(cell_matches, ends, value))
    if minutes := re.fullmatch(r"(\d+) min (\d+) s", text):
        return bool(int(minutes.group(1)) * 60 + int(minutes.group(2)) == round(value))
    if re.fullmatch(r"\d{1,3}(,\d{3})*", text):
        return bool(int(text.replace(",", "")) == round(value))
    if decimals := re.fullmatch(r"\d+\.(\d+)", text):
        return text == f"{value:.{len(decimals.group(1))}f}"
    return False


def figure_mismatches(text: str) -> tuple[list[str], set[str], set[str]]:
    """Cells that differ from their JSON, and the JSON files and published results shown."""
    published = {
        ascii_name(name): values
        for name, values in results("inter_patient.json")["published"].items()
    }
    wrong: list[str] = []
    files: set[str] = set()
    names: set[str] = set()
    for header, rows in figure_tables(text):
        for row in rows:
            label = row[0]
            linked = [
                file + (f"#{part}" if part else "") for part, file in re.findall(JSON_LINK, label)
            ]
            name = next((key for key in published if key in ascii_name(label)), None)
            if linked:
                files.add(linked[0])
                data, fields = results(linked[0].split("#")[0]), FIELDS[linked[0]]
            elif name:
                names.add(name)
                data, fields = published[name], PUBLISHED_FIELDS
            else:
                continue
            for column, cell in zip(header, row, strict=True):
                if column in fields and not cell_matches(cell, at(data, fields[column])):
                    wrong.append(f"{label} | {column}: {cell} (JSON: {at(data, fields[column])})")
    return wrong, files, names


def test_every_figure_of_the_readme_equals_its_benchmark_json() -> None:
    wrong, files, names = figure_mismatches(README.read_text(encoding="utf-8"))
    assert wrong == []
    one_change = {f"{ABLATION}#{name}" for name in ONE_CHANGE_LINES}
    everything_else = {key for key in FIELDS if ABLATION not in key}
    assert files == everything_else | one_change, "every measured experiment has its row"
    published = {ascii_name(name) for name in results("inter_patient.json")["published"]}
    assert names == published, "every published DS2 reference has its row"


def test_the_inter_patient_page_quotes_the_json() -> None:
    wrong, files, names = figure_mismatches((REPO_ROOT / "docs" / "inter-patient.md").read_text())
    shown = {key for key in FIELDS if key.startswith("inter_patient.json")}
    assert wrong == [] and files == shown | {key for key in FIELDS if ABLATION in key} and names


def test_a_changed_figure_is_found() -> None:
    text = README.read_text(encoding="utf-8")
    shown = f"{results('default_search.json')['test']['macro_f1']:.3f}"
    assert f"| **{shown}** |" in text
    before, _, _ = figure_mismatches(text)
    after, _, _ = figure_mismatches(text.replace(f"| **{shown}** |", "| **0.999** |", 1))
    assert [line for line in after if line not in before] == [
        next(line for line in after if "macro-F1: **0.999**" in line)
    ]


def test_a_row_is_checked_against_the_part_its_link_names() -> None:
    """The baseline row against the JSON's baseline, an ablation row against its own line: a
    changed figure, or a link naming another part, is found."""
    text = README.read_text(encoding="utf-8")
    baseline = results("inter_patient.json")["baseline"]["ds2"]["mean"]["aami"]["se_S"]
    cell = f"| {baseline:.3f} |"
    row = next(line for line in text.splitlines() if "[JSON: baseline]" in line)
    assert cell in row
    changed, _, _ = figure_mismatches(text.replace(row, row.replace(cell, "| 0.999 |")))
    assert [line.split(" | ")[1] for line in changed] == [f"S Se: 0.999 (JSON: {baseline})"]
    swapped, _, _ = figure_mismatches(text.replace("[JSON: shipped]", "[JSON: second_push]"))
    assert swapped and all("second_push" in line for line in swapped)


# docs/config.md: the "Every key" section holds one row per key of the schema, with its
# default as TOML.


def schema_defaults(section: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    for name, field in section.model_fields.items():
        key = f"{prefix}.{name}".lstrip(".")
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            defaults |= schema_defaults(annotation, key)
        else:
            defaults[key] = field.get_default(call_default_factory=True)
    return defaults


def toml_value(value: Any) -> str:
    """A default as config.toml writes it; ``–`` for a key that is unset by default."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(entry) for entry in value) + "]"
    if isinstance(value, dict):
        return "{}" if not value else repr(value)
    return repr(value)


def documented_defaults(text: str) -> dict[str, list[str]]:
    """Key -> the default cells of its rows in the ``## Every key`` section."""
    section = text.split("\n## Every key", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            key, default, *_ = cells(line)
            rows.setdefault(key.strip("`"), []).append(default.strip("`"))
    return rows


def test_docs_config_lists_every_key_of_the_schema_with_its_default() -> None:
    documented = documented_defaults((REPO_ROOT / "docs" / "config.md").read_text())
    schema = schema_defaults(Config)
    assert sorted(set(schema) - set(documented)) == [], "keys docs/config.md does not list"
    assert sorted(set(documented) - set(schema)) == [], "docs/config.md lists unknown keys"
    wrong = {
        key: (cells, toml_value(schema[key]))
        for key, cells in documented.items()
        if cells != [toml_value(schema[key])]
    }
    assert wrong == {}, "key: (docs/config.md's defaults, the schema's)"


# docs/reliability.md: every guarantee names the tests that show it, and they exist.
TEST_REFERENCE = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`")


def test_every_guarantee_names_tests_that_exist() -> None:
    text = (REPO_ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    table = text.split("\n## The guarantees", 1)[1].split("\n## ", 1)[0]
    rows = [cells(line) for line in table.splitlines() if line.startswith("|")][2:]
    assert len(rows) >= 10
    missing: list[str] = []
    for row in rows:
        references = TEST_REFERENCE.findall(row[-1])
        if not references and row[-1] != "the same test":
            missing.append(f"{row[0]}: names no test")
        for file, name in references:
            path = REPO_ROOT / file
            if not path.is_file():
                missing.append(f"{row[0]}: no file {file}")
            elif name and f"def {name}(" not in path.read_text(encoding="utf-8"):
                missing.append(f"{row[0]}: no test {file}::{name}")
    assert missing == []


def test_the_code_layout_names_every_module() -> None:
    """docs/development.md's layout block names every package and module of src/ecgtune."""
    text = (REPO_ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    layout = next(block for block in code_blocks(text) if "src/ecgtune/" in block)
    package = REPO_ROOT / "src" / "ecgtune"
    entries = [
        path.name + ("/" if path.is_dir() else "")
        for path in sorted(package.iterdir())
        if path.name != "__init__.py" and (path.suffix == ".py" or (path / "__init__.py").exists())
    ]
    assert [entry for entry in entries if not re.search(rf"\b{re.escape(entry)}", layout)] == []


# configs/inter_patient.toml justifies its settings by lines of the ablation: each line it
# names exists in the ablation JSON.

CITED_LINES = re.compile(r"\bthe ((?:\w+(?:, | and ))*\w+) lines?\b")
"""``the a line``, ``the a and b lines``, ``the a, b and c lines``: the names cited, wherever
the citation stands (in parentheses, after a colon or a comma)."""


def cited_lines(comments: str) -> list[str]:
    return [
        name for group in CITED_LINES.findall(comments) for name in re.split(r", | and ", group)
    ]


def config_comments(path: Path) -> str:
    """The file's comments as one text, so that a citation may run across lines."""
    texts = [line.partition("#")[2].strip() for line in path.read_text().splitlines()]
    return " ".join(text for text in texts if text)


def test_the_inter_patient_config_cites_lines_the_ablation_measured() -> None:
    cited = cited_lines(config_comments(REPO_ROOT / "configs" / "inter_patient.toml"))
    assert len(cited) >= 15
    assert sorted(set(cited) - set(results(ABLATION)["lines"])) == []


def test_a_cited_line_is_read_in_every_form() -> None:
    text = "(the a line) (the b and c lines) (the d, e and f lines: x), the g line; 0.1: the h line"
    assert cited_lines(text) == ["a", "b", "c", "d", "e", "f", "g", "h"]
