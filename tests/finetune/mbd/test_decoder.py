"""The MBD file (audiocraft's `mbd_musicgen_32khz.th` layout) and token decoding, mono and stereo."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_prep.codec import decode_codes
from finetune.mbd.decoder import MBD_FILENAME, load_bands, load_mbd, re_eq, save_mbd


@pytest.fixture(scope="module")
def codec(tiny_models_dir: Path):
    from transformers import EncodecModel

    return EncodecModel.from_pretrained(tiny_models_dir / "encodec_32khz").eval()


def test_file_has_audiocrafts_layout(tiny_mbd_dir: Path) -> None:
    from omegaconf import DictConfig

    # audiocraft's own loader: a full torch.load; the band configs are DictConfigs read by attribute.
    package = torch.load(tiny_mbd_dir / MBD_FILENAME, weights_only=False)
    assert package["sample_rate"] == 32000 and package["n_bands"] == 4
    assert set(package) == {"sample_rate", "n_bands", 0, 1, 2, 3}
    for i in range(4):
        band = package[i]
        assert set(band) == {"cfg", "model_state", "processor_state"}
        cfg = band["cfg"]
        assert isinstance(cfg, DictConfig)
        assert cfg.channels == 1 and cfg.schedule.num_steps == 1000 and cfg.schedule.beta_exp == 7.5
        assert cfg.diffusion_unet.codec_dim == 16 and cfg.filter.idx_band == i
        assert cfg.processor.use == (i >= 2)
        assert "encoders.0.conv.weight" in band["model_state"]
        assert set(band["processor_state"]) == (
            {"counts", "sum_x", "sum_x2", "sum_target_x2", "split_bands.lowpass.filters"} if i >= 2 else set())
    assert package[3]["cfg"].processor.power_std == 0.75 and package[2]["cfg"].processor.power_std == 0.4


def test_save_load_round_trip_is_exact(tiny_mbd_dir: Path, tmp_path: Path) -> None:
    bands, sample_rate = load_bands(str(tiny_mbd_dir))  # without trust: the DictConfigs load as plain dicts
    save_mbd(bands, tmp_path / "copy.th", sample_rate)
    again, _ = load_bands(str(tmp_path / "copy.th"))
    original = torch.load(tiny_mbd_dir / MBD_FILENAME, weights_only=False)
    copied = torch.load(tmp_path / "copy.th", weights_only=False)
    for i in range(4):
        assert again[i].cfg == bands[i].cfg
        for part in ("model_state", "processor_state"):
            assert original[i][part].keys() == copied[i][part].keys()
            for key, value in original[i][part].items():
                assert torch.equal(value, copied[i][part][key]), (i, part, key)
        assert dict(original[i]["cfg"]) == dict(copied[i]["cfg"])


def test_stereo_tokens_decode_to_two_channels_of_the_encodec_length(tiny_mbd_dir: Path, codec) -> None:
    mbd = load_mbd(str(tiny_mbd_dir), codec)
    codes = torch.randint(0, 2048, (2, 8, 15))  # [B, K, T] interleaved L0, R0, L1, R1, ...
    wav = mbd.tokens_to_wav(codes, seed=0)
    left = decode_codes(codec, codes[:, 0::2])
    assert wav.shape == (2, 2, left.shape[-1]) and torch.isfinite(wav).all()
    torch.testing.assert_close(wav, mbd.tokens_to_wav(codes, seed=0))  # seeded: reproducible
    mono = mbd.tokens_to_wav(codes[:, 0::2], seed=0)
    assert mono.shape == (2, 1, left.shape[-1])


def test_re_eq_matches_the_reference_band_levels() -> None:
    import julius

    generator = torch.Generator().manual_seed(0)
    split = julius.SplitBands(32000, n_bands=8)
    wav = torch.randn(1, 1, 16000, generator=generator)
    gains = torch.logspace(0, -1, 8).view(8, 1, 1, 1)  # a reference tilted by 20 dB from lows to highs
    ref = (split(torch.randn(1, 1, 16000, generator=generator)) * gains).sum(0) * 0.1
    out = re_eq(wav, ref, n_bands=8)
    for band_out, band_ref in zip(split(out), split(ref)):
        assert float(band_out.std()) == pytest.approx(float(band_ref.std()), rel=0.15)


def test_a_file_that_is_not_mbd_is_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": {}}, tmp_path / "x.th")
    with pytest.raises(ValueError, match="not an MBD file"):
        load_bands(str(tmp_path / "x.th"))
