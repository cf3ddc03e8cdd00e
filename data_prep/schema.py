"""The shard contract: the one module that both `data_prep` (writer) and `finetune` (reader) import.

A shard is a webdataset tar with one sample per audio segment. Each sample holds:

- `codes.npy`: int16 `[K, T]` EnCodec codes. K = 4 for mono, 8 for stereo interleaved as L0, R0, L1, R1, ...
  (audiocraft's `InterleaveStereoCompressionModel` order, codebook index = 2 * k + channel). T = 50 x segment seconds.
- `chroma.npy` (melody prep only): float32 `[F, 12]` one-hot chroma of the vocals + other stems of that exact segment,
  F = 1 + samples // 4096 (235 for 30 s at 32 kHz).
- `audio.flac` (with `--keep-audio`): the 32 kHz segment, zero padding excluded.
- `json`: `SampleInfo` below.

Beside the shards: `manifest.jsonl` (one row per source track), `rejects.jsonl` (one row per refused input) and
`stats.json`.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any, TypedDict

import numpy as np

SAMPLE_RATE = 32_000
"""EnCodec 32 kHz: every segment is resampled to this rate before tokenization."""
HOP_LENGTH = 640
"""EnCodec 32 kHz total stride (8 * 5 * 4 * 4): one frame per 640 samples."""
FRAME_RATE = SAMPLE_RATE // HOP_LENGTH  # 50 Hz
CODEBOOKS_PER_CHANNEL = 4
CARDINALITY = 2048
"""Codebook size; MusicGen's special (pad/BOS) token is this value, so codes fit int16."""
SPECIAL_TOKEN_ID = CARDINALITY
"""MusicGen's special token (audiocraft's `special_token_id = card`; transformers' pad, BOS and decoder start): one
past the codes, so every embedding table has 2049 rows."""

CHROMA_N_FFT = 2**14
CHROMA_HOP = CHROMA_N_FFT // 4
N_CHROMA = 12

CODES_KEY = "codes.npy"
CHROMA_KEY = "chroma.npy"
AUDIO_KEY = "audio.flac"
INFO_KEY = "json"

CODES_DTYPE = np.int16
CHROMA_DTYPE = np.float32

MANIFEST_FILE = "manifest.jsonl"
REJECTS_FILE = "rejects.jsonl"
STATS_FILE = "stats.json"
SHARD_GLOB = "shard-*.tar"

SCHEMA_VERSION = 2
"""2: `valid_frames` counts only whole frames (floor), as audiocraft's padding mask does. 1 (before 2026-12): a
partial last frame counted too (ceiling). Readers go through `read_valid_frames`, which gives the floor for both."""

INFO_FIELDS = ("title", "artist", "genre", "bpm", "key", "moods", "instrument", "keywords")
"""audiocraft's `MusicInfo` metadata fields (besides `description`) carried by every sample."""


class SampleInfo(TypedDict):
    """The `json` entry of one shard sample."""

    schema_version: int
    key: str
    track_key: str
    segment_index: int
    caption: str | None
    metadata: dict[str, Any]
    license: str
    source_path: str
    source_sha256: str
    start_seconds: float
    end_seconds: float
    valid_frames: int
    num_frames: int
    chroma_valid_frames: int | None
    sample_rate: int
    channels: int


def num_frames(seconds: float) -> int:
    """Number of EnCodec frames for a segment of `seconds` (T = 50 x seconds)."""
    return round(seconds * FRAME_RATE)


def valid_frames(num_samples: int) -> int:
    """Frames that carry only audio for `num_samples` valid samples at 32 kHz.

    A partial last frame does not count: its code was computed over zero padding. audiocraft's solver counts the same
    way (`floor(n_samples / sample_rate * frame_rate)` in `MusicGenSolver._prepare_tokens_and_attributes`).
    """
    return num_samples // HOP_LENGTH


def read_valid_frames(info: dict[str, Any], num_frames: int) -> int:
    """The whole valid frames of a stored sample, whatever schema version wrote it.

    Schema 1 stored a ceiling; its segment's sample count is `(end_seconds - start_seconds) * 32000` (exact: the
    bounds are sample indices over 32000), so the floor is recomputed from it. A sample without a count is whole.

    Args:
        info: the sample's `json` entry.
        num_frames: the frames of its codes (the upper bound).
    """
    stored = int(info.get("valid_frames", num_frames))
    if int(info.get("schema_version", SCHEMA_VERSION)) >= 2 or "end_seconds" not in info:
        return stored
    samples = round((float(info["end_seconds"]) - float(info["start_seconds"])) * SAMPLE_RATE)
    return min(stored, valid_frames(samples))


def chroma_frames(num_samples: int) -> int:
    """Chroma frames of a centred STFT over `num_samples` (inputs shorter than n_fft are padded to n_fft)."""
    return 1 + max(num_samples, CHROMA_N_FFT) // CHROMA_HOP


def interleave_stereo(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Interleave per-channel codes `[K, T]` into `[2K, T]` ordered L0, R0, L1, R1, ..."""
    if left.shape != right.shape:
        raise ValueError(f"left {left.shape} and right {right.shape} codes differ in shape")
    k, t = left.shape
    return np.stack([left, right], axis=1).reshape(2 * k, t)


def deinterleave_stereo(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `interleave_stereo`: `[2K, T]` -> (left `[K, T]`, right `[K, T]`)."""
    if codes.shape[0] % 2:
        raise ValueError(f"stereo codes need an even number of codebooks, got {codes.shape[0]}")
    return codes[0::2], codes[1::2]


def sanitize_key(text: str, max_len: int = 60) -> str:
    """A webdataset-safe key for any file name: ASCII letters, digits, `_` and `-`, plus a hash for uniqueness.

    webdataset splits a member name at its first dot to find the key, and treats `/` as a directory, so both are
    replaced; the hash of the original text keeps keys unique when two names sanitize to the same slug.
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_text).strip("_-")[:max_len] or "track"
    digest = hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:10]  # names that are not UTF-8
    return f"{slug}_{digest}"


def sample_key(track_key: str, segment_index: int) -> str:
    """Key of segment `segment_index` of a track."""
    return f"{track_key}_s{segment_index:05d}"
