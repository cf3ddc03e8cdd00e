"""PreemptionCheckpoint in one process: SIGUSR1 -> checkpoint at the next optimizer step boundary, then stop."""

from __future__ import annotations

from pathlib import Path

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
