"""Cut a stream of 32 kHz blocks into training windows, holding at most one window and one block in memory.

The windows are those of `plan_segments` over the whole track (starts 0, stride, 2 x stride, ... while the previous
window ends before the track does; the last may be short), found without knowing the track's length in advance, so
an hour-long file is segmented as it is decoded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np


def plan_segments(num_samples: int, segment: int, stride: int) -> list[tuple[int, int]]:
    """`(start, end)` sample windows covering the whole track; the last one may be short (its tail is kept)."""
    starts = [0]
    while starts[-1] + segment < num_samples:
        starts.append(starts[-1] + stride)
    return [(s, min(s + segment, num_samples)) for s in starts]


@dataclass
class Window:
    """One window of a track: `audio` is `[C, end - start]` (a short last window is not padded here)."""

    index: int
    start: int
    end: int
    audio: np.ndarray
    last: bool


def cut_windows(blocks: Iterable[np.ndarray], segment: int, stride: int) -> Iterator[Window]:
    """The windows of `plan_segments(N, segment, stride)` of the concatenated blocks `[C, n]`, in order.

    A window is yielded once the audio after it has begun (so `last` is known), or at the end of the stream.
    """
    if not 0 < stride <= segment:
        raise ValueError(f"need 0 < stride <= segment, got stride {stride}, segment {segment}")
    buffer: np.ndarray | None = None  # [C, m]: audio from sample `offset` on
    offset = total = 0
    start, index = 0, 0
    for block in blocks:
        buffer = block if buffer is None else np.concatenate([buffer, block], axis=1)
        total += block.shape[1]
        # The window at `start` is not the last as soon as the track runs past its end.
        while total > start + segment:
            lo = start - offset
            yield Window(index, start, start + segment, buffer[:, lo : lo + segment].copy(), last=False)
            start, index = start + stride, index + 1
            buffer, offset = buffer[:, start - offset :], start
    if buffer is None:
        return
    lo = start - offset
    yield Window(index, start, min(start + segment, total), buffer[:, lo : lo + segment].copy(), last=True)
