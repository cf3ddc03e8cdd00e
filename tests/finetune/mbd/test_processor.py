"""The per-band normalizer: audiocraft's statistics (target_std is a mean square) and an exact inverse pair."""

from __future__ import annotations

import math

import torch

from finetune.mbd.processor import MultiBandProcessor, ProcessorConfig, SampleProcessor, build_processor


def _fitted(power_std: float = 0.75) -> MultiBandProcessor:
    processor = MultiBandProcessor(n_bands=8, sample_rate=32_000, num_samples=16, power_std=power_std)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):  # 4 x 4 items: exactly num_samples, then frozen
        music_like = torch.randn(4, 1, 8000, generator=generator).cumsum(-1) * 0.01  # red noise: loud lows
        processor.project_sample(music_like)
    return processor


def _band_tones(processor: MultiBandProcessor, n: int, generator: torch.Generator) -> torch.Tensor:
    """One tone in the middle of each normalizer band, levels spread over 60 dB (as music's band powers are)."""
    edges = [0.0, *[float(c) for c in processor.split_bands.cutoffs], 16_000.0]
    centres = torch.tensor([(lo + hi) / 2 for lo, hi in zip(edges, edges[1:])]).view(1, 1, -1, 1)
    levels = torch.rand(n, 1, len(edges) - 1, 1, generator=generator) * torch.logspace(0, -3, len(edges) - 1).view(
        1, 1, -1, 1)
    t = torch.arange(32_000) / 32_000
    return (levels * torch.sin(2 * math.pi * centres * t)).sum(2)  # [n, 1, 32000]


def test_project_and_return_are_inverse() -> None:
    """Inverse for content inside the bands; julius' band filters overlap at their edges (and at the signal's ends),
    so audiocraft's pair is not exact for content sitting on a band edge."""
    processor = MultiBandProcessor(n_bands=8, sample_rate=32_000, num_samples=16, power_std=0.75)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        processor.project_sample(_band_tones(processor, 4, generator))
    assert processor.frozen and processor.std.max() / processor.std.min() > 100  # strongly different rescales
    x = _band_tones(processor, 3, generator)
    roundtrip = processor.return_sample(processor.project_sample(x))
    inner = slice(2000, -2000)  # away from the filters' edge effects at the ends of the clip
    error = (roundtrip - x)[..., inner].norm() / x[..., inner].norm()
    assert error < 5e-3

    # With one rescale for every band the pair is exact everywhere: the bands sum back to the signal.
    flat = MultiBandProcessor(n_bands=8, sample_rate=32_000, num_samples=1, power_std=0.75)
    flat.counts.fill_(1)
    flat.sum_x.fill_(0.01 / 8)
    flat.sum_x2.fill_(0.25 + (0.01 / 8) ** 2)
    flat.sum_target_x2.fill_(0.125)
    z = torch.randn(2, 1, 4000, generator=generator)
    torch.testing.assert_close(flat.return_sample(flat.project_sample(z)), z, rtol=1e-4, atol=1e-4)


def test_statistics_freeze_after_num_samples_and_keep_audiocrafts_quirk() -> None:
    processor = _fitted()
    before = {k: v.clone() for k, v in processor.state_dict().items()}
    processor.project_sample(torch.randn(4, 1, 8000))
    for key, value in processor.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert float(processor.counts) == 16
    # target_std is the mean square of band-split white noise (no square root), as audiocraft computes it.
    torch.testing.assert_close(processor.target_std, processor.sum_target_x2 / processor.counts)
    assert (processor.target_std < 0.5).all()  # mean squares of 8 bands of unit noise sum to about 1
    torch.testing.assert_close(processor.target_std.sum(), torch.tensor(1.0), atol=0.1, rtol=0)


def test_normalizer_flattens_the_band_powers() -> None:
    processor = _fitted(power_std=1.0)
    x = torch.randn(8, 1, 8000).cumsum(-1) * 0.01
    before = processor.split_bands(x).pow(2).mean(dim=(1, 2, 3))
    after = processor.split_bands(processor.project_sample(x)).pow(2).mean(dim=(1, 2, 3))
    assert before.max() / before.min() > 100 and after.max() / after.min() < before.max() / before.min() / 10


def test_build_processor_follows_use() -> None:
    assert type(build_processor(ProcessorConfig(use=False), 32_000)) is SampleProcessor
    built = build_processor(ProcessorConfig(use=True, power_std=0.4), 32_000)
    assert isinstance(built, MultiBandProcessor) and built.power_std == 0.4
    assert set(built.state_dict()) == {"counts", "sum_x", "sum_x2", "sum_target_x2", "split_bands.lowpass.filters"}
