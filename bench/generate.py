"""Sampling speed: mgft's sampler against transformers' `generate`, same real-size model, prompt and length.

    python bench/generate.py [--model musicgen-small] [--seconds 2] [--batch-size 1] [--repeat 3] [--device cpu]
    python bench/generate.py --size tiny --seconds 0.5 --repeat 1     # a dry run with the test models

Both run classifier-free guidance 3.0 batched with the unconditional half, top-k 250, a KV cache, and the same number
of decoder steps (frames + the pattern's largest delay), on real-size random weights (`mgft tiny-models --size real`,
written once under bench/out/). Printed: seconds per decoder step of each, best of `--repeat` after a warm-up, and
the ratio mgft / transformers (below 1.0: mgft is faster). Random weights cost what trained ones do per step.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "out"


def _best_of(fn, repeat: int, device: str) -> float:
    """Best wall-clock seconds of `repeat` calls after one warm-up call."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fn()
    best = float("inf")
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="musicgen-small", choices=["musicgen-small", "musicgen-medium"])
    parser.add_argument("--seconds", type=float, default=2.0, help="audio to generate per item")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=["real", "tiny"], default="real",
                        help="tiny: the test models, written to a temporary folder (a dry run of the script)")
    args = parser.parse_args()
    if args.seconds <= 0 or args.batch_size < 1 or args.repeat < 1:
        parser.error("--seconds must be > 0, --batch-size and --repeat >= 1")

    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    from data_prep.schema import FRAME_RATE
    from finetune.inference.sampler import Sampler
    from testkit.tiny_models import tiny_models

    root = OUT / "real" if args.size == "real" else Path(tempfile.mkdtemp())
    path = root / args.model
    if not path.exists():
        print(f"writing the {args.size}-size random-weight {args.model} to {root} (once)")
        tiny_models(str(root), size=args.size, only=[args.model])
    model = MusicgenForConditionalGeneration.from_pretrained(path).to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = [f"an upbeat electronic track number {i} with a plucked lead" for i in range(args.batch_size)]
    frames = round(args.seconds * FRAME_RATE)

    sampler = Sampler(model, tokenizer, is_melody=False, cfg=3.0, top_k=250, seed=0)
    steps = frames + max(sampler.delays)  # decoder calls of one generation (the BOS column is given)

    def mgft() -> None:
        sampler.generate(sampler.conditions(prompts, None), frames)

    inputs = tokenizer(prompts, padding=True, return_tensors="pt").to(args.device)

    def transformers_generate() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # generation-config chatter
            model.generate(**inputs, do_sample=True, guidance_scale=3.0, top_k=250, max_new_tokens=steps)

    with torch.no_grad():
        ours = _best_of(mgft, args.repeat, args.device) / steps
        theirs = _best_of(transformers_generate, args.repeat, args.device) / steps
    n = sum(p.numel() for p in model.decoder.parameters())
    print(f"{args.model} ({args.size} size, decoder {n / 1e6:.0f}M params, random weights), batch {args.batch_size} x "
          f"{args.seconds:g} s ({steps} decoder steps, CFG batched), device {args.device}, "
          f"torch threads {torch.get_num_threads()}, best of {args.repeat}")
    print(f"  mgft Sampler.generate      : {1000 * ours:8.2f} ms/step")
    print(f"  transformers model.generate: {1000 * theirs:8.2f} ms/step")
    print(f"  mgft / transformers = {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
