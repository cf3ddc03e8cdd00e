"""Where a train stream stands, kept in checkpoints: a run resumed mid-epoch trains on the uninterrupted run's batches.

A train loader yields a fixed number of batches per epoch from a stream that is a pure function of (seed, rank,
worker, epoch). So its position is two numbers: the epoch it draws, and how many of that epoch's batches the trainer
has trained on. Lightning saves a train loader's `state_dict()` in the checkpoint (`loops.fit_loop.combined_loader`)
and hands it back to `load_state_dict()` before the resumed run's first `iter()`; on a mid-epoch restart it then runs
only the epoch's remaining batches. The loaders (`finetune.lm.data.StreamLoader`, `finetune.mbd.data.CropLoader`) keep
a `StreamPosition` and pass the batches to skip to their dataset, which replays and drops them in the workers.

The count is Lightning's `batch_progress.current.processed`, not the batches the loader has yielded: the trainer
fetches one batch ahead and the loader's workers prefetch more, so what the loader handed out is not what trained.

With `W` workers a `DataLoader` over an iterable dataset takes batch `i` of the epoch from worker `i % W`, always
starting from worker 0. A resumed iterator that must start at batch `c` therefore relabels its workers: worker `w`
plays the original worker `(c + w) % W` and drops that worker's first `(c + w) // W` batches (`resumed_worker`).
"""

from __future__ import annotations

from typing import Any

import lightning as L


def batches_trained_this_epoch(trainer: L.Trainer) -> int:
    """Batches of the current epoch whose training step has run (the one in flight at `on_train_batch_end` counts)."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)


def resumed_worker(worker: int, num_workers: int, skip_batches: int) -> tuple[int, int]:
    """(the worker this one stands in for, how many of that worker's batches to drop) when the epoch starts late.

    Args:
        worker: This worker's id in the resumed loader.
        num_workers: Workers of the loader (1 for `num_workers=0`); the same before and after the resume.
        skip_batches: Batches of the epoch already trained, `c`.

    Returns:
        `((c + worker) % W, (c + worker) // W)`: the resumed loader's batch `j` comes from worker `j % W`, and must be
        the original batch `c + j`, which came from worker `(c + j) % W` as its `(c + j) // W`-th batch.
    """
    shifted = skip_batches + worker
    return shifted % num_workers, shifted // num_workers


class StreamPosition:
    """The epoch a loader's live iterator draws and, from a checkpoint, the batches of it already trained.

    Args:
        trainer_fn: Returns the attached trainer or None (data modules attach theirs after the loader is built).
    """

    def __init__(self, trainer_fn: Any) -> None:
        self.trainer_fn = trainer_fn
        self.epoch: int | None = None  # the epoch of the iterator started last
        self._restored: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """`{"epoch", "batches"}`: the epoch being drawn and the batches of it trained so far (saved by Lightning)."""
        trainer = self.trainer_fn()
        return {"epoch": self.epoch, "batches": batches_trained_this_epoch(trainer) if trainer is not None else 0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Keep a checkpoint's position for the next `start`."""
        self._restored = dict(state)

    def start(self, epoch: int | None) -> int:
        """A new iterator of `epoch` starts: the batches of it to skip (0 unless a checkpoint stopped inside it).

        A restored position applies once, to the epoch it was saved in; a checkpoint written after an epoch's last
        batch resumes at the next epoch, from its start.
        """
        self.epoch = epoch
        restored, self._restored = self._restored, None
        if restored is None or restored.get("epoch") != epoch:
            return 0
        return int(restored.get("batches", 0))
