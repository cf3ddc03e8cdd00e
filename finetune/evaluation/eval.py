"""`mgft eval`: what a fine-tune did, measured on held-out shards, against its base model.

    mgft eval --model runs/x/checkpoints/last.ckpt --baseline facebook/musicgen-small --data.shards data/val \\
        --out reports/x [--num-samples 32] [--decoder encodec|mbd] [--embedder encodec|clap --clap PATH]

For the model (and the baseline, side by side):

1. validation cross-entropy and perplexity per codebook over the held-out shards (audiocraft's masked loss, no
   condition dropout);
2. generation from the held-out captions (and, for melody models, their melodies), as long as each held-out segment;
3. Frechet audio distance between the generated and the held-out audio (the shards' `audio.flac`; without
   `--keep-audio` at prep, the EnCodec resynthesis of their codes), on EnCodec latents or CLAP embeddings;
4. for melody models, the chroma cosine similarity of the generated audio to the held-out audio whose melody
   conditioned it (audiocraft's argmax chroma metric).

Writes `metrics.json`, `report.html` (self-contained: metrics table, loss curves from the run's `metrics.jsonl`,
spectrograms and chroma of generated vs reference, audio players), the WAVs and pictures under `samples/`, and logs
the same to wandb (offline unless an API key is configured).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile as sf
import torch
import webdataset as wds
from tqdm import tqdm

from data_prep.codec import decode_codes
from data_prep.schema import AUDIO_KEY, CHROMA_KEY, CODES_KEY, FRAME_RATE, INFO_KEY, SAMPLE_RATE
from finetune.evaluation.metrics import ClapEmbedder, EncodecEmbedder, chroma_cosine, frechet_audio_distance
from finetune.evaluation.plots import chroma_png, spectrogram_png
from finetune.inference.load import load_for_inference
from finetune.lm.data import resolve_shards


@dataclass
class EvalData:
    """Held-out data.

    Attributes:
        shards: Held-out shards (folder, glob or brace pattern) written by `mgft prep` (ideally with --keep-audio).
        batch_size: Batch size for the cross-entropy pass.
        max_samples: Cap on the held-out segments scored for cross-entropy (None: all).
    """

    shards: str
    batch_size: int = 8
    max_samples: int | None = None


@dataclass
class HeldOut:
    """The first held-out segments: what the generations are conditioned on and compared with."""

    keys: list[str]
    captions: list[str]
    audio: torch.Tensor  # [N, C, samples] reference audio at 32 kHz
    chroma: torch.Tensor | None  # [N, F, 12] melody conditions (melody prep only)
    seconds: float


@torch.no_grad()
def codebook_cross_entropy(module, data: EvalData) -> dict[str, float]:
    """`val/ce`, `val/ppl` and per codebook `val/ce_q{k}`, `val/ppl_q{k}` over the held-out shards."""
    from finetune.lm.data import MusicGenData
    from finetune.lm.loss import codebook_nll_sums

    loader = MusicGenData(data.shards, val_shards=data.shards, batch_size=data.batch_size, num_workers=0,
                          val_samples=data.max_samples, require_chroma=module.is_melody).val_dataset(0, 1)
    sums = torch.zeros(2, module.num_codebooks, dtype=torch.float64)
    for batch in tqdm(loader, desc="cross-entropy", unit="batch"):
        logits, mask = module(batch, train=False)  # [B, K, T, card], [B, K, T]
        sums += codebook_nll_sums(logits, batch["codes"], mask.bool()).double()
    ce = sums[0] / sums[1].clamp(min=1)
    metrics = {"val/ce": float(ce.mean()), "val/ppl": float(ce.mean().exp())}
    for k, value in enumerate(ce):
        metrics[f"val/ce_q{k}"] = float(value)
        metrics[f"val/ppl_q{k}"] = float(value.exp())
    return metrics


def _full_segments_first(shards: str, num_samples: int) -> list[dict[str, Any]]:
    """`num_samples` held-out samples in shard order, whole segments before the shorter tails of tracks.

    Generations and references are trimmed to the shortest clip compared, so one 1.5 s tail would cut every clip
    to 1.5 s; tails are used only when there are not enough whole segments.
    """
    full, tails = [], []
    for sample in wds.WebDataset(resolve_shards(shards), shardshuffle=False, empty_check=False):
        info = json.loads(sample[INFO_KEY])
        frames = np.load(io.BytesIO(sample[CODES_KEY])).shape[-1]
        (full if info["valid_frames"] >= frames else tails).append(sample)
        if len(full) == num_samples:
            break
    tails.sort(key=lambda s: -json.loads(s[INFO_KEY])["valid_frames"])
    return (full + tails)[:num_samples]


def held_out(shards: str, num_samples: int, codec: torch.nn.Module) -> HeldOut:
    """`num_samples` held-out segments (whole segments first), their audio trimmed to the shortest one."""
    keys, captions, audio, chroma = [], [], [], []
    for sample in _full_segments_first(shards, num_samples):
        info = json.loads(sample[INFO_KEY])
        seconds = info["valid_frames"] / FRAME_RATE
        if AUDIO_KEY in sample:
            wav, _ = sf.read(io.BytesIO(sample[AUDIO_KEY]), dtype="float32", always_2d=True)
            wav = torch.from_numpy(wav.T.copy())  # [C, n]
        else:  # no audio kept at prep: the EnCodec resynthesis of the codes is the reference
            codes = torch.from_numpy(np.load(io.BytesIO(sample[CODES_KEY])).astype(np.int64))[None]
            wav = decode_codes(codec, codes)[0, :, : round(seconds * SAMPLE_RATE)]
        keys.append(sample["__key__"])
        captions.append(info.get("caption") or "")
        audio.append(wav)
        if CHROMA_KEY in sample:
            chroma.append(torch.from_numpy(np.load(io.BytesIO(sample[CHROMA_KEY]))))
    if len(keys) < 2:
        raise ValueError(f"{shards} has {len(keys)} segment(s); FAD needs at least 2")
    length = min(w.shape[-1] for w in audio)
    frames = length // (SAMPLE_RATE // FRAME_RATE)
    stacked = torch.stack([w[:, :length] for w in audio])
    melodies = None
    if len(chroma) == len(keys):
        span = min(c.shape[0] for c in chroma)
        melodies = torch.stack([c[:span] for c in chroma]).float()
    return HeldOut(keys, captions, stacked, melodies, frames / FRAME_RATE)


def generate_for(module, held: HeldOut, *, decoder: str, mbd: str, seed: int, batch_size: int, top_k: int,
                 cfg: float) -> torch.Tensor:
    """Audio `[N, C, samples]` generated from the held-out captions (and melodies for a melody model)."""
    from finetune.inference.sampler import Sampler, generate_codes

    sampler = Sampler.from_module(module, cfg=cfg, top_k=top_k, seed=seed)
    diffusion = None
    if decoder == "mbd":
        from finetune.mbd.decoder import load_mbd

        diffusion = load_mbd(mbd, module.model.audio_encoder)
    pieces = []
    for start in range(0, len(held.keys), batch_size):
        captions = held.captions[start : start + batch_size]
        chroma = held.chroma[start : start + batch_size] if module.is_melody and held.chroma is not None else None
        codes = generate_codes(sampler, captions, held.seconds, chroma, progress=False)
        if diffusion is not None:
            wav = diffusion.tokens_to_wav(codes, seed=seed)
        else:
            wav = decode_codes(module.model.audio_encoder, codes)
        pieces.append(wav.float().cpu())
    audio = torch.cat(pieces)[..., : held.audio.shape[-1]]
    if audio.shape[1] != held.audio.shape[1]:  # compare like with like: a mono model against stereo references
        audio = audio.mean(1, keepdim=True).expand(-1, held.audio.shape[1], -1)
    return audio


def write_samples(folder: Path, audio: torch.Tensor, captions: list[str], chroma: torch.Tensor | None) -> list[dict]:
    """WAV, spectrogram and (for melody) chroma picture per clip; returns one row per clip for the report."""
    from data_prep.chroma import ChromaExtractor

    folder.mkdir(parents=True, exist_ok=True)
    extractor = ChromaExtractor()
    rows = []
    for i, (wav, caption) in enumerate(zip(audio.numpy(), captions)):
        wav_path = folder / f"{i:03d}.wav"
        sf.write(wav_path, np.clip(wav.T, -1, 1), SAMPLE_RATE)
        row = {"wav": str(wav_path), "caption": caption,
               "spectrogram": str(spectrogram_png(wav, folder / f"{i:03d}_spec.png", f"{folder.name} {i}"))}
        if chroma is not None:
            own = extractor(torch.from_numpy(wav).mean(0, keepdim=True)[None])[0].numpy()  # [F, 12] one-hot
            row["chroma"] = str(chroma_png(own, folder / f"{i:03d}_chroma.png", f"{folder.name} {i}: chroma"))
        rows.append(row)
    return rows


def evaluate_model(name: str, path: str, module, data: EvalData, held: HeldOut, embedder, out: Path, *,
                   decoder: str, mbd: str, seed: int, batch_size: int, top_k: int, cfg: float) -> dict:
    """Every metric of one model (loaded from `path`), and its sample rows."""
    metrics: dict[str, Any] = {"model": path, **codebook_cross_entropy(module, data)}
    generated = generate_for(module, held, decoder=decoder, mbd=mbd, seed=seed, batch_size=batch_size, top_k=top_k,
                             cfg=cfg)
    metrics[f"fad_{embedder.name}"] = frechet_audio_distance(embedder, generated, held.audio)
    if module.is_melody and held.chroma is not None:
        metrics["chroma_cosine"] = chroma_cosine(generated, held.audio)
    rows = write_samples(out / "samples" / name, generated, held.captions,
                         held.chroma if module.is_melody else None)
    return {"metrics": metrics, "samples": rows}


def evaluate(
    *,
    model: str,
    data: EvalData,
    out: str,
    baseline: str | None = None,
    num_samples: int = 16,
    decoder: Literal["encodec", "mbd"] = "encodec",
    mbd: str = "facebook/multiband-diffusion",
    embedder: Literal["encodec", "clap"] = "encodec",
    clap: str | None = None,
    batch_size: int = 4,
    top_k: int = 250,
    cfg: float = 3.0,
    seed: int = 0,
    run_dir: str | None = None,
    wandb: bool = True,
    trust_checkpoint: bool = False,
) -> dict[str, Any]:
    """Evaluate a fine-tuned MusicGen (and optionally its base) on held-out shards; write metrics and a report.

    Args:
        model: An mgft checkpoint (.ckpt), a transformers folder or a hub id.
        data: Held-out shards and the cross-entropy batch settings.
        out: Output folder for metrics.json, report.html and samples/.
        baseline: The model to compare with (usually the fine-tune's base), evaluated identically.
        num_samples: Held-out segments generated and compared (FAD, chroma).
        decoder: Token decoder for the generations (encodec or mbd).
        mbd: MBD file for `--decoder mbd`.
        embedder: FAD embeddings: EnCodec's continuous latent (no download) or CLAP (needs `--clap`).
        clap: A local transformers CLAP checkpoint for `--embedder clap`.
        batch_size: Prompts generated together.
        top_k: Sampling top-k (audiocraft 250).
        cfg: Classifier-free guidance (audiocraft 3.0).
        seed: Sampling seed (the same for model and baseline).
        run_dir: The training run folder whose `metrics.jsonl` gives the loss curves (default: found from a .ckpt).
        wandb: Also log the metrics and media to wandb (offline unless an API key is configured).
        trust_checkpoint: Allow checkpoints that need arbitrary unpickling (never for files you did not make).

    Returns:
        The metrics written to metrics.json.
    """
    from finetune.evaluation.report import loss_history, write_report

    if embedder == "clap" and not clap:
        raise ValueError("--embedder clap needs --clap PATH (a local transformers CLAP checkpoint)")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    module = load_for_inference(model, trust_checkpoint=trust_checkpoint)
    codec = module.model.audio_encoder  # frozen, so the fine-tune's EnCodec is the base model's
    held = held_out(data.shards, num_samples, codec)
    chooser = ClapEmbedder(clap) if embedder == "clap" else EncodecEmbedder(codec)
    common = {"decoder": decoder, "mbd": mbd, "seed": seed, "batch_size": batch_size, "top_k": top_k, "cfg": cfg}
    results = {"model": evaluate_model("model", model, module, data, held, chooser, out_dir, **common)}
    del module
    if baseline is not None:
        base = load_for_inference(baseline, trust_checkpoint=trust_checkpoint)
        results["baseline"] = evaluate_model("baseline", baseline, base, data, held, chooser, out_dir, **common)
    reference_rows = write_samples(out_dir / "samples" / "reference", held.audio, held.captions, held.chroma)

    if run_dir is None and model.endswith(".ckpt"):
        ckpt = Path(model)
        run_dir = str(ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent)
    history = loss_history(Path(run_dir)) if run_dir else []
    metrics = {name: result["metrics"] for name, result in results.items()}
    metrics["settings"] = {"shards": data.shards, "num_samples": len(held.keys), "seconds": held.seconds,
                           "decoder": decoder, "embedder": chooser.name, "top_k": top_k, "cfg": cfg, "seed": seed}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    report = write_report(out_dir / "report.html", metrics, {k: v["samples"] for k, v in results.items()},
                          reference_rows, history)
    if wandb:
        _log_wandb(out_dir, metrics, results)
    print(json.dumps({k: v for k, v in metrics.items() if k != "settings"}, indent=2))
    print(f"eval: metrics in {out_dir / 'metrics.json'}, report in {report}")
    return metrics


def _log_wandb(out_dir: Path, metrics: dict[str, Any], results: dict[str, Any]) -> None:
    import wandb as wb

    from finetune.training.loggers import Wandb

    logger = Wandb(project="mgft-eval", save_dir=str(out_dir), name=out_dir.name)
    run = logger.experiment
    for name, result in results.items():
        run.log({f"{name}/{k}": v for k, v in result["metrics"].items() if isinstance(v, int | float)})
        run.log({f"{name}/audio": [wb.Audio(r["wav"], caption=r["caption"]) for r in result["samples"]],
                 f"{name}/spectrogram": [wb.Image(r["spectrogram"], caption=r["caption"]) for r in result["samples"]]})
    run.summary.update({"settings": metrics["settings"]})
    run.finish()
