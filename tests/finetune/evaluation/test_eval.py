"""`mgft eval` of a tiny fine-tune against its base: the metrics, and a report that renders in headless Chromium."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from finetune.__main__ import main
from tests.finetune.test_fit import LORA, fit_args


def chromium() -> str:
    """Debian's chromium, installed when missing (the tests render the report in a real browser)."""
    path = shutil.which("chromium")
    if path is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, timeout=900,
                       env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        path = shutil.which("chromium")
    assert path, "chromium could not be installed"
    return path


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_lm_dir: Path, audio_shards: Path) -> Path:
    root = tmp_path_factory.mktemp("eval")
    base = tiny_lm_dir / "musicgen-stereo-melody"
    main(fit_args(LORA, base, audio_shards, root / "run", "--trainer.max_steps", "6", "--trainer.logger", "false",
                  "--data.val_shards", str(audio_shards), "--trainer.val_check_interval", "3", "--model.lr", "0.02"))
    main(["eval", "--model", str(root / "run" / "checkpoints" / "last.ckpt"), "--baseline", str(base),
          "--data.shards", str(audio_shards), "--out", str(root / "report"), "--num-samples", "3",
          "--wandb", "false"])
    return root / "report"


def test_eval_writes_the_metrics(evaluated: Path) -> None:
    metrics = json.loads((evaluated / "metrics.json").read_text())
    for name in ("model", "baseline"):
        row = metrics[name]
        assert {"val/ce", "val/ppl", "fad_encodec", "chroma_cosine"} <= set(row)
        assert {f"val/ce_q{k}" for k in range(8)} <= set(row) and {f"val/ppl_q{k}" for k in range(8)} <= set(row)
        assert row["fad_encodec"] > 0 and -1 <= row["chroma_cosine"] <= 1
        assert row["val/ppl"] == pytest.approx(2.718281828 ** row["val/ce"], rel=1e-6)
    # The fine-tune was scored on what it trained on: its cross-entropy must be below its base model's.
    assert metrics["model"]["val/ce"] < metrics["baseline"]["val/ce"]
    assert metrics["settings"]["num_samples"] == 3 and metrics["settings"]["embedder"] == "encodec"
    assert len(list((evaluated / "samples" / "model").glob("*.wav"))) == 3
    # The training run's own validation (MetricsHistory -> metrics.jsonl, plotted in the report) is finite too.
    history = [json.loads(x) for x in (evaluated.parent / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [row for row in history if "val/ce" in row]
    assert [row["step"] for row in val] == [3, 6] and all(math.isfinite(row["val/ce_q7"]) for row in val)
    assert [row["step"] for row in history if "train/loss" in row] == [1, 2, 3, 4, 5, 6]


def test_report_renders_in_headless_chromium(evaluated: Path, tmp_path: Path) -> None:
    report = evaluated / "report.html"
    browser = chromium()
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
              f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    # 3 held-out rows x (reference, model, baseline) x (spectrogram + chroma) + the loss curves = 19 pictures;
    # 9 audio players. The page's own check counts the decoded pictures and the players whose audio loaded.
    assert "images 19/19 audio 9/9" in html, html[html.find("render-check") - 10:][:200]
    assert "fad_encodec" in html and "chroma_cosine" in html
    shot = tmp_path / "report.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1400,2200", report.as_uri()],
                   capture_output=True, timeout=180, check=True)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
