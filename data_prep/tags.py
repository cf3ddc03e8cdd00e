"""`mgft prep --auto-tags`: tempo, key and loudness estimated from the audio, for catalogs without descriptions.

- Tempo: librosa's beat tracker (`librosa.beat.beat_track`, dynamic programming over the onset envelope). Beat
  trackers often lock onto half or double the tempo; such an estimate is still written, and flagged: the tempo
  alone cannot tell a 70 BPM ballad from a 140 BPM track counted in half time.
- Key and mode: the Krumhansl-Kessler key profiles (probe-tone ratings of the 12 pitch classes in a major and a
  minor key, Krumhansl 1990) correlated with the track's mean chroma (`librosa.feature.chroma_cqt`); the best of
  the 24 rotations names the key. librosa has the chroma but no key finder: the correlation is the whole method.
- Loudness: integrated loudness in LUFS (ITU-R BS.1770-4, K-weighting and gating) with pyloudnorm.

Estimates fill only the metadata fields a sidecar or catalog row leaves empty and are recorded as estimated
(`metadata_sources`, and the manifest's `estimates`), so a human label always wins and a reader can tell them apart.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ANALYSIS_RATE = 22050
"""librosa's default rate: the beat tracker and CQT chroma are tuned for it; tempo and key need no more."""
MAX_SECONDS = 120.0
"""Estimate from at most the first two minutes: enough for a stable tempo and key, bounded cost per track."""

NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# Krumhansl-Kessler probe-tone profiles, tonic first (Krumhansl, Cognitive Foundations of Musical Pitch, 1990).
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def estimate_key(chroma: np.ndarray) -> tuple[str, float]:
    """The key whose rotated profile correlates best with the mean chroma, e.g. ("A minor", 0.83).

    Args:
        chroma: `[12, frames]` pitch-class energies, C first.

    Returns:
        (key name as captions write it, Pearson correlation of the winner in [-1, 1]).
    """
    mean = chroma.mean(axis=1)  # [12]
    best = ("", -2.0)
    for mode, profile in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE)):
        for tonic in range(12):
            r = float(np.corrcoef(mean, np.roll(profile, tonic))[0, 1])
            if r > best[1]:
                best = (f"{NOTE_NAMES[tonic]} {mode}", r)
    return best


def estimate_tags(audio: np.ndarray, sample_rate: int) -> dict[str, Any]:
    """Tempo, key and loudness of a track.

    Args:
        audio: `[C, N]` float samples.
        sample_rate: Their rate.

    Returns:
        `{"bpm": float, "key": str, "key_confidence": float, "lufs": float | None}`; `lufs` is None for a clip too
        short for BS.1770's 400 ms gating blocks.
    """
    import librosa
    import pyloudnorm

    audio = np.asarray(audio, dtype=np.float32)
    try:
        lufs = float(pyloudnorm.Meter(sample_rate).integrated_loudness(audio.T.astype(np.float64)))
    except ValueError:  # shorter than one gating block
        lufs = None
    head = audio[:, : int(MAX_SECONDS * sample_rate)].mean(axis=0)  # [N] mono
    y = librosa.resample(head, orig_sr=sample_rate, target_sr=ANALYSIS_RATE, res_type="soxr_hq")
    tempo, _ = librosa.beat.beat_track(y=y, sr=ANALYSIS_RATE)
    key, confidence = estimate_key(librosa.feature.chroma_cqt(y=y, sr=ANALYSIS_RATE))
    return {"bpm": round(float(np.atleast_1d(tempo)[0]), 1), "key": key, "key_confidence": round(confidence, 3),
            "lufs": None if lufs is None or not np.isfinite(lufs) else round(lufs, 1)}


def caption_from(metadata: dict[str, Any]) -> str | None:
    """A caption for a track with no description, from what is known of it: "An ambient track in A minor at 96 BPM."."""
    genre, key, bpm = metadata.get("genre"), metadata.get("key"), metadata.get("bpm")
    if not (genre or key or bpm):
        return None
    kind = f"{genre} track" if genre else "track"
    text = f"{'An' if kind[0].lower() in 'aeiou' else 'A'} {kind}"
    if key:
        text += f" in {key[0].upper()}{key[1:]}"
    if bpm:
        text += f" at {round(bpm)} BPM"
    return text + "."
