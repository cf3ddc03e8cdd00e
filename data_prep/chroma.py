"""Melody chroma: a torchaudio-free, numerically identical port of audiocraft's `ChromaExtractor`.

audiocraft (`modules/chroma.py`, config `conditioner/chroma2music.yaml`) computes the melody condition as:

1. inputs shorter than n_fft are zero-padded, centred, to n_fft (so a nullified 1-sample wav still gives 5 frames);
2. a power spectrogram, torchaudio `Spectrogram(n_fft=16384, win_length=16384, hop_length=4096, power=2,
   center=True, pad=0, normalized=True)`: `|STFT|^2` with a periodic Hann window, reflect padding of n_fft // 2 on
   both sides, the complex STFT divided by `sqrt(sum(window^2))` before the magnitude is squared;
3. a projection onto 12 pitch classes with `librosa.filters.chroma(sr=32000, n_fft=16384, tuning=0, n_chroma=12)`
   (float32), here built by `transformers.audio_utils.chroma_filter_bank`, which ports librosa's algorithm;
4. `F.normalize(p=inf, dim=chroma, eps=1e-6)`;
5. an argmax one-hot (ties and all-zero frames go to bin 0, torch's first-maximum rule).

torchaudio has no CPU wheel here, so step 2 is written with `torch.stft` in exactly torchaudio's order of operations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.audio_utils import chroma_filter_bank

from data_prep.schema import CHROMA_HOP, N_CHROMA, SAMPLE_RATE

__all__ = ["ChromaExtractor", "chroma_valid_frames"]


class ChromaExtractor(torch.nn.Module):
    """Chroma extraction and argmax quantization, matching audiocraft's `ChromaExtractor` numerics.

    Args:
        sample_rate: Sample rate of the input audio (32 kHz for MusicGen).
        n_chroma: Number of pitch classes.
        radix2_exp: The STFT size is `2 ** radix2_exp` (window = n_fft, hop = n_fft // 4).
        argmax: If True (audiocraft's melody config), `forward` returns one-hot frames.
        norm: The p of the per-frame normalization over the chroma axis (inf: divide by the frame maximum).
    """

    fbanks: Tensor
    window: Tensor

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        n_chroma: int = N_CHROMA,
        radix2_exp: int = 14,
        argmax: bool = True,
        norm: float = math.inf,
    ) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.n_chroma = n_chroma
        self.n_fft = 2**radix2_exp
        self.win_length = self.n_fft
        self.hop_length = self.n_fft // 4
        self.argmax = argmax
        self.norm = norm
        # `num_frequency_bins` is n_fft here, not n_fft // 2 + 1: the function takes librosa's `n_fft` argument and
        # keeps the 1 + n_fft // 2 non-aliased columns itself (MusicgenMelodyFeatureExtractor calls it the same way).
        # librosa returns float32 by default, so audiocraft's buffer is float32: cast the float64 bank the same way.
        fbanks = chroma_filter_bank(
            num_frequency_bins=self.n_fft, num_chroma=n_chroma, sampling_rate=sample_rate, tuning=0
        )  # [C, n_fft // 2 + 1]
        self.register_buffer("fbanks", torch.from_numpy(fbanks).float(), persistent=False)
        # torchaudio's Spectrogram default window: periodic Hann of win_length samples.
        self.register_buffer("window", torch.hann_window(self.win_length, periodic=True), persistent=False)

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for an input of `num_samples` samples (short inputs are padded to n_fft first)."""
        return 1 + max(num_samples, self.n_fft) // self.hop_length

    def _power_spectrogram(self, wav: Tensor) -> Tensor:
        """torchaudio `Spectrogram(power=2, center=True, normalized=True)` of `[B, T]` audio -> `[B, F, frames]`."""
        spec = torch.stft(
            wav,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        )  # [B, F, frames] complex
        # torchaudio's normalized=True ("window") divides the complex STFT by the window's L2 norm, then |.|^2.
        spec = spec / self.window.pow(2.0).sum().sqrt()
        return spec.abs().pow(2.0)

    def raw_chroma(self, wav: Tensor) -> Tensor:
        """Normalized chroma before the argmax.

        Args:
            wav: Mono audio `[B, T]` or `[B, 1, T]` at `sample_rate`.

        Returns:
            `[B, frames, n_chroma]` float32, each frame divided by its max (p-norm), eps 1e-6.
        """
        if wav.dim() == 3:
            if wav.shape[1] != 1:
                raise ValueError(f"ChromaExtractor expects mono audio [B, 1, T], got {tuple(wav.shape)}")
            wav = wav[:, 0]
        if wav.dim() != 2:
            raise ValueError(f"ChromaExtractor expects [B, T] or [B, 1, T] audio, got {tuple(wav.shape)}")
        wav = wav.to(self.fbanks.dtype)  # audiocraft runs this under fp32 autocast
        length = wav.shape[-1]
        if length < self.n_fft:
            # A nullified (1-sample) or very short condition: centre it in n_fft zeros, as audiocraft does.
            pad = self.n_fft - length
            wav = F.pad(wav, (pad // 2, pad // 2 + pad % 2), "constant", 0.0)  # [B, n_fft]
        spec = self._power_spectrogram(wav)  # [B, F, frames]
        raw = torch.einsum("cf,...ft->...ct", self.fbanks, spec)  # [B, C, frames]
        norm_chroma = F.normalize(raw, p=self.norm, dim=-2, eps=1e-6)  # [B, C, frames]
        return norm_chroma.transpose(1, 2)  # [B, frames, C]

    def forward(self, wav: Tensor) -> Tensor:
        """Chroma features of mono audio.

        Args:
            wav: Mono audio `[B, T]` or `[B, 1, T]` at `sample_rate`.

        Returns:
            `[B, frames, n_chroma]`, `frames = 1 + max(T, n_fft) // hop`; one-hot per frame when `argmax` is set.
        """
        chroma = self.raw_chroma(wav)  # [B, frames, C]
        if self.argmax:
            # torch.argmax returns the first maximum, so ties and all-zero (silent) frames land on bin 0.
            idx = chroma.argmax(-1, keepdim=True)  # [B, frames, 1]
            chroma = torch.zeros_like(chroma).scatter_(-1, idx, 1.0)
        return chroma


def chroma_valid_frames(valid_samples: int, num_samples: int | None = None, hop_length: int = CHROMA_HOP) -> int:
    """How many leading chroma frames audiocraft keeps (unmasked) for a condition with `valid_samples` real samples.

    audiocraft's `WaveformConditioner.forward` masks the chroma with
    `length_to_mask(length / hop, max_len=frames)`, i.e. frame `t` is kept iff `t < length / hop` (a float
    comparison). For integer `t` that is `t < ceil(length / hop)`, so the count is

        valid = min(frames, ceil(valid_samples / hop))

    (`length` is the unpadded sample count, `SegmentInfo.n_frames`; a nullified condition has length 0 -> 0 frames).
    For a 30 s segment: `ceil(960000 / 4096) = 235` = all frames; 10 s of audio padded to 30 s keeps 79 of 235.
    Because `ceil(L / hop) <= 1 + N // hop` for every padded length `N >= L`, the clamp never bites for consistent
    inputs. Integer arithmetic is exact; audiocraft's float32 division agrees for lengths below 2**24 samples
    (about 524 s at 32 kHz), far beyond a segment.

    Args:
        valid_samples: Real (non-padding) samples at 32 kHz at the start of the segment.
        num_samples: The segment's padded length; when given, the result is clamped to its chroma frame count.
        hop_length: Chroma hop (4096 for n_fft = 16384).

    Returns:
        The number of chroma frames overlapping real audio.
    """
    if valid_samples < 0:
        raise ValueError(f"valid_samples must be >= 0, got {valid_samples}")
    valid = -(-valid_samples // hop_length)
    if num_samples is not None:
        if num_samples < valid_samples:
            raise ValueError(f"valid_samples {valid_samples} exceeds the segment's {num_samples} samples")
        valid = min(valid, 1 + max(num_samples, 4 * hop_length) // hop_length)  # frames of the padded segment
    return valid
