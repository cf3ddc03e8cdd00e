"""A training watchdog: no progress for `timeout_s` -> dump every thread's stack and exit non-zero.

A hung collective (an NCCL/gloo all-reduce one rank never joins), a stuck data worker or a dead filesystem otherwise
burns the whole allocation. As audiocraft's deadlock detector, a daemon thread expects a tick after every training
batch; when none comes for `timeout_s`, it writes all Python stacks to stderr and to `watchdog-rank{R}.txt` in the run
folder, then ends the process with `exit_code`, so the job fails fast and `slurm/fit.sbatch` requeues it.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L

WATCHDOG_EXIT_CODE = 75
"""Exit status of a process the watchdog ended (EX_TEMPFAIL: worth retrying); slurm/fit.sbatch requeues on it."""


class Watchdog(L.Callback):
    """Ends a run that makes no training progress for `timeout_s` seconds."""

    def __init__(self, timeout_s: float = 1800.0, exit_code: int = WATCHDOG_EXIT_CODE, poll_s: float = 1.0) -> None:
        """Keep the timeout settings; the watching thread starts with training.

        Args:
            timeout_s: Seconds without a finished training batch before the process is ended. Must cover the
                slowest legitimate gap: the first batch (model load, compile), validation, checkpoint writes.
            exit_code: Exit status when it fires.
            poll_s: How often the thread checks.
        """
        self.timeout_s = timeout_s
        self.exit_code = exit_code
        self.poll_s = poll_s
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dump_path: Path | None = None

    def tick(self) -> None:
        """Record progress now: the idle time counts from here."""
        self._last = time.monotonic()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the watching thread from a fresh tick; its dump goes to `watchdog-rank{R}.txt` in the run folder."""
        self._dump_path = Path(trainer.default_root_dir) / f"watchdog-rank{trainer.global_rank}.txt"
        self.tick()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="mgft-watchdog", daemon=True)
        self._thread.start()

    def on_train_batch_end(self, *args: Any) -> None:
        """A finished training batch is progress."""
        self.tick()

    def on_validation_batch_end(self, *args: Any) -> None:
        """A finished validation batch is progress too, so only the gaps within validation count, not its length."""
        self.tick()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Stop the watching thread when training ends."""
        self._stop.set()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Stop the watching thread when training raises, so the error, not a watchdog exit, ends the run."""
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            idle = time.monotonic() - self._last
            if idle > self.timeout_s:
                self._fire(idle)

    def _fire(self, idle: float) -> None:
        message = (f"mgft watchdog: no training progress for {idle:.0f} s (timeout {self.timeout_s:g} s); "
                   f"dumping all stacks and exiting with status {self.exit_code}\n")
        sys.stderr.write(message)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        if self._dump_path is not None:
            self._dump_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self._dump_path, "w") as f:
                f.write(message)
                faulthandler.dump_traceback(file=f, all_threads=True)
        sys.stderr.flush()
        os._exit(self.exit_code)  # the main thread is stuck; only a hard exit ends the process
