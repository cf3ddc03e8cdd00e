"""The one sampler: audiocraft's sampling over the delayed pattern, with a KV cache and classifier-free guidance.

`mgft generate`, `mgft eval` and the training-sample callback (`finetune.training.callbacks.SampleGenerator`) all
generate through `generate_codes` here, so what a run's samples sound like is what the model will generate after
training (transformers' own `generate` differs: top-k 50, and some transformers 5 releases ignore the melody).

Sampling follows audiocraft rather than transformers' defaults: top-k 250, temperature 1, classifier-free guidance
3.0 on the raw logits (`uncond + cfg * (cond - uncond)`), the delayed codebook pattern, and for durations past the
model's 30 s window audiocraft's windowed continuation: each new window is prompted with the last 12 s of codes and
adds 18 s (`extend_stride`). See docs/fidelity.md.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from tqdm import tqdm

from data_prep.schema import CHROMA_HOP, FRAME_RATE, SAMPLE_RATE
from finetune.lm.patterns import delays_for

MAX_WINDOW_SECONDS = 30.0
EXTEND_STRIDE_SECONDS = 18.0
CHROMA_FRAMES = 235  # 30 s of chroma; MusicGen-Melody's config.chroma_length


class Sampler:
    """Autoregressive sampling over the delayed pattern with a KV cache and classifier-free guidance."""

    @classmethod
    def from_module(cls, module, **settings: Any) -> Sampler:
        """A sampler over a `MusicGenLM`'s model and tokenizer (`settings`: cfg, top_k, temperature, seed)."""
        return cls(module.model, module.tokenizer, module.is_melody, **settings)

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
        from finetune.lm.conditioning import melody_condition, text_condition

        b = len(captions)
        null = torch.tensor([False] * b + [True] * b)
        text = text_condition(self.model, self.tokenizer, captions + [""] * b, null, self.device)  # [2B, L, D]
        if not self.is_melody:
            return text
        # audiocraft's inference null melody (match_len_on_eval): one-hot bin 0 tiled to 235 frames (docs/fidelity.md).
        null_chroma = torch.zeros(b, CHROMA_FRAMES, 12, device=self.device)
        null_chroma[..., 0] = 1
        if chroma is None:
            chroma = null_chroma
        else:
            reps = math.ceil(CHROMA_FRAMES / chroma.shape[1])
            chroma = chroma.to(self.device).repeat(1, reps, 1)[:, :CHROMA_FRAMES]  # tile short melodies, as audiocraft
        melody = melody_condition(self.model, torch.cat([chroma, null_chroma]))
        return torch.cat([melody, text.to(melody.dtype)], dim=1)

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


