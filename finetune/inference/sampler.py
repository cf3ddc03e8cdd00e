"""The one sampler: audiocraft's sampling over the delayed pattern, with a KV cache and classifier-free guidance.

`mgft generate`, `mgft eval` and the training-sample callback (`finetune.training.callbacks.SampleGenerator`) all
generate through `generate_codes` here, so what a run's samples sound like is what the model will generate after
training (transformers' own `generate` differs: top-k 50, and some transformers 5 releases ignore the melody).

Sampling follows audiocraft (`LMModel.generate` and `_sample_next_token` in `audiocraft/models/lm.py`) rather than
transformers' defaults: top-k 250, temperature 1 (0: greedy), optional top-p (which takes precedence over top-k),
classifier-free guidance 3.0 on the raw logits (`uncond + cfg * (cond - uncond)`), batched with the conditional half
unless `two_step_cfg`, the delayed codebook pattern, and for durations past the model's 30 s window audiocraft's
windowed continuation (`MusicGen._generate_tokens`): each new window is prompted with the last 12 s of codes, adds
18 s (`extend_stride`), and is conditioned on the melody re-cut at the window's own start time. See docs/fidelity.md.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from tqdm import tqdm

from data_prep.schema import CHROMA_HOP, FRAME_RATE, SAMPLE_RATE
from finetune.lm.patterns import delays_for

MAX_WINDOW_SECONDS = 30.0
EXTEND_STRIDE_SECONDS = 18.0
CHROMA_FRAMES = 235  # 30 s of chroma; MusicGen-Melody's config.chroma_length


def match_chroma_length(chroma: torch.Tensor, frames: int = CHROMA_FRAMES) -> torch.Tensor:
    """Chroma `[B, F, 12]` cut or tiled to `[B, frames, 12]`, as audiocraft's `match_len_on_eval` does at inference."""
    if chroma.shape[1] < frames:
        chroma = chroma.repeat(1, math.ceil(frames / chroma.shape[1]), 1)
    return chroma[:, :frames]


class MelodyAudio:
    """Melody waveforms for generation, cut per window as audiocraft's window loop cuts them.

    Up to 30 s of output the condition is the chroma of each whole melody (cut or tiled to 30 s of chroma). Past 30 s,
    every window takes 30 s of each waveform from the window's exact start time, wrapping a shorter melody around
    periodically (`positions % length` in `MusicGen._generate_tokens`), and the chroma of that cut.

    Args:
        wavs: One `[C, N]` waveform per item at 32 kHz, C the model's audio channels (audiocraft converts the melody
            to them), lengths may differ.
        chroma_of: audio `[1, C, n]` -> chroma `[1, F, 12]`: HTDemucs stems, then the chroma extractor
            (`data_prep.stems.melody_chroma`).
    """

    def __init__(self, wavs: list[torch.Tensor], chroma_of: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if not wavs or any(w.dim() != 2 or w.shape[-1] < 2 for w in wavs):
            raise ValueError("MelodyAudio needs one [C, N] waveform (N >= 2 samples) per item")
        self.wavs, self.chroma_of = wavs, chroma_of
        # Window chroma by (offset, windowed): the training-sample callback generates from the same melodies every
        # round, and demucs is the slow part.
        self._cache: dict[tuple[int, bool], torch.Tensor] = {}
        self._copies = 1

    def repeat(self, n: int) -> MelodyAudio:
        """The one melody for `n` items (a single `--melody` for a batch of prompts)."""
        if len(self.wavs) != 1:
            raise ValueError("repeat needs a single melody")
        repeated = MelodyAudio(self.wavs, self.chroma_of)
        repeated._cache, repeated._copies = self._cache, n  # one demucs pass per window, shared by the copies
        return repeated

    def window_chroma(self, offset: int, windowed: bool) -> torch.Tensor:
        """The melody condition `[B, 235, 12]` of the window that starts at output frame `offset`."""
        if (offset, windowed) not in self._cache:
            self._cache[offset, windowed] = self._compute(offset, windowed)
        return self._cache[offset, windowed].repeat(self._copies, 1, 1)

    def _compute(self, offset: int, windowed: bool) -> torch.Tensor:
        out = []
        for wav in self.wavs:
            if windowed:
                start = int(offset / FRAME_RATE * SAMPLE_RATE)
                positions = torch.arange(start, start + int(MAX_WINDOW_SECONDS * SAMPLE_RATE), device=wav.device)
                wav = wav[..., positions % wav.shape[-1]]
            out.append(match_chroma_length(self.chroma_of(wav[None])))  # [1, 235, 12]
        return torch.cat(out)  # [B, 235, 12]


def window_of_chroma(chroma: torch.Tensor, offset: int, windowed: bool) -> torch.Tensor:
    """A precomputed chroma `[B, F, 12]` (the shards', the held-out set's) as the condition of a window `[B, 235, 12]`.

    The same rule as `MelodyAudio.window_chroma`, on chroma frames: the window's start time rounded down to a chroma
    frame (128 ms), periodic past the end. Exact audiocraft behaviour past 30 s needs the waveform (`MelodyAudio`).
    """
    if not windowed:
        return match_chroma_length(chroma)
    start = int(offset / FRAME_RATE * SAMPLE_RATE / CHROMA_HOP)
    positions = torch.arange(start, start + CHROMA_FRAMES, device=chroma.device)
    return chroma[:, positions % chroma.shape[1]]


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    """Refuse sampling settings that have no meaning, before any model is loaded."""
    problems = [f"{name} {value} ({rule})" for name, value, ok, rule in (
        ("temperature", temperature, temperature >= 0, ">= 0; 0 is greedy"),
        ("top_k", top_k, top_k >= 0, ">= 0; 0 samples from all codes"),
        ("top_p", top_p, 0 <= top_p <= 1, "in [0, 1]; 0 is off")) if not ok]
    if problems:
        raise ValueError("sampling settings out of range: " + ", ".join(problems))


class Sampler:
    """Autoregressive sampling over the delayed pattern with a KV cache and classifier-free guidance."""

    @classmethod
    def from_module(cls, module, **settings: Any) -> Sampler:
        """A sampler over a `MusicGenLM`'s model and tokenizer (`settings`: those of `__init__`)."""
        return cls(module.model, module.tokenizer, module.is_melody, **settings)

    def __init__(self, model, tokenizer, is_melody: bool, *, cfg: float = 3.0, top_k: int = 250, top_p: float = 0.0,
                 temperature: float = 1.0, two_step_cfg: bool = False, seed: int = 0) -> None:
        """Keep the model and the sampling settings (audiocraft's defaults).

        Args:
            model: a transformers MusicGen (or MusicGen-Melody) model.
            tokenizer: its T5 tokenizer.
            is_melody: whether the model takes a melody prefix.
            cfg: classifier-free guidance coefficient (1: the conditional logits only).
            top_k: sample among the k most likely codes (0: all).
            top_p: nucleus sampling, takes precedence over top_k when > 0 (audiocraft's `sample_top_p`).
            temperature: logits are divided by it; 0 means greedy (argmax), as in audiocraft.
            two_step_cfg: run the conditional and unconditional passes separately (audiocraft's option), the null
                text then tokenized alone (1 token) rather than padded to the prompts' length.
            seed: seed of the sampler's own generator.
        """
        check_sampling(temperature, top_k, top_p)
        self.model, self.tokenizer, self.is_melody = model, tokenizer, is_melody
        dec = model.config.decoder
        self.k = dec.num_codebooks
        self.card = dec.vocab_size
        self.delays = delays_for(dec.num_codebooks, getattr(dec, "audio_channels", 1))
        self.cfg, self.top_k, self.top_p, self.temperature = cfg, top_k, top_p, temperature
        self.two_step_cfg = two_step_cfg
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        # transformers renamed the decoder's `past_key_values` argument `cache` after 5.18; an unknown keyword would
        # be swallowed by **kwargs and every step would run without its cache.
        params = inspect.signature(type(model.decoder).forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    @torch.no_grad()
    def conditions(self, captions: list[str], chroma: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond `[B, L, D]`, uncond `[B, L', D]`): cross-attention memory (text) or prefix (melody).

        Batched CFG (the default) tokenizes the prompts and the null texts together, so L' = L, as audiocraft's
        batched pass; with `two_step_cfg` the null text is tokenized alone (L' = 1 token of text).

        Args:
            captions: one prompt per item.
            chroma: the melody condition `[B, F, 12]` (cut or tiled to 235 frames here), or None for no melody.
        """
        from finetune.lm.conditioning import melody_condition, text_condition

        b = len(captions)
        if self.two_step_cfg:
            text = text_condition(self.model, self.tokenizer, captions, torch.zeros(b, dtype=torch.bool), self.device)
            null_text = text_condition(self.model, self.tokenizer, [""] * b, torch.ones(b, dtype=torch.bool),
                                       self.device)
        else:
            null = torch.tensor([False] * b + [True] * b)
            text, null_text = text_condition(self.model, self.tokenizer, captions + [""] * b, null,
                                             self.device).split(b)  # [B, L, D] each
        if not self.is_melody:
            return text, null_text
        # audiocraft's inference null melody (match_len_on_eval): one-hot bin 0 tiled to 235 frames (docs/fidelity.md).
        null_chroma = torch.zeros(b, CHROMA_FRAMES, 12, device=self.device)
        null_chroma[..., 0] = 1
        chroma = null_chroma if chroma is None else match_chroma_length(chroma.to(self.device))
        melody, null_melody = melody_condition(self.model, torch.cat([chroma, null_chroma])).split(b)  # [B, 235, D]
        return (torch.cat([melody, text.to(melody.dtype)], dim=1),
                torch.cat([null_melody, null_text.to(melody.dtype)], dim=1))

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        """One code per row of `[N, card]` logits: argmax at temperature 0, else top-p, top-k or full sampling."""
        if self.temperature == 0:
            return logits.argmax(-1)
        probs = (logits.float() / self.temperature).softmax(-1)  # [N, card]
        if self.top_p > 0:
            # audiocraft's sample_top_p: keep the most likely codes until their mass reaches p (the one crossing it
            # included), renormalize, sample.
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > self.top_p
            sorted_probs = sorted_probs.masked_fill(outside, 0)
            choice = torch.multinomial(sorted_probs / sorted_probs.sum(-1, keepdim=True), 1, generator=self.generator)
            return order.gather(-1, choice)[:, 0]
        if self.top_k:
            values, indices = probs.topk(min(self.top_k, probs.shape[-1]), dim=-1)
            choice = torch.multinomial(values / values.sum(-1, keepdim=True), 1, generator=self.generator)
            return indices.gather(-1, choice)[:, 0]
        return torch.multinomial(probs, 1, generator=self.generator)[:, 0]

    def _logits(self, x: torch.Tensor, condition: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        """Last-step logits `[N, K, card]` of the delayed columns `x` `[N, K, n]`, and the updated KV cache."""
        n = x.shape[0]
        kwargs: dict[str, Any] = {self._cache_arg: cache, "use_cache": True}
        if not self.is_melody or cache is None:  # the melody prefix goes in once, before the first frame
            kwargs["encoder_hidden_states"] = condition
        out = self.model.decoder(input_ids=x.reshape(n * self.k, -1), **kwargs)
        return out.logits.reshape(n, self.k, -1, self.card)[:, :, -1], out.past_key_values

    @torch.no_grad()
    def generate(self, condition: tuple[torch.Tensor, torch.Tensor], num_frames: int,
                 prompt: torch.Tensor | None = None, progress: tqdm | None = None) -> torch.Tensor:
        """Codes `[B, K, T]` (T = prompt frames + num_frames) continuing `prompt` `[B, K, Tp]`.

        Args:
            condition: (cond, uncond) from `conditions`.
            num_frames: frames to add.
            prompt: codes to continue, or None.
            progress: a bar to advance by one per step.
        """
        cond_condition, uncond_condition = condition
        b = cond_condition.shape[0]
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
        batched = None if self.two_step_cfg else torch.cat([cond_condition, uncond_condition])  # [2B, L, D]
        cache, uncond_cache, fed = None, None, 0
        for s in range(first_unknown, steps):
            x = seq[:, :, fed:s]  # [B, K, n]: the columns the caches have not seen
            if batched is None:
                cond, cache = self._logits(x, cond_condition, cache)  # [B, K, card]
                uncond, uncond_cache = self._logits(x, uncond_condition, uncond_cache)
            else:
                logits, cache = self._logits(x.repeat(2, 1, 1), batched, cache)  # [2B, K, card]
                cond, uncond = logits[:b], logits[b:]
            fed = s
            guided = uncond + self.cfg * (cond - uncond)  # [B, K, card]
            sampled = self._sample(guided.reshape(b * self.k, -1)).reshape(b, self.k)
            unknown = seq[:, :, s] < 0
            seq[:, :, s] = torch.where(unknown, sampled, seq[:, :, s])
            if progress is not None:
                progress.update(1)
        # Undo the delay: frame i of codebook q sits at column 1 + i + d_q.
        return torch.stack([seq[:, q, 1 + d : 1 + d + t] for q, d in enumerate(self.delays)], dim=1)


def generate_codes(sampler: Sampler, captions: list[str], duration: float, chroma: torch.Tensor | None = None,
                   progress: bool = True, melody: MelodyAudio | None = None) -> torch.Tensor:
    """Codes `[B, K, 50 x duration]`; past 30 s, windows of 30 s prompted by the last 12 s advance 18 s each.

    Args:
        sampler: the sampler (model and settings).
        captions: one prompt per item.
        duration: seconds to generate.
        chroma: a precomputed melody condition `[B, F, 12]` (see `window_of_chroma`).
        progress: show a progress bar.
        melody: melody waveforms (see `MelodyAudio`), exclusive with `chroma`.
    """
    if chroma is not None and melody is not None:
        raise ValueError("give a melody as chroma or as audio, not both")
    total = round(duration * FRAME_RATE)
    window = round(MAX_WINDOW_SECONDS * FRAME_RATE)
    stride = round(EXTEND_STRIDE_SECONDS * FRAME_RATE)
    windowed = duration > MAX_WINDOW_SECONDS  # audiocraft's `duration <= max_duration` test, in seconds
    bar = tqdm(total=total + max(sampler.delays) * 4, desc="generate", unit="frame", disable=not progress)
    offset, prompt, pieces = 0, None, []
    while True:
        window_chroma = None
        if melody is not None:
            window_chroma = melody.window_chroma(offset, windowed)
        elif chroma is not None:
            window_chroma = window_of_chroma(chroma, offset, windowed)
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
