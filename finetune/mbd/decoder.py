"""The multi-band diffusion decoder: MusicGen tokens -> waveform, and audiocraft's `mbd_musicgen_32khz.th` file layout.

    mbd = load_mbd("facebook/multiband-diffusion", codec)     # or a local .th file / folder holding one
    wav = mbd.tokens_to_wav(codes)                              # [B, K, T] -> [B, C, T * 640]; K = 8 gives stereo

Decoding (audiocraft's `MultiBandDiffusion.tokens_to_wav`, docs/mbd.md): the condition is EnCodec's quantized latent
(the sum of the codebook vectors, `[B, 128, T]`); every band model starts from white noise of the full band and runs
the 20-step subsampled sampler; the bands are summed; the result is re-equalized band by band (32 mel bands) to the
standard deviations of the plain EnCodec decode. Stereo codes (L0, R0, L1, R1, ...) go through the mono models as a
batch of left and right, the official workaround (audiocraft#401); the EQ statistics are batch-global, as audiocraft's.

File layout (docs/mbd.md): `{'sample_rate': 32000, 'n_bands': 4, 0: band, 1: band, ...}` with each band
`{'cfg': <DictConfig: channels, schedule, diffusion_unet, processor, filter, sample_rate>, 'model_state': U-Net
state dict, 'processor_state': normalizer buffers}`. audiocraft pickles `cfg` as an OmegaConf DictConfig; so does
`save_mbd` (omegaconf is a dependency for this alone), and `load_mbd` reads it without unpickling code
(`finetune.checkpoints.safe_load`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import julius
import torch
from torch import nn

from data_prep.atomic import atomic_write
from data_prep.codec import decode_codes, quantized_latent
from data_prep.schema import HOP_LENGTH, SAMPLE_RATE
from finetune.mbd.processor import MultiBandProcessor, ProcessorConfig, SampleProcessor, build_processor
from finetune.mbd.schedule import NoiseSchedule, ScheduleConfig
from finetune.mbd.unet import DiffusionUnet, UnetConfig

MBD_FILENAME = "mbd_musicgen_32khz.th"
N_BANDS = 4
RE_EQ_BANDS = 32

# MusicGen MBD's per-band normalizer settings (audiocraft grids/diffusion/4_bands_base_32khz.py).
BAND_PROCESSORS: tuple[ProcessorConfig, ...] = (
    ProcessorConfig(use=False, power_std=0.4),
    ProcessorConfig(use=False, power_std=0.4),
    ProcessorConfig(use=True, power_std=0.4),
    ProcessorConfig(use=True, power_std=0.75),
)


@dataclass
class BandConfig:
    """Everything that defines one band model; serialized as the band's audiocraft `cfg`.

    Attributes:
        band: Index of the frequency band this model generates (0 = lowest).
        n_bands: Number of MBD bands (4).
        cutoffs: Explicit band edges in Hz (default: julius' mel-spaced split, 847 / 2719 / 6856 Hz at 32 kHz).
        sample_rate: Audio rate.
        unet: The U-Net.
        schedule: The noise schedule.
        processor: The per-band normalizer.
    """

    band: int = 0
    n_bands: int = N_BANDS
    cutoffs: list[float] | None = None
    sample_rate: int = SAMPLE_RATE
    unet: UnetConfig = field(default_factory=UnetConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)

    def to_audiocraft(self) -> dict[str, Any]:
        """The keys audiocraft's `load_diffusion_models` / `get_diffusion_model` / `get_processor` read."""
        return {
            "solver": "diffusion",
            "sample_rate": self.sample_rate,
            "channels": self.unet.chin,
            "n_q": 4,
            "model": "unet",
            "diffusion_unet": self.unet.to_audiocraft(),
            "schedule": self.schedule.to_audiocraft(),
            "processor": asdict(self.processor),
            "filter": {"use": True, "n_bands": self.n_bands, "idx_band": self.band, "cutoffs": self.cutoffs},
        }

    @classmethod
    def from_audiocraft(cls, cfg: dict[str, Any], band: int) -> BandConfig:
        """One band's config from an audiocraft solver config; the file's filter `idx_band` wins over `band`."""
        filt = cfg.get("filter") or {}
        processor = {k: v for k, v in (cfg.get("processor") or {}).items() if k in ProcessorConfig.__dataclass_fields__}
        return cls(
            band=int(filt.get("idx_band", band)),
            n_bands=int(filt.get("n_bands", N_BANDS)),
            cutoffs=filt.get("cutoffs"),
            sample_rate=int(cfg.get("sample_rate", SAMPLE_RATE)),
            unet=UnetConfig.from_audiocraft(cfg),
            schedule=ScheduleConfig.from_audiocraft(cfg.get("schedule") or {}),
            processor=ProcessorConfig(**processor),
        )


def band_filter(cfg: BandConfig) -> julius.SplitBands:
    """The split whose band `cfg.band` a band model learns to generate (audiocraft's `DataProcess` filter)."""
    if cfg.cutoffs:
        return julius.SplitBands(cfg.sample_rate, cutoffs=cfg.cutoffs)
    return julius.SplitBands(cfg.sample_rate, n_bands=cfg.n_bands)


class BandModel(nn.Module):
    """One band: its U-Net, its normalizer and its schedule."""

    def __init__(self, cfg: BandConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.unet = DiffusionUnet(cfg.unet)
        self.processor: SampleProcessor = build_processor(cfg.processor, cfg.sample_rate)
        self.schedule = NoiseSchedule(cfg.schedule, self.processor)

    def eps(self, x: torch.Tensor, step: int | torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """The U-Net's noise estimate for `x` `[B, 1, N]` at `step`: the function the samplers call."""
        return self.unet(x, step, condition)


@torch.no_grad()
def re_eq(wav: torch.Tensor, ref: torch.Tensor, sample_rate: int = SAMPLE_RATE, n_bands: int = RE_EQ_BANDS,
          strictness: float = 1.0) -> torch.Tensor:
    """Scale each of `n_bands` mel bands of `wav` to the standard deviation of the same band of `ref`.

    The standard deviations are global over the whole batch tensor, as in audiocraft.
    """
    split = julius.SplitBands(sample_rate, n_bands=n_bands).to(wav.device)
    bands, ref_bands = split(wav), split(ref)
    out = torch.zeros_like(ref)
    for band, ref_band in zip(bands, ref_bands):
        out += band * (ref_band.std() / band.std().clamp(min=1e-12)) ** strictness
    return out


class MultiBandDiffusion(nn.Module):
    """The band models plus the EnCodec that supplies the condition and the EQ reference."""

    def __init__(self, bands: list[BandModel], codec: nn.Module, sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__()
        self.bands = nn.ModuleList(bands)
        self.codec = codec
        self.sample_rate = sample_rate

    @torch.no_grad()
    def generate(self, latent: torch.Tensor, size: torch.Size, generator: torch.Generator | None = None,
                 step_list: list[int] | None = None) -> torch.Tensor:
        """Sum over bands of the subsampled reverse process from white noise, conditioned on `latent`."""
        out = torch.zeros(size, device=latent.device)
        for band in self.bands:
            noise = torch.randn(size, generator=generator).to(latent.device)
            out += band.schedule.generate_subsampled(band.eps, noise, latent, step_list, generator=generator)
        return out

    @torch.no_grad()
    def tokens_to_wav(self, codes: torch.Tensor, seed: int = 0, step_list: list[int] | None = None) -> torch.Tensor:
        """Waveform `[B, C, T * 640]` of MusicGen codes `[B, K, T]`; K = 8 (interleaved stereo) gives C = 2."""
        b, k, t = codes.shape
        stereo = k == 8
        mono = torch.cat([codes[:, 0::2], codes[:, 1::2]]) if stereo else codes  # [2B, 4, T]: left then right
        reference = decode_codes(self.codec, mono)  # [B', 1, N]: the plain EnCodec decode, the EQ reference
        latent = quantized_latent(self.codec, mono)
        generator = torch.Generator().manual_seed(seed)
        size = torch.Size([mono.shape[0], 1, t * HOP_LENGTH])
        wav = re_eq(self.generate(latent, size, generator, step_list), reference[..., : size[-1]], self.sample_rate)
        if stereo:
            wav = torch.cat([wav[:b], wav[b:]], dim=1)  # (s b) c t -> b (s c) t
        return wav


# ---------------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------------


def _as_dictconfig(cfg: dict[str, Any]) -> Any:
    """audiocraft reads `cfg.schedule`, `cfg.channels`, ... by attribute: store an OmegaConf DictConfig."""
    from omegaconf import OmegaConf

    return OmegaConf.create(cfg)


def mbd_package(bands: list[BandModel], sample_rate: int = SAMPLE_RATE) -> dict[Any, Any]:
    """The `mbd_musicgen_32khz.th` dict for trained band models (in band order)."""
    package: dict[Any, Any] = {"sample_rate": sample_rate, "n_bands": len(bands)}
    for i, band in enumerate(bands):
        package[i] = {
            "cfg": _as_dictconfig(band.cfg.to_audiocraft()),
            "model_state": {k: v.detach().cpu().clone() for k, v in band.unet.state_dict().items()},
            "processor_state": {k: v.detach().cpu().clone() for k, v in band.processor.state_dict().items()},
        }
    return package


def save_mbd(bands: list[BandModel], path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write an MBD file atomically (`data_prep.atomic.atomic_write`)."""
    package = mbd_package(bands, sample_rate)
    return atomic_write(path, lambda f: torch.save(package, f))


def resolve_mbd_path(path: str) -> Path:
    """A local `.th` file, a folder holding `mbd_musicgen_32khz.th`, or a hub id (downloaded through the HF cache)."""
    local = Path(path)
    if local.is_file():
        return local
    if local.is_dir():
        return local / MBD_FILENAME
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(path, MBD_FILENAME))


def load_bands(path: str, trust_checkpoint: bool = False) -> tuple[list[BandModel], int]:
    """Band models (eval mode) and the sample rate from an MBD file, loaded strictly and without running code."""
    from finetune.checkpoints.safe_load import safe_torch_load

    package = safe_torch_load(resolve_mbd_path(path), trust_checkpoint=trust_checkpoint)
    missing = [key for key in ("sample_rate", "n_bands") if key not in package]
    if missing:
        raise ValueError(f"{path} is not an MBD file: it has no {missing} (keys {sorted(map(str, package))[:8]})")
    bands = []
    for i in range(int(package["n_bands"])):
        entry = package[i]
        band = BandModel(BandConfig.from_audiocraft(entry["cfg"], i))
        band.unet.load_state_dict(entry["model_state"], strict=True)
        band.processor.load_state_dict(entry["processor_state"], strict=True)
        if isinstance(band.processor, MultiBandProcessor) and not band.processor.counts.item():
            raise ValueError(f"band {i} of {path} uses the normalizer but holds no statistics (counts = 0)")
        bands.append(band.eval())
    return bands, int(package["sample_rate"])


def load_mbd(path: str, codec: nn.Module, trust_checkpoint: bool = False) -> MultiBandDiffusion:
    """The decoder from an MBD file (or hub id) and a transformers EnCodec 32 kHz (e.g. a MusicGen's audio_encoder)."""
    bands, sample_rate = load_bands(path, trust_checkpoint)
    return MultiBandDiffusion(bands, codec, sample_rate).eval()
