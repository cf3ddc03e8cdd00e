"""Checkpoints outside the step interval: on preemption (then requeue the job), and at the end of training.

    #SBATCH --signal=USR1@90 --requeue        (slurm/fit.sbatch; the callback is in the GPU trainer configs)

Lightning's own SLURM handler saves the checkpoint *inside* the signal handler, which can run mid-backward and never
finish or write a torn file (Lightning #21406), and it writes a new `hpc_ckpt_N` per preemption (#6204). Here the
handler only sets a flag. The ranks agree on it without stalling the GPU: after each optimizer step every rank starts an
asynchronous MAX all-reduce of its flag on a CPU (gloo) group, and reads the previous step's result, long finished, at
the next step boundary; so one rank's signal stops every rank at the same step, one step late, with no device sync (a
single process reads its flag directly). Then every rank takes part in writing `checkpoints/last.ckpt` (temporary name,
fsync, rename: the trainer's `AtomicCheckpointIO`), rank 0 runs `scontrol requeue`, and the run stops. The requeued job
starts the same command with `--ckpt_path last`, so it resumes from that checkpoint with the step count, optimizer,
schedule, EMA and data stream position of the preempted run. `SLURM_RESTART_COUNT` bounds requeue loops.

Ctrl-C (SIGINT) and SIGTERM (`kill`, `scancel`) do the same without the requeue: the run checkpoints at the next step
boundary and stops, and `mgft fit` exits with 130 (143 for SIGTERM), saying where the checkpoint is. A second one exits
at once, leaving the previous checkpoint (whole: writes are atomic).

`FinalCheckpoint` (added to every `mgft fit` by the CLI) writes `last.ckpt` at the end of training when the interval did
not just write it: a run whose `max_steps` is not a multiple of `every_n_train_steps` would otherwise end with its last
steps in no file.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import lightning as L
import torch

log = logging.getLogger(__name__)


def slurm_job_id() -> str | None:
    """The id `scontrol requeue` takes: `ARRAYJOB_TASK` for an array task, else the job id (None off SLURM)."""
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return os.environ.get("SLURM_JOB_ID")


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """`last.ckpt` in the ModelCheckpoint folder, registered as that callback's last checkpoint.

    So the resumed run keeps overwriting it (instead of starting `last-v1.ckpt`).
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    folder = Path(trainer.default_root_dir) / "checkpoints"
    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
    if callbacks and callbacks[0].dirpath:
        folder = Path(callbacks[0].dirpath)
    path = folder / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
    for cb in callbacks:
        if cb.save_last and cb.dirpath and Path(cb.dirpath) == folder:
            cb.last_model_path = str(path)
    return path


class FinalCheckpoint(L.Callback):
    """At the end of training, write `last.ckpt` unless a checkpoint of this very step was just written."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save the final step (collective: every rank gets here at the same step)."""
        step = trainer.global_step
        if step == 0:
            return
        # ModelCheckpoint keeps its last saved step privately; without it this only costs a second save of the step.
        saved = {getattr(cb, "_last_global_step_saved", -1) for cb in trainer.checkpoint_callbacks}
        saved |= {cb.saved_step for cb in trainer.callbacks if isinstance(cb, PreemptionCheckpoint)}
        if step in saved:
            return
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        log.info("final step %d checkpointed to %s", step, path)


PREEMPT, STOP = 1.0, 2.0
"""The flag's values: a preemption warning (checkpoint, requeue) and a stop request (checkpoint, exit); MAX-reduced."""


class PreemptionCheckpoint(L.Callback):
    """On `signal_name`, checkpoint to `checkpoints/last.ckpt` at the next step boundary, requeue, and stop.

    On one of `stop_signals` (Ctrl-C, `kill`), checkpoint the same way and stop without a requeue; `interrupted` then
    names the signal, and `mgft fit` exits non-zero. A second stop signal exits at once.
    """

    def __init__(self, signal_name: str = "SIGUSR1", requeue: bool = True, max_restarts: int = 100,
                 stop_signals: list[str] | None = None) -> None:
        """Keep the signal and requeue settings; the handlers are installed when training starts.

        Args:
            signal_name: The signal SLURM sends before preemption or the time limit (`--signal=USR1@90`).
            requeue: Run `scontrol requeue` after the checkpoint (when running under SLURM).
            max_restarts: Do not requeue once `SLURM_RESTART_COUNT` reaches this (a job that keeps failing).
            stop_signals: Signals that checkpoint and stop without a requeue (default SIGINT and SIGTERM).
        """
        self.signum = signal.Signals[signal_name]
        names = ["SIGINT", "SIGTERM"] if stop_signals is None else stop_signals  # [] keeps Python's own handling
        self.stop_signums = [signal.Signals[name] for name in names]
        self.requeue = requeue
        self.max_restarts = max_restarts
        self.requested = 0.0  # PREEMPT or STOP once a signal came
        self.received: signal.Signals | None = None  # the stop signal that came first
        self.interrupted: str | None = None  # its name, once the run stopped for it
        self.saved_step: int | None = None
        self.saved_path: Path | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._rank = 0
        self._pid = os.getpid()  # the training process; its forked DataLoader workers inherit the handlers
        self._group: Any = None  # a gloo process group for the flag (several ranks)
        self._pending: tuple[Any, torch.Tensor] | None = None  # (all-reduce in flight, its CPU flag)

    def _handler(self, signum: int, frame: Any) -> None:
        # Only a flag: the checkpoint is written from the training loop, never from inside the handler.
        if os.getpid() != self._pid:
            return  # a DataLoader worker forked from the training process: it serves batches until told to stop
        if signum == self.signum:
            self.requested = max(self.requested, PREEMPT)
            return
        if self.received is not None:  # the second Ctrl-C: leave now; the last checkpoint on disk is whole
            os.write(2, f"\n{signal.Signals(signum).name} again: exiting now without a checkpoint\n".encode())
            os._exit(128 + signum)
        self.received = signal.Signals(signum)
        self.requested = STOP
        if self._rank == 0:
            os.write(2, f"\n{self.received.name}: checkpointing at the next step boundary, then stopping "
                        "(again to exit now without it)\n".encode())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Install the signal handlers for the training loop; they only set a flag."""
        self._rank, self._pid = trainer.global_rank, os.getpid()
        for signum in (self.signum, *self.stop_signums):
            self._previous[signum] = signal.signal(signum, self._handler)
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            # Collective: every rank creates it. gloo on CPU tensors never touches the accelerator's streams.
            self._group = torch.distributed.new_group(backend="gloo")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Restore the signal handlers that were there before training; let the last flag exchange finish."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None
        for signum, previous in self._previous.items():
            if previous is not None:
                signal.signal(signum, previous)
        self._previous = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """After a signal on any rank: checkpoint on every rank at this step boundary, requeue (rank 0) and stop."""
        if (batch_idx + 1) % max(1, trainer.accumulate_grad_batches):
            return  # mid-accumulation: not an optimizer step boundary, nothing to checkpoint yet
        request = self._agreed_request()
        if not request:
            return
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)  # collective: every rank calls it; written atomically
        self.saved_step, self.saved_path = trainer.global_step, path
        trainer.should_stop = True
        # Lightning validates before an early stop, which would spend the grace period on validation and rewrite
        # last.ckpt (ModelCheckpoint saves after validation) with the epoch marked complete.
        trainer.limit_val_batches = 0
        if request == STOP:
            self.interrupted = (self.received or signal.SIGTERM).name  # another rank's signal: named as a kill
            return
        log.warning("preemption signal: checkpoint at step %d written to %s", trainer.global_step, path)
        if trainer.is_global_zero:
            self._requeue()

    def _agreed_request(self) -> float:
        """The largest request of any rank (0, PREEMPT or STOP), as all ranks agree at this step boundary."""
        if self._group is None:
            return self.requested
        requested = 0.0
        if self._pending is not None:
            work, flag = self._pending
            work.wait()  # started a whole step ago: done by now, and CPU-only
            requested = float(flag.item())  # a CPU tensor: no device sync
        flag = torch.tensor([self.requested])
        work = torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self._group, async_op=True)
        self._pending = (work, flag)
        return requested

    def _requeue(self) -> None:
        job = slurm_job_id()
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        if not self.requeue or job is None:
            return
        if restarts >= self.max_restarts:
            log.error("not requeueing job %s: it has restarted %d times (max_restarts)", job, restarts)
            return
        log.warning("requeueing SLURM job %s (restart %d)", job, restarts + 1)
        subprocess.run(["scontrol", "requeue", job], check=False)
