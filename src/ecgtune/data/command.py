"""``hypertune.py data``: build (or load) the dataset and report what is in it."""

from __future__ import annotations

import json
from time import perf_counter
from typing import Any

from ecgtune.config import Config
from ecgtune.console import make_console
from ecgtune.console.data import render_data_summary
from ecgtune.data.build import load_dataset
from ecgtune.data.dataset import Dataset

SPLITS = ("train", "valid", "test")


def data_command(config: Config, as_json: bool) -> int:
    """Print beats per class per split as a table, or as JSON on stdout (``as_json``; nothing
    else goes to stdout then). Progress bars go to stderr."""
    start = perf_counter()
    dataset = load_dataset(config, make_console(stderr=True))
    summary = dataset_summary(dataset, seconds=perf_counter() - start)
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        render_data_summary(summary, make_console())
    return 0


def dataset_summary(dataset: Dataset, seconds: float) -> dict[str, Any]:
    """Counts per class per split, records per split, what was dropped, and the timing."""
    info = dataset.info
    splits = {name: _split_summary(dataset, name) for name in SPLITS}
    totals = {
        name: sum(split["classes"][name] for split in splits.values())
        for name in dataset.class_names
    }
    return {
        "source": info["source"],
        "split": info["split"],
        "lead": info.get("lead"),
        "class_names": list(dataset.class_names),
        "splits": splits,
        "total": {
            "beats": sum(totals.values()),
            "classes": totals,
            "records": sorted({r for split in splits.values() for r in split["records"]}),
        },
        "dropped_beats": info["dropped_beats"],
        "skipped_records": info.get("skipped_records", {}),
        "lead_substitutions": info.get("lead_substitutions", {}),
        "from_cache": info["from_cache"],
        "build_seconds": round(info["build_seconds"], 3),
        "seconds": round(seconds, 3),
        "cache_file": info["cache_file"],
    }


def _split_summary(dataset: Dataset, name: str) -> dict[str, Any]:
    beats = getattr(dataset, name)
    counts = beats.class_counts(dataset.n_classes)
    return {
        "beats": len(beats),
        "classes": dict(zip(dataset.class_names, counts.tolist(), strict=True)),
        "records": dataset.info["records"][name],
    }
