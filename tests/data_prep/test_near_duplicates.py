"""`mgft prep --near-duplicates`: one recording in two encodings is kept once, on one rank, across ranks and splits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_prep.catalog import partition, scan
from data_prep.fingerprint import MAX_BIT_ERROR, FingerprintIndex, bit_error_rate, decode, fingerprint
from data_prep.merge import prep_merge
from data_prep.prep import prep
from data_prep.split import split_catalog
from tests.data_prep.shard_reader import read_jsonl, read_samples

COPIES = {"zz copies/tides copy.ogg": ("OGG", "VORBIS"), "zz copies/second copy.mp3": ("MP3", "MPEG_LAYER_III")}


def reencode(source: Path, target: Path, fmt: str, subtype: str, pad_seconds: float = 0.0,
             sidecar: dict | None = None) -> None:
    """A lossy copy of `source` (optionally with silence added at the end), with the source's sidecar."""
    audio, rate = sf.read(source, always_2d=True, dtype="float32")
    audio = np.concatenate([audio, np.zeros((round(pad_seconds * rate), audio.shape[1]), np.float32)])
    target.parent.mkdir(parents=True, exist_ok=True)
    sf.write(target, audio, rate, format=fmt, subtype=subtype)
    meta = json.loads(source.with_suffix(".json").read_text())
    target.with_suffix(".json").write_text(json.dumps({**meta, **(sidecar or {})}))


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five synthesized tracks of 7-17 s (Chromaprint needs about 4 s to say anything)."""
    from testkit.synth import synth_catalog

    root = tmp_path_factory.mktemp("originals")
    synth_catalog(str(root), tracks=5, seconds=12.0, seed=3)
    return root


def sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in (".wav", ".flac", ".ogg"))


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory, originals: Path) -> Path:
    """The originals plus a Vorbis copy of the first (a FLAC) and an MP3 copy of the second, each padded until it
    falls on the other rank of two than its original (ranks are assigned by file size), so both ranks meet."""
    root = tmp_path_factory.mktemp("catalog") / "catalog"
    shutil.copytree(originals, root)
    masters = sources(root)[:2]
    for (rel, (fmt, subtype)), master in zip(COPIES.items(), masters):
        for pad in np.arange(0.0, 1.0, 0.05):
            reencode(master, root / rel, fmt, subtype, pad_seconds=pad)
            tracks = {t.rel: t for t in scan(root)}
            if partition([tracks[rel]], 0, 2) != partition([tracks[master.relative_to(root).as_posix()]], 0, 2):
                break
        else:
            raise AssertionError(f"no padding put {rel} on another rank than its original")
    return root


def prep_args(catalog: Path, out: Path, models: Path, **kw) -> dict:
    return dict(input=str(catalog), output=str(out), codec=str(models / "encodec_32khz"), channels=1,
                segment_seconds=4.0, shard_max_samples=3, near_duplicates=True, **kw)


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory: pytest.TempPathFactory, catalog: Path, tiny_models_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("one") / "shards"
    prep(**prep_args(catalog, out, tiny_models_dir))
    return out


def fingerprint_file(path: Path) -> str | None:
    audio, rate = sf.read(path, always_2d=True, dtype="float32")
    return fingerprint([audio.T], rate)


def test_fingerprints_tell_lossy_copies_from_other_tracks(originals: Path, tmp_path: Path) -> None:
    paths = sources(originals)
    raw = [decode(fingerprint_file(p)) for p in paths]
    others = [bit_error_rate(a, b, 80)[0] for i, a in enumerate(raw) for b in raw[i + 1:]]
    assert min(others) > MAX_BIT_ERROR + 0.05, others  # measured: at least 0.22 apart
    index = FingerprintIndex()
    for path in paths:
        index.add(path.name, fingerprint_file(path))
    for i, (fmt, subtype) in enumerate([("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")]):
        copy = tmp_path / f"copy{i}.{fmt.lower()}"
        reencode(paths[i], copy, fmt, subtype, pad_seconds=0.3)
        error, _ = bit_error_rate(raw[i], decode(fingerprint_file(copy)), 80)
        assert error < 0.05, (fmt, error)  # measured: under 1% of the bits
        match = index.match(fingerprint_file(copy))
        assert match is not None and match.rel == paths[i].name
    # A track the index does not hold matches nothing (not even the closest other track).
    held_out = FingerprintIndex()
    for path in paths[1:]:
        held_out.add(path.name, fingerprint_file(path))
    assert held_out.match(fingerprint_file(paths[0])) is None


def test_prep_keeps_the_first_copy_of_each_recording_and_rejects_the_others(one_rank: Path, catalog: Path) -> None:
    masters = [p.relative_to(catalog).as_posix() for p in sources(catalog)[:2]]
    rejects = {r["path"]: r for r in read_jsonl(one_rank / "rejects.jsonl")}
    assert set(rejects) == set(COPIES)
    for copy, master in zip(COPIES, masters):
        assert rejects[copy]["reason"] == "near_duplicate"
        assert f"same recording as {master} (kept)" in rejects[copy]["detail"]
    manifest = read_jsonl(one_rank / "manifest.jsonl")
    assert len(manifest) == 5 and all(row["fingerprint"] for row in manifest)
    samples = read_samples(one_rank)
    assert {s["info"]["source_path"] for s in samples.values()} == {row["path"] for row in manifest}
    stats = json.loads((one_rank / "stats.json").read_text())
    assert stats["rejects_by_reason"] == {"near_duplicate": 2} and stats["samples_in_shards"] == len(samples)


def test_a_resumed_prep_still_knows_the_recordings_kept_before_the_kill(one_rank: Path, catalog: Path,
                                                                       tiny_models_dir: Path, tmp_path: Path) -> None:
    # A kill after the first shard was committed: the journal holds that shard only, and later shards are gone.
    out = tmp_path / "shards"
    shutil.copytree(one_rank, out)
    lines = (out / "journal.r0000.jsonl").read_text().splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if json.loads(line)["type"] == "shard")
    (out / "journal.r0000.jsonl").write_text("".join(lines[: first + 1]))
    for name in ("done.r0000", "manifest.jsonl", "rejects.jsonl", "stats.json"):
        (out / name).unlink()
    assert "01 Paper Tides.flac" in lines[first]  # the first copy's original is among what survived
    prep(**prep_args(catalog, out, tiny_models_dir))
    for name in ("manifest.jsonl", "rejects.jsonl"):
        assert read_jsonl(out / name) == read_jsonl(one_rank / name)
    assert read_samples(out).keys() == read_samples(one_rank).keys()


def test_two_ranks_drop_the_copies_that_straddle_them_in_the_merge(one_rank: Path, catalog: Path,
                                                                  tiny_models_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    for rank in (0, 1):
        prep(**prep_args(catalog, out, tiny_models_dir, rank=rank, world_size=2))
    # Each rank kept its copy (it never saw the original); the merge moved both to the rejects and cut the shards.
    journals = [read_jsonl(out / f"journal.r{r:04d}.jsonl") for r in (0, 1)]
    kept_by_ranks = {row["path"] for journal in journals for entry in journal if entry["type"] == "shard"
                     for row in entry["tracks"]}
    assert set(COPIES) <= kept_by_ranks
    unsharded = lambda rows: [{**row, "shard": None} for row in rows]  # noqa: E731 -- shards are named per rank
    assert unsharded(read_jsonl(out / "manifest.jsonl")) == unsharded(read_jsonl(one_rank / "manifest.jsonl"))
    assert read_jsonl(out / "rejects.jsonl") == read_jsonl(one_rank / "rejects.jsonl")
    samples = read_samples(out)
    assert samples.keys() == read_samples(one_rank).keys()
    stats = json.loads((out / "stats.json").read_text())
    assert stats["samples_in_shards"] == stats["segments"] == len(samples)
    # Merging again decides the same and finds nothing left to cut.
    before = {p.name: p.read_bytes() for p in out.glob("shard-*.tar")}
    prep_merge(str(out))
    assert {p.name: p.read_bytes() for p in out.glob("shard-*.tar")} == before
    assert read_jsonl(out / "rejects.jsonl") == read_jsonl(one_rank / "rejects.jsonl")


def test_the_validation_side_drops_recordings_of_the_training_side(originals: Path, tiny_models_dir: Path,
                                                                  tmp_path: Path) -> None:
    # The same recording under another artist: a split by artist alone would put it on both sides.
    root = tmp_path / "catalog"
    shutil.copytree(originals, root)
    master = sources(root)[0]
    master_rel = master.relative_to(root).as_posix()
    copy = "zz copies/tides copy.ogg"
    for i in range(50):
        reencode(master, root / copy, "OGG", "VORBIS", sidecar={"artist": f"Cover Band {i}"})
        sides = split_catalog(scan(root), 0.4, "artist",
                              lambda t: json.loads(t.path.with_suffix(".json").read_text()))
        if master_rel in {t.rel for t in sides["train"]} and copy in {t.rel for t in sides["val"]}:
            break
    else:
        raise AssertionError("no artist name put the copy on the validation side")
    out = tmp_path / "shards"
    prep(**prep_args(root, out, tiny_models_dir, val_fraction=0.4, split_by="artist"))
    val_rejects = {r["path"]: r for r in read_jsonl(out / "val" / "rejects.jsonl")}
    assert val_rejects[copy]["reason"] == "near_duplicate" and master_rel in val_rejects[copy]["detail"]
    assert master_rel in {r["path"] for r in read_jsonl(out / "train" / "manifest.jsonl")}
    val_sources = {s["info"]["source_path"] for s in read_samples(out / "val").values()}
    assert copy not in val_sources and val_sources  # the rest of the validation side is still there


def test_near_duplicates_without_chromaprint_stop_before_anything_runs(monkeypatch: pytest.MonkeyPatch,
                                                                       catalog: Path, tiny_models_dir: Path,
                                                                       tmp_path: Path) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "chromaprint", None)  # as if libchromaprint were not installed
    with pytest.raises(ValueError, match="apt-get install libchromaprint1"):
        prep(**prep_args(catalog, tmp_path / "shards", tiny_models_dir))
    assert not (tmp_path / "shards").exists()
