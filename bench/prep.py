"""Prep speed: real-time factors of the real-size EnCodec 32 kHz and HTDemucs (random weights) on this machine.

    python bench/prep.py [--seconds 10] [--segments 8] [--batch-size 8] [--device cpu] [--stems-segments 2]

Prints, for EnCodec, one segment at a time against the fixed-shape batched path `mgft prep` uses, split into the
SEANet encoder (convs + LSTM) and the residual quantizer; and for melody prep, the HTDemucs stems (resample to
44.1 kHz, separation, back to 32 kHz) and the chroma. RTF here = seconds of audio processed per wall-clock second
(higher is faster). Random weights cost the same FLOPs as trained ones.
"""

from __future__ import annotations

import argparse
import time

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


def bench_encodec(seconds: float, segments: int, batch_size: int, device: str) -> None:
    from data_prep.codec import CodecEncoder
    from testkit.tiny_models import build_encodec

    # Random weights, codebooks from k-means over the encoder's latents (zero codebooks would make the RVQ trivial).
    model = build_encodec("real", 0).to(device).eval().requires_grad_(False)
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
    print(f"EnCodec 32 kHz real size ({params / 1e6:.1f}M params), {segments} x {seconds:g} s, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"  one segment at a time : {single:7.2f} s  -> {total_audio / single:6.2f} x real time")
    print(f"  batched (B={batch_size:<3d})       : {batched:7.2f} s  -> {total_audio / batched:6.2f} x real time"
          f"  (speed-up {single / batched:.2f}x)")
    print(f"  one {seconds:g} s segment: SEANet encoder {t_enc * 1e3:7.1f} ms, RVQ {t_q * 1e3:6.1f} ms "
          f"({100 * t_enc / (t_enc + t_q):.0f}% in the encoder)")
    total = sum(by_type.values())
    print("  encoder time by layer type: " + ", ".join(
        f"{k} {100 * v / total:.0f}%" for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])))


def bench_stems(seconds: float, segments: int, device: str) -> None:
    import julius
    from demucs.apply import apply_model
    from demucs.htdemucs import HTDemucs

    from data_prep.chroma import ChromaExtractor
    from data_prep.stems import melody_stems
    from testkit.tiny_configs import htdemucs_kwargs

    model = HTDemucs(**htdemucs_kwargs("real")).to(device).eval()
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
    print(f"HTDemucs real size ({params / 1e6:.1f}M params), {segments} x {seconds:g} s stereo, device {device}")
    print(f"  stems (vocals+other)  : {t_stems:7.2f} s  -> {total_audio / t_stems:6.2f} x real time (stereo input)")
    print(f"  stems of the mean     : {t_stems_mono:7.2f} s  -> {total_audio / t_stems_mono:6.2f} x real time "
          f"(mono input, what prep runs; ratio {t_stems_mono / t_stems:.2f})")
    print(f"  one segment: resample 32k->44.1k {t_up * 1e3:6.1f} ms, separation {t_sep * 1e3:8.1f} ms "
          f"(shifts 1, overlap 0.25)")
    print(f"  chroma ({segments} segments)  : {t_chroma * 1e3:7.1f} ms -> {total_audio / t_chroma:8.1f} x real time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="segment length")
    parser.add_argument("--segments", type=int, default=8, help="EnCodec segments")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--stems-segments", type=int, default=2, help="HTDemucs segments (slow on CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-stems", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    bench_encodec(args.seconds, args.segments, args.batch_size, args.device)
    if not args.skip_stems:
        bench_stems(args.seconds, args.stems_segments, args.device)


if __name__ == "__main__":
    main()
