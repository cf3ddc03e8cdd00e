"""The catalog summary (genres, moods, keys, tempi of a shard set, given apart from estimated) and its picture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.evaluation.catalog import (
    CatalogSummary,
    TagCount,
    catalog_figure,
    catalog_png,
    catalog_summary,
    key_name,
    parse_key,
    summarize_rows,
    tempo_range,
)


def _row(shard: int, seconds: float, metadata: dict, sources: list[str], license: str = "CC0-1.0") -> dict:
    """A manifest row as `data_prep.prep.manifest_row` writes it (the fields the summary reads, and a few more)."""
    info = {"title": None, "artist": None, "genre": None, "bpm": None, "key": None, "moods": None,
            "instrument": None, "keywords": None, **metadata}
    return {"path": f"t{shard}-{seconds}.wav", "key": "k", "seconds": seconds + 1.0, "kept_seconds": seconds,
            "license": license, "caption": None, "metadata": info, "metadata_sources": sources, "notes": [],
            "segments": [], "shard": f"shard-r0000-{shard:06d}.tar"}


ROWS = [
    _row(0, 3600, {"genre": "ambient", "moods": ["calm", "dreamy"], "key": "a minor", "bpm": 72.0}, ["sidecar"]),
    # A mood listed twice ("calm, calm" in a sidecar) is one mood of the track.
    _row(0, 1800, {"genre": "ambient", "moods": ["calm", "calm"], "key": "c major", "bpm": 75.5}, ["sidecar"]),
    # --auto-tags filled the tempo and key (spelled as data_prep.tags writes them).
    _row(1, 1800, {"genre": "synthwave", "moods": ["energetic", "calm"], "key": "eb major", "bpm": 128.0},
         ["sidecar", "estimated:bpm", "estimated:key", "estimated:caption"], license="CC-BY-4.0"),
    _row(1, 900, {"key": "f#m"}, ["tags"]),
    _row(2, 1800, {"genre": "ambient", "key": "modal", "bpm": 140}, ["catalog", "estimated:genre"]),
]
"""Five tracks, 2.75 hours, whose tag counts are worked out by hand in the tests below."""


def write_set(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in {r["shard"] for r in rows}:
        (folder / name).write_bytes(b"")  # the summary reads no tar: the names are enough
    return folder


def _counts(counts: dict) -> dict:
    return {value: (c.given, c.estimated) for value, c in counts.items()}


def test_summary_counts_the_tags_given_apart_from_estimated(tmp_path: Path) -> None:
    folder = write_set(tmp_path / "shards", ROWS)
    summary = catalog_summary(str(folder))
    assert summary is not None and summary.manifests == [str(folder / "manifest.jsonl")]
    assert summary.tracks == 5 and summary.hours == pytest.approx(2.75)
    assert summary.licenses == {"CC0-1.0": 4, "CC-BY-4.0": 1}
    assert _counts(summary.genres) == {"ambient": (2, 1), "synthwave": (1, 0)}
    assert summary.genres["ambient"].hours == pytest.approx(2.0)
    assert _counts(summary.moods) == {"calm": (3, 0), "dreamy": (1, 0), "energetic": (1, 0)}
    # One spelling per key; a label that names no key is kept as written.
    assert _counts(summary.keys) == {"A minor": (1, 0), "C major": (1, 0), "Eb major": (0, 1), "F# minor": (1, 0),
                                     "modal": (1, 0)}
    assert _counts(summary.tempi) == {70: (2, 0), 120: (0, 1), 140: (1, 0)}
    assert summary.bpms == [72.0, 75.5, 128.0, 140.0] and tempo_range(summary) == (72.0, 101.75, 140.0)
    assert _counts(summary.labeled) == {"genre": (3, 1), "moods": (3, 0), "key": (4, 1), "bpm": (3, 1)}


def test_summary_of_a_pattern_counts_only_the_matched_shards(tmp_path: Path) -> None:
    folder = write_set(tmp_path / "shards", ROWS)
    for spec in (f"{folder}/shard-r0000-00000[01].tar", f"{folder}/shard-r0000-{{000000..000001}}.tar"):
        summary = catalog_summary(spec)
        assert summary is not None and summary.tracks == 4 and summary.shards == spec, spec
        assert "modal" not in summary.keys  # the track of shard 2


def test_summary_of_a_mix_counts_every_set_once(tmp_path: Path) -> None:
    a = write_set(tmp_path / "a", ROWS[:2])
    b = write_set(tmp_path / "b", ROWS[2:])
    summary = catalog_summary({str(a): 0.8, str(b): 0.2})
    assert summary is not None and summary.tracks == 5 and len(summary.manifests) == 2
    assert summary.shards == f"{a} (weight 0.8) + {b} (weight 0.2)"
    assert _counts(summary.genres) == {"ambient": (2, 1), "synthwave": (1, 0)}


def test_no_manifest_gives_none(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "shard-r0000-000000.tar").write_bytes(b"")
    assert catalog_summary(str(bare)) is None
    assert catalog_summary(str(tmp_path / "missing")) is None
    assert catalog_summary(f"{tmp_path}/nothing-*.tar") is None
    assert catalog_summary("pipe:aws s3 cp s3://bucket/shard-{000000..000003}.tar -") is None


@pytest.mark.parametrize(("label", "expected"), [
    ("a minor", (9, "minor")), ("F#m", (6, "minor")), ("eb major", (3, "major")), ("Bb", (10, "major")),
    ("bm", (11, "minor")), ("e flat minor", (3, "minor")), ("c# min", (1, "minor")), ("cb maj", (11, "major")),
    ("modal", None), ("a, e", None),
])
def test_key_labels_parse(label: str, expected: tuple[int, str] | None) -> None:
    assert parse_key(label) == expected


def test_key_names_use_one_spelling() -> None:
    assert key_name("d# minor") == "Eb minor" and key_name("C#M") == "C# minor" and key_name("modal") == "modal"


def test_figure_draws_estimated_values_hatched_and_says_which_panels_are_empty(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt
    from PIL import Image

    summary = summarize_rows(ROWS, "data/shards", ["data/shards/manifest.jsonl"])
    fig = catalog_figure(summary)
    genre_ax, mood_ax, key_ax, tempo_ax = fig.axes
    # Horizontal bars, most frequent on top (drawn last): synthwave 1 given; ambient 2 given + 1 estimated.
    assert [p.get_width() for p in genre_ax.patches if not p.get_hatch()] == [1, 2]
    assert [p.get_width() for p in genre_ax.patches if p.get_hatch()] == [0, 1]
    hatched_keys = sum(p.get_height() for p in key_ax.patches if p.get_hatch())
    assert hatched_keys == 1 and sum(p.get_height() for p in key_ax.patches) == 4  # "modal" has no bar
    assert "1 unreadable" in key_ax.get_title() and "median 102 BPM" in tempo_ax.get_title()
    assert "5 tracks, 2.75 hours" in fig._suptitle.get_text() and "data/shards" in fig._suptitle.get_text()
    plt.close(fig)

    bare = summarize_rows([_row(0, 60, {}, [])], "bare", [])
    fig = catalog_figure(bare)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts == ["no genre labels", "no mood labels", "no key labels", "no tempo labels"]
    plt.close(fig)

    png = catalog_png(summary, tmp_path / "catalog.png")
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (1080, 765)


def test_tag_count_adds_tracks_and_hours() -> None:
    count = TagCount()
    count.add(estimated=False, hours=0.5)
    count.add(estimated=True, hours=0.25)
    assert (count.given, count.estimated, count.tracks, count.hours) == (1, 1, 2, 0.75)
    assert CatalogSummary(shards="x", manifests=[]).labeled["bpm"].tracks == 0
