"""Decode, validate, resample and convert channels: one audio file -> float32 `[C, N]` at 32 kHz, or a reject.

Every way a file can be unusable raises `RejectError` with a reason from `REJECT_REASONS`, so prep records it in
`rejects.jsonl` and moves on instead of stopping the run.
"""

from __future__ import annotations

import struct
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


def _decode_soundfile(path: Path) -> tuple[np.ndarray, int, str]:
    with open(path, "rb") as raw, sf.SoundFile(raw) as f:
        data = f.read(dtype="float32", always_2d=True)  # [N, C]
        return data.T.copy(), f.samplerate, f"{f.format}/{f.subtype}".lower()


def _decode_pyav(path: Path) -> tuple[np.ndarray, int, str, int | None]:
    """Decode with FFmpeg; returns samples `[C, N]`, rate, codec and the stream's declared frames (if any)."""
    import av

    chunks: list[np.ndarray] = []
    with open(path, "rb") as raw, av.open(raw) as container:
        if not container.streams.audio:
            raise RejectError("not_audio", "the container has no audio stream")
        stream = container.streams.audio[0]
        rate = stream.rate
        declared = int(stream.duration * stream.time_base * rate) if stream.duration else None
        # Planar float keeps channels apart and converts integer PCM exactly (x / 2^(bits-1)).
        resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=rate)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
        except av.error.FFmpegError as e:
            decoded = sum(c.shape[1] for c in chunks)
            if declared and decoded < declared:
                raise RejectError("truncated", f"decoded {decoded} of {declared} declared frames ({e})") from e
            raise RejectError("decode_error", str(e)) from e
        codec = stream.codec_context.name
    if not chunks:
        raise RejectError("decode_error", "no audio frames decoded")
    return np.concatenate(chunks, axis=1).astype(np.float32), rate, codec, declared


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
    """Decode a file to float32 `[C, N]` at its own rate, refusing empty, non-audio, truncated or broken files."""
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

    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        try:
            samples, rate, codec = _decode_soundfile(path)
            return DecodedAudio(samples, rate, codec)
        except (sf.LibsndfileError, RuntimeError):
            pass  # FFmpeg is more lenient and names truncation precisely; let it have a go.
    try:
        samples, rate, codec, declared = _decode_pyav(path)
    except RejectError:
        raise
    except Exception as e:  # FFmpeg raises many exception types for garbage input.
        raise RejectError("decode_error", f"{type(e).__name__}: {e}") from e
    if declared and container == "flac" and samples.shape[1] < declared:
        raise RejectError("truncated", f"decoded {samples.shape[1]} of {declared} declared frames")
    return DecodedAudio(samples, rate, codec)


def check_content(audio: DecodedAudio, *, min_seconds: float, silence_dbfs: float) -> None:
    """Refuse non-finite samples, digital silence and clips shorter than `min_seconds`."""
    if not np.isfinite(audio.samples).all():
        bad = int((~np.isfinite(audio.samples)).sum())
        raise RejectError("non_finite", f"{bad} NaN/inf samples")
    peak = float(np.abs(audio.samples).max()) if audio.samples.size else 0.0
    if peak <= 10 ** (silence_dbfs / 20):
        raise RejectError("silent", f"peak {peak:.2e} is at or below {silence_dbfs} dBFS")
    if audio.seconds < min_seconds:
        raise RejectError("too_short", f"{audio.seconds:.3f} s < {min_seconds} s")


def clipping_note(audio: DecodedAudio) -> str | None:
    """A note for float audio that peaks above full scale (it clips on any fixed-point export), else None."""
    peak = float(np.abs(audio.samples).max()) if audio.samples.size else 0.0
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


def convert_channels(audio: DecodedAudio, channels: int) -> DecodedAudio:
    """Mono models get the channel mean; stereo models get mono duplicated and >2 channels downmixed.

    The downmix of a 6-channel file assumes the WAV/SMPTE 5.1 order (FL, FR, FC, LFE, BL, BR) and the ITU-R BS.775
    coefficients (centre and surrounds at -3 dB, LFE dropped); other layouts average even channels into the left and
    odd channels into the right, which keeps the usual L/R pairing of multichannel stems.
    """
    x = audio.samples
    c = x.shape[0]
    notes = list(audio.notes)
    if channels == 1:
        if c > 1:
            x = x.mean(axis=0, keepdims=True)
            notes.append(f"downmixed {c} -> 1 channel (mean)")
    elif channels == 2:
        if c == 1:
            x = np.concatenate([x, x])
            notes.append("mono duplicated to 2 channels")
        elif c == 6:
            g = np.float32(1 / np.sqrt(2))
            left = x[0] + g * x[2] + g * x[4]
            right = x[1] + g * x[2] + g * x[5]
            x = np.stack([left, right]) / np.float32(1 + 2 * g)
            notes.append("downmixed 6 -> 2 channels (ITU 5.1)")
        elif c > 2:
            x = np.stack([x[0::2].mean(axis=0), x[1::2].mean(axis=0)])
            notes.append(f"downmixed {c} -> 2 channels (even/odd mean)")
    else:
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    return DecodedAudio(np.ascontiguousarray(x, dtype=np.float32), audio.sample_rate, audio.codec, notes)
