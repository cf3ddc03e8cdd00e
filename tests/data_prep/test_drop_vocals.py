"""`mgft prep --drop-vocals`: the stored codes and audio are the instrumental, from one demucs pass per segment."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from testkit.synth import plan_catalog, render_stems


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_drop_vocals_stores_the_instrumental_of_one_demucs_pass(tmp_path: Path, tiny_models_dir: Path) -> None:
    """The stored audio is `instrumental_and_melody`'s instrumental of the segment (the real tiny HTDemucs, seeded
    per sample), its codes are EnCodec's of that audio, and the chroma comes from the same pass."""
    from data_prep.codec import CodecEncoder, load_codec
    from data_prep.prep import _seed_for, prep
    from data_prep.schema import sample_key
    from data_prep.stems import instrumental_and_melody, load_demucs
    from tests.data_prep.shard_reader import read_jsonl, read_samples

    spec = dataclasses.replace(plan_catalog(1, 4.0, seed=4, style="bright")[0], sample_rate=32000,
                               frames=4 * 32000, channels=2)
    stems = {k: v.astype(np.float32) for k, v in render_stems(spec).items()}  # [N, 2] each
    mix = sum(stems.values())
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    sf.write(catalog / "song.wav", mix, 32000, subtype="FLOAT")
    (catalog / "song.json").write_text(json.dumps({"license": "CC0-1.0", "description": "a test"}))
    out = tmp_path / "shards"
    models = tiny_models_dir
    prep(input=str(catalog), output=str(out), codec=str(models / "encodec_32khz"), channels=2, segment_seconds=4.0,
         drop_vocals=True, demucs=str(models / "htdemucs"), keep_audio=True, melody=True)
    (sample,) = read_samples(out).values()
    stored = sample["audio"].T  # [2, N]
    row = read_jsonl(out / "manifest.jsonl")[0]

    demucs = load_demucs(str(models / "htdemucs"), "cpu")
    key = sample_key(row["key"], 0)
    expected, melody = instrumental_and_melody(demucs, torch.from_numpy(mix.T.copy())[None], seed=_seed_for(key))
    np.testing.assert_allclose(stored, expected.numpy()[:, : stored.shape[1]], atol=2e-4)  # flac: 16-bit
    codec = CodecEncoder(load_codec(str(models / "encodec_32khz"), "cpu"), batch_size=2)
    padded = np.zeros((1, 2, 4 * 32000), dtype=np.float32)
    padded[0, :, : expected.shape[1]] = expected.numpy()
    assert np.array_equal(sample["codes"], codec.encode(padded)[0])
    assert sample["chroma"].shape[1] == 12 and melody.abs().sum() > 0



def test_drop_vocals_removes_exactly_the_vocal_stem_of_a_known_separation(tmp_path: Path, tiny_models_dir: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """With demucs' `apply_model` replaced by the known separation (the synthesized stems: lead as vocals, pad as
    other), the stored audio is drums + bass + pad to resampling error (under 5% in norm), and what was removed is
    the lead."""
    import demucs.apply
    from demucs.audio import convert_audio

    from data_prep.prep import prep
    from tests.data_prep.shard_reader import read_samples

    spec = dataclasses.replace(plan_catalog(1, 4.0, seed=4, style="bright")[0], sample_rate=32000,
                               frames=4 * 32000, channels=2)
    stems = {k: v.astype(np.float32) for k, v in render_stems(spec).items()}  # [N, 2] each
    mix = sum(stems.values())
    names = {"drums": "drums", "bass": "bass", "other": "pad", "vocals": "lead"}

    def known_separation(model, mix44, **kwargs):  # [1, 2, T44] -> [1, S, 2, T44] in model.sources order
        out = [convert_audio(torch.from_numpy(stems[names[s]].T.copy())[None], 32000, model.samplerate, 2)
               for s in model.sources]
        return torch.stack([x[..., : mix44.shape[-1]] for x in out], dim=1)

    monkeypatch.setattr(demucs.apply, "apply_model", known_separation)
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    sf.write(catalog / "song.wav", mix, 32000, subtype="FLOAT")
    (catalog / "song.json").write_text(json.dumps({"license": "CC0-1.0", "description": "a test"}))
    prep(input=str(catalog), output=str(tmp_path / "shards"), codec=str(tiny_models_dir / "encodec_32khz"),
         channels=2, segment_seconds=4.0, drop_vocals=True, demucs=str(tiny_models_dir / "htdemucs"),
         keep_audio=True)
    (sample,) = read_samples(tmp_path / "shards").values()
    stored = sample["audio"].T  # [2, N]
    n = stored.shape[1]
    instrumental = (stems["drums"] + stems["bass"] + stems["pad"]).T[:, :n]
    # To the resampling round trip to demucs' 44.1 kHz and back (its low-pass near 16 kHz takes the hi-hats' top).
    error = np.linalg.norm(stored - instrumental) / np.linalg.norm(instrumental)
    assert error < 0.05, error
    removed = mix.T[:, :n] - stored
    assert _corr(removed, stems["lead"].T[:, :n]) > 0.99
    assert _corr(removed, instrumental) < 0.2


def test_drop_vocals_needs_demucs(tmp_path: Path, tiny_models_dir: Path) -> None:
    from data_prep.prep import prep

    with pytest.raises(ValueError, match="--drop-vocals needs --demucs"):
        prep(input=str(tmp_path), output=str(tmp_path / "out"), codec=str(tiny_models_dir / "encodec_32khz"),
             drop_vocals=True)
