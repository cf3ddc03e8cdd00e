"""MBD crops: 1 s mono items from the prepped audio, new crops each epoch, reproducible for a given epoch."""

from __future__ import annotations

from pathlib import Path

import torch

from finetune.mbd.data import MBDData


class _Trainer:
    global_step = 0


def _epoch_batches(data: MBDData, step: int) -> list[torch.Tensor]:
    data.trainer.global_step = step
    return list(data.train_dataloader())


def test_each_epoch_draws_new_crops_and_an_epoch_is_reproducible(audio_shards: Path) -> None:
    data = MBDData(str(audio_shards), batch_size=4, num_workers=0, steps_per_epoch=2, shuffle_buffer=4)
    data.trainer = _Trainer()
    first, second, again = _epoch_batches(data, 0), _epoch_batches(data, 2), _epoch_batches(data, 0)
    assert [b.shape for b in first] == [(4, 1, 32000)] * 2
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not any(torch.equal(a, b) for a, b in zip(first, second))


def test_validation_crops_are_fixed_and_mono(audio_shards: Path) -> None:
    data = MBDData(str(audio_shards), str(audio_shards), batch_size=4, num_workers=0, val_items=6)
    batches = list(data.val_dataloader())
    assert sum(b.shape[0] for b in batches) == 6 and batches[0].shape[1:] == (1, 32000)
    assert all(torch.equal(a, b) for a, b in zip(batches, data.val_dataloader()))
