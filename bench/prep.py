"""Prep speed: real-time factors of the real-size EnCodec 32 kHz and HTDemucs (random weights) on this machine.

    python bench/prep.py [--seconds 10] [--segments 8] [--batch-size 2] [--device cpu] [--stems-segments 2]
    python bench/prep.py --long-minutes 60 [--codec-size tiny|real] [--batch-size 2]   # memory of a long track

Prints, for EnCodec, one segment at a time against the fixed-shape batched path `mgft prep` uses, split into the
SEANet encoder (convs + LSTM) and the residual quantizer; and for melody prep, the HTDemucs stems (resample to
44.1 kHz, separation, back to 32 kHz) and the chroma. RTF here = seconds of audio processed per wall-clock second
(higher is faster). Random weights cost the same FLOPs as trained ones.

`--long-minutes M` instead writes one M-minute stereo 44.1 kHz FLAC and runs `mgft prep` on it in a child process
(30 s segments, stereo, workers 0, so one process holds everything), printing its peak RSS and wall time beside
those of a 2-minute file: prep streams long tracks, so the two peaks should be close.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _timed(fn, repeat: int = 3) -> float:
    """Best of `repeat` timed runs after one warm-up: the least disturbed measurement on a shared machine."""
    fn()  # warm-up: allocator, oneDNN primitive caches
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def time_by_layer_type(module: torch.nn.Module, run) -> dict[str, float]:
    """Seconds spent in each direct child's class (e.g. EncodecConv1d vs EncodecLSTM) during one `run()`."""
    totals: dict[str, float] = {}
    starts: dict[int, float] = {}
    handles = []
    for child in module.children():
        name = type(child).__name__
        handles.append(child.register_forward_pre_hook(lambda m, a: starts.__setitem__(id(m), time.perf_counter())))
        handles.append(child.register_forward_hook(
            lambda m, a, o, name=name: totals.__setitem__(name, totals.get(name, 0.0)
                                                          + time.perf_counter() - starts[id(m)])))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return totals


def bench_encodec(seconds: float, segments: int, batch_size: int, device: str, size: str = "real") -> None:
    from data_prep.codec import CodecEncoder
    from testkit.tiny_models import build_encodec

    # Random weights, codebooks from k-means over the encoder's latents (zero codebooks would make the RVQ trivial).
    model = build_encodec(size, 0).to(device).eval().requires_grad_(False)
    params = sum(p.numel() for p in model.parameters())
    n = int(seconds * 32000)
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (segments, 1, n)).astype(np.float32)
    total_audio = seconds * segments
    x1 = torch.from_numpy(audio[:1]).to(device)

    with torch.no_grad():
        single = _timed(lambda: [model.encode(torch.from_numpy(a[None]).to(device), bandwidth=2.2)
                                 for a in audio])
        encoder = CodecEncoder(model, batch_size=batch_size)
        batched = _timed(lambda: encoder.encode(audio))
        t_enc = _timed(lambda: model.encoder(x1))
        emb = model.encoder(x1)
        t_q = _timed(lambda: model.quantizer.encode(emb, 2.2))
        layers = model.encoder.layers if hasattr(model.encoder, "layers") else model.encoder
        by_type = time_by_layer_type(layers, lambda: model.encoder(x1))
    print(f"EnCodec 32 kHz {size} size ({params / 1e6:.1f}M params), {segments} x {seconds:g} s, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"  one segment at a time : {single:7.2f} s  -> {total_audio / single:6.2f} x real time")
    print(f"  batched (B={batch_size:<3d})       : {batched:7.2f} s  -> {total_audio / batched:6.2f} x real time"
          f"  (speed-up {single / batched:.2f}x)")
    print(f"  one {seconds:g} s segment: SEANet encoder {t_enc * 1e3:7.1f} ms, RVQ {t_q * 1e3:6.1f} ms "
          f"({100 * t_enc / (t_enc + t_q):.0f}% in the encoder)")
    total = sum(by_type.values())
    print("  encoder time by layer type: " + ", ".join(
        f"{k} {100 * v / total:.0f}%" for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])))


def bench_stems(seconds: float, segments: int, device: str, size: str = "real") -> None:
    import julius
    from demucs.apply import apply_model
    from demucs.htdemucs import HTDemucs

    from data_prep.chroma import ChromaExtractor
    from data_prep.stems import melody_stems
    from testkit.tiny_configs import htdemucs_kwargs

    model = HTDemucs(**htdemucs_kwargs(size)).to(device).eval()
    params = sum(p.numel() for p in model.parameters())
    extractor = ChromaExtractor().to(device)
    n = int(seconds * 32000)
    wav = torch.from_numpy(np.random.default_rng(1).uniform(-0.5, 0.5, (segments, 2, n)).astype(np.float32))
    wav = wav.to(device)
    total_audio = seconds * segments

    with torch.no_grad():
        t_stems = _timed(lambda: [melody_stems(model, w[None], seed=0) for w in wav], repeat=1)
        # What prep runs: the channel mean (audiocraft's chroma averages before demucs). htdemucs is a stereo model:
        # mono input is duplicated to two channels, so this costs what the stereo input costs.
        t_stems_mono = _timed(lambda: [melody_stems(model, w.mean(0, keepdim=True)[None], seed=0) for w in wav],
                              repeat=1)
        up = julius.resample_frac(wav[:1], 32000, 44100)
        t_up = _timed(lambda: julius.resample_frac(wav[:1], 32000, 44100))
        t_sep = _timed(lambda: apply_model(model, up, shifts=1, split=True, overlap=0.25, device=device), repeat=1)
        mono = wav[:, 0]
        t_chroma = _timed(lambda: extractor(mono))
    print(f"HTDemucs {size} size ({params / 1e6:.1f}M params), {segments} x {seconds:g} s stereo, device {device}")
    print(f"  stems (vocals+other)  : {t_stems:7.2f} s  -> {total_audio / t_stems:6.2f} x real time (stereo input)")
    print(f"  stems of the mean     : {t_stems_mono:7.2f} s  -> {total_audio / t_stems_mono:6.2f} x real time "
          f"(mono input, what prep runs; ratio {t_stems_mono / t_stems:.2f})")
    print(f"  one segment: resample 32k->44.1k {t_up * 1e3:6.1f} ms, separation {t_sep * 1e3:8.1f} ms "
          f"(shifts 1, overlap 0.25)")
    print(f"  chroma ({segments} segments)  : {t_chroma * 1e3:7.1f} ms -> {total_audio / t_chroma:8.1f} x real time")


def write_long_flac(path: Path, minutes: float, rate: int = 44100) -> None:
    """A stereo FLAC of `minutes`, written a minute at a time: drifting chords, a beat and a little noise."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    total = int(minutes * 60 * rate)
    with sf.SoundFile(path, "w", rate, 2, format="FLAC", subtype="PCM_16") as f:
        for start in range(0, total, 60 * rate):
            t = np.arange(start, min(start + 60 * rate, total)) / rate
            root = 110 * 2 ** ((t // 8 % 12) / 12)  # a new chord every 8 s
            tone = sum(np.sin(2 * np.pi * root * r * t) for r in (1, 1.25, 1.5)) / 3
            beat = np.exp(-30 * (t % 0.5)) * np.sin(2 * np.pi * 60 * t)
            left = 0.3 * tone + 0.2 * beat + 0.01 * rng.standard_normal(t.size)
            right = 0.3 * np.roll(tone, 100) + 0.1 * beat + 0.01 * rng.standard_normal(t.size)
            f.write(np.stack([left, right], axis=1).astype(np.float32))


def prep_peak_rss(catalog: Path, codec: Path, out: Path, batch_size: int) -> tuple[float, float]:
    """Peak RSS (GiB) and wall seconds of one `mgft prep` child process (workers 0: one process does it all)."""
    cmd = [sys.executable, "-m", "finetune", "prep", "--input", str(catalog), "--output", str(out), "--codec",
           str(codec), "--channels", "2", "--segment-seconds", "30", "--batch-size", str(batch_size),
           "--license", "CC0-1.0", "--workers", "0"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[1])
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux: the largest child so far
    if peak <= before:
        print("  (peak RSS not above an earlier run's: the figure below is a lower bound)")
    return peak / 2**20, seconds


def bench_long_track(minutes: float, codec_size: str, batch_size: int) -> None:
    from testkit.tiny_models import tiny_models

    with tempfile.TemporaryDirectory(prefix="mgft-bench-long-") as tmp:
        root = Path(tmp)
        tiny_models(str(root / "models"), size=codec_size, only=["encodec_32khz"])
        print(f"mgft prep of one stereo 44.1 kHz FLAC, 30 s segments, batch {batch_size}, {codec_size}-size EnCodec,"
              " workers 0")
        # Shortest first: RUSAGE_CHILDREN keeps the largest child's peak, so each run must peak above the last.
        for label, length in (("2 min", 2.0), (f"{minutes:g} min", minutes)):
            catalog = root / f"catalog-{length:g}"
            catalog.mkdir()
            write_long_flac(catalog / "track.flac", length)
            size_mb = (catalog / "track.flac").stat().st_size / 1e6
            peak, seconds = prep_peak_rss(catalog, root / "models" / "encodec_32khz", root / f"out-{length:g}",
                                          batch_size)
            print(f"  {label:>8} ({size_mb:6.0f} MB flac): peak RSS {peak:5.2f} GiB, {seconds:7.1f} s "
                  f"({length * 60 / seconds:5.1f} x real time)")
            (catalog / "track.flac").unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="segment length")
    parser.add_argument("--segments", type=int, default=8, help="EnCodec segments")
    parser.add_argument("--batch-size", type=int, default=2, help="EnCodec batch (mgft prep's default: 2)")
    parser.add_argument("--stems-segments", type=int, default=2, help="HTDemucs segments (slow on CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-stems", action="store_true")
    parser.add_argument("--size", choices=["real", "tiny"], default="real",
                        help="EnCodec and HTDemucs architectures (tiny: a dry run of the script)")
    parser.add_argument("--long-minutes", type=float, default=None,
                        help="instead: peak RSS of prepping one file this long")
    parser.add_argument("--codec-size", choices=["tiny", "real"], default="tiny", help="EnCodec for --long-minutes")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.long_minutes:
        bench_long_track(args.long_minutes, args.codec_size, args.batch_size)
        return
    bench_encodec(args.seconds, args.segments, args.batch_size, args.device, args.size)
    if not args.skip_stems:
        bench_stems(args.seconds, args.stems_segments, args.device, args.size)


if __name__ == "__main__":
    main()
