"""Byte-identical copies whose licenses disagree: every copy is refused, since no one copy's license can be trusted.

Copies that agree are handled in the main loop (the first in catalog order is kept, later ones are `duplicate`);
this pass runs before it, because by the time the second copy of a conflicting pair is decoded the first may
already be in a shard. Only files of equal size can be equal, so it hashes just those (`partition` puts equal sizes
on one rank, so a rank needs no other rank's files).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from data_prep.audio import RejectError
from data_prep.catalog import Track, printable


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def license_conflicts(tracks: list[Track], license_of: Callable[[Track], str]) -> dict[str, str]:
    """`rel` -> reject detail for every copy in a group of byte-identical files that carry different licenses.

    Args:
        tracks: this rank's tracks.
        license_of: a track's license as prep would record it; raises `RejectError` for a track refused anyway
            (no license, say), which then takes no part in the comparison.
    """
    by_size: dict[int, list[Track]] = defaultdict(list)
    for track in tracks:
        if track.problem is None and track.size > 0:
            by_size[track.size].append(track)
    conflicts: dict[str, str] = {}
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        by_hash: dict[str, list[Track]] = defaultdict(list)
        for track in same_size:
            try:
                by_hash[sha256_of(track.path)].append(track)
            except OSError:
                continue  # refused as unreadable when its turn comes
        for copies in by_hash.values():
            licenses = {}
            for track in copies:
                try:
                    licenses[track.rel] = license_of(track)
                except RejectError:
                    continue
            if len({lic.lower() for lic in licenses.values()}) > 1:
                listed = ", ".join(f"{printable(rel)} ({lic})" for rel, lic in sorted(licenses.items()))
                conflicts.update({rel: f"same bytes, different licenses: {listed}" for rel in licenses})
    return conflicts
