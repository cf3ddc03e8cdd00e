"""Listen while it trains: generate from fixed captions (and melodies) every N steps and log audio and pictures.

Each round writes `samples/step_XXXXXX/{i}.wav`, a spectrogram and a chroma PNG per sample under the run folder, and
logs them to wandb as `samples/audio`, `samples/spectrogram` and `samples/chroma` when the logger is wandb.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only

from data_prep.schema import SAMPLE_RATE
from finetune.evaluation.plots import chroma_png, spectrogram_png
from finetune.training.fsdp import reshard


class SampleGenerator(L.Callback):
    """Generate from fixed prompts every `every_n_steps` on rank 0 and log audio, spectrograms and chroma.

    Generation goes through the same sampler as `mgft generate` (`finetune.inference.sampler`), with the same
    settings, so a round's codes are what `mgft generate` gives for that checkpoint, prompt, melody and seed. Each
    round writes `samples/step_XXXXXX/`: `{i}.wav`, `{i}_spectrogram.png`, `{i}_chroma.png` and `codes.npy`
    (int16 `[N, K, T]`, to decode again, e.g. with MBD).
    """

    def __init__(self, every_n_steps: int = 1000, captions: list[str] | None = None,
                 melodies: list[str] | None = None, demucs: str = "htdemucs", num_samples: int = 2,
                 seconds: float = 5.0, guidance_scale: float = 3.0, top_k: int = 250, seed: int = 0) -> None:
        """Check and keep the round settings; the prompts are fixed at the first training batch.

        Args:
            every_n_steps: Generate after every this many optimizer steps (and at the end of training).
            captions: Fixed prompts; default: the captions (and melodies) of the first training batch.
            melodies: Audio files whose melodies condition a melody model, one per caption (through HTDemucs and
                the chroma, as `mgft generate --melody`); default: the first batch's chroma.
            demucs: HTDemucs for `melodies` (model name or local folder).
            num_samples: Number of prompts to use.
            seconds: Length of each generated clip.
            guidance_scale: Classifier-free guidance (audiocraft's default 3.0).
            top_k: Top-k sampling (audiocraft's 250, not transformers' 50).
            seed: Sampling seed, fixed so rounds are comparable.
        """
        if melodies is not None and (captions is None or len(melodies) != len(captions)):
            raise ValueError("SampleGenerator: give one caption per melody (captions and melodies of equal length)")
        self.every_n_steps = every_n_steps
        self.captions = captions
        self.melodies = melodies
        self.demucs = demucs
        self.num_samples = num_samples
        self.seconds = seconds
        self.guidance_scale = guidance_scale
        self.top_k = top_k
        self.seed = seed
        self._prompts: list[str] | None = None
        self._chroma: torch.Tensor | None = None  # the first batch's (precomputed) chroma
        self._melody = None  # or the `melodies` files, as `mgft generate --melody` takes them (MelodyAudio)
        self._last_step = -1

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        """Fix the prompts (and melody chroma) once, at the first batch: the given ones, else the batch's own."""
        if self._prompts is not None:
            return
        caps = self.captions or [c or "" for c in batch["captions"]]
        self._prompts = list(caps[: self.num_samples])
        if not getattr(pl_module, "is_melody", False):
            return
        if self.melodies is not None:
            from finetune.inference.generate import melody_audio_for

            channels = getattr(pl_module.model.config.decoder, "audio_channels", 1)
            self._melody = melody_audio_for(self.melodies[: len(self._prompts)], self.demucs, "cpu", channels)
        elif batch.get("chroma") is not None:
            n = min(len(self._prompts), batch["chroma"].shape[0])
            self._chroma = batch["chroma"][:n].detach().cpu()
            self._prompts = self._prompts[:n]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           idx: int) -> None:
        """Run a round every `every_n_steps` optimizer steps, once per step."""
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._last_step = step
            self.generate_and_log(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Run a last round at the end of training, unless this step already had one."""
        if trainer.global_step != self._last_step:
            self._last_step = trainer.global_step
            self.generate_and_log(trainer, pl_module)

    @torch.no_grad()
    def generate(self, pl_module: L.LightningModule) -> tuple[np.ndarray, np.ndarray]:
        """Codes `[N, K, T]` and audio `[N, C, samples]` for the fixed prompts."""
        from data_prep.codec import decode_codes
        from finetune.inference.sampler import Sampler, generate_codes

        was_training = pl_module.training
        pl_module.eval()
        # The sampler draws from its own generator; forking is a guard that nothing moves the training RNG (a
        # resumed run would otherwise diverge from an uninterrupted one).
        cuda = [pl_module.device.index or 0] if pl_module.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=cuda):
                sampler = Sampler.from_module(pl_module, cfg=self.guidance_scale, top_k=self.top_k, seed=self.seed)
                chroma = self._chroma.to(pl_module.device) if self._chroma is not None else None
                codes = generate_codes(sampler, self._prompts, self.seconds, chroma, progress=False,
                                       melody=self._melody)  # [N, K, T]
                audio = decode_codes(pl_module.model.audio_encoder, codes)
        finally:
            pl_module.train(was_training)
            reshard(pl_module.model)  # FSDP2 units a forward without backward left gathered: free them
        return codes.cpu().numpy().astype(np.int16), audio.float().cpu().numpy()

    def generate_and_log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Generate for the fixed prompts, write the round under `samples/step_XXXXXX/` and log it to wandb (rank 0).

        A sharded (FSDP2) model generates on every rank, in step: each forward gathers the layers' shards from all
        ranks. Otherwise only rank 0 generates.
        """
        sharded = getattr(pl_module, "is_sharded", False)
        if not self._prompts or not (sharded or trainer.is_global_zero):
            return
        import soundfile as sf

        from data_prep.chroma import ChromaExtractor

        codes, audio = self.generate(pl_module)
        if not trainer.is_global_zero:
            return
        # Not trainer.log_dir: under DDP it is a broadcast, which would deadlock inside rank-zero-only code.
        out = Path(trainer.default_root_dir) / "samples" / f"step_{trainer.global_step:06d}"
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "codes.npy", codes)
        extractor = ChromaExtractor()
        rows = []
        for i, (wav, prompt) in enumerate(zip(audio, self._prompts)):
            sf.write(out / f"{i}.wav", np.clip(wav.T, -1, 1), SAMPLE_RATE)  # as `mgft generate` writes
            chroma = extractor(torch.from_numpy(wav.mean(0))[None])[0].numpy()
            rows.append((prompt, wav, spectrogram_png(wav, out / f"{i}_spectrogram.png", prompt),
                         chroma_png(chroma, out / f"{i}_chroma.png", prompt)))
        self._log_wandb(trainer, rows)

    def _log_wandb(self, trainer: L.Trainer, rows: list[tuple[str, np.ndarray, Path, Path]]) -> None:
        from lightning.pytorch.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                logger.experiment.log({
                    "samples/audio": [wandb.Audio(w.T, sample_rate=SAMPLE_RATE, caption=p) for p, w, _, _ in rows],
                    "samples/spectrogram": [wandb.Image(str(s), caption=p) for p, _, s, _ in rows],
                    "samples/chroma": [wandb.Image(str(c), caption=p) for p, _, _, c in rows],
                    "trainer/global_step": trainer.global_step,
                })


class MetricsHistory(L.Callback):
    """Append the logged train and validation metrics to `metrics.jsonl` in the run folder (rank 0).

    A plain local record of the curves, whatever the logger: `mgft eval` plots it in its report, and it survives
    requeues (each segment appends, steps continue), which offline wandb runs do not merge.
    """

    def __init__(self, every_n_steps: int = 10) -> None:
        """Keep the write interval of the train metrics.

        Args:
            every_n_steps: Write the train metrics every this many optimizer steps (validation: every time).
        """
        self.every_n_steps = every_n_steps
        self._written_step = -1

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """On a resume, drop the rows of steps after the checkpoint: the resumed run logs those steps again.

        Here and not in `on_fit_start`, which runs before the loop state (the step count) is restored.
        """
        path = Path(trainer.default_root_dir) / "metrics.jsonl"
        if not path.is_file():
            return
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        kept = []
        for line in rows:
            try:
                if json.loads(line)["step"] <= trainer.global_step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line torn by a kill mid-write
        if len(kept) != len(rows):
            from data_prep.atomic import atomic_write_text

            atomic_write_text(path, "".join(line + "\n" for line in kept))

    @rank_zero_only
    def _write(self, trainer: L.Trainer, prefixes: tuple[str, ...]) -> None:
        row: dict[str, float] = {"step": trainer.global_step}
        for key, value in trainer.callback_metrics.items():
            if key.startswith(prefixes) and isinstance(value, torch.Tensor) and value.numel() == 1:
                row[key] = float(value)
        if len(row) > 1:
            path = Path(trainer.default_root_dir) / "metrics.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           idx: int) -> None:
        """Write the train metrics every `every_n_steps` optimizer steps."""
        # With gradient accumulation several batches end on one optimizer step; its row is written once.
        if trainer.global_step % self.every_n_steps == 0 and trainer.global_step != self._written_step:
            self._written_step = trainer.global_step
            self._write(trainer, ("train/",))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write the validation metrics after every validation except the sanity check."""
        if not trainer.sanity_checking:
            self._write(trainer, ("val/",))
