"""Exponential moving average of the trainable weights, as audiocraft's `ModuleDictEMA` (unbiased).

audiocraft steps the EMA every `updates` optimizer steps with `count = count * decay + 1; w = 1 / count;
ema = ema * (1 - w) + param * w`, validates with the EMA weights swapped in, and exports them as `best_state`.

When it updates matters for checkpoints: Lightning runs the callbacks' `on_train_batch_end` (ModelCheckpoint
among them) before the LightningModule's own, so an EMA updated there would be checkpointed one step behind the
weights. Both trainers (the LM and the MBD bands) call `EMA.after_optimizer_step` from their `optimizer_step`
override instead, so the checkpoint named after step N holds the EMA of step N.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class EMA:
    """Float32 shadow copies of named parameters."""

    def __init__(self, named_params: dict[str, torch.nn.Parameter], decay: float = 0.99, every: int = 1) -> None:
        """Start the shadow as float32 copies of `named_params`.

        Args:
            named_params: the trainable parameters, by name.
            decay: EMA decay.
            every: update every this many optimizer steps (audiocraft's `ema.updates`).
        """
        self.params = named_params
        self.decay = decay
        self.every = every
        self.count = 0.0
        self.shadow = {k: p.detach().float().clone() for k, p in named_params.items()}

    def after_optimizer_step(self, global_step: int, skipped: bool = False) -> None:
        """Update when `global_step` (already counting the step just taken) is a multiple of `every`.

        Args:
            global_step: the trainer's step counter after the optimizer step.
            skipped: the step was skipped (non-finite gradients): the weights did not move, so neither does the EMA.
        """
        if not skipped and global_step % self.every == 0:
            self.update()

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step towards the current weights: `ema += w * (param - ema)`, one foreach lerp for all."""
        self.count = self.count * self.decay + 1
        w = 1.0 / self.count  # a host float: the count never lives on the device
        for k, p in self.params.items():
            if self.shadow[k].device != p.device:  # the module moved to its device after the EMA was made
                self.shadow[k] = self.shadow[k].to(p.device)
        shadows = list(self.shadow[k] for k in self.params)
        weights = [p.detach() if p.dtype == torch.float32 else p.detach().float() for p in self.params.values()]
        # ema * (1 - w) + param * w, as audiocraft's ModuleDictEMA, in one kernel per device and dtype group.
        torch._foreach_lerp_(shadows, weights, w)

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Temporarily load the EMA weights into the model (for validation and export)."""
        backup = {k: p.detach().clone() for k, p in self.params.items()}
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(self.shadow[k].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(backup[k])

    def state_dict(self) -> dict:
        """The count, decay and float32 shadows (saved in checkpoints)."""
        return {"count": self.count, "decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""
        self.count, self.decay = state["count"], state["decay"]
        for k, v in state["shadow"].items():
            self.shadow[k] = v.to(self.shadow[k].device) if k in self.shadow else v
