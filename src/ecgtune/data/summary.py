"""What a built dataset holds, as a plain mapping: beats per class per split, records, what was
left out and why, and the timing (``hypertune.py data`` prints it as a table or JSON)."""

from __future__ import annotations

from typing import Any

from ecgtune.data.dataset import Dataset

SPLITS = ("train", "valid", "test")


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
        "leads": info.get("leads"),
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
