"""The MIT-BIH files on disk: SHA-256 verification and download from PhysioNet.

Every ``.hea``/``.dat``/``.atr`` file of a record is checked against the digest PhysioNet
publishes for mitdb 1.0.0 (``mitdb_sha256.txt`` beside this module), so a tampered or
truncated file is never read. Missing files are downloaded into a temporary file in the
target folder, hashed while they stream, and moved into place with :func:`os.replace` only when
the digest matches: a failed, partial or corrupted download leaves nothing behind. Each file
has a deadline (:data:`DOWNLOAD_DEADLINE_SECONDS`), so a server that trickles bytes cannot keep
``hypertune.py data`` waiting for ever.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path
from time import monotonic
from typing import BinaryIO

from rich.progress import Progress, TaskID

from ecgtune.data.files import atomic_write
from ecgtune.errors import DataError
from ecgtune.mitdb import published_digests

RECORD_SUFFIXES = (".hea", ".dat", ".atr")
CHUNK_BYTES = 1 << 16
DOWNLOAD_READ_TIMEOUT_SECONDS = 60.0
"""Longest wait for the connection or for the next bytes of a file."""
DOWNLOAD_DEADLINE_SECONDS = 300.0
"""Longest download of one file (the largest, 1.9 MB, takes seconds on a slow line)."""


def record_file_names(record: str) -> list[str]:
    """The header, signal and annotation files of one record."""
    return [record + suffix for suffix in RECORD_SUFFIXES]


def sha256_of(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def verify_file(path: Path) -> str:
    """Check a local file against PhysioNet's digest; return the digest."""
    expected = published_digests()[path.name]
    actual = sha256_of(path)
    if actual != expected:
        raise DataError(
            f"{path}: corrupt file, SHA-256 {actual} does not match PhysioNet's {expected} "
            f"(mitdb 1.0.0); delete it and run again to download a fresh copy"
        )
    return actual


def ensure_records(
    raw_dir: Path,
    base_url: str,
    records: list[str],
    progress: Progress,
    deadline_seconds: float = DOWNLOAD_DEADLINE_SECONDS,
) -> dict[str, str]:
    """Verify the records' files in ``raw_dir``, downloading the missing ones first.

    Local files are verified before anything is downloaded, so a corrupt file is reported
    without network traffic. Each download must finish within ``deadline_seconds``. Returns
    file name -> SHA-256 of every file of ``records``.
    """
    names = [name for record in records for name in record_file_names(record)]
    missing = [name for name in names if not (raw_dir / name).is_file()]
    digests = {name: verify_file(raw_dir / name) for name in names if name not in missing}
    if missing:
        with progress:
            task = progress.add_task("download", total=None)
            for number, name in enumerate(missing, start=1):
                progress.update(task, description=f"download {name} ({number}/{len(missing)})")
                url = base_url.rstrip("/") + "/" + name
                expected = published_digests()[name]
                download_file(url, raw_dir / name, expected, progress, task, deadline_seconds)
                digests[name] = expected
    return digests


def download_file(
    url: str,
    target: Path,
    expected: str,
    progress: Progress,
    task: TaskID,
    deadline_seconds: float = DOWNLOAD_DEADLINE_SECONDS,
) -> None:
    """Stream ``url`` into ``target`` atomically, refusing content whose digest is not
    ``expected`` and a transfer still running after ``deadline_seconds``."""
    with atomic_write(target, folder_key="data.raw_dir") as stream:
        actual = _stream_into(url, stream, progress, task, deadline_seconds)
        if actual != expected:
            raise DataError(
                f"download failed: {url}: SHA-256 {actual} does not match "
                f"PhysioNet's {expected} (mitdb 1.0.0); nothing was saved to {target}"
            )


def _stream_into(
    url: str, stream: BinaryIO, progress: Progress, task: TaskID, deadline_seconds: float
) -> str:
    """Copy the body of ``url`` into ``stream``; return its SHA-256.

    ``read1`` returns whatever has arrived, so the deadline is checked after every read, and
    one read waits at most :data:`DOWNLOAD_READ_TIMEOUT_SECONDS` (never longer than the deadline
    itself): whether the server trickles bytes or stalls, the download ends at most one read
    timeout after its deadline.
    """
    deadline = monotonic() + deadline_seconds
    digest, received = hashlib.sha256(), 0
    read_timeout = min(DOWNLOAD_READ_TIMEOUT_SECONDS, deadline_seconds)
    try:
        with urllib.request.urlopen(url, timeout=read_timeout) as response:
            length = response.headers.get("Content-Length")
            progress.reset(task, total=int(length) if length else None)
            while chunk := response.read1(CHUNK_BYTES):
                digest.update(chunk)
                stream.write(chunk)
                received += len(chunk)
                progress.advance(task, len(chunk))
                if monotonic() > deadline:
                    raise _too_slow(url, deadline_seconds, received)
    except urllib.error.HTTPError as exc:
        raise DataError(f"download failed: {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        if isinstance(exc, TimeoutError) and monotonic() > deadline:
            raise _too_slow(url, deadline_seconds, received) from None
        reason = getattr(exc, "reason", exc)
        raise DataError(f"download failed: {url}: {reason}") from None
    return digest.hexdigest()


def _too_slow(url: str, deadline_seconds: float, received: int) -> DataError:
    return DataError(
        f"download failed: {url}: not complete after the {deadline_seconds:g} s deadline "
        f"({received:,} bytes received); try again later or set data.base_url to a faster mirror"
    )
