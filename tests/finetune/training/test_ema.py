"""`finetune.training.ema.EMA`: the foreach update against audiocraft's per-tensor formula."""

from __future__ import annotations

import torch

from finetune.training.ema import EMA


def test_foreach_update_equals_audiocrafts_formula_for_fp32_and_bf16_weights() -> None:
    """audiocraft's ModuleDictEMA: `count = count * decay + 1; w = 1 / count; ema = ema * (1 - w) + param * w`.

    The foreach lerp computes `ema + w * (param - ema)`, the same value up to float32 rounding (rtol 1e-6 after
    20 updates of weights that move every step)."""
    g = torch.Generator().manual_seed(0)
    params = {"a": torch.nn.Parameter(torch.randn(64, 32, generator=g)),
              "b": torch.nn.Parameter(torch.randn(17, generator=g).to(torch.bfloat16))}
    ema = EMA(params, decay=0.9, every=1)
    reference = {k: p.detach().float().clone() for k, p in params.items()}
    count = 0.0
    for step in range(1, 21):
        with torch.no_grad():
            for p in params.values():
                p.add_(torch.randn(p.shape, generator=g).to(p.dtype))
        ema.after_optimizer_step(step)
        count = count * 0.9 + 1
        w = 1.0 / count
        for k, p in params.items():
            reference[k] = reference[k] * (1 - w) + p.detach().float() * w
    for k in params:
        torch.testing.assert_close(ema.shadow[k], reference[k], rtol=1e-6, atol=1e-6)
        assert ema.shadow[k].dtype == torch.float32
    assert not torch.allclose(ema.shadow["a"], params["a"].detach())  # an average, not a copy of the weights


def test_a_skipped_step_leaves_the_ema_where_it_was() -> None:
    params = {"a": torch.nn.Parameter(torch.randn(8))}
    ema = EMA(params, decay=0.5, every=1)
    with torch.no_grad():
        params["a"].add_(1.0)
    before = ema.shadow["a"].clone()
    ema.after_optimizer_step(1, skipped=True)
    assert torch.equal(ema.shadow["a"], before) and ema.count == 0.0
    ema.after_optimizer_step(2)
    assert not torch.equal(ema.shadow["a"], before)
