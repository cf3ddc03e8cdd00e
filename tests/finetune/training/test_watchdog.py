"""The watchdog ends a run whose training step hangs: all stacks dumped, exit status 75 (requeue-worthy)."""

from __future__ import annotations

from pathlib import Path

from finetune.training.watchdog import WATCHDOG_EXIT_CODE
from tests.finetune.test_fit import SMALL, fit_args, run_cli


def test_watchdog_fires_on_a_hung_step(tmp_path: Path, tiny_lm_dir: Path, mono_shards: Path) -> None:
    out = run_cli(fit_args(SMALL, tiny_lm_dir / "musicgen-small", mono_shards, tmp_path / "run",
                           "--trainer.logger", "false", "--trainer.max_steps", "20",
                           "--trainer.callbacks+=finetune.training.watchdog.Watchdog",
                           "--trainer.callbacks.timeout_s", "4",
                           "--trainer.callbacks+=tests.finetune.helpers.HangAt", "--trainer.callbacks.step", "3"),
                  timeout=300)
    assert out.returncode == WATCHDOG_EXIT_CODE, out.stderr[-3000:]
    assert "no training progress" in out.stderr
    dump = (tmp_path / "run" / "watchdog-rank0.txt").read_text()
    assert "Thread" in dump and "on_train_batch_end" in dump  # the hung frame is in the dump
