"""`bench/melody_following.py`'s two data sources carry what the bench says they do.

The control shards: codes that vary, that the aligned pitch class decides, and that nothing earlier in the codes
predicts at a note change. The audio arm's random melody: the chroma of the rendered lead is the drawn melody.
Training itself is the bench's job (minutes); these checks take a second.
"""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import soxr
import torch
import webdataset as wds

from data_prep.chroma import ChromaExtractor
from data_prep.schema import CHROMA_HOP, SAMPLE_RATE
from testkit import synth

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("melody_following", ROOT / "bench" / "melody_following.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["melody_following"] = module
    spec.loader.exec_module(module)
    return module


def test_control_codes_follow_the_aligned_pitch_class_and_only_it(tmp_path: Path) -> None:
    bench = _bench()
    samples = list(wds.WebDataset(str(bench.control_shards(tmp_path, 40, seed=3) / "shard-r0000-000000.tar"),
                                  shardshuffle=False, empty_check=False))
    assert len(samples) == 40
    frame_of_code = np.arange(bench.CODE_FRAMES) * bench.CHROMA_FRAMES // bench.CODE_FRAMES
    table: dict[tuple[int, int], int] = {}
    changes = 0
    for sample in samples:
        codes = np.load(io.BytesIO(sample["codes.npy"]))  # [K, T]
        pitch = np.load(io.BytesIO(sample["chroma.npy"])).argmax(-1)[frame_of_code]  # [T]
        assert codes.shape == (bench.CODEBOOKS, bench.CODE_FRAMES)
        for k in range(bench.CODEBOOKS):
            for p, code in zip(pitch, codes[k]):
                assert table.setdefault((k, int(p)), int(code)) == code  # the pitch class decides the code
        changes += int((np.diff(codes[0]) != 0).sum())
    # Informative: all 12 pitch classes, distinct codes for them, and many note changes the codes cannot foresee.
    assert len({p for _, p in table}) == 12 and len(set(table.values())) > 12 * bench.CODEBOOKS // 2
    assert changes > 40 * 4
    other = bench.control_shards(tmp_path / "other", 40, seed=4) / "shard-r0000-000000.tar"
    first = next(iter(wds.WebDataset(str(other), shardshuffle=False, empty_check=False)))
    assert first["chroma.npy"] != samples[0]["chroma.npy"]  # another seed, other melodies


@pytest.mark.parametrize("lead", ["pluck", "fm"])
def test_the_random_melody_is_what_the_audio_plays(lead: str) -> None:
    spec = next(s for s in synth.plan_catalog(8, 10.0, seed=7) if s.lead == lead)
    melody = synth.compose_random_melody(spec, np.random.default_rng(spec.seed))
    audio = synth.render_random_melody(spec)  # [N, 2]
    assert audio.shape == (spec.frames, 2) and np.abs(audio).max() <= 1.0
    wav = soxr.resample(audio.mean(1), spec.sample_rate, SAMPLE_RATE)
    chroma = ChromaExtractor()(torch.from_numpy(wav.astype(np.float32))[None, None])[0].argmax(-1).numpy()  # [F]
    # The drawn pitch class sounding at each chroma frame's centre.
    beat_of_frame = np.arange(len(chroma)) * CHROMA_HOP / SAMPLE_RATE * spec.bpm / 60
    drawn = np.array([melody[min(int(b), len(melody) - 1)].midi % 12 for b in beat_of_frame])
    inner = (beat_of_frame % 1 > 0.2) & (beat_of_frame % 1 < 0.8) & (beat_of_frame < len(melody) - 1)
    assert (chroma[inner] == drawn[inner]).mean() > 0.6  # chance: 1/12
    assert len(set(drawn)) >= 6  # random pitches, not a loop of a few
