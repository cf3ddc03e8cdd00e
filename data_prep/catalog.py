"""What goes in: a folder tree of audio with optional sidecar `.json`, or a CSV/JSONL catalog with a `path` column.

Metadata follows audiocraft's `MusicInfo`: the sidecar (or the catalog row) gives description, title, artist, genre,
bpm, key, moods, instrument, keywords and license; embedded tags fill title, artist and genre where those are empty.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_prep.audio import RejectError
from data_prep.schema import INFO_FIELDS, sanitize_key

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".aif", ".aiff", ".opus"}


@dataclass(frozen=True)
class Track:
    """One catalog entry before decoding. `rel` is its stable name: the path relative to the catalog root."""

    path: Path
    rel: str
    size: int
    row: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    """Fields from a CSV/JSONL catalog row (empty for a folder scan)."""

    @property
    def key(self) -> str:
        """The track's webdataset key: `rel` made safe by `sanitize_key`."""
        return sanitize_key(self.rel)


def scan(input_path: Path) -> list[Track]:
    """All tracks of a folder tree or catalog file, sorted by `rel` so every rank and every rerun sees one order."""
    if input_path.is_dir():
        tracks = [
            Track(p, p.relative_to(input_path).as_posix(), p.stat().st_size)
            for p in input_path.rglob("*")
            if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
        ]
    elif input_path.suffix.lower() in (".csv", ".jsonl"):
        tracks = _read_catalog_file(input_path)
    else:
        raise ValueError(f"--input must be a directory or a .csv/.jsonl catalog, got {input_path}")
    return sorted(tracks, key=lambda t: t.rel)


def _read_catalog_file(catalog: Path) -> list[Track]:
    if catalog.suffix.lower() == ".csv":
        with open(catalog, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        with open(catalog, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    tracks = []
    for i, row in enumerate(rows):
        if not row.get("path"):
            raise ValueError(f"{catalog}: row {i + 1} has no 'path' column")
        path = Path(row["path"])
        path = path if path.is_absolute() else catalog.parent / path
        size = path.stat().st_size if path.exists() else -1
        extra = {k: v for k, v in row.items() if k != "path" and v not in (None, "")}
        tracks.append(Track(path, str(row["path"]), size, extra))
    return tracks


def partition(tracks: list[Track], rank: int, world_size: int) -> list[Track]:
    """This rank's share of the catalog.

    Tracks are assigned by a hash of their byte size, not their name: byte-identical duplicates then always land on
    the same rank, so duplicate detection needs no communication and the union of ranks equals a one-rank run.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    if world_size == 1:
        return tracks
    return [t for t in tracks if int(hashlib.sha1(str(t.size).encode()).hexdigest(), 16) % world_size == rank]


def read_sidecar(track: Track) -> dict[str, Any]:
    """The sidecar `.json` next to a file (audiocraft's `Path(audio).with_suffix('.json')`), or {} when absent."""
    sidecar = track.path.with_suffix(".json")
    if not sidecar.is_file():
        return {}
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RejectError("bad_sidecar", f"{sidecar.name}: {e}") from e
    if not isinstance(data, dict):
        raise RejectError("bad_sidecar", f"{sidecar.name} holds a {type(data).__name__}, not an object")
    return data


def _clean_str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _keyword_list(value: Any) -> list[str] | None:
    """audiocraft splits keyword strings on commas and whitespace and lowercases them."""
    if value is None:
        return None
    items = value if isinstance(value, list) else re.split(r"[,\s]+", str(value))
    words = [str(v).strip().lower() for v in items if str(v).strip()]
    return words or None


def _bpm(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _musical_key(value: Any) -> str | None:
    """Lowercase; None when empty, "None" or ambiguous (a comma lists several keys), as in audiocraft."""
    text = _clean_str(value)
    if text is None or text.lower() == "none" or "," in text:
        return None
    return text.lower()


def normalize_info(raw: dict[str, Any]) -> dict[str, Any]:
    """audiocraft `MusicInfo` preprocessing of the metadata fields."""
    lower = lambda v: s.lower() if (s := _clean_str(v)) else None  # noqa: E731
    info = {
        "title": _clean_str(raw.get("title")),
        "artist": _clean_str(raw.get("artist")),
        "genre": lower(raw.get("genre")),
        "bpm": _bpm(raw.get("bpm")),
        "key": _musical_key(raw.get("key")),
        "moods": _keyword_list(raw.get("moods")),
        "instrument": lower(raw.get("instrument")),
        "keywords": _keyword_list(raw.get("keywords")),
    }
    assert tuple(info) == INFO_FIELDS
    return info


@dataclass
class TrackInfo:
    """Caption, metadata and license of a track, merged from its sources in order of precedence."""

    caption: str | None
    metadata: dict[str, Any]
    license: str
    metadata_sources: list[str]


def describe(
    track: Track,
    sidecar: dict[str, Any],
    tags: dict[str, str],
    *,
    default_license: str | None,
    allowed_licenses: list[str] | None,
) -> TrackInfo:
    """Merge sidecar, catalog row and embedded tags; refuse a track with no license or a disallowed one."""
    merged: dict[str, Any] = {}
    sources = []
    for name, source in (("tags", tags), ("catalog", track.row), ("sidecar", sidecar)):
        # Later sources win, but an empty value never overwrites a filled one: tags fill what sidecars leave empty.
        filled = {k: v for k, v in source.items() if v not in (None, "", [])}
        if filled:
            sources.append(name)
        merged.update(filled)
    license_ = _clean_str(merged.get("license")) or _clean_str(default_license)
    if license_ is None:
        raise RejectError("no_license", "set one in the sidecar or catalog, or pass --license")
    if allowed_licenses and license_.lower() not in {a.lower() for a in allowed_licenses}:
        raise RejectError("license_not_allowed", f"{license_!r} not in {allowed_licenses}")
    return TrackInfo(
        caption=_clean_str(merged.get("description")),
        metadata=normalize_info(merged),
        license=license_,
        metadata_sources=sources,
    )
