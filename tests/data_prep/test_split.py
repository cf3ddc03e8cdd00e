"""`mgft prep --val-fraction F --split-by artist|album|track`: a deterministic split with no group on both sides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.catalog import Track
from data_prep.prep import prep
from data_prep.split import group_key, validation_tracks
from tests.data_prep.shard_reader import read_jsonl, read_samples


def test_split_by_track_takes_the_rounded_fraction_and_is_stable() -> None:
    groups = {f"t{i:02d}.wav": f"track:t{i:02d}.wav" for i in range(40)}
    for fraction in (0.1, 0.25, 0.33, 0.5, 0.9):
        val = validation_tracks(groups, fraction)
        assert abs(len(val) - fraction * len(groups)) <= 0.5  # within one track of F (rounded)
        assert val == validation_tracks(dict(reversed(list(groups.items()))), fraction)  # order-free, stable
    assert validation_tracks(groups, 0.25) != validation_tracks({k + "x": v + "x" for k, v in groups.items()}, 0.25)


def test_split_by_artist_keeps_every_artist_on_one_side() -> None:
    groups = {f"{a}-{i}.wav": f"artist:{a}" for a, n in (("a", 5), ("b", 1), ("c", 3), ("d", 2), ("e", 4), ("f", 1))
              for i in range(n)}
    val = validation_tracks(groups, 0.25)
    sides = {(g, rel in val) for rel, g in groups.items()}
    assert len({g for g, _ in sides}) == len(sides)  # no artist with tracks on both sides
    assert abs(len(val) - 0.25 * len(groups)) <= max(5, 1)  # as close as whole groups allow (the largest has 5)
    assert 0 < len(val) < len(groups)


def test_a_fraction_that_leaves_a_side_empty_is_refused() -> None:
    groups = {f"{i}.wav": "artist:only one" for i in range(6)}
    with pytest.raises(ValueError, match="leaves the (validation|training) side empty"):
        validation_tracks(groups, 0.2)
    with pytest.raises(ValueError, match="between 0 and 1"):
        validation_tracks({"a": "track:a", "b": "track:b"}, 1.0)


def test_group_keys_fold_case_and_fall_back_to_the_track(tmp_path: Path) -> None:
    audio = tmp_path / "song.wav"
    audio.write_bytes(b"")
    (tmp_path / "song.json").write_text(json.dumps({"album": "  Blue Train "}))
    track = Track(path=audio, rel="song.wav", size=0)
    assert group_key(track, {"artist": " The Sine Collective"}, "artist") == "artist:the sine collective"
    assert group_key(track, {"artist": "X"}, "album") == "album:x/blue train"
    assert group_key(track, {"artist": None}, "artist") == "track:song.wav"
    assert group_key(track, None, "album") == "track:song.wav"
    assert group_key(track, {"artist": "X"}, "track") == "track:song.wav"


def test_prep_splits_into_train_and_val_with_no_artist_on_both_sides(tmp_path: Path, synth_catalog_dir: Path,
                                                                     tiny_models_dir: Path) -> None:
    out = tmp_path / "shards"
    args = dict(input=str(synth_catalog_dir), output=str(out), codec=str(tiny_models_dir / "encodec_32khz"),
                channels=2, segment_seconds=4.0, val_fraction=0.3, split_by="artist")
    stats = prep(**args)
    assert set(stats) == {"train", "val"}
    manifests = {side: read_jsonl(out / side / "manifest.jsonl") for side in ("train", "val")}
    rejects = {side: read_jsonl(out / side / "rejects.jsonl") for side in ("train", "val")}
    assert manifests["train"] and manifests["val"]
    artists = {side: {r["metadata"]["artist"] for r in rows if r["metadata"].get("artist")}
               for side, rows in manifests.items()}
    assert artists["train"] and artists["val"] and artists["train"].isdisjoint(artists["val"])
    # Every input ends in exactly one of the four files; a track's segments stay on its side.
    rows = [r["path"] for side in ("train", "val") for r in manifests[side] + rejects[side]]
    inputs = [str(p.relative_to(synth_catalog_dir)) for p in synth_catalog_dir.rglob("*")
              if p.is_file() and p.suffix != ".json"]
    assert sorted(rows) == sorted(inputs)
    keys = {side: {r["key"] for r in rows} for side, rows in manifests.items()}
    assert keys["train"].isdisjoint(keys["val"])
    for side in ("train", "val"):
        samples = read_samples(out / side)
        assert samples and {s["info"]["track_key"] for s in samples.values()} == keys[side]
    # A rerun resumes both halves (nothing twice); another split of the same folder is refused, as is no split.
    again = prep(**args)
    assert again["train"]["tracks_kept"] == stats["train"]["tracks_kept"]
    assert read_jsonl(out / "val" / "manifest.jsonl") == manifests["val"]
    with pytest.raises(ValueError, match="val_fraction: 0.3 -> 0.5"):
        prep(**{**args, "val_fraction": 0.5})
    with pytest.raises(ValueError, match="holds a split prep"):
        prep(**{**args, "val_fraction": 0.0})
    with pytest.raises(ValueError, match="--val-fraction must be between 0 and 1"):
        prep(**{**args, "output": str(tmp_path / "other"), "val_fraction": 1.5})
