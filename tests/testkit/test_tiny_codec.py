"""The tiny EnCodec: its codes carry information and its decoder turns them back into the audio they came from.

Run: `HF_HUB_OFFLINE=1 .venv/bin/pytest -q tests/finetune/models/test_tiny_codec.py -s` (prints the figures).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from testkit import tiny_codec
from testkit.tiny_configs import encodec_config


@pytest.fixture(scope="module")
def codec(tiny_models_dir: Path):
    from transformers import EncodecModel

    return EncodecModel.from_pretrained(tiny_models_dir / "encodec_32khz").eval()


def test_codebooks_are_not_the_zero_buffers_transformers_initializes(codec) -> None:
    for layer in codec.quantizer.layers:
        embed = layer.codebook.embed  # [2048, 16]
        assert embed.std() > 0
        assert len(torch.unique(embed, dim=0)) == embed.shape[0]  # 2048 distinct codes


def test_decode_of_encode_resembles_held_out_audio_far_more_than_random_codes(codec) -> None:
    quality = tiny_codec.codec_quality(codec, tiny_codec.synth_audio(**tiny_codec.HELDOUT_CATALOG))
    print("tiny codec on held-out synthesized audio:", {k: round(v, 3) for k, v in quality.items()})
    assert quality["reconstruction"] > 0.4
    assert quality["reconstruction"] > quality["random_codes"] + 0.3
    assert quality["chroma_agreement"] > 0.4 > quality["chroma_random_codes"] + 0.2  # pitch survives; chance ~1/12
    assert quality["distinct_codes_min"] >= 64
    assert quality["entropy_q0_bits"] >= 4.0


def test_the_decoder_depends_on_the_codes(codec) -> None:
    codes = torch.randint(2048, (1, 1, 4, 25), generator=torch.Generator().manual_seed(0))
    other = codes.clone()
    other[..., 10:] = (other[..., 10:] + 1000) % 2048
    with torch.no_grad():
        a = codec.decode(codes, [None]).audio_values
        b = codec.decode(other, [None]).audio_values
    # The first 10 frames (6,400 samples) share codes; the rest differ and so must the audio.
    assert (a[..., 8000:] - b[..., 8000:]).abs().mean() > 10 * (a[..., :4000] - b[..., :4000]).abs().mean()


def test_log_mel_correlation_scores_structure_not_the_average_spectrum() -> None:
    items = tiny_codec.synth_audio(tracks=2, seconds=4.0, seed=7)
    x = torch.from_numpy(items[0])
    assert tiny_codec.log_mel_correlation(x, x) == pytest.approx(1.0)
    # The same track's other channel shares its notes; another track does not.
    n = min(len(items[0]), len(items[2]))
    same_notes = tiny_codec.log_mel_correlation(x, torch.from_numpy(items[1]))
    other_track = tiny_codec.log_mel_correlation(x[:n], torch.from_numpy(items[2][:n]))
    assert same_notes > 0.5 > other_track


def test_kmeans_finds_separated_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(200, 2, generator=g) for c in centers])
    found = tiny_codec.kmeans(points, 4, iters=20, generator=torch.Generator().manual_seed(1))
    nearest = torch.cdist(centers, found).min(dim=1).values
    assert nearest.max() < 0.1


def test_kmeans_codebooks_fit_each_residual_level() -> None:
    from transformers import EncodecModel

    torch.manual_seed(0)
    model = EncodecModel(encodec_config("tiny")).eval()
    latents = tiny_codec.encoder_latents(model, tiny_codec.synth_audio(tracks=6, seconds=8.0, seed=2))  # [N, 16]
    with pytest.raises(ValueError, match="latent frames"):
        tiny_codec.kmeans_codebooks(model, latents[:1000])
    tiny_codec.kmeans_codebooks(model, latents, iters=5)
    residual, errors = latents, [latents.pow(2).sum(1).mean()]
    for layer in model.quantizer.layers:
        codes = tiny_codec.nearest(residual, layer.codebook.embed)
        assert len(torch.unique(codes)) >= 64
        residual = residual - layer.codebook.embed[codes]
        errors.append(residual.pow(2).sum(1).mean())
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    # transformers' own encode picks the same codes as the nearest-centroid search.
    with torch.no_grad():
        ours = tiny_codec.nearest(latents, model.quantizer.layers[0].codebook.embed)
        theirs = model.quantizer.encode(latents.T[None], bandwidth=2.2)[0, 0]
    assert torch.equal(ours, theirs)


@pytest.mark.slow
def test_training_script_writes_a_codec_that_loads(tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import EncodecModel

    out = tmp_path / "codec.safetensors"
    tiny_codec.main(["--out", str(out), "--autoencoder-steps", "3", "--decoder-steps", "3", "--train-tracks", "8"])
    model = EncodecModel(encodec_config("tiny"))
    model.load_state_dict(load_file(str(out)))
    assert out.stat().st_size < 2_000_000
    assert all(layer.codebook.embed.std() > 0 for layer in model.quantizer.layers)
    committed = load_file(str(tiny_codec.ASSET))
    assert set(committed) == set(model.state_dict())


def test_synth_audio_items_are_left_and_right_channels() -> None:
    items = tiny_codec.synth_audio(tracks=1, seconds=2.0, seed=0)
    assert len(items) == 2 and items[0].dtype == np.float32 and items[0].shape == items[1].shape
