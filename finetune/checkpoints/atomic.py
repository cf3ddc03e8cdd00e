"""Atomic checkpoint writes for Lightning: a killed job never leaves a torn `.ckpt` behind.

Lightning's default `TorchCheckpointIO` truncates and rewrites the target file in place; this one saves through
`data_prep.atomic.atomic_write` (temporary file, fsync, rename, fsync of the folder), so the old checkpoint stays
valid until the new one is complete. Loading is `weights_only=True`. Distributed checkpoints (folders, written by the
FSDP2 trainer) are swapped in by `replace_with` and read whole by `load_checkpoint`, so a run can move between a
sharded and a single-device trainer through `last.ckpt`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from data_prep.atomic import atomic_write, fsync_dir


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def replace_with(new: Path, path: Path) -> None:
    """Put the finished `new` (file or folder) at `path`, whatever `path` is now (file, folder or nothing).

    A file replaces a file in one atomic rename. Otherwise the old entry is first renamed to `path.old`, the new one
    renamed into place, then the old one removed: a kill in between leaves `path.old`, a whole checkpoint, beside.
    """
    if new.is_file() and (path.is_file() or not path.exists()):
        os.replace(new, path)
    else:
        old = path.with_name(path.name + ".old")
        _remove(old)
        if path.exists():
            os.rename(path, old)
        os.rename(new, path)
        _remove(old)
    fsync_dir(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` with atomic saves and `weights_only=True` loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        """Save `checkpoint` to `path` atomically, so the previous file stays valid until the new one is complete."""
        path = Path(path)
        if path.is_dir():  # a sharded run's checkpoint folder, resumed on one device: swap the folder for a file
            new = atomic_write(path.with_name(path.name + ".new"), lambda f: torch.save(checkpoint, f))
            replace_with(new, path)
            return
        atomic_write(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None):
        """Load `path` onto `map_location` (default: CPU), always with `weights_only=True`, whatever the caller asks.

        A distributed checkpoint folder (a sharded run's) is read whole, so a single device can resume from it.
        """
        from finetune.checkpoints.distributed import is_distributed_checkpoint, read_distributed_checkpoint

        if is_distributed_checkpoint(path):
            return read_distributed_checkpoint(path)
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
