"""MBD's per-band sample normalizer: audiocraft's `MultiBandProcessor`, quirks included (docs/mbd.md).

The waveform is split into `n_bands` mel-spaced bands (julius `SplitBands`); each band is shifted by its mean and
rescaled towards the power of white noise in that band, to the power `power_std`:

    project_sample(x) = sum_b (band_b(x) - mean_b) * (target_std_b / std_b) ** power_std
    return_sample(z)  = sum_b band_b(z) * (std_b / target_std_b) ** power_std + mean_b

`target_std` is a mean *square* (no square root) in audiocraft; it is kept that way so released statistics mean the
same thing here. The statistics accumulate over the first `num_samples` training items (in train mode) and are then
frozen; they are buffers, saved in checkpoints and in the MBD file's `processor_state`.
"""

from __future__ import annotations

from dataclasses import dataclass

import julius
import torch
from torch import nn


@dataclass
class ProcessorConfig:
    """audiocraft's `processor` section.

    Attributes:
        use: Normalize (True for MusicGen MBD bands 2 and 3, False for bands 0 and 1).
        name: Only "multi_band_processor".
        n_bands: Mel bands of the normalizer (8; unrelated to the 4 MBD bands).
        num_samples: Training items whose statistics are gathered before they freeze.
        power_std: Strength of the correction (0.4 band 2, 0.75 band 3).
    """

    use: bool = False
    name: str = "multi_band_processor"
    n_bands: int = 8
    num_samples: int = 10_000
    power_std: float = 1.0


class SampleProcessor(nn.Module):
    """Identity normalizer (`processor.use: false`); no state."""

    def project_sample(self, x: torch.Tensor) -> torch.Tensor:
        """Audio -> the normalized space the diffusion works in; the identity here."""
        return x

    def return_sample(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of `project_sample`; the identity here."""
        return z


class MultiBandProcessor(SampleProcessor):
    """Band-wise mean/std normalizer with statistics learned online from the first `num_samples` items."""

    def __init__(self, n_bands: int = 8, sample_rate: int = 32_000, num_samples: int = 10_000,
                 power_std: float = 1.0) -> None:
        super().__init__()
        self.n_bands = n_bands
        self.split_bands = julius.SplitBands(sample_rate, n_bands=n_bands)
        self.num_samples = num_samples
        self.power_std = power_std
        self.register_buffer("counts", torch.zeros(1))
        self.register_buffer("sum_x", torch.zeros(n_bands))
        self.register_buffer("sum_x2", torch.zeros(n_bands))
        self.register_buffer("sum_target_x2", torch.zeros(n_bands))

    @property
    def mean(self) -> torch.Tensor:
        """Per-band mean `[n_bands]` of the gathered items."""
        return self.sum_x / self.counts

    @property
    def std(self) -> torch.Tensor:
        """Per-band standard deviation `[n_bands]` of the gathered items."""
        return (self.sum_x2 / self.counts - self.mean**2).clamp(min=0).sqrt()

    @property
    def target_std(self) -> torch.Tensor:
        """Per-band level `[n_bands]` of white noise through the same split; a mean square despite the name."""
        return self.sum_target_x2 / self.counts  # a mean square, as audiocraft (no sqrt)

    @property
    def frozen(self) -> bool:
        """Whether `num_samples` items were gathered, after which the statistics stop changing."""
        return bool(self.counts.item() >= self.num_samples)

    def project_sample(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, N]
        """Normalize audio `[B, C, N]` band by band: remove the mean, rescale by `(target_std / std) ** power_std`.

        In training, until frozen, the batch's statistics are gathered first.
        """
        bands = self.split_bands(x)  # [n_bands, B, C, N]
        if self.training and not self.frozen:  # training items only (audiocraft also counts validation items)
            reference = self.split_bands(torch.randn_like(x))
            self.counts += len(x)
            self.sum_x += bands.mean(dim=(2, 3)).sum(dim=1)
            self.sum_x2 += bands.pow(2).mean(dim=(2, 3)).sum(dim=1)
            self.sum_target_x2 += reference.pow(2).mean(dim=(2, 3)).sum(dim=1)
        rescale = (self.target_std / self.std.clamp(min=1e-12)) ** self.power_std
        return ((bands - self.mean.view(-1, 1, 1, 1)) * rescale.view(-1, 1, 1, 1)).sum(dim=0)

    def return_sample(self, z: torch.Tensor) -> torch.Tensor:
        """Undo `project_sample` on normalized audio `[B, C, N]`, band by band."""
        bands = self.split_bands(z)
        rescale = (self.std / self.target_std) ** self.power_std
        return (bands * rescale.view(-1, 1, 1, 1) + self.mean.view(-1, 1, 1, 1)).sum(dim=0)


def build_processor(cfg: ProcessorConfig, sample_rate: int) -> SampleProcessor:
    """audiocraft's `builders.get_processor`: the multi-band normalizer when `use`, else the identity."""
    if not cfg.use:
        return SampleProcessor()
    if cfg.name != "multi_band_processor":
        raise ValueError(f"unknown processor {cfg.name!r}")
    return MultiBandProcessor(cfg.n_bands, sample_rate, cfg.num_samples, cfg.power_std)
