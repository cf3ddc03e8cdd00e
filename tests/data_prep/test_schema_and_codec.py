"""Shard schema helpers and the batched EnCodec path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data_prep.codec import CodecEncoder, load_codec
from data_prep.schema import (
    chroma_frames,
    deinterleave_stereo,
    interleave_stereo,
    num_frames,
    read_valid_frames,
    valid_frames,
)


def test_interleave_round_trip_and_order() -> None:
    left = np.arange(12).reshape(4, 3)
    right = -np.arange(12).reshape(4, 3)
    both = interleave_stereo(left, right)
    assert both.shape == (8, 3)
    # L0, R0, L1, R1, ...: codebook index 2k + channel, as audiocraft's InterleaveStereoCompressionModel.
    for k in range(4):
        np.testing.assert_array_equal(both[2 * k], left[k])
        np.testing.assert_array_equal(both[2 * k + 1], right[k])
    back_l, back_r = deinterleave_stereo(both)
    np.testing.assert_array_equal(back_l, left)
    np.testing.assert_array_equal(back_r, right)


def test_frame_counts_match_musicgen() -> None:
    assert num_frames(30) == 1500
    assert chroma_frames(30 * 32000) == 235
    assert chroma_frames(1) == 5
    # Whole frames only (audiocraft's padding mask floors): a partial last frame was encoded over padding.
    assert valid_frames(640) == 1 and valid_frames(641) == 1 and valid_frames(639) == 0 and valid_frames(0) == 0
    assert valid_frames(46_520) == 72  # 72.69 frames of audio


def test_batched_stereo_encode_equals_single_mono_encodes(tiny_models_dir: Path) -> None:
    model = load_codec(str(tiny_models_dir / "encodec_32khz"))
    encoder = CodecEncoder(model, batch_size=4)
    rng = np.random.default_rng(0)
    segments = rng.uniform(-0.5, 0.5, (3, 2, 32000)).astype(np.float32)  # [B, C, N]: 6 mono items, 2 batches
    codes = encoder.encode(segments)
    assert codes.shape == (3, 8, 50) and codes.dtype == np.int16
    for b in range(3):
        left, right = deinterleave_stereo(codes[b])
        for c, got in enumerate((left, right)):
            with torch.no_grad():
                ref = model.encode(torch.from_numpy(segments[b, c])[None, None], bandwidth=2.2).audio_codes[0, 0]
            np.testing.assert_array_equal(got, ref.numpy())


def test_latents_and_decode_have_the_codec_shapes(tiny_models_dir: Path) -> None:
    from data_prep.codec import decode_codes, encoder_latent, quantized_latent

    model = load_codec(str(tiny_models_dir / "encodec_32khz"))
    audio = torch.from_numpy(np.random.default_rng(1).uniform(-0.3, 0.3, (2, 2, 32000)).astype(np.float32))
    latent = encoder_latent(model, audio)  # each channel a mono item
    assert latent.shape == (4, model.config.codebook_dim, 50)
    with torch.no_grad():
        codes = model.encode(audio.reshape(4, 1, -1), bandwidth=2.2).audio_codes[0]  # [4, 4, 50]
    rebuilt = quantized_latent(model, codes)
    assert rebuilt.shape == latent.shape
    # The RVQ's reconstruction is closer to the encoder's latent than a shuffled one is.
    assert (rebuilt - latent).pow(2).mean() < (rebuilt.roll(1, 0) - latent).pow(2).mean()
    stereo = decode_codes(model, codes.reshape(2, 2, 4, 50).transpose(1, 2).reshape(2, 8, 50))
    assert stereo.shape == (2, 2, 32000)


def test_schema_1_counts_are_read_as_whole_frames() -> None:
    # Schema 1 stored ceil(46,520 / 640) = 73 for a 1.45375 s tail; the reader recomputes the floor, 72.
    old = {"schema_version": 1, "valid_frames": 73, "start_seconds": 10.0, "end_seconds": 10.0 + 46_520 / 32_000}
    assert read_valid_frames(old, 100) == 72
    whole = {"schema_version": 1, "valid_frames": 100, "start_seconds": 0.0, "end_seconds": 2.0}
    assert read_valid_frames(whole, 100) == 100
    new = {"schema_version": 2, "valid_frames": 72, "start_seconds": 10.0, "end_seconds": 11.45375}
    assert read_valid_frames(new, 100) == 72
