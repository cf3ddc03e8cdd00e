"""PreemptionCheckpoint in one process: SIGUSR1 -> checkpoint at the next optimizer step boundary, then stop; resume."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from finetune.__main__ import main
from tests.finetune.test_fit import SMALL, fit_args


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
