"""Decoding and validation: each kind of bad file gets its own reject reason; channel conversion is right."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_prep import audio as audio_io
from data_prep.audio import DecodedAudio, RejectError


def _tone(seconds: float, rate: int, channels: int = 2) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.4 * np.sin(2 * np.pi * 220 * t)
    return np.stack([x * (1 - 0.2 * c) for c in range(channels)], axis=1).astype(np.float32)


def _reason(path: Path, **kw) -> str:
    with pytest.raises(RejectError) as e:
        scan = audio_io.scan_audio(path)
        audio_io.check_content(scan, min_seconds=kw.get("min_seconds", 1.0), silence_dbfs=-80.0)
    return e.value.reason


def test_bad_files_get_distinct_reasons(tmp_path: Path) -> None:
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.ogg").write_text("definitely not audio\n" * 20)
    sf.write(tmp_path / "full.wav", _tone(2, 44100), 44100, subtype="PCM_16")
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    sf.write(tmp_path / "full.flac", _tone(2, 44100), 44100)
    data = (tmp_path / "full.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbled.flac").write_bytes(b"fLaC" + bytes(range(256)) * 8)
    nan = _tone(2, 44100)
    nan[100, 0] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 44100, subtype="FLOAT")
    sf.write(tmp_path / "zeros.flac", np.zeros((44100 * 2, 2), np.float32), 44100)
    sf.write(tmp_path / "short.wav", _tone(0.2, 44100), 44100)

    assert _reason(tmp_path / "empty.wav") == "empty_file"
    assert _reason(tmp_path / "text.ogg") == "not_audio"
    assert _reason(tmp_path / "cut.wav") == "truncated"
    assert _reason(tmp_path / "cut.flac") == "truncated"
    assert _reason(tmp_path / "garbled.flac") == "decode_error"
    assert _reason(tmp_path / "nan.wav") == "non_finite"
    assert _reason(tmp_path / "zeros.flac") == "silent"
    assert _reason(tmp_path / "short.wav") == "too_short"
    ok = audio_io.decode(tmp_path / "full.wav")
    assert ok.samples.shape == (2, 88200) and ok.sample_rate == 44100


def test_pyav_path_decodes_what_libsndfile_does(tmp_path: Path) -> None:
    sf.write(tmp_path / "x.flac", _tone(1, 48000), 48000)
    ref = audio_io.decode(tmp_path / "x.flac")
    samples, rate, codec, declared = audio_io._decode_pyav(tmp_path / "x.flac")
    assert rate == 48000 and codec == "flac" and declared == 48000
    np.testing.assert_allclose(samples, ref.samples, atol=1e-6)


def test_resample_preserves_duration_and_pitch() -> None:
    x = _tone(2, 44100, channels=1).T
    out = audio_io.resample(DecodedAudio(x, 44100, "pcm"), 32000)
    assert abs(out.samples.shape[1] - 64000) <= 1 and out.sample_rate == 32000
    spectrum = np.abs(np.fft.rfft(out.samples[0]))
    assert abs(np.argmax(spectrum) * 32000 / out.samples.shape[1] - 220) < 1


@pytest.mark.parametrize(("channels_in", "channels_out", "note"), [
    (1, 2, "mono duplicated"), (2, 1, "downmixed 2 -> 1"), (6, 2, "downmixed 6 -> 2"), (4, 2, "downmixed 4 -> 2"),
    (2, 2, None),
])
def test_convert_channels(channels_in: int, channels_out: int, note: str | None) -> None:
    x = np.random.default_rng(0).uniform(-1, 1, (channels_in, 100)).astype(np.float32)
    out = audio_io.convert_channels(DecodedAudio(x, 32000, "pcm"), channels_out)
    assert out.samples.shape == (channels_out, 100)
    assert (note is None and not out.notes) or any(note in n for n in out.notes)
    if channels_in == 1:
        np.testing.assert_array_equal(out.samples[0], out.samples[1])
    if channels_out == 1:
        np.testing.assert_allclose(out.samples[0], x.mean(0), atol=1e-6)
    if channels_in == 6:
        # Centre reaches both sides equally; the LFE is dropped.
        lfe_only = np.zeros_like(x)
        lfe_only[3] = 1
        assert not audio_io.convert_channels(DecodedAudio(lfe_only, 32000, "pcm"), 2).samples.any()
