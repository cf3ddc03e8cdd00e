"""The one atomic file write: a reader never sees a torn file, and a kill at any point leaves the old file intact.

    atomic_write(path, lambda f: torch.save(obj, f))

Steps: write a temporary file in the same folder (a name unique per process and call: parallel array tasks writing
the same file must not rename each other's temporary away), flush and fsync it, rename it over the target (atomic
on POSIX within one filesystem), then fsync the folder so the rename itself survives a power loss. On an exception
the temporary file is removed. Prep (manifests, stats, configs), checkpoints, exports and the MBD file all write
through it; it lives in `data_prep`, the lower layer, because `data_prep` must not import `finetune`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_text", "fsync_dir"]


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder, so that a rename or a new file in it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Write `path` atomically: `write(f)` fills a temporary binary file, which then replaces `path`.

    Args:
        path: the target; its folder is created if missing.
        write: called once with the open temporary file (e.g. `lambda f: torch.save(obj, f)`).

    Returns:
        `path` as a `Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only still there when something failed before the rename
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))
