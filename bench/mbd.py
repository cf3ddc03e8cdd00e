"""MBD decoding speed: real-size band models (random weights) against the EnCodec decoder, as a real-time factor.

    python bench/mbd.py [--seconds 10] [--device cpu] [--bottleneck transformer|bilstm|none] [--steps 20]
    python bench/mbd.py --device cuda --seconds 10

Decodes the same random 50 Hz tokens (mono, 4 codebooks) with EnCodec 32 kHz and with the 4-band MBD
(`tokens_to_wav`: 4 bands x 20 U-Net evaluations + the 32-band re-EQ). RTF = seconds of audio per wall-clock second
(higher is faster; 1.0 is real time). Random weights cost the same FLOPs as trained ones. Also printed: one U-Net
evaluation per band, so the figure for other step counts follows.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "out"


def _timed(fn, device: str, repeat: int) -> float:
    """Best of `repeat` runs after one warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bottleneck", choices=["transformer", "bilstm", "none"], default="transformer")
    parser.add_argument("--steps", type=int, default=20, help="U-Net evaluations per band (audiocraft: 20)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--size", choices=["real", "tiny"], default="real",
                        help="codec and band U-Nets (tiny: the test models, a dry run of the script)")
    args = parser.parse_args()

    from transformers import EncodecModel

    from data_prep.codec import quantized_latent
    from finetune.mbd.decoder import BAND_PROCESSORS, BandConfig, BandModel, MultiBandDiffusion
    from finetune.mbd.unet import UnetConfig, count_parameters
    from testkit.tiny_models import build_encodec, mbd_unet_config, write_encodec

    if args.size == "real":
        codec_dir = OUT / "real" / "encodec_32khz"
        if not codec_dir.exists():
            write_encodec(codec_dir, "real")
        codec = EncodecModel.from_pretrained(codec_dir).eval().to(args.device)
        unet = UnetConfig(codec_dim=128, transformer=args.bottleneck == "transformer",
                          bilstm=args.bottleneck == "bilstm")
    else:
        codec = build_encodec("tiny", 0).eval().to(args.device)
        unet = mbd_unet_config("tiny")
    torch.manual_seed(0)
    bands = [BandModel(BandConfig(band=i, unet=unet, processor=p)) for i, p in enumerate(BAND_PROCESSORS)]
    for band in bands:  # near-identity normalizer statistics, so the high bands decode
        if hasattr(band.processor, "counts"):
            band.processor.counts.fill_(1)
            band.processor.sum_x2.fill_(1.0)
            band.processor.sum_target_x2.fill_(1.0)
    mbd = MultiBandDiffusion(bands, codec).eval().to(args.device)
    frames = round(args.seconds * 50)
    codes = torch.randint(0, 2048, (1, 4, frames), device=args.device)
    # 20 evaluations: audiocraft's [999, 949, ..., 49] (+ 0); fewer: an evenly spaced subset.
    step_list = sorted({round(999 - i * 999 / max(args.steps - 1, 1)) for i in range(args.steps)}, reverse=True) + [0]
    if args.steps == 20:
        step_list = list(range(1000))[::-50] + [0]

    print(f"device {args.device}, {torch.get_num_threads()} threads; {args.seconds:g} s of audio ({frames} frames)")
    print(f"band U-Net: {count_parameters(bands[0].unet) / 1e6:.1f}M parameters ({args.bottleneck} bottleneck), "
          f"{len(bands)} bands x {len(step_list) - 1} steps")
    with torch.inference_mode():
        t_encodec = _timed(lambda: codec.decode(codes[None], [None]), args.device, args.repeat)
        latent = quantized_latent(codec, codes)
        noise = torch.randn(1, 1, frames * 640, device=args.device)
        t_unet = _timed(lambda: bands[0].unet(noise, 500, latent), args.device, args.repeat)
        t_mbd = _timed(lambda: mbd.tokens_to_wav(codes, step_list=step_list), args.device, args.repeat)
    print(f"EnCodec decode       {t_encodec:8.3f} s   RTF {args.seconds / t_encodec:8.2f}")
    print(f"one U-Net evaluation {t_unet:8.3f} s   ({t_unet * len(bands) * (len(step_list) - 1):.1f} s for all)")
    print(f"MBD tokens_to_wav    {t_mbd:8.3f} s   RTF {args.seconds / t_mbd:8.3f}   "
          f"({t_mbd / t_encodec:.0f}x the EnCodec decode)")


if __name__ == "__main__":
    main()
