"""Demucs melody stems on a tiny random-init HTDemucs, loaded through demucs' own `get_model(name, repo=dir)`."""

from __future__ import annotations

import hashlib
import io
import random
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from data_prep.chroma import ChromaExtractor
from data_prep.schema import SAMPLE_RATE
from data_prep.stems import load_demucs, melody_chroma, melody_stems, stem_indices

SR = SAMPLE_RATE
SOURCES = ["drums", "bass", "other", "vocals"]


def build_tiny_htdemucs_repo(out_dir: Path, sources: list[str] | None = None, seed: int = 0) -> Path:
    """Test-only builder: a random tiny HTDemucs written as `out_dir/htdemucs.yaml` + `out_dir/<sig>.th`.

    Used when `testkit.tiny_models.write_htdemucs` is unavailable, and for models with non-standard sources.
    The package is the dict `demucs.states.load_model` reads (serialize_model itself needs omegaconf).
    """
    from demucs.htdemucs import HTDemucs

    kwargs = {
        "sources": list(sources or SOURCES),
        "audio_channels": 2,
        "samplerate": 44100,
        "segment": Fraction(39, 5),
        "channels": 4,
        "depth": 4,
        "dconv_comp": 2,
        "t_layers": 1,
        "t_heads": 2,
        "t_hidden_scale": 2.0,
    }
    torch.manual_seed(seed)
    model = HTDemucs(**kwargs)
    package = {"klass": HTDemucs, "args": (), "kwargs": kwargs, "state": model.state_dict(), "training_args": {}}
    buf = io.BytesIO()
    torch.save(package, buf)
    sig = hashlib.sha256(f"test/{seed}/{sources}".encode()).hexdigest()[:8]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{sig}.th").write_bytes(buf.getvalue())
    (out_dir / "htdemucs.yaml").write_text(f"models: ['{sig}']\n")
    return out_dir


def write_repo(out_dir: Path) -> Path:
    """The project's tiny htdemucs writer when it is importable, else the test-only builder."""
    try:
        from testkit.tiny_models import write_htdemucs
    except ImportError:
        return build_tiny_htdemucs_repo(out_dir)
    return Path(write_htdemucs(out_dir, size="tiny", seed=0))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repo(tmp_path_factory.mktemp("htdemucs"))


@pytest.fixture(scope="module")
def model(repo: Path) -> torch.nn.Module:
    return load_demucs(repo)


def noise(*shape: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(*shape, generator=gen)


# --------------------------------------------------------------------------------------------- loading
def test_load_demucs_from_local_repo(repo: Path, model: torch.nn.Module) -> None:
    from demucs.apply import BagOfModels

    assert isinstance(model, BagOfModels)  # the bag yaml went through demucs' BagOnlyRepo + LocalRepo
    assert not model.training and all(not m.training for m in model.models)
    assert model.sources == SOURCES and model.samplerate == 44100 and model.audio_channels == 2
    assert stem_indices(model.sources) == [3, 2]  # vocals, other, as audiocraft's htdemucs indices
    again = load_demucs(str(repo))  # str and Path both work
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_load_demucs_bad_directory(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty.*exactly one bag file.*none"):
        load_demucs(empty)
    two = build_tiny_htdemucs_repo(tmp_path / "two")
    (two / "other.yaml").write_text("models: ['deadbeef']\n")
    with pytest.raises(ValueError, match=r"two.*found: htdemucs.yaml, other.yaml"):
        load_demucs(two)
    dangling = tmp_path / "dangling"
    dangling.mkdir()
    (dangling / "htdemucs.yaml").write_text("models: ['deadbeef']\n")
    with pytest.raises(ValueError, match=r"dangling"):
        load_demucs(dangling)
    with pytest.raises(ValueError, match="not a directory"):
        load_demucs(tmp_path / "missing")  # a path, never sent to the hub
    with pytest.raises(ValueError, match="not a directory"):
        load_demucs(dangling / "htdemucs.yaml")


def test_load_demucs_needs_vocals_and_other(tmp_path: Path) -> None:
    bad = build_tiny_htdemucs_repo(tmp_path / "bad", sources=["drums", "bass", "other", "guitar"])
    with pytest.raises(ValueError, match="vocals"):
        load_demucs(bad)


# --------------------------------------------------------------------------------------------- stems
@pytest.mark.parametrize("channels", [1, 2])
def test_melody_stems_shape(model: torch.nn.Module, channels: int) -> None:
    wav = noise(2, channels, SR + 123)  # an odd length: the 32k -> 44.1k -> 32k round trip loses a sample
    out = melody_stems(model, wav)
    assert out.shape == (2, SR + 123) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.abs().sum() > 0


def test_melody_stems_is_deterministic_and_restores_random(model: torch.nn.Module) -> None:
    wav = noise(1, 1, SR)
    random.seed(1234)
    before = random.getstate()
    a = melody_stems(model, wav, seed=0, shifts=1)
    assert random.getstate() == before  # the caller's global random stream is untouched
    b = melody_stems(model, wav, seed=0, shifts=1)
    assert torch.equal(a, b)
    c = melody_stems(model, wav, seed=1, shifts=1)
    assert not torch.equal(a, c)  # the seed really drives demucs' random shift


def test_melody_stems_equals_manual_audiocraft_pipeline(model: torch.nn.Module) -> None:
    from demucs.apply import apply_model
    from demucs.audio import convert_audio

    wav = noise(2, 1, SR, seed=3)  # [B, 1, T] mono at 32 kHz, as audiocraft's self_wav
    state = random.getstate()
    random.seed(7)
    x = convert_audio(wav, SR, 44100, 2)
    stems = apply_model(model, x, shifts=1, split=True, overlap=0.25)
    mix = stems[:, [SOURCES.index("vocals"), SOURCES.index("other")]].sum(1)
    expected = convert_audio(mix, 44100, SR, 1)[:, 0]
    random.setstate(state)
    assert expected.shape == (2, SR)
    got = melody_stems(model, wav, seed=7)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------- chroma
def test_melody_chroma_shapes(model: torch.nn.Module) -> None:
    extractor = ChromaExtractor()
    wav = noise(2, 2, 3 * SR)
    chroma = melody_chroma(model, extractor, wav, seed=0)
    assert chroma.shape == (2, 1 + 3 * SR // 4096, 12) == (2, 24, 12)
    assert torch.all(chroma.sum(-1) == 1)
    torch.testing.assert_close(chroma, extractor(melody_stems(model, wav, seed=0)), rtol=0, atol=0)
    # audiocraft skips demucs for a nullified 1-sample condition: 5 frames of silence -> bin 0.
    null = melody_chroma(model, extractor, torch.zeros(2, 1, 1), seed=0)
    assert null.shape == (2, 5, 12) and torch.all(null[..., 0] == 1)


def test_melody_chroma_30s(model: torch.nn.Module) -> None:
    chroma = melody_chroma(model, ChromaExtractor(), noise(1, 1, 30 * SR), seed=0)
    assert chroma.shape == (1, 235, 12)
