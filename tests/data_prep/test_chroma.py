"""Chroma numerics against an independent numpy reference of audiocraft's ChromaExtractor (librosa + torchaudio).

The reference below is written from the published algorithms only (librosa.filters.chroma, torchaudio Spectrogram
with normalized=True), in float64 numpy; it shares no code with `data_prep.chroma` or transformers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_prep.chroma import ChromaExtractor, chroma_valid_frames
from data_prep.schema import CHROMA_HOP, CHROMA_N_FFT, SAMPLE_RATE, chroma_frames

SR = SAMPLE_RATE
N_FFT = CHROMA_N_FFT
HOP = CHROMA_HOP


# --------------------------------------------------------------------------------------------- numpy reference
def ref_chroma_filterbank(sr: int, n_fft: int, n_chroma: int = 12, tuning: float = 0.0) -> np.ndarray:
    """librosa.filters.chroma(sr, n_fft, n_chroma, tuning, ctroct=5.0, octwidth=2, norm=2, base_c=True), float64.

    Returns:
        `[n_chroma, 1 + n_fft // 2]`.
    """
    # FFT bin frequencies without DC, then octaves relative to C0-ish (A440 / 16), in chroma-bin units.
    freqs = np.linspace(0, sr, n_fft, endpoint=False)[1:]
    a440 = 440.0 * 2.0 ** (tuning / n_chroma)
    frqbins = n_chroma * np.log2(freqs / (a440 / 16.0))
    # DC gets a made-up position 1.5 octaves below bin 1.
    frqbins = np.concatenate(([frqbins[0] - 1.5 * n_chroma], frqbins))  # [n_fft]
    binwidth = np.concatenate((np.maximum(frqbins[1:] - frqbins[:-1], 1.0), [1.0]))  # [n_fft]
    d = frqbins[None, :] - np.arange(n_chroma, dtype=np.float64)[:, None]  # [C, n_fft]
    half = np.round(n_chroma / 2.0)
    d = np.remainder(d + half + 10 * n_chroma, n_chroma) - half  # wrap into [-C/2, C/2)
    wts = np.exp(-0.5 * (2.0 * d / binwidth[None, :]) ** 2)  # Gaussian bumps, twice as narrow as the bin width
    wts = wts / np.sqrt(np.sum(wts**2, axis=0, keepdims=True))  # L2-normalize each frequency column
    octave_weight = np.exp(-0.5 * ((frqbins / n_chroma - 5.0) / 2.0) ** 2)  # ctroct 5, octwidth 2
    wts = wts * octave_weight[None, :]
    wts = np.roll(wts, -3 * (n_chroma // 12), axis=0)  # start at C instead of A
    return wts[:, : 1 + n_fft // 2]


def ref_power_spectrogram(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """torchaudio Spectrogram(power=2, center=True, pad_mode='reflect', normalized=True), one signal.

    Returns:
        `[1 + n_fft // 2, frames]`.
    """
    n = np.arange(n_fft)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)  # periodic Hann
    padded = np.pad(x, (n_fft // 2, n_fft // 2), mode="reflect")
    frames = 1 + (len(padded) - n_fft) // hop
    spec = np.stack([np.fft.rfft(padded[i * hop : i * hop + n_fft] * window) for i in range(frames)], axis=1)
    return np.abs(spec) ** 2 / np.sum(window**2)


def ref_raw_chroma(x: np.ndarray, sr: int = SR, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """audiocraft's chroma before argmax for one mono signal: `[frames, 12]`."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < n_fft:
        pad = n_fft - len(x)
        x = np.pad(x, (pad // 2, pad // 2 + pad % 2))
    raw = ref_chroma_filterbank(sr, n_fft) @ ref_power_spectrogram(x, n_fft, hop)  # [12, frames]
    raw = raw / np.maximum(np.max(np.abs(raw), axis=0, keepdims=True), 1e-6)  # inf-norm, eps 1e-6
    return raw.T


# --------------------------------------------------------------------------------------------- signals
def harmonic_tone(freq: float, seconds: float, n_harmonics: int = 4, sr: int = SR) -> np.ndarray:
    """A tone with decaying harmonics (amplitude 1/k), float32."""
    t = np.arange(int(seconds * sr)) / sr
    x = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, n_harmonics + 1))
    return (0.2 * x).astype(np.float32)


def c_major_arpeggio(note_seconds: float = 0.75, sr: int = SR) -> np.ndarray:
    """C4 E4 G4 C5 E5 G5 as harmonic tones, one after the other (4.5 s)."""
    midi = [60, 64, 67, 72, 76, 79]
    notes = [harmonic_tone(440.0 * 2 ** ((m - 69) / 12), note_seconds, sr=sr) for m in midi]
    return np.concatenate(notes)


@pytest.fixture(scope="module")
def extractor() -> ChromaExtractor:
    return ChromaExtractor()


# --------------------------------------------------------------------------------------------- (1) numerics
def test_filterbank_matches_independent_librosa_port(extractor: ChromaExtractor) -> None:
    ref = ref_chroma_filterbank(SR, N_FFT)
    assert extractor.fbanks.shape == (12, 1 + N_FFT // 2)
    assert extractor.fbanks.dtype == torch.float32  # librosa's default dtype, as audiocraft's buffer
    np.testing.assert_allclose(extractor.fbanks.numpy(), ref, rtol=0, atol=1e-6)
    assert "fbanks" not in extractor.state_dict()  # non-persistent, as in audiocraft


@pytest.mark.parametrize("signal", ["arpeggio", "noise", "short"])
def test_raw_chroma_matches_numpy_reference(extractor: ChromaExtractor, signal: str) -> None:
    rng = np.random.default_rng(0)
    if signal == "arpeggio":
        x = c_major_arpeggio()
    elif signal == "noise":
        x = (0.1 * rng.standard_normal(3 * SR)).astype(np.float32)
    else:  # shorter than n_fft with an odd pad width: exercises the centred zero padding
        x = (0.1 * rng.standard_normal(N_FFT // 3)).astype(np.float32)
    ref = ref_raw_chroma(x)
    got = extractor.raw_chroma(torch.from_numpy(x)[None]).numpy()[0]  # [frames, 12]
    assert got.shape == ref.shape
    err = float(np.max(np.abs(got - ref)))
    assert err < 1e-4, f"max |raw_chroma - reference| = {err:.3g}"


def test_mono_channel_dim_and_batch_are_equivalent(extractor: ChromaExtractor) -> None:
    rng = np.random.default_rng(1)
    x = torch.from_numpy((0.1 * rng.standard_normal((3, 2 * SR))).astype(np.float32))  # [B, T]
    flat = extractor.raw_chroma(x)
    chan = extractor.raw_chroma(x[:, None])  # [B, 1, T]
    torch.testing.assert_close(flat, chan, rtol=0, atol=0)
    one = extractor.raw_chroma(x[1:2])
    torch.testing.assert_close(flat[1:2], one, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="mono"):
        extractor(x[:, None].expand(3, 2, -1))


def test_short_input_is_centre_padded(extractor: ChromaExtractor) -> None:
    rng = np.random.default_rng(2)
    length = 5001  # pad width 11383 is odd: 5691 zeros on the left, 5692 on the right
    x = torch.from_numpy((0.1 * rng.standard_normal((1, length))).astype(np.float32))
    pad = N_FFT - length
    manual = torch.nn.functional.pad(x, (pad // 2, pad // 2 + 1))
    assert manual.shape[-1] == N_FFT
    torch.testing.assert_close(extractor.raw_chroma(x), extractor.raw_chroma(manual), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------- (2) argmax
def test_argmax_is_one_hot_and_a440_is_pitch_class_a(extractor: ChromaExtractor) -> None:
    x = torch.from_numpy(harmonic_tone(440.0, 3.0))[None]  # [1, T]
    chroma = extractor(x)  # [1, frames, 12]
    assert chroma.dtype == torch.float32
    assert torch.all(chroma.sum(-1) == 1) and torch.all((chroma == 0) | (chroma == 1))
    middle = chroma[0, 3:-3]  # away from the reflect-padded edges
    assert torch.all(middle.argmax(-1) == 9)  # C=0, C#=1, ..., A=9
    torch.testing.assert_close(chroma.argmax(-1), extractor.raw_chroma(x).argmax(-1))


def test_arpeggio_tracks_the_notes(extractor: ChromaExtractor) -> None:
    chroma = extractor(torch.from_numpy(c_major_arpeggio(note_seconds=1.5))[None])[0]  # [frames, 12]
    pitch = chroma.argmax(-1)
    per_note = round(1.5 * SR / HOP)  # about 12 frames per note
    for i, pc in enumerate([0, 4, 7, 0, 4, 7]):  # C E G C E G
        centre = int((i + 0.5) * 1.5 * SR / HOP)
        assert pitch[centre].item() == pc, f"note {i}: frame {centre} -> {pitch[centre].item()} (per note {per_note})"


# --------------------------------------------------------------------------------------------- (3) frame counts
def test_frame_counts(extractor: ChromaExtractor) -> None:
    assert extractor(torch.zeros(1, 30 * SR)).shape == (1, 235, 12)
    assert extractor(torch.zeros(2, 1, 3 * SR)).shape == (2, 1 + 3 * SR // HOP, 12) == (2, 24, 12)
    assert extractor(torch.zeros(1, N_FFT - 1)).shape == (1, 1 + N_FFT // HOP, 12) == (1, 5, 12)
    assert extractor(torch.zeros(3, 1, 1)).shape == (3, 5, 12)  # audiocraft's nullified condition
    for n in (1, N_FFT - 1, N_FFT, 3 * SR, 30 * SR):
        assert extractor.num_frames(n) == chroma_frames(n)


# --------------------------------------------------------------------------------------------- (4) silence
def test_silence_goes_to_bin_zero(extractor: ChromaExtractor) -> None:
    chroma = extractor(torch.zeros(2, 2 * SR))
    expected = torch.zeros_like(chroma)
    expected[..., 0] = 1
    torch.testing.assert_close(chroma, expected, rtol=0, atol=0)
    assert torch.all(extractor.raw_chroma(torch.zeros(1, 2 * SR)) == 0)


# --------------------------------------------------------------------------------------------- valid frames
def test_chroma_valid_frames_follows_audiocraft_length_mask() -> None:
    assert chroma_valid_frames(30 * SR) == 235
    assert chroma_valid_frames(10 * SR, 30 * SR) == 79
    assert chroma_valid_frames(0) == 0
    assert chroma_valid_frames(1) == 1 and chroma_valid_frames(HOP) == 1 and chroma_valid_frames(HOP + 1) == 2
    # audiocraft: mask = arange(frames) < length / hop (float), frames from the padded segment.
    total = 30 * SR
    frames = chroma_frames(total)
    lengths = [0, 1, 777, HOP - 1, HOP, HOP + 1, 10 * SR, 29 * SR + 5, total - 1, total]
    mask = torch.arange(frames)[None] < (torch.tensor(lengths) / HOP)[:, None]  # [N, frames]
    assert [chroma_valid_frames(n, total) for n in lengths] == mask.sum(-1).tolist()
    with pytest.raises(ValueError):
        chroma_valid_frames(-1)
    with pytest.raises(ValueError):
        chroma_valid_frames(SR, SR - 1)
