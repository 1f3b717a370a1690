"""Mutation testing of the core modules with mutmut: each module mutated against the tests that
cover it, one module at a time, the score per module printed at the end.

    python tools/mutation.py                       # every core module, smallest first
    python tools/mutation.py metrics data/splits   # some of them
    python tools/mutation.py --retest metrics      # its survivors again, after new tests
    python tools/mutation.py --report              # the scores of the runs already made

Not part of CI (it runs the covering tests once per mutant): run it before changing a core
module, then kill the survivors it lists, or say in docs/development.md why one is
equivalent. Each module gets its own folder ``.mutation/<module>/`` (git-ignored): links to
``src``, ``tests`` and ``hypertune.py``, a ``pyproject.toml`` with the ``[tool.mutmut]`` table
for that module (only it mutated, only its tests run), mutmut's own ``mutants/`` working copy
and ``run.log``, its output. mutmut keeps its results there: a run that is stopped resumes
where it was, and ``mutmut results``, ``mutmut show NAME`` and ``mutmut apply NAME`` work
inside the folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
WORK_DIR = REPO_ROOT / ".mutation"
LINKED = ("src", "tests", "hypertune.py")
CORE_TESTS: dict[str, tuple[str, ...]] = {
    "models/adapt": ("tests/test_adaptation.py",),
    "models/ensemble": ("tests/test_folds.py",),
    "search/folds": ("tests/test_folds_core.py",),
    "data/splits": ("tests/test_data_splits.py",),
    "metrics": ("tests/test_metrics.py",),
    "search/store": ("tests/test_search_store.py", "tests/test_saved_search_hostile.py"),
    "search/space": ("tests/test_search_space.py",),
    "data/beats": (
        "tests/test_data_beats.py",
        "tests/test_beat_features.py",
        "tests/test_rhythm_features.py",
        "tests/test_record_edges.py",
    ),
    "training": ("tests/test_training_core.py", "tests/test_training_options.py"),
}
"""Each core module (under src/ecgtune, without .py), smallest first, and the test files that
cover it: mutmut runs, for each mutant, those of their tests that call the mutated function."""
KILLED = {"killed", "timeout", "caught by type check", "segfault"}
"""mutmut's statuses that count as a mutant caught (a timeout is a mutant that hangs)."""


def source_path(module: str) -> str:
    return f"src/ecgtune/{module}.py"


def mutmut_table(module: str) -> dict[str, object]:
    """The ``[tool.mutmut]`` settings of one module's run."""
    return {
        "source_paths": ["src"],
        "only_mutate": [source_path(module)],
        "also_copy": ["hypertune.py"],
        "pytest_add_cli_args_test_selection": list(CORE_TESTS[module]),
        "pytest_add_cli_args": ["-p", "no:cacheprovider"],
    }


def toml_value(value: object) -> str:
    """A TOML value of a string or a list of strings (what the table holds)."""
    return json.dumps(value)


def prepare(module: str) -> Path:
    """The module's folder: links to the repository's files and its pyproject.toml, the
    repository's own (pytest's settings) with the mutmut table added."""
    folder = WORK_DIR / module.replace("/", ".")
    folder.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        link = folder / name
        if not link.is_symlink():
            link.symlink_to(REPO_ROOT / name)
    table = "".join(f"{key} = {toml_value(value)}\n" for key, value in mutmut_table(module).items())
    pyproject = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    (folder / "pyproject.toml").write_text(f"{pyproject}\n[tool.mutmut]\n{table}", "utf-8")
    return folder


def run(module: str, max_children: int, retest: bool) -> None:
    """``mutmut run`` in the module's folder, with ``ecgtune`` imported from mutmut's copy
    (PYTHONPATH would put the unmutated source first): the mutants not yet tested, or with
    ``retest`` the ones that were not killed (after tests were added for them)."""
    folder = prepare(module)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children)]
    if retest:
        command += [
            name for name, status in (statuses(module) or {}).items() if status not in KILLED
        ]
    print(f"== {module}: {' '.join(CORE_TESTS[module])} (mutmut's output: {folder}/run.log)")
    started = time.perf_counter()
    with (folder / "run.log").open("w", encoding="utf-8") as log:
        subprocess.run(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    print(f"   {time.perf_counter() - started:.0f} s", flush=True)


def statuses(module: str) -> dict[str, str] | None:
    """Each mutant's status from mutmut's results file, None where the module has not run."""
    from mutmut.stats import status_by_exit_code

    meta = WORK_DIR / module.replace("/", ".") / "mutants" / f"{source_path(module)}.meta"
    if not meta.exists():
        return None
    codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
    return {name: status_by_exit_code[code] for name, code in codes.items()}


def report(modules: list[str]) -> None:
    """Per module: mutants, killed, the score, and the survivors by name."""
    for module in modules:
        found = statuses(module)
        if found is None:
            print(f"{module}: not run")
            continue
        counts = Counter(found.values())
        killed = sum(counts[status] for status in KILLED)
        score = 100 * killed / max(len(found), 1)
        others = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s not in KILLED)
        print(f"{module}: {len(found)} mutants, {killed} killed ({score:.1f} %); {others or '-'}")
        for name, status in sorted(found.items()):
            if status not in KILLED:
                print(f"    {status}: {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=", ".join(CORE_TESTS))
    parser.add_argument("--report", action="store_true", help="print the scores, run nothing")
    parser.add_argument(
        "--retest", action="store_true", help="run the mutants that survived again (new tests)"
    )
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if unknown := sorted(set(args.modules) - set(CORE_TESTS)):
        parser.error(f"unknown modules {unknown}: choose from {', '.join(CORE_TESTS)}")
    modules = args.modules or list(CORE_TESTS)
    if not args.report:
        for module in modules:
            run(module, args.max_children, args.retest)
    report(modules)


if __name__ == "__main__":
    main()
