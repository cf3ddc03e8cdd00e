"""Decode, validate, resample and convert channels: one audio file -> float32 `[C, N]` at 32 kHz, or a reject.

Every way a file can be unusable raises `RejectError` with a reason from `REJECT_REASONS`, so prep records it in
`rejects.jsonl` and moves on instead of stopping the run.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

REJECT_REASONS = {
    "empty_file": "the file has zero bytes",
    "not_audio": "the bytes are not any known audio container",
    "truncated": "the file ends before the length its header declares",
    "decode_error": "the decoder failed on the file",
    "non_finite": "the audio holds NaN or infinite samples",
    "silent": "the audio is digital silence",
    "too_short": "the audio is shorter than --min-seconds",
    "duplicate": "the file's bytes equal an earlier file's",
    "near_duplicate": "the audio is a kept track's recording in another encoding (--near-duplicates, Chromaprint)",
    "no_license": "no license in the sidecar, the catalog row, the tags or --license",
    "license_not_allowed": "the license is not in --allowed-licenses",
    "bad_sidecar": "the sidecar .json could not be read or parsed",
    "bad_license": "the license field is not a string (a number, a list, an object)",
    "license_conflict": "byte-identical copies carry different licenses: every copy is refused",
    "missing": "a catalog row names a file that does not exist",
    "unreadable": "the file (or a folder, whose files were then not seen) cannot be read: permissions, I/O errors",
    "broken_link": "a symbolic link whose target is missing, or a link loop",
    "not_a_file": "a FIFO, socket, device or folder with an audio name, not a regular file",
    "bad_catalog_row": "a line of the CSV/JSONL catalog that is not an object with a 'path' string",
}

# libsndfile decodes these exactly; everything else (mp3, m4a, aac, ...) goes through FFmpeg via PyAV.
_SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".aif", ".aiff"}


class RejectError(Exception):
    """A file prep must refuse; `reason` is one of `REJECT_REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class DecodedAudio:
    """Decoded samples as float32 `[C, N]` at `sample_rate`, plus what happened on the way."""

    samples: np.ndarray
    sample_rate: int
    codec: str
    notes: list[str] = field(default_factory=list)

    @property
    def channels(self) -> int:
        """Number of channels `C`."""
        return self.samples.shape[0]

    @property
    def seconds(self) -> float:
        """Duration in seconds."""
        return self.samples.shape[1] / self.sample_rate


def sniff_container(head: bytes) -> str | None:
    """Name the audio container from a file's first bytes, or None when they match no known audio format."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"RF64" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:3] == b"ID3":
        return "mp3"
    if head[4:8] == b"ftyp":
        return "mp4"
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0:
        # MPEG audio frame sync (mp3) or ADTS (aac): 11 set bits.
        return "mpeg"
    return None


def wav_declared_frames(path: Path) -> tuple[int, int] | None:
    """(frames the RIFF `data` chunk declares, frames the file's bytes actually hold), or None if unparsable.

    libsndfile and FFmpeg both quietly shorten a truncated WAV to the bytes present, so truncation is only visible by
    comparing the header's claim against the file size.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(12)[:4] != b"RIFF":
            return None
        block_align = 0
        while True:
            header = f.read(8)
            if len(header) < 8:
                return None
            chunk_id, chunk_size = header[:4], struct.unpack("<I", header[4:])[0]
            if chunk_id == b"fmt ":
                fmt = f.read(chunk_size)
                if len(fmt) < 16:
                    return None
                block_align = struct.unpack("<H", fmt[12:14])[0]
                if chunk_size % 2:
                    f.seek(1, 1)
            elif chunk_id == b"data":
                if block_align == 0:
                    return None
                available = max(0, size - f.tell())
                return chunk_size // block_align, available // block_align
            else:
                f.seek(chunk_size + (chunk_size % 2), 1)


# Both decoders get an open file, not a name: libsndfile and FFmpeg take names as UTF-8, which a file name that is
# not UTF-8 (surrogate escapes in Python) cannot be encoded to.
#
# Both yield blocks `[C, n]` at the file's own rate, so a track of any length can be read in bounded memory (a DJ mix
# or a live recording is hours long: 2 h of 48 kHz stereo is 2.8 GB as float32).

BLOCK_SECONDS = 10.0
"""Length of the blocks decoding yields (at the file's rate): a few MB, large enough that per-block costs vanish."""


@dataclass(frozen=True)
class StreamInfo:
    """What a decoder knows before its first block: rate, channels, codec name, declared length (if any)."""

    sample_rate: int
    channels: int
    codec: str
    declared_frames: int | None
    backend: str  # "soundfile" or "pyav"


class _Reader:
    """An open file being decoded in blocks; `info` is set on open, `blocks()` yields `[C, n]` float32."""

    info: StreamInfo

    def blocks(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _open_decoder(path: Path, make):  # noqa: ANN001, ANN202 (a decoder constructor over a binary file)
    """`(raw file, make(raw file))`; the file is closed again when the decoder refuses it."""
    raw = open(path, "rb")
    try:
        return raw, make(raw)
    except BaseException:
        raw.close()
        raise


class _SoundfileReader(_Reader):
    def __init__(self, path: Path) -> None:
        self._raw, self._file = _open_decoder(path, sf.SoundFile)
        f = self._file
        self.info = StreamInfo(f.samplerate, f.channels, f"{f.format}/{f.subtype}".lower(), f.frames, "soundfile")

    def blocks(self) -> Iterator[np.ndarray]:
        size = max(1, round(BLOCK_SECONDS * self.info.sample_rate))
        for block in self._file.blocks(blocksize=size, dtype="float32", always_2d=True):  # [n, C]
            yield np.ascontiguousarray(block.T)

    def close(self) -> None:
        self._file.close()
        self._raw.close()


class _PyavReader(_Reader):
    """FFmpeg through PyAV; a decode error before the declared length is `truncated`, otherwise `decode_error`."""

    def __init__(self, path: Path) -> None:
        import av

        self._raw, self._container = _open_decoder(path, av.open)
        if not self._container.streams.audio:
            self.close()
            raise RejectError("not_audio", "the container has no audio stream")
        self._stream = stream = self._container.streams.audio[0]
        rate = stream.rate
        declared = int(stream.duration * stream.time_base * rate) if stream.duration else None
        channels = len(stream.layout.channels)
        self.info = StreamInfo(rate, channels, stream.codec_context.name, declared, "pyav")

    def blocks(self) -> Iterator[np.ndarray]:
        import av

        rate, declared = self.info.sample_rate, self.info.declared_frames
        size = max(1, round(BLOCK_SECONDS * rate))
        # Planar float keeps channels apart and converts integer PCM exactly (x / 2^(bits-1)).
        resampler = av.AudioResampler(format="fltp", layout=self._stream.layout, rate=rate)
        chunks: list[np.ndarray] = []
        buffered = decoded = 0
        try:
            for frame in self._container.decode(self._stream):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray()  # [C, n]
                    chunks.append(chunk)
                    buffered += chunk.shape[1]
                    decoded += chunk.shape[1]
                    if buffered >= size:
                        yield np.concatenate(chunks, axis=1).astype(np.float32)
                        chunks, buffered = [], 0
        except av.error.FFmpegError as e:
            if declared and decoded < declared:
                raise RejectError("truncated", f"decoded {decoded} of {declared} declared frames ({e})") from e
            raise RejectError("decode_error", str(e)) from e
        if chunks:
            yield np.concatenate(chunks, axis=1).astype(np.float32)
        if not decoded:
            raise RejectError("decode_error", "no audio frames decoded")

    def close(self) -> None:
        self._container.close()
        self._raw.close()


def _precheck(path: Path) -> None:
    """Refuse empty, non-audio and header-truncated WAV files before any decoder runs."""
    size = path.stat().st_size
    if size == 0:
        raise RejectError("empty_file")
    with open(path, "rb") as f:
        container = sniff_container(f.read(16))
    if container is None:
        raise RejectError("not_audio", f"unrecognized leading bytes for a {path.suffix or 'suffix-less'} file")
    if container == "wav":
        frames = wav_declared_frames(path)
        if frames is not None and frames[1] < frames[0]:
            raise RejectError("truncated", f"data chunk declares {frames[0]} frames, the file holds {frames[1]}")


def _open(path: Path, backend: str) -> _Reader:
    import av

    try:
        return _SoundfileReader(path) if backend == "soundfile" else _PyavReader(path)
    except RejectError:
        raise
    except Exception as e:  # FFmpeg and libsndfile raise many exception types for garbage input.
        if isinstance(e, OSError) and not isinstance(e, av.error.FFmpegError):
            raise  # permissions, I/O: prep reports these as unreadable
        raise RejectError("decode_error", f"{type(e).__name__}: {e}") from e


def read_blocks(path: Path, backend: str) -> tuple[StreamInfo, Iterator[np.ndarray]]:
    """Open `path` with `backend` ("soundfile" or "pyav", as `scan_audio` chose) and decode it in blocks `[C, n]`.

    The file is closed when the iterator is exhausted or garbage-collected.
    """
    reader = _open(path, backend)

    def blocks() -> Iterator[np.ndarray]:
        try:
            yield from _checked(reader)
        finally:
            reader.close()

    return reader.info, blocks()


def _checked(reader: _Reader) -> Iterator[np.ndarray]:
    """The reader's blocks, with a short FLAC (fewer frames than declared) refused as truncated."""
    import av

    decoded = 0
    try:
        for block in reader.blocks():
            decoded += block.shape[1]
            yield block
    except RejectError:
        raise
    except (sf.LibsndfileError, RuntimeError, av.error.FFmpegError) as e:
        raise RejectError("decode_error", f"{type(e).__name__}: {e}") from e
    declared = reader.info.declared_frames
    if reader.info.backend == "pyav" and reader.info.codec == "flac" and declared and decoded < declared:
        raise RejectError("truncated", f"decoded {decoded} of {declared} declared frames")


@dataclass
class AudioScan:
    """One decoding pass over a file: its stream, content statistics, and its blocks when it was short enough."""

    info: StreamInfo
    frames: int
    peak: float
    non_finite: int
    blocks: list[np.ndarray] | None  # None: longer than `keep_frames`, read it again with `read_blocks`

    @property
    def seconds(self) -> float:
        """Duration in seconds at the file's own rate."""
        return self.frames / self.info.sample_rate


def scan_audio(path: Path, keep_seconds: float | None = None) -> AudioScan:
    """Decode `path` once in blocks, measuring length, peak and non-finite samples in bounded memory.

    Args:
        path: The audio file.
        keep_seconds: Keep the decoded blocks when the file is at most this long (None: always keep them); a longer
            file's blocks are dropped as they are measured, and the caller decodes it again with `read_blocks`.

    libsndfile decodes wav/flac/ogg/aiff exactly; anything else, and any file libsndfile refuses, goes through FFmpeg,
    which is more lenient and names truncation precisely.

    Raises:
        RejectError: empty, not audio, truncated or undecodable files.
    """
    _precheck(path)
    backends = ["soundfile", "pyav"] if path.suffix.lower() in _SOUNDFILE_SUFFIXES else ["pyav"]
    for i, backend in enumerate(backends):
        try:
            return _scan_with(path, backend, keep_seconds)
        except RejectError as e:
            if i + 1 < len(backends) and e.reason == "decode_error":
                continue  # let FFmpeg have a go
            raise
    raise AssertionError("unreachable")


def _scan_with(path: Path, backend: str, keep_seconds: float | None) -> AudioScan:
    info, blocks = read_blocks(path, backend)
    keep_frames = None if keep_seconds is None else keep_seconds * info.sample_rate
    kept: list[np.ndarray] | None = []
    frames, peak, non_finite = 0, 0.0, 0
    for block in blocks:
        frames += block.shape[1]
        finite = np.isfinite(block)
        if not finite.all():
            non_finite += int((~finite).sum())
            block_peak = float(np.abs(block[finite]).max()) if finite.any() else 0.0
        else:
            block_peak = float(np.abs(block).max()) if block.size else 0.0
        peak = max(peak, block_peak)
        if kept is not None:
            kept.append(block)
            if keep_frames is not None and frames > keep_frames:
                kept = None
    return AudioScan(info, frames, peak, non_finite, kept)


def _decode_pyav(path: Path) -> tuple[np.ndarray, int, str, int | None]:
    """Decode with FFmpeg; returns samples `[C, N]`, rate, codec and the stream's declared frames (if any)."""
    scan = _scan_with(path, "pyav", None)
    return np.concatenate(scan.blocks, axis=1), scan.info.sample_rate, scan.info.codec, scan.info.declared_frames


def read_tags(path: Path) -> dict[str, str]:
    """Embedded tags (title, artist, genre, ...) with lower-case keys; empty when there are none or they fail."""
    import av

    try:
        with open(path, "rb") as raw, av.open(raw) as container:
            tags = dict(container.metadata)
            if container.streams.audio:
                tags = {**dict(container.streams.audio[0].metadata), **tags}
    except Exception:
        return {}
    return {k.lower(): v.strip() for k, v in tags.items() if isinstance(v, str) and v.strip()}


def decode(path: Path) -> DecodedAudio:
    """Decode a whole file to float32 `[C, N]` at its own rate (a melody prompt; prep streams with `scan_audio`)."""
    scan = scan_audio(path)
    return DecodedAudio(np.concatenate(scan.blocks, axis=1), scan.info.sample_rate, scan.info.codec)


def check_content(scan: AudioScan, *, min_seconds: float, silence_dbfs: float) -> None:
    """Refuse non-finite samples, digital silence and clips shorter than `min_seconds`."""
    if scan.non_finite:
        raise RejectError("non_finite", f"{scan.non_finite} NaN/inf samples")
    if scan.peak <= 10 ** (silence_dbfs / 20):
        raise RejectError("silent", f"peak {scan.peak:.2e} is at or below {silence_dbfs} dBFS")
    if scan.seconds < min_seconds:
        raise RejectError("too_short", f"{scan.seconds:.3f} s < {min_seconds} s")


def clipping_note(peak: float) -> str | None:
    """A note for float audio that peaks above full scale (it clips on any fixed-point export), else None."""
    if peak <= 1.0:
        return None
    return f"peak above full scale ({peak:.2f}, +{20 * np.log10(peak):.1f} dBFS): clips in any fixed-point export"


def resample(audio: DecodedAudio, target_rate: int) -> DecodedAudio:
    """High-quality (soxr HQ) resampling of every channel to `target_rate`."""
    if audio.sample_rate == target_rate:
        return audio
    out = soxr.resample(audio.samples.T, audio.sample_rate, target_rate, quality="HQ").T  # [C, N']
    notes = [*audio.notes, f"resampled {audio.sample_rate} -> {target_rate} Hz"]
    return DecodedAudio(np.ascontiguousarray(out, dtype=np.float32), target_rate, audio.codec, notes)


def channel_note(channels_in: int, channels_out: int) -> str | None:
    """What `mix_channels` does to a `channels_in` file for a `channels_out` model, as a manifest note."""
    if channels_out == 1 and channels_in > 1:
        return f"downmixed {channels_in} -> 1 channel (mean)"
    if channels_out == 2 and channels_in == 1:
        return "mono duplicated to 2 channels"
    if channels_out == 2 and channels_in == 6:
        return "downmixed 6 -> 2 channels (ITU 5.1)"
    if channels_out == 2 and channels_in > 2:
        return f"downmixed {channels_in} -> 2 channels (even/odd mean)"
    return None


def mix_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """`[C, n]` -> `[channels, n]`: mono models get the channel mean; stereo gets mono duplicated, >2 downmixed.

    The downmix of a 6-channel file assumes the WAV/SMPTE 5.1 order (FL, FR, FC, LFE, BL, BR) and the ITU-R BS.775
    coefficients (centre and surrounds at -3 dB, LFE dropped); other layouts average even channels into the left and
    odd channels into the right, which keeps the usual L/R pairing of multichannel stems.
    """
    c = x.shape[0]
    if channels == 1:
        if c > 1:
            x = x.mean(axis=0, keepdims=True)
    elif channels == 2:
        if c == 1:
            x = np.concatenate([x, x])
        elif c == 6:
            g = np.float32(1 / np.sqrt(2))
            left = x[0] + g * x[2] + g * x[4]
            right = x[1] + g * x[2] + g * x[5]
            x = np.stack([left, right]) / np.float32(1 + 2 * g)
        elif c > 2:
            x = np.stack([x[0::2].mean(axis=0), x[1::2].mean(axis=0)])
    else:
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    return np.ascontiguousarray(x, dtype=np.float32)


def convert_channels(audio: DecodedAudio, channels: int) -> DecodedAudio:
    """`mix_channels` of a whole decoded file, with its note."""
    note = channel_note(audio.channels, channels)
    notes = [*audio.notes, note] if note else list(audio.notes)
    return DecodedAudio(mix_channels(audio.samples, channels), audio.sample_rate, audio.codec, notes)


def prepare_blocks(
    info: StreamInfo, blocks: Iterable[np.ndarray], target_rate: int, channels: int
) -> tuple[list[str], Iterator[np.ndarray]]:
    """Resample (soxr HQ, streaming) and convert channels block by block: `[C, n]` -> `[channels, n']`.

    soxr's stream gives exactly `soxr.resample` of the whole signal whatever the block sizes (checked bit for bit), so
    a track read in blocks and one read whole become the same samples.

    Returns:
        The notes (resampling, channel conversion) and the converted blocks.
    """
    notes = [f"resampled {info.sample_rate} -> {target_rate} Hz"] if info.sample_rate != target_rate else []
    if note := channel_note(info.channels, channels):
        notes.append(note)

    def converted() -> Iterator[np.ndarray]:
        stream = None
        if info.sample_rate != target_rate:
            stream = soxr.ResampleStream(info.sample_rate, target_rate, info.channels, dtype="float32",
                                         quality="HQ")
        for block in blocks:
            if stream is not None:
                block = stream.resample_chunk(np.ascontiguousarray(block.T), last=False).T  # [C, n']
            if block.shape[1]:
                yield mix_channels(block, channels)
        if stream is not None:
            tail = stream.resample_chunk(np.zeros((0, info.channels), np.float32), last=True).T
            if tail.shape[1]:
                yield mix_channels(tail, channels)

    return notes, converted()
