"""Fine-tuning learns: the demo's pipeline on a smaller run, where the LoRA fine-tune must beat its base.

The base is the random-init tiny stereo-melody MusicGen "pretrained" (full fine-tune) on one style of the synthesized
catalog; the fine-tune adapts it with LoRA to the other style; both are scored by `mgft eval` on held-out tracks of
the fine-tuning style. Every component is the real one (trained tiny EnCodec and HTDemucs, transformers' MusicGen,
peft, Lightning), so a broken tokenizer, loss, condition or sampler shows up here as "no improvement".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.__main__ import main
from tests.finetune.test_fit import fit_args

PRETRAIN = "recipes/tiny/stereo-melody-pretrain.yaml"
LORA = "recipes/tiny/stereo-melody-lora.yaml"


def _catalog_shards(root: Path, models: Path, name: str, tracks: int, style: str, seed: int) -> Path:
    from data_prep.prep import prep
    from testkit.synth import synth_catalog

    synth_catalog(str(root / f"catalog-{name}"), tracks=tracks, seconds=10.0, seed=seed, style=style)
    out = root / f"shards-{name}"
    prep(input=str(root / f"catalog-{name}"), output=str(out), codec=str(models / "encodec_32khz"), channels=2,
         segment_seconds=5.0, melody=True, demucs=str(models / "htdemucs"), keep_audio=True, batch_size=8)
    return out


@pytest.mark.slow
def test_lora_fine_tune_beats_its_base_on_held_out_audio_of_its_style(tmp_path: Path, tiny_models_dir: Path,
                                                                      tiny_lm_dir: Path) -> None:
    base_shards = _catalog_shards(tmp_path, tiny_models_dir, "base", 8, "bright", 0)
    tune_shards = _catalog_shards(tmp_path, tiny_models_dir, "tune", 8, "dark", 1)
    val_shards = _catalog_shards(tmp_path, tiny_models_dir, "val", 4, "dark", 2)
    quiet = ("--trainer.logger", "false", "--trainer.max_steps", "40", "--data.val_shards", str(val_shards),
             "--trainer.val_check_interval", "40")
    main(fit_args(PRETRAIN, tiny_lm_dir / "musicgen-stereo-melody", base_shards, tmp_path / "base-run", *quiet))
    main(["export", str(tmp_path / "base-run" / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "base"),
          "--format", "hf"])
    main(fit_args(LORA, tmp_path / "base", tune_shards, tmp_path / "run", *quiet))
    main(["eval", "--model", str(tmp_path / "run" / "checkpoints" / "last.ckpt"), "--baseline",
          str(tmp_path / "base"), "--data.shards", str(val_shards), "--out", str(tmp_path / "report"),
          "--num-samples", "4", "--wandb", "false"])
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    model, base = metrics["model"], metrics["baseline"]
    print({name: {k: round(v, 3) for k, v in row.items() if k in ("val/ce", "fad_encodec", "chroma_cosine")}
           for name, row in (("model", model), ("baseline", base))})
    assert metrics["settings"]["seconds"] == pytest.approx(5.0, abs=0.05)  # whole segments, not tails
    assert model["val/ce"] < base["val/ce"] - 0.3
    assert model["fad_encodec"] < 0.7 * base["fad_encodec"]
