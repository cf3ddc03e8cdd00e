"""`finetune.lm.loss.masked_codebook_ce` against audiocraft's per-codebook loop and transformers' loss convention.

Run: `.venv/bin/pytest -q tests/finetune/test_loss.py` (CPU, a few seconds).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from finetune.lm.loss import masked_codebook_ce
from finetune.lm.patterns import SPECIAL_TOKEN_ID, align_logits, build_delayed_inputs, delays_for, loss_mask

CARD = 32


def _random_batch(
    B: int = 3, K: int = 4, T: int = 9, card: int = CARD, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random logits `[B, K, T, card]`, targets `[B, K, T]` and a pattern & padding mask `[B, K, T]`."""
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(B, K, T, card, generator=g)
    targets = torch.randint(0, card, (B, K, T), generator=g)
    valid = torch.randint(T // 2, T + 1, (B,), generator=g)
    mask = loss_mask(valid, delays_for(K), T)
    return logits, targets, mask


def _audiocraft_loop(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, list]:
    """audiocraft's `_compute_cross_entropy`: per codebook, boolean-index the batch, F.cross_entropy, mean over K."""
    K = logits.shape[1]
    ce = torch.zeros([], device=logits.device)
    per_codebook = []
    for k in range(K):
        logits_k = logits[:, k].contiguous().view(-1, logits.size(-1))  # [B*T, card]
        targets_k = targets[:, k].contiguous().view(-1)  # [B*T]
        mask_k = mask[:, k].contiguous().view(-1)  # [B*T]
        q_ce = F.cross_entropy(logits_k[mask_k].float(), targets_k[mask_k])
        ce = ce + q_ce
        per_codebook.append(q_ce)
    return ce / K, per_codebook


def _transformers_convention(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`MusicgenForCausalLM.forward`'s loss: -100 labels ignored, per-codebook CrossEntropyLoss summed / K."""
    B, K, T, card = logits.shape
    labels = targets.masked_fill(~mask, -100).transpose(1, 2)  # HF's (B, T, K) label layout
    loss_fct = nn.CrossEntropyLoss(ignore_index=-100)
    loss = torch.zeros([])
    for codebook in range(K):
        codebook_logits = logits[:, codebook].contiguous().view(-1, card)
        codebook_labels = labels[..., codebook].contiguous().view(-1)
        loss = loss + loss_fct(codebook_logits, codebook_labels)
    return loss / K


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("K", [4, 8])
def test_equals_audiocraft_loop(seed: int, K: int) -> None:
    logits, targets, mask = _random_batch(K=K, seed=seed)
    loss, per_codebook = masked_codebook_ce(logits, targets, mask)
    ref_loss, ref_per_codebook = _audiocraft_loop(logits, targets, mask)
    assert loss.shape == () and per_codebook.shape == (K,)
    assert loss.dtype == torch.float32 and per_codebook.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(per_codebook, torch.stack(ref_per_codebook), rtol=1e-6, atol=1e-6)


def test_equals_audiocraft_loop_with_random_mask() -> None:
    # Any mask, not just pattern & padding shaped ones.
    logits, targets, _ = _random_batch(B=4, T=13, seed=7)
    mask = torch.rand(targets.shape, generator=torch.Generator().manual_seed(8)) < 0.3
    assert mask.any(dim=(0, 2)).all()
    loss, _ = masked_codebook_ce(logits, targets, mask)
    torch.testing.assert_close(loss, _audiocraft_loop(logits, targets, mask)[0], rtol=1e-6, atol=1e-6)


def test_equals_transformers_convention() -> None:
    logits, targets, mask = _random_batch(B=2, T=11, seed=3)
    loss, _ = masked_codebook_ce(logits, targets, mask)
    torch.testing.assert_close(loss, _transformers_convention(logits, targets, mask), rtol=1e-6, atol=1e-6)


def test_accepts_broadcast_pattern_mask() -> None:
    logits, targets, _ = _random_batch(seed=4)
    _, mask_kt = align_logits(torch.zeros(1, 4, 10, 1), delays_for(4))  # [K, T=9]
    loss, _ = masked_codebook_ce(logits, targets, mask_kt)
    full = mask_kt.expand(targets.shape)
    torch.testing.assert_close(loss, _audiocraft_loop(logits, targets, full)[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("audio_channels", [1, 2], ids=["mono", "stereo"])
def test_equals_transformers_model_loss_on_audiocraft_labels(audio_channels: int) -> None:
    """End to end with a tiny `MusicgenForCausalLM`: audiocraft's loss (our inputs, align_logits, pattern mask) equals
    HF's own `forward(labels=...)` loss on the delayed labels truncated to the first T positions (docs/fidelity.md)."""
    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

    K, T, B = 4 * audio_channels, 7, 2
    delays = delays_for(K, audio_channels)
    config = MusicgenDecoderConfig(
        vocab_size=2048,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        ffn_dim=32,
        num_codebooks=K,
        audio_channels=audio_channels,
    )
    torch.manual_seed(0)
    model = MusicgenForCausalLM(config).eval()
    codes = torch.randint(0, 2048, (B, K, T), generator=torch.Generator().manual_seed(1))

    # audiocraft: inputs [B, K, T+1] -> logits [B, K, T+1, card] -> frame grid + pattern mask.
    inputs = build_delayed_inputs(codes, delays)
    with torch.no_grad():
        logits = model(input_ids=inputs.reshape(B * K, T + 1)).logits.reshape(B, K, T + 1, -1)
    aligned, mask = align_logits(logits, delays)
    loss, _ = masked_codebook_ce(aligned, codes, mask.expand(B, K, T))

    # HF: delayed labels labels[p, q] = code[q, p - delay_q] (2048 outside), first T positions only, (B, T, K) layout;
    # forward shifts them right (BOS 2048) into the same inputs and maps 2048 labels to -100.
    labels = torch.full((B, K, T), SPECIAL_TOKEN_ID)
    for q, d in enumerate(delays):
        labels[:, q, d:] = codes[:, q, : T - d]
    with torch.no_grad():
        hf_loss = model(labels=labels.transpose(1, 2)).loss
    torch.testing.assert_close(loss, hf_loss, rtol=1e-5, atol=1e-5)


def test_empty_codebook_is_excluded_without_nan() -> None:
    logits, targets, mask = _random_batch(seed=5)
    mask = mask.clone()
    mask[:, 3] = False
    logits.requires_grad_(True)
    loss, per_codebook = masked_codebook_ce(logits, targets, mask)

    assert torch.isfinite(loss) and torch.isfinite(per_codebook).all()
    assert per_codebook[3].item() == 0.0
    # The mean runs over the 3 codebooks that have tokens (audiocraft itself would give NaN here).
    _, ref_per_codebook = _audiocraft_loop(logits.detach(), targets, mask)
    assert math.isnan(ref_per_codebook[3].item())
    torch.testing.assert_close(loss.detach(), torch.stack(ref_per_codebook[:3]).mean(), rtol=1e-6, atol=1e-6)

    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[:, 3] == 0).all()


def test_all_masked_batch_gives_zero_attached_loss() -> None:
    logits, targets, mask = _random_batch(seed=6)
    logits.requires_grad_(True)
    loss, per_codebook = masked_codebook_ce(logits, targets, torch.zeros_like(mask))
    assert loss.item() == 0.0 and (per_codebook == 0).all()
    assert loss.requires_grad  # backward() (and DDP's hooks) still run on such a step
    loss.backward()
    assert (logits.grad == 0).all()


def test_too_short_crop_gives_no_nan() -> None:
    """T=2 with delays [0, 1, 2, 3]: codebooks 2 and 3 have no logit at all; audiocraft would diverge."""
    T, K = 2, 4
    raw = torch.randn(2, K, T + 1, CARD, requires_grad=True)
    aligned, mask = align_logits(raw, delays_for(K))
    assert mask.sum(dim=1).tolist() == [2, 1, 0, 0]
    targets = torch.randint(0, CARD, (2, K, T))
    loss, per_codebook = masked_codebook_ce(aligned, targets, mask)
    ref_loss, _ = _audiocraft_loop(aligned.detach()[:, :2], targets[:, :2], mask[None, :2].expand(2, 2, T))
    torch.testing.assert_close(loss.detach(), ref_loss, rtol=1e-6, atol=1e-6)
    assert per_codebook[2:].tolist() == [0.0, 0.0]
    loss.backward()
    assert torch.isfinite(raw.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_computed_in_float32(dtype: torch.dtype) -> None:
    logits, targets, mask = _random_batch(seed=9)
    low = logits.to(dtype)
    loss, per_codebook = masked_codebook_ce(low, targets, mask)
    assert loss.dtype == torch.float32 and per_codebook.dtype == torch.float32
    # Exactly the float32 computation on the rounded logits...
    ref_loss, _ = masked_codebook_ce(low.float(), targets, mask)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=0)
    # ...and close to the full-precision loss (only the input rounding differs).
    torch.testing.assert_close(loss, _audiocraft_loop(logits, targets, mask)[0], rtol=2e-2, atol=2e-2)


def test_gradient_only_reaches_masked_positions() -> None:
    logits, targets, mask = _random_batch(seed=10)
    logits.requires_grad_(True)
    loss, _ = masked_codebook_ce(logits, targets, mask)
    loss.backward()
    grad = logits.grad  # [B, K, T, card]
    assert (grad[~mask] == 0).all()
    assert (grad[mask].abs().sum(dim=-1) > 0).all()
    # Same gradient as the reference loop.
    ref = logits.detach().clone().requires_grad_(True)
    _audiocraft_loop(ref, targets, mask)[0].backward()
    torch.testing.assert_close(grad, ref.grad, rtol=1e-5, atol=1e-7)


def test_nan_filled_aligned_logits_stay_out_of_loss_and_gradient() -> None:
    """align_logits fills positions without a logit with NaN; neither the loss nor any gradient sees them."""
    B, K, T = 2, 4, 6
    raw = torch.randn(B, K, T + 1, CARD, requires_grad=True)  # [B, K, S, card]
    aligned, mask = align_logits(raw, delays_for(K))
    assert torch.isnan(aligned).any()
    targets = torch.randint(0, CARD, (B, K, T))
    loss, _ = masked_codebook_ce(aligned, targets, loss_mask(torch.tensor([6, 4]), delays_for(K), T))
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(raw.grad).all()
    # Raw steps s < delay_q and the last step s = T predict nothing under the pattern: zero gradient.
    for q, d in enumerate(delays_for(K)):
        assert (raw.grad[:, q, :d] == 0).all()
        assert (raw.grad[:, q, T] == 0).all()
    # Sample 1 has 4 real frames: steps s = t + delay_q with t >= 4 get no gradient either.
    for q, d in enumerate(delays_for(K)):
        assert (raw.grad[1, q, 4 + d :] == 0).all()


def test_rejects_bad_inputs() -> None:
    logits, targets, mask = _random_batch()
    with pytest.raises(ValueError):
        masked_codebook_ce(logits[0], targets, mask)
    with pytest.raises(ValueError):
        masked_codebook_ce(logits, targets[:, :, :-1], mask)
    with pytest.raises(ValueError):
        masked_codebook_ce(logits, targets, mask.long())


def test_validation_sums_give_the_training_loss_per_codebook() -> None:
    from finetune.lm.loss import codebook_nll_sums

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 4, 7, 16, generator=g)
    targets = torch.randint(0, 16, (3, 4, 7), generator=g)
    mask = torch.rand(3, 4, 7, generator=g) > 0.3
    logits[~mask] = float("nan")  # what align_logits leaves where there is no prediction
    sums = codebook_nll_sums(logits, targets, mask)  # [2, K]
    _, per_codebook = masked_codebook_ce(logits, targets, mask)
    torch.testing.assert_close(sums[0] / sums[1], per_codebook)
    assert torch.equal(sums[1], mask.sum(dim=(0, 2)).float())


@pytest.mark.parametrize("K, channels", [(4, 1), (8, 2)])
def test_codes_moved_to_the_step_grid_give_the_aligned_loss_and_gradients(K: int, channels: int) -> None:
    """Training scores the first T logit steps against `delayed_targets`; that must be audiocraft's loss on logits
    reverted to the frame grid (`align_logits` + `loss_mask`), with the same gradient on the raw logits (float32
    rounding of a different summation order apart: rtol 1e-6)."""
    from finetune.lm.patterns import delayed_targets

    B, T = 3, 11
    delays = delays_for(K, channels)
    g = torch.Generator().manual_seed(5)
    raw = (3 * torch.randn(B, K, T + 1, CARD, generator=g)).requires_grad_(True)  # [B, K, S, card]
    codes = torch.randint(0, CARD, (B, K, T), generator=g)
    assert len(codes.unique()) > CARD // 2  # informative codes: a shifted target scores differently
    valid = torch.tensor([T, 7, 4])  # padding too

    aligned, _ = align_logits(raw, delays)
    reference, ref_per_codebook = masked_codebook_ce(aligned, codes, loss_mask(valid, delays, T))
    (ref_grad,) = torch.autograd.grad(reference, raw)
    targets, mask = delayed_targets(codes, valid, delays)
    loss, per_codebook = masked_codebook_ce(raw[:, :, :T], targets, mask)
    (grad,) = torch.autograd.grad(loss, raw)

    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=0)
    torch.testing.assert_close(per_codebook, ref_per_codebook, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-6, atol=1e-9)
    assert torch.equal(mask.sum(dim=(0, 2)), loss_mask(valid, delays, T).sum(dim=(0, 2)))  # the same token counts
    assert (grad[:, :, T] == 0).all()  # the last step predicts the dropped tail
