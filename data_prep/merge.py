"""`mgft prep-merge SHARDS`: combine every rank's journal into manifest.jsonl, rejects.jsonl and stats.json.

    mgft prep-merge data/shards

`mgft prep` runs this itself when it is the only rank or the last rank to finish; the explicit command is for SLURM
array jobs that merge in a dependent step. Merging reads journals and decides the same from them every time, so it
is idempotent and cheap. With --near-duplicates it is also where copies of one recording on two ranks meet: the
later one in catalog order (and, on the validation side of a split, one matching a training track) is moved to the
rejects and its samples are cut out of its shard.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from data_prep.atomic import atomic_write_text
from data_prep.catalog import path_fields, printable, row_rel
from data_prep.schema import MANIFEST_FILE, REJECTS_FILE, STATS_FILE
from data_prep.shards import journal_path, read_journal, remove_samples


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def collect(out_dir: Path, world_size: int) -> tuple[list[dict], list[dict], list[dict]]:
    """All ranks' manifest rows, reject rows and shard entries, sorted by path (and shard name)."""
    manifest, rejects, shards = [], [], []
    for rank in range(world_size):
        state = read_journal(journal_path(out_dir, rank))
        for entry in state.shards:
            shards.append({"shard": entry["shard"], "num_samples": entry["num_samples"]})
            manifest.extend(entry["tracks"])
        rejects.extend(state.rejects)
    return (
        sorted(manifest, key=lambda r: r["path"]),
        sorted(rejects, key=lambda r: r["path"]),
        sorted(shards, key=lambda r: r["shard"]),
    )


def compute_stats(
    manifest: list[dict], rejects: list[dict], shards: list[dict], settings: dict[str, Any]
) -> dict[str, Any]:
    """Hours, segments and per-license counts of what was kept, and rejects by reason."""
    by_license: dict[str, dict[str, float]] = defaultdict(lambda: {"tracks": 0, "segments": 0, "hours": 0.0})
    for row in manifest:
        lic = by_license[row["license"]]
        lic["tracks"] += 1
        lic["segments"] += len(row["segments"])
        lic["hours"] += row["kept_seconds"] / 3600
    return {
        "tracks_in": len(manifest) + len(rejects),
        "tracks_kept": len(manifest),
        "tracks_rejected": len(rejects),
        "hours_kept": sum(r["kept_seconds"] for r in manifest) / 3600,
        "segments": sum(len(r["segments"]) for r in manifest),
        "shards": len(shards),
        "samples_in_shards": sum(s["num_samples"] for s in shards),
        "rejects_by_reason": dict(sorted(Counter(r["reason"] for r in rejects).items())),
        "by_license": {k: by_license[k] for k in sorted(by_license)},
        "notes": dict(sorted(Counter(n.split(" (")[0] for r in manifest for n in r["notes"]).items())),
        "settings": settings,
    }


def drop_near_duplicates(out_dir: Path, manifest: list[dict], shards: list[dict],
                         reference: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """Move the near-duplicates among kept tracks to the rejects and cut their samples out of the shards.

    Args:
        out_dir: The prep output.
        manifest: Every rank's kept rows.
        shards: Every rank's shard entries (`shard`, `num_samples`).
        reference: Kept rows these must not duplicate (a split's training side, for its validation side).

    Returns:
        (manifest rows kept, reject rows of the dropped tracks, shard entries with their new counts; a shard left
        empty is deleted and not listed).
    """
    from data_prep.fingerprint import resolve

    dropped = resolve(manifest, reference)
    if not dropped:
        return manifest, [], shards
    kept, rejects = [], []
    cut: dict[str, set[str]] = defaultdict(set)  # shard -> sample keys to remove
    for row in manifest:
        if (match := dropped.get(row_rel(row))) is None:
            kept.append(row)
            continue
        cut[row["shard"]].update(segment["key"] for segment in row["segments"])
        rejects.append({**path_fields(row_rel(row)), "reason": "near_duplicate",
                        "detail": match.detail(printable(match.rel)), "sha256": row["sha256"],
                        "size": row["size_bytes"]})
    counts = {entry["shard"]: entry["num_samples"] for entry in shards}
    for name, keys in sorted(cut.items()):
        remove_samples(out_dir / name, keys)
        counts[name] -= len(keys)
    return kept, rejects, [{"shard": n, "num_samples": c} for n, c in sorted(counts.items()) if c > 0]


def kept_rows(out_dir: Path) -> list[dict]:
    """The manifest rows a finished prep output keeps, near-duplicates across its ranks dropped (its journals only)."""
    settings = json.loads((out_dir / "prep_config.json").read_text())
    check_finished(out_dir, settings["world_size"])
    manifest, _, _ = collect(out_dir, settings["world_size"])
    if settings.get("near_duplicates"):
        from data_prep.fingerprint import resolve

        dropped = resolve(manifest)
        manifest = [row for row in manifest if row_rel(row) not in dropped]
    return manifest


def check_finished(out_dir: Path, world_size: int) -> None:
    """A RuntimeError naming the ranks that have not written their done marker, if any."""
    missing = [r for r in range(world_size) if not (out_dir / f"done.r{r:04d}").exists()]
    if missing:
        raise RuntimeError(f"{out_dir}: ranks {missing} of {world_size} have not finished; rerun them first")


def merge(out_dir: Path) -> dict[str, Any]:
    """Write manifest.jsonl, rejects.jsonl and stats.json from every rank's journal (all ranks must be done)."""
    settings = json.loads((out_dir / "prep_config.json").read_text())
    world_size = settings["world_size"]
    check_finished(out_dir, world_size)
    manifest, rejects, shards = collect(out_dir, world_size)
    if settings.get("near_duplicates"):
        # A split's validation side must not hold a recording of its training side: each rank preps train first,
        # so when the last one finishes validation, every training journal is complete.
        reference = kept_rows(out_dir.parent / "train") if settings.get("val_fraction") and out_dir.name == "val" \
            else []
        manifest, dropped, shards = drop_near_duplicates(out_dir, manifest, shards, reference)
        rejects = sorted(rejects + dropped, key=lambda r: r["path"])
    stats = compute_stats(manifest, rejects, shards, settings)
    if stats["samples_in_shards"] != stats["segments"]:
        raise RuntimeError(f"{out_dir}: journals list {stats['segments']} segments but shards hold "
                           f"{stats['samples_in_shards']} samples")
    atomic_write_text(out_dir / MANIFEST_FILE, _jsonl(manifest))
    atomic_write_text(out_dir / REJECTS_FILE, _jsonl(rejects))
    atomic_write_text(out_dir / STATS_FILE, json.dumps(stats, indent=2, ensure_ascii=False))
    return stats


def merge_if_complete(out_dir: Path) -> dict[str, Any] | None:
    """Merge when every rank has finished, else return None (another rank will, or `mgft prep-merge`)."""
    world_size = json.loads((out_dir / "prep_config.json").read_text())["world_size"]
    if all((out_dir / f"done.r{r:04d}").exists() for r in range(world_size)):
        return merge(out_dir)
    return None


def format_summary(stats: dict[str, Any]) -> str:
    """The closing summary people read: tracks in, hours kept, segments, rejects by reason, hours by license."""
    lines = [
        f"tracks in: {stats['tracks_in']}  kept: {stats['tracks_kept']}  rejected: {stats['tracks_rejected']}",
        f"hours kept: {stats['hours_kept']:.3f}  segments: {stats['segments']}  shards: {stats['shards']}",
    ]
    if stats["rejects_by_reason"]:
        lines.append("rejects by reason: " + ", ".join(f"{k} {v}" for k, v in stats["rejects_by_reason"].items()))
    for lic, row in stats["by_license"].items():
        lines.append(f"  {lic}: {row['hours']:.3f} h, {row['tracks']} tracks, {row['segments']} segments")
    if stats["notes"]:
        lines.append("notes: " + ", ".join(f"{k} x{v}" for k, v in stats["notes"].items()))
    return "\n".join(lines)


def prep_merge(output: str) -> dict[str, Any]:
    """Merge the journals of every prep rank in OUTPUT into manifest.jsonl, rejects.jsonl and stats.json.

    Args:
        output: The --output folder the prep ranks wrote to.

    Returns:
        The stats written to stats.json.
    """
    stats = merge(Path(output))
    print(format_summary(stats))
    return stats
