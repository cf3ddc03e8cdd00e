"""What `mgft eval` computes on held-out shards.

Cross-entropy per codebook, the held-out clips, the generations from their captions and melodies, and the sample files
of the report.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import webdataset as wds
from tqdm import tqdm

from data_prep.codec import decode_codes
from data_prep.schema import (
    AUDIO_KEY,
    CHROMA_KEY,
    CODES_KEY,
    FRAME_RATE,
    INFO_KEY,
    SAMPLE_RATE,
    read_valid_frames,
)
from finetune.evaluation.metrics import chroma_cosine, frechet_audio_distance
from finetune.evaluation.plots import chroma_png, spectrogram_png
from finetune.lm.data import resolve_shards


@dataclass
class HeldOut:
    """The first held-out segments: what the generations are conditioned on and compared with."""

    keys: list[str]
    captions: list[str]
    audio: torch.Tensor  # [N, C, samples] reference audio at 32 kHz
    chroma: torch.Tensor | None  # [N, F, 12] melody conditions (melody prep only)
    seconds: float


@torch.no_grad()
def codebook_cross_entropy(module, shards: str, batch_size: int = 8,
                           max_samples: int | None = None) -> dict[str, float]:
    """`val/ce`, `val/ppl` and per codebook `val/ce_q{k}`, `val/ppl_q{k}` over the held-out shards.

    For a melody model, also `val/ce_other_melody`: the cross-entropy of the same codes when each sample is given
    the melody of the sample half a batch away (the batch rolled by B // 2), and `melody_gain` = that minus
    `val/ce`, in nats per code. A model that follows its melody predicts the codes better with their own melody: the
    gain is positive. A model that ignores the chroma scores 0, whatever its generations happen to sound like; the
    chroma cosine of generated audio cannot tell those apart when the generations are poor. Held-out samples come
    in shard order, so neighbours are often segments of one track (same key, other notes): half a batch away is
    another track for most, and a long track's own segments only lower the gain. Batches of one sample (the last,
    say) have no other melody and count for `val/ce` only.
    """
    from finetune.lm.data import MusicGenData
    from finetune.lm.loss import codebook_nll_sums

    loader = MusicGenData(shards, val_shards=shards, batch_size=batch_size, num_workers=0,
                          val_samples=max_samples, require_chroma=module.is_melody).val_dataset(0, 1)
    sums = torch.zeros(2, module.num_codebooks, dtype=torch.float64)  # [nll sum | code count, K]
    # [own melody | other melody, nll sum | code count, K], over the batches of two or more samples
    paired = torch.zeros(2, 2, module.num_codebooks, dtype=torch.float64)
    for batch in tqdm(loader, desc="cross-entropy", unit="batch"):
        logits, targets, mask = module(batch, train=False)  # [B, K, T, card], [B, K, T], [B, K, T]
        own = codebook_nll_sums(logits, targets, mask).double()
        sums += own
        if module.is_melody and batch["chroma"] is not None and len(batch["keys"]) > 1:
            shift = len(batch["keys"]) // 2  # half a batch away: past the other segments of most tracks
            other = {**batch, "chroma": batch["chroma"].roll(shift, dims=0),
                     "chroma_valid_frames": batch["chroma_valid_frames"].roll(shift, dims=0)}
            paired[0] += own
            paired[1] += codebook_nll_sums(*module(other, train=False)).double()
    ce = sums[0] / sums[1].clamp(min=1)
    metrics = {"val/ce": float(ce.mean()), "val/ppl": float(ce.mean().exp())}
    for k, value in enumerate(ce):
        metrics[f"val/ce_q{k}"] = float(value)
        metrics[f"val/ppl_q{k}"] = float(value.exp())
    if paired[0, 1].sum() > 0:
        own_ce, other_ce = (paired[:, 0] / paired[:, 1].clamp(min=1)).mean(dim=1)  # mean over codebooks, as val/ce
        metrics["val/ce_other_melody"] = float(other_ce)
        metrics["melody_gain"] = float(other_ce - own_ce)
    return metrics


def _full_segments_first(shards: str, num_samples: int) -> list[tuple[dict[str, Any], dict[str, Any], np.ndarray, int]]:
    """`num_samples` held-out samples in shard order, whole segments before the shorter tails of tracks.

    Each as (raw sample, its info, its codes `[K, T]`, its whole valid frames), each decoded once.

    Generations and references are trimmed to the shortest clip compared, so one 1.5 s tail would cut every clip
    to 1.5 s; tails are used only when there are not enough whole segments.
    """
    full, tails = [], []
    for sample in wds.WebDataset(resolve_shards(shards), shardshuffle=False, empty_check=False):
        info = json.loads(sample[INFO_KEY])
        codes = np.load(io.BytesIO(sample[CODES_KEY]))  # [K, T]
        valid = read_valid_frames(info, codes.shape[-1])
        (full if valid >= codes.shape[-1] else tails).append((sample, info, codes, valid))
        if len(full) == num_samples:
            break
    tails.sort(key=lambda entry: -entry[3])
    return (full + tails)[:num_samples]


def held_out(shards: str, num_samples: int, codec: torch.nn.Module) -> HeldOut:
    """`num_samples` held-out segments (whole segments first), their audio trimmed to the shortest one."""
    keys, captions, audio, chroma = [], [], [], []
    for sample, info, stored_codes, valid in _full_segments_first(shards, num_samples):
        seconds = valid / FRAME_RATE
        if AUDIO_KEY in sample:
            wav, _ = sf.read(io.BytesIO(sample[AUDIO_KEY]), dtype="float32", always_2d=True)
            wav = torch.from_numpy(wav.T.copy())  # [C, n]
        else:  # no audio kept at prep: the EnCodec resynthesis of the codes is the reference
            codes = torch.from_numpy(stored_codes.astype(np.int64))[None]  # [1, K, T]
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


def evaluate_model(name: str, path: str, module, data, held: HeldOut, embedder, out: Path, *,
                   decoder: str, mbd: str, seed: int, batch_size: int, top_k: int, cfg: float) -> dict:
    """Every metric of one model (loaded from `path`) on `data` (an `EvalData`), and its sample rows."""
    ce = codebook_cross_entropy(module, data.shards, data.batch_size, data.max_samples)
    metrics: dict[str, Any] = {"model": path, **ce}
    generated = generate_for(module, held, decoder=decoder, mbd=mbd, seed=seed, batch_size=batch_size, top_k=top_k,
                             cfg=cfg)
    metrics[f"fad_{embedder.name}"] = frechet_audio_distance(embedder, generated, held.audio)
    if module.is_melody and held.chroma is not None:
        metrics["chroma_cosine"] = chroma_cosine(generated, held.audio)
    rows = write_samples(out / "samples" / name, generated, held.captions,
                         held.chroma if module.is_melody else None)
    return {"metrics": metrics, "samples": rows}
