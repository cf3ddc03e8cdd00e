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

from data_prep.schema import FRAME_RATE, SAMPLE_RATE


def spectrogram_png(wav: np.ndarray, path: Path, title: str) -> Path:
    """Log-magnitude spectrogram of `wav` `[C, N]` (channel mean) at 32 kHz, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = torch.from_numpy(wav.mean(0))
    spec = torch.stft(x, n_fft=1024, hop_length=256, window=torch.hann_window(1024), return_complex=True).abs()
    db = 20 * torch.log10(spec.clamp(min=1e-5))  # [F, frames]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.imshow(db.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=float(db.max()) - 80,
              extent=(0, x.shape[0] / SAMPLE_RATE, 0, SAMPLE_RATE / 2000))
    ax.set(xlabel="seconds", ylabel="kHz", title=title[:80])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def chroma_png(chroma: np.ndarray, path: Path, title: str) -> Path:
    """A `[frames, 12]` chroma as a pitch-class picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.imshow(chroma.T, origin="lower", aspect="auto", cmap="Greys", interpolation="nearest")
    ax.set_yticks(range(12), ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"], fontsize=6)
    ax.set(xlabel="chroma frame (7.8 Hz)", title=title[:80])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


class SampleGenerator(L.Callback):
    """Generate from fixed prompts every `every_n_steps` on rank 0 and log audio, spectrograms and chroma."""

    def __init__(self, every_n_steps: int = 1000, captions: list[str] | None = None, num_samples: int = 2,
                 seconds: float = 5.0, guidance_scale: float = 3.0, top_k: int = 250, seed: int = 0) -> None:
        """Args:
            every_n_steps: Generate after every this many optimizer steps (and at the end of training).
            captions: Fixed prompts; default: the captions (and melodies) of the first training batch.
            num_samples: Number of prompts to use.
            seconds: Length of each generated clip.
            guidance_scale: Classifier-free guidance (audiocraft's default 3.0).
            top_k: Top-k sampling (audiocraft's 250, not transformers' 50).
            seed: Sampling seed, fixed so rounds are comparable.
        """
        self.every_n_steps = every_n_steps
        self.captions = captions
        self.num_samples = num_samples
        self.seconds = seconds
        self.guidance_scale = guidance_scale
        self.top_k = top_k
        self.seed = seed
        self._prompts: list[str] | None = None
        self._chroma: torch.Tensor | None = None
        self._last_step = -1

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if self._prompts is None:
            caps = self.captions or [c or "" for c in batch["captions"]]
            self._prompts = list(caps[: self.num_samples])
            if getattr(pl_module, "is_melody", False) and batch.get("chroma") is not None:
                n = min(len(self._prompts), batch["chroma"].shape[0])
                self._chroma = batch["chroma"][:n].detach().cpu()
                self._prompts = self._prompts[:n]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           idx: int) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._last_step = step
            self.generate_and_log(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self._last_step = trainer.global_step
            self.generate_and_log(trainer, pl_module)

    @torch.no_grad()
    def generate(self, pl_module: L.LightningModule) -> np.ndarray:
        """Audio `[N, C, samples]` for the fixed prompts."""
        model, tokenizer = pl_module.model, pl_module.tokenizer
        inputs = tokenizer(self._prompts, padding=True, return_tensors="pt").to(pl_module.device)
        kwargs: dict[str, Any] = {}
        if self._chroma is not None:
            kwargs["input_features"] = self._chroma.to(pl_module.device)
        was_training = model.training
        model.eval()
        # Sampling must not move the training RNG: a resumed run would otherwise diverge from an uninterrupted one.
        cuda = [pl_module.device.index or 0] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(self.seed)
            return self._generate(model, inputs, kwargs, pl_module, was_training)

    def _generate(self, model, inputs, kwargs, pl_module, was_training: bool) -> np.ndarray:
        try:
            audio = model.generate(**inputs, **kwargs, do_sample=True, top_k=self.top_k,
                                   guidance_scale=self.guidance_scale,
                                   max_new_tokens=int(self.seconds * FRAME_RATE) + len(set(pl_module.delays)))
        finally:
            model.train(was_training)
            pl_module.train(was_training)
        return audio.float().cpu().numpy()

    @rank_zero_only
    def generate_and_log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._prompts:
            return
        import soundfile as sf

        from data_prep.chroma import ChromaExtractor

        audio = self.generate(pl_module)
        # Not trainer.log_dir: under DDP it is a broadcast, which would deadlock inside rank-zero-only code.
        out = Path(trainer.default_root_dir) / "samples" / f"step_{trainer.global_step:06d}"
        out.mkdir(parents=True, exist_ok=True)
        extractor = ChromaExtractor()
        rows = []
        for i, (wav, prompt) in enumerate(zip(audio, self._prompts)):
            sf.write(out / f"{i}.wav", wav.T, SAMPLE_RATE)
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
        """Args:
            every_n_steps: Write the train metrics every this many optimizer steps (validation: every time).
        """
        self.every_n_steps = every_n_steps

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
        if trainer.global_step % self.every_n_steps == 0:
            self._write(trainer, ("train/",))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._write(trainer, ("val/",))
