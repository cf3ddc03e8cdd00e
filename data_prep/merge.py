"""`mgft prep-merge SHARDS`: combine every rank's journal into manifest.jsonl, rejects.jsonl and stats.json.

    mgft prep-merge data/shards

`mgft prep` runs this itself when it is the only rank or the last rank to finish; the explicit command is for SLURM
array jobs that merge in a dependent step. Merging only reads journals, so it is idempotent and cheap.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from data_prep.atomic import atomic_write_text
from data_prep.schema import MANIFEST_FILE, REJECTS_FILE, STATS_FILE
from data_prep.shards import journal_path, read_journal


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


def merge(out_dir: Path) -> dict[str, Any]:
    """Write manifest.jsonl, rejects.jsonl and stats.json from every rank's journal (all ranks must be done)."""
    settings = json.loads((out_dir / "prep_config.json").read_text())
    world_size = settings["world_size"]
    missing = [r for r in range(world_size) if not (out_dir / f"done.r{r:04d}").exists()]
    if missing:
        raise RuntimeError(f"{out_dir}: ranks {missing} of {world_size} have not finished; rerun them first")
    manifest, rejects, shards = collect(out_dir, world_size)
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
