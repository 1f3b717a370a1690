"""Atomic file writes: a file appears complete or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def _new_file_mode() -> int:
    """The mode ``open()`` would give a new file (0o666 less the umask); mkstemp uses 0o600."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


NEW_FILE_MODE = _new_file_mode()


@contextmanager
def atomic_write(target: Path) -> Iterator[BinaryIO]:
    """A binary stream to a temporary file beside ``target``, moved onto ``target`` with
    :func:`os.replace` when the block ends normally and deleted when it raises, so a failed
    or interrupted write never leaves a half-written ``target`` (nor the temporary file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    partial = Path(name)
    try:
        os.chmod(partial, NEW_FILE_MODE)
        with os.fdopen(handle, "wb") as stream:
            yield stream
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
