"""FAD and chroma similarity behave as metrics: zero / one at identity, monotone in the damage done."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from finetune.evaluation.metrics import (
    EncodecEmbedder,
    chroma_cosine,
    frechet_audio_distance,
    frechet_distance,
    gaussian,
)


def _music(n: int, seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    """`[n, 1, N]` clips of three random tones each (something with structure for the embedder to see)."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(round(seconds * 32000)) / 32000
    freqs = 110 * 2 ** (torch.randint(0, 36, (n, 3, 1), generator=generator) / 12)
    return (0.2 * torch.sin(2 * math.pi * freqs * t)).sum(1, keepdim=True)


@pytest.fixture(scope="module")
def embedder(tiny_models_dir: Path) -> EncodecEmbedder:
    from transformers import EncodecModel

    return EncodecEmbedder(EncodecModel.from_pretrained(tiny_models_dir / "encodec_32khz"))


def test_fad_is_zero_for_identical_sets_and_grows_with_noise(embedder: EncodecEmbedder) -> None:
    clean = _music(8)
    assert frechet_audio_distance(embedder, clean, clean.clone()) == pytest.approx(0.0, abs=1e-6)
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(clean.shape, generator=generator)
    distances = [frechet_audio_distance(embedder, clean, clean + level * noise) for level in (0.01, 0.05, 0.2, 0.5)]
    assert all(a < b for a, b in zip(distances, distances[1:])), distances
    assert distances[0] > 0


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians() -> None:
    mu_a, mu_b = torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([1.0, 1.0], dtype=torch.float64)
    var_a, var_b = torch.tensor([1.0, 4.0], dtype=torch.float64), torch.tensor([4.0, 1.0], dtype=torch.float64)
    expected = 1.0 + sum(a + b - 2 * math.sqrt(a * b) for a, b in zip(var_a.tolist(), var_b.tolist()))
    assert frechet_distance(mu_a, torch.diag(var_a), mu_b, torch.diag(var_b)) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        gaussian(torch.zeros(1, 4))


def test_chroma_similarity_is_one_for_a_melody_against_itself_and_chance_for_noise() -> None:
    melody = _music(2, seconds=3.0)
    assert chroma_cosine(melody, melody.clone()) == pytest.approx(1.0, abs=1e-6)
    other = _music(2, seconds=3.0, seed=5)
    assert chroma_cosine(other, melody) < 0.9
    noise = torch.randn(melody.shape, generator=torch.Generator().manual_seed(0))
    assert chroma_cosine(noise, melody) < 0.3  # one-hot frames: a flat or noisy chroma earns no credit
