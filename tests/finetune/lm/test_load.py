"""Loading MusicGen for training: audiocraft's position table in the transformers decoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finetune.lm.module import MusicGenLM


def audiocraft_positions(n: int, dim: int) -> torch.Tensor:
    """`create_sin_embedding` of audiocraft/modules/transformer.py, positions 0..n-1, fp32, as `[n, dim]`."""
    half = dim // 2
    out = torch.empty(n, dim)
    for i in range(half):
        period = torch.tensor(10000.0) ** torch.tensor(i / (half - 1), dtype=torch.float32)
        angle = torch.arange(n, dtype=torch.float32) / period
        out[:, i], out[:, half + i] = torch.cos(angle), torch.sin(angle)
    return out


@pytest.mark.parametrize("name", ["musicgen-small", "musicgen-stereo-melody"])
def test_decoder_adds_audiocrafts_sinusoid_also_past_the_initial_table(tiny_lm_dir: Path, name: str) -> None:
    module = MusicGenLM(str(tiny_lm_dir / name))
    decoder = module.model.decoder.model.decoder
    table = decoder.embed_positions
    dim = table.embedding_dim
    n = table.weights.shape[0]
    torch.testing.assert_close(table.weights, audiocraft_positions(n, dim), rtol=0, atol=0)
    # A 1,500-step sequence outgrows the tiny config's table: transformers rebuilds it, still audiocraft's.
    long = 1500 if n < 1500 else n + 100
    got = table(torch.zeros(1, long, dim)) if module.is_melody else table(torch.zeros(1, 1, long, dtype=torch.long))
    torch.testing.assert_close(got.reshape(long, dim), audiocraft_positions(long, dim), rtol=0, atol=0)


def test_mono_to_stereo_keeps_audiocrafts_positions(tiny_lm_dir: Path) -> None:
    module = MusicGenLM(str(tiny_lm_dir / "musicgen-small"), mono_to_stereo=True)
    table = module.model.decoder.model.decoder.embed_positions
    torch.testing.assert_close(table.weights, audiocraft_positions(table.weights.shape[0], table.embedding_dim),
                               rtol=0, atol=0)
