"""Windows cut from a stream of blocks are exactly the windows of the whole track."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.segments import cut_windows, plan_segments


def test_plan_segments_with_overlap_covers_the_track() -> None:
    assert plan_segments(10, 4, 4) == [(0, 4), (4, 8), (8, 10)]
    assert plan_segments(10, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert plan_segments(3, 4, 4) == [(0, 3)]
    assert plan_segments(8, 4, 4) == [(0, 4), (4, 8)]


@pytest.mark.parametrize("seed", range(4))
def test_windows_cut_from_blocks_equal_the_slices_of_the_whole_track(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(200):
        segment = int(rng.integers(1, 12))
        stride = int(rng.integers(1, segment + 1))
        n = int(rng.choice([rng.integers(1, 60), segment, 2 * segment, segment + 1, 3 * stride + segment]))
        x = rng.standard_normal((2, n)).astype(np.float32)
        cuts = np.sort(rng.choice(np.arange(1, n), size=min(n - 1, int(rng.integers(0, 8))), replace=False))
        blocks = np.split(x, cuts, axis=1)
        windows = list(cut_windows(iter(blocks), segment, stride))
        expected = plan_segments(n, segment, stride)
        assert [(w.start, w.end) for w in windows] == expected, (n, segment, stride, cuts)
        assert [w.index for w in windows] == list(range(len(expected)))
        assert [w.last for w in windows] == [False] * (len(expected) - 1) + [True]
        for w in windows:
            np.testing.assert_array_equal(w.audio, x[:, w.start : w.end])


def test_a_stride_outside_the_segment_is_refused() -> None:
    with pytest.raises(ValueError, match="stride"):
        list(cut_windows(iter([np.zeros((1, 10), np.float32)]), 4, 5))
