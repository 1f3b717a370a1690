"""The saved search in ``<run_dir>/trials.json``: hyperopt's trial documents and ecgtune's
attachment, as plain JSON, and the best trial's checkpoints beside it.

Why JSON: a run directory is copied, shared and downloaded, and the previous format, a
pickled ``Trials`` in ``trials.pkl``, ran whatever code a planted file named as soon as
``hypertune.py tune`` resumed it. This module reads the file with :mod:`json` only, checks
every field hyperopt relies on (numbers finite, ids of their form), and rebuilds ``Trials``
from the checked documents: a planted, corrupt or foreign file is refused with one line, never
executed. The search then checks the trials against its own space and its best trial's
checkpoint (``TrialStore.load``'s ``check``), refused in the same line. An old ``trials.pkl`` is
not read at all; ``--fresh`` sets it aside like any saved search.

The file::

    {"format": "ecgtune-trials", "version": 1,
     "attachments": {"ecgtune": {...}},
     "trials": [{"state": 2, "tid": 0, "spec": null, "result": {...}, "misc": {...}, ...}]}

``trials`` holds every document of ``Trials._dynamic_trials`` in order, the pending ones
(a new search's base point) and the ones that raised included. JSON has no tuples, datetimes
or numpy numbers: numpy scalars are saved as numbers, tuples as lists and datetimes as ISO
strings; loading restores the tuples and datetimes of hyperopt's own fields.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeGuard, TypeVar, get_args

import numpy as np
from hyperopt import Trials
from hyperopt.base import JOB_STATES, STATUS_STRINGS, TRIAL_KEYS, TRIAL_MISC_KEYS

from ecgtune.data.files import atomic_write
from ecgtune.errors import DataError
from ecgtune.search.trials import FINISHED_STATUSES, TrialRow, TrialStatus

TRIALS_FILE = "trials.json"
OLD_TRIALS_FILE = "trials.pkl"
"""The pickled ``Trials`` of ecgtune before this format: never read, set aside by --fresh."""
CHECKPOINT_DIR = "checkpoints"
METADATA = "ecgtune"
"""Key of ``Trials.attachments`` holding the search's identity, MLflow parent run and id."""
METADATA_FIELDS: dict[str, type] = {"identity": dict, "parent_run_id": str, "search_id": str}
"""What the search reads from the attachment, with the JSON type each must have."""
METADATA_FORMS: dict[str, tuple[re.Pattern[str], str]] = {
    "parent_run_id": (
        re.compile(r"[a-zA-Z0-9][\w\-]{0,255}", re.ASCII),
        "an MLflow run id (letters, digits, _ and -)",
    ),
    "search_id": (
        re.compile(r"search-\d{8}-\d{6}", re.ASCII),
        "a search id (search-YYYYmmdd-HHMMSS)",
    ),
}
"""The form of the attachment's ids: MLflow's own rule for run ids, and the search id that
names folders (TensorBoard's, Ray's), which must not be a path."""
FORMAT = "ecgtune-trials"
VERSION = 1
FRESH = "to start over, use --fresh (it keeps the old file)"
TIME_FIELDS = ("book_time", "refresh_time")
TUPLE_MISC_FIELDS = ("cmd", "error")
"""``misc`` fields hyperopt writes as tuples: the command and the error of a trial that raised."""


class TrialStore:
    """The search's files in ``run_dir``: the trials and the best trial's checkpoint."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / TRIALS_FILE
        self.old_path = run_dir / OLD_TRIALS_FILE
        self.checkpoints = run_dir / CHECKPOINT_DIR

    def load(self, check: Callable[[Trials], None] = lambda trials: None) -> Trials | None:
        """The saved search, or None when there is none; anything but a well-formed
        ``trials.json`` (an old ``trials.pkl`` included) is refused with a DataError, and so
        is a search that ``check`` (the search's own rules: its space, its checkpoint) finds
        a :class:`TrialsFileError` in."""
        if not self.path.exists():
            if self.old_path.exists():
                raise DataError(
                    f"{self.old_path}: trials.pkl from an older ecgtune is not read, because "
                    f"unpickling a file can run any code in it; {FRESH}"
                )
            return None
        return read_saved_search(self.path, checked_by(trials_from_saved, check))

    def save(self, trials: Trials) -> None:
        """Atomically: a reader (or a resumed search) sees the old file or the new one."""
        write_saved_search(
            self.path, FORMAT, VERSION, trials.attachments[METADATA], trials._dynamic_trials
        )

    def set_aside(self) -> Path | None:
        """``--fresh``: rename the saved trials (``trials.json`` and an old ``trials.pkl``)
        and their checkpoints with a timestamp; returns the renamed trials file, if any."""
        stamp = f"{datetime.now():%Y%m%d-%H%M%S}"
        kept = [
            rename_with_stamp(path, stamp) for path in (self.path, self.old_path) if path.exists()
        ]
        if not kept:
            return None
        if self.checkpoints.exists():
            os.replace(self.checkpoints, self.run_dir / f"{CHECKPOINT_DIR}.{stamp}")
        return kept[0]

    def checkpoint(self, number: int) -> Path:
        return self.checkpoints / f"trial-{number:03d}.pt"

    def keep_only_checkpoint(self, number: int | None) -> None:
        """Delete the checkpoints of trials that are no longer the best."""
        keep = self.checkpoint(number) if number is not None else None
        for path in self.checkpoints.glob("trial-*.pt"):
            if path != keep:
                path.unlink()


Saved = TypeVar("Saved")


def read_saved_search(path: Path, parse: Callable[[object], Saved]) -> Saved:
    """A saved search file read as JSON only and checked by ``parse`` (which raises
    :class:`TrialsFileError`); any problem is one DataError naming the file."""
    try:
        saved = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DataError(f"{path}: cannot read the saved search ({reason}); {FRESH}") from None
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested too deep
        raise DataError(f"{path}: not a UTF-8 JSON file ({exc}); {FRESH}") from None
    try:
        return parse(saved)
    except TrialsFileError as exc:
        raise DataError(f"{path}: {exc}; {FRESH}") from None


def checked_by(
    parse: Callable[[object], Saved], check: Callable[[Saved], None]
) -> Callable[[object], Saved]:
    """``parse``, then ``check`` of what it parsed: the search's own rules on a well-formed
    file, refused as the file's own problems are."""

    def parse_and_check(saved: object) -> Saved:
        parsed = parse(saved)
        check(parsed)
        return parsed

    return parse_and_check


def write_saved_search(
    path: Path, format_name: str, version: int, metadata: dict[str, Any], trials: list[Any]
) -> None:
    """A saved search file, the envelope :func:`read_saved_search` reads back (format,
    version, the search's metadata, its trials), written atomically: a reader or a resumed
    search sees the old file or the new one."""
    saved = {
        "format": format_name,
        "version": version,
        "attachments": {METADATA: metadata},
        "trials": trials,
    }
    text = json.dumps(saved, default=json_value, indent=1)
    with atomic_write(path) as stream:
        stream.write(text.encode("utf-8"))


def rename_with_stamp(path: Path, stamp: str) -> Path:
    """``trials.json`` -> ``trials.<stamp>.json``."""
    kept = path.with_name(f"{path.stem}.{stamp}{path.suffix}")
    os.replace(path, kept)
    return kept


def json_value(value: object) -> Any:
    """``json.dumps``' fallback for what hyperopt's documents hold beyond JSON: numpy numbers
    (its samples and indices) and datetimes (when a trial was booked and last refreshed)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} {value!r} cannot be saved in {TRIALS_FILE}")


class TrialsFileError(ValueError):
    """What is wrong with a parsed trials file, said in one line (the caller names the file)."""


def trials_from_saved(saved: object) -> Trials:
    """hyperopt's ``Trials`` rebuilt from a parsed file, once every field it relies on is
    checked, with the tuples and datetimes that JSON turned into lists and strings."""
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise TrialsFileError(f'not an ecgtune trials file (no "format": "{FORMAT}")')
    check_version(saved.get("version"))
    metadata = checked_metadata(member(saved, "attachments", "", dict))
    docs = [
        checked_doc(doc, f"trials[{index}]")
        for index, doc in enumerate(member(saved, "trials", "", list))
    ]
    check_unique_tids(docs)
    trials = Trials()
    trials.insert_trial_docs(docs)
    trials.refresh()
    # hyperopt numbers new trials len(_ids) on, and refresh() puts only the trials in valid
    # states there: reserve every number up to the last one, as the running search had.
    trials._ids.update(range(max((doc["tid"] for doc in docs), default=-1) + 1))
    trials.attachments[METADATA] = metadata
    return trials


def check_version(version: object) -> None:
    if not is_integer(version) or version < 1:
        raise invalid("version", version, "a format version (1, 2, ...)")
    if version > VERSION:
        raise TrialsFileError(
            f"version = {version} comes from a newer ecgtune, which can resume it (this one "
            f"reads version {VERSION})"
        )


def checked_metadata(attachments: dict[str, Any]) -> dict[str, Any]:
    """The search's identity and ids; an id of another form (a path, a quoted value) would
    reach MLflow or name a folder."""
    metadata: dict[str, Any] = member(attachments, METADATA, "attachments.", dict)
    for key, kind in METADATA_FIELDS.items():
        member(metadata, key, f"attachments.{METADATA}.", kind)
    for key, (form, expected) in METADATA_FORMS.items():
        if not form.fullmatch(metadata[key]):
            raise invalid(f"attachments.{METADATA}.{key}", metadata[key], expected)
    return metadata


def checked_doc(doc: object, where: str) -> dict[str, Any]:
    """One trial document, checked for what hyperopt and the search read from it, with its
    tuples and datetimes restored."""
    if not isinstance(doc, dict):
        raise invalid(where, doc, "an object")
    for key in (*TRIAL_KEYS, "version"):
        member(doc, key, f"{where}.")
    tid, state = doc["tid"], doc["state"]
    if not is_integer(tid) or tid < 0:
        raise invalid(f"{where}.tid", tid, "a trial number")
    if not is_integer(state) or state not in JOB_STATES:
        raise invalid(f"{where}.state", state, f"one of hyperopt's job states {JOB_STATES}")
    if not is_integer(doc["version"]):
        raise invalid(f"{where}.version", doc["version"], "an integer")
    if doc["exp_key"] is not None:
        raise invalid(f"{where}.exp_key", doc["exp_key"], "null")
    check_result(doc["result"], f"{where}.result")
    times = {key: parsed_time(doc[key], f"{where}.{key}") for key in TIME_FIELDS}
    return {**doc, "misc": checked_misc(doc["misc"], tid, f"{where}.misc"), **times}


def check_result(result: object, where: str) -> None:
    """A status hyperopt knows (a pruned trial's is ok), the loss it ranks finished trials by,
    and the validation objective per epoch that pruning compares later trials with."""
    if not isinstance(result, dict) or result.get("status") not in STATUS_STRINGS:
        raise invalid(where, result, f"an object with a status of {'/'.join(STATUS_STRINGS)}")
    loss = result.get("loss")
    if result["status"] == "ok" and not is_number(loss):
        raise invalid(f"{where}.loss", loss, "a finite number, as the status is ok")
    curve = result.get("curve", [])
    if not (isinstance(curve, list) and all(is_number(value) for value in curve)):
        raise invalid(f"{where}.curve", curve, "a list of finite numbers (one per epoch)")


def checked_misc(misc: object, tid: int, where: str) -> dict[str, Any]:
    """The sampled point: ``idxs`` and ``vals`` name the same parameters, each drawn for
    this trial (``[tid]`` and ``[number]``) or not (``[]`` and ``[]``)."""
    if not isinstance(misc, dict):
        raise invalid(where, misc, "an object")
    for key in TRIAL_MISC_KEYS:
        member(misc, key, f"{where}.")
    if not is_integer(misc["tid"]) or misc["tid"] != tid:
        raise invalid(f"{where}.tid", misc["tid"], f"the trial's tid {tid}")
    idxs: dict[str, Any] = member(misc, "idxs", f"{where}.", dict)
    vals: dict[str, Any] = member(misc, "vals", f"{where}.", dict)
    if idxs.keys() != vals.keys():
        raise TrialsFileError(f"{where}: idxs and vals name different parameters")
    for label, drawn in idxs.items():
        if drawn != [] and not (drawn == [tid] and is_integer(drawn[0])):
            raise invalid(f"{where}.idxs.{label}", drawn, f"[] or [{tid}]")
        values = vals[label]
        if not (isinstance(values, list) and len(values) == len(drawn)):
            raise invalid(f"{where}.vals.{label}", values, f"a list as long as idxs.{label}")
        if not all(is_number(value) for value in values):
            raise invalid(f"{where}.vals.{label}", values, "a list of finite numbers")
    tuples = {key: tuple(misc[key]) for key in TUPLE_MISC_FIELDS if isinstance(misc.get(key), list)}
    return {**misc, **tuples}


def parsed_time(value: object, where: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    raise invalid(where, value, "null or an ISO date and time")


def check_unique_tids(docs: list[dict[str, Any]]) -> None:
    seen: set[int] = set()
    for doc in docs:
        if doc["tid"] in seen:
            raise TrialsFileError(f"trial number {doc['tid']} is saved twice")
        seen.add(doc["tid"])


JSON_TYPES: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}


def member(table: dict[str, Any], key: str, prefix: str, kind: type = object) -> Any:
    """``table[key]``, which must be there and, if ``kind`` is given, of that JSON type."""
    if key not in table:
        raise TrialsFileError(f"{prefix}{key} is missing")
    value = table[key]
    if not isinstance(value, kind):
        raise invalid(prefix + key, value, JSON_TYPES[kind])
    return value


def invalid(where: str, value: object, expected: str) -> TrialsFileError:
    """``trials[3].state = 7 is not one of ...``, the value cut short to keep one line."""
    written = json.dumps(value)
    if len(written) > 60:
        written = written[:57] + "..."
    return TrialsFileError(f"{where} = {written} is not {expected}")


def is_integer(value: object) -> TypeGuard[int]:
    """JSON integers (``true`` is not one, though Python's bool is an int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """Finite JSON numbers: Python's json reads NaN and Infinity, which no figure, loss or
    sampled value of a search is."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


ROW_TYPES: dict[str, tuple[str, Any]] = {
    "number": ("a trial number", lambda v: is_integer(v) and v >= 0),
    "status": (f"one of {get_args(TrialStatus)}", lambda v: v in get_args(TrialStatus)),
    "values": ("an object", lambda v: isinstance(v, dict)),
    "objective": ("a finite number or null", lambda v: v is None or is_number(v)),
    "epochs": ("a count of epochs", lambda v: is_integer(v) and v >= 0),
    "seconds": ("a number of seconds", lambda v: is_number(v) and v >= 0),
    "note": ("a string", lambda v: isinstance(v, str)),
}
"""Each field of a saved :class:`TrialRow`: what it must be, and the check."""


def checked_row(row: dict[str, Any], where: str) -> TrialRow:
    """A finished trial's row, as both engines save it: every field of its kind, and an
    objective for a trial that finished (its rank among the trials)."""
    for key, (expected, check) in ROW_TYPES.items():
        if not check(member(row, key, f"{where}.")):
            raise invalid(f"{where}.{key}", row[key], expected)
    if set(row) != set(ROW_TYPES):
        raise TrialsFileError(f"{where} has other fields than {', '.join(ROW_TYPES)}")
    if row["status"] in FINISHED_STATUSES and row["objective"] is None:
        raise invalid(
            f"{where}.objective", None, f"a finite number, as the status is {row['status']}"
        )
    return TrialRow(**row)


def checked_figures(figures: dict[str, Any], where: str) -> dict[str, float]:
    """A trial's validation figures by name, each a finite number."""
    for name, value in figures.items():
        if not is_number(value):
            raise invalid(f"{where}.valid.{name}", value, "a finite number")
    return figures
