"""MusicGen's delayed codebook pattern, exactly as audiocraft trains it.

audiocraft (`modules/codebooks_patterns.py::DelayedPatternProvider`, `delays=[0, 1, 2, 3]`) shifts codebook q right by
`delay_q` steps and prepends one all-special step, so that at every sequence step the model predicts codebook 0 of
frame t, codebook 1 of frame t-1, and so on. With codes `a b c d e ...` (frames 0, 1, 2, ...) in every codebook and
`S` the special token (2048), the full layout for T frames is:

    step:        0  1  2  3  4  5 ... T  T+1 ... T+3
    codebook 0: [S, a, b, c, d, e, ...,  z,  S,  S,  S]     delay 0
    codebook 1: [S, S, a, b, c, d, ...,  y,  z,  S,  S]     delay 1
    codebook 2: [S, S, S, a, b, c, ...,  x,  y,  z,  S]     delay 2
    codebook 3: [S, S, S, S, a, b, ...,  w,  x,  y,  z]     delay 3
                                             '-- invalid tail: dropped --'

Training uses `keep_only_valid_steps=True`: the layout is cut to its first `T + 1` steps (the tail where codebook 0
has run out is dropped), which is what `build_delayed_inputs` returns. The model's logits at step s predict the
coordinates of step s+1, i.e. `code[q, s - delay_q]`; `align_logits` maps them back onto the frame grid `[B, K, T]`
(audiocraft's `revert_pattern_logits`). Training does the converse, which gives the same (logit, code) pairs:
`delayed_targets` moves the codes onto the step grid, so the integer `[B, K, T]` grid is shifted instead of the
`[B, K, T, card]` logits (no gather or copy of the logits, forward or backward). Because the tail is dropped, the last
`delay_q` frames of codebook q have no logit and are excluded from the loss (6 of 4*T tokens per sample for delays
[0, 1, 2, 3]); transformers' recipes train on the tail too, audiocraft does not.

Stereo MusicGen interleaves the codebooks of the two channels, [L0, R0, L1, R1, L2, R2, L3, R3], and a left/right pair
shares a delay: delays [0, 0, 1, 1, 2, 2, 3, 3] (transformers' `build_delay_pattern_mask` with `audio_channels=2`).

Everything here is a pure function of tensors; the index grids are tiny ([K, T] integers) and built on the device of
the input. The delays are copied to a device once (`delay_tensor`): a host-to-device copy of a Python list blocks the
host until the GPU has caught up, which inside a training step stalls the kernel launches.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from data_prep.schema import SPECIAL_TOKEN_ID

__all__ = [
    "SPECIAL_TOKEN_ID",
    "align_logits",
    "build_delayed_inputs",
    "delay_tensor",
    "delayed_targets",
    "delays_for",
    "loss_mask",
    "padding_mask",
    "pattern_mask",
]


def delays_for(num_codebooks: int, audio_channels: int = 1) -> list[int]:
    """Delay of every codebook for MusicGen's delay pattern.

    Mono codebooks are delayed by their index; stereo codebooks are interleaved [L0, R0, L1, R1, ...] and each
    left/right pair shares the delay of its mono codebook:

        delays_for(4)     -> [0, 1, 2, 3]
        delays_for(8, 2)  -> [0, 0, 1, 1, 2, 2, 3, 3]

    Args:
        num_codebooks: Total number of codebooks K of the decoder (8 for stereo EnCodec-32k, counting both channels).
        audio_channels: 1 (mono) or 2 (interleaved stereo).

    Returns:
        The K delays, non-decreasing and starting at 0.

    Raises:
        ValueError: If `audio_channels` is not 1 or 2, or `num_codebooks` is not a positive multiple of it.
    """
    if audio_channels not in (1, 2):
        raise ValueError(f"audio_channels must be 1 or 2, got {audio_channels}")
    if num_codebooks <= 0 or num_codebooks % audio_channels:
        raise ValueError(
            f"num_codebooks={num_codebooks} must be a positive multiple of audio_channels={audio_channels}"
        )
    return [q // audio_channels for q in range(num_codebooks)]


def _check_delays(delays: list[int], num_codebooks: int) -> None:
    """Validates delays the way audiocraft's `DelayedPatternProvider` does (plus a first delay of 0).

    A first delay > 0 would make audiocraft's valid layout `T + 1 + min(delays)` steps long instead of `T + 1`; no
    MusicGen model uses that, so it is rejected rather than silently handled differently.
    """
    if len(delays) != num_codebooks:
        raise ValueError(f"got {len(delays)} delays for {num_codebooks} codebooks")
    if num_codebooks == 0 or delays[0] != 0 or any(b < a for a, b in zip(delays, delays[1:])):
        raise ValueError(f"delays must be non-decreasing and start at 0 (as audiocraft asserts), got {delays}")


def delay_tensor(delays: list[int], device: torch.device | str | None = None) -> torch.Tensor:
    """The delays as a long tensor `[K]` on `device`, made once per (delays, device) and shared: never modify it."""
    return _delay_tensor(tuple(delays), torch.device(device) if device is not None else torch.device("cpu"))


@lru_cache(maxsize=64)
def _delay_tensor(delays: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(delays, dtype=torch.long, device=device)


def build_delayed_inputs(
    codes: torch.Tensor,
    delays: list[int],
    special: int = SPECIAL_TOKEN_ID,
) -> torch.Tensor:
    """Builds the decoder input sequence from frame-aligned codes (audiocraft's `build_pattern_sequence`).

    Input step s, codebook q holds `code[q, s - 1 - delay_q]`, or `special` where that index is < 0. With T = 4 frames
    `a b c d` and delays [0, 1, 2, 3] (S = special):

        codes [K=4, T=4]          inputs [K=4, T+1=5]
        [a, b, c, d]        ->    [S, a, b, c, d]
        [a, b, c, d]              [S, S, a, b, c]
        [a, b, c, d]              [S, S, S, a, b]
        [a, b, c, d]              [S, S, S, S, a]

    This equals the first T + 1 positions of transformers' `shift_tokens_right(delayed labels)` from the common HF
    recipe (prepend a BOS column, `build_delay_pattern_mask`, fill with pad, drop the BOS column).

    Args:
        codes: Integer codes `[B, K, T]` in `[0, card)`.
        delays: Per-codebook delays (see `delays_for`), non-decreasing and starting at 0.
        special: Token id for positions without a code (audiocraft's `special_token_id`, 2048).

    Returns:
        Long tensor `[B, K, T + 1]` on the device of `codes`.

    Raises:
        ValueError: If `codes` is not 3-D or the delays do not fit it.
    """
    if codes.dim() != 3:
        raise ValueError(f"codes must be [B, K, T], got shape {tuple(codes.shape)}")
    B, K, T = codes.shape
    _check_delays(delays, K)
    steps = torch.arange(T + 1, device=codes.device)  # [S]
    delay = delay_tensor(delays, codes.device)  # [K]
    # Source frame of every (codebook, step); the leading empty step and the delayed head point before frame 0.
    src = steps[None, :] - 1 - delay[:, None]  # [K, S]
    has_code = src >= 0  # [K, S]; src <= T - 1 always holds since s <= T
    gathered = torch.gather(codes.long(), 2, src.clamp(min=0)[None].expand(B, K, T + 1))  # [B, K, S]
    return torch.where(has_code[None], gathered, torch.full_like(gathered, special))  # [B, K, S]


def pattern_mask(delays: list[int], T: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Frames that have a logit under the training pattern (the mask of audiocraft's `revert_pattern_logits`).

    Codebook q is valid for frames `t <= T - 1 - delay_q`; with T = 7 and delays [0, 1, 2, 3]:

        [1, 1, 1, 1, 1, 1, 1]    7 valid
        [1, 1, 1, 1, 1, 1, 0]    6
        [1, 1, 1, 1, 1, 0, 0]    5
        [1, 1, 1, 1, 0, 0, 0]    4

    Args:
        delays: Per-codebook delays, non-decreasing and starting at 0.
        T: Number of frames.
        device: Device of the returned mask.

    Returns:
        Bool tensor `[K, T]`.
    """
    _check_delays(delays, len(delays))
    frames = torch.arange(T, device=device)  # [T]
    delay = delay_tensor(delays, device)  # [K]
    return frames[None, :] + delay[:, None] <= T - 1  # [K, T]


def align_logits(
    logits: torch.Tensor,
    delays: list[int],
    fill_value: float = float("nan"),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps logits on the delayed sequence back to the frame grid (audiocraft's `revert_pattern_logits`).

    Logits at step s predict `code[q, s - delay_q]`, so `aligned[b, q, t] = logits[b, q, t + delay_q]` wherever
    `t + delay_q <= T - 1`. The last logit step (s = T) would predict the dropped tail and is never used. With
    logits `l0 .. l4` over S = 5 steps (T = 4) and delays [0, 1, 2, 3] (X = `fill_value`, masked out):

        logits [K, S=5]                 aligned [K, T=4]       mask [K, T]
        [l0, l1, l2, l3, l4]      ->    [l0, l1, l2, l3]       [1, 1, 1, 1]
        [l0, l1, l2, l3, l4]            [l1, l2, l3, X ]       [1, 1, 1, 0]
        [l0, l1, l2, l3, l4]            [l2, l3, X,  X ]       [1, 1, 0, 0]
        [l0, l1, l2, l3, l4]            [l3, X,  X,  X ]       [1, 0, 0, 0]

    Args:
        logits: Float tensor `[B, K, S, card]` with `S = T + 1` (the output for `build_delayed_inputs`).
        delays: Per-codebook delays, non-decreasing and starting at 0.
        fill_value: Value at positions without a logit. NaN (audiocraft's choice) makes any accidental use of them
            visible; `masked_codebook_ce` never reads them.

    Returns:
        `(aligned, mask)`: `aligned` `[B, K, T, card]` in the dtype of `logits`, and the bool `mask` `[K, T]`
        (`pattern_mask(delays, T)`), True where a logit exists.

    Raises:
        ValueError: If `logits` is not 4-D with at least one step, or the delays do not fit it.
    """
    if logits.dim() != 4 or logits.shape[2] < 1:
        raise ValueError(f"logits must be [B, K, S=T+1, card], got shape {tuple(logits.shape)}")
    B, K, S, card = logits.shape
    _check_delays(delays, K)
    T = S - 1
    mask = pattern_mask(delays, T, device=logits.device)  # [K, T]
    delay = delay_tensor(delays, logits.device)  # [K]
    src = torch.arange(T, device=logits.device)[None, :] + delay[:, None]  # [K, T]
    # Clamp keeps the gather in range; those positions are overwritten with fill_value below.
    index = src.clamp(max=max(T - 1, 0))[None, :, :, None].expand(B, K, T, card)  # [B, K, T, card]
    gathered = torch.gather(logits, 2, index)  # [B, K, T, card]
    # torch.where (not an in-place fill) so no gradient reaches the unused logits.
    aligned = torch.where(mask[None, :, :, None], gathered, torch.full_like(gathered, fill_value))
    return aligned, mask


def delayed_targets(
    codes: torch.Tensor,
    valid_frames: torch.Tensor,
    delays: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The code each logit step predicts, and the training mask, on the decoder's step grid.

    The logit of step s, codebook q predicts `code[q, s - delay_q]` (see the module docstring); steps `s < delay_q`
    predict the delayed head, which holds no code. Of the `T + 1` logit steps only the first T are trained (the last
    predicts the dropped tail), so targets and mask are `[B, K, T]`, like the codes. With T = 4 frames `a b c d`,
    delays [0, 1, 2, 3] (`-`: masked out, target 0) and all frames valid:

        codes [K=4, T=4]          targets on steps 0..3      mask
        [a, b, c, d]        ->    [a, b, c, d]               [1, 1, 1, 1]
        [a, b, c, d]              [-, a, b, c]               [0, 1, 1, 1]
        [a, b, c, d]              [-, -, a, b]               [0, 0, 1, 1]
        [a, b, c, d]              [-, -, -, a]               [0, 0, 0, 1]

    These are exactly the pairs of `align_logits` and `loss_mask` (audiocraft's `revert_pattern_logits` with
    `padding_mask & model_output.mask`): `masked_codebook_ce(logits[:, :, :T], *delayed_targets(...))` equals
    `masked_codebook_ce(align_logits(logits)[0], codes, loss_mask(...))`, without moving the logits.

    Args:
        codes: Integer codes `[B, K, T]`.
        valid_frames: Integer tensor `[B]`, real frames per sample (the rest is padding, excluded).
        delays: Per-codebook delays, non-decreasing and starting at 0.

    Returns:
        `(targets, mask)`: long `[B, K, T]` (0 where masked) and bool `[B, K, T]`, on the device of `codes`.
    """
    if codes.dim() != 3:
        raise ValueError(f"codes must be [B, K, T], got shape {tuple(codes.shape)}")
    B, K, T = codes.shape
    _check_delays(delays, K)
    steps = torch.arange(T, device=codes.device)  # [T]
    frame = steps[None, :] - delay_tensor(delays, codes.device)[:, None]  # [K, T]: the frame each step predicts
    targets = torch.gather(codes.long(), 2, frame.clamp(min=0)[None].expand(B, K, T))  # [B, K, T]
    real = frame[None] < valid_frames.to(codes.device)[:, None, None]  # [B, K, T]
    mask = (frame >= 0)[None] & real  # [B, K, T]
    return torch.where(mask, targets, 0), mask


def padding_mask(valid_frames: torch.Tensor, T: int) -> torch.Tensor:
    """Frames that hold real audio: True for `t < valid_frames[b]`.

    A batch pads short tracks at the end (a 3-frame track in a T = 5 batch gives `[1, 1, 1, 0, 0]`). audiocraft's
    `tokens.padding_with_special_token` masks the same frames; here the padded codes stay in the inputs and are only
    excluded from the loss.

    Args:
        valid_frames: Integer tensor `[B]`, number of real frames per sample (values above T mean "all").
        T: Number of frames in the batch.

    Returns:
        Bool tensor `[B, T]` on the device of `valid_frames`.
    """
    if valid_frames.dim() != 1:
        raise ValueError(f"valid_frames must be [B], got shape {tuple(valid_frames.shape)}")
    frames = torch.arange(T, device=valid_frames.device)  # [T]
    return frames[None, :] < valid_frames[:, None]  # [B, T]


def loss_mask(valid_frames: torch.Tensor, delays: list[int], T: int) -> torch.Tensor:
    """Training mask: the pattern mask (frames with a logit) and the padding mask (frames with real audio).

    audiocraft's `run_step` uses `padding_mask & model_output.mask`. With T = 5, delays [0, 1, 2, 3] and a sample
    with 3 real frames:

        [1, 1, 1, 0, 0]
        [1, 1, 1, 0, 0]
        [1, 1, 1, 0, 0]
        [1, 1, 0, 0, 0]

    Args:
        valid_frames: Integer tensor `[B]`, number of real frames per sample.
        delays: Per-codebook delays, non-decreasing and starting at 0.
        T: Number of frames in the batch.

    Returns:
        Bool tensor `[B, K, T]` on the device of `valid_frames`.
    """
    pattern = pattern_mask(delays, T, device=valid_frames.device)  # [K, T]
    return pattern[None, :, :] & padding_mask(valid_frames, T)[:, None, :]  # [B, K, T]
