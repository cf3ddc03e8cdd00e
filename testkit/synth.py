"""`mgft synth-catalog`: synthesize a small licensed (CC0-1.0) stereo music catalog for demos and tests, numpy only.

    mgft synth-catalog demo/catalog --tracks 12 --seconds 20 [--seed 0] [--bad-files]

Every track is procedural music with a real harmonic content: a chord progression in a major or minor key, a melody
drawn from the scale, a bass line on the chord roots and (usually) drums on the beat grid. Tempo, key, instruments,
stereo placement and mood vary per track, and each track's audiocraft-style sidecar `.json` describes exactly what was
rendered, so captions are truthful. The catalog deliberately exercises what a prep must handle: 44.1 and 48 kHz,
WAV (PCM_16 / PCM_24), FLAC and Ogg Vorbis, a few mono files, durations around the requested length, odd file names
(spaces, dots, unicode, nested folders) and tracks whose title/artist/genre live in embedded tags instead of the
sidecar. `--bad-files` adds a `bad/` folder with one input of each kind a prep must refuse.

Everything is driven by `numpy.random.default_rng(seed)`: the same seed gives the same audio and sidecars (WAV and
FLAC bytes are identical; Ogg files decode to identical samples but libsndfile gives each Ogg stream a random serial
number, so their bytes differ).
"""

from __future__ import annotations

import io
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

LICENSE = "CC0-1.0"
PEAK_DBFS = -1.0
BAD_DIR = "bad"
BAD_SAMPLE_RATE = 44_100
BAD_FILES = (
    "empty.wav",
    "truncated.wav",
    "not-audio.mp3",
    "nan.wav",
    "silence.flac",
    "too-short.wav",
    "duplicate.flac",
    "no-license.wav",
)
"""Names of the inputs written under `bad/` by `write_bad_files`, one per kind of refusal."""

FAST_BPM = 110
"""Tempo from which a track counts as fast (drives mood and genre)."""
CENTER_WIDTH = 0.25
"""Pans with an absolute value up to this are described as "in the center"."""

NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
SCALES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
}
# Scale-degree progressions (0 = tonic), one chord per bar; classic pop/film loops so the harmony reads as the key.
PROGRESSIONS: dict[str, tuple[tuple[int, ...], ...]] = {
    "major": ((0, 4, 5, 3), (0, 3, 4, 0), (0, 5, 3, 4)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6)),
}
MOODS: dict[tuple[str, bool], tuple[str, ...]] = {
    ("major", True): ("upbeat", "happy"),
    ("major", False): ("relaxed", "warm"),
    ("minor", True): ("dark", "energetic"),
    ("minor", False): ("melancholic", "calm"),
}
LEADS: dict[str, tuple[str, str]] = {
    "pluck": ("a plucked lead", "plucked synth"),
    "fm": ("an FM bell lead", "fm synth"),
}
PADS: dict[str, tuple[str, str]] = {"sine": ("a soft sine pad", "sine pad"), "saw": ("a warm saw pad", "saw pad")}
STYLES: dict[str, dict[str, Any]] = {
    "bright": {"mode": "major", "lead": "pluck", "pad": "sine", "drums": True},
    "dark": {"mode": "minor", "lead": "fm", "pad": "saw", "drums": False},
}
"""Named styles: each fixes the mode and the instruments, so two styles sound (and tokenize) clearly apart. The demo
pretrains its base model on one style and fine-tunes it on the other; tempo, key, melody and stereo placement still
vary within a style."""

# (soundfile format, subtype, suffix) cycled by track index so every format appears once tracks >= 4.
FORMATS = (("FLAC", "PCM_16", ".flac"), ("WAV", "PCM_16", ".wav"), ("OGG", "VORBIS", ".ogg"), ("WAV", "PCM_24", ".wav"))
MONO_EVERY = 6
"""Track i is mono when i % MONO_EVERY == 3 (the first one is track 3, so any catalog of 4+ tracks has one)."""
TAGGED_INDICES = (5, 8)
"""Tracks whose title/artist/genre are embedded tags (WAV and FLAC: PyAV reads those back at container level)."""

FOLDERS = ("", "album one/", "ünïcode dir/", "", "album one/disc.2/", "")
NAME_PATTERNS = ("{nn} {title}", "{title}.v2 – take {n}", "Café {title} {nn}", "{nn}. {title} (live)", "{snake}_{nn}")
ADJECTIVES = ("Velvet", "Neon", "Quiet", "Golden", "Hollow", "Distant", "Paper", "Silver", "Midnight", "Amber")
NOUNS = ("Horizon", "Rain", "Circuit", "Harbor", "Garden", "Signal", "Lanterns", "Tides", "Echoes", "Skyline")
ARTISTS = ("Numpy Quartet", "The Sine Collective", "Karplus & Strong", "Lo Pass Filter", "Café Oscillator")

STEM_GAINS = {"lead": 0.35, "pad": 0.18, "bass": 0.4, "drums": 0.55}


@dataclass(frozen=True)
class TrackSpec:
    """Everything that determines one synthesized track: what is rendered, how it is written and described.

    Attributes:
        index: Position in the catalog (0-based).
        relpath: Audio path relative to the catalog root (POSIX separators).
        title: Track title.
        artist: Artist name.
        bpm: Tempo in beats per minute; every note and drum hit sits on this grid.
        tonic: Pitch class of the key's tonic (0 = C).
        mode: "major" or "minor".
        progression: Scale degrees of the chords, one per bar, looped.
        lead: Lead instrument kind, a key of `LEADS`.
        pad: Pad instrument kind, a key of `PADS`.
        drums: Whether the track has drums.
        lead_pan: Lead position in [-1, 1] (-1 = hard left).
        hat_pan: Hi-hat position in [-1, 1].
        sample_rate: Sample rate of the written file.
        channels: 1 (mono downmix) or 2.
        format: soundfile container format ("WAV", "FLAC" or "OGG").
        subtype: soundfile subtype ("PCM_16", "PCM_24" or "VORBIS").
        frames: Length in samples.
        tagged: Whether title/artist/genre are embedded tags instead of sidecar fields.
        seed: Seed of the rendering RNG (melody, noise).
    """

    index: int
    relpath: str
    title: str
    artist: str
    bpm: int
    tonic: int
    mode: str
    progression: tuple[int, ...]
    lead: str
    pad: str
    drums: bool
    lead_pan: float
    hat_pan: float
    sample_rate: int
    channels: int
    format: str
    subtype: str
    frames: int
    tagged: bool
    seed: int

    @property
    def duration(self) -> float:
        """Exact duration in seconds."""
        return self.frames / self.sample_rate

    @property
    def key(self) -> str:
        """Key as written in captions, e.g. "A minor"."""
        return f"{NOTE_NAMES[self.tonic]} {self.mode}"

    @property
    def fast(self) -> bool:
        """Whether the tempo counts as fast."""
        return self.bpm >= FAST_BPM

    @property
    def moods(self) -> list[str]:
        """Moods implied by mode and tempo."""
        return list(MOODS[(self.mode, self.fast)])

    @property
    def genre(self) -> str:
        """Genre implied by drums, tempo and pad."""
        if not self.drums:
            return "ambient"
        if not self.fast:
            return "downtempo"
        return "synthwave" if self.pad == "saw" else "electronic"

    @property
    def instruments(self) -> list[str]:
        """Short instrument names, in mix order."""
        names = [LEADS[self.lead][1], PADS[self.pad][1], "bass"]
        return names + ["drums"] if self.drums else names


def plan_catalog(tracks: int, seconds: float, seed: int = 0, style: str | None = None) -> list[TrackSpec]:
    """Draw the parameters of every track of a catalog, deterministically from `seed`.

    Args:
        tracks: Number of tracks.
        seconds: Mean duration; each track lasts between 0.6 and 1.4 times this.
        seed: Seed of `numpy.random.default_rng`.
        style: A key of `STYLES` to fix mode and instruments (None: every track draws its own). The random draws
            are the same either way, so a style only overrides what it names.

    Returns:
        One `TrackSpec` per track, in catalog order.
    """
    if tracks < 1:
        raise ValueError(f"tracks must be >= 1, got {tracks}")
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if style is not None and style not in STYLES:
        raise ValueError(f"style must be one of {sorted(STYLES)}, got {style!r}")
    rng = np.random.default_rng(seed)
    # Stratified draws so any catalog of 2+ tracks has tracks both shorter and longer than `seconds`.
    fractions = rng.permutation((np.arange(tracks) + rng.uniform(size=tracks)) / tracks)
    fixed = STYLES[style] if style is not None else {}
    return [_plan_track(rng, i, seconds * (0.6 + 0.8 * fractions[i]), fixed) for i in range(tracks)]


def _plan_track(rng: np.random.Generator, index: int, duration: float, fixed: dict[str, Any]) -> TrackSpec:
    """Draw one track's musical parameters; layout (format, rate, channels, tags) follows from its index.

    `fixed` (a style) overrides drawn values after they are drawn, so the rest of the stream does not move.
    """
    mode = fixed.get("mode", str(rng.choice(["major", "minor"])))
    progressions = PROGRESSIONS[mode]
    title = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    fmt, subtype, suffix = FORMATS[index % len(FORMATS)]
    # Offsetting by index // 4 makes every (format, rate) pair appear within eight tracks.
    sample_rate = 48_000 if (index + index // len(FORMATS)) % 2 else 44_100
    return TrackSpec(
        index=index,
        relpath=_track_path(index, title, suffix),
        title=title,
        artist=str(rng.choice(ARTISTS)),
        bpm=int(rng.integers(68, 141)),
        tonic=int(rng.integers(0, 12)),
        mode=mode,
        progression=progressions[int(rng.integers(len(progressions)))],
        lead=fixed.get("lead", str(rng.choice(list(LEADS)))),
        pad=fixed.get("pad", str(rng.choice(list(PADS)))),
        drums=fixed.get("drums", bool(rng.uniform() < 0.8)),
        # Clear-cut positions (left / center / right) so the caption's wording is never borderline.
        lead_pan=round(float(rng.choice([-1, 0, 1]) * rng.uniform(0.4, 0.7)), 3),
        hat_pan=round(float(rng.choice([-1, 0, 1]) * rng.uniform(0.35, 0.6)), 3),
        sample_rate=sample_rate,
        channels=1 if index % MONO_EVERY == 3 else 2,
        format=fmt,
        subtype=subtype,
        frames=round(duration * sample_rate),
        tagged=index in TAGGED_INDICES,
        seed=int(rng.integers(2**31)),
    )


def _track_path(index: int, title: str, suffix: str) -> str:
    """Relative path with an odd-but-legal name; the track number keeps stems (and so sidecars) unique."""
    nn = f"{index + 1:02d}"
    pattern = NAME_PATTERNS[index % len(NAME_PATTERNS)]
    name = pattern.format(nn=nn, n=index + 1, title=title, snake=title.lower().replace(" ", "_"))
    return f"{FOLDERS[index % len(FOLDERS)]}{name}{suffix}"


# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------


def midi_to_hz(midi: float) -> float:
    """Equal-tempered frequency of a MIDI note number (A4 = 69 = 440 Hz)."""
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def _degree_to_semitones(degree: int, scale: tuple[int, ...]) -> int:
    """Semitones above the tonic of a scale degree, degrees >= 7 wrapping into higher octaves."""
    return 12 * (degree // len(scale)) + scale[degree % len(scale)]


def pan_gains(pan: float) -> tuple[float, float]:
    """Constant-power (left, right) gains for a pan in [-1, 1], so moving a source does not change its loudness."""
    theta = (pan + 1.0) * math.pi / 4
    return math.cos(theta), math.sin(theta)


def _pan(mono: np.ndarray, pan: float, gain: float = 1.0) -> np.ndarray:
    """Place a mono signal in the stereo field at a level: `[frames] -> [frames, 2]`."""
    left, right = pan_gains(pan)
    return mono[:, None] * np.array([gain * left, gain * right])


def _envelope(length: int, sr: int, attack: float, release: float) -> np.ndarray:
    """Linear attack/release envelope of `length` samples; ramps keep note edges click-free."""
    n = np.arange(length, dtype=np.float64)
    attack_n = max(1.0, attack * sr)
    release_n = max(1.0, release * sr)
    return np.clip(np.minimum(n / attack_n, (length - n) / release_n), 0.0, 1.0)


def _add(dst: np.ndarray, signal: np.ndarray, start: int) -> None:
    """Mix `signal` into `dst` at sample `start`, dropping whatever falls past the end."""
    if start >= len(dst):
        return
    end = min(len(dst), start + len(signal))
    dst[start:end] += signal[: end - start]


def _karplus_strong(freq: float, length: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Plucked-string tone: a noise burst recirculated through an averaging delay line.

    The recurrence y[n] = c (y[n-P] + y[n-P-1]) only reads samples at least P back, so it runs one period (P samples)
    per numpy operation instead of one sample per Python step.
    """
    period = max(2, round(sr / freq - 0.5))  # the two-tap average adds half a sample of delay
    out = np.zeros(length + 1)  # out[0] is the y[-1] = 0 the first averaged block reads
    burst = rng.uniform(-1.0, 1.0, period)
    first = min(period, length)
    out[1 : first + 1] = 0.5 * (burst + np.roll(burst, 1))[:first]
    coeff = 0.5 * 0.996
    for start in range(period + 1, length + 1, period):
        end = min(start + period, length + 1)
        out[start:end] = coeff * (out[start - period : end - period] + out[start - period - 1 : end - period - 1])
    return out[1:] * _envelope(length, sr, 0.002, 0.02)


def _fm_bell(freq: float, length: int, sr: int) -> np.ndarray:
    """FM tone with a 1:1 carrier/modulator ratio (harmonic partials) whose brightness decays like a bell."""
    t = np.arange(length) / sr
    index = 2.5 * np.exp(-t / 0.15)
    tone = np.sin(2 * np.pi * freq * t + index * np.sin(2 * np.pi * freq * t))
    return tone * np.exp(-t / 0.5) * _envelope(length, sr, 0.004, 0.03)


WAVETABLE_SIZE = 4096


def _wavetable(kind: str) -> np.ndarray:
    """One cycle of a pad waveform: a sine with a soft octave, or a saw band-limited to six partials (no aliasing)."""
    partials = [(1, 1.0), (2, 0.25)] if kind == "sine" else [(k, 1.0 / k) for k in range(1, 7)]
    phase = np.arange(WAVETABLE_SIZE) / WAVETABLE_SIZE
    return sum(amp * np.sin(2 * np.pi * harmonic * phase) for harmonic, amp in partials)


def _pad_tone(freqs: list[float], length: int, sr: int, kind: str) -> np.ndarray:
    """Sustained chord read from a wavetable: one lookup per note instead of one sine per partial."""
    table = _wavetable(kind)
    cycles = np.arange(length) / sr
    tone = np.zeros(length)
    for freq in freqs:
        tone += table[(cycles * freq * WAVETABLE_SIZE).astype(np.int64) % WAVETABLE_SIZE]
    return tone / len(freqs)


def _bass_tone(freq: float, length: int, sr: int) -> np.ndarray:
    """Round bass note: sine plus second harmonic, gently saturated, with a plucky decay."""
    t = np.arange(length) / sr
    tone = np.tanh(1.5 * (np.sin(2 * np.pi * freq * t) + 0.4 * np.sin(4 * np.pi * freq * t)))
    return tone * np.exp(-t / 0.6) * _envelope(length, sr, 0.005, 0.03)


def _kick(sr: int) -> np.ndarray:
    """Kick drum: a sine whose pitch sweeps from ~150 Hz down to 50 Hz."""
    t = np.arange(int(0.35 * sr)) / sr
    freq = 50.0 + 100.0 * np.exp(-t / 0.03)
    phase = 2 * np.pi * np.cumsum(freq) / sr
    return np.sin(phase) * np.exp(-t / 0.12) * _envelope(len(t), sr, 0.001, 0.02)


def _snare(sr: int, rng: np.random.Generator) -> np.ndarray:
    """Snare: band-passed noise (smoothed, then differenced) over a short 190 Hz body."""
    t = np.arange(int(0.25 * sr)) / sr
    noise = np.convolve(rng.standard_normal(len(t) + 1), np.ones(4) / 4, mode="same")
    rattle = np.diff(noise) * np.exp(-t / 0.07)
    body = 0.6 * np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.05)
    return (rattle / (np.abs(rattle).max() + 1e-9) + body) * _envelope(len(t), sr, 0.001, 0.02)


def _hat(sr: int, rng: np.random.Generator) -> np.ndarray:
    """Closed hi-hat: doubly differenced (high-passed) noise with a very short decay."""
    t = np.arange(int(0.08 * sr)) / sr
    hiss = np.diff(rng.standard_normal(len(t) + 2), n=2) * np.exp(-t / 0.015)
    return 0.35 * hiss / (np.abs(hiss).max() + 1e-9) * _envelope(len(t), sr, 0.0005, 0.01)


@dataclass(frozen=True)
class Note:
    """One note on the beat grid.

    Attributes:
        beat: Start, in beats from the top of the track.
        beats: Length in beats.
        midi: MIDI pitch.
    """

    beat: float
    beats: float
    midi: int


def _n_bars(spec: TrackSpec) -> int:
    """Bars (of four beats) needed to cover the whole track."""
    return math.ceil(spec.duration * spec.bpm / 60 / 4)


def _chord_degrees(spec: TrackSpec, bar: int) -> tuple[int, int, int]:
    """Scale degrees of the triad played in `bar`."""
    root = spec.progression[bar % len(spec.progression)]
    return root, root + 2, root + 4


def compose_melody(spec: TrackSpec, rng: np.random.Generator) -> list[Note]:
    """Melody from the scale: chord tones on downbeats, a stepwise random walk in between, a few rests.

    Args:
        spec: The track.
        rng: Source of the melody's choices.

    Returns:
        The lead's notes.
    """
    scale = SCALES[spec.mode]
    base = 60 + spec.tonic
    notes: list[Note] = []
    degree = 0
    for bar in range(_n_bars(spec)):
        chord = _chord_degrees(spec, bar)
        for beat in range(4):
            steps = 1 if rng.uniform() < 0.6 else 2
            for step in range(steps):
                start = bar * 4 + beat + step / steps
                if beat == 0 and step == 0:
                    degree = int(rng.choice(chord))
                else:
                    degree = int(np.clip(degree + rng.choice([-2, -1, 1, 2]), 0, 11))
                if (beat or step) and rng.uniform() < 0.15:
                    continue
                notes.append(Note(start, 1 / steps, base + _degree_to_semitones(degree, scale)))
    return notes


def compose_random_melody(spec: TrackSpec, rng: np.random.Generator) -> list[Note]:
    """One note a beat, each pitch drawn uniformly from the octave above middle C: no scale, no contour, no loop.

    Nothing but the melody says which note comes next, so a melody model can only predict a note change from its
    melody condition (`bench/melody_following.py`).
    """
    return [Note(float(beat), 1.0, 60 + int(rng.integers(12))) for beat in range(_n_bars(spec) * 4)]


def compose_bass(spec: TrackSpec) -> list[Note]:
    """Bass line: the chord root on every beat, the fifth on beat three."""
    scale = SCALES[spec.mode]
    base = 36 + spec.tonic
    notes = []
    for bar in range(_n_bars(spec)):
        root, _, fifth = _chord_degrees(spec, bar)
        for beat in range(4):
            degree = fifth if beat == 2 else root
            notes.append(Note(bar * 4 + beat, 0.9, base + _degree_to_semitones(degree, scale)))
    return notes


def compose_chords(spec: TrackSpec) -> list[list[Note]]:
    """Pad voicings: one root-position triad per bar, around C3."""
    scale = SCALES[spec.mode]
    base = 48 + spec.tonic
    return [
        [Note(bar * 4, 4.0, base + _degree_to_semitones(d, scale)) for d in _chord_degrees(spec, bar)]
        for bar in range(_n_bars(spec))
    ]


def drum_hits(spec: TrackSpec) -> dict[str, list[float]]:
    """Beat positions of each drum voice: every beat carries a kick or a snare, hats play eighths.

    Fast tracks get four-on-the-floor kicks (with snares doubling beats two and four); slow ones alternate kick and
    snare.
    """
    n_beats = _n_bars(spec) * 4
    beats = np.arange(n_beats)
    kick = beats if spec.fast else beats[beats % 2 == 0]
    snare = beats[beats % 4 % 2 == 1]
    hats = np.arange(2 * n_beats) / 2
    return {"kick": kick.tolist(), "snare": snare.tolist(), "hat": hats.tolist()}


def _beat_sample(spec: TrackSpec, beat: float) -> int:
    """Sample index of a position on the beat grid (or a length in samples, given a length in beats)."""
    return round(beat * 60 / spec.bpm * spec.sample_rate)


def _render_notes(spec: TrackSpec, notes: list[Note], voice: Callable[[float, int], np.ndarray]) -> np.ndarray:
    """Render a mono part by placing `voice(freq, length)` for each note, reusing identical notes."""
    out = np.zeros(spec.frames)
    cache: dict[tuple[int, int], np.ndarray] = {}
    for note in notes:
        start = _beat_sample(spec, note.beat)
        # Lengths from the note's beats alone (not end - start) so equal notes are equal arrays and hit the cache.
        length = _beat_sample(spec, note.beats)
        if start >= spec.frames:
            break
        key = (note.midi, length)
        if key not in cache:
            cache[key] = voice(midi_to_hz(note.midi), length)
        _add(out, cache[key], start)
    return out


def _render_lead(spec: TrackSpec, rng: np.random.Generator) -> np.ndarray:
    """Lead stem, mono, before panning."""
    return _render_lead_notes(spec, compose_melody(spec, rng), rng)


def _render_lead_notes(spec: TrackSpec, notes: list[Note], rng: np.random.Generator) -> np.ndarray:
    """`notes` on the track's lead instrument, mono, before panning."""
    sr = spec.sample_rate
    if spec.lead == "pluck":
        # Every pluck gets its own noise burst, as a real string would, so no caching across notes.
        out = np.zeros(spec.frames)
        for note in notes:
            start = _beat_sample(spec, note.beat)
            length = _beat_sample(spec, note.beats)
            if start >= spec.frames:
                break
            _add(out, _karplus_strong(midi_to_hz(note.midi), length, sr, rng), start)
        return out
    return _render_notes(spec, notes, lambda freq, length: _fm_bell(freq, length, sr))


def _render_pad(spec: TrackSpec) -> np.ndarray:
    """Pad stem, already stereo: left and right are detuned by +-4 cents, which spreads it across the field."""
    sr = spec.sample_rate
    sides = []
    for cents in (-4.0, 4.0):
        out = np.zeros(spec.frames)
        cache: dict[tuple[tuple[int, ...], int], np.ndarray] = {}
        for chord in compose_chords(spec):
            start = _beat_sample(spec, chord[0].beat)
            # Overlap the next bar slightly so chord changes crossfade instead of gapping.
            length = _beat_sample(spec, chord[0].beats) + int(0.15 * sr)
            key = (tuple(n.midi for n in chord), length)
            if key not in cache:
                freqs = [midi_to_hz(n.midi + cents / 100) for n in chord]
                cache[key] = _pad_tone(freqs, length, sr, spec.pad) * _envelope(length, sr, 0.15, 0.2)
            _add(out, cache[key], start)
        sides.append(out)
    stereo = np.stack(sides, axis=1)
    stereo *= math.sqrt(0.5) * STEM_GAINS["pad"]  # matches the level a centered constant-power pan would give
    return stereo


def _render_drums(spec: TrackSpec, rng: np.random.Generator) -> np.ndarray:
    """Drum stem, stereo: kick and snare in the center, hats at `hat_pan`."""
    sr = spec.sample_rate
    center = np.zeros(spec.frames)
    hats = np.zeros(spec.frames)
    voices = {"kick": _kick(sr), "snare": _snare(sr, rng), "hat": _hat(sr, rng)}
    for name, beats in drum_hits(spec).items():
        dst = hats if name == "hat" else center
        for beat in beats:
            _add(dst, voices[name], _beat_sample(spec, beat))
    stereo = _pan(center, 0.0, STEM_GAINS["drums"])
    stereo += _pan(hats, spec.hat_pan, STEM_GAINS["drums"])
    return stereo


def render_stems(spec: TrackSpec) -> dict[str, np.ndarray]:
    """Render each instrument of a track as a stereo stem, panned and at its mix level.

    Args:
        spec: The track.

    Returns:
        `{"lead", "pad", "bass"[, "drums"]}` -> float64 `[frames, 2]`; their sum is the (unnormalized) mix.
    """
    rng = np.random.default_rng(spec.seed)
    sr = spec.sample_rate
    bass = _render_notes(spec, compose_bass(spec), lambda f, n: _bass_tone(f, n, sr))
    stems = {
        "lead": _pan(_render_lead(spec, rng), spec.lead_pan, STEM_GAINS["lead"]),
        "pad": _render_pad(spec),
        "bass": _pan(bass, 0.0, STEM_GAINS["bass"]),
    }
    if spec.drums:
        stems["drums"] = _render_drums(spec, rng)
    return stems


def render_random_melody(spec: TrackSpec) -> np.ndarray:
    """The track's lead instrument alone playing `compose_random_melody`, panned as its lead, peak at `PEAK_DBFS`.

    Returns:
        float32 `[frames, 2]`.
    """
    rng = np.random.default_rng(spec.seed)
    lead = _render_lead_notes(spec, compose_random_melody(spec, rng), rng)
    fade = _envelope(spec.frames, spec.sample_rate, 0.005, min(0.5, spec.duration / 4))  # as `render_track`'s
    mix = _pan(lead, spec.lead_pan) * fade[:, None]
    return (mix * (10 ** (PEAK_DBFS / 20) / max(float(np.abs(mix).max()), 1e-9))).astype(np.float32)


def render_track(spec: TrackSpec) -> np.ndarray:
    """Mix a track's stems, fade the ends, downmix if mono and normalize the peak to `PEAK_DBFS`.

    Args:
        spec: The track.

    Returns:
        float32 `[frames, channels]`.
    """
    stems = list(render_stems(spec).values())
    mix = stems[0]
    for stem in stems[1:]:
        mix += stem  # in place: these are 48 kHz stereo float64 arrays, and copies dominate the run time
    # A short fade-in and a half-second fade-out so the cut at the track's length does not click.
    mix *= _envelope(spec.frames, spec.sample_rate, 0.005, min(0.5, spec.duration / 4))[:, None]
    if spec.channels == 1:
        mix = mix.mean(axis=1, keepdims=True)
    peak = float(np.abs(mix).max())
    target = 10 ** (PEAK_DBFS / 20)
    return (mix * (target / peak if peak > 0 else 1.0)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------------------------------


def _position(pan: float) -> str:
    """Words for a pan position."""
    if pan < -CENTER_WIDTH:
        return "panned left"
    if pan > CENTER_WIDTH:
        return "panned right"
    return "in the center"


def _join(parts: list[str]) -> str:
    """English list: "a, b and c"."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def describe(spec: TrackSpec) -> str:
    """A caption that states what was actually rendered: mood, genre, key, tempo, instruments and their placement.

    Args:
        spec: The track.

    Returns:
        E.g. "A dark, energetic electronic track in A minor at 124 BPM: a plucked lead panned left, a warm saw pad
        spread wide, a deep bass line in the center and steady drums with hi-hats panned right."
    """
    stereo = spec.channels == 2
    lead = LEADS[spec.lead][0] + (f" {_position(spec.lead_pan)}" if stereo else "")
    parts = [lead, PADS[spec.pad][0] + (" spread wide" if stereo else ""), "a deep bass line"]
    if stereo:
        parts[-1] += " in the center"
    if spec.drums:
        hats = f" with hi-hats {_position(spec.hat_pan)}" if stereo and abs(spec.hat_pan) > CENTER_WIDTH else ""
        parts.append("steady drums" + hats)
    mood = ", ".join(spec.moods)
    article = "An" if mood[0] in "aeiou" else "A"
    mono = ", mixed to mono" if not stereo else ""
    return f"{article} {mood} {spec.genre} track in {spec.key} at {spec.bpm} BPM{mono}: {_join(parts)}."


def sidecar(spec: TrackSpec) -> dict[str, Any]:
    """The audiocraft-style `.json` written next to a track.

    Tagged tracks get only their license: their title, artist and genre are embedded tags, and they carry no
    description (as a catalog with partial metadata would).

    Args:
        spec: The track.

    Returns:
        JSON-serializable metadata.
    """
    if spec.tagged:
        return {"license": LICENSE}
    path = Path(spec.relpath)
    return {
        "title": spec.title,
        "artist": spec.artist,
        "description": describe(spec),
        "genre": spec.genre,
        "bpm": spec.bpm,
        "key": spec.key.lower(),  # audiocraft lowercases keys
        "moods": spec.moods,
        "instrument": ", ".join(spec.instruments),
        "keywords": [spec.genre, spec.mode, *spec.moods, "instrumental", "synthesized"],
        "name": path.stem,
        "license": LICENSE,
        "duration": round(spec.duration, 6),
        "sample_rate": spec.sample_rate,
        "file_extension": path.suffix.lstrip("."),
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON deterministically, keeping unicode readable."""
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def sidecar_path(audio: Path) -> Path:
    """Sidecar of an audio file: same folder and stem, `.json` suffix (audiocraft's `with_suffix('.json')`)."""
    return audio.with_suffix(".json")


def write_track(root: Path, spec: TrackSpec) -> Path:
    """Render a track and write it with its sidecar (and tags, for tagged tracks) under `root`.

    Args:
        root: Catalog root.
        spec: The track.

    Returns:
        Path of the audio file.
    """
    path = root / spec.relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = render_track(spec)
    with sf.SoundFile(path, "w", spec.sample_rate, spec.channels, spec.subtype, format=spec.format) as f:
        if spec.tagged:
            f.title, f.artist, f.genre = spec.title, spec.artist, spec.genre
        f.write(audio)
    _write_json(sidecar_path(path), sidecar(spec))
    return path


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------------------------


def _tone(seconds: float, freq: float = 440.0) -> np.ndarray:
    """A plain stereo sine at -6 dBFS and `BAD_SAMPLE_RATE`: valid audio for bad inputs whose defect is elsewhere."""
    t = np.arange(round(seconds * BAD_SAMPLE_RATE)) / BAD_SAMPLE_RATE
    mono = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.stack([mono, mono], axis=1).astype(np.float32)


def _wav_bytes(audio: np.ndarray, sr: int, subtype: str) -> bytes:
    """Encode audio as a WAV file in memory."""
    buf = io.BytesIO()
    sf.write(buf, audio, sr, subtype=subtype, format="WAV")
    return buf.getvalue()


def _bad_sidecar(name: str, reason: str) -> dict[str, Any]:
    """Sidecar with a license, so the license is never why a bad input is refused."""
    return {"title": name, "description": f"Deliberately bad input: {reason}.", "license": LICENSE}


def _write_empty(path: Path) -> None:
    """Zero bytes."""
    path.write_bytes(b"")


def _write_truncated(path: Path) -> None:
    """A valid 3 s PCM_16 WAV cut to 60% of its bytes: the header still claims the full data chunk."""
    data = _wav_bytes(_tone(3.0), BAD_SAMPLE_RATE, "PCM_16")
    path.write_bytes(data[: int(len(data) * 0.6)])


def _write_not_audio(path: Path) -> None:
    """Plain text behind an audio extension."""
    path.write_text("This is not audio, whatever its extension says.\n", encoding="utf-8")


def _write_nan(path: Path) -> None:
    """A float WAV whose second second starts with a run of NaN samples."""
    audio = _tone(3.0)
    audio[BAD_SAMPLE_RATE : BAD_SAMPLE_RATE + 1000] = np.nan
    sf.write(path, audio, BAD_SAMPLE_RATE, subtype="FLOAT")


def _write_silence(path: Path) -> None:
    """Three seconds of digital zeros."""
    sf.write(path, np.zeros_like(_tone(3.0)), BAD_SAMPLE_RATE)


def _write_too_short(path: Path) -> None:
    """0.3 s of otherwise fine audio."""
    sf.write(path, _tone(0.3), BAD_SAMPLE_RATE, subtype="PCM_16")


def _write_good_tone(path: Path) -> None:
    """Three seconds of fine audio (its sidecar is what is wrong)."""
    sf.write(path, _tone(3.0), BAD_SAMPLE_RATE, subtype="PCM_16")


BAD_WRITERS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "empty.wav": ("a zero-byte file", _write_empty),
    "truncated.wav": ("a WAV cut to 60% of its bytes", _write_truncated),
    "not-audio.mp3": ("a text file named .mp3", _write_not_audio),
    "nan.wav": ("a float WAV containing NaN samples", _write_nan),
    "silence.flac": ("three seconds of digital silence", _write_silence),
    "too-short.wav": ("0.3 seconds of audio", _write_too_short),
    "no-license.wav": ("a good tone whose sidecar has no license", _write_good_tone),
}
"""Bad input name -> (why it is bad, writer); `duplicate.flac` is a copy, handled apart."""


def write_bad_files(root: Path, duplicate_of: Path) -> list[Path]:
    """Write `root/bad/` with one input of each kind a prep must refuse (`BAD_FILES`), each with a sidecar.

    Every sidecar carries a license except `no-license.json`, so the license is never the reason for the others.

    Args:
        root: Catalog root.
        duplicate_of: A good catalog FLAC (with its sidecar) to copy byte for byte as `duplicate.flac`.

    Returns:
        Paths of the bad audio files, in `BAD_FILES` order.
    """
    bad = root / BAD_DIR
    bad.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in BAD_FILES:
        path = bad / name
        if name == "duplicate.flac":
            shutil.copyfile(duplicate_of, path)
            shutil.copyfile(sidecar_path(duplicate_of), sidecar_path(path))
        else:
            reason, write = BAD_WRITERS[name]
            write(path)
            meta = _bad_sidecar(path.stem, reason)
            if name == "no-license.wav":
                del meta["license"]
            _write_json(sidecar_path(path), meta)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------------------------
# Command
# ---------------------------------------------------------------------------------------------------------------


def synth_catalog(
    out: str, *, tracks: int = 12, seconds: float = 20.0, seed: int = 0, bad_files: bool = False,
    style: str | None = None,
) -> dict[str, Any]:
    """Synthesize a licensed (CC0-1.0) procedural music catalog with audiocraft-style sidecars.

    Tracks vary in tempo, key, instruments, stereo placement and mood; files vary in sample rate (44.1/48 kHz),
    format (WAV PCM_16/24, FLAC, Ogg Vorbis), channels (about one in six is mono), duration and naming. The same
    seed gives the same catalog.

    Args:
        out: Folder to write the catalog into (created if missing).
        tracks: Number of good tracks.
        seconds: Mean track length in seconds; each track lasts 0.6 to 1.4 times this.
        seed: Random seed; the catalog is a deterministic function of (tracks, seconds, seed).
        bad_files: Also write `bad/` with one input of each kind a prep must refuse (empty, truncated, not audio,
            NaN samples, silence, too short, duplicate, no license).
        style: Fix mode and instruments to one of `STYLES` ("bright": major, plucked lead, sine pad, drums;
            "dark": minor, FM bell lead, saw pad, no drums). Default: every track draws its own.

    Returns:
        `{"tracks": good tracks, "bad_files": bad inputs, "seconds": total good seconds, "out": out}`.
    """
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    specs = plan_catalog(tracks, seconds, seed, style)
    paths = [write_track(root, spec) for spec in specs]
    # Track 0 is always FLAC, matching the duplicate's name.
    bad = write_bad_files(root, paths[0]) if bad_files else []
    total = sum(spec.duration for spec in specs)
    summary = {"tracks": len(specs), "bad_files": len(bad), "seconds": round(total, 3), "out": str(root)}
    print(f"synth-catalog: {len(specs)} tracks ({total:.1f} s) and {len(bad)} bad files in {root}")
    return summary
