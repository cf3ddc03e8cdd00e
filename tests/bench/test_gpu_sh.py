"""`bench/gpu.sh --dry-run`: every stage of the GPU benchmark runs on CPU with tiny models, so the script cannot rot.

The figures of a dry run mean nothing (tiny models, CPU); the test checks that each stage printed its table.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_benchmark_dry_run_prints_every_table(tmp_path: Path) -> None:
    env = {**os.environ, "PY": sys.executable, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    out = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    for kind in ("full", "LoRA", "full compiled", "LoRA compiled", "full FSDP2"):
        assert any(line.startswith("musicgen-small") and line.split(None, 1)[1].startswith(kind + " ")
                   for line in text.splitlines()), (kind, text)
    for line in ("EnCodec 32 kHz tiny size", "HTDemucs tiny size", "MBD tokens_to_wav", "mgft / transformers ="):
        assert line in text, (line, text[-2000:])


def test_gpu_benchmark_refuses_an_unknown_flag() -> None:
    out = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--fast"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "usage: bash bench/gpu.sh [--dry-run]" in out.stderr
