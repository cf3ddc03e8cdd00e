"""How much the codec's codes say about the audio: the tiny trained codec, and the real-size one benchmarks build.

    python bench/codec.py [--real]

On held-out synthesized music (`testkit/tiny_codec.py`, `HELDOUT_CATALOG`), prints for decode(encode(x)) and
for decode(random codes): the log-mel correlation with x (each band's mean over time removed, so an average spectrum
scores 0), the fraction of chroma frames whose pitch class survives, and the code usage (distinct codes per
codebook, entropy of codebook 0). `--real` adds the real-size EnCodec of `mgft tiny-models --size real` (random
weights, k-means codebooks): its codes spread like a trained codec's, its random decoder reconstructs nothing.
"""

from __future__ import annotations

import argparse
import time

import torch


def report(name: str, model: torch.nn.Module, items) -> None:
    from testkit.tiny_codec import codec_quality

    started = time.perf_counter()
    q = codec_quality(model, items)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{name} ({params:.2f}M params, scored in {time.perf_counter() - started:.1f} s)")
    print(f"  log-mel correlation   decode(encode(x)) {q['reconstruction']:.3f}   random codes {q['random_codes']:.3f}")
    print(f"  chroma frames kept    decode(encode(x)) {q['chroma_agreement']:.3f}   random codes "
          f"{q['chroma_random_codes']:.3f}   (chance ~0.083)")
    print(f"  code usage            fewest distinct codes in a codebook {q['distinct_codes_min']:.0f} of 2048, "
          f"codebook 0 entropy {q['entropy_q0_bits']:.2f} bits")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="also the real-size k-means codec (about a minute)")
    args = parser.parse_args()
    from testkit.tiny_codec import HELDOUT_CATALOG, synth_audio
    from testkit.tiny_models import build_encodec

    torch.set_num_threads(min(2, torch.get_num_threads()))
    items = synth_audio(**HELDOUT_CATALOG)
    print(f"held-out audio: {len(items)} mono items, {sum(len(i) for i in items) / 32000:.0f} s")
    report("tiny EnCodec (trained, committed)", build_encodec("tiny", 0), items)
    if args.real:
        report("real-size EnCodec (random weights, k-means codebooks)", build_encodec("real", 0), items)


if __name__ == "__main__":
    main()
