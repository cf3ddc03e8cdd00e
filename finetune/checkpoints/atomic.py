"""Atomic checkpoint writes for Lightning: a killed job never leaves a torn `.ckpt` behind.

Lightning's default `TorchCheckpointIO` truncates and rewrites the target file in place; this one saves through
`data_prep.atomic.atomic_write` (temporary file, fsync, rename, fsync of the folder), so the old checkpoint stays
valid until the new one is complete. Loading is `weights_only=True`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from data_prep.atomic import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` with atomic saves and `weights_only=True` loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        """Save `checkpoint` to `path` atomically, so the previous file stays valid until the new one is complete."""
        atomic_write(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None):
        """Load `path` onto `map_location` (default: CPU), always with `weights_only=True`, whatever the caller asks."""
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
