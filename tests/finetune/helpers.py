"""Test-only Lightning callbacks, loaded by `mgft fit` through `--trainer.callbacks+=tests.finetune.helpers.X`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch

from finetune.lm.data import MusicGenData
from finetune.lm.module import MusicGenLM


class BatchRecorder(L.Callback):
    """Appends, per rank, each step's sample keys and CFG decision to `out_dir/rank{R}.jsonl`."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        row = {"step": trainer.global_step, "keys": list(batch["keys"]), "cfg_null": bool(pl_module.last_cfg_null),
               "world_size": trainer.world_size, "pid": os.getpid(),
               "lr": trainer.optimizers[0].param_groups[0]["lr"],
               "loss": float(outputs["loss"]) if isinstance(outputs, dict) and "loss" in outputs else None,
               # Under FSDP2 a parameter is a DTensor: this rank's shard.
               "param_sum": float(sum(getattr(p, "_local_tensor", p).detach().double().sum()
                                      for p in pl_module.parameters() if p.requires_grad))}
        with open(self.out_dir / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


class NaNInjector(L.Callback):
    """Poisons the gradients at the given optimizer steps, as an fp16 overflow or a bad batch would (on one rank
    only, when `rank` is given: under DDP that is after the gradient all-reduce, so the other ranks' stay finite)."""

    def __init__(self, steps: list[int], rank: int | None = None) -> None:
        self.steps = set(steps)
        self.rank = rank

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step in self.steps and self.rank in (None, trainer.global_rank):
            for p in pl_module.parameters():
                if p.grad is not None:
                    p.grad.fill_(float("nan"))
                    break


class SlowSteps(L.Callback):
    """Sleeps after each step so a test can kill the run between two checkpoints."""

    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args: Any) -> None:
        import time

        time.sleep(self.seconds)


def trainable_state(ckpt_path: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]


def wandb_history_keys(run_dir: Path, wait_s: float = 60.0) -> set[str]:
    """Metric names in an offline wandb run's `run-*.wandb` file, once the file holds the run's exit record.

    wandb's writer can still be flushing the file when `finish()` returns on a loaded machine (seen in CI: an
    empty read, complete moments later), so the file is re-read until its exit record is there, for up to `wait_s`.
    """
    import time

    deadline = time.monotonic() + wait_s
    while True:
        keys, complete = _read_wandb_history(next(run_dir.glob("run-*.wandb")).read_bytes())
        if complete or time.monotonic() > deadline:
            return keys
        time.sleep(0.5)


def _read_wandb_history(data: bytes) -> tuple[set[str], bool]:
    """(history keys, whether the exit record is there) of a `.wandb` file's bytes.

    The file is a LevelDB-style log (32 KiB blocks; each record chunk has a 7-byte header: crc32, length, type
    FULL/FIRST/MIDDLE/LAST) of `wandb_internal_pb2.Record` protobufs; wandb 0.31 no longer ships a reader.
    """
    import struct

    from wandb.proto import wandb_internal_pb2

    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        payload, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            break
        if kind == 1:
            records.append(payload)
        elif kind == 2:
            pending = payload
        elif kind == 3:
            pending += payload
        elif kind == 4:
            records.append(pending + payload)
    keys: set[str] = set()
    complete = False
    for raw in records:
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(raw)
        except Exception:  # a record still being written: the file is not complete yet
            return keys, False
        kind = record.WhichOneof("record_type")
        if kind == "history":
            keys |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        complete |= kind == "exit"
    return keys, complete


class HangAt(L.Callback):
    """Blocks forever after the given step, as a collective that one rank never joins would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        import time

        while trainer.global_step >= self.step:
            time.sleep(0.5)


class WeightRecorder(L.Callback):
    """Saves the trainable weights after every optimizer step to `out_dir/step{N}.pt` (N = the trainer's step)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        weights = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}
        torch.save(weights, self.out_dir / f"step{trainer.global_step}.pt")


class StateRecorder(L.Callback):
    """Saves the trainable weights and the optimizer state after the given optimizer steps, per rank, to
    `out_dir/rank{R}-step{N}.pt` (N = the trainer's step count after the step)."""

    def __init__(self, out_dir: str, steps: list[int]) -> None:
        self.out_dir = Path(out_dir)
        self.steps = set(steps)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        if trainer.global_step not in self.steps:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        weights = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}
        state = {"weights": weights, "optimizer": trainer.optimizers[0].state_dict()}
        torch.save(state, self.out_dir / f"rank{trainer.global_rank}-step{trainer.global_step}.pt")


def assert_same_state(a: dict, b: dict) -> None:
    """Two `StateRecorder` files hold the same weights and optimizer state, exactly."""
    assert a["weights"].keys() == b["weights"].keys()
    for name, value in a["weights"].items():
        assert torch.equal(value, b["weights"][name]), name
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and sa
    for index, entry in sa.items():
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb[index][key])), (index, key)


class SignalAt(L.Callback):
    """Sends this process `signal_name` once (a preemption warning from SLURM): at the end of micro-batch `batch` of
    an epoch, or once the trainer has taken `step` optimizer steps."""

    def __init__(self, batch: int = -1, step: int = -1, signal_name: str = "SIGUSR1") -> None:
        self.batch, self.step, self.signal_name = batch, step, signal_name
        self.sent = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        import signal

        if not self.sent and (idx == self.batch or trainer.global_step == self.step):
            self.sent = True
            os.kill(os.getpid(), signal.Signals[self.signal_name])


class RanksInOneProcess(MusicGenData):
    """What `world_size` data-parallel ranks of `MusicGenData` draw, in one process: their batches side by side.

    For comparing a sharded run with a single process on the same global batch (tests/finetune/training/test_fsdp.py).
    """

    def __init__(self, *args: Any, world_size: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.world_size = world_size

    def train_dataloader(self) -> Any:
        loaders = [self._loader(self.train_dataset(rank=r, world_size=self.world_size), self.steps_per_epoch)
                   for r in range(self.world_size)]
        return _Zipped(loaders)


class _Zipped:
    def __init__(self, loaders: list[Any]) -> None:
        self.loaders = loaders

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self) -> Any:
        for batches in zip(*self.loaders):
            joined: dict[str, Any] = {}
            for key, first in batches[0].items():
                values = [b[key] for b in batches]
                if isinstance(first, torch.Tensor):
                    joined[key] = torch.cat(values)
                elif isinstance(first, list):
                    joined[key] = [v for value in values for v in value]
                elif isinstance(first, int):
                    joined[key] = sum(values)
                else:
                    joined[key] = first
            yield joined


class DataParallelInOne(MusicGenLM):
    """`MusicGenLM` whose training step is `world_size` ranks' steps in one process: the mean of the losses of each
    rank's share of the batch, which is what data-parallel gradient averaging computes."""

    world_size = 2

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        n = batch["codes"].shape[0] // self.world_size
        losses = []
        for r in range(self.world_size):
            part = {k: (v[r * n:(r + 1) * n] if isinstance(v, (torch.Tensor, list)) else v) for k, v in batch.items()}
            losses.append(super().training_step(part, batch_idx))
        return torch.stack(losses).mean()


def one_shard_with_corrupt_samples(shards: Path, out: Path, at: int) -> list[str]:
    """Every sample of the set `shards` in one shard `out/shard-r0000-000000.tar`, with three corrupt copies of its
    first sample inserted at position `at`: codes of 3 codebooks, codes out of range, codes of float dtype. Returns
    the keys of the three. One shard, so that every draw of a resampled stream goes through them."""
    import io

    import numpy as np
    import webdataset as wds

    samples = list(wds.DataPipeline(wds.SimpleShardList(sorted(str(p) for p in shards.glob("shard-*.tar"))),
                                    wds.tarfile_to_samples()))
    codes = np.load(io.BytesIO(samples[0]["codes.npy"]))
    corrupt = {"bad-shape": codes[:3], "bad-range": np.where(codes == codes[0, 0], 4096, codes).astype(codes.dtype),
               "bad-dtype": codes.astype(np.float32)}
    bad = []
    for key, value in corrupt.items():
        buffer = io.BytesIO()
        np.save(buffer, value)
        bad.append({**samples[0], "__key__": key, "codes.npy": buffer.getvalue()})
    out.mkdir(parents=True)
    with wds.TarWriter(str(out / "shard-r0000-000000.tar")) as tar:
        for sample in samples[:at] + bad + samples[at:]:
            tar.write({k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"})
    return list(corrupt)


class PreemptAt(L.Callback):
    """A preemption warning delivered deterministically: calls `PreemptionCheckpoint`'s signal handler, as SIGUSR1
    would, at a chosen point of optimizer step `step` on the chosen ranks (default all).

    `where`: "batch_end" (after the step, once the preemption callback has looked: it acts at its next look),
    "validation" (during the validation that follows the step) or "save" (while a checkpoint of the step is being
    written). Timed signals land anywhere; this lands exactly where a test wants.
    """

    def __init__(self, step: int, where: str = "batch_end", ranks: list[int] | None = None) -> None:
        if where not in ("batch_end", "validation", "save"):
            raise ValueError(f"where must be batch_end, validation or save, got {where!r}")
        self.step, self.where, self.ranks = step, where, ranks
        self.fired = False

    def _fire(self, trainer: L.Trainer, where: str) -> None:
        import signal

        from finetune.training.preemption import PreemptionCheckpoint

        if self.fired or where != self.where or trainer.global_step != self.step:
            return
        if self.ranks is not None and trainer.global_rank not in self.ranks:
            return
        self.fired = True
        for callback in trainer.callbacks:
            if isinstance(callback, PreemptionCheckpoint):
                callback._handler(signal.SIGUSR1, None)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._fire(trainer, "batch_end")

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._fire(trainer, "validation")

    def on_save_checkpoint(self, trainer: L.Trainer, *args: Any) -> None:
        self._fire(trainer, "save")
