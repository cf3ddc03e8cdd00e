"""`mgft eval` of a tiny fine-tune against its base: the metrics, and a report that renders in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from finetune.__main__ import main
from tests.finetune.evaluation.test_catalog import ROWS, write_set
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
    # 3 held-out rows x (reference, model, baseline) x (spectrogram + chroma) + the loss curves + the catalog = 20
    # pictures; 9 audio players. The page's own check counts the decoded pictures and the players whose audio loaded.
    assert "images 20/20 audio 9/9" in html, html[html.find("render-check") - 10:][:200]
    assert "fad_encodec" in html and "chroma_cosine" in html
    shot = tmp_path / "report.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1400,2200", report.as_uri()],
                   capture_output=True, timeout=180, check=True)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_report_shows_the_catalog(evaluated: Path, audio_shards: Path) -> None:
    from PIL import Image

    html = (evaluated / "report.html").read_text()
    section = html[html.index("<h2>Catalog</h2>"):html.index("<h2>Samples</h2>")]
    # The run trained on the shards it is scored on: one picture, named so.
    assert f"<h3>training and held-out: <code>{audio_shards}</code></h3>" in section
    pictures = re.findall(r'<img class="catalog" src="data:image/png;base64,([^"]+)"', section)
    assert len(pictures) == 1
    png = base64.b64decode(pictures[0])
    assert len(png) > 20_000  # four panels of bars and text, not an empty frame
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (1080, 765)
    assert (evaluated / "catalog_heldout.png").read_bytes() == png


def test_catalog_pictures_of_the_held_out_and_the_training_shards(tmp_path: Path) -> None:
    from finetune.evaluation.eval import catalog_pictures
    from finetune.evaluation.report import write_report

    train, val = write_set(tmp_path / "train", ROWS[:3]), write_set(tmp_path / "val", ROWS[3:])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"shards": {str(train): 0.5, str(val): 0.5}}}))
    rows = catalog_pictures(tmp_path, str(val), run)
    assert [(r["name"], r["label"]) for r in rows] == [("heldout", "held-out"), ("training", "training")]
    assert rows[1]["shards"] == f"{train} (weight 0.5) + {val} (weight 0.5)"
    assert [r["png"] for r in rows] == [str(tmp_path / "catalog_heldout.png"), str(tmp_path / "catalog_training.png")]
    assert all(Path(r["png"]).stat().st_size > 20_000 for r in rows)

    # A run trained elsewhere (its shards are not here), and no run at all.
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"shards": "/elsewhere/train"}}))
    rows = catalog_pictures(tmp_path, str(val), run)
    assert [(r["label"], r["png"] is None) for r in rows] == [("held-out", False), ("training", True)]
    assert [r["label"] for r in catalog_pictures(tmp_path, str(val), None)] == ["held-out"]
    html = write_report(tmp_path / "report.html", {"model": {"model": "m"}}, {}, [], [], rows).read_text()
    assert html.count('<img class="catalog"') == 1 and "No manifest.jsonl was found beside these shards." in html


def test_melody_gain_compares_each_samples_own_melody_with_another(tiny_lm_dir: Path, audio_shards: Path) -> None:
    import torch

    from finetune.evaluation.heldout import codebook_cross_entropy
    from finetune.inference.load import load_for_inference

    module = load_for_inference(str(tiny_lm_dir / "musicgen-stereo-melody"))
    # At random init (weights of std 0.02) the melody moves the logits by about 1e-4 of their size, and the gain is
    # about 1e-7 nats. Weights of std 0.3 in the decoder and the chroma projection make the melody matter, so that
    # another melody must change the cross-entropy if it reaches the model at all. (A gain of either sign: this
    # model was not trained to follow melodies.)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in [module.model.audio_enc_to_dec_proj, *module.model.decoder.modules()]:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(std=0.3, generator=generator)
    metrics = codebook_cross_entropy(module, str(audio_shards), batch_size=4)
    # Every batch here holds 4 samples, so the own-melody half of the pair is val/ce itself.
    assert metrics["melody_gain"] == pytest.approx(metrics["val/ce_other_melody"] - metrics["val/ce"], abs=1e-9)
    assert abs(metrics["melody_gain"]) > 1e-5, metrics["melody_gain"]  # measured 2.7e-4
    # The first 4 samples are whole segments (equal valid frames): only the chroma itself differs there.
    first = codebook_cross_entropy(module, str(audio_shards), batch_size=4, max_samples=4)
    assert abs(first["melody_gain"]) > 1e-5, first["melody_gain"]

    # A model blind to the chroma (its projection zeroed: every melody embeds to 0) gains nothing.
    with torch.no_grad():
        module.model.audio_enc_to_dec_proj.weight.zero_()
        module.model.audio_enc_to_dec_proj.bias.zero_()
    blind = codebook_cross_entropy(module, str(audio_shards), batch_size=4)
    assert blind["melody_gain"] == pytest.approx(0.0, abs=1e-6)
    # Batches of one sample have no other melody to compare with.
    assert "melody_gain" not in codebook_cross_entropy(module, str(audio_shards), batch_size=1, max_samples=4)
