"""The Ray engine's saved search in ``<run_dir>/ray_trials.json``: the search's metadata and
every finished trial's row and validation figures, as the driver recorded them.

Ray keeps its own saved experiment (the searcher's state, the scheduler's rungs, the trials'
checkpoints) under ``search.ray_storage``; this file is ecgtune's record of what the driver
has reported: which trials MLflow, TensorBoard and the display have heard end, so that a
resumed search never reports a trial twice. It is written atomically after every trial and
read with :mod:`json` only, every field checked (a planted or corrupt file is refused in one
line, as ``trials.json`` is). This module imports no Ray: ``tune`` reads it to refuse a local
search over a Ray one without Ray installed.

The file::

    {"format": "ecgtune-ray-trials", "version": 2,
     "attachments": {"ecgtune": {"identity": {...}, "parent_run_id": "...", "search_id": "..."}},
     "trials": [{"row": {"number": 0, "status": "ok", ...}, "valid": {"macro_f1": 0.8, ...}}]}
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ecgtune.search.store import (
    CHECKPOINT_DIR,
    TrialsFileError,
    checked_by,
    checked_figures,
    checked_metadata,
    checked_row,
    invalid,
    member,
    read_saved_search,
    rename_with_stamp,
    write_saved_search,
)
from ecgtune.search.trials import TrialRow

RAY_TRIALS_FILE = "ray_trials.json"
RAY_DIR = "ray"
"""Ray's saved experiments when ``search.ray_storage`` is empty: ``<run_dir>/ray/<search id>``."""
FORMAT = "ecgtune-ray-trials"
VERSION = 2
"""2: Ray's saved experiment beside it names the engine's classes in ``ecgtune.search.ray``;
Ray's experiments of version 1 name ``ecgtune.search.ray_engine``, which no longer exists,
and cannot be restored (``Tuner.restore`` unpickles them): refused here, before any work."""


@dataclass
class RaySearchRecord:
    """What the driver has recorded: the search's metadata, and the finished trials' rows and
    validation figures (of their best epoch) by trial number."""

    metadata: dict[str, Any]
    rows: list[TrialRow] = field(default_factory=list)
    valid: dict[int, dict[str, float]] = field(default_factory=dict)

    def add(self, row: TrialRow, valid: dict[str, float]) -> None:
        self.rows.append(row)
        self.valid[row.number] = valid


class RayTrialStore:
    """``ray_trials.json`` in ``run_dir``."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / RAY_TRIALS_FILE

    def load(
        self, check: Callable[[RaySearchRecord], None] = lambda record: None
    ) -> RaySearchRecord | None:
        """The saved record, or None when there is none; anything but a well-formed file is
        refused with a DataError, and so is a record ``check`` (the search's checkpoint)
        finds a :class:`TrialsFileError` in."""
        if not self.path.exists():
            return None
        return read_saved_search(self.path, checked_by(record_from_saved, check))

    def save(self, record: RaySearchRecord) -> None:
        """Atomically: a resumed search sees the old file or the new one."""
        trials = [
            {"row": asdict(row), "valid": record.valid.get(row.number, {})} for row in record.rows
        ]
        write_saved_search(self.path, FORMAT, VERSION, record.metadata, trials)

    def set_aside(self) -> Path | None:
        """``--fresh``: rename the record, the checkpoints and Ray's experiments under the run
        directory with a timestamp; returns the renamed record, if any."""
        if not self.path.exists():
            return None
        stamp = f"{datetime.now():%Y%m%d-%H%M%S}"
        kept = rename_with_stamp(self.path, stamp)
        for name in (CHECKPOINT_DIR, RAY_DIR):
            if (self.run_dir / name).exists():
                os.replace(self.run_dir / name, self.run_dir / f"{name}.{stamp}")
        return kept


def record_from_saved(saved: object) -> RaySearchRecord:
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise TrialsFileError(f'not an ecgtune Ray trials file (no "format": "{FORMAT}")')
    version = saved.get("version")
    if version != VERSION:
        raise invalid("version", version, f"{VERSION}, the format this ecgtune reads")
    record = RaySearchRecord(checked_metadata(member(saved, "attachments", "", dict)))
    for index, entry in enumerate(member(saved, "trials", "", list)):
        where = f"trials[{index}]"
        if not isinstance(entry, dict):
            raise invalid(where, entry, "an object")
        row = checked_row(member(entry, "row", f"{where}.", dict), f"{where}.row")
        if row.number in record.valid:
            raise TrialsFileError(f"trial number {row.number} is saved twice")
        record.add(row, checked_figures(member(entry, "valid", f"{where}.", dict), where))
    return record
