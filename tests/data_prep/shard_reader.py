"""Read prep's output back for assertions (through webdataset, as the trainer will)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import webdataset as wds


def read_samples(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Every sample of every shard in `out_dir`, keyed by `__key__`; fails on a duplicate key."""
    shards = sorted(str(p) for p in out_dir.glob("shard-*.tar"))
    samples: dict[str, dict[str, Any]] = {}
    if not shards:
        return samples
    for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False):
        key = sample["__key__"]
        assert key not in samples, f"duplicate key {key}"
        out = {"codes": np.load(io.BytesIO(sample["codes.npy"])), "info": json.loads(sample["json"])}
        if "chroma.npy" in sample:
            out["chroma"] = np.load(io.BytesIO(sample["chroma.npy"]))
        if "audio.flac" in sample:
            out["audio"], out["audio_rate"] = sf.read(io.BytesIO(sample["audio.flac"]), dtype="float32")
        samples[key] = out
    return samples


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
