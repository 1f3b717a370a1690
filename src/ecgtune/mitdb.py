"""Facts about the MIT-BIH Arrhythmia Database (mitdb 1.0.0) that need no download.

A leaf module (it imports nothing from ecgtune), so the config schema can check record names
and leads before any work starts, and the data layer can share the same lists. The record
names come from ``data/mitdb_sha256.txt``, the SHA-256 list PhysioNet publishes for the
database: one ``<digest>  <file name>`` line per file, ``.hea``/``.dat``/``.atr`` for each of
the 48 records.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

DIGESTS_FILE = Path(__file__).parent / "data" / "mitdb_sha256.txt"
MITDB_LEADS = ("MLII", "V1", "V2", "V4", "V5")
"""Every lead name found in the records' headers (most records: MLII plus V1, V2, V4 or V5)."""


@cache
def published_digests() -> dict[str, str]:
    """File name -> SHA-256 (hex) as published by PhysioNet for mitdb 1.0.0."""
    digests = {}
    for line in DIGESTS_FILE.read_text(encoding="ascii").splitlines():
        if line.strip():
            digest, name = line.split()
            digests[name] = digest
    return digests


def mitdb_record_names() -> tuple[str, ...]:
    """The 48 record names of the database, sorted."""
    return tuple(sorted(name[:-4] for name in published_digests() if name.endswith(".hea")))
