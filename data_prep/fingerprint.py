"""Near-duplicate recordings: Chromaprint fingerprints of the decoded audio, compared by bit error rate.

A FLAC master and an MP3 copy of one recording are different bytes, so the sha256 duplicate check misses them, and
a model trained on both sees that recording twice (or validates on what it trained on). Chromaprint, the fingerprint
behind AcoustID and `fpcalc`, turns audio into one 32-bit integer per ~0.124 s, each bit a coarse comparison of
chroma energies, so lossy coding flips few bits. Two fingerprints are the same recording when, at their best
alignment, few bits differ:

- measured on synthesized tracks (`plan_catalog(24, 20.0, seed=5)`): an Ogg Vorbis or MP3 re-encode differs from its
  source in at most 0.8% of the bits; two different tracks in at least 22% (median 44%, random bits give 50%);
- `MAX_BIT_ERROR` = 15% sits between, as AcoustID's matching does with its own threshold.

Only the first `FINGERPRINT_SECONDS` are fingerprinted (fpcalc's default), and alignments up to `MAX_SHIFT_SECONDS`
apart are tried, so a copy with a little silence added in front still matches; an excerpt from the middle of a
track does not. Finding candidates uses an inverted index of the exact 32-bit values (a re-encode keeps a share of
its values bit for bit); only candidates are compared bit by bit, so a catalog is not compared pair by pair.

The library is reached through pyacoustid's ctypes binding (`chromaprint` module), which needs Chromaprint's shared
library: Debian/Ubuntu `libchromaprint1`, conda-forge `chromaprint`, Homebrew `chromaprint`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from data_prep.catalog import row_rel

FINGERPRINT_SECONDS = 120.0
"""Fingerprint at most this much of each track's start (fpcalc's default length)."""
MAX_BIT_ERROR = 0.15
"""Share of differing bits at the best alignment below which two tracks are one recording."""
ITEM_SECONDS = 4096 / 3 / 11025
"""Seconds per fingerprint item: Chromaprint's default algorithm hops 1/3 of 4096 samples at 11,025 Hz."""
MAX_SHIFT_SECONDS = 10.0
"""How far apart two copies may start (leading silence, a cut intro) and still be compared aligned."""
MIN_ITEMS = 16
"""A fingerprint shorter than this says too little to match on; such tracks are never called duplicates. Chromaprint's
filters span ~2 s of chroma frames, so 16 items take about 4 s of audio."""
MIN_SHARED_VALUES = 2
"""Exact values two fingerprints must share to be compared bit by bit at all."""
COMMON_VALUE_TRACKS = 200
"""A value held by more indexed tracks than this (digital silence, say) picks no candidates: it tells nothing."""

INSTALL_HINT = ("Chromaprint's library is needed for --near-duplicates: apt-get install libchromaprint1 "
                "(Debian/Ubuntu), conda install -c conda-forge chromaprint, or brew install chromaprint")


def require_chromaprint() -> Any:
    """pyacoustid's `chromaprint` module; a ValueError saying how to install the library when it cannot load."""
    try:
        import chromaprint
    except ImportError as e:
        raise ValueError(f"{INSTALL_HINT} ({e})") from e
    return chromaprint


def fingerprint(blocks: Iterable[np.ndarray], sample_rate: int) -> str | None:
    """Chromaprint's compressed fingerprint (base64 text) of the first `FINGERPRINT_SECONDS` of some audio.

    Args:
        blocks: Float audio in consecutive blocks `[C, n]` (one block for a track held whole). Reading stops once
            enough audio is fed, so a streamed track is decoded only that far.
        sample_rate: Their rate; Chromaprint resamples to 11,025 Hz and downmixes itself.

    Returns:
        The fingerprint, or None when the audio yields fewer than `MIN_ITEMS` items.
    """
    chromaprint = require_chromaprint()
    printer = chromaprint.Fingerprinter()
    left = round(FINGERPRINT_SECONDS * sample_rate)
    started = False
    for block in blocks:
        if not started:
            printer.start(sample_rate, block.shape[0])
            started = True
        block = block[:, :left]
        pcm = (np.clip(block, -1.0, 1.0) * 32767.0).astype("<i2").T  # [n, C] interleaved, as Chromaprint reads
        printer.feed(np.ascontiguousarray(pcm).tobytes())
        left -= block.shape[1]
        if left <= 0:
            break
    if not started:
        return None
    encoded = printer.finish()
    return encoded.decode("ascii") if len(decode(encoded)) >= MIN_ITEMS else None


def decode(encoded: str | bytes) -> np.ndarray:
    """The raw fingerprint `[items]` uint32 of a compressed one."""
    chromaprint = require_chromaprint()
    raw, _ = chromaprint.decode_fingerprint(encoded.encode("ascii") if isinstance(encoded, str) else encoded)
    return np.asarray(raw, dtype=np.uint32)


def bit_error_rate(a: np.ndarray, b: np.ndarray, max_shift: int) -> tuple[float, int]:
    """The lowest share of differing bits between two raw fingerprints over shifts up to `max_shift` items.

    Args:
        a: `[n]` uint32.
        b: `[m]` uint32.
        max_shift: Largest offset tried either way, in items.

    Returns:
        (bit error rate in [0, 1], offset of `b` against `a` in items: b[i] lines up with a[i + offset]); (1.0, 0)
        when no shift leaves `MIN_ITEMS` items, or half the shorter fingerprint, overlapping.
    """
    need = max(MIN_ITEMS, min(len(a), len(b)) // 2)
    best = (1.0, 0)
    for shift in range(-max_shift, max_shift + 1):
        x, y = (a[shift:], b) if shift >= 0 else (a, b[-shift:])
        n = min(len(x), len(y))
        if n < need:
            continue
        differing = np.unpackbits((x[:n] ^ y[:n]).view(np.uint8)).mean()  # [32 n] bits -> share set
        if differing < best[0]:
            best = (float(differing), shift)
    return best


@dataclass(frozen=True)
class Match:
    """A kept track a new one duplicates."""

    rel: str
    bit_error: float
    offset_seconds: float

    def detail(self, name: str) -> str:
        """The reject detail: which kept track, and how close."""
        shift = f", starting {self.offset_seconds:+.1f} s from it" if abs(self.offset_seconds) >= 0.5 else ""
        return f"same recording as {name} (kept): {100 * self.bit_error:.1f}% of fingerprint bits differ{shift}"


class FingerprintIndex:
    """The fingerprints of kept tracks, and a lookup of the one a new track duplicates."""

    def __init__(self) -> None:
        self.rels: list[str] = []
        self.raw: list[np.ndarray] = []
        self.postings: dict[int, list[int]] = defaultdict(list)  # value -> indices of tracks holding it

    def __len__(self) -> int:
        return len(self.rels)

    def add(self, rel: str, encoded: str | None) -> None:
        """Index a kept track (one without a fingerprint is never matched)."""
        if encoded is None:
            return
        raw = decode(encoded)
        index = len(self.rels)
        self.rels.append(rel)
        self.raw.append(raw)
        for value in np.unique(raw).tolist():
            self.postings[value].append(index)

    def match(self, encoded: str | None) -> Match | None:
        """The indexed track this fingerprint is a near-duplicate of (the closest, if several), else None."""
        if encoded is None or not self.rels:
            return None
        raw = decode(encoded)
        shared: Counter[int] = Counter()
        for value in np.unique(raw).tolist():
            holders = self.postings.get(value, ())
            if len(holders) <= COMMON_VALUE_TRACKS:
                shared.update(holders)
        max_shift = round(MAX_SHIFT_SECONDS / ITEM_SECONDS)
        best: Match | None = None
        for index, count in shared.items():
            if count < MIN_SHARED_VALUES:
                continue
            error, offset = bit_error_rate(self.raw[index], raw, max_shift)
            if error <= MAX_BIT_ERROR and (best is None or error < best.bit_error):
                best = Match(self.rels[index], error, offset * ITEM_SECONDS)
        return best


def resolve(rows: list[dict[str, Any]], reference: list[dict[str, Any]] = ()) -> dict[str, Match]:
    """Which tracks of `rows` are near-duplicates, the way one prep in catalog order decides it.

    Tracks are visited in catalog order (`rel`, as `catalog.scan` sorts); each is kept unless it duplicates a track
    kept before it or one of `reference`. A rank of a parallel prep already applied this to its own tracks as it
    went, so on the union of ranks it only finds the pairs that straddle two ranks.

    Args:
        rows: Manifest rows of kept tracks (their `fingerprint` may be None).
        reference: Rows that are kept whatever `rows` hold (the training side, when `rows` are validation).

    Returns:
        The catalog name (`Track.rel`) -> the kept track it duplicates, for each track to drop.
    """
    index = FingerprintIndex()
    for row in reference:
        index.add(row_rel(row), row.get("fingerprint"))
    dropped: dict[str, Match] = {}
    for row in sorted(rows, key=row_rel):
        if (match := index.match(row.get("fingerprint"))) is not None:
            dropped[row_rel(row)] = match
        else:
            index.add(row_rel(row), row.get("fingerprint"))
    return dropped
