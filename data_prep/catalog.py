"""What goes in: a folder tree of audio with optional sidecar `.json`, or a CSV/JSONL catalog with a `path` column.

Metadata follows audiocraft's `MusicInfo`: the sidecar (or the catalog row) gives description, title, artist, genre,
bpm, key, moods, instrument, keywords and license; embedded tags fill title, artist and genre where those are empty.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_prep.audio import RejectError
from data_prep.schema import INFO_FIELDS, sanitize_key

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".aif", ".aiff", ".opus"}


@dataclass(frozen=True)
class Track:
    """One catalog entry before decoding. `rel` is its stable name: the path relative to the catalog root.

    On Linux a file name is bytes; one that is not valid UTF-8 arrives here with surrogate escapes (`os.fsdecode`),
    so `rel` names it losslessly; `path_fields` writes it into manifest and rejects.
    """

    path: Path
    rel: str
    size: int
    row: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    """Fields from a CSV/JSONL catalog row (empty for a folder scan)."""
    problem: tuple[str, str] | None = field(default=None, compare=False)
    """(reject reason, detail) found while scanning: nothing to decode (a broken link, a FIFO, a bad catalog row)."""

    @property
    def key(self) -> str:
        """The track's webdataset key: `rel` made safe by `sanitize_key`."""
        return sanitize_key(self.rel)


def path_fields(rel: str) -> dict[str, str]:
    """A track's name as manifest and rejects rows hold it; `row_rel` reads it back.

    `path` is readable; a name that is not UTF-8 also gets `path_bytes`, its bytes in hex, so it is kept losslessly.
    """
    raw = os.fsencode(rel)
    try:
        return {"path": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"path": raw.decode("utf-8", "replace"), "path_bytes": raw.hex()}


def row_rel(row: dict[str, Any]) -> str:
    """The `Track.rel` a manifest or reject row was written for (the inverse of `path_fields`)."""
    return os.fsdecode(bytes.fromhex(row["path_bytes"])) if "path_bytes" in row else row["path"]


def printable(text: str) -> str:
    """`text` with the surrogate escapes of undecodable file names replaced, so that it can be written as UTF-8."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _inspect(path: Path) -> tuple[int, tuple[str, str] | None]:
    """(size in bytes, problem) of an input path: only a readable regular file (or a link to one) has no problem."""
    try:
        info = path.stat()
    except OSError as e:
        if path.is_symlink():
            target = printable(os.readlink(path))
            why = "a link loop" if e.errno == errno.ELOOP else e.strerror
            return -1, ("broken_link", f"symlink to {target}: {why}")
        if e.errno == errno.ENOENT:
            return -1, ("missing", "the file does not exist")
        return -1, ("unreadable", e.strerror or str(e))
    if stat.S_ISDIR(info.st_mode):
        return -1, ("not_a_file", "a folder")
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode) else "a device"
        return -1, ("not_a_file", f"{kind}, not a regular file")
    if not os.access(path, os.R_OK):
        return info.st_size, ("unreadable", "permission denied")
    return info.st_size, None


def scan(input_path: Path) -> list[Track]:
    """All tracks of a folder tree or catalog file, sorted by `rel` so every rank and every rerun sees one order.

    Every audio-named path becomes a Track, also those that cannot be decoded (they carry their `problem`), and so
    does every folder that cannot be read, so each ends up in the manifest or in the rejects.
    """
    if input_path.is_dir():
        tracks = _scan_folder(input_path)
    elif input_path.suffix.lower() in (".csv", ".jsonl"):
        tracks = _read_catalog_file(input_path)
    else:
        raise ValueError(f"--input must be a directory or a .csv/.jsonl catalog, got {input_path}")
    return sorted(tracks, key=lambda t: t.rel)


def _scan_folder(root: Path) -> list[Track]:
    tracks: list[Track] = []

    def unreadable_folder(error: OSError) -> None:
        folder = Path(error.filename)
        if folder == root:
            raise ValueError(f"--input {root} cannot be read: {error.strerror}")
        rel = folder.relative_to(root).as_posix() + "/"
        tracks.append(Track(folder, rel, -1, problem=("unreadable", f"a folder that cannot be listed "
                                                                      f"({error.strerror}): its files were not seen")))

    # Links to folders are followed (a catalog may link albums in); one that leads back to a folder above it would
    # loop forever, so it becomes a reject instead.
    for folder, dirs, files in os.walk(root, onerror=unreadable_folder, followlinks=True):
        here = Path(folder)
        for name in list(dirs):
            if (here / name).is_symlink() and here.resolve().is_relative_to((here / name).resolve()):
                dirs.remove(name)
                rel = (here / name).relative_to(root).as_posix() + "/"
                tracks.append(Track(here / name, rel, -1, problem=("broken_link", "a link to a folder already "
                                                                   "being scanned (a loop): not scanned again")))
        for name in files:
            path = here / name
            if path.suffix.lower() not in AUDIO_SUFFIXES:
                continue
            size, problem = _inspect(path)
            tracks.append(Track(path, path.relative_to(root).as_posix(), size, problem=problem))
    return tracks


def _catalog_rows(catalog: Path) -> list[tuple[int, Any]]:
    """(line number, parsed row) of a catalog file; a line that does not parse gives its error as the row."""
    if catalog.suffix.lower() == ".csv":
        with open(catalog, newline="", encoding="utf-8") as f:
            return [(i + 2, row) for i, row in enumerate(csv.DictReader(f))]  # line 1 is the header
    rows: list[tuple[int, Any]] = []
    with open(catalog, encoding="utf-8", errors="surrogateescape") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append((number, json.loads(line)))
                except json.JSONDecodeError as e:
                    rows.append((number, e))
    return rows


def _read_catalog_file(catalog: Path) -> list[Track]:
    try:
        rows = _catalog_rows(catalog)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"--input {catalog} cannot be read as a catalog: {e}") from e
    tracks = []
    for number, row in rows:
        where = f"{catalog.name}:{number}"
        if isinstance(row, Exception) or not isinstance(row, dict) or not isinstance(row.get("path"), str) \
                or not row["path"].strip():
            why = (f"not JSON ({printable(str(row))})" if isinstance(row, Exception)
                   else f"a {type(row).__name__}, not an object" if not isinstance(row, dict)
                   else "no 'path'" if not row.get("path") else f"'path' is a {type(row['path']).__name__}")
            tracks.append(Track(catalog, where, -1, problem=("bad_catalog_row", f"line {number}: {why}")))
            continue
        path = Path(row["path"])
        path = path if path.is_absolute() else catalog.parent / path
        size, problem = _inspect(path)
        extra = {k: v for k, v in row.items() if k != "path" and v not in (None, "")}
        tracks.append(Track(path, row["path"], size, extra, problem=problem))
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
        raise RejectError("bad_sidecar", f"{printable(sidecar.name)}: {e}") from e
    except OSError as e:
        raise RejectError("bad_sidecar", f"{printable(sidecar.name)} cannot be read: {e.strerror}") from e
    if not isinstance(data, dict):
        raise RejectError("bad_sidecar", f"{printable(sidecar.name)} holds a {type(data).__name__}, not an object")
    return data


TEXT_FIELDS = ("description", "title", "artist", "genre", "key", "instrument")
"""Metadata fields that hold one string."""
LIST_FIELDS = ("moods", "keywords")
"""Fields that hold a list of strings, or one string of comma- or space-separated words (audiocraft splits it)."""


def _type_problem(name: str, value: Any) -> str | None:
    """Why `value` is not a valid `name` field, or None. Strings from a CSV row or the tags always pass."""
    if name in TEXT_FIELDS and not isinstance(value, str):
        return f"expected a string, got {type(value).__name__} {value!r}"
    if name in LIST_FIELDS and not (isinstance(value, str) or (isinstance(value, list)
                                                                and all(isinstance(v, str) for v in value))):
        return f"expected a string or a list of strings, got {value!r}"
    if name == "bpm":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            return f"expected a number, got {type(value).__name__} {value!r}"
        if isinstance(value, str) and _bpm(value) is None:
            return f"expected a number, got {value!r}"
    return None


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
        bpm = float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return bpm if bpm is None or math.isfinite(bpm) else None


def _musical_key(value: Any) -> str | None:
    """Lowercase; None when empty, "None" or ambiguous (a comma lists several keys), as in audiocraft."""
    text = _clean_str(value)
    if text is None or text.lower() == "none" or "," in text:
        return None
    return text.lower()


def normalize_info(raw: dict[str, Any]) -> dict[str, Any]:
    """audiocraft `MusicInfo` preprocessing of the metadata fields (whose types `describe` has checked)."""
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
    notes: list[str] = field(default_factory=list)
    """Fields dropped because their type was wrong, one note each (the manifest row's `notes`)."""
    estimates: dict[str, Any] = field(default_factory=dict)
    """What `--auto-tags` estimated from the audio (`data_prep.tags`), whether or not it filled a field."""


def describe(
    track: Track,
    sidecar: dict[str, Any],
    tags: dict[str, str],
    *,
    default_license: str | None,
    allowed_licenses: list[str] | None,
) -> TrackInfo:
    """Merge sidecar, catalog row and embedded tags; refuse a track without a usable license.

    A license that is missing, not allowed, or not a string refuses the track; any other field of the wrong type is
    dropped with a note (`TrackInfo.notes`), never coerced.
    """
    merged: dict[str, Any] = {}
    sources, notes = [], []
    for name, source in (("tags", tags), ("catalog", track.row), ("sidecar", sidecar)):
        # Later sources win, but an empty value never overwrites a filled one: tags fill what sidecars leave empty.
        filled = {}
        for key, value in source.items():
            if value in (None, "", []):
                continue
            if key == "license" and not isinstance(value, str):
                raise RejectError("bad_license", f"the {name}'s license is a {type(value).__name__} ({value!r}), "
                                                 "not a license name")
            problem = _type_problem(key, value)
            if problem:
                notes.append(f"dropped {name} field {key} ({problem})")
                continue
            filled[key] = value
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
        notes=notes,
    )
