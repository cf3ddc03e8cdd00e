"""Training step cost: prepped shards vs tokenizing (and, for melody, separating stems) on the fly, as audiocraft does.

    python bench/train_step.py [--model musicgen-small] [--seconds 5] [--batch-size 2] [--steps 3] [--device cpu]
    python bench/train_step.py --model musicgen-melody --melody --lora-rank 16   # + HTDemucs stems, chroma on the fly
    python bench/train_step.py --device cuda --seconds 30 --batch-size 8 --peak-tflops 989   # frames/s and MFU

Real-size architectures with random weights (written once under bench/out/ by `mgft tiny-models --size real`).
The "shards" step is what `mgft fit` runs: a batch of int16 codes from webdataset shards -> forward, backward,
AdamW. The "on the fly" step first encodes the batch's audio with the real-size EnCodec (and runs HTDemucs + chroma
for melody), which is what audiocraft's solver does every step. The "transformers" step is the bare step of the peers
that train with transformers' own loss: the same model, batch and delayed inputs through
`MusicgenForConditionalGeneration(..., decoder_input_ids=..., labels=...)` (text models); `mgft / transformers` is
printed from the same run. MFU counts 6 x matmul parameters + attention per frame (docs/performance.md) against
`--peak-tflops`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parent / "out"


def real_models(name: str) -> Path:
    from testkit.tiny_models import tiny_models

    root = OUT / "real"
    needed = [n for n in (name, "encodec_32khz", "htdemucs") if not (root / n).exists()]
    if needed:
        print(f"writing real-size random-weight models {needed} to {root} (once)")
        tiny_models(str(root), size="real", only=needed)
    return root


def make_shards(models: Path, seconds: float, channels: int, melody: bool) -> Path:
    from data_prep.prep import prep
    from testkit.synth import synth_catalog

    out = OUT / f"shards-{seconds:g}s-{channels}ch{'-melody' if melody else ''}"
    if not (out / "stats.json").exists():
        catalog = OUT / "catalog"
        if not catalog.exists():
            synth_catalog(str(catalog), tracks=4, seconds=max(2 * seconds, 8.0), seed=0)
        prep(input=str(catalog), output=str(out), codec=str(models / "encodec_32khz"), channels=channels,
             segment_seconds=seconds, melody=melody, demucs=str(models / "htdemucs") if melody else None)
    return out


def step_flops(model, frames: int, batch: int, text_tokens: int = 64) -> float:
    """Training FLOPs of one step: per frame 6 x matmul params + 12 L d T self-attention (+ cross-attention on text).

    Matmul params per layer: q, k, v, o (4 d^2), the feed-forward (2 d ffn) and, for text models, the cross-attention
    query and output (2 d^2); plus the K output heads (K d card).
    """
    cfg = model.config.decoder
    d, layers, k = cfg.hidden_size, cfg.num_hidden_layers, cfg.num_codebooks
    has_cross = not hasattr(model, "audio_enc_to_dec_proj")
    n_mm = layers * (4 * d * d + 2 * d * cfg.ffn_dim + (2 * d * d if has_cross else 0)) + k * d * cfg.vocab_size
    per_frame = 6 * n_mm + 12 * layers * d * frames + (12 * layers * d * text_tokens if has_cross else 0)
    return per_frame * frames * batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="musicgen-small")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--melody", action="store_true", help="melody model: stems + chroma on the fly")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak (bf16 dense) for MFU")
    parser.add_argument("--lora-rank", type=int, default=0,
                        help="train LoRA adapters (full AdamW state of 1.5B params does not fit 24 GB of RAM)")
    args = parser.parse_args()

    from data_prep.chroma import ChromaExtractor
    from data_prep.codec import CodecEncoder, load_codec
    from data_prep.stems import load_demucs, melody_chroma
    from finetune.lm.data import MusicGenData
    from finetune.lm.loss import masked_codebook_ce
    from finetune.lm.module import MusicGenLM
    from finetune.lm.patterns import build_delayed_inputs

    torch.manual_seed(0)
    models = real_models(args.model)
    module = MusicGenLM(str(models / args.model), ema_decay=None, cfg_dropout=0.0, word_dropout=0.0,
                        chroma_dropout=0.0, lora_rank=args.lora_rank).to(args.device)
    channels = 2 if module.num_codebooks == 8 else 1
    shards = make_shards(models, args.seconds, channels, args.melody)
    data = MusicGenData(str(shards), batch_size=args.batch_size, num_workers=0, require_chroma=args.melody)
    batches = iter(data.train_dataloader())
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)
    codec = CodecEncoder(load_codec(str(models / "encodec_32khz"), args.device), batch_size=args.batch_size)
    demucs = load_demucs(str(models / "htdemucs"), args.device) if args.melody else None
    extractor = ChromaExtractor().to(args.device) if args.melody else None
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.device.startswith("cuda") else \
        torch.autocast("cpu", enabled=False)

    def to_device(batch: dict) -> dict:
        return {k: v.to(args.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def train_step(batch: dict) -> None:
        with autocast:
            logits, targets, mask = module(batch, train=True)
            loss, _ = masked_codebook_ce(logits, targets, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def bare_step(batch: dict) -> None:
        # The peers' step: transformers' loss over labels [B, S, K], the delayed layout shifted by one step with the
        # special token ignored (-100); its inputs are mgft's delayed inputs, so both steps see the same tokens.
        codes = batch["codes"]  # [B, K, T]
        b, k, _ = codes.shape
        inputs = build_delayed_inputs(codes, module.delays, special=module.card)  # [B, K, S]
        targets = torch.cat([inputs[:, :, 1:], torch.full_like(inputs[:, :, :1], module.card)], dim=2)
        labels = targets.masked_fill(targets == module.card, -100).transpose(1, 2)  # [B, S, K]
        text = module.tokenizer(list(batch["captions"]), padding=True, return_tensors="pt").to(args.device)
        with autocast:
            loss = module.model(**text, decoder_input_ids=inputs.reshape(b * k, -1), labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def on_the_fly(batch: dict, audio: np.ndarray) -> None:
        with torch.no_grad():
            batch["codes"] = torch.from_numpy(codec.encode(audio)).long().to(args.device)  # [B, K, T]
            if demucs is not None:
                wav = torch.from_numpy(audio).to(args.device)
                batch["chroma"] = torch.cat([melody_chroma(demucs, extractor, w[None], seed=0) for w in wav])
        train_step(batch)

    n = int(args.seconds * 32000)
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (args.batch_size, channels, n)).astype(np.float32)
    steps = {"shards": train_step, "on the fly": lambda batch: on_the_fly(batch, audio)}
    if not module.is_melody:
        steps["transformers"] = bare_step
    timings: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(args.steps + 1):  # step 0 warms up allocators and kernels
        for name, step in steps.items():  # interleaved, so a slow spell of the machine hits every kind alike
            batch = to_device(next(batches))
            sync()
            start = time.perf_counter()
            step(batch)
            sync()
            if i:
                timings[name].append(time.perf_counter() - start)

    frames = int(args.seconds * 50) * args.batch_size
    n_train = sum(p.numel() for p in module.parameters() if p.requires_grad)
    kind = " LoRA" if args.lora_rank else ""
    print(f"{args.model} (real size, {n_train / 1e6:.1f}M trainable{kind}), batch {args.batch_size} x "
          f"{args.seconds:g} s ({frames} frames), {args.steps} steps, device {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    best = {name: min(t) for name, t in timings.items()}
    for name, t in best.items():
        line = f"  {name:<12}: {t:8.2f} s/step  {frames / t:9.1f} frames/s"
        if args.peak_tflops:
            mfu = step_flops(module.model, int(args.seconds * 50), args.batch_size) / t / (args.peak_tflops * 1e12)
            line += f"  MFU {100 * mfu:5.1f}%"
        print(line)
    extra = "EnCodec" + (" + HTDemucs + chroma" if args.melody else "")
    print(f"  on the fly / shards = {best['on the fly'] / best['shards']:.2f}x "
          f"({extra} adds {best['on the fly'] - best['shards']:.2f} s per step)")
    if "transformers" in best:
        print(f"  mgft / transformers = {best['shards'] / best['transformers']:.2f} (the shards step against the "
              "bare transformers step)")


if __name__ == "__main__":
    main()
