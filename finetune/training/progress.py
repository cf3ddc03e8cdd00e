"""The training progress bar in optimizer steps of the whole run, the unit of `max_steps`, checkpoints and resumes.

Lightning's bar counts the micro-batches of an epoch: with `accumulate_grad_batches: 8` a 2-step run reads "16/?",
and every epoch of the resampled stream (`data.steps_per_epoch`, an internal unit) starts it again. This one reads
"Training: 1200/10000 steps", continues from the checkpoint's step after a resume, and redraws at most once per
`refresh_rate` steps (a redraw reads the logged loss: a host sync on GPUs).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """`TQDMProgressBar` whose training bar counts optimizer steps up to `trainer.max_steps`."""

    def __init__(self, refresh_rate: int = 1, process_position: int = 0) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=False)
        self._drawn = -1  # the step last drawn: micro-batches of one step draw it once

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        """Size the bar once, to the run's steps, starting at the step it resumed from (not once per epoch)."""
        bar = self.train_progress_bar
        if bar.total != trainer.max_steps or self._drawn < 0:
            bar.reset(total=trainer.max_steps if trainer.max_steps > 0 else None)
            bar.initial = bar.n = trainer.global_step
            bar.unit = "step"
            bar.set_description("Training")
            self._drawn = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Draw the step count after an optimizer step, every `refresh_rate` steps and at the last."""
        step = trainer.global_step
        bar = self.train_progress_bar
        if step == self._drawn or bar.disable or not (step % self.refresh_rate == 0 or step == bar.total):
            return
        self._drawn = step
        bar.n = step
        bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes the bar

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Keep the bar open across the stream's epochs."""
