"""`mgft fit` on shards with corrupt samples: each is skipped and named once and the run trains to the end; a corrupt
first sample (what the set is checked against) stops the run in one line before anything is built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.finetune.helpers import one_shard_with_corrupt_samples
from tests.finetune.test_fit import SMALL, fit_args, run_cli


@pytest.mark.slow
def test_corrupt_samples_are_skipped_named_once_and_counted(tmp_path: Path, tiny_lm_dir: Path,
                                                             mono_shards: Path) -> None:
    shards = tmp_path / "shards"
    bad = one_shard_with_corrupt_samples(mono_shards, shards, at=5)
    run = tmp_path / "run"
    # 3 of 30 samples are bad: 10% of the draws, at the default threshold; 30 allows for the draw's spread.
    out = run_cli(fit_args(SMALL, tiny_lm_dir / "musicgen-small", shards, run, "--trainer.logger", "false",
                           "--trainer.max_steps", "40", "--data.max_skipped_fraction", "0.3"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 40
    named = [line for line in out.stderr.splitlines() if "skipped corrupt data" in line]
    assert len(named) == 3, named  # 40 steps of 2 draw the shard's 30 samples about 3 times: each named once
    for key, why in zip(bad, ("3 codebooks", "outside [0, 2048)", "must be integer")):
        assert sum(f"sample {key} in " in line for line in named) == 1 and why in next(x for x in named if key in x)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    counts = [row["train/skipped_samples"] for row in rows if "train/skipped_samples" in row]
    assert counts[-1] == 3 and counts == sorted(counts)


def test_a_corrupt_first_sample_stops_fit_in_one_line(tmp_path: Path, tiny_lm_dir: Path, mono_shards: Path) -> None:
    shards = tmp_path / "shards"
    one_shard_with_corrupt_samples(mono_shards, shards, at=0)
    run = tmp_path / "run"
    out = run_cli(fit_args(SMALL, tiny_lm_dir / "musicgen-small", shards, run, "--trainer.logger", "false"))
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("mgft fit: error: ") and "its first sample bad-shape is corrupt (codes have 3" in last
    assert not run.exists()  # refused before any run folder, model or logger
