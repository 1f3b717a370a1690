"""Records of any WFDB database, cut into beats by a trained model's own ``[data]`` rules.

A database is a folder: its records are the lines of its ``RECORDS`` file (PhysioNet's
listing), or, without one, the names of its ``.hea`` headers. A record's beats come from
:func:`~ecgtune.data.beats.segment_record`, the function the training build uses, so a beat
here is cut exactly as the model's training beats were, whatever the record's sampling rate
(``segment_record`` resamples it to ``data.target_hz``) and wherever its leads are stored
(found by name, as many as the model has input channels, in its channel order). Beat positions
come from the record's annotation file, or from the QRS detector (:mod:`~ecgtune.data.detect`,
on the first lead); RR intervals from those same positions. Beats outside the signal or at its
edges, unknown symbols, and a record's lone beat, are skipped and counted
(``RecordBeats.skipped``), or refused with ``strict``. :func:`cut_records` reads and cuts the
next records in threads while the caller classifies the current one (wfdb's reads and scipy's
filters release the GIL).
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ecgtune.config import DataConfig
from ecgtune.data.beats import RecordBeats, describe_skips, segment_record
from ecgtune.data.detect import detect_beats, detected_annotations
from ecgtune.data.records import Lead, lead_substitutions, read_annotations, read_named_leads
from ecgtune.errors import DataError, UserError

RECORDS_FILE = "RECORDS"
SHOWN_NAMES = 12
"""Record names listed in an "unknown record" message (a database may hold thousands)."""
CUT_WORKERS = min(4, os.cpu_count() or 1)
"""Threads reading and cutting records ahead of the one being classified; at most this many
cut records wait in memory, so a database of any size holds a few records at a time."""


@dataclass(frozen=True)
class WfdbDatabase:
    """A database folder and its record names, in listing order."""

    folder: Path
    records: tuple[str, ...]

    @property
    def name(self) -> str:
        """The folder's name, kept to letters, digits, ``-``, ``_`` and ``.`` (it names the
        evaluation's files)."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.folder.resolve().name) or "database"


@dataclass(frozen=True)
class LeadChoice:
    """The leads to read, by name in channel order, and whether a record without one reads
    its first channel not taken by another in its place (otherwise it is an error)."""

    names: tuple[str, ...]
    first_channel: bool = False


@dataclass(frozen=True)
class CutRecord:
    """A record's beats and the leads they were cut from, in channel order; ``source`` says
    where the beat positions came from (the annotator's extension, or ``"XQRS"``)."""

    leads: tuple[Lead, ...]
    beats: RecordBeats
    source: str

    @property
    def fs(self) -> float:
        """The record's sampling rate (its leads share it)."""
        return self.leads[0].fs

    def stand_ins(self, choice: LeadChoice) -> dict[str, str]:
        """``{wanted lead: lead read in its place}`` for the leads the record lacks."""
        return lead_substitutions(choice.names, self.leads)


def choose_leads(names: Sequence[str] | None, data: DataConfig, first_channel: bool) -> LeadChoice:
    """The leads ``--lead`` names (repeatable, in channel order), or the model's
    ``data.leads``; one per input channel of the model, each once."""
    if names is None:
        return LeadChoice(tuple(data.leads), first_channel)
    given = " ".join(f"--lead {name}" for name in names)
    if len(names) != data.input_channels:
        raise UserError(
            f"{given}: the model reads {data.input_channels} lead(s) "
            f"({', '.join(data.leads)}); give --lead once per lead, in channel order"
        )
    if len(set(names)) != len(names):
        raise UserError(f"{given}: a lead is named twice; each lead feeds its own channel")
    return LeadChoice(tuple(names), first_channel)


def open_database(folder: Path) -> WfdbDatabase:
    """The database in ``folder``; a one-line error when it is not one."""
    if not folder.is_dir():
        raise DataError(f"--database {folder}: no such folder")
    listing = folder / RECORDS_FILE
    if listing.is_file():
        records = listed_records(listing)
    else:
        records = tuple(sorted(path.name[: -len(".hea")] for path in folder.glob("*.hea")))
    if not records:
        raise DataError(
            f"--database {folder}: not a WFDB database (no {RECORDS_FILE} file and no .hea "
            f"headers)"
        )
    return WfdbDatabase(folder, records)


def listed_records(listing: Path) -> tuple[str, ...]:
    """The record names of a ``RECORDS`` file; a nested database (a line naming a folder, as
    PhysioNet's multi-level databases have) is refused: point ``--database`` at that folder."""
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{listing}: not a readable RECORDS file ({exc})") from None
    records = tuple(line.strip() for line in lines if line.strip())
    nested = [name for name in records if name.endswith("/")]
    if nested:
        raise DataError(
            f"{listing}: lists folders ({nested[0]}, ...), not records; give --database "
            f"{listing.parent / nested[0]}"
        )
    return records


def choose_records(database: WfdbDatabase, requested: Sequence[str] | None) -> list[str]:
    """``requested`` (``--records``), in the order given, each checked against the database;
    all of its records when None."""
    if requested is None:
        return list(database.records)
    known = set(database.records)
    unknown = [name for name in requested if name not in known]
    if unknown:
        shown = ", ".join(database.records[:SHOWN_NAMES])
        more = ", ..." if len(database.records) > SHOWN_NAMES else ""
        raise DataError(
            f"--records: unknown record {unknown[0]!r} in {database.folder} "
            f"({len(database.records)} records: {shown}{more})"
        )
    return list(dict.fromkeys(requested))


def whole_record_rules(data: DataConfig) -> DataConfig:
    """The model's beat rules without ``max_beats_per_record``: every beat is evaluated or
    labelled, however many the model was trained on."""
    return data.model_copy(update={"max_beats_per_record": None})


def cut_record(
    path: Path, choice: LeadChoice, data: DataConfig, annotator: str | None, strict: bool = False
) -> CutRecord:
    """Every beat of the record at ``path`` (no extension), cut by ``data``'s rules from the
    chosen leads: at the beats of its ``annotator`` file, or at the beats XQRS finds on the
    first lead when ``annotator`` is None. Beats outside the signal or at its edges, and
    unknown symbols, and a record's lone beat, are skipped and counted; ``strict`` refuses the
    record instead."""
    leads = tuple(read_named_leads(path, choice.names, choice.first_channel))
    signal = leads[0]
    if signal.fs != round(signal.fs):
        raise DataError(
            f"record {path}: sampled at {signal.fs:g} Hz; only whole-number rates are "
            f"resampled exactly (resample the record first)"
        )
    if annotator is None:
        annotations, source = detected_annotations(detect_beats(str(path), signal)), "XQRS"
    else:
        annotations, source = read_annotations(path.parent, path.name, annotator), annotator
    beats = segment_record(path.name, leads, annotations, whole_record_rules(data))
    if strict and beats.skipped:
        raise DataError(
            f"record {path}: annotations skipped: {describe_skips(beats.skipped)} (--strict; "
            f"without it they are skipped and counted)"
        )
    return CutRecord(leads, beats, source)


def cut_records(
    jobs: Sequence[tuple[Path, str | None]],
    choice: LeadChoice,
    data: DataConfig,
    strict: bool = False,
) -> Iterator[CutRecord]:
    """:func:`cut_record` of each ``(path, annotator)``, in order, with up to
    :data:`CUT_WORKERS` records read and cut ahead in threads; the first failure is raised
    when its record's turn comes."""
    with ThreadPoolExecutor(max_workers=CUT_WORKERS, thread_name_prefix="cut") as pool:
        pending: deque[Future[CutRecord]] = deque()
        try:
            for path, annotator in jobs:
                pending.append(pool.submit(cut_record, path, choice, data, annotator, strict))
                if len(pending) > CUT_WORKERS:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
