"""MusicGen's training loss: the unweighted mean over codebooks of a per-codebook masked cross-entropy.

audiocraft's `MusicGenSolver._compute_cross_entropy` does, for every codebook k,
`ce_k = F.cross_entropy(logits_k[mask_k], targets_k[mask_k])` (a mean over the valid tokens of the whole batch), then
`ce = sum_k ce_k / K`. transformers' `MusicgenForCausalLM` uses the same reduction with -100 labels ignored.

Empty codebooks: when codebook k has no valid position in the batch (a crop shorter than `delay_k + 1` frames, or
padding that leaves every sample that short), audiocraft's `F.cross_entropy` of an empty selection is NaN and the
solver stops with "Model probably diverged". Here such a codebook gets `ce_k = 0` in the returned per-codebook vector
and is **excluded from the mean** (the divisor is the number of codebooks that have at least one valid token). Keeping
K as the divisor would silently scale the other codebooks' gradients by (K-1)/K for that batch; excluding it keeps
the loss the mean of the CEs that exist, which equals audiocraft's value whenever audiocraft's value is finite. A batch
with no valid token at all gives a loss of exactly 0 that is still attached to the graph (zero gradients), so
`backward()` and DDP gradient hooks behave as on any other step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["codebook_nll_sums", "masked_codebook_ce"]


def masked_codebook_ce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over codebooks of the per-codebook cross-entropy over masked positions (audiocraft's reduction).

    Only positions where `mask` is True are read, so logits there may hold anything (e.g. the NaN fill of
    `finetune.lm.patterns.align_logits`) and targets there may be any integer (e.g. -100 or 2048); no gradient reaches
    masked-out logits. The cross-entropy is computed in float32 whatever the dtype of `logits` (bf16/fp16 logits are
    upcast, as audiocraft's autocast does for `cross_entropy`). No step depends on the mask's values on the host, so
    the loss costs no host-device sync.

    Args:
        logits: Float tensor `[B, K, T, card]`, on the grid of `targets` (the decoder's steps with
            `patterns.delayed_targets`, or the frames with `patterns.align_logits`).
        targets: Integer tensor `[B, K, T]`, values in `[0, card)` wherever `mask` is True.
        mask: Bool tensor broadcastable to `[B, K, T]` (e.g. `loss_mask(...)` `[B, K, T]` or a pattern mask `[K, T]`);
            True where a token is trained on.

    Returns:
        `(loss, per_codebook)`: the float32 scalar loss, and the float32 per-codebook CE `[K]` (0 for a codebook
        without any valid token, which is then left out of the mean; see the module docstring). Both carry gradients;
        detach `per_codebook` before logging it.

    Raises:
        ValueError: If the shapes do not agree or `mask` is not boolean.
    """
    if logits.dim() != 4:
        raise ValueError(f"logits must be [B, K, T, card], got shape {tuple(logits.shape)}")
    B, K, T, card = logits.shape
    if targets.shape != (B, K, T):
        raise ValueError(f"targets must be {(B, K, T)} to match logits, got {tuple(targets.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    mask = mask.expand(B, K, T)  # [B, K, T]; raises if not broadcastable

    # No boolean selection: `logits[mask]` has a data-dependent size, so it waits for the device (a host sync that
    # stalls the GPU's queue). Every position is scored and the mask multiplies; masked logits are replaced first, so
    # whatever they hold (NaN, inf) reaches neither the loss nor a gradient. The float32 upcast is of the whole
    # [B, K, T, card] block, as autocast's would be; the selection's copy was nearly as large (a handful of tokens
    # per codebook are masked).
    safe = torch.where(mask[..., None], logits, 0.0)  # [B, K, T, card]
    token_ce = F.cross_entropy(safe.reshape(-1, card).float(), torch.where(mask, targets, 0).reshape(-1).long(),
                               reduction="none").view(B, K, T)
    token_ce = token_ce * mask  # [B, K, T]

    # Per-codebook mean over the batch's valid tokens: sum / count; a codebook with count 0 gets 0 (not 0/0 = NaN).
    ce_sum = token_ce.sum(dim=(0, 2))  # [K]
    count = mask.sum(dim=(0, 2))  # [K]
    present = count > 0  # [K]
    per_codebook = ce_sum / count.clamp(min=1).to(torch.float32)  # [K]

    # Mean over the codebooks that have tokens (== sum / K when all do); max(.., 1) keeps an all-empty batch at 0.
    loss = per_codebook.sum() / present.sum().clamp(min=1).to(torch.float32)
    return loss, per_codebook


@torch.no_grad()
def codebook_nll_sums(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-codebook sums for a token-weighted validation cross-entropy: `[2, K]` = (summed NLL, token count).

    Summed over batches and ranks, `sums[0] / sums[1]` is each codebook's mean NLL over every valid held-out token,
    whatever the batch sizes (a mean of per-batch means would weight small batches up). Used by the trainer's
    validation and by `mgft eval`, so the two report the same number.

    Args:
        logits: `[B, K, T, card]` aligned logits (NaN where the pattern has no prediction is fine: masked out).
        targets: `[B, K, T]` codes.
        mask: bool `[B, K, T]` (or broadcastable), True where a token counts.

    Returns:
        float32 `[2, K]`.
    """
    mask = mask.expand(targets.shape)
    logp = torch.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(-1, targets.long().clamp(0, logits.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)  # [B, K, T]
    nll = torch.where(mask, nll, 0.0)  # aligned logits are NaN where the pattern has no prediction
    return torch.stack([nll.sum(dim=(0, 2)), mask.sum(dim=(0, 2)).float()])
