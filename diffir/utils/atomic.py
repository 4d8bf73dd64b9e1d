"""Atomic file writes: a reader sees the old file or the complete new one, never a partial write.

The content goes to a uniquely named temporary file next to the target (same file system), which is
then moved over the target with ``os.replace``; on any error the temporary file is removed. Files
get the usual permissions (umask), unlike ``tempfile.mkstemp``'s 0600.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


@contextmanager
def replacing(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path to write in the ``with`` block; it replaces ``path`` when the block succeeds.

    ``suffix`` ends the temporary name (writers that pick the format from it need the real one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # hidden (and by default ending in .tmp): folder scans for *.pth or *.state never pick it up,
    # and image folder scans skip hidden files
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with replacing(path) as tmp:
        with open(tmp, "xb") as f:
            f.write(data)


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically (streamed to the temporary file, no copy in memory)."""
    with replacing(path) as tmp:
        torch.save(obj, tmp)
