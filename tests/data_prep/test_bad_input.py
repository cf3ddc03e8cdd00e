"""Bad input never stops prep and never vanishes: odd names, links, special files, unreadable files and folders, bad
catalog rows, mistyped metadata, conflicting licenses, clipping, and wrong flags.

Root reads every file whatever its mode (these tests run as root in CI), so permission errors are raised by patching
the one call that would meet them (`os.scandir` for a folder, the hash pass for a file, `Path.read_text` for a
sidecar); everything else is real files on disk.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_prep import prep as prep_module
from data_prep.catalog import row_rel
from data_prep.prep import prep
from tests.data_prep.shard_reader import read_jsonl, read_samples

BAD_NAME = b"caf\xe9 latin-1.wav"  # é in Latin-1: not UTF-8


def _noise(path: Path | bytes, seed: int, peak: float = 0.3, seconds: float = 2.0, subtype: str | None = None) -> None:
    rng = np.random.default_rng(seed)
    audio = (rng.uniform(-1, 1, (int(32000 * seconds), 2)) * peak).astype(np.float32)
    with open(path, "wb") as f:
        sf.write(f, audio, 32000, format="WAV", subtype=subtype)


def _sidecar(path: Path, content: object) -> None:
    path.with_suffix(".json").write_text(json.dumps(content))


@pytest.fixture(scope="module")
def odd_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("odd-catalog")
    _noise(root / "ok.wav", 0)
    _noise(os.fsencode(root) + b"/" + BAD_NAME, 1)
    (root / "dangling.wav").symlink_to(root / "nowhere.wav")
    (root / "loop.wav").symlink_to(root / "loop.wav")
    os.mkfifo(root / "fifo.wav")
    (root / "locked").mkdir()
    _noise(root / "locked" / "inside.wav", 2)
    (root / "linkdir").symlink_to(root)  # a linked folder that leads back to the root
    _noise(root / "perm.wav", 3)
    _noise(root / "secret.wav", 4)
    _sidecar(root / "secret.wav", {"license": "CC0-1.0"})
    _noise(root / "license-number.wav", 5)
    _sidecar(root / "license-number.wav", {"license": 5})
    _noise(root / "types.wav", 6)
    _sidecar(root / "types.wav", {"license": "CC0-1.0", "title": "kept", "genre": ["a", 1], "moods": 5,
                                  "bpm": "fast", "keywords": "calm, piano"})
    _noise(root / "dup-a.wav", 7)
    (root / "dup-b.wav").write_bytes((root / "dup-a.wav").read_bytes())
    _sidecar(root / "dup-a.wav", {"license": "CC0-1.0"})
    _sidecar(root / "dup-b.wav", {"license": "CC-BY-NC-4.0"})
    _noise(root / "same-a.wav", 8, seconds=2.5)
    (root / "same-b.wav").write_bytes((root / "same-a.wav").read_bytes())  # same bytes, same license
    _noise(root / "loud.wav", 9, peak=4.0, subtype="FLOAT")
    return root


@pytest.fixture(scope="module")
def odd_prepped(odd_catalog: Path, tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("odd-prepped")
    with pytest.MonkeyPatch.context() as mp:
        scandir, read_text, sha256_of = os.scandir, pathlib.Path.read_text, prep_module.sha256_of

        def locked_scandir(path=None):  # noqa: ANN001, ANN202
            if path is not None and os.fspath(path).endswith("/locked"):
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
            return scandir(path) if path is not None else scandir()

        def locked_read_text(self: Path, *args, **kwargs) -> str:  # noqa: ANN002, ANN003
            if self.name == "secret.json":
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return read_text(self, *args, **kwargs)

        def locked_hash(path: Path) -> str:
            if path.name == "perm.wav":
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return sha256_of(path)

        mp.setattr(os, "scandir", locked_scandir)
        mp.setattr(pathlib.Path, "read_text", locked_read_text)
        mp.setattr(prep_module, "sha256_of", locked_hash)
        # One decoding worker (forked: it inherits the patches): the unreadable hash and sidecar fail in the worker,
        # and must come back to the main process as reject rows (the workers=0 path is what the other preps run).
        prep(input=str(odd_catalog), output=str(out), codec=str(tiny_models_dir / "encodec_32khz"), channels=2,
             segment_seconds=2.0, batch_size=4, license="CC0-1.0", workers=1)
    return out


def _all_inputs(root: Path) -> set[str]:
    """Every audio-named entry under `root` (not following links), plus the two folders prep cannot scan."""
    names = set()
    for folder, _, files in os.walk(os.fsencode(root)):
        for name in files:
            if os.path.splitext(name)[1].lower() == b".wav":
                names.add(os.fsdecode(os.path.relpath(os.path.join(folder, name), os.fsencode(root))))
    return (names - {"locked/inside.wav"}) | {"locked/", "linkdir/"}


def test_every_odd_input_is_kept_or_rejected_exactly_once_with_its_reason(odd_prepped: Path,
                                                                          odd_catalog: Path) -> None:
    manifest, rejects = read_jsonl(odd_prepped / "manifest.jsonl"), read_jsonl(odd_prepped / "rejects.jsonl")
    kept, refused = [row_rel(r) for r in manifest], [row_rel(r) for r in rejects]
    assert len(kept) + len(refused) == len(set(kept) | set(refused)), "an input listed twice"
    assert set(kept) | set(refused) == _all_inputs(odd_catalog)
    reasons = {row_rel(r): (r["reason"], r["detail"]) for r in rejects}
    assert reasons["dangling.wav"][0] == "broken_link" and "nowhere.wav" in reasons["dangling.wav"][1]
    assert reasons["loop.wav"] == ("broken_link", f"symlink to {odd_catalog / 'loop.wav'}: a link loop")
    assert reasons["fifo.wav"] == ("not_a_file", "a FIFO, not a regular file")
    assert reasons["locked/"][0] == "unreadable" and "its files were not seen" in reasons["locked/"][1]
    assert reasons["linkdir/"][0] == "broken_link" and "loop" in reasons["linkdir/"][1]
    assert reasons["perm.wav"] == ("unreadable", "PermissionError: Permission denied")
    assert reasons["secret.wav"][0] == "bad_sidecar" and "cannot be read" in reasons["secret.wav"][1]
    assert reasons["license-number.wav"][0] == "bad_license" and "int" in reasons["license-number.wav"][1]
    for copy in ("dup-a.wav", "dup-b.wav"):
        reason, detail = reasons[copy]
        assert reason == "license_conflict" and "dup-a.wav (CC0-1.0)" in detail and "dup-b.wav (CC-BY-NC-4.0)" in detail
    assert reasons["same-b.wav"][0] == "duplicate" and "same-a.wav" in kept
    stats = json.loads((odd_prepped / "stats.json").read_text())
    assert stats["tracks_in"] == len(_all_inputs(odd_catalog))


def test_a_name_that_is_not_utf8_is_kept_and_recorded_losslessly(odd_prepped: Path) -> None:
    row = next(r for r in read_jsonl(odd_prepped / "manifest.jsonl") if "path_bytes" in r)
    assert bytes.fromhex(row["path_bytes"]) == BAD_NAME
    assert row["path"] == BAD_NAME.decode("utf-8", "replace")
    samples = [s for s in read_samples(odd_prepped).values() if s["info"]["track_key"] == row["key"]]
    assert samples and row["key"].isascii()


def test_mistyped_metadata_is_dropped_with_a_note_never_coerced(odd_prepped: Path) -> None:
    row = next(r for r in read_jsonl(odd_prepped / "manifest.jsonl") if r["path"] == "types.wav")
    meta = row["metadata"]
    assert meta["title"] == "kept" and meta["keywords"] == ["calm", "piano"]
    assert meta["genre"] is None and meta["moods"] is None and meta["bpm"] is None
    dropped = sorted(n for n in row["notes"] if n.startswith("dropped sidecar field"))
    assert [n.split()[3] for n in dropped] == ["bpm", "genre", "moods"], row["notes"]


def test_float_audio_above_full_scale_is_kept_with_a_clipping_note(odd_prepped: Path) -> None:
    rows = {r["path"]: r for r in read_jsonl(odd_prepped / "manifest.jsonl")}
    assert any(n.startswith("peak above full scale (4.00") for n in rows["loud.wav"]["notes"])
    assert not any("full scale" in n for n in rows["ok.wav"]["notes"])


def test_a_rerun_resumes_without_adding_or_repeating_anything(odd_prepped: Path, odd_catalog: Path,
                                                              tiny_models_dir: Path) -> None:
    before = (odd_prepped / "manifest.jsonl").read_text(), (odd_prepped / "rejects.jsonl").read_text()
    # Without the patches, perm.wav, secret.wav and locked/ are readable now; they keep their first verdict, and
    # locked/inside.wav (never seen) is the one new input.
    stats = prep(input=str(odd_catalog), output=str(odd_prepped), codec=str(tiny_models_dir / "encodec_32khz"),
                 channels=2, segment_seconds=2.0, batch_size=4, license="CC0-1.0")
    manifest = read_jsonl(odd_prepped / "manifest.jsonl")
    assert [row_rel(r) for r in manifest].count("locked/inside.wav") == 1
    assert stats["tracks_in"] == len(_all_inputs(odd_catalog)) + 1
    assert (odd_prepped / "rejects.jsonl").read_text() == before[1]


def test_bad_catalog_rows_are_rejected_one_by_one_with_file_and_line(tmp_path: Path, tiny_models_dir: Path) -> None:
    _noise(tmp_path / "good.wav", 0)
    lines = [json.dumps({"path": "good.wav", "license": "CC0-1.0"}), "{not json", "[1, 2]",
             json.dumps({"title": "no path"}), json.dumps({"path": 5}), json.dumps({"path": "gone.wav"})]
    (tmp_path / "catalog.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    prep(input=str(tmp_path / "catalog.jsonl"), output=str(out), codec=str(tiny_models_dir / "encodec_32khz"),
         segment_seconds=2.0, license="CC0-1.0")
    assert [r["path"] for r in read_jsonl(out / "manifest.jsonl")] == ["good.wav"]
    rejects = {r["path"]: (r["reason"], r["detail"]) for r in read_jsonl(out / "rejects.jsonl")}
    assert rejects["gone.wav"] == ("missing", "the file does not exist")
    assert rejects["catalog.jsonl:2"][0] == "bad_catalog_row" and "not JSON" in rejects["catalog.jsonl:2"][1]
    assert rejects["catalog.jsonl:3"] == ("bad_catalog_row", "line 3: a list, not an object")
    assert rejects["catalog.jsonl:4"] == ("bad_catalog_row", "line 4: no 'path'")
    assert rejects["catalog.jsonl:5"] == ("bad_catalog_row", "line 5: 'path' is a int")
    assert len(rejects) == 5


@pytest.mark.parametrize(("flags", "message"), [
    ({"segment_seconds": 0.001}, "--segment-seconds must be at least 1.0"),
    ({"stride_seconds": 0.01}, "--stride-seconds must be in [1.0, --segment-seconds]"),
    ({"batch_size": 0}, "--batch-size must be at least 1"),
    ({"workers": -1}, "--workers must be at least 0"),
    ({"shard_max_mb": 0}, "--shard-max-mb must be positive"),
])
def test_bad_numbers_are_refused_before_anything_runs(tmp_path: Path, tiny_models_dir: Path, flags: dict,
                                                      message: str) -> None:
    _noise(tmp_path / "a.wav", 0)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        prep(input=str(tmp_path), output=str(tmp_path / "out"), codec=str(tiny_models_dir / "encodec_32khz"),
             **flags)
    assert not (tmp_path / "out").exists()


def test_an_input_with_no_audio_is_an_error(tmp_path: Path, tiny_models_dir: Path) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "notes.txt").write_text("no audio here")
    with pytest.raises(ValueError, match="holds no audio files"):
        prep(input=str(tmp_path / "in"), output=str(tmp_path / "out"), codec=str(tiny_models_dir / "encodec_32khz"))


def test_the_same_codec_typed_relative_then_absolute_resumes(tmp_path: Path, tiny_models_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _noise(tmp_path / "a.wav", 0)
    args = dict(input=str(tmp_path), output=str(tmp_path / "out"), segment_seconds=2.0, license="CC0-1.0")
    monkeypatch.chdir(tiny_models_dir)
    prep(codec="encodec_32khz", **args)
    prep(codec=str(tiny_models_dir / "encodec_32khz"), **args)  # the same folder: a resume, not other settings
    with pytest.raises(ValueError, match="other settings"):
        prep(codec=str(tiny_models_dir / "htdemucs"), **args)
