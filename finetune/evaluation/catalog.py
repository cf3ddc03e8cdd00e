"""What a model learned from, at a glance: the genres, moods, keys and tempi of a shard set's tracks.

`mgft prep` writes `manifest.jsonl` beside its shards: one row per kept track, with the audiocraft metadata and
where each field came from (`metadata_sources`, where `estimated:FIELD` marks a value `--auto-tags` estimated from
the audio rather than one a person gave). `catalog_summary` counts the tags of a shard set's tracks from those rows
(no audio is read), and `catalog_png` draws them in one picture, estimated values hatched apart from given ones,
for the report of `mgft eval` and the model card of `mgft export`.
"""

from __future__ import annotations

import functools
import glob
import json
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_prep.schema import MANIFEST_FILE
from data_prep.tags import NOTE_NAMES

BPM_BIN = 10
"""Width of the tempo histogram's bins, in BPM."""
TOP = 12
"""Values of a tag drawn and listed, most frequent first."""
TAGS = ("genre", "moods", "key", "bpm")
"""The metadata fields counted (the names `metadata_sources` marks as `estimated:FIELD`)."""

_PITCH = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
_KEY = re.compile(r"([a-g])\s*(#|♯|-?sharp|b|♭|-?flat)?\s*(major|maj|minor|min|m)?")
_FIFTHS = [(7 * i) % 12 for i in range(12)]  # C G D A E B F# C# Ab Eb Bb F: neighbours share all but one note


@dataclass
class TagCount:
    """The tracks that carry one tag value, by where the value came from, and their kept hours.

    Attributes:
        given: Tracks whose value came from a sidecar, catalog row or embedded tag.
        estimated: Tracks whose value `mgft prep --auto-tags` estimated from the audio.
        hours: Kept hours of all those tracks.
    """

    given: int = 0
    estimated: int = 0
    hours: float = 0.0

    @property
    def tracks(self) -> int:
        """Tracks with this value, given or estimated."""
        return self.given + self.estimated

    def add(self, estimated: bool, hours: float) -> None:
        """Count one more track."""
        if estimated:
            self.estimated += 1
        else:
            self.given += 1
        self.hours += hours


@dataclass
class CatalogSummary:
    """Tag counts over the tracks of a shard set, from its manifest rows.

    Attributes:
        shards: The shard set as named (for a mix, its sets and weights).
        manifests: The manifest files read.
        tracks: Tracks counted.
        hours: Their kept hours.
        licenses: Tracks per license.
        labeled: Per tag in `TAGS`, the tracks that have a value for it.
        genres: Tracks per genre.
        moods: Tracks per mood (a track with several moods counts once for each).
        keys: Tracks per key, named as "A minor" or "Eb major" when the label parses, else as written.
        tempi: Tracks per tempo bin, keyed by the bin's lower edge in BPM (`BPM_BIN` wide).
        bpms: Every track's tempo, sorted.
    """

    shards: str
    manifests: list[str]
    tracks: int = 0
    hours: float = 0.0
    licenses: Counter[str] = field(default_factory=Counter)
    labeled: dict[str, TagCount] = field(default_factory=lambda: {tag: TagCount() for tag in TAGS})
    genres: dict[str, TagCount] = field(default_factory=dict)
    moods: dict[str, TagCount] = field(default_factory=dict)
    keys: dict[str, TagCount] = field(default_factory=dict)
    tempi: dict[int, TagCount] = field(default_factory=dict)
    bpms: list[float] = field(default_factory=list)


def parse_key(text: str) -> tuple[int, str] | None:
    """(pitch class with C = 0, "major" or "minor") of a key label such as "A minor", "f#m", "Eb", or None.

    A tonic without a mode is read as major, as lead sheets write it.
    """
    match = _KEY.fullmatch(text.strip().lower())
    if match is None:
        return None
    tonic, accidental, mode = match.groups()
    shift = 0 if not accidental else (1 if accidental in ("#", "♯") or accidental.endswith("sharp") else -1)
    return (_PITCH[tonic] + shift) % 12, "minor" if mode in ("minor", "min", "m") else "major"


def key_name(text: str) -> str:
    """A key label spelled one way ("c# min", "C#m" -> "C# minor"), or as written when it does not parse."""
    parsed = parse_key(text)
    return f"{NOTE_NAMES[parsed[0]]} {parsed[1]}" if parsed else text


def _tag_values(tag: str, metadata: dict[str, Any]) -> list[Any]:
    """The values of `tag` in one manifest row's metadata (empty when unlabeled or malformed)."""
    value = metadata.get(tag)
    if tag == "moods":
        return list(dict.fromkeys(value)) if isinstance(value, list) else []
    if tag == "bpm":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        return [float(value)] if ok else []
    if tag == "key":
        return [key_name(value)] if isinstance(value, str) and value else []
    return [value] if isinstance(value, str) and value else []


def summarize_rows(rows: list[dict[str, Any]], shards: str, manifests: list[str]) -> CatalogSummary:
    """Count the tags of manifest rows (as `mgft prep` writes them); each row is one track.

    Args:
        rows: Manifest rows: `metadata`, `metadata_sources`, `kept_seconds` and `license` are read.
        shards: The shard set's name, for titles.
        manifests: The files the rows came from.

    Returns:
        The counts, given and estimated apart.
    """
    summary = CatalogSummary(shards=shards, manifests=manifests)
    counters = {"genre": summary.genres, "moods": summary.moods, "key": summary.keys, "bpm": summary.tempi}
    for row in rows:
        hours = float(row.get("kept_seconds") or 0.0) / 3600
        sources = set(row.get("metadata_sources") or [])
        metadata = row.get("metadata") or {}
        summary.tracks += 1
        summary.hours += hours
        summary.licenses[row.get("license") or "unknown"] += 1
        for tag in TAGS:
            values = _tag_values(tag, metadata)
            if not values:
                continue
            estimated = f"estimated:{tag}" in sources
            summary.labeled[tag].add(estimated, hours)
            if tag == "bpm":
                summary.bpms.append(values[0])
                values = [int(values[0] // BPM_BIN * BPM_BIN)]
            for value in values:
                counters[tag].setdefault(value, TagCount()).add(estimated, hours)
    summary.bpms.sort()
    return summary


def shard_folders(shards: str) -> list[tuple[Path, set[str] | None]]:
    """The local folders of a shard set, each with the names of its shards in the set (None: all of them).

    Args:
        shards: A folder, a glob or a brace pattern of shard tars, as `--data.shards` takes them.

    Returns:
        (folder, shard names) pairs; none for remote shards (`pipe:`, `s3://`) or a pattern that matches nothing.
    """
    if "://" in shards or shards.startswith("pipe:"):
        return []
    if Path(shards).is_dir():
        return [(Path(shards), None)]
    if "{" in shards:
        import braceexpand

        files = list(braceexpand.braceexpand(shards))
    else:
        files = glob.glob(shards) if glob.has_magic(shards) else [shards]
    folders: dict[Path, set[str]] = {}
    for file in map(Path, files):
        if file.is_file():
            folders.setdefault(file.parent, set()).add(file.name)
    return list(folders.items())


def run_folder(ckpt: Path) -> Path:
    """The run folder of a checkpoint: RUN for `RUN/checkpoints/last.ckpt` (mgft fit's layout), else its folder."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def run_config(run_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A run's resolved config (`RUN/config.yaml`, written by LightningCLI at fit start), parsed and as text."""
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return None, None
    text = path.read_text()
    return yaml.safe_load(text), text


def training_shards(config: dict[str, Any] | None) -> str | dict[str, float] | None:
    """The `data.shards` a run's config names (a set or a weighted mix), or None."""
    return ((config or {}).get("data") or {}).get("shards")


def shard_set_name(shards: str | dict[str, float]) -> str:
    """A shard set as a title names it; a weighted mix as "a (weight 0.8) + b (weight 0.2)"."""
    if isinstance(shards, str):
        return shards
    return " + ".join(f"{spec} (weight {weight:g})" for spec, weight in shards.items())


def catalog_summary(shards: str | dict[str, float]) -> CatalogSummary | None:
    """The tag counts of a shard set's tracks, from the `manifest.jsonl` beside its shards.

    For a glob or pattern, only the tracks of the matched shards count (manifest rows name their shard); a weighted
    mix counts the tracks of all its sets once each (the weights say how often they are drawn, not what they hold).

    Args:
        shards: A folder, glob or brace pattern of shard tars, or a `{set: weight}` mix of them (`--data.shards`).

    Returns:
        The counts, or None when no manifest was found (remote shards, a missing folder, shards copied alone).
    """
    specs = [shards] if isinstance(shards, str) else list(shards)
    rows: list[dict[str, Any]] = []
    manifests: list[str] = []
    for folder, names in (pair for spec in specs for pair in shard_folders(spec)):
        path = folder / MANIFEST_FILE
        if not path.is_file() or str(path) in manifests:
            continue
        manifests.append(str(path))
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            # A row that names no shard (an older manifest) cannot be matched to the pattern: it counts.
            if names is None or row.get("shard") is None or row["shard"] in names:
                rows.append(row)
    return summarize_rows(rows, shard_set_name(shards), manifests) if manifests else None


def top(counts: dict[Any, TagCount], n: int = TOP) -> list[tuple[Any, TagCount]]:
    """The `n` most frequent values, by tracks (ties in name order)."""
    return sorted(counts.items(), key=lambda item: (-item[1].tracks, str(item[0])))[:n]


def tempo_range(summary: CatalogSummary) -> tuple[float, float, float] | None:
    """(slowest, median, fastest) tempo in BPM, or None when no track has one."""
    if not summary.bpms:
        return None
    return summary.bpms[0], statistics.median(summary.bpms), summary.bpms[-1]


# ---------------------------------------------------------------------------------------------------------------------
# The picture

_GIVEN_STYLE = {"edgecolor": "white", "linewidth": 0.5}
_ESTIMATED_STYLE = {"alpha": 0.45, "hatch": "///", "edgecolor": "black", "linewidth": 0.0}


def _no_data(ax, text: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, color="#666", transform=ax.transAxes)


def _integer_axis(axis) -> None:
    """Whole-track ticks and a light grid along the counts."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))
    axis.axes.grid(axis=axis.axis_name, alpha=0.3)


def _coverage(summary: CatalogSummary, tag: str) -> str:
    labeled = summary.labeled[tag]
    text = f"{labeled.tracks} of {summary.tracks} tracks labeled"
    return text + (f", {labeled.estimated} estimated" if labeled.estimated else "")


def _stacked_barh(ax, counts: dict[Any, TagCount], color: str, title: str) -> None:
    """Top values as horizontal bars, most frequent on top: given solid, estimated hatched after them."""
    rows = top(counts)[::-1]
    labels = [str(value) for value, _ in rows]
    given = [c.given for _, c in rows]
    ax.barh(labels, given, color=color, **_GIVEN_STYLE)
    ax.barh(labels, [c.estimated for _, c in rows], left=given, color=color, **_ESTIMATED_STYLE)
    more = len(counts) - len(rows)
    ax.set_title(title + (f" (+{more} more)" if more > 0 else ""), fontsize=10)
    ax.set_xlabel("tracks")
    ax.tick_params(axis="y", labelsize=8)
    _integer_axis(ax.xaxis)


def _key_bars(ax, summary: CatalogSummary) -> None:
    """Keys around the circle of fifths; each major key beside its relative minor (the same key signature)."""
    import numpy as np

    by_key = {parse_key(name): count for name, count in summary.keys.items()}
    x = np.arange(12)
    for offset, mode, color, pcs in ((-0.2, "major", "tab:blue", _FIFTHS),
                                     (0.2, "minor", "tab:orange", [(pc + 9) % 12 for pc in _FIFTHS])):
        counts = [by_key.get((pc, mode), TagCount()) for pc in pcs]
        given = [c.given for c in counts]
        ax.bar(x + offset, given, width=0.4, color=color, label=mode, **_GIVEN_STYLE)
        ax.bar(x + offset, [c.estimated for c in counts], width=0.4, bottom=given, color=color, **_ESTIMATED_STYLE)
    ax.set_xticks(x, [f"{NOTE_NAMES[pc]}\n{NOTE_NAMES[(pc + 9) % 12]}m" for pc in _FIFTHS], fontsize=8)
    ax.set_xlabel("key (circle of fifths; each major key beside its relative minor)")
    ax.set_ylabel("tracks")
    _integer_axis(ax.yaxis)
    ax.legend(fontsize=8, loc="upper right")
    unparsed = sum(count.tracks for key, count in by_key.items() if key is None)
    ax.set_title(f"keys ({_coverage(summary, 'key')}" + (f"; {unparsed} unreadable" if unparsed else "") + ")",
                 fontsize=10)


def _tempo_bars(ax, summary: CatalogSummary) -> None:
    low, high = min(summary.tempi), max(summary.tempi)
    edges = list(range(low, high + BPM_BIN, BPM_BIN))
    counts = [summary.tempi.get(edge, TagCount()) for edge in edges]
    given = [c.given for c in counts]
    centers = [edge + BPM_BIN / 2 for edge in edges]
    ax.bar(centers, given, width=BPM_BIN * 0.9, color="tab:purple", **_GIVEN_STYLE)
    ax.bar(centers, [c.estimated for c in counts], width=BPM_BIN * 0.9, bottom=given, color="tab:purple",
           **_ESTIMATED_STYLE)
    _, median, _ = tempo_range(summary)
    ax.axvline(median, color="black", linestyle="--", linewidth=1)
    ax.set_title(f"tempo, median {median:.0f} BPM ({_coverage(summary, 'bpm')})", fontsize=10)
    ax.set_xlabel(f"tempo (BPM, {BPM_BIN}-BPM bins)")
    ax.set_ylabel("tracks")
    _integer_axis(ax.yaxis)


def catalog_figure(summary: CatalogSummary):
    """The tag distribution as one 2x2 matplotlib figure: top genres, top moods, keys, tempo histogram.

    A panel without data says so ("no genre labels") instead of drawing empty axes.

    Args:
        summary: What `catalog_summary` counted.

    Returns:
        The figure (12 x 8.5 inches); the caller saves and closes it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, ((genre_ax, mood_ax), (key_ax, tempo_ax)) = plt.subplots(2, 2, figsize=(12, 8.5))
    panels = (
        (genre_ax, summary.genres, "genre", functools.partial(
            _stacked_barh, genre_ax, summary.genres, "tab:green", f"top genres ({_coverage(summary, 'genre')})")),
        (mood_ax, summary.moods, "mood", functools.partial(
            _stacked_barh, mood_ax, summary.moods, "tab:red", f"top moods ({_coverage(summary, 'moods')})")),
        (key_ax, summary.keys, "key", functools.partial(_key_bars, key_ax, summary)),
        (tempo_ax, summary.tempi, "tempo", functools.partial(_tempo_bars, tempo_ax, summary)),
    )
    for ax, counts, noun, draw in panels:
        if counts:
            draw()
        else:
            _no_data(ax, f"no {noun} labels")
    name = summary.shards if len(summary.shards) <= 90 else "..." + summary.shards[-87:]
    tracks = f"{summary.tracks} track" + ("" if summary.tracks == 1 else "s")
    fig.suptitle(f"{name}\n{tracks}, {summary.hours:.2f} hours", fontsize=12)
    fig.legend(handles=[Patch(facecolor="grey", **_GIVEN_STYLE, label="given (sidecar, catalog or tags)"),
                        Patch(facecolor="grey", **_ESTIMATED_STYLE, label="estimated from the audio (--auto-tags)")],
               loc="lower center", ncol=2, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def catalog_png(summary: CatalogSummary, path: Path, dpi: int = 90) -> Path:
    """Save `catalog_figure(summary)` as a PNG.

    Args:
        summary: What `catalog_summary` counted.
        path: The PNG to write.
        dpi: Its resolution (90: 1080 x 765 pixels).

    Returns:
        `path`.
    """
    import matplotlib.pyplot as plt

    fig = catalog_figure(summary)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
