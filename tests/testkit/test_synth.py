"""The synthesized catalog: deterministic, varied in the ways a prep must handle, and truthful in its captions."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import soundfile as sf

from testkit import synth
from testkit.synth import TrackSpec

TRACKS = 12
SECONDS = 3.0
SEED = 0


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[TrackSpec], dict[str, Any]]:
    """One catalog (with bad files) shared by the read-only tests below."""
    root = tmp_path_factory.mktemp("synth")
    summary = synth.synth_catalog(str(root), tracks=TRACKS, seconds=SECONDS, seed=SEED, bad_files=True)
    return root, synth.plan_catalog(TRACKS, SECONDS, SEED), summary


def _sidecar(path: Path) -> dict[str, Any]:
    return json.loads(synth.sidecar_path(path).read_text(encoding="utf-8"))


def _wav_data_bytes_claimed(data: bytes) -> int:
    """Size of the `data` chunk as the WAV header states it."""
    offset = 12
    while offset + 8 <= len(data):
        chunk, size = data[offset : offset + 4], struct.unpack("<I", data[offset + 4 : offset + 8])[0]
        if chunk == b"data":
            return size
        offset += 8 + size + size % 2
    raise AssertionError("no data chunk")


def test_same_seed_same_catalog(tmp_path: Path) -> None:
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((first, 7), (second, 7), (other, 8)):
        synth.synth_catalog(str(out), tracks=6, seconds=1.5, seed=seed)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for rel in files:
        if rel.suffix == ".ogg":
            # libsndfile picks a random Ogg stream serial number, so only the decoded samples are reproducible.
            np.testing.assert_array_equal(sf.read(first / rel)[0], sf.read(second / rel)[0])
        else:
            assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    wavs = [root / s.relpath for root, seed in ((first, 7), (other, 8)) for s in synth.plan_catalog(6, 1.5, seed)[1:2]]
    assert wavs[0].suffix == ".wav" and wavs[0].read_bytes() != wavs[1].read_bytes()


def test_plan_is_deterministic_and_validated() -> None:
    assert synth.plan_catalog(5, 4.0, seed=1) == synth.plan_catalog(5, 4.0, seed=1)
    assert synth.plan_catalog(5, 4.0, seed=1) != synth.plan_catalog(5, 4.0, seed=2)
    with pytest.raises(ValueError):
        synth.plan_catalog(0, 4.0)
    with pytest.raises(ValueError):
        synth.plan_catalog(3, 0.0)


def test_summary(catalog: tuple[Path, list[TrackSpec], dict[str, Any]]) -> None:
    root, specs, summary = catalog
    assert summary == {
        "tracks": TRACKS,
        "bad_files": len(synth.BAD_FILES),
        "seconds": pytest.approx(sum(s.duration for s in specs), abs=1e-3),
        "out": str(root),
    }


def test_catalog_mixes_rates_formats_and_channels(catalog: tuple[Path, list[TrackSpec], dict[str, Any]]) -> None:
    root, specs, _ = catalog
    infos = [sf.info(root / s.relpath) for s in specs]
    assert {i.samplerate for i in infos} == {44_100, 48_000}
    assert {(i.format, i.subtype) for i in infos} == {
        ("WAV", "PCM_16"),
        ("WAV", "PCM_24"),
        ("FLAC", "PCM_16"),
        ("OGG", "VORBIS"),
    }
    assert {Path(s.relpath).suffix for s in specs} == {".wav", ".flac", ".ogg"}
    mono = sum(i.channels == 1 for i in infos)
    assert 1 <= mono <= TRACKS // 4
    assert all(i.channels in (1, 2) for i in infos)
    durations = [s.duration for s in specs]
    assert min(durations) < SECONDS < max(durations)
    assert all(0.6 * SECONDS <= d <= 1.4 * SECONDS for d in durations)


def test_small_catalog_still_has_a_mono_track() -> None:
    assert [s.channels for s in synth.plan_catalog(4, 2.0)].count(1) == 1


def test_good_files_decode_with_claimed_duration_and_peak(
    catalog: tuple[Path, list[TrackSpec], dict[str, Any]],
) -> None:
    root, specs, _ = catalog
    for spec in specs:
        path = root / spec.relpath
        audio, rate = sf.read(path, always_2d=True)
        claimed = spec.duration if spec.tagged else _sidecar(path)["duration"]
        assert abs(len(audio) / rate - claimed) < 0.005, path
        assert rate == spec.sample_rate and audio.shape[1] == spec.channels
        peak_db = 20 * np.log10(np.abs(audio).max())
        # Vorbis is lossy, so its peak may drift a little from the -1 dBFS the mix was normalized to.
        assert abs(peak_db - synth.PEAK_DBFS) < (1.0 if spec.format == "OGG" else 0.05), path
        assert np.isfinite(audio).all()


def test_sidecars_are_complete_and_truthful(catalog: tuple[Path, list[TrackSpec], dict[str, Any]]) -> None:
    root, specs, _ = catalog
    fields = {"title", "artist", "description", "genre", "bpm", "key", "moods", "instrument", "keywords", "name"}
    for spec in specs:
        meta = _sidecar(root / spec.relpath)
        assert meta["license"] == "CC0-1.0"
        if spec.tagged:
            assert meta == {"license": "CC0-1.0"}
            continue
        assert fields <= meta.keys()
        assert meta["bpm"] == spec.bpm and isinstance(meta["bpm"], int)
        assert meta["key"] == spec.key.lower() and spec.mode in meta["key"]
        assert f"{spec.bpm} BPM" in meta["description"]
        assert f" in {spec.key} " in meta["description"]
        assert meta["genre"] in meta["description"] and meta["genre"] == spec.genre
        assert meta["moods"] == spec.moods and meta["moods"][0] in meta["description"]
        assert meta["instrument"] == ", ".join(spec.instruments)
        assert meta["name"] == Path(spec.relpath).stem
        assert ("drums" in meta["description"]) == spec.drums


def test_tagged_tracks_embed_title_artist_genre(catalog: tuple[Path, list[TrackSpec], dict[str, Any]]) -> None:
    root, specs, _ = catalog
    tagged = [s for s in specs if s.tagged]
    assert 1 <= len(tagged) <= 2
    for spec in tagged:
        with av.open(str(root / spec.relpath)) as container:
            tags = {k.lower(): v for k, v in container.metadata.items()}
        assert tags["title"] == spec.title
        assert tags["artist"] == spec.artist
        assert tags["genre"] == spec.genre


def test_moods_follow_mode_and_tempo() -> None:
    for spec in synth.plan_catalog(40, 1.0, seed=5):
        if spec.mode == "minor" and not spec.fast:
            assert spec.moods == ["melancholic", "calm"]
        if spec.mode == "major" and spec.fast:
            assert spec.moods == ["upbeat", "happy"]
        assert spec.genre == ("ambient" if not spec.drums else spec.genre)


def test_caption_placement_matches_pans() -> None:
    for spec in synth.plan_catalog(40, 1.0, seed=5):
        caption = synth.describe(spec)
        lead = caption.split(": ", 1)[1].split(",")[0]
        if spec.channels == 1:
            assert "mono" in caption and "panned" not in caption and "center" not in caption
        elif spec.lead_pan < -synth.CENTER_WIDTH:
            assert lead.endswith("panned left")
        elif spec.lead_pan > synth.CENTER_WIDTH:
            assert lead.endswith("panned right")
        else:
            assert lead.endswith("in the center")


@pytest.mark.parametrize("side", ["left", "right"])
def test_lead_sits_where_the_caption_says(side: str) -> None:
    spec = next(
        s for s in synth.plan_catalog(40, 1.0, seed=5) if s.channels == 2 and f"lead panned {side}" in synth.describe(s)
    )
    lead = synth.render_stems(spec)["lead"]
    left, right = (lead**2).sum(axis=0)
    louder, quieter = (left, right) if side == "left" else (right, left)
    assert louder > 2 * quieter


def _grid_energy(signal: np.ndarray, spec: TrackSpec, offset: float) -> float:
    """Energy of the first 10 ms after each beat of `spec`'s tempo, shifted by `offset` beats."""
    beat = 60 / spec.bpm * spec.sample_rate
    window = int(0.01 * spec.sample_rate)
    starts = ((np.arange(int(len(signal) / beat) - 1) + offset) * beat).round().astype(int)
    return float(sum((signal[i : i + window] ** 2).sum() for i in starts))


def test_drums_play_on_the_captioned_tempo() -> None:
    for spec in [s for s in synth.plan_catalog(8, 4.0, seed=2) if s.drums][:3]:
        drums = synth.render_stems(spec)["drums"].sum(axis=1)
        # Hits land on the beat; a sixteenth after it (where nothing is struck) only decaying tails remain.
        assert _grid_energy(drums, spec, 0.0) > 4 * _grid_energy(drums, spec, 0.25), spec


def test_harmony_stays_in_the_key() -> None:
    spec = synth.plan_catalog(3, 4.0, seed=4)[0]
    stems = synth.render_stems(spec)
    pitched = (stems["lead"] + stems["pad"] + stems["bass"]).mean(axis=1)
    power = np.abs(np.fft.rfft(pitched)) ** 2
    freqs = np.fft.rfftfreq(len(pitched), 1 / spec.sample_rate)
    band = (freqs > 40) & (freqs < 2500)
    pitch_class = np.round(12 * np.log2(freqs[band] / 440) + 69).astype(int) % 12
    scale = [(spec.tonic + step) % 12 for step in synth.SCALES[spec.mode]]
    in_key = power[band][np.isin(pitch_class, scale)].sum() / power[band].sum()
    assert in_key > 0.85
    tonic_triad = [(spec.tonic + step) % 12 for step in synth.SCALES[spec.mode][0:5:2]]
    assert power[band][np.isin(pitch_class, tonic_triad)].sum() / power[band].sum() > 0.4


def test_odd_file_names(catalog: tuple[Path, list[TrackSpec], dict[str, Any]]) -> None:
    _, specs, _ = catalog
    paths = [Path(s.relpath) for s in specs]
    assert any(" " in p.name for p in paths)
    assert any("." in p.stem for p in paths)
    assert any(not p.name.isascii() for p in paths)
    assert any(not str(p.parent).isascii() for p in paths)
    assert any(len(p.parts) >= 3 for p in paths)
    stems = [p.with_suffix("") for p in paths]
    assert len(set(stems)) == len(stems)  # unique stems, so no two tracks share a sidecar


def test_bad_files(catalog: tuple[Path, list[TrackSpec], dict[str, Any]]) -> None:
    root, specs, _ = catalog
    bad = root / synth.BAD_DIR
    assert sorted(p.name for p in bad.iterdir() if p.suffix != ".json") == sorted(synth.BAD_FILES)
    for name in synth.BAD_FILES:
        meta = _sidecar(bad / name)
        assert ("license" in meta) == (name != "no-license.wav"), name
    assert "description" in _sidecar(bad / "no-license.wav")

    assert (bad / "empty.wav").stat().st_size == 0
    truncated = (bad / "truncated.wav").read_bytes()
    assert _wav_data_bytes_claimed(truncated) > len(truncated)
    assert not (bad / "not-audio.mp3").read_text(encoding="utf-8").startswith("ID3")
    nan, _ = sf.read(bad / "nan.wav")
    assert sf.info(bad / "nan.wav").subtype == "FLOAT" and np.isnan(nan).any()
    silence, _ = sf.read(bad / "silence.flac")
    assert len(silence) == 3 * synth.BAD_SAMPLE_RATE and not silence.any()
    assert sf.info(bad / "too-short.wav").duration == pytest.approx(0.3)
    tone, _ = sf.read(bad / "no-license.wav")
    assert np.abs(tone).max() > 0.1 and len(tone) == 3 * synth.BAD_SAMPLE_RATE

    duplicate = bad / "duplicate.flac"
    originals = [root / s.relpath for s in specs]
    source = next(p for p in originals if p.read_bytes() == duplicate.read_bytes())
    assert _sidecar(source) == _sidecar(duplicate)


def test_cli_dispatches_to_synth_catalog(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from finetune.__main__ import main

    main(["synth-catalog", str(tmp_path / "cat"), "--tracks", "2", "--seconds", "1"])
    assert len(list((tmp_path / "cat").rglob("*.json"))) == 2
    assert "2 tracks" in capsys.readouterr().out
