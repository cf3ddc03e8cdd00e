"""Objective audio metrics for `mgft eval`: Frechet audio distance on pluggable embeddings, melody chroma similarity.

FAD (Kilgour et al.) fits a Gaussian to the embedding frames of each set and measures
`|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`. The default embedding is EnCodec 32 kHz's continuous latent
(the encoder output before quantization, `[128]` per 20 ms frame): it needs no download and is the representation
MusicGen itself models. With a local CLAP checkpoint (`transformers.ClapModel`), FAD is computed on CLAP's audio
embeddings instead, one per clip, closer to the perceptual FADs in the literature. Numbers from different embedders are
not comparable.

Chroma similarity (the MusicGen paper's melody metric) is the frame-wise cosine between the argmax chromagrams of the
generated audio and of the reference audio the melody was taken from, averaged over frames (audiocraft's metric).
"""

from __future__ import annotations

from typing import Protocol

import torch

from data_prep.codec import encoder_latent
from data_prep.schema import SAMPLE_RATE


class Embedder(Protocol):
    """Audio `[B, C, N]` at 32 kHz -> embedding vectors `[M, D]` (frames or clips, all rows are samples)."""

    name: str

    def __call__(self, audio: torch.Tensor) -> torch.Tensor:
        """Embed audio `[B, C, N]` at 32 kHz as rows `[M, D]`."""
        ...


class EncodecEmbedder:
    """EnCodec's continuous latent per frame: `[B * frames, 128]` (channels are embedded separately)."""

    name = "encodec"

    def __init__(self, codec: torch.nn.Module) -> None:
        self.codec = codec.eval()

    @torch.no_grad()
    def __call__(self, audio: torch.Tensor) -> torch.Tensor:
        """Continuous latents `[B * C * frames, D]` (float64, CPU) of audio `[B, C, N]`, each channel on its own."""
        latent = encoder_latent(self.codec, audio)  # [B * C, D, frames]
        return latent.transpose(1, 2).reshape(-1, latent.shape[1]).double().cpu()


class ClapEmbedder:
    """CLAP audio embedding per clip (`ClapModel.get_audio_features` on 48 kHz mono), from a local checkpoint."""

    name = "clap"

    def __init__(self, path: str, device: str = "cpu") -> None:
        from transformers import ClapFeatureExtractor, ClapModel

        self.model = ClapModel.from_pretrained(path).eval().to(device)
        self.extractor = ClapFeatureExtractor.from_pretrained(path)
        self.device = device

    @torch.no_grad()
    def __call__(self, audio: torch.Tensor) -> torch.Tensor:
        """One CLAP embedding per clip, `[B, D]` in float64 on the CPU; clips go to mono at CLAP's rate first."""
        import soxr

        rate = self.extractor.sampling_rate
        clips = [soxr.resample(a.mean(0).float().cpu().numpy(), SAMPLE_RATE, rate) for a in audio]
        features = self.extractor(clips, sampling_rate=rate, return_tensors="pt").to(self.device)
        return self.model.get_audio_features(**features).double().cpu()


def gaussian(embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean `[D]` and covariance `[D, D]` (unbiased) of embedding rows `[M, D]`, in float64."""
    x = embeddings.double()
    if x.shape[0] < 2:
        raise ValueError(f"FAD needs at least 2 embedding vectors per set, got {x.shape[0]}")
    return x.mean(0), torch.cov(x.T).reshape(x.shape[1], x.shape[1])


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu_a: torch.Tensor, cov_a: torch.Tensor, mu_b: torch.Tensor, cov_b: torch.Tensor) -> float:
    """Frechet distance between two Gaussians; `tr((S_a S_b)^(1/2))` via the symmetric `S_a^(1/2) S_b S_a^(1/2)`."""
    root_a = _sqrt_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * trace_sqrt
    return max(float(distance), 0.0)  # rounding can leave -1e-12 for identical sets


def frechet_audio_distance(embedder: Embedder, audio_a: torch.Tensor, audio_b: torch.Tensor) -> float:
    """FAD between two sets of clips `[B, C, N]` (32 kHz) on `embedder`'s embeddings."""
    return frechet_distance(*gaussian(embedder(audio_a)), *gaussian(embedder(audio_b)))


def chroma_cosine(generated: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean frame-wise cosine between the argmax chromas of `generated` and `reference` audio `[B, C, N]` (32 kHz).

    audiocraft's `ChromaCosineSimilarityMetric` with its MusicGen settings (`metrics.chroma_cosine` in
    `config/solver/musicgen/default.yaml`: n_fft 2^14, argmax true), comparing with the reference *waveform* (the
    held-out audio the melody was taken from). With one-hot frames the cosine is 1 where the pitch classes agree and
    0 elsewhere, so the score is the fraction of agreeing frames: about 1/12 by chance, and noise or a flat chroma
    scores no better than chance (a raw-chroma cosine would give a flat frame 0.29 against any one-hot melody).
    The frames compared are the first `min` of the two counts.
    """
    from data_prep.chroma import ChromaExtractor

    extractor = ChromaExtractor().to(generated.device)
    ours = extractor(generated.mean(1, keepdim=True).float())  # [B, F, 12] one-hot
    theirs = extractor(reference.mean(1, keepdim=True).float().to(generated.device))
    frames = min(ours.shape[1], theirs.shape[1])
    cos = torch.nn.functional.cosine_similarity(ours[:, :frames], theirs[:, :frames], dim=-1, eps=1e-8)
    return float(cos.mean())
