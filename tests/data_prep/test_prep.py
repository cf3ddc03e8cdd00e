"""End to end: `mgft prep` on a synthesized catalog with every kind of bad input, odd names, ranks and kill -9."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from data_prep import audio as audio_io
from data_prep import prep as prep_module
from data_prep.merge import prep_merge
from data_prep.prep import prep
from data_prep.schema import SAMPLE_RATE, deinterleave_stereo, num_frames, sample_key, sanitize_key, valid_frames
from tests.data_prep.shard_reader import read_jsonl, read_samples

SEGMENT = 4.0


def _prep_args(catalog: Path, out: Path, models: Path, **extra) -> dict:
    args = dict(
        input=str(catalog),
        output=str(out),
        codec=str(models / "encodec_32khz"),
        channels=2,
        segment_seconds=SEGMENT,
        batch_size=4,
        shard_max_samples=5,
    )
    args.update(extra)
    return args


def _cli(args: dict) -> list[str]:
    out = [sys.executable, "-m", "finetune", "prep"]
    for k, v in args.items():
        flag = "--" + k.replace("_", "-")
        out += [flag] if v is True else [flag, str(v)]
    return out


@pytest.fixture(scope="module")
def prepped(tmp_path_factory, synth_catalog_dir: Path, tiny_models_dir: Path) -> Path:
    """One melody + audio prep of the catalog shared by the read-only tests below."""
    out = tmp_path_factory.mktemp("prepped")
    args = _prep_args(synth_catalog_dir, out, tiny_models_dir, melody=True, keep_audio=True)
    args["demucs"] = str(tiny_models_dir / "htdemucs")
    prep(**args)
    return out


def test_every_input_is_kept_or_rejected_with_its_reason(prepped: Path, synth_catalog_dir: Path) -> None:
    manifest = read_jsonl(prepped / "manifest.jsonl")
    rejects = read_jsonl(prepped / "rejects.jsonl")
    audio_files = {p.relative_to(synth_catalog_dir).as_posix() for p in synth_catalog_dir.rglob("*")
                   if p.suffix in (".wav", ".flac", ".ogg", ".mp3")}
    kept, refused = {r["path"] for r in manifest}, {r["path"] for r in rejects}
    assert kept.isdisjoint(refused)
    assert kept | refused == audio_files
    reasons = {Path(r["path"]).name: r["reason"] for r in rejects}
    assert reasons["empty.wav"] == "empty_file"
    assert reasons["truncated.wav"] == "truncated"
    assert reasons["not-audio.mp3"] == "not_audio"
    assert reasons["nan.wav"] == "non_finite"
    assert reasons["silence.flac"] == "silent"
    assert reasons["too-short.wav"] == "too_short"
    assert reasons["no-license.wav"] == "no_license"
    assert "duplicate" in reasons.values()
    dup = next(r for r in rejects if r["reason"] == "duplicate")
    original = next(r for r in manifest if r["sha256"] == dup["sha256"])
    assert original["path"] < dup["path"], "the first copy in catalog order is the one kept"

    stats = json.loads((prepped / "stats.json").read_text())
    assert stats["tracks_in"] == len(audio_files)
    assert stats["rejects_by_reason"]["duplicate"] == 1
    assert set(stats["by_license"]) == {"CC0-1.0"}
    assert stats["segments"] == sum(len(r["segments"]) for r in manifest) == len(read_samples(prepped))


def test_samples_carry_codes_chroma_audio_and_metadata(prepped: Path) -> None:
    samples = read_samples(prepped)
    manifest = {r["path"]: r for r in read_jsonl(prepped / "manifest.jsonl")}
    t = num_frames(SEGMENT)
    for key, s in samples.items():
        info = s["info"]
        assert "." not in key and "/" not in key
        assert s["codes"].dtype == np.int16 and s["codes"].shape == (8, t)
        assert 0 <= s["codes"].min() and s["codes"].max() < 2048
        assert s["chroma"].shape == (1 + int(SEGMENT * SAMPLE_RATE) // 4096, 12)
        np.testing.assert_array_equal(s["chroma"].sum(-1), 1.0)  # one-hot per frame
        assert s["audio_rate"] == SAMPLE_RATE and s["audio"].shape[1] == 2
        n_valid = round((info["end_seconds"] - info["start_seconds"]) * SAMPLE_RATE)
        assert s["audio"].shape[0] == n_valid
        assert info["valid_frames"] == valid_frames(n_valid)
        assert info["license"] == "CC0-1.0"
        row = manifest[info["source_path"]]
        assert info["source_sha256"] == row["sha256"] and info["caption"] == row["caption"]
    with_sidecar = [r for r in manifest.values() if "sidecar" in r["metadata_sources"] and r["caption"]]
    assert with_sidecar and all(r["metadata"]["bpm"] for r in with_sidecar)
    tagged = [r for r in manifest.values() if "tags" in r["metadata_sources"]]
    assert tagged and all(r["metadata"]["title"] and r["metadata"]["artist"] for r in tagged)


def test_kept_durations_sum_to_each_tracks_decoded_duration(prepped: Path, synth_catalog_dir: Path) -> None:
    for row in read_jsonl(prepped / "manifest.jsonl"):
        decoded = audio_io.decode(synth_catalog_dir / row["path"])
        summed = sum(s["end_seconds"] - s["start_seconds"] for s in row["segments"])
        assert abs(summed - decoded.seconds) <= 1 / 50, row["path"]
        assert abs(row["kept_seconds"] - decoded.seconds) <= 1 / 50


def test_codes_equal_encodec_encode_of_the_same_segment(prepped: Path, synth_catalog_dir: Path,
                                                        tiny_models_dir: Path) -> None:
    from transformers import EncodecModel

    model = EncodecModel.from_pretrained(tiny_models_dir / "encodec_32khz").eval()
    samples = read_samples(prepped)
    manifest = read_jsonl(prepped / "manifest.jsonl")
    mono_row = next(r for r in manifest if r["source"]["channels"] == 1)
    stereo_row = next(r for r in manifest if r["source"]["channels"] == 2 and len(r["segments"]) > 1)
    seg = int(SEGMENT * SAMPLE_RATE)
    for row in (mono_row, stereo_row):
        decoded = audio_io.decode(synth_catalog_dir / row["path"])
        audio = audio_io.convert_channels(audio_io.resample(decoded, SAMPLE_RATE), 2).samples
        for i, segment in enumerate(row["segments"]):
            start = round(segment["start_seconds"] * SAMPLE_RATE)
            window = np.zeros((2, seg), dtype=np.float32)
            chunk = audio[:, start : start + seg]
            window[:, : chunk.shape[1]] = chunk
            with torch.no_grad():
                per_channel = [
                    model.encode(torch.from_numpy(window[c])[None, None], bandwidth=2.2).audio_codes[0, 0].numpy()
                    for c in range(2)
                ]
            left, right = deinterleave_stereo(samples[sample_key(row["key"], i)]["codes"])
            np.testing.assert_array_equal(left, per_channel[0])
            np.testing.assert_array_equal(right, per_channel[1])


def test_codes_carry_information(prepped: Path, tiny_models_dir: Path) -> None:
    """The shards' codes say something about the audio (a random-init EnCodec gives code 0 everywhere)."""
    from transformers import EncodecModel

    samples = read_samples(prepped)
    codes = np.concatenate([s["codes"] for s in samples.values()], axis=1).astype(np.int64)  # [8, all frames]
    for k, row in enumerate(codes):
        assert len(np.unique(row)) >= 64, f"codebook {k} uses {len(np.unique(row))} distinct codes"
    counts = np.bincount(codes[0], minlength=2048)
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * np.log2(p)).sum())
    assert entropy >= 4.0, f"codebook 0 entropy {entropy:.2f} bits"
    # Two different tracks give different codes.
    by_track: dict[str, np.ndarray] = {}
    for sample in samples.values():
        by_track.setdefault(sample["info"]["source_path"], sample["codes"])
    first, second = list(by_track.values())[:2]
    frames = min(first.shape[1], second.shape[1])
    assert (first[:, :frames] != second[:, :frames]).mean() > 0.5
    # The same audio gives the same codes, whatever it is batched with.
    model = EncodecModel.from_pretrained(tiny_models_dir / "encodec_32khz").eval()
    audio = torch.from_numpy(np.random.default_rng(0).uniform(-0.3, 0.3, (3, 1, SAMPLE_RATE)).astype(np.float32))
    with torch.no_grad():
        batched = model.encode(audio, bandwidth=2.2).audio_codes[0]  # [3, 4, 50]
        alone = model.encode(audio[1:2], bandwidth=2.2).audio_codes[0]
    assert torch.equal(batched[1:2], alone) and not torch.equal(batched[0], batched[1])


def test_melody_chroma_is_taken_from_the_channel_mean_before_demucs(prepped: Path, synth_catalog_dir: Path,
                                                                    tiny_models_dir: Path) -> None:
    """audiocraft's chroma (its cache) averages stereo to mono, then separates; it never separates each channel."""
    from data_prep.chroma import ChromaExtractor
    from data_prep.prep import _seed_for
    from data_prep.stems import load_demucs, melody_chroma

    demucs, extractor = load_demucs(str(tiny_models_dir / "htdemucs")), ChromaExtractor()
    samples = read_samples(prepped)
    rows = [r for r in read_jsonl(prepped / "manifest.jsonl") if r["source"]["channels"] == 2][:2]
    seg, stereo_differs = int(SEGMENT * SAMPLE_RATE), 0
    for row in rows:
        decoded = audio_io.decode(synth_catalog_dir / row["path"])
        audio = audio_io.convert_channels(audio_io.resample(decoded, SAMPLE_RATE), 2).samples  # [2, N]
        segment = row["segments"][0]
        start = round(segment["start_seconds"] * SAMPLE_RATE)
        window = np.zeros((2, seg), dtype=np.float32)
        chunk = audio[:, start : start + seg]
        window[:, : chunk.shape[1]] = chunk
        key = sample_key(row["key"], 0)
        wav = torch.from_numpy(window)[None]  # [1, 2, N]
        expected = melody_chroma(demucs, extractor, wav.mean(1, keepdim=True), seed=_seed_for(key))[0].numpy()
        np.testing.assert_array_equal(samples[key]["chroma"], expected)
        both = melody_chroma(demucs, extractor, wav, seed=_seed_for(key))[0].numpy()
        stereo_differs += int((both != expected).any())
    assert stereo_differs, "the fixture must tell the two pipelines apart"


def test_short_tracks_and_tails_are_kept_with_valid_frames(tmp_path: Path, tiny_models_dir: Path) -> None:
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    rng = np.random.default_rng(0)
    lengths = {"short.wav": 2.5, "long.flac": 9.3, "exact.wav": 8.0}
    for name, seconds in lengths.items():
        sf.write(catalog / name, rng.uniform(-0.5, 0.5, (int(seconds * 48000), 2)).astype(np.float32), 48000)
    out = tmp_path / "out"
    prep(**_prep_args(catalog, out, tiny_models_dir, channels=1, license="CC-BY-4.0"))
    rows = {r["path"]: r for r in read_jsonl(out / "manifest.jsonl")}
    samples = read_samples(out)
    expected_windows = {"short.wav": [2.5], "long.flac": [4.0, 4.0, 1.3], "exact.wav": [4.0, 4.0]}
    for name, durations in expected_windows.items():
        segs = rows[name]["segments"]
        assert [round(s["end_seconds"] - s["start_seconds"], 3) for s in segs] == durations
        for i, d in enumerate(durations):
            s = samples[sample_key(rows[name]["key"], i)]
            assert s["codes"].shape == (4, num_frames(SEGMENT))
            assert s["info"]["valid_frames"] == valid_frames(round(d * SAMPLE_RATE))
    assert json.loads((out / "stats.json").read_text())["by_license"]["CC-BY-4.0"]["tracks"] == 3



def test_licenses_filter_and_default(tmp_path: Path, tiny_models_dir: Path) -> None:
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    tone = (0.3 * np.sin(np.arange(48000 * 2) * 2 * np.pi * 440 / 48000)).astype(np.float32)
    for name, lic in [("a.wav", "CC0-1.0"), ("b.wav", "All-Rights-Reserved"), ("c.wav", None), ("d.wav", "bad")]:
        sf.write(catalog / name, tone * (1 + ord(name[0]) / 100), 48000)
        if lic == "bad":
            (catalog / "d.json").write_text("{not json")
        elif lic:
            (catalog / name).with_suffix(".json").write_text(json.dumps({"license": lic, "description": name}))
    out = tmp_path / "out"
    prep(**_prep_args(catalog, out, tiny_models_dir, license="CC-BY-4.0", allowed_licenses="CC0-1.0,CC-BY-4.0"))
    rejects = {r["path"]: r["reason"] for r in read_jsonl(out / "rejects.jsonl")}
    kept = {r["path"]: r["license"] for r in read_jsonl(out / "manifest.jsonl")}
    assert kept == {"a.wav": "CC0-1.0", "c.wav": "CC-BY-4.0"}
    assert rejects == {"b.wav": "license_not_allowed", "d.wav": "bad_sidecar"}


def test_channel_conversion_notes(tmp_path: Path, tiny_models_dir: Path) -> None:
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    rng = np.random.default_rng(1)
    sf.write(catalog / "surround.wav", rng.uniform(-0.3, 0.3, (44100 * 2, 6)).astype(np.float32), 44100)
    sf.write(catalog / "mono.flac", rng.uniform(-0.3, 0.3, (44100 * 2,)).astype(np.float32), 44100)
    out = tmp_path / "out"
    prep(**_prep_args(catalog, out, tiny_models_dir, license="CC0-1.0"))
    notes = {r["path"]: r["notes"] for r in read_jsonl(out / "manifest.jsonl")}
    assert any("downmixed 6 -> 2" in n for n in notes["surround.wav"])
    assert any("mono duplicated" in n for n in notes["mono.flac"])
    for s in read_samples(out).values():
        left, right = deinterleave_stereo(s["codes"])
        if s["info"]["source_path"] == "mono.flac":
            np.testing.assert_array_equal(left, right)


def test_odd_file_names_get_safe_unique_keys(tmp_path: Path, tiny_models_dir: Path) -> None:
    catalog = tmp_path / "catalog"
    names = ["a b.c.wav", "a_b_c.wav", "ünïcödé/Café del Mar.v2 – take 1.wav", "dir.with.dots/x.wav", "日本語.wav"]
    rng = np.random.default_rng(2)
    for name in names:
        (catalog / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(catalog / name, rng.uniform(-0.3, 0.3, (32000 * 2,)).astype(np.float32), 32000)
    out = tmp_path / "out"
    prep(**_prep_args(catalog, out, tiny_models_dir, license="CC0-1.0"))
    samples = read_samples(out)
    assert sorted(s["info"]["source_path"] for s in samples.values()) == sorted(names)
    for key in samples:
        assert all(ch.isascii() and (ch.isalnum() or ch in "_-") for ch in key), key
    assert sanitize_key("a b.c.wav") != sanitize_key("a_b_c.wav")


def _comparable(out: Path) -> dict:
    """Everything a consumer sees, minus tar member timestamps."""
    samples = read_samples(out)
    return {
        "samples": {k: (s["codes"].tobytes(), s["info"], s.get("chroma", np.zeros(0)).tobytes()) for k, s in
                    samples.items()},
        "manifest": [{k: v for k, v in r.items() if k != "shard"} for r in read_jsonl(out / "manifest.jsonl")],
        "rejects": read_jsonl(out / "rejects.jsonl"),
    }


def test_two_ranks_are_disjoint_and_their_union_equals_one_rank(tmp_path: Path, synth_catalog_dir: Path,
                                                                 tiny_models_dir: Path) -> None:
    one = tmp_path / "one"
    prep(**_prep_args(synth_catalog_dir, one, tiny_models_dir))
    two = tmp_path / "two"
    prep(**_prep_args(synth_catalog_dir, two, tiny_models_dir, rank=1, world_size=2))
    assert not (two / "manifest.jsonl").exists(), "merge waits for every rank"
    with pytest.raises(RuntimeError, match="have not finished"):
        prep_merge(str(two))
    prep(**_prep_args(synth_catalog_dir, two, tiny_models_dir, rank=0, world_size=2))  # last rank merges
    per_rank = [{r["path"] for r in read_jsonl(two / f"journal.r{r:04d}.jsonl") if r["type"] == "shard"
                 for r in r["tracks"]} for r in range(2)]
    assert per_rank[0] and per_rank[1] and per_rank[0].isdisjoint(per_rank[1])
    assert _comparable(one) == _comparable(two)
    assert json.loads((two / "stats.json").read_text())["tracks_in"] == json.loads(
        (one / "stats.json").read_text())["tracks_in"]


def test_rerun_with_other_settings_is_refused(tmp_path: Path, synth_catalog_dir: Path, tiny_models_dir: Path) -> None:
    out = tmp_path / "out"
    prep(**_prep_args(synth_catalog_dir, out, tiny_models_dir))
    with pytest.raises(ValueError, match="channels"):
        prep(**_prep_args(synth_catalog_dir, out, tiny_models_dir, channels=1))
    # The EnCodec batch is part of the output (codes depend on the call shape), and the refusal says how to resume.
    with pytest.raises(ValueError, match=r"batch_size: 4 -> 2\); use a new --output \(or --batch-size 4\)"):
        prep(**_prep_args(synth_catalog_dir, out, tiny_models_dir, batch_size=2))
    # An output from before the batch was recorded was encoded at the default of then, 8.
    config = json.loads((out / "prep_config.json").read_text())
    del config["batch_size"]
    (out / "prep_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"batch_size: 8 -> 4"):
        prep(**_prep_args(synth_catalog_dir, out, tiny_models_dir))
    assert prep(**_prep_args(synth_catalog_dir, out, tiny_models_dir, batch_size=8))["tracks_kept"] > 0


def test_a_prep_that_fails_before_its_first_track_leaves_nothing_to_match(tmp_path: Path, synth_catalog_dir: Path,
                                                                          tiny_models_dir: Path) -> None:
    """A codec that does not load fails after the settings were recorded; the corrected command into the same
    --output must then run, not be refused for "other settings" under which nothing was prepped."""
    out = tmp_path / "out"
    with pytest.raises(Exception):  # noqa: B017 (whatever transformers raises for a folder that is no EnCodec)
        prep(**_prep_args(synth_catalog_dir, out, tiny_models_dir, codec=str(tiny_models_dir / "htdemucs")))
    assert not out.exists()  # the folder it made is gone
    out.mkdir()
    (out / "notes.txt").write_text("a folder of the user's")
    with pytest.raises(Exception):  # noqa: B017
        prep(**_prep_args(synth_catalog_dir, out, tiny_models_dir, codec=str(tiny_models_dir / "htdemucs")))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # the folder as it was
    assert prep(**_prep_args(synth_catalog_dir, out, tiny_models_dir))["tracks_kept"] > 0


def test_prep_into_an_output_of_the_old_schema_says_what_changed(tmp_path: Path, synth_catalog_dir: Path,
                                                                 tiny_models_dir: Path) -> None:
    out = tmp_path / "out"
    prep(**_prep_args(synth_catalog_dir, out, tiny_models_dir))
    config = json.loads((out / "prep_config.json").read_text())
    config["schema_version"] = 1  # as written before whole-frame counts
    (out / "prep_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="schema 1.*partial last frame.*new --output.*still train"):
        prep(**_prep_args(synth_catalog_dir, out, tiny_models_dir))


@pytest.mark.slow
def test_ctrl_c_then_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path: Path, synth_catalog_dir: Path,
                                                       tiny_models_dir: Path) -> None:
    reference = tmp_path / "reference"
    args = _prep_args(synth_catalog_dir, reference, tiny_models_dir, shard_max_samples=2)
    prep(**args)

    out = tmp_path / "killed"
    args["output"] = str(out)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for attempt, how in enumerate((signal.SIGINT, signal.SIGKILL)):
        # Stop it twice, each time right after one more shard is committed, so the rerun resumes a resumed run: by
        # Ctrl-C (SIGINT to the process group, workers included), then by kill -9.
        err = open(tmp_path / f"stderr{attempt}.txt", "w")  # noqa: SIM115 (closed below; a pipe could fill up)
        proc = subprocess.Popen(_cli(args), env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        journal = out / "journal.r0000.jsonl"
        deadline = time.time() + 120
        target = attempt + 1
        while time.time() < deadline and proc.poll() is None:
            if journal.exists() and journal.read_text().count('"type": "shard"') >= target:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "prep finished before it could be killed; make the catalog bigger"
        os.killpg(proc.pid, how)
        status = proc.wait()
        err.close()
        if how == signal.SIGINT:  # one line, no traceback
            assert status == 130
            text = (tmp_path / "stderr0.txt").read_text()
            assert "Traceback" not in text
            assert text.strip().splitlines()[-1].endswith("mgft prep: interrupted: rerun the same command to resume "
                                                         "(committed shards and rejects are kept; nothing is prepped "
                                                         "twice)")
    assert not (out / "manifest.jsonl").exists()
    finished = subprocess.run(_cli(args), env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert not list(out.glob("*.tmp"))
    assert _comparable(out) == _comparable(reference)
    assert sorted(p.name for p in out.glob("shard-*.tar")) == sorted(p.name for p in reference.glob("shard-*.tar"))
    shutil.rmtree(out)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_catalog_file_input_with_metadata_columns(tmp_path: Path, tiny_models_dir: Path, fmt: str) -> None:
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    rng = np.random.default_rng(4)
    rows = []
    for i in range(3):
        sf.write(audio_dir / f"t{i}.wav", rng.uniform(-0.3, 0.3, (44100 * 2, 2)).astype(np.float32), 44100)
        rows.append({"path": f"audio/t{i}.wav", "description": f"track {i}", "genre": "Jazz", "bpm": "96",
                     "license": "CC-BY-4.0" if i else ""})
    catalog = tmp_path / f"catalog.{fmt}"
    if fmt == "csv":
        import csv

        with open(catalog, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    prep(**_prep_args(catalog, out, tiny_models_dir, workers=2))
    manifest = {r["path"]: r for r in read_jsonl(out / "manifest.jsonl")}
    assert set(manifest) == {"audio/t1.wav", "audio/t2.wav"}
    assert manifest["audio/t1.wav"]["caption"] == "track 1"
    assert manifest["audio/t1.wav"]["metadata"]["genre"] == "jazz" and manifest["audio/t1.wav"]["metadata"]["bpm"] == 96
    assert [r["reason"] for r in read_jsonl(out / "rejects.jsonl")] == ["no_license"]


def test_rank_defaults_come_from_slurm_array(monkeypatch: pytest.MonkeyPatch) -> None:
    from data_prep.prep import resolve_rank

    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    assert resolve_rank(None, None) == (2, 4)
    assert resolve_rank(0, 1) == (0, 1)
    with pytest.raises(ValueError):
        resolve_rank(4, 4)


def test_concurrent_atomic_writes_of_one_file_do_not_collide(tmp_path: Path) -> None:
    """Two array tasks writing prep_config.json (or merging) at the same moment must both succeed."""
    import threading

    from data_prep.atomic import atomic_write_text

    errors: list[BaseException] = []

    def write(text: str) -> None:
        try:
            for _ in range(200):
                atomic_write_text(tmp_path / "prep_config.json", text)
        except BaseException as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(f'{{"rank": {r}}}',)) for r in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert (tmp_path / "prep_config.json").read_text() in ('{"rank": 0}', '{"rank": 1}')
    assert not list(tmp_path.glob("*.tmp"))


def test_hard_panned_stereo_keeps_left_and_right_apart(tmp_path: Path, tiny_models_dir: Path) -> None:
    """A lead only on the left: the interleave order L0, R0, L1, R1, ... is pinned in prep and in decoding."""
    import dataclasses

    from transformers import EncodecModel

    from data_prep.codec import decode_codes
    from testkit import synth
    from testkit.tiny_codec import log_mel_correlation

    spec = synth.plan_catalog(1, 4.0, seed=11)[0]
    spec = dataclasses.replace(spec, sample_rate=SAMPLE_RATE, frames=4 * SAMPLE_RATE, channels=2)
    stems = synth.render_stems(spec)
    lead = stems["lead"].sum(axis=1)  # the lead, centered in mono
    pad = stems["pad"].mean(axis=1)
    stereo = np.stack([lead + 0.3 * pad, 0.3 * pad], axis=1)  # [N, 2]: the lead hard left
    stereo = (0.8 * stereo / np.abs(stereo).max()).astype(np.float32)
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    sf.write(catalog / "panned.wav", stereo, SAMPLE_RATE, subtype="FLOAT")
    out = tmp_path / "out"
    prep(**_prep_args(catalog, out, tiny_models_dir, license="CC0-1.0"))
    [sample] = read_samples(out).values()
    left, right = deinterleave_stereo(sample["codes"])  # [4, 200] each

    model = EncodecModel.from_pretrained(tiny_models_dir / "encodec_32khz").eval()
    with torch.no_grad():
        encoded = [model.encode(torch.from_numpy(np.ascontiguousarray(stereo[:, c]))[None, None],
                                bandwidth=2.2).audio_codes[0, 0].numpy() for c in range(2)]
    np.testing.assert_array_equal(left, encoded[0])
    np.testing.assert_array_equal(right, encoded[1])
    assert (left != right).mean() > 0.5  # the two channels' codes really differ, so a swap cannot pass

    decoded = decode_codes(model, torch.from_numpy(sample["codes"].astype(np.int64))[None])[0]  # [2, N]
    wav = torch.from_numpy(stereo.T.copy())
    n = min(decoded.shape[-1], wav.shape[-1])
    own = log_mel_correlation(wav[0, :n], decoded[0, :n])
    crossed = log_mel_correlation(wav[0, :n], decoded[1, :n])
    assert own > crossed + 0.1, (own, crossed)  # measured 0.26 against 0.07


def test_long_tracks_streamed_in_blocks_give_exactly_the_samples_of_tracks_read_whole(
    tmp_path: Path, prepped: Path, synth_catalog_dir: Path, tiny_models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tracks past 8 s are checked by the worker and decoded again in 0.7 s blocks by the main process (resampled by
    # soxr's stream, cut into windows as they arrive); the others come whole from the worker as in `prepped`.
    monkeypatch.setattr(prep_module, "STREAM_SECONDS", 8.0)
    monkeypatch.setattr(audio_io, "BLOCK_SECONDS", 0.7)
    out = tmp_path / "streamed"
    args = _prep_args(synth_catalog_dir, out, tiny_models_dir, melody=True, keep_audio=True)
    args["demucs"] = str(tiny_models_dir / "htdemucs")
    prep(**args)

    rows = {r["path"]: r for r in read_jsonl(out / "manifest.jsonl")}
    reference = {r["path"]: r for r in read_jsonl(prepped / "manifest.jsonl")}
    streamed = [p for p, r in rows.items() if r["source"]["seconds"] > 8.0]
    assert len(streamed) >= 2 and len(rows) - len(streamed) >= 2, "the catalog must have tracks of both kinds"
    assert any(r["source"]["sample_rate"] != SAMPLE_RATE for p, r in rows.items() if p in streamed)
    assert rows.keys() == reference.keys()
    for path, row in rows.items():
        assert {**row, "shard": None} == {**reference[path], "shard": None}, path
    assert read_jsonl(out / "rejects.jsonl") == read_jsonl(prepped / "rejects.jsonl")
    got, want = read_samples(out), read_samples(prepped)
    assert got.keys() == want.keys()
    for key, sample in want.items():
        for field in ("codes", "chroma", "audio"):
            np.testing.assert_array_equal(got[key][field], sample[field], err_msg=f"{key} {field}")
        assert got[key]["info"] == sample["info"]
    # And both are the whole file resampled in one go (soxr.resample), whatever the blocks: the windows (no overlap
    # at this stride) put end to end give it back, to the 24-bit FLAC's precision.
    for path in streamed:
        whole = audio_io.convert_channels(audio_io.resample(audio_io.decode(synth_catalog_dir / path), SAMPLE_RATE), 2)
        windows = [got[s["key"]]["audio"] for s in rows[path]["segments"]]  # [n, 2] each
        np.testing.assert_allclose(np.concatenate(windows).T, whole.samples, atol=2e-7, err_msg=path)


def test_a_streamed_track_whose_second_read_fails_is_rejected_alone(
    tmp_path: Path, synth_catalog_dir: Path, tiny_models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The file changes between the worker's check and the streamed read: near its end, the decoder fails, after
    # windows of it were written into the open shard.
    monkeypatch.setattr(prep_module, "STREAM_SECONDS", 8.0)
    monkeypatch.setattr(audio_io, "BLOCK_SECONDS", 1.0)
    whole = tmp_path / "whole"
    prep(**_prep_args(synth_catalog_dir, whole, tiny_models_dir))
    longest = max(read_jsonl(whole / "manifest.jsonl"), key=lambda r: r["source"]["seconds"])
    victim, fail_at = longest["path"], int(longest["source"]["seconds"] - 0.5)
    assert fail_at > 2 * SEGMENT, "two windows must be written before the failure"
    read_blocks, reads = audio_io.read_blocks, []

    def failing(path: Path, backend: str):
        info, blocks = read_blocks(path, backend)
        if not str(path).endswith(victim):
            return info, blocks
        reads.append(path)
        if len(reads) == 1:  # the worker's check reads it whole
            return info, blocks

        def broken():
            for i, block in enumerate(blocks):
                if i == fail_at:
                    raise audio_io.RejectError("decode_error", "the file changed")
                yield block

        return info, broken()

    monkeypatch.setattr(audio_io, "read_blocks", failing)
    out = tmp_path / "out"
    prep(**_prep_args(synth_catalog_dir, out, tiny_models_dir))

    assert len(reads) == 2
    rejects = {r["path"]: r for r in read_jsonl(out / "rejects.jsonl")}
    assert rejects[victim]["reason"] == "decode_error" and "second, streamed read" in rejects[victim]["detail"]
    rows = {r["path"]: r for r in read_jsonl(out / "manifest.jsonl")}
    reference = {r["path"]: r for r in read_jsonl(whole / "manifest.jsonl") if r["path"] != victim}
    assert rows.keys() == reference.keys()
    samples, expected = read_samples(out), read_samples(whole)
    assert samples.keys() == {k for k in expected if expected[k]["info"]["source_path"] != victim}
    for key, sample in samples.items():
        np.testing.assert_array_equal(sample["codes"], expected[key]["codes"])
    assert not list(out.glob("*.tmp")), "the dropped shard's temporary file is gone"
