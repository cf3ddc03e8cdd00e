"""`mgft fit` end to end on prepped shards: resume after kill -9, 2-process DDP, wandb offline, recipes, NaN skips."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from finetune.__main__ import main
from tests.finetune.helpers import trainable_state, wandb_history_keys

ROOT = Path(__file__).resolve().parents[2]
SMALL = "recipes/tiny/small-full.yaml"
LORA = "recipes/tiny/stereo-melody-lora.yaml"


def fit_args(recipe: str, pretrained: Path, shards: Path, root: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(ROOT / recipe), "--model.pretrained", str(pretrained), "--data.shards",
            str(shards), "--trainer.default_root_dir", str(root), *extra]


def run_cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "finetune", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, **kw)


def test_every_recipe_parses(capsys: pytest.CaptureFixture) -> None:
    recipes = sorted((ROOT / "recipes").rglob("*.yaml"))
    assert len(recipes) >= 2
    for recipe in recipes:
        lines = recipe.read_text().splitlines()
        header = [line for line in lines[: next(i for i, x in enumerate(lines) if not x.startswith("#"))]]
        assert header and any("Cost" in line for line in header), recipe  # the command and what it costs
        command = "mbd-fit" if any("mgft mbd-fit" in line for line in header) else "fit"
        assert any(f"mgft {command}" in line for line in header), recipe
        with pytest.raises(SystemExit) as e:
            main([command, "--config", str(recipe), "--print_config"])
        assert e.value.code in (0, None), recipe
        resolved = yaml.safe_load(capsys.readouterr().out)
        # The trainer fragment the recipe includes survives its dotted overrides (every fragment sets max_steps).
        assert resolved["trainer"]["max_steps"] > 0 and resolved["trainer"]["accelerator"] != "auto", recipe
        assert resolved["model"] and resolved["data"], recipe


def test_unknown_config_key_fails_naming_it_before_any_model_is_built(tmp_path: Path) -> None:
    out = run_cli(["fit", "--config", str(ROOT / SMALL), "--model.pretrained", str(tmp_path / "does-not-exist"),
                   "--model.lora_rnak", "4", "--trainer.default_root_dir", str(tmp_path / "run")])
    assert out.returncode != 0
    assert "lora_rnak" in out.stderr
    assert not (tmp_path / "run").exists()


def test_an_epoch_that_is_not_whole_optimizer_steps_fails_before_any_model_is_built(tmp_path: Path) -> None:
    # The stream's position on resume counts epochs in optimizer steps; 10 batches do not make whole steps of 3.
    with pytest.raises(ValueError, match=r"data.steps_per_epoch \(10\).*accumulate_grad_batches \(3\)"):
        main(fit_args(SMALL, tmp_path / "does-not-exist", tmp_path / "no-shards", tmp_path / "run",
                      "--trainer.accumulate_grad_batches", "3"))
    assert not (tmp_path / "run").exists()


def _as_schema_1(shards: Path, out: Path) -> int:
    """Rewrite shards as schema 1 wrote them (valid frames counted with a ceiling); returns how many tails changed."""
    import io
    import tarfile

    out.mkdir()
    changed = 0
    for shard in sorted(shards.glob("shard-*.tar")):
        with tarfile.open(shard) as src, tarfile.open(out / shard.name, "w") as dst:
            for member in src.getmembers():
                data = src.extractfile(member).read()
                if member.name.endswith(".json"):
                    info = json.loads(data)
                    samples = round((info["end_seconds"] - info["start_seconds"]) * 32000)
                    ceil = min(-(-samples // 640), info["num_frames"])
                    changed += ceil != info["valid_frames"]
                    info.update(schema_version=1, valid_frames=ceil)
                    data = json.dumps(info).encode()
                member.size = len(data)
                dst.addfile(member, io.BytesIO(data))
    return changed


def test_shards_of_schema_1_still_train_with_whole_frame_counts(tmp_path: Path, tiny_lm_dir: Path,
                                                                 mono_shards: Path) -> None:
    from finetune.lm.data import MusicGenData

    old = tmp_path / "old"
    assert _as_schema_1(mono_shards, old) > 0  # the catalog has tails with a partial last frame
    read_old = {k: v for batch in MusicGenData(str(old), val_shards=str(old), batch_size=4).val_dataset(0, 1)
                for k, v in zip(batch["keys"], batch["valid_frames"].tolist())}
    read_new = {k: v for batch in MusicGenData(str(mono_shards), val_shards=str(mono_shards), batch_size=4)
                .val_dataset(0, 1) for k, v in zip(batch["keys"], batch["valid_frames"].tolist())}
    assert read_old == read_new  # both counts are read as whole frames
    main(fit_args(SMALL, tiny_lm_dir / "musicgen-small", old, tmp_path / "run", "--trainer.logger", "false",
                  "--trainer.max_steps", "2"))
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


@pytest.mark.slow
def test_kill_9_and_resume_reaches_the_uninterrupted_weights(tmp_path: Path, tiny_lm_dir: Path,
                                                               mono_shards: Path) -> None:
    # 7 batches per epoch: the step-10 checkpoint it resumes from is mid-epoch (batch 3 of epoch 1).
    common = ("--trainer.logger", "false", "--trainer.max_steps", "20", "--data.steps_per_epoch", "7")
    reference = tmp_path / "reference"
    done = run_cli(fit_args(SMALL, tiny_lm_dir / "musicgen-small", mono_shards, reference, *common))
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "killed"
    args = fit_args(SMALL, tiny_lm_dir / "musicgen-small", mono_shards, killed, *common,
                    "--trainer.callbacks+=tests.finetune.helpers.SlowSteps", "--trainer.callbacks.seconds", "0.3")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "finetune", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = killed / "checkpoints" / "step000010.ckpt"
    deadline = time.time() + 240
    history = killed / "metrics.jsonl"

    def logged_past_the_checkpoint() -> bool:  # kill once a step after the checkpoint is in metrics.jsonl
        rows = [json.loads(x) for x in history.read_text().splitlines()] if history.exists() else []
        return first.exists() and any(r["step"] > 10 for r in rows)

    while not logged_past_the_checkpoint() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoints" / "step000020.ckpt").exists()

    resumed = run_cli(fit_args(SMALL, tiny_lm_dir / "musicgen-small", mono_shards, killed, *common,
                               "--ckpt_path", "last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)
    got = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    assert got["global_step"] == ref["global_step"] == 20
    assert got["state_dict"].keys() == ref["state_dict"].keys()
    for key, value in ref["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][key], value, rtol=0, atol=0, msg=key)
    for key, value in ref["mgft"]["ema"]["shadow"].items():
        torch.testing.assert_close(got["mgft"]["ema"]["shadow"][key], value, rtol=0, atol=0, msg=key)
    # The steps the killed run logged after its checkpoint were trained again: metrics.jsonl holds each step once.
    logged = [json.loads(x)["step"] for x in history.read_text().splitlines() if "train/loss" in x]
    assert logged == list(range(1, 21))


@pytest.mark.slow
def test_two_process_ddp_trains_with_disjoint_data_and_shared_cfg(tmp_path: Path, tiny_lm_dir: Path,
                                                                  mono_shards: Path) -> None:
    """Two gloo ranks: disjoint samples, the same CFG draws, and a step whose gradients are non-finite on rank 1
    only (poisoned after the all-reduce) skipped by both ranks, leaving weights and AdamW state untouched."""
    from tests.finetune.helpers import assert_same_state

    record, states = tmp_path / "record", tmp_path / "states"
    out = run_cli(fit_args(SMALL, tiny_lm_dir / "musicgen-small", mono_shards, tmp_path / "run",
                           "--trainer.logger", "false", "--trainer.max_steps", "6", "--trainer.devices", "2",
                           "--trainer.strategy", "ddp", "--model.cfg_dropout", "0.5",
                           "--trainer.callbacks+=tests.finetune.helpers.BatchRecorder",
                           "--trainer.callbacks.out_dir", str(record),
                           "--trainer.callbacks+=tests.finetune.helpers.NaNInjector",
                           "--trainer.callbacks.steps", "[3]", "--trainer.callbacks.rank", "1",
                           "--trainer.callbacks+=tests.finetune.helpers.StateRecorder",
                           "--trainer.callbacks.out_dir", str(states), "--trainer.callbacks.steps", "[3, 4, 5]"))
    assert out.returncode == 0, out.stderr[-3000:]
    saved = {(r, n): torch.load(states / f"rank{r}-step{n}.pt", weights_only=True) for r in (0, 1) for n in (3, 4, 5)}
    for r in (0, 1):
        assert_same_state(saved[r, 3], saved[r, 4])  # the 4th step (global_step 3 in backward) was skipped
        with pytest.raises(AssertionError):
            assert_same_state(saved[r, 4], saved[r, 5])  # and training went on
    assert_same_state(saved[0, 5], saved[1, 5])  # the ranks stayed in lockstep
    rows = {r: [json.loads(x) for x in (record / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)}
    assert [x["step"] for x in rows[0]] == [x["step"] for x in rows[1]] == list(range(1, 7))
    assert {x["world_size"] for x in rows[0] + rows[1]} == {2}
    assert rows[0][0]["pid"] != rows[1][0]["pid"]
    keys = [{k for x in rows[r] for k in x["keys"]} for r in (0, 1)]
    assert keys[0] and keys[1] and keys[0].isdisjoint(keys[1])
    cfg = [[x["cfg_null"] for x in rows[r]] for r in (0, 1)]
    assert cfg[0] == cfg[1] and len(set(cfg[0])) == 2, cfg
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_lora_run_logs_to_wandb_offline_and_checkpoints_only_adapters(tmp_path: Path, tiny_lm_dir: Path,
                                                                       stereo_melody_shards: Path) -> None:
    lora_root, full_root = tmp_path / "lora", tmp_path / "full"
    main(fit_args(LORA, tiny_lm_dir / "musicgen-stereo-melody", stereo_melody_shards, lora_root,
                  "--data.val_shards", str(stereo_melody_shards), "--trainer.max_steps", "10",
                  "--trainer.val_check_interval", "10", "--model.lora_targets", "null"))  # default targets
    run_dir = next((lora_root / "wandb").glob("offline-run-*"))
    logged = wandb_history_keys(run_dir)
    assert {"train/loss", "train/ce_q0", "train/ce_q7", "train/lr", "train/grad_norm", "val/ce", "val/ppl"} <= logged
    assert {"samples/audio/audio", "samples/spectrogram/filenames", "samples/chroma/filenames"} <= logged
    assert list((run_dir / "files" / "media" / "audio").rglob("*.wav"))
    assert list((run_dir / "files" / "media" / "images").rglob("*.png"))
    assert (lora_root / "config.yaml").exists()

    main(fit_args(LORA, tiny_lm_dir / "musicgen-stereo-melody", stereo_melody_shards, full_root,
                  "--model.lora_rank", "0", "--trainer.max_steps", "2", "--trainer.logger", "false",
                  "--data.val_shards", "null"))
    lora_state = trainable_state(lora_root / "checkpoints" / "last.ckpt")
    full_state = trainable_state(full_root / "checkpoints" / "last.ckpt")
    assert lora_state and all("lora_" in k for k in lora_state)
    assert not any("lora_" in k for k in full_state) and len(full_state) > len(lora_state)
    lora_size = (lora_root / "checkpoints" / "last.ckpt").stat().st_size
    full_size = (full_root / "checkpoints" / "last.ckpt").stat().st_size
    assert lora_size < 0.1 * full_size, (lora_size, full_size)


def test_non_finite_steps_are_skipped_then_stop_the_run(tmp_path: Path, tiny_lm_dir: Path, mono_shards: Path) -> None:
    base = fit_args(SMALL, tiny_lm_dir / "musicgen-small", mono_shards, tmp_path / "ok", "--trainer.logger", "false",
                    "--trainer.max_steps", "6", "--trainer.callbacks+=tests.finetune.helpers.NaNInjector")
    main([*base, "--trainer.callbacks.steps", "[2, 3]"])
    ckpt = torch.load(tmp_path / "ok" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6 and ckpt["mgft"]["nonfinite_total"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())

    stop = fit_args(SMALL, tiny_lm_dir / "musicgen-small", mono_shards, tmp_path / "stop", "--trainer.logger",
                    "false", "--trainer.max_steps", "6", "--model.max_nonfinite_steps", "3",
                    "--trainer.callbacks+=tests.finetune.helpers.NaNInjector", "--trainer.callbacks.steps", "[1, 2, 3]")
    with pytest.raises(RuntimeError, match="3 consecutive steps"):
        main(stop)


def test_the_last_step_is_checkpointed_whatever_the_interval(tmp_path: Path, tiny_lm_dir: Path,
                                                              mono_shards: Path) -> None:
    """max_steps 13 with checkpoints every 10 steps: `last.ckpt` must hold step 13, not step 10."""
    main(fit_args(SMALL, tiny_lm_dir / "musicgen-small", mono_shards, tmp_path, "--trainer.logger", "false",
                  "--trainer.max_steps", "13"))
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 13
    assert (tmp_path / "checkpoints" / "step000010.ckpt").exists()
    # The final checkpoint is a resumable one: a longer schedule continues from step 13.
    main(fit_args(SMALL, tiny_lm_dir / "musicgen-small", mono_shards, tmp_path, "--trainer.logger", "false",
                  "--trainer.max_steps", "16", "--ckpt_path", "last"))
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 16


def test_fit_trains_on_a_weighted_mix_and_refuses_a_bad_one_first(
        tmp_path: Path, tiny_lm_dir: Path, mono_shards: Path, stereo_melody_shards: Path) -> None:
    """`data.shards: {SET: weight, ...}` trains through `mgft fit`; every set is checked against the model before
    anything is built: a set of the wrong channel count, or a weight of 0, stops the run naming it."""
    copy = tmp_path / "copy"
    shutil.copytree(mono_shards, copy)
    mix = json.dumps({str(mono_shards): 0.7, str(copy): 0.3})
    main(fit_args(SMALL, tiny_lm_dir / "musicgen-small", mono_shards, tmp_path / "run", "--data.shards", mix,
                  "--trainer.logger", "false", "--trainer.max_steps", "2"))
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    wrong = json.dumps({str(mono_shards): 0.5, str(stereo_melody_shards): 0.5})
    with pytest.raises(ValueError, match=f"data.shards {stereo_melody_shards} hold 8 codebooks"):
        main(fit_args(SMALL, tiny_lm_dir / "musicgen-small", mono_shards, tmp_path / "bad", "--data.shards", wrong))
    zero = json.dumps({str(mono_shards): 1.0, str(copy): 0})
    with pytest.raises(ValueError, match="the weight of .* must be a positive number"):
        main(fit_args(SMALL, tiny_lm_dir / "musicgen-small", mono_shards, tmp_path / "zero", "--data.shards", zero))
    assert not (tmp_path / "bad").exists() and not (tmp_path / "zero").exists()


def test_a_checkpoint_trained_with_other_model_settings_is_refused_naming_them(
        tmp_path: Path, tiny_lm_dir: Path, mono_shards: Path) -> None:
    """LightningCLI would take the checkpoint's model settings over the config's without a word (a stereo-melody
    LoRA checkpoint turns a text recipe into that model); `--resume_settings` says which side wins."""
    small = tiny_lm_dir / "musicgen-small"
    main(fit_args(SMALL, small, mono_shards, tmp_path / "a", "--trainer.logger", "false", "--trainer.max_steps", "2"))
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    other = fit_args(SMALL, small, mono_shards, tmp_path / "b", "--trainer.logger", "false", "--trainer.max_steps",
                     "4", "--model.lr", "0.001", "--model.lora_rank", "4", "--ckpt_path", str(ckpt))
    with pytest.raises(ValueError, match=rf"--ckpt_path {ckpt} was trained with other model settings "
                                         r"\(model.lora_rank: 4 here, 0 in the checkpoint; model.lr: 0.001 here, "
                                         r"0.003 in the checkpoint\)"):
        main(other)
    assert not (tmp_path / "b").exists()  # refused before any model or run folder
    main([*other, "--resume_settings", "checkpoint"])  # trains on as the checkpoint was trained
    resumed = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    assert resumed["model"]["lr"] == 0.003 and resumed["model"]["lora_rank"] == 0
    assert torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    # A deliberate change of a training setting on resume: keep the config's.
    main([*other[:-4], "--trainer.default_root_dir", str(tmp_path / "c"), "--ckpt_path", str(ckpt),
          "--resume_settings", "config"])
    assert yaml.safe_load((tmp_path / "c" / "config.yaml").read_text())["model"]["lr"] == 0.001
