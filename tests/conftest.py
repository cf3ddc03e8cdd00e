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
    from finetune.models.tiny import tiny_models

    out = tmp_path_factory.mktemp("models")
    tiny_models(str(out), only=["encodec_32khz", "htdemucs"])
    return out


@pytest.fixture(scope="session")
def synth_catalog_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data_prep.synth import synth_catalog

    out = tmp_path_factory.mktemp("catalog")
    synth_catalog(str(out), tracks=6, seconds=8.0, seed=3, bad_files=True)
    return out
