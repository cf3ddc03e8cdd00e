"""The MBD band trainer: one LightningModule per frequency band, with audiocraft's `DiffusionSolver` semantics.

A batch's path to the loss (B mono crops of N samples, D = codec latent width):

    crop [B, 1, N] --frozen EnCodec encode + quantizer decode--> condition [B, D, N / 640]
    crop --band split, keep band `band`--> target band [B, 1, N] --normalizer--> x0
    x0, random step t per item, noise eps --> noisy = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    U-Net(noisy, t, condition) --> eps_hat;  loss = mean over items of MSE(eps_hat, eps) over (C, N)

The normalizer's statistics (bands 2 and 3) accumulate over the first `processor.num_samples` training items and
are then frozen (they are buffers: checkpointed, and written to the MBD file). Validation reports the loss per
quarter of the step range (`val/loss_0` = the least noisy), with the EMA weights swapped in, as audiocraft.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.nn import functional as F

from data_prep.codec import load_codec, quantized_latent
from data_prep.schema import SAMPLE_RATE
from finetune.lm.data import stream_seed
from finetune.mbd.decoder import BAND_PROCESSORS, BandConfig, BandModel, band_filter, load_bands
from finetune.mbd.processor import ProcessorConfig
from finetune.mbd.schedule import ScheduleConfig
from finetune.mbd.unet import UnetConfig
from finetune.training.ema import EMA


class MBDBand(L.LightningModule):
    """Train the diffusion U-Net of one MBD band on 1 s crops of prepped audio."""

    def __init__(
        self,
        codec: str,
        band: int = 0,
        init_from: str | None = None,
        n_bands: int = 4,
        cutoffs: list[float] | None = None,
        unet: UnetConfig | None = None,
        schedule: ScheduleConfig | None = None,
        processor: ProcessorConfig | None = None,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        ema_decay: float | None = 0.99,
        ema_every: int = 1,
        num_stages: int = 4,
        sample_items: int = 2,
        seed: int = 0,
    ) -> None:
        """Build the band's model from its settings or from the released band in `init_from`, and load the codec.

        Args:
            codec: transformers EnCodec 32 kHz (hub id `facebook/encodec_32khz` or a folder) for the condition.
            band: The band this model generates (0 = lowest of `n_bands`).
            init_from: An MBD file (hub id `facebook/multiband-diffusion`, `.th` file or folder) whose band `band`
                this run fine-tunes: its U-Net, schedule and normalizer settings, weights and statistics. Leave
                `unet`, `schedule`, `processor`, `n_bands` and `cutoffs` unset with it.
            n_bands: MBD bands (4 for MusicGen's MBD).
            cutoffs: Explicit band edges in Hz (default: julius' mel split, 847 / 2719 / 6856 Hz).
            unet: U-Net settings (default: audiocraft's basic.yaml with codec_dim 128 and a transformer bottleneck).
            schedule: Noise schedule (default: audiocraft's diffusion/default.yaml).
            processor: Per-band normalizer (default: the 4-band grid's setting for `band`).
            lr: Adam learning rate (audiocraft: 2e-4, no schedule, no clipping).
            betas: Adam betas (audiocraft: 0.9, 0.999).
            weight_decay: Adam weight decay (audiocraft: 0).
            ema_decay: EMA decay (audiocraft: 0.99 every step); None disables it. Validation and export use the EMA.
            ema_every: Optimizer steps between EMA updates.
            num_stages: Quarters (stages) of the step range the validation loss is reported by.
            sample_items: Validation crops regenerated (20-step sampler) and logged as audio and spectrograms after
                each validation; 0 disables it.
            seed: Seed of the noise and step draws.
        """
        super().__init__()
        self.save_hyperparameters()
        if not 0 <= band < n_bands:
            raise ValueError(f"band {band} is outside 0..{n_bands - 1}")
        released = None
        if init_from is not None:
            given = [name for name, value in (("unet", unet), ("schedule", schedule), ("processor", processor),
                                               ("cutoffs", cutoffs)) if value is not None]
            if given or n_bands != 4:
                unset = given or ["n_bands"]
                raise ValueError(f"model.init_from takes the band's settings from the file; unset {unset}")
            bands, _ = load_bands(init_from)
            if band >= len(bands):
                raise ValueError(f"{init_from} has {len(bands)} bands; band {band} does not exist")
            released = bands[band]
            self.band_cfg = released.cfg
        else:
            if processor is None:
                processor = BAND_PROCESSORS[band] if n_bands == len(BAND_PROCESSORS) else ProcessorConfig()
            self.band_cfg = BandConfig(band=band, n_bands=n_bands, cutoffs=cutoffs,
                                       unet=unet or UnetConfig(transformer=True),
                                       schedule=schedule or ScheduleConfig(), processor=processor)
        self.codec = load_codec(codec)
        latent_dim = self.codec.config.codebook_dim
        if self.band_cfg.unet.codec_dim not in (None, latent_dim):
            raise ValueError(f"unet.codec_dim {self.band_cfg.unet.codec_dim} != the codec's latent width {latent_dim}")
        self.model = released if released is not None else BandModel(self.band_cfg)
        self.model.train()
        self.split = band_filter(self.band_cfg)
        self.ema = EMA(dict(self.model.unet.named_parameters()), ema_decay, ema_every) if ema_decay else None
        self.generator = torch.Generator().manual_seed(seed)

    # ---- the loss ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def condition(self, audio: torch.Tensor) -> torch.Tensor:
        """EnCodec's quantized latent `[B, D, N / 640]` of mono audio `[B, 1, N]` (all four codebooks, 2.2 kbps)."""
        codes = self.codec.encode(audio, bandwidth=self.codec.config.target_bandwidths[-1]).audio_codes[0]  # [B, K, T]
        return quantized_latent(self.codec, codes)

    def losses(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-item MSE `[B]` and the steps `[B]` they were drawn at."""
        condition = self.condition(audio)
        target_band = self.split(audio)[self.band_cfg.band]  # [B, 1, N]
        noisy, noise, step = self.model.schedule.training_item(target_band, self.generator)
        estimate = self.model.unet(noisy, step, condition)
        return F.mse_loss(estimate, noise, reduction="none").mean(dim=(1, 2)), step

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """Mean denoising MSE of a batch of crops `[B, 1, N]`; logs it and the learning rate."""
        # The transformer bottleneck's dropout draws from torch's global generator, which checkpoints do not hold:
        # seeding it by (seed, step, rank) makes a resumed run draw what the uninterrupted run did.
        torch.manual_seed(stream_seed(self.hparams.seed, "dropout", self.global_step, self.global_rank))
        loss, _ = self.losses(batch)  # the normalizer gathers its statistics here (train mode) until frozen
        loss = loss.mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.shape[0])
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=batch.shape[0])
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Take the optimizer step, then update the EMA (here, after the step, not at batch end)."""
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:  # here, not at batch end: see finetune/training/ema.py
            self.ema.after_optimizer_step(self.global_step)

    def on_validation_epoch_start(self) -> None:
        """Reset the per-stage loss sums `[2, num_stages]` and swap the EMA weights in for validation."""
        self._val_sums = torch.zeros(2, self.hparams.num_stages)  # [loss sum, count] per stage
        if self.ema is not None:
            self._ema_context = self.ema.swapped()
            self._ema_context.__enter__()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        """Add the losses to the sums of the stages their steps fall in; keep the first batch's crops for samples."""
        # A fixed generator per batch: every validation pass draws the same steps and noise.
        state = self.generator.get_state()
        self.generator.manual_seed(self.hparams.seed + 1 + batch_idx)
        loss, step = self.losses(batch)  # eval mode: the normalizer's statistics stay as they are
        self.generator.set_state(state)
        if batch_idx == 0:
            self._sample_audio = batch[: self.hparams.sample_items]
        stage = (step.float() / self.model.schedule.num_steps * self.hparams.num_stages).long().cpu()
        for s in range(self.hparams.num_stages):
            mine = stage == s
            self._val_sums[0, s] += loss.detach().cpu()[mine].sum()
            self._val_sums[1, s] += mine.sum()

    def on_validation_epoch_end(self) -> None:
        """Log the samples (rank 0), swap the training weights back, and log `val/loss` and the loss per stage."""
        audio = getattr(self, "_sample_audio", None)
        if self.hparams.sample_items and self.trainer.is_global_zero and audio is not None:
            self.log_samples(audio)
        if self.ema is not None:
            self._ema_context.__exit__(None, None, None)
        sums = self._val_sums.to(self.device)
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        total = sums[0].sum() / sums[1].sum().clamp(min=1)
        self.log("val/loss", total, sync_dist=False, rank_zero_only=True)
        for s in range(self.hparams.num_stages):
            if sums[1, s] > 0:
                self.log(f"val/loss_{s}", sums[0, s] / sums[1, s], sync_dist=False, rank_zero_only=True)

    @torch.no_grad()
    def regenerate(self, audio: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """This band of `audio` `[B, 1, N]` regenerated from its EnCodec latent with the 20-step sampler."""
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(audio.shape, generator=generator).to(audio.device)
        return self.model.schedule.generate_subsampled(self.model.eps, noise, self.condition(audio),
                                                       generator=generator)

    def log_samples(self, audio: torch.Tensor) -> None:
        """Write reference band vs regenerated band (wav + spectrogram) under `samples/`, and to wandb."""
        import soundfile as sf
        from lightning.pytorch.loggers import WandbLogger

        from finetune.evaluation.plots import spectrogram_png

        generated = self.regenerate(audio).float().cpu().numpy()  # [B, 1, N]
        reference = self.split(audio)[self.band_cfg.band].float().cpu().numpy()
        folder = Path(self.trainer.default_root_dir) / "samples" / f"step_{self.global_step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        media: dict[str, list[Any]] = {"audio": [], "spectrogram": []}
        for i, (ref, gen) in enumerate(zip(reference, generated)):
            for name, wav in (("reference", ref), ("regenerated", gen)):
                wav_path = folder / f"{i}_{name}.wav"
                sf.write(wav_path, wav.T.clip(-1, 1), SAMPLE_RATE)
                png = spectrogram_png(wav, folder / f"{i}_{name}.png", f"band {self.band_cfg.band} {name} {i}")
                media["audio"].append((str(wav_path), f"{i} {name}"))
                media["spectrogram"].append((str(png), f"{i} {name}"))
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                logger.experiment.log({
                    "samples/audio": [wandb.Audio(p, sample_rate=SAMPLE_RATE, caption=c) for p, c in media["audio"]],
                    "samples/spectrogram": [wandb.Image(path, caption=c) for path, c in media["spectrogram"]],
                    "trainer/global_step": self.global_step,
                })

    # ---- optimization and checkpoints -------------------------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over the U-Net (audiocraft: no schedule, no clipping)."""
        return torch.optim.Adam(self.model.unet.parameters(), lr=self.hparams.lr, betas=tuple(self.hparams.betas),
                                weight_decay=self.hparams.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the band model without the frozen codec, hyperparameters as dicts, plus the EMA and band config."""
        # The frozen codec is reloaded from `codec`; only the band model (U-Net + normalizer buffers) is saved.
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("codec.")}
        # Dataclass hyperparameters as plain dicts, so the checkpoint loads with weights_only=True.
        checkpoint["hyper_parameters"] = {k: asdict(v) if is_dataclass(v) else v
                                          for k, v in checkpoint["hyper_parameters"].items()}
        if self.ema is not None:
            checkpoint["mgft_ema"] = self.ema.state_dict()
        # The step and noise draws continue where they stood, so a resumed run draws what the uninterrupted one did.
        checkpoint["mgft_generator"] = self.generator.get_state()
        checkpoint["mgft_band_config"] = self.band_cfg.to_audiocraft()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the EMA and the noise generator; put the codec's weights, which checkpoints leave out, back."""
        if self.ema is not None and "mgft_ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["mgft_ema"])
        if "mgft_generator" in checkpoint:
            self.generator.set_state(checkpoint["mgft_generator"])
        checkpoint["state_dict"] = {**{f"codec.{k}": v for k, v in self.codec.state_dict().items()},
                                    **checkpoint["state_dict"]}

    def band_model(self, use_ema: bool = True) -> BandModel:
        """The band model with the EMA weights (what goes into the MBD file)."""
        if use_ema and self.ema is not None:
            with torch.no_grad():
                for name, param in self.model.unet.named_parameters():
                    param.copy_(self.ema.shadow[name].to(param.dtype))
        return self.model.eval()

    @classmethod
    def from_checkpoint(cls, path: str, trust_checkpoint: bool = False) -> MBDBand:
        """Rebuild a trained band from an mgft MBD checkpoint (loaded without running code)."""
        from finetune.checkpoints.safe_load import safe_torch_load
        from finetune.errors import BadFileError

        checkpoint = safe_torch_load(path, trust_checkpoint=trust_checkpoint)
        stored = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
        if not isinstance(stored, dict) or "band" not in stored or "codec" not in stored:
            raise BadFileError(f"{path} is not a checkpoint of `mgft mbd-fit` (its hyper_parameters name no band and "
                               "codec)")
        hparams = {k: v for k, v in stored.items() if not k.startswith("_")}
        for key, klass in (("unet", UnetConfig), ("schedule", ScheduleConfig), ("processor", ProcessorConfig)):
            if isinstance(hparams.get(key), dict):
                hparams[key] = klass(**hparams[key])
        module = cls(**hparams)
        module.on_load_checkpoint(checkpoint)
        module.load_state_dict(checkpoint["state_dict"], strict=True)
        return module.eval()
