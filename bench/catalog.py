"""Catalog intelligence on synthesized tracks of known tempo and key: how often `--auto-tags` is right, how far apart
`--near-duplicates` puts copies and different recordings, and what each costs per track.

    python bench/catalog.py [--tracks 24] [--seconds 20] [--seed 5]

The synthesizer (`testkit/synth.py`) writes every note and drum hit on the track's BPM grid, in its key, so its
plan is the truth. Prints:
- tempo: estimates within 1% of the truth, octave errors (x2 or x0.5 within 1%), and the rest, with the largest
  error of the estimates within 1%;
- key: exact, the relative key (same notes: the usual confusion of a profile method), the parallel key (same
  tonic), and the rest;
- fingerprints: the bit error of each track's Ogg Vorbis and MP3 re-encode against it (same recording), and of
  every pair of different tracks, against `MAX_BIT_ERROR`;
- milliseconds per track of the tag estimate and of the fingerprint (this machine, one process).
"""

from __future__ import annotations

import argparse
import io
import itertools
import statistics
import time

import numpy as np
import soundfile as sf
import soxr

from data_prep.fingerprint import ITEM_SECONDS, MAX_BIT_ERROR, MAX_SHIFT_SECONDS, bit_error_rate, decode, fingerprint
from data_prep.tags import NOTE_NAMES, estimate_tags
from testkit.synth import plan_catalog, render_track

SAMPLE_RATE = 32000


def _key(tonic: int, mode: str) -> str:
    return f"{NOTE_NAMES[tonic % 12]} {mode}"


def key_relation(estimate: str, tonic: int, mode: str) -> str:
    """exact, relative, parallel or other, for an estimated key name against the truth."""
    relative = _key(tonic + 9, "minor") if mode == "major" else _key(tonic + 3, "major")
    parallel = _key(tonic, "minor" if mode == "major" else "major")
    return {_key(tonic, mode): "exact", relative: "relative", parallel: "parallel"}.get(estimate, "other")


def tempo_relation(estimate: float, truth: float) -> str:
    """within 1%, octave (double or half, within 1%) or other."""
    if abs(estimate / truth - 1) <= 0.01:
        return "within 1%"
    if min(abs(estimate / (2 * truth) - 1), abs(2 * estimate / truth - 1)) <= 0.01:
        return "octave"
    return "other"


def lossy_copy(audio: np.ndarray, rate: int, fmt: str, subtype: str) -> np.ndarray:
    """`audio` [N, C] through an encode/decode in memory, as a catalog's lossy copy would be."""
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format=fmt, subtype=subtype)
    buffer.seek(0)
    decoded, _ = sf.read(buffer, always_2d=True, dtype="float32")
    return decoded


def to_32k(audio: np.ndarray, rate: int) -> np.ndarray:
    """[N, C] at `rate` -> [C, n] at 32 kHz (soxr HQ, as prep resamples) for the estimators."""
    return np.ascontiguousarray(soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ").T, dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracks", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()

    specs = plan_catalog(args.tracks, args.seconds, seed=args.seed)
    tempo, key, tag_ms, print_ms, errors = [], [], [], [], []
    prints: list[np.ndarray] = []
    copies: list[float] = []
    shift = round(MAX_SHIFT_SECONDS / ITEM_SECONDS)
    for spec in specs:
        audio = render_track(spec)
        audio = audio[:, None] if audio.ndim == 1 else audio  # [N, C]
        x = to_32k(audio, spec.sample_rate)
        start = time.perf_counter()
        est = estimate_tags(x, SAMPLE_RATE)
        tag_ms.append(1000 * (time.perf_counter() - start))
        tempo.append(tempo_relation(est["bpm"], float(spec.bpm)))
        errors.append(abs(est["bpm"] / float(spec.bpm) - 1))
        key.append(key_relation(est["key"], spec.tonic, spec.mode))
        start = time.perf_counter()
        encoded = fingerprint([x], SAMPLE_RATE)
        print_ms.append(1000 * (time.perf_counter() - start))
        raw = decode(encoded)
        prints.append(raw)
        for fmt, subtype in (("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")):
            copy = to_32k(lossy_copy(audio, spec.sample_rate, fmt, subtype), spec.sample_rate)
            copies.append(bit_error_rate(raw, decode(fingerprint([copy], SAMPLE_RATE)), shift)[0])
    different = [bit_error_rate(a, b, shift)[0] for a, b in itertools.combinations(prints, 2)]

    n = len(specs)
    print(f"{n} synthesized tracks of {args.seconds:g} s (seed {args.seed}), estimated at 32 kHz")
    print("tempo: " + ", ".join(f"{k} {tempo.count(k)}/{n}" for k in ("within 1%", "octave", "other"))
          + f"; largest error within 1%: {100 * max((e for e in errors if e <= 0.01), default=0):.2f}%")
    print("key:   " + ", ".join(f"{k} {key.count(k)}/{n}" for k in ("exact", "relative", "parallel", "other")))
    print(f"fingerprint bit error, lossy copy vs its source ({len(copies)} copies): max {100 * max(copies):.1f}%, "
          f"median {100 * statistics.median(copies):.1f}%")
    print(f"fingerprint bit error, different tracks ({len(different)} pairs): min {100 * min(different):.1f}%, "
          f"median {100 * statistics.median(different):.1f}%; threshold {100 * MAX_BIT_ERROR:.0f}%")
    print(f"wrong calls at the threshold: {sum(e > MAX_BIT_ERROR for e in copies)} copies missed, "
          f"{sum(e <= MAX_BIT_ERROR for e in different)} different pairs matched")
    print(f"ms per track: tags {statistics.median(tag_ms):.0f} (median), fingerprint {statistics.median(print_ms):.0f}")


if __name__ == "__main__":
    main()
