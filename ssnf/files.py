"""Writing files so that no reader ever sees half of one and no crash leaves one behind."""

from __future__ import annotations

import errno
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write to; it replaces ``path`` when the block ends without an error
    and is removed when it raises (a rename within one folder is atomic). The file's bytes reach the disk
    before the rename and the rename before the block returns (``fsync`` of the file, then of the folder), so
    that a power cut leaves the old file or the new one, not an empty one under the new name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
    try:
        yield tmp
        _fsync(tmp, os.O_RDWR)
        os.replace(tmp, path)
        _fsync(path.parent, getattr(os, "O_DIRECTORY", None))
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync(path: Path, flags: int | None) -> None:
    """``fsync`` what ``path`` names, where the OS and the file system allow it (Windows cannot open a folder)."""
    if flags is None:
        return
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # a file system that cannot: nothing to wait for
            raise
    finally:
        os.close(fd)
