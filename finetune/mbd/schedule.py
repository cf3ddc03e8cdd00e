"""MBD's noise schedule: power-repartition betas, training items, and the 20-step subsampled DDPM sampler.

Values are audiocraft's `config/solver/diffusion/default.yaml` (docs/mbd.md): betas =
`linspace(beta_t0 ** (1/p), beta_t1 ** (1/p), 1000) ** p` with beta_t0 1e-5, beta_t1 2.9e-2, p 7.5, so that
alpha_bar[499] = 0.8365, alpha_bar[749] = 0.3187, alpha_bar[999] = 0.00519. The model predicts the noise `eps`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from finetune.mbd.processor import SampleProcessor

DEFAULT_STEP_LIST: list[int] = list(range(1000))[::-50] + [0]
"""audiocraft's `generate_subsampled` default: [999, 949, ..., 49, 0], i.e. 20 model evaluations."""


@dataclass
class ScheduleConfig:
    """audiocraft's `schedule` section.

    Attributes:
        beta_t0: Variance of the first step.
        beta_t1: Variance of the last step.
        beta_exp: Exponent of the power repartition.
        num_steps: Diffusion steps.
        repartition: Only "power" (audiocraft supports nothing else).
        variance: Sigma of the full (1000-step) sampler; unused by the subsampled one.
        clip: Clamp of every denoised iterate.
        rescale: Input rescale (1 in every released config).
        noise_scale: Scale of the noise.
        variable_step_batch: One random step per sample (True) or one per batch.
        n_bands: Must be None (audiocraft asserts it).
    """

    beta_t0: float = 1e-5
    beta_t1: float = 2.9e-2
    beta_exp: float = 7.5
    num_steps: int = 1000
    repartition: Literal["power"] = "power"
    variance: str = "beta"
    clip: float = 5.0
    rescale: float = 1.0
    noise_scale: float = 1.0
    variable_step_batch: bool = True
    n_bands: int | None = None

    @classmethod
    def from_audiocraft(cls, schedule: dict[str, Any]) -> ScheduleConfig:
        """Read audiocraft's `schedule` section, ignoring keys this config does not have."""
        known = {k: v for k, v in schedule.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def to_audiocraft(self) -> dict[str, Any]:
        """The `schedule` section as audiocraft stores it."""
        return asdict(self)


class NoiseSchedule:
    """Forward noising for training and the subsampled reverse process for decoding."""

    def __init__(self, cfg: ScheduleConfig | None = None, processor: SampleProcessor | None = None) -> None:
        self.cfg = cfg or ScheduleConfig()
        if self.cfg.repartition != "power" or self.cfg.n_bands is not None:
            raise ValueError("only the power repartition with n_bands None exists in audiocraft")
        p = self.cfg.beta_exp
        self.betas = torch.linspace(self.cfg.beta_t0 ** (1 / p), self.cfg.beta_t1 ** (1 / p), self.cfg.num_steps,
                                    dtype=torch.float32) ** p
        self.processor = processor or SampleProcessor()

    @property
    def num_steps(self) -> int:
        """Number of diffusion steps (`cfg.num_steps`)."""
        return self.cfg.num_steps

    def alpha_bar(self, step: int | torch.Tensor | None = None) -> torch.Tensor:
        """Cumulative product of (1 - beta) up to and including `step` (all steps when None)."""
        cumulative = (1 - self.betas).cumprod(dim=0)
        if step is None:
            return cumulative
        if isinstance(step, int):
            return (1 - self.betas[: step + 1]).prod()
        return cumulative.to(step.device)[step].view(-1, 1, 1)

    def training_item(self, x: torch.Tensor, generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Noisy input, noise target and steps for clean audio `x` `[B, 1, N]` (per-sample steps, as audiocraft).

        Returns:
            `(noisy [B, 1, N], noise [B, 1, N], step [B])`.
        """
        b = x.shape[0]
        if self.cfg.variable_step_batch:
            step = torch.randint(0, self.num_steps, (b,), generator=generator).to(x.device)
        else:
            step = torch.randint(0, self.num_steps, (1,), generator=generator).expand(b).to(x.device)
        alpha_bar = self.alpha_bar(step)  # [B, 1, 1]
        x = self.processor.project_sample(x)
        noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        noisy = (alpha_bar.sqrt() / self.cfg.rescale) * x + (1 - alpha_bar).sqrt() * noise * self.cfg.noise_scale
        return noisy, noise, step

    @torch.no_grad()
    def generate_subsampled(
        self,
        model: Callable[..., torch.Tensor],
        initial: torch.Tensor,
        condition: torch.Tensor | None = None,
        step_list: list[int] | None = None,
        visited: list[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """audiocraft's `generate_subsampled`: DDPM over the Markov chain states in `step_list`.

        The betas of the shortened chain come from alpha_bar at the listed steps; each update is
        `x <- (x - (1 - a) / sqrt(1 - abar) * eps) / sqrt(a)`, plus noise of variance
        `(1 - abar_prev) / (1 - abar) * (1 - a)` except at the last step, then a clamp to +-clip.

        Args:
            model: `model(x, step, condition=...) -> eps`.
            initial: Starting noise `[B, 1, N]`.
            condition: Codec latent passed to the model.
            step_list: Decreasing steps ending in 0 (default `DEFAULT_STEP_LIST`, 20 model calls).
            visited: If given, the steps the model is evaluated at are appended to it.
            generator: CPU generator of the added noise (reproducible decodes).

        Returns:
            The denoised sample mapped back through the band normalizer, `[B, 1, N]`.
        """
        steps = DEFAULT_STEP_LIST if step_list is None else list(step_list)
        cumulative = self.alpha_bar()
        sub = cumulative[list(reversed(steps))]
        sub_betas = 1 - torch.cat([sub[:1], sub[1:] / sub[:-1]])
        alpha_bar = self.alpha_bar(self.num_steps - 1)
        current = initial * self.cfg.noise_scale
        previous = current
        for i, step in enumerate(steps[:-1]):
            if visited is not None:
                visited.append(step)
            estimate = model(current, step, condition=condition) * self.cfg.noise_scale
            alpha = 1 - sub_betas[-1 - i]
            previous = (current - (1 - alpha) / (1 - alpha_bar).sqrt() * estimate) / alpha.sqrt()
            previous_alpha_bar = self.alpha_bar(steps[i + 1])
            if step == steps[-2]:
                sigma2 = torch.tensor(0.0)
                previous_alpha_bar = torch.tensor(1.0)
            else:
                sigma2 = (1 - previous_alpha_bar) / (1 - alpha_bar) * (1 - alpha)
            if sigma2 > 0:
                noise = torch.randn(previous.shape, generator=generator).to(previous.device, previous.dtype)
                previous = previous + sigma2.sqrt() * noise * self.cfg.noise_scale
            if self.cfg.clip:
                previous = previous.clamp(-self.cfg.clip, self.cfg.clip)
            current, alpha_bar = previous, previous_alpha_bar
        return self.processor.return_sample(previous)
