"""MBD noise schedule and sampler against audiocraft's numbers (docs/mbd.md) and an independent DDPM step."""

from __future__ import annotations

import pytest
import torch

from finetune.mbd.schedule import DEFAULT_STEP_LIST, NoiseSchedule, ScheduleConfig


@pytest.mark.parametrize(("step", "value"), [(0, 0.99999), (49, 0.99929), (499, 0.8365), (749, 0.3187),
                                              (949, 0.0191), (999, 0.00519)])
def test_alpha_bar_matches_audiocraft(step: int, value: float) -> None:
    schedule = NoiseSchedule()
    assert float(schedule.alpha_bar(step)) == pytest.approx(value, abs=5e-5)
    assert float(schedule.alpha_bar()[step]) == pytest.approx(value, abs=5e-5)


def test_sampler_visits_the_twenty_step_list() -> None:
    visited: list[int] = []
    NoiseSchedule().generate_subsampled(lambda x, step, condition=None: torch.zeros_like(x), torch.randn(1, 1, 64),
                                        visited=visited)
    assert visited == [999, 949, 899, 849, 799, 749, 699, 649, 599, 549, 499, 449, 399, 349, 299, 249, 199, 149, 99, 49]
    assert DEFAULT_STEP_LIST == [*visited, 0]


def test_sampler_equals_a_hand_written_ddpm_over_the_subsampled_chain() -> None:
    """The same chain written from the formulas: a_i = abar(s_i) / abar(s_{i+1}), sigma^2 = beta-tilde."""
    schedule = NoiseSchedule(ScheduleConfig(clip=5.0))
    steps = [999, 499, 49, 0]
    abar = (1 - schedule.betas.double()).cumprod(0)
    initial = torch.randn(2, 1, 32, dtype=torch.float64)

    def model(x: torch.Tensor, step: int, condition=None) -> torch.Tensor:
        return 0.5 * x + step / 1000  # any fixed function of (x, step)

    gen_a, gen_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    ours = schedule.generate_subsampled(model, initial.float(), step_list=steps, generator=gen_a).double()

    x = initial
    for i, s in enumerate(steps[:-1]):
        nxt = steps[i + 1]
        a = abar[s] / abar[nxt]
        x_prev = (x - (1 - a) / (1 - abar[s]).sqrt() * model(x, s)) / a.sqrt()
        if i < len(steps) - 2:  # the last update adds no noise
            sigma2 = (1 - abar[nxt]) / (1 - abar[s]) * (1 - a)
            x_prev = x_prev + sigma2.sqrt() * torch.randn(x.shape, generator=gen_b).double()
        x = x_prev.clamp(-5, 5)
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_training_item_mixes_signal_and_noise_by_alpha_bar() -> None:
    schedule = NoiseSchedule()
    x = torch.randn(64, 1, 100)
    noisy, noise, step = schedule.training_item(x, torch.Generator().manual_seed(0))
    assert step.shape == (64,) and step.min() >= 0 and step.max() < 1000 and len(set(step.tolist())) > 10
    abar = schedule.alpha_bar(step)
    torch.testing.assert_close(noisy, abar.sqrt() * x + (1 - abar).sqrt() * noise)
