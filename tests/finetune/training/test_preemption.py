"""PreemptionCheckpoint in one process: SIGUSR1 -> checkpoint at the next optimizer step boundary, then stop; resume."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from finetune.__main__ import main
from tests.finetune.test_fit import ROOT, SMALL, fit_args


def test_usr1_mid_accumulation_checkpoints_at_the_next_optimizer_step_and_stops(tmp_path: Path, tiny_lm_dir: Path,
                                                                                mono_shards: Path) -> None:
    # The signal comes after micro-batch 3 (the end of optimizer step 2, once the preemption callback has looked);
    # the next boundary seen is micro-batch 4, the first half of step 3: the checkpoint must wait for step 3's end.
    main(fit_args(SMALL, tiny_lm_dir / "musicgen-small", mono_shards, tmp_path, "--trainer.logger", "false",
                  "--trainer.max_steps", "20", "--trainer.accumulate_grad_batches", "2",
                  "--trainer.callbacks+=tests.finetune.helpers.SignalAt", "--trainer.callbacks.batch", "3"))
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    loop = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]
    assert loop["completed"] == 2 * ckpt["global_step"]  # no micro-batch of a half-done step in the checkpoint
    assert not (tmp_path / "checkpoints" / "step000010.ckpt").exists()  # the run stopped


# 7 batches per epoch: the signal after step 11 checkpoints step 12, batch 5 of epoch 1's 7.
# Decoder dropout on: its draws come from torch's generator, which a checkpoint does not hold.
COMMON = ("--trainer.logger", "false", "--trainer.max_steps", "16", "--data.steps_per_epoch", "7",
          "--model.dropout", "0.1")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_lm_dir: Path, mono_shards: Path) -> dict:
    """The uninterrupted 16-step run's last checkpoint."""
    root = tmp_path_factory.mktemp("reference")
    main(fit_args(SMALL, tiny_lm_dir / "musicgen-small", mono_shards, root, *COMMON))
    return torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.parametrize("signal_name", ["SIGUSR1", "SIGINT", "SIGTERM"])
def test_a_signal_mid_epoch_then_resume_reaches_the_uninterrupted_weights_bit_for_bit(
        signal_name: str, reference: dict, tmp_path: Path, tiny_lm_dir: Path, mono_shards: Path,
        capsys: pytest.CaptureFixture) -> None:
    """SIGUSR1 (SLURM's warning) checkpoints, requeues and ends the run with status 0; Ctrl-C and SIGTERM checkpoint
    the same way and end it with 128 + the signal, saying where the checkpoint is."""
    pretrained = tiny_lm_dir / "musicgen-small"
    run = tmp_path / "preempted"
    args = fit_args(SMALL, pretrained, mono_shards, run, *COMMON,
                    "--trainer.callbacks+=tests.finetune.helpers.SignalAt", "--trainer.callbacks.step", "11",
                    "--trainer.callbacks.signal_name", signal_name)
    if signal_name == "SIGUSR1":
        main(args)
    else:
        with pytest.raises(SystemExit) as stopped:
            main(args)
        assert stopped.value.code == 128 + signal.Signals[signal_name]
        last = capsys.readouterr().err.strip().splitlines()[-1]
        path = run / "checkpoints" / "last.ckpt"
        assert last == (f"mgft fit: stopped by {signal_name} at step 12, checkpointed to {path}; to go on, run the "
                        "same command with --ckpt_path last")
    preempted = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert preempted["global_step"] == 12
    assert preempted["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 5}]
    main(fit_args(SMALL, pretrained, mono_shards, run, *COMMON, "--ckpt_path", "last"))
    got = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert got["global_step"] == reference["global_step"] == 16
    moved = [k for k, v in reference["state_dict"].items() if not torch.equal(v, preempted["state_dict"][k])]
    assert moved, "the last 4 steps changed the weights: the comparison below is not vacuous"
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][key], value, rtol=0, atol=0, msg=key)
    for key, value in reference["mgft"]["ema"]["shadow"].items():
        torch.testing.assert_close(got["mgft"]["ema"]["shadow"][key], value, rtol=0, atol=0, msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["single", "fsdp2"])
def test_a_preemption_around_the_interval_save_and_during_validation_resumes_exactly(
        strategy: str, tmp_path: Path, tiny_lm_dir: Path, mono_shards: Path) -> None:
    """The flag set (as SIGUSR1's handler sets it) after the step before, of and after the interval save (every 10
    steps), and during the validation that follows step 10; each run resumed with `--ckpt_path last` ends on the
    uninterrupted run's weights and EMA, bit for bit. FSDP2 (2 gloo ranks) agrees on the flag one step late.
    The longer sweep over every step of a 17-step run is `bench/preemption_sweep.py`."""
    from finetune.checkpoints.safe_load import safe_torch_load
    from tests.helpers import run_fits

    recipe = "recipes/tiny/small-fsdp.yaml" if strategy == "fsdp2" else SMALL
    common = ["--config", str(ROOT / recipe), "--model.pretrained", str(tiny_lm_dir / "musicgen-small"),
              "--data.shards", str(mono_shards), "--data.val_shards", str(mono_shards), "--trainer.logger", "false",
              "--trainer.max_steps", "12", "--model.dropout", "0.1"]
    late = 1 if strategy == "fsdp2" else 0  # the ranks' agreement costs a step
    triggers = {"before": (8 - late, "batch_end"), "of": (9 - late, "batch_end"), "after": (10 - late, "batch_end"),
                "validation": (10, "validation")}
    cases = [{"name": "reference", "args": ["fit", *common, "--trainer.default_root_dir", str(tmp_path / "ref")]}]
    for name, (step, where) in triggers.items():
        root = str(tmp_path / name)
        cases += [{"name": name, "args": ["fit", *common, "--trainer.default_root_dir", root,
                                          "--trainer.callbacks+=tests.finetune.helpers.PreemptAt",
                                          "--trainer.callbacks.step", str(step), "--trainer.callbacks.where", where]},
                  {"name": f"{name}-resumed", "args": ["fit", *common, "--trainer.default_root_dir", root,
                                                       "--ckpt_path", "last"]}]
    results, stderr = run_fits(cases, tmp_path, 2 if strategy == "fsdp2" else 1)
    assert all(r["ok"] for r in results.values()), ({k: r.get("error") for k, r in results.items()}, stderr[-3000:])
    stopped = {name: results[name]["step"] for name in triggers}
    assert stopped == {"before": 9, "of": 10, "after": 11, "validation": 11 + late}, stopped
    reference = safe_torch_load(tmp_path / "ref" / "checkpoints" / "last.ckpt")
    for name in triggers:
        got = safe_torch_load(tmp_path / name / "checkpoints" / "last.ckpt")
        assert got["global_step"] == reference["global_step"] == 12, name
        for group, key in (("state_dict", None), ("mgft", "ema")):
            ours = got[group] if key is None else got[group][key]["shadow"]
            theirs = reference[group] if key is None else reference[group][key]["shadow"]
            differing = [k for k, v in theirs.items() if not torch.equal(ours[k], v)]
            assert not differing, (name, group, len(differing), differing[:3])
