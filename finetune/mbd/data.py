"""MBD training data: random 1 s crops of the `audio.flac` that `mgft prep --keep-audio` stores in every sample.

MBD is a mono model, so every channel of a stereo segment is its own training item (this is also how stereo is
decoded: left and right through the mono bands). A crop that runs past a short segment's end is zero-padded, as
audiocraft pads its segments. The EnCodec condition is computed on the fly by the module (it is cheap next to the
U-Net and must come from exactly the cropped audio).

Train stream: shards are split over (rank, worker) streams as the LM's (`finetune.lm.data.split_for_stream`), drawn with
replacement from a generator seeded by (seed, rank, worker, epoch), shuffled in a buffer, cropped and batched;
`steps_per_epoch` keeps every rank at the same number of batches; a run resumed mid-epoch starts at the checkpoint's
batch of the epoch (finetune/training/stream_position.py). Validation: the first `val_items` segments of the
validation shards in order, the crop taken from each segment's start, so the validation loss is comparable across runs.
"""

from __future__ import annotations

import io
import itertools
import random
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import soundfile as sf
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_prep.schema import AUDIO_KEY, SAMPLE_RATE
from finetune.lm.data import _dist_info_from_env, resolve_shards, split_for_stream, stream_seed
from finetune.training.stream_position import StreamPosition, resumed_worker


def decode_audio(raw: bytes) -> torch.Tensor:
    """`audio.flac` bytes -> float32 `[C, N]` at 32 kHz."""
    audio, sample_rate = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"audio.flac is {sample_rate} Hz; prep stores 32 kHz")
    return torch.from_numpy(audio.T.copy())


def crop(audio: torch.Tensor, samples: int, start: int) -> torch.Tensor:
    """`samples` samples from `start`, zero-padded past the end: `[C, samples]`."""
    piece = audio[:, start : start + samples]
    return torch.nn.functional.pad(piece, (0, samples - piece.shape[-1]))


class AudioCrops(IterableDataset):
    """Mono crops `[1, samples]` from the `audio.flac` of webdataset shards."""

    def __init__(self, urls: list[str], samples: int, seed: int, epoch: int, train: bool, limit: int | None = None,
                 shuffle_buffer: int = 64) -> None:
        self.urls, self.samples, self.seed, self.epoch = urls, samples, seed, epoch
        self.train, self.limit, self.shuffle_buffer = train, limit, shuffle_buffer
        self.skip_batches, self.batch_size = 0, 1  # a mid-epoch resume's trained batches (set by the loader)

    def _segments(self, urls: list[str], rng: random.Random) -> Iterator[dict[str, Any]]:
        if self.train:
            source = wds.ResampledShards(urls, seed=rng.randrange(2**31), deterministic=True)
        else:
            source = wds.SimpleShardList(urls)
        yield from wds.tarfile_to_samples(handler=wds.warn_and_continue)(source)

    def __iter__(self) -> Iterator[torch.Tensor]:
        rank, world = _dist_info_from_env()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # Mid-epoch resume: stand in for the worker that drew the epoch's next batch, dropping what already trained.
        worker, drop = resumed_worker(worker, workers, self.skip_batches)
        yield from itertools.islice(self._crops(rank, world, worker, workers), drop * self.batch_size, None)

    def _crops(self, rank: int, world: int, worker: int, workers: int) -> Iterator[torch.Tensor]:
        rng = random.Random(stream_seed(self.seed, rank, worker, self.epoch))
        if self.train:
            urls, bucket = split_for_stream(self.urls, rank * workers + worker, world * workers)
        else:  # every rank validates on the same items; the loss is averaged over ranks anyway
            urls, bucket = self.urls, None
        buffer: list[torch.Tensor] = []
        emitted = 0
        for sample in self._segments(urls, rng):
            if AUDIO_KEY not in sample:
                raise ValueError(f"sample {sample.get('__key__')} has no {AUDIO_KEY}: prep with --keep-audio")
            if bucket is not None and int(stream_seed(sample["__key__"])) % (world * workers) != bucket:
                continue
            audio = decode_audio(sample[AUDIO_KEY])  # [C, N]
            span = max(audio.shape[-1] - self.samples, 0)
            start = rng.randrange(span + 1) if self.train else 0
            for channel in crop(audio, self.samples, start):
                item = channel[None]  # [1, samples]
                if not self.train:
                    yield item
                    emitted += 1
                    if self.limit is not None and emitted >= self.limit:
                        return
                    continue
                buffer.append(item)
                if len(buffer) >= self.shuffle_buffer:
                    yield buffer.pop(rng.randrange(len(buffer)))


class CropLoader(wds.WebLoader):
    """Batches crops; before each epoch's workers start, it sets the stream's epoch and its position.

    So every epoch draws new crops, and a resumed run continues at the checkpoint's batch of the restored epoch (its
    `state_dict()` is saved by Lightning in every checkpoint).
    """

    def __init__(self, dataset: AudioCrops, epoch_fn: Callable[[], int], trainer_fn: Callable[[], Any],
                 batch_size: int, num_batches: int, **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=batch_size, **kwargs)
        self.num_batches = num_batches
        self.crops, self.epoch_fn = dataset, epoch_fn
        self.crops.batch_size = batch_size
        self.position = StreamPosition(trainer_fn)

    def __iter__(self) -> Iterator[Any]:
        # Workers copy the dataset with these values.
        self.crops.epoch = self.epoch_fn()
        skip = self.position.start(self.crops.epoch)
        self.crops.skip_batches = skip if skip < self.num_batches else 0
        if self.crops.skip_batches:  # the rest of the epoch only (see finetune.lm.data.StreamLoader)
            return itertools.islice(super().__iter__(), self.num_batches - self.crops.skip_batches)
        return super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        """The epoch drawn and the batches of it trained."""
        return self.position.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Start the next iterator at a checkpoint's position."""
        if state:
            self.position.load_state_dict(state)


class MBDData(L.LightningDataModule):
    """Shards written with `--keep-audio` -> batches of mono 1 s crops `[B, 1, 32000]`."""

    def __init__(self, shards: str, val_shards: str | None = None, batch_size: int = 128, crop_seconds: float = 1.0,
                 num_workers: int = 4, steps_per_epoch: int = 2000, val_items: int = 256, seed: int = 0,
                 shuffle_buffer: int = 256) -> None:
        """Configure the train and validation crop streams; the loaders are built by Lightning.

        Args:
            shards: Training shards (folder, glob or brace pattern) prepped with `--keep-audio`.
            val_shards: Validation shards (none: no validation).
            batch_size: Crops per batch per device (audiocraft: 128 over all GPUs).
            crop_seconds: Crop length (audiocraft's MBD segment: 1 s).
            num_workers: DataLoader workers per device.
            steps_per_epoch: Batches per epoch on every rank.
            val_items: Mono crops validated on.
            seed: Base seed of the crop streams.
            shuffle_buffer: Crops held for shuffling.
        """
        super().__init__()
        self.save_hyperparameters()
        self.shards, self.val_shards = shards, val_shards
        self.batch_size, self.num_workers = batch_size, num_workers
        self.samples = round(crop_seconds * SAMPLE_RATE)
        self.steps_per_epoch, self.val_items, self.seed = steps_per_epoch, val_items, seed
        self.shuffle_buffer = shuffle_buffer

    def _epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.global_step // self.steps_per_epoch if trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        """The endless training crop stream, cut into epochs of `steps_per_epoch` batches."""
        dataset = AudioCrops(resolve_shards(self.shards), self.samples, self.seed, self._epoch(), train=True,
                             shuffle_buffer=self.shuffle_buffer)
        loader = CropLoader(dataset, self._epoch, lambda: getattr(self, "trainer", None), batch_size=self.batch_size,
                            num_batches=self.steps_per_epoch, num_workers=self.num_workers, persistent_workers=False)
        return loader.with_epoch(self.steps_per_epoch).with_length(self.steps_per_epoch)

    def val_dataloader(self) -> DataLoader | list[Any]:
        """The fixed validation crops (at most `val_items`), the same on every rank; none without `val_shards`."""
        if not self.val_shards:
            return []
        dataset = AudioCrops(resolve_shards(self.val_shards), self.samples, self.seed, 0, train=False,
                             limit=self.val_items)
        return DataLoader(dataset, batch_size=self.batch_size, num_workers=0)
