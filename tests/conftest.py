"""Shared fixtures: tiny models and a synthesized catalog built once per session in a temporary folder.

Nothing here downloads: the models are random-init and written in the real on-disk formats by `mgft tiny-models`,
so every test drives the real loading code (`from_pretrained`, demucs' `get_model`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from testkit.tiny_models import tiny_models

    out = tmp_path_factory.mktemp("models")
    tiny_models(str(out), only=["encodec_32khz", "htdemucs"])
    return out


@pytest.fixture(scope="session")
def synth_catalog_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from testkit.synth import synth_catalog

    out = tmp_path_factory.mktemp("catalog")
    synth_catalog(str(out), tracks=6, seconds=8.0, seed=3, bad_files=True)
    return out


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny MusicGen checkpoints (mono text and stereo melody) in transformers' format."""
    from testkit.tiny_models import tiny_models

    out = tmp_path_factory.mktemp("lms")
    tiny_models(str(out), only=["musicgen-small", "musicgen-stereo-melody"])
    return out


def _prep(tmp_path_factory: pytest.TempPathFactory, catalog: Path, models: Path, name: str, **kw) -> Path:
    from data_prep.prep import prep

    out = tmp_path_factory.mktemp(name)
    prep(input=str(catalog), output=str(out), codec=str(models / "encodec_32khz"), segment_seconds=2.0,
         shard_max_samples=6, batch_size=8, **kw)
    return out


@pytest.fixture(scope="session")
def mono_shards(tmp_path_factory, synth_catalog_dir: Path, tiny_models_dir: Path) -> Path:
    """2 s mono segments of the synthesized catalog, several shards (so ranks can own disjoint shards)."""
    return _prep(tmp_path_factory, synth_catalog_dir, tiny_models_dir, "mono-shards", channels=1)


@pytest.fixture(scope="session")
def stereo_melody_shards(audio_shards: Path) -> Path:
    """2 s stereo segments with chroma: the audio shards below, whose `audio.flac` the LM loader never decodes (one
    demucs prep of the catalog serves the LM and the MBD/eval tests)."""
    return audio_shards


@pytest.fixture(scope="session")
def audio_shards(tmp_path_factory, synth_catalog_dir: Path, tiny_models_dir: Path) -> Path:
    """2 s stereo segments with chroma and their 32 kHz audio kept (what MBD trains on and eval compares with)."""
    return _prep(tmp_path_factory, synth_catalog_dir, tiny_models_dir, "audio-shards", channels=2, keep_audio=True,
                 melody=True, demucs=str(tiny_models_dir / "htdemucs"))


@pytest.fixture(scope="session")
def tiny_mbd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init 4-band MBD in the `facebook/multiband-diffusion` layout."""
    from testkit.tiny_models import MBD, tiny_models

    out = tmp_path_factory.mktemp("mbd")
    tiny_models(str(out), only=[MBD])
    return out / MBD
