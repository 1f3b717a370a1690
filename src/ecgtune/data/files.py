"""Atomic file writes: a file appears complete or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ecgtune.errors import DataError


def _new_file_mode() -> int:
    """The mode ``open()`` would give a new file (0o666 less the umask); mkstemp uses 0o600."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


NEW_FILE_MODE = _new_file_mode()


def writable_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be written (the system's reason), or None: it is created if
    missing, and a scratch file is written in it and deleted."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


@contextmanager
def atomic_write(target: Path, folder_key: str | None = None) -> Iterator[BinaryIO]:
    """A binary stream to a temporary file beside ``target``, moved onto ``target`` with
    :func:`os.replace` when the block ends normally and deleted when it raises, so a failed
    or interrupted write never leaves a half-written ``target`` (nor the temporary file).

    A folder that cannot be created or written to is a :class:`DataError` naming it (and the
    config key ``folder_key`` that chose it, when given) instead of an ``OSError`` traceback.
    """
    handle, partial = _create_partial(target, folder_key)
    try:
        os.chmod(partial, NEW_FILE_MODE)
        with os.fdopen(handle, "wb") as stream:
            yield stream
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _create_partial(target: Path, folder_key: str | None) -> tuple[int, Path]:
    """Open a new temporary file in ``target``'s folder (created if missing)."""
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".part")
    except OSError as exc:
        named = f"{folder_key} = {folder}" if folder_key else str(folder)
        raise DataError(
            f"cannot write to {named}: {exc.strerror or exc}; choose a folder you can write to"
        ) from None
    return handle, Path(name)
