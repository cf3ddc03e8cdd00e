"""A deterministic train/validation split of a catalog, with no artist (album, track) on both sides.

audiocraft's manifests carry `artist` "to ensure no overlap between splits", but nothing enforces it: a model
validated on other recordings of its training artists looks better than it is. Here the catalog is split by group
before anything is decoded: every track gets a group key (its artist, its artist's album, or itself), groups are
taken into validation in the order of a hash of their key while that brings the validation share closer to the
asked fraction, and a track's segments all follow it. The same catalog and settings give the same split on every
rank of an array job, with no communication.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

from data_prep.catalog import Track, read_sidecar

SplitBy = Literal["artist", "album", "track"]
SPLITS = ("train", "val")


def group_key(track: Track, metadata: dict[str, Any] | None, split_by: SplitBy) -> str:
    """The group a track is split with: `artist:NAME`, `album:ARTIST/ALBUM`, or `track:REL`.

    Names compare case-insensitively with surrounding spaces removed. A track without the field (no artist, no
    album) is its own group: it cannot overlap anything it is not known to share.

    Args:
        track: The catalog entry.
        metadata: Its merged metadata (`catalog.describe`), or None when it has none (a problem found while scanning,
            no usable license): it is rejected later, on whichever side it falls.
        split_by: What must not appear on both sides.
    """
    fold = lambda v: v.strip().casefold() if isinstance(v, str) and v.strip() else None  # noqa: E731
    artist = fold((metadata or {}).get("artist"))
    if split_by == "artist" and artist:
        return f"artist:{artist}"
    if split_by == "album" and artist:
        # The album is not one of audiocraft's metadata fields: read from the sidecar or catalog row as given.
        album = fold({**read_sidecar(track), **track.row}.get("album")) if track.problem is None else None
        if album:
            return f"album:{artist}/{album}"
    return f"track:{track.rel}"


def validation_tracks(groups: dict[str, str], fraction: float) -> set[str]:
    """The tracks (by `rel`) of the validation side: whole groups, as close to `fraction` of the tracks as they allow.

    Groups are visited in the order of a SHA-256 of their key (stable across runs, machines and Python versions)
    and each one is taken when that brings the validation count closer to `fraction * len(groups)`. Split by track
    (groups of one), the count is that target rounded.

    Args:
        groups: Track `rel` -> group key (`group_key`).
        fraction: The share of tracks to validate on, in (0, 1).

    Raises:
        ValueError: If the fraction is outside (0, 1) or leaves one side empty.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"--val-fraction must be between 0 and 1 (exclusive), got {fraction}")
    sizes = Counter(groups.values())
    target = fraction * len(groups)
    taken: set[str] = set()
    count = 0
    for key in sorted(sizes, key=lambda k: hashlib.sha256(k.encode("utf-8", "surrogateescape")).hexdigest()):
        if abs(count + sizes[key] - target) < abs(count - target):
            taken.add(key)
            count += sizes[key]
    if count == 0 or count == len(groups):
        side = "validation" if count == 0 else "training"
        raise ValueError(f"--val-fraction {fraction} of {len(groups)} tracks in {len(sizes)} groups leaves the "
                         f"{side} side empty: use another fraction or --split-by track")
    return {rel for rel, key in groups.items() if key in taken}


def split_catalog(tracks: list[Track], fraction: float, split_by: SplitBy,
                  metadata_of: Callable[[Track], dict[str, Any] | None]) -> dict[str, list[Track]]:
    """`{"train": [...], "val": [...]}`: the catalog's tracks in scan order, each on one side with its group."""
    groups = {t.rel: group_key(t, metadata_of(t), split_by) for t in tracks}
    val = validation_tracks(groups, fraction)
    return {"train": [t for t in tracks if t.rel not in val], "val": [t for t in tracks if t.rel in val]}
