"""`mgft generate`: music from a fine-tuned (or hub) MusicGen, with audiocraft's sampling, past the 30 s window.

    mgft generate --model runs/x/checkpoints/last.ckpt --prompt "warm lo-fi piano" --duration 40 --out samples/
    mgft generate --model facebook/musicgen-stereo-melody --prompts prompts.txt --melody tune.wav --out samples/

Sampling follows audiocraft rather than transformers' defaults: top-k 250, temperature 1, classifier-free guidance 3.0
on the raw logits (`uncond + cfg * (cond - uncond)`), the delayed codebook pattern, and for durations past the model's
30 s window audiocraft's windowed continuation: each new window is prompted with the last 12 s of codes and adds
18 s (`extend_stride`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from data_prep.schema import CHROMA_HOP, FRAME_RATE, SAMPLE_RATE
from finetune.patterns import delays_for

MAX_WINDOW_SECONDS = 30.0
EXTEND_STRIDE_SECONDS = 18.0
CHROMA_FRAMES = 235  # 30 s of chroma; MusicGen-Melody's config.chroma_length


def load_for_inference(path: str, device: str = "cpu", trust_checkpoint: bool = False):
    """(model, tokenizer, is_melody) from a transformers directory / hub id or an mgft Lightning checkpoint."""
    from finetune.models.load import load_musicgen

    if Path(path).is_file() and path.endswith(".ckpt"):
        from finetune.module import MusicGenLM

        module, _ = MusicGenLM.from_checkpoint(path, trust_checkpoint)
        model, tokenizer, is_melody = module.model, module.tokenizer, module.is_melody
    else:
        model, tokenizer, is_melody = load_musicgen(path)
    return model.to(device).eval(), tokenizer, is_melody


class Sampler:
    """Autoregressive sampling over the delayed pattern with a KV cache and classifier-free guidance."""

    def __init__(self, model, tokenizer, is_melody: bool, *, cfg: float = 3.0, top_k: int = 250,
                 temperature: float = 1.0, seed: int = 0) -> None:
        self.model, self.tokenizer, self.is_melody = model, tokenizer, is_melody
        dec = model.config.decoder
        self.k = dec.num_codebooks
        self.card = dec.vocab_size
        self.delays = delays_for(dec.num_codebooks, getattr(dec, "audio_channels", 1))
        self.cfg, self.top_k, self.temperature = cfg, top_k, temperature
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    @torch.no_grad()
    def conditions(self, captions: list[str], chroma: torch.Tensor | None) -> torch.Tensor:
        """[cond; uncond] conditions `[2B, L, D]`: cross-attention memory (text) or prefix (melody)."""
        from finetune.conditioning import encode_text

        b = len(captions)
        null = torch.tensor([False] * b + [True] * b)
        hidden, mask = encode_text(self.tokenizer, self.model.text_encoder, captions + [""] * b, null, self.device)
        project = getattr(self.model, "enc_to_dec_proj", None) or torch.nn.Identity()
        text = project(hidden) * mask[..., None]  # [2B, L, D]; the unconditional half is all zeros
        if not self.is_melody:
            return text
        # audiocraft's inference null melody (match_len_on_eval): one-hot bin 0 tiled to 235 frames (facts C.1).
        null_chroma = torch.zeros(b, CHROMA_FRAMES, 12, device=self.device)
        null_chroma[..., 0] = 1
        if chroma is None:
            chroma = null_chroma
        else:
            reps = math.ceil(CHROMA_FRAMES / chroma.shape[1])
            chroma = chroma.to(self.device).repeat(1, reps, 1)[:, :CHROMA_FRAMES]  # tile short melodies, as audiocraft
        melody = self.model.audio_enc_to_dec_proj(torch.cat([chroma, null_chroma]).to(text.dtype))
        return torch.cat([melody, text], dim=1)

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        """Top-k sampling over the last dim of `[N, card]` logits."""
        logits = logits.float() / max(self.temperature, 1e-5)
        if self.top_k:
            values, indices = logits.topk(min(self.top_k, logits.shape[-1]), dim=-1)
            choice = torch.multinomial(values.softmax(-1), 1, generator=self.generator)
            return indices.gather(-1, choice)[:, 0]
        return torch.multinomial(logits.softmax(-1), 1, generator=self.generator)[:, 0]

    @torch.no_grad()
    def generate(self, condition: torch.Tensor, num_frames: int, prompt: torch.Tensor | None = None,
                 progress: tqdm | None = None) -> torch.Tensor:
        """Codes `[B, K, T]` (T = prompt frames + num_frames) continuing `prompt` `[B, K, Tp]`."""
        b = condition.shape[0] // 2
        tp = 0 if prompt is None else prompt.shape[-1]
        t = tp + num_frames
        steps = t + max(self.delays) + 1  # a BOS column, then the delayed frames
        seq = torch.full((b, self.k, steps), -1, dtype=torch.long, device=self.device)  # -1: not sampled yet
        seq[:, :, 0] = self.card
        for q, d in enumerate(self.delays):
            seq[:, q, 1 : 1 + d] = self.card  # head of the delayed codebook
            seq[:, q, 1 + d + t :] = self.card  # tail past the last frame
            if prompt is not None:
                seq[:, q, 1 + d : 1 + d + tp] = prompt[:, q]
        first_unknown = int((seq < 0).any(dim=(0, 1)).nonzero()[0]) if (seq < 0).any() else steps
        cache, fed = None, 0
        for s in range(first_unknown, steps):
            x = seq[:, :, fed:s].repeat(2, 1, 1)  # [2B, K, n]: cond and uncond halves
            kwargs: dict[str, Any] = {"cache": cache, "use_cache": True}
            if not self.is_melody or cache is None:  # the melody prefix goes in once, before the first frame
                kwargs["encoder_hidden_states"] = condition
            out = self.model.decoder(input_ids=x.reshape(2 * b * self.k, -1), **kwargs)
            cache, fed = out.past_key_values, s
            logits = out.logits.reshape(2 * b, self.k, -1, self.card)[:, :, -1]  # [2B, K, card]
            cond, uncond = logits[:b], logits[b:]
            guided = uncond + self.cfg * (cond - uncond)  # [B, K, card]
            sampled = self._sample(guided.reshape(b * self.k, -1)).reshape(b, self.k)
            unknown = seq[:, :, s] < 0
            seq[:, :, s] = torch.where(unknown, sampled, seq[:, :, s])
            if progress is not None:
                progress.update(1)
        # Undo the delay: frame i of codebook q sits at column 1 + i + d_q.
        return torch.stack([seq[:, q, 1 + d : 1 + d + t] for q, d in enumerate(self.delays)], dim=1)


@torch.no_grad()
def decode_codes(codec, codes: torch.Tensor) -> torch.Tensor:
    """EnCodec decode of `[B, K, T]` codes to `[B, C, samples]`; stereo decodes L (even) and R (odd) separately.

    Args:
        codec: transformers' `EncodecModel` (a MusicGen's `audio_encoder`).
        codes: `[B, 4, T]` mono or `[B, 8, T]` interleaved stereo codes.
    """
    if codes.shape[1] == 8:
        left = codec.decode(codes[:, 0::2][None], [None]).audio_values
        right = codec.decode(codes[:, 1::2][None], [None]).audio_values
        return torch.cat([left, right], dim=1)
    return codec.decode(codes[None], [None]).audio_values


def melody_chroma_for(path: str, demucs: str, device: str) -> torch.Tensor:
    """The melody condition of an audio file: 32 kHz mono -> HTDemucs vocals + other -> chroma `[1, F, 12]`."""
    from data_prep import audio as audio_io
    from data_prep.chroma import ChromaExtractor
    from data_prep.stems import load_demucs, melody_chroma

    decoded = audio_io.convert_channels(audio_io.resample(audio_io.decode(Path(path)), SAMPLE_RATE), 1)
    wav = torch.from_numpy(decoded.samples)[None].to(device)  # [1, 1, N]
    return melody_chroma(load_demucs(demucs, device), ChromaExtractor().to(device), wav, seed=0)


def generate_codes(sampler: Sampler, captions: list[str], duration: float, chroma: torch.Tensor | None = None,
                   progress: bool = True) -> torch.Tensor:
    """Codes `[B, K, 50 x duration]`; past 30 s, windows of 30 s prompted by the last 12 s advance 18 s each."""
    total = round(duration * FRAME_RATE)
    window = round(MAX_WINDOW_SECONDS * FRAME_RATE)
    stride = round(EXTEND_STRIDE_SECONDS * FRAME_RATE)
    chroma_rate = SAMPLE_RATE / CHROMA_HOP  # 7.8125 Hz
    bar = tqdm(total=total + max(sampler.delays) * 4, desc="generate", unit="frame", disable=not progress)
    offset, prompt, pieces = 0, None, []
    while True:
        window_chroma = None
        if chroma is not None:  # the melody of this window's time span, as audiocraft slices the reference wav
            start = int(offset / FRAME_RATE * chroma_rate)
            window_chroma = chroma[:, start:] if start < chroma.shape[1] else None
        condition = sampler.conditions(captions, window_chroma)
        length = min(total - offset, window)
        tp = 0 if prompt is None else prompt.shape[-1]
        codes = sampler.generate(condition, length - tp, prompt, bar)  # [B, K, length]
        pieces.append(codes[..., tp:])
        if offset + length >= total:
            break
        prompt = codes[..., stride:]  # the last (window - stride) frames prompt the next window
        offset += stride
    bar.close()
    return torch.cat(pieces, dim=-1)[..., :total]


def generate(
    *,
    model: str,
    out: str,
    prompt: str | None = None,
    prompts: str | None = None,
    melody: str | None = None,
    demucs: str = "htdemucs",
    duration: float = 10.0,
    decoder: Literal["encodec", "mbd"] = "encodec",
    mbd: str = "facebook/multiband-diffusion",
    cfg: float = 3.0,
    top_k: int = 250,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 4,
    device: str = "cpu",
    trust_checkpoint: bool = False,
) -> list[str]:
    """Generate 32 kHz WAV files (two channels for stereo models) from text prompts and an optional melody.

    Args:
        model: A transformers MusicGen directory or hub id, or an mgft checkpoint (.ckpt; EMA weights are used).
        out: Output folder for the WAV files.
        prompt: One text prompt.
        prompts: A text file with one prompt per line.
        melody: An audio file whose melody (chroma of its vocals + other stems) conditions melody models.
        demucs: HTDemucs for the melody (model name or local folder).
        duration: Seconds per clip; past 30 s, windowed continuation with an 18 s stride.
        decoder: Token decoder: encodec, or mbd (multi-band diffusion: 4 band models x 20 denoising steps, cleaner
            highs, much slower; stereo goes through the mono bands as left and right).
        mbd: The MBD file for `--decoder mbd`: hub id, `.th` file, or a folder holding `mbd_musicgen_32khz.th`.
        cfg: Classifier-free guidance coefficient (audiocraft 3.0).
        top_k: Top-k sampling (audiocraft 250; transformers defaults to 50).
        temperature: Sampling temperature.
        seed: Sampling seed.
        batch_size: Prompts generated together.
        device: cpu or cuda.
        trust_checkpoint: Allow checkpoints that need arbitrary unpickling (never for files you did not make).

    Returns:
        The WAV paths written.
    """
    import soundfile as sf

    if (prompt is None) == (prompts is None):
        raise ValueError("give exactly one of --prompt or --prompts")
    captions = [prompt] if prompt is not None else [
        line.strip() for line in Path(prompts).read_text(encoding="utf-8").splitlines() if line.strip()]
    lm, tokenizer, is_melody = load_for_inference(model, device, trust_checkpoint)
    if melody is not None and not is_melody:
        raise ValueError(f"--melody needs a melody model; {model} is text-only")
    chroma = melody_chroma_for(melody, demucs, device) if melody is not None else None
    diffusion = None
    if decoder == "mbd":
        from finetune.mbd.decoder import load_mbd

        diffusion = load_mbd(mbd, lm.audio_encoder, trust_checkpoint).to(device)
    sampler = Sampler(lm, tokenizer, is_melody, cfg=cfg, top_k=top_k, temperature=temperature, seed=seed)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for start in range(0, len(captions), batch_size):
        batch = captions[start : start + batch_size]
        batch_chroma = chroma.expand(len(batch), -1, -1) if chroma is not None else None
        codes = generate_codes(sampler, batch, duration, batch_chroma)
        if diffusion is not None:
            audio = diffusion.tokens_to_wav(codes, seed=seed + start).float().cpu().numpy()  # [B, C, N]
        else:
            audio = decode_codes(lm.audio_encoder, codes).float().cpu().numpy()
        for i, wav in enumerate(audio):
            path = out_dir / f"{start + i:04d}.wav"
            sf.write(path, np.clip(wav.T, -1, 1), SAMPLE_RATE)
            written.append(str(path))
    (out_dir / "prompts.txt").write_text("".join(f"{i:04d}.wav\t{c}\n" for i, c in enumerate(captions)))
    print(f"wrote {len(written)} file(s) of {duration:g} s to {out_dir}")
    return written
