"""`finetune.lm.patterns` against an independent re-implementation of audiocraft's delay pattern and against
transformers.

The reference below follows audiocraft's `modules/codebooks_patterns.py` (`DelayedPatternProvider.get_pattern`,
`Pattern.valid_layout`, `build_pattern_sequence`, `revert_pattern_logits`) step by step with Python loops over
(t, q) coordinates, so it shares no code or indexing trick with the vectorized module.

Run: `.venv/bin/pytest -q tests/finetune/test_patterns.py` (CPU, a few seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from finetune.lm.patterns import (
    SPECIAL_TOKEN_ID,
    align_logits,
    build_delayed_inputs,
    delays_for,
    loss_mask,
    padding_mask,
    pattern_mask,
)

MONO = [0, 1, 2, 3]
STEREO = [0, 0, 1, 1, 2, 2, 3, 3]
CARD = 2048


# ---------------------------------------------------------------------------------------------------------------------
# Reference: audiocraft's Pattern, re-implemented with explicit coordinates.
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class _Pattern:
    """A list of sequence steps, each a list of (t, q) coordinates; step 0 is always empty (the special column)."""

    layout: list[list[tuple[int, int]]]
    timesteps: int
    n_q: int

    @property
    def max_delay(self) -> int:
        # audiocraft's definition: how far the layout's coordinates run past the last real timestep.
        max_t = max((t + 1 for step in self.layout[1:] for t, _ in step), default=0)
        return max_t - self.timesteps

    @property
    def valid_layout(self) -> list[list[tuple[int, int]]]:
        return self.layout[: len(self.layout) - self.max_delay]

    def build_pattern_sequence(self, z: torch.Tensor, special: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`keep_only_valid_steps=True`: values `[B, K, S]` and mask `[K, S]` over the valid layout."""
        B, K, T = z.shape
        layout = self.valid_layout
        values = torch.full((B, K, len(layout)), special, dtype=torch.long)
        mask = torch.zeros(K, len(layout), dtype=torch.bool)
        for s, coords in enumerate(layout):
            for t, q in coords:
                if t < T:
                    values[:, q, s] = z[:, q, t]
                    mask[q, s] = True
        return values, mask

    def revert_pattern_logits(self, logits: torch.Tensor, special: float) -> tuple[torch.Tensor, torch.Tensor]:
        """`keep_only_valid_steps=True, is_model_output=True`: logits `[B, K, S, card]` -> `[B, K, T, card]`, mask."""
        B, K, S, card = logits.shape
        # The model's output at step s predicts the coordinates of step s+1, so drop the leading empty step.
        layout = self.valid_layout[1:]
        values = torch.full((B, K, self.timesteps, card), special, dtype=logits.dtype)
        mask = torch.zeros(K, self.timesteps, dtype=torch.bool)
        for s, coords in enumerate(layout):
            if s < S:
                for t, q in coords:
                    if t < self.timesteps:
                        values[:, q, t] = logits[:, q, s]
                        mask[q, t] = True
        return values, mask


def _delayed_pattern(delays: list[int], T: int) -> _Pattern:
    layout = [[]] + [[(t - d, q) for q, d in enumerate(delays) if t - d >= 0] for t in range(T + max(delays))]
    return _Pattern(layout=layout, timesteps=T, n_q=len(delays))


def _random_codes(B: int, K: int, T: int, seed: int) -> torch.Tensor:
    return torch.randint(0, CARD, (B, K, T), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------------
# Reference: the common transformers recipe (ylacombe/musicgen-dreamboothing, parler-tts), docs/fidelity.md.
# ---------------------------------------------------------------------------------------------------------------------


def _tiny_causal_lm(num_codebooks: int, audio_channels: int):  # -> MusicgenForCausalLM
    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

    config = MusicgenDecoderConfig(
        vocab_size=CARD,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        ffn_dim=32,
        num_codebooks=num_codebooks,
        audio_channels=audio_channels,
    )
    return MusicgenForCausalLM(config).eval()


def _hf_delayed_labels_and_inputs(codes: torch.Tensor, audio_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HF recipe: labels `[B, K, T+K]` (`labels[p, q] = code[q, p - delay_q]` or 2048) and the shifted inputs."""
    from transformers.models.musicgen.modeling_musicgen import shift_tokens_right

    B, K, T = codes.shape
    model = _tiny_causal_lm(K, audio_channels)
    channel_codebooks = K // audio_channels
    with_bos = torch.cat([torch.full((B, K, 1), SPECIAL_TOKEN_ID), codes], dim=-1)  # [B, K, T+1]
    # The recipe's max_length is T+1+K; HF skips the pattern entirely below 2*channel_codebooks-1 (mono T=1), so
    # pad max_length up to that: the extra tail is all pad and the first T+1 inputs do not change.
    max_length = max(T + 1 + K, 2 * channel_codebooks - 1)
    _, pattern = model.build_delay_pattern_mask(
        with_bos.reshape(B * K, T + 1), pad_token_id=SPECIAL_TOKEN_ID, max_length=max_length
    )
    pattern = pattern.reshape(B, K, max_length)
    labels = torch.where(pattern == -1, SPECIAL_TOKEN_ID, pattern)[:, :, 1:]  # [B, K, L]
    # shift_tokens_right takes HF's (B, L, K) label layout and returns (B, K, L).
    inputs = shift_tokens_right(labels.transpose(1, 2), SPECIAL_TOKEN_ID, SPECIAL_TOKEN_ID)
    return labels, inputs


# ---------------------------------------------------------------------------------------------------------------------
# delays_for
# ---------------------------------------------------------------------------------------------------------------------


def test_delays_for_mono_and_stereo() -> None:
    assert delays_for(4) == MONO
    assert delays_for(4, audio_channels=1) == MONO
    assert delays_for(8, audio_channels=2) == STEREO


@pytest.mark.parametrize(("num_codebooks", "audio_channels"), [(4, 3), (7, 2), (0, 1)])
def test_delays_for_rejects_bad_configs(num_codebooks: int, audio_channels: int) -> None:
    with pytest.raises(ValueError):
        delays_for(num_codebooks, audio_channels)


# ---------------------------------------------------------------------------------------------------------------------
# build_delayed_inputs
# ---------------------------------------------------------------------------------------------------------------------


def test_delayed_inputs_picture() -> None:
    """The docstring's picture: T=4, every codebook `a b c d` = 10 11 12 13."""
    codes = torch.arange(10, 14).repeat(1, 4, 1)  # [1, 4, 4]
    S = SPECIAL_TOKEN_ID
    expected = torch.tensor(
        [
            [S, 10, 11, 12, 13],
            [S, S, 10, 11, 12],
            [S, S, S, 10, 11],
            [S, S, S, S, 10],
        ]
    )
    assert torch.equal(build_delayed_inputs(codes, MONO)[0], expected)


@pytest.mark.parametrize("delays", [MONO, STEREO], ids=["mono", "stereo"])
@pytest.mark.parametrize("T", [1, 2, 7, 50])
def test_delayed_inputs_match_audiocraft(delays: list[int], T: int) -> None:
    codes = _random_codes(3, len(delays), T, seed=T)
    expected, _ = _delayed_pattern(delays, T).build_pattern_sequence(codes, SPECIAL_TOKEN_ID)
    got = build_delayed_inputs(codes, delays)
    assert got.shape == (3, len(delays), T + 1)
    assert got.dtype == torch.long
    assert torch.equal(got, expected)


def test_delayed_inputs_custom_special_and_int16_codes() -> None:
    # Token caches store int16 codes (audiocraft's CachedBatchWriter); the output is always long.
    codes = _random_codes(2, 4, 9, seed=0).to(torch.int16)
    expected, _ = _delayed_pattern(MONO, 9).build_pattern_sequence(codes.long(), -7)
    got = build_delayed_inputs(codes, MONO, special=-7)
    assert got.dtype == torch.long
    assert torch.equal(got, expected)


@pytest.mark.parametrize("delays", [[0, 1, 2], [1, 2, 3, 4], [0, 2, 1, 3]], ids=["count", "no-zero", "unsorted"])
def test_delayed_inputs_reject_bad_delays(delays: list[int]) -> None:
    with pytest.raises(ValueError):
        build_delayed_inputs(_random_codes(1, 4, 5, seed=0), delays)


@pytest.mark.parametrize(("delays", "audio_channels"), [(MONO, 1), (STEREO, 2)], ids=["mono", "stereo"])
@pytest.mark.parametrize("T", [1, 2, 7, 50])
def test_delayed_inputs_match_transformers_recipe(delays: list[int], audio_channels: int, T: int) -> None:
    K = len(delays)
    codes = _random_codes(2, K, T, seed=100 + T)
    labels, hf_inputs = _hf_delayed_labels_and_inputs(codes, audio_channels)

    # The recipe's delayed labels: L = T + K positions with labels[p, q] = code[q, p - delay_q] (2048 outside).
    assert labels.shape[-1] >= T + K
    for q, d in enumerate(delays):
        for p in range(labels.shape[-1]):
            expected = codes[:, q, p - d] if 0 <= p - d < T else torch.full((2,), SPECIAL_TOKEN_ID)
            assert torch.equal(labels[:, q, p], expected), (q, p)

    # The shifted decoder inputs' first T+1 positions are audiocraft's valid sequence.
    assert torch.equal(hf_inputs[:, :, : T + 1], build_delayed_inputs(codes, delays))


# ---------------------------------------------------------------------------------------------------------------------
# align_logits / pattern_mask
# ---------------------------------------------------------------------------------------------------------------------


def test_pattern_mask_valid_counts() -> None:
    assert pattern_mask(MONO, 7).sum(dim=1).tolist() == [7, 6, 5, 4]
    assert pattern_mask(STEREO, 7).sum(dim=1).tolist() == [7, 7, 6, 6, 5, 5, 4, 4]
    # Per sample, 6 of the 4*T mono tokens have no logit (the last delay_q frames of codebook q).
    assert (~pattern_mask(MONO, 50)).sum().item() == 6


@pytest.mark.parametrize("delays", [MONO, STEREO], ids=["mono", "stereo"])
@pytest.mark.parametrize("T", [1, 2, 7, 50])
def test_align_logits_match_audiocraft(delays: list[int], T: int) -> None:
    K, card = len(delays), 5
    logits = torch.randn(2, K, T + 1, card, generator=torch.Generator().manual_seed(T))
    ref_values, ref_mask = _delayed_pattern(delays, T).revert_pattern_logits(logits, float("nan"))
    aligned, mask = align_logits(logits, delays)

    assert aligned.shape == (2, K, T, card)
    assert mask.shape == (K, T) and mask.dtype == torch.bool
    assert torch.equal(mask, ref_mask)
    assert torch.equal(mask, pattern_mask(delays, T))
    # Same values where a logit exists and NaN (audiocraft's fill) everywhere else.
    assert torch.equal(aligned[:, mask], ref_values[:, mask])
    assert torch.isnan(aligned[:, ~mask]).all()
    assert torch.isnan(ref_values[:, ~mask]).all()


def test_align_logits_valid_counts_t7() -> None:
    _, mask = align_logits(torch.zeros(1, 4, 8, 3), MONO)
    assert mask.sum(dim=1).tolist() == [7, 6, 5, 4]


def test_align_logits_fill_value_and_dtype() -> None:
    logits = torch.randn(2, 4, 8, 6).to(torch.bfloat16)
    aligned, mask = align_logits(logits, MONO, fill_value=0.0)
    assert aligned.dtype == torch.bfloat16
    assert (aligned[:, ~mask] == 0).all()


def test_align_logits_targets_line_up_with_inputs() -> None:
    """Logit step s predicts what input step s+1 holds: aligning the *inputs shifted left* gives back the codes."""
    T = 11
    codes = _random_codes(2, 4, T, seed=5)
    inputs = build_delayed_inputs(codes, MONO)  # [B, K, T+1]
    # "Next input" at step s is inputs[:, :, s+1]; the last step has none (that logit is unused by the pattern).
    next_inputs = torch.cat([inputs[:, :, 1:], torch.full_like(inputs[:, :, :1], -1)], dim=-1)  # [B, K, T+1]
    aligned, mask = align_logits(next_inputs[..., None].double(), MONO)
    assert torch.equal(aligned[..., 0][:, mask].long(), codes[:, mask])


@pytest.mark.parametrize(("delays", "audio_channels"), [(MONO, 1), (STEREO, 2)], ids=["mono", "stereo"])
def test_align_logits_match_transformers_label_positions(delays: list[int], audio_channels: int) -> None:
    """HF logit p is scored against delayed label p: aligning the HF labels as if they were logits gives the codes,
    and the HF labels of the first T positions (audiocraft's exact loss) carry exactly the pattern mask's tokens."""
    T, K = 7, len(delays)
    codes = _random_codes(2, K, T, seed=9)
    labels, _ = _hf_delayed_labels_and_inputs(codes, audio_channels)  # [B, K, T+K]
    aligned, mask = align_logits(labels[:, :, : T + 1, None].double(), delays)
    assert torch.equal(aligned[..., 0][:, mask].long(), codes[:, mask])
    assert torch.equal(labels[0, :, :T] != SPECIAL_TOKEN_ID, _to_label_positions(mask, delays))


def _to_label_positions(mask: torch.Tensor, delays: list[int]) -> torch.Tensor:
    """Frame-grid mask `[K, T]` moved to HF label positions p = t + delay_q (positions >= T dropped)."""
    K, T = mask.shape
    out = torch.zeros_like(mask)
    for q, d in enumerate(delays):
        for t in range(T):
            if mask[q, t] and t + d < T:
                out[q, t + d] = True
    return out


def test_align_logits_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        align_logits(torch.zeros(4, 8, 3), MONO)
    with pytest.raises(ValueError):
        align_logits(torch.zeros(1, 4, 8, 3), STEREO)


# ---------------------------------------------------------------------------------------------------------------------
# padding_mask / loss_mask
# ---------------------------------------------------------------------------------------------------------------------


def test_padding_mask() -> None:
    got = padding_mask(torch.tensor([5, 3, 0, 9]), 5)
    expected = torch.tensor(
        [
            [1, 1, 1, 1, 1],
            [1, 1, 1, 0, 0],
            [0, 0, 0, 0, 0],
            [1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(got, expected)


@pytest.mark.parametrize("delays", [MONO, STEREO], ids=["mono", "stereo"])
def test_loss_mask_combines_pattern_and_padding(delays: list[int]) -> None:
    T = 7
    valid = torch.tensor([7, 3, 10])
    got = loss_mask(valid, delays, T)
    assert got.shape == (3, len(delays), T) and got.dtype == torch.bool
    for b in range(3):
        for q, d in enumerate(delays):
            for t in range(T):
                assert got[b, q, t].item() == (t <= T - 1 - d and t < valid[b].item()), (b, q, t)
    # A full-length sample keeps exactly the pattern mask.
    assert torch.equal(got[0], pattern_mask(delays, T))
    assert torch.equal(got[2], pattern_mask(delays, T))


def test_loss_mask_short_sample_masks_padded_tail() -> None:
    """The docstring's picture: T=5, a 3-frame sample."""
    got = loss_mask(torch.tensor([5, 3]), MONO, 5)
    expected_short = torch.tensor(
        [
            [1, 1, 1, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(got[1], expected_short)
    assert not got[1, :, 3:].any()
    assert torch.equal(got[0], pattern_mask(MONO, 5))
