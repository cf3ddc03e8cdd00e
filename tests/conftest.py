"""Shared fixtures: tiny models and a synthesized catalog built once per test run in a temporary folder.

Nothing here downloads: the models are random-init and written in the real on-disk formats by `mgft tiny-models`,
so every test drives the real loading code (`from_pretrained`, demucs' `get_model`).

`make test` runs the suite in two pytest-xdist workers (`-n 2 --dist loadfile`: each test file on one worker, so a
file's module fixtures are built once). The session fixtures below are built once for both workers, under a file
lock (`_built_once`), and are read-only for the tests.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: one compute thread each (torch reads this when it is first imported, and the
    # subprocesses the tests start inherit it); more would only contend.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """`build(folder)` run by the first xdist worker that asks; the others wait for it and reuse the folder."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this run (each has its own basetemp below it)
    out, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            build(out)
            done.touch()
    return out


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from testkit.tiny_models import tiny_models

    return _built_once(tmp_path_factory, "models", lambda out: tiny_models(str(out),
                                                                            only=["encodec_32khz", "htdemucs"]))


@pytest.fixture(scope="session")
def synth_catalog_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from testkit.synth import synth_catalog

    return _built_once(tmp_path_factory, "catalog",
                       lambda out: synth_catalog(str(out), tracks=6, seconds=8.0, seed=3, bad_files=True))


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny MusicGen checkpoints (mono and stereo, text and melody) in transformers' format."""
    from testkit.tiny_models import MUSICGEN_NAMES, tiny_models

    return _built_once(tmp_path_factory, "lms", lambda out: tiny_models(str(out), only=list(MUSICGEN_NAMES)))


def _prep(tmp_path_factory: pytest.TempPathFactory, catalog: Path, models: Path, name: str, **kw) -> Path:
    from data_prep.prep import prep

    return _built_once(tmp_path_factory, name, lambda out: prep(
        input=str(catalog), output=str(out), codec=str(models / "encodec_32khz"), segment_seconds=2.0,
        shard_max_samples=6, batch_size=8, **kw))


@pytest.fixture(scope="session")
def mono_shards(tmp_path_factory, synth_catalog_dir: Path, tiny_models_dir: Path) -> Path:
    """2 s mono segments of the synthesized catalog, several shards (so ranks can own disjoint shards)."""
    return _prep(tmp_path_factory, synth_catalog_dir, tiny_models_dir, "mono-shards", channels=1)


@pytest.fixture(scope="session")
def mono_melody_shards(tmp_path_factory, synth_catalog_dir: Path, tiny_models_dir: Path) -> Path:
    """2 s mono segments with chroma (what a mono melody model trains on)."""
    return _prep(tmp_path_factory, synth_catalog_dir, tiny_models_dir, "mono-melody-shards", channels=1, melody=True,
                 demucs=str(tiny_models_dir / "htdemucs"))


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

    return _built_once(tmp_path_factory, "mbd", lambda out: tiny_models(str(out), only=[MBD])) / MBD


@pytest.fixture(scope="session")
def tiny_clap_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init CLAP (`ClapModel` and `ClapProcessor` files) for `mgft prep --auto-tags --clap`."""
    from testkit.tiny_models import CLAP, tiny_models

    return _built_once(tmp_path_factory, "clap", lambda out: tiny_models(str(out), only=[CLAP])) / CLAP


RUN_FIRST = ("tests/test_recipes.py", "tests/slurm/test_sbatch.py", "tests/finetune/test_learning.py",
             "tests/finetune/training/test_fsdp.py", "tests/finetune/training/test_preemption.py",
             "tests/bench/test_gpu_sh.py")
"""The longest files, started first so that neither xdist worker is left with one of them at the end."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Move `RUN_FIRST`'s files to the front, whole (module fixtures are built once); the rest keep their order."""
    rank = {name: i for i, name in enumerate(RUN_FIRST)}
    root = Path(__file__).resolve().parents[1]
    items.sort(key=lambda item: rank.get(Path(item.path).resolve().relative_to(root).as_posix(), len(RUN_FIRST)))
