"""Every recipe in `recipes/` runs, as written, for 2 optimizer steps on CPU with a tiny model of its architecture.

What is kept from each recipe: its model settings (LoRA, gradient checkpointing, mono-to-stereo, dropouts), its
precision (bf16-mixed), gradient accumulation, callbacks and logger (wandb, offline here). What is mapped: the hub
model to the tiny one of its family (text or melody, mono or stereo; MBD bands to the tiny codec and MBD), the GPU to
the CPU, a multi-GPU strategy (DDP, FSDP2) to 2 gloo ranks, the shards to tiny prepped ones of the right kind, the
step count to 2, more than one loader worker to one (2 cores), and the training samples generated at the end to 1 s
(the GPU configs ask for 10 s, 8 s of CPU per recipe). The multi-rank recipes run one after another in one
torchrun group and the single-process ones in one process (`tests/run_recipes.py`): imports and the rendezvous are
paid once. The cost of each recipe is printed (`-s`) for the notes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from finetune.__main__ import main
from tests.helpers import run_fits

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))
STEPS = 2
DEMO_BASE = "musicgen-stereo-melody"
"""The tiny recipes' `demo-run/base` is `make demo`'s pretrained tiny stereo-melody model."""


def command_of(recipe: Path) -> str:
    header = [line for line in recipe.read_text().splitlines() if line.startswith("#")]
    return "mbd-fit" if any("mgft mbd-fit" in line for line in header) else "fit"


def resolved(recipe: Path, capsys: pytest.CaptureFixture) -> dict[str, Any]:
    with pytest.raises(SystemExit):
        main([command_of(recipe), "--config", str(recipe), "--print_config"])
    return yaml.safe_load(capsys.readouterr().out)


def tiny_musicgen(model: dict[str, Any]) -> str:
    """The tiny model of a recipe's family: facebook/musicgen-stereo-melody-large -> musicgen-stereo-melody."""
    name = Path(model["pretrained"]).name
    if not name.startswith("musicgen"):
        return DEMO_BASE
    stereo, melody = "stereo" in name, "melody" in name
    return {(False, False): "musicgen-small", (False, True): "musicgen-melody",
            (True, False): "musicgen-stereo-small", (True, True): "musicgen-stereo-melody"}[stereo, melody]


def case(recipe: Path, config: dict[str, Any], out: Path, models: dict[str, Path], shards: dict[str, Path]) -> dict:
    trainer, model, data = config["trainer"], config["model"], config["data"]
    multi = trainer.get("strategy") not in (None, "auto") or str(trainer.get("devices")) not in ("1", "auto")
    name = str(recipe.relative_to(ROOT / "recipes"))
    args = [command_of(recipe), "--config", str(recipe), "--trainer.accelerator", "cpu", "--trainer.devices",
            "2" if multi else "1", "--trainer.num_nodes", "1", "--trainer.max_steps", str(STEPS),
            "--trainer.default_root_dir", str(out / name.removesuffix(".yaml"))]
    if command_of(recipe) == "mbd-fit":
        args += ["--model.codec", str(models["encodec"])]
        if model.get("init_from"):  # a released band to fine-tune: the tiny MBD's
            args += ["--model.init_from", str(models["mbd"])]
        kind = "audio"
    else:
        tiny = tiny_musicgen(model)
        args += ["--model.pretrained", str(models[tiny])]
        stereo = "stereo" in tiny or model.get("mono_to_stereo")
        kind = "audio" if stereo else "mono-melody" if "melody" in tiny else "mono"
    args += ["--data.shards", str(shards[kind])]
    if data.get("val_shards"):
        args += ["--data.val_shards", str(shards[kind])]
    if (data.get("num_workers") or 0) > 1:
        args += ["--data.num_workers", "1"]
    callbacks = trainer.get("callbacks") or []
    if callbacks and callbacks[-1]["class_path"].endswith("SampleGenerator"):  # a dotted key sets the last one's
        args += ["--trainer.callbacks.seconds", "1.0"]
    return {"name": name, "args": args, "multi": multi}


def run_cases(cases: list[dict], out: Path, ranks: int) -> dict[str, Any]:
    results, stderr = run_fits(cases, out, ranks)
    failed = {k: v["error"] for k, v in results.items() if not v["ok"]}
    assert not failed, (failed, stderr[-4000:])
    return results


@pytest.mark.slow
def test_every_recipe_runs_two_optimizer_steps_as_written(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                          tiny_lm_dir: Path, tiny_models_dir: Path, tiny_mbd_dir: Path,
                                                          mono_shards: Path, mono_melody_shards: Path,
                                                          audio_shards: Path) -> None:
    assert len(RECIPES) >= 20
    models = {name: tiny_lm_dir / name for name in ("musicgen-small", "musicgen-melody", "musicgen-stereo-small",
                                                    "musicgen-stereo-melody")}
    models |= {"encodec": tiny_models_dir / "encodec_32khz", "mbd": tiny_mbd_dir}
    shards = {"mono": mono_shards, "mono-melody": mono_melody_shards, "audio": audio_shards}
    cases = [case(recipe, resolved(recipe, capsys), tmp_path, models, shards) for recipe in RECIPES]
    results = run_cases([c for c in cases if c["multi"]], tmp_path, 2)
    results |= run_cases([c for c in cases if not c["multi"]], tmp_path, 1)
    assert sorted(results) == sorted(c["name"] for c in cases)
    with capsys.disabled():
        print("\nrecipe: seconds for 2 optimizer steps (tiny model, CPU; 2 gloo ranks where the recipe is multi-GPU)")
        for c in cases:
            print(f"  {c['name']}: {results[c['name']]['seconds']} s{' (2 ranks)' if c['multi'] else ''}")
    for c in cases:
        assert results[c["name"]]["progress"] == [STEPS, STEPS], (c["name"], results[c["name"]])  # optimizer steps
        last = tmp_path / c["name"].removesuffix(".yaml") / "checkpoints" / "last.ckpt"
        if last.is_dir():  # a sharded run's distributed checkpoint
            from finetune.checkpoints.distributed import read_distributed_checkpoint

            step = read_distributed_checkpoint(last)["global_step"]
        else:
            step = torch.load(last, weights_only=True, map_location="cpu")["global_step"]
        assert step == STEPS, c["name"]
