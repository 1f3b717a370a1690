"""The MIT-BIH files on disk: SHA-256 verification and download from PhysioNet.

Every ``.hea``/``.dat``/``.atr`` file of a record is checked against the digest PhysioNet
publishes for mitdb 1.0.0 (``mitdb_sha256.txt`` beside this module), so a tampered or
truncated file is never read. Missing files are downloaded into a temporary file in the
target folder, hashed while they stream, and moved into place with :func:`os.replace` only when
the digest matches: a failed, partial or corrupted download leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from functools import cache
from pathlib import Path

from rich.progress import Progress, TaskID

from ecgtune.data.files import atomic_write
from ecgtune.errors import DataError

DIGESTS_FILE = Path(__file__).with_name("mitdb_sha256.txt")
RECORD_SUFFIXES = (".hea", ".dat", ".atr")
CHUNK_BYTES = 1 << 16
DOWNLOAD_TIMEOUT_SECONDS = 60.0


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
    raw_dir: Path, base_url: str, records: list[str], progress: Progress
) -> dict[str, str]:
    """Verify the records' files in ``raw_dir``, downloading the missing ones first.

    Local files are verified before anything is downloaded, so a corrupt file is reported
    without network traffic. Returns file name -> SHA-256 of every file of ``records``.
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
                download_file(url, raw_dir / name, published_digests()[name], progress, task)
                digests[name] = published_digests()[name]
    return digests


def download_file(url: str, target: Path, expected: str, progress: Progress, task: TaskID) -> None:
    """Stream ``url`` into ``target`` atomically, refusing content whose digest is not
    ``expected``."""
    with atomic_write(target) as stream:
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:
                length = response.headers.get("Content-Length")
                progress.reset(task, total=int(length) if length else None)
                while chunk := response.read(CHUNK_BYTES):
                    digest.update(chunk)
                    stream.write(chunk)
                    progress.advance(task, len(chunk))
        except urllib.error.HTTPError as exc:
            raise DataError(f"download failed: {url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DataError(f"download failed: {url}: {reason}") from None
        if digest.hexdigest() != expected:
            raise DataError(
                f"download failed: {url}: SHA-256 {digest.hexdigest()} does not match "
                f"PhysioNet's {expected} (mitdb 1.0.0); nothing was saved to {target}"
            )
