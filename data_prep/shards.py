"""Crash-safe output: shard tars written under a temporary name, and a per-rank journal of what is committed.

The unit of commit is a shard. A track's samples never span two shards, and a shard counts as written only once its
tar has been renamed into place *and* its journal line (with the manifest rows of its tracks) has been appended.
Rejects are journaled as they happen. On restart the journal says which tracks are done; tars the journal does not
name (a kill between rename and journal append) and leftover `.tmp` files are removed, and their tracks are redone.
Shard boundaries depend only on the track order, so a resumed run writes exactly the shards of an uninterrupted one.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.atomic import fsync_dir
from data_prep.catalog import row_rel


def journal_path(out_dir: Path, rank: int) -> Path:
    """This rank's journal file in `out_dir`: `journal.rRRRR.jsonl`."""
    return out_dir / f"journal.r{rank:04d}.jsonl"


def shard_name(rank: int, index: int) -> str:
    """File name of shard `index` of `rank`: `shard-rRRRR-NNNNNN.tar`."""
    return f"shard-r{rank:04d}-{index:06d}.tar"


@dataclass
class JournalState:
    """What a previous (possibly killed) run of this rank committed."""

    shards: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def done(self) -> set[str]:
        """Paths of the tracks already handled (kept or rejected), which a rerun skips."""
        kept = {row_rel(row) for entry in self.shards for row in entry["tracks"]}
        return kept | {row_rel(row) for row in self.rejects}

    @property
    def kept_rows(self) -> list[dict[str, Any]]:
        """Manifest rows of every committed kept track, in catalog order."""
        return sorted((row for entry in self.shards for row in entry["tracks"]), key=row_rel)

    @property
    def seen_hashes(self) -> dict[str, str]:
        """sha256 -> path of every committed kept track, for duplicate detection.

        Only kept tracks count: a licensed copy of a file whose first copy was refused (no license, say) is kept.
        """
        seen: dict[str, str] = {}
        for row in self.kept_rows:
            seen.setdefault(row["sha256"], row_rel(row))
        return seen


def read_journal(path: Path, repair: bool = False) -> JournalState:
    """Parse a journal; a torn last line (killed mid-write) is ignored, and cut off when `repair` is set."""
    state = JournalState()
    if not path.exists():
        return state
    raw = path.read_bytes()
    good_end = 0
    for line in raw.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            break
        good_end += len(line)
        if entry["type"] == "shard":
            state.shards.append(entry)
        elif entry["type"] == "reject":
            state.rejects.append(entry["row"])
    if repair and good_end < len(raw):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return state


class Journal:
    """Append-only, fsynced JSON lines: one per committed shard and one per reject."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _append(self, entry: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def reject(self, row: dict[str, Any]) -> None:
        """Journal a refused track's row as soon as it is rejected."""
        self._append({"type": "reject", "row": row})

    def shard(self, name: str, num_samples: int, tracks: list[dict[str, Any]]) -> None:
        """Commit shard `name`: its sample count and its tracks' manifest rows (called once its tar is in place)."""
        self._append({"type": "shard", "shard": name, "num_samples": num_samples, "tracks": tracks})


def clean_uncommitted(out_dir: Path, rank: int, state: JournalState) -> list[Path]:
    """Remove this rank's `.tmp` files and tars the journal does not name; returns what was removed."""
    committed = {entry["shard"] for entry in state.shards}
    removed = []
    for path in out_dir.glob(f"shard-r{rank:04d}-*"):
        if path.name.endswith(".tmp") or path.name not in committed:
            path.unlink()
            removed.append(path)
    return removed


def encode_flac(audio: np.ndarray, sample_rate: int) -> bytes:
    """FLAC bytes (24-bit) of float audio `[C, N]`."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, audio.T, sample_rate, format="FLAC", subtype="PCM_24")
    return buf.getvalue()


class ShardWriter:
    """Fills `shard-rRRRR-NNNNNN.tar.tmp` with whole tracks and renames it when full or at the end."""

    def __init__(
        self, out_dir: Path, rank: int, journal: Journal, first_index: int, max_samples: int, max_bytes: int
    ) -> None:
        self.out_dir = out_dir
        self.rank = rank
        self.journal = journal
        self.index = first_index
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self._tar = None  # webdataset's TarWriter over the open temporary file
        self._file = None
        self._samples = 0
        self._bytes = 0
        self._tracks: list[dict[str, Any]] = []

    @property
    def current_name(self) -> str:
        """File name of the shard being filled."""
        return shard_name(self.rank, self.index)

    def begin_track(self) -> None:
        """Open the shard (if none is open) for the samples of the next track."""
        if self._tar is None:
            self._file = open(self.out_dir / (self.current_name + ".tmp"), "wb")
            import webdataset as wds  # imports torch: only once there is something to write

            self._tar = wds.TarWriter(self._file)

    def add_sample(self, sample: dict[str, Any]) -> None:
        """Append one sample of the current track (between `begin_track` and `end_track`)."""
        self._bytes += self._tar.write(sample) or 0
        self._samples += 1

    def end_track(self, manifest_row: dict[str, Any]) -> None:
        """The current track is written whole: record its manifest row, then close the shard if it is full."""
        self._tracks.append({**manifest_row, "shard": self.current_name})
        if self._samples >= self.max_samples or self._bytes >= self.max_bytes:
            self.close()

    def discard(self) -> None:
        """Drop the open shard unwritten (its index is reused): for a track that failed after it began.

        Only safe when the shard holds nothing but that track, which is why prep starts a streamed track on a
        fresh shard.
        """
        if self._tar is None:
            return
        self._tar.close()
        (self.out_dir / (self.current_name + ".tmp")).unlink(missing_ok=True)
        self._tar, self._file = None, None
        self._samples, self._bytes, self._tracks = 0, 0, []

    def close(self) -> None:
        """Finish the open shard: fsync, rename into place, then journal it (the commit point)."""
        if self._tar is None:
            return
        self._tar.close()  # also closes the file object
        tmp = self.out_dir / (self.current_name + ".tmp")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.out_dir / self.current_name)
        fsync_dir(self.out_dir)
        self.journal.shard(self.current_name, self._samples, self._tracks)
        self._tar, self._file = None, None
        self._samples, self._bytes, self._tracks = 0, 0, []
        self.index += 1


def remove_samples(path: Path, keys: set[str]) -> int:
    """Rewrite a committed shard without the samples named in `keys`; delete it when none is left.

    For the merge's near-duplicate drops, after every rank has finished. The new tar is written beside the old one
    (`.tmp`, which a resumed rank removes) and renamed over it, so a kill leaves the old shard or the new one whole;
    run again, it finds nothing left to remove.

    Returns:
        The number of samples removed (0 when the shard no longer holds any of them, or is gone).
    """
    import tarfile

    if not path.exists():
        return 0
    key_of = lambda member: member.name.split(".", 1)[0]  # noqa: E731 -- keys hold no dots (schema.sanitize_key)
    with tarfile.open(path) as src:
        members = src.getmembers()
        removed = {key_of(m) for m in members} & keys
        if not removed:
            return 0
        keep = [m for m in members if key_of(m) not in keys]
        if keep:
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as f, tarfile.open(fileobj=f, mode="w") as dst:
                for member in keep:
                    dst.addfile(member, src.extractfile(member))
                dst.close()
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            path.unlink()
    fsync_dir(path.parent)
    return len(removed)
