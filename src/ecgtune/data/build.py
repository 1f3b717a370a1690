"""The one entry point of the data layer: inputs -> beats -> splits, cached.

:func:`load_dataset` checks the config, makes sure the inputs are there and intact (MIT-BIH
records downloaded and SHA-256 verified, or Kaggle files hashed), and returns the cached
dataset for exactly these inputs when there is one; otherwise it builds the beats, splits them
and caches the result. It never resamples: the trainer resamples the train split.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from time import perf_counter
from typing import Any

import numpy as np
from rich.progress import Progress

from ecgtune.config import AAMI_CLASSES, Config, DataConfig
from ecgtune.data.beats import RR_COLUMNS, RecordBeats, aami_labels, segment_record
from ecgtune.data.cache import cache_key, cache_path, load_dataset_file, save_dataset
from ecgtune.data.dataset import BeatSet, Dataset
from ecgtune.data.kaggle import BeatFile, class_names_for, file_digests, read_beat_file
from ecgtune.data.physionet import ensure_records
from ecgtune.data.progress import DataProgress
from ecgtune.data.records import lead_substitutions, read_annotations, read_named_leads
from ecgtune.data.splits import DS1, DS2, SplitIndex, carve_given_test, inter_split, intra_split
from ecgtune.errors import ConfigError
from ecgtune.mitdb import mitdb_record_names

INTER_EXCLUDED = "not in de Chazal DS1/DS2 (paced record; data.split = 'inter')"


@dataclass(frozen=True)
class Inputs:
    """What the dataset is built from: the records used (mitdb), records left out and why, and
    the SHA-256 of every input file (the cache key)."""

    records: list[str]
    excluded: dict[str, str]
    digests: dict[str, str]


def load_dataset(config: Config, progress: DataProgress | None = None) -> Dataset:
    """The dataset of ``config`` (reporting on ``progress``; silent without it)."""
    start = perf_counter()
    progress = progress or DataProgress()
    inputs = prepare_inputs(config, progress.download)
    path = cache_path(config, cache_key(config, inputs.records, inputs.digests))
    cached = load_dataset_file(path)
    if cached is not None:
        return _with_info(cached, from_cache=True, load_seconds=perf_counter() - start)
    if config.data.source == "mitdb":
        dataset = build_mitdb(config, inputs, progress.build)
    else:
        dataset = build_kaggle(config, progress.build)
    dataset = _with_info(
        dataset, build_seconds=perf_counter() - start, from_cache=False, cache_file=str(path)
    )
    save_dataset(dataset, path)
    return dataset


def _with_info(dataset: Dataset, **info: Any) -> Dataset:
    return replace(dataset, info={**dataset.info, **info})


def prepare_inputs(config: Config, download: Progress) -> Inputs:
    """Check the config against the inputs; download and verify records, hash Kaggle files."""
    data = config.data
    if data.source == "mitdb":
        records, excluded = resolve_records(data)
        digests = ensure_records(data.raw_dir, data.base_url, records, download)
        return Inputs(records, excluded, digests)
    roles = {"data.train_files": data.train_files, "data.test_files": data.test_files}
    digests = {
        f"{key}[{i}]": digest
        for key, paths in roles.items()
        for i, digest in enumerate(file_digests(paths, key))
    }
    return Inputs([], {}, digests)


def resolve_records(data: DataConfig) -> tuple[list[str], dict[str, str]]:
    """``data.records`` (all 48 when not given; the schema checked the names), sorted; for the
    inter split, records outside DS1/DS2 (the paced ones) are left out, with the reason."""
    requested = mitdb_record_names() if data.records is None else data.records
    records = sorted(set(requested))
    if data.split == "intra":
        return records, {}
    excluded = {name: INTER_EXCLUDED for name in records if name not in DS1 + DS2}
    return [name for name in records if name not in excluded], excluded


def build_mitdb(config: Config, inputs: Inputs, progress: Progress) -> Dataset:
    """Beats of every record from the leads of ``data.leads`` (:func:`segment_records`), then
    the intra or inter split."""
    data = config.data
    segmented = segment_records(data, inputs, progress)
    beats = pool_record_beats(segmented.parts)
    if data.split == "intra":
        split = intra_split(beats.labels, data.test_fraction, data.valid_fraction, config.seed)
    else:
        split = inter_split(beats.records, beats.labels, data.valid_fraction, config.seed)
    symbols = Counter(str(s) for part in segmented.parts for s in part.symbols)
    info = {
        "source": "mitdb",
        "split": data.split,
        "leads": data.leads,
        "skipped_records": segmented.skipped,
        "lead_substitutions": segmented.substituted,
        "dropped_beats": {reason: count for reason, count in segmented.dropped.items() if count},
        "beat_symbols": dict(sorted(symbols.items())),
    }
    return assemble(beats, split, None, AAMI_CLASSES, info)


@dataclass(frozen=True)
class SegmentedRecords:
    """The beats of each record kept, the records skipped and why, the lead stand-ins used and
    the beats dropped by reason."""

    parts: list[RecordBeats]
    skipped: dict[str, str]
    substituted: dict[str, dict[str, str]]
    dropped: Counter[str]


def segment_records(data: DataConfig, inputs: Inputs, progress: Progress) -> SegmentedRecords:
    """Beats of every record of ``inputs`` from the leads of ``data.leads`` (a record lacking
    one: its stand-in, or the record is skipped, as ``data.missing_lead`` says)."""
    parts: list[RecordBeats] = []
    dropped: Counter[str] = Counter()
    skipped, substituted = dict(inputs.excluded), {}
    with progress:
        for record in progress.track(inputs.records, description="records"):
            annotations = read_annotations(data.raw_dir, record)
            n_beats = int(np.count_nonzero(aami_labels(annotations.symbols) >= 0))
            leads = read_named_leads(data.raw_dir / record, data.leads, first_channel=True)
            stand_ins = lead_substitutions(data.leads, leads)
            if stand_ins and data.missing_lead == "skip":
                missing = ", ".join(stand_ins)
                skipped[record] = f"no {missing} lead (data.missing_lead = 'skip')"
                dropped[f"record without {missing} (data.missing_lead = 'skip')"] += n_beats
                continue
            if stand_ins:
                substituted[record] = stand_ins
            part = segment_record(record, leads, annotations, data)
            parts.append(part)
            dropped.update(part.skipped)
            dropped["beyond data.max_beats_per_record"] += n_beats - len(part) - part.skipped_beats
    return SegmentedRecords(parts, skipped, substituted, dropped)


def load_record_beats(config: Config, records: Sequence[str]) -> BeatSet:
    """The beats of ``records`` alone (MIT-BIH, downloaded and verified as
    :func:`load_dataset` does, in record order, not cached, no split): what a development run
    reads when the other records' labels must stay unread, as DS2's in the inter-patient
    benchmark."""
    if config.data.source != "mitdb":
        raise ConfigError(f"data.source = {config.data.source!r}: records need 'mitdb'")
    data = config.data.model_copy(update={"records": sorted(set(records))})
    silent = DataProgress()
    inputs = prepare_inputs(config.model_copy(update={"data": data}), silent.download)
    return pool_record_beats(segment_records(data, inputs, silent.build).parts)


def pool_record_beats(parts: list[RecordBeats]) -> BeatSet:
    """All records' beats in one row-aligned set, in record order."""
    if not parts:
        raise ConfigError("no beats: every record in data.records was skipped (data.missing_lead)")
    return BeatSet(
        signals=np.concatenate([part.signals for part in parts]),
        labels=np.concatenate([part.labels for part in parts]),
        rr=np.concatenate([part.rr for part in parts]),
        records=np.concatenate([np.full(len(part), part.record) for part in parts]),
    )


def build_kaggle(config: Config, progress: Progress) -> Dataset:
    """Beats of the train (and test) files; validation (and test) carved out of train."""
    data = config.data
    with progress:
        paths = [*data.train_files, *data.test_files]
        files = [read_beat_file(path, data) for path in progress.track(paths, description="files")]
    train_files, test_files = files[: len(data.train_files)], files[len(data.train_files) :]
    class_names = class_names_for(files, data)
    beats = pool_files(train_files)
    if test_files:
        split = carve_given_test(beats.labels, data.valid_fraction, config.seed)
        test = pool_files(test_files)
    else:
        split = intra_split(beats.labels, data.test_fraction, data.valid_fraction, config.seed)
        test = None
    info: dict[str, Any] = {"source": data.source, "split": "intra", "dropped_beats": {}}
    return assemble(beats, split, test, class_names, info)


def pool_files(files: list[BeatFile]) -> BeatSet:
    """The beats of several files, each beat's ``records`` entry being its file name; the
    files have no RR intervals, so every RR feature is zero."""
    labels = np.concatenate([file.labels for file in files])
    return BeatSet(
        signals=np.concatenate([file.signals for file in files]),
        labels=labels,
        rr=np.zeros((labels.size, len(RR_COLUMNS)), dtype=np.float32),
        records=np.concatenate([np.full(file.labels.size, file.path.name) for file in files]),
    )


def assemble(
    beats: BeatSet,
    split: SplitIndex,
    test: BeatSet | None,
    class_names: tuple[str, ...],
    info: dict[str, Any],
) -> Dataset:
    """The three splits (``test`` given, or taken from ``beats`` by ``split.test``)."""
    dataset = Dataset(
        train=beats.take(split.train),
        valid=beats.take(split.valid),
        test=beats.take(split.test) if test is None else test,
        class_names=class_names,
        info=info,
    )
    records = {
        name: sorted(set(getattr(dataset, name).records.tolist()))
        for name in ("train", "valid", "test")
    }
    return _with_info(dataset, records=records)
