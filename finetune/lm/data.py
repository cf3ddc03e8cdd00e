"""Training data: webdataset shards of EnCodec codes (written by `data_prep`) -> batches for the MusicGen LM.

Train stream (docs/performance.md)
    `ResampledShards` (shards drawn with replacement) -> `tarfile_to_samples` -> decode -> shuffle buffer -> random
    crop + caption augmentation -> `batched`, and `.with_epoch(steps_per_epoch)` on the loader, so every rank yields
    exactly `steps_per_epoch` batches per epoch whatever its shards hold (unequal batch counts hang DDP all-reduce).
    Shards are split over ranks x workers first (`split_for_stream`), so ranks and workers never share a sample;
    within its share each (rank, worker) draws its own resampled stream, seeded by
    `stream_seed(seed, resume_step, global rank, worker id, epoch)`. The epoch is the number of whole epochs of
    batches already trained (from the trainer's global step, which Lightning restores from a checkpoint);
    `resume_step` is 0 unless `reseed(step)` sets it. The loader's position in the epoch (batches trained) is saved
    in every checkpoint (`StreamLoader.state_dict`), and a resumed run's workers replay their streams and drop what
    already trained (finetune/training/stream_position.py). So a run stopped at any step and resumed from its
    checkpoint trains on exactly the batches of the uninterrupted run and reaches the same weights (bit for bit on
    CPU); `reseed(restart_count)` gives a fresh draw instead. Exactness needs `steps_per_epoch` to be a multiple of
    `trainer.accumulate_grad_batches` (the epoch is counted from optimizer steps).

Validation stream
    Deterministic, no shuffle, no augmentation, crops (if any) from the start. Every rank and worker reads the val
    shard list in order (`SimpleShardList`) and keeps the samples whose running index is its own (sample `i` goes to
    rank `i % world_size`, and within a rank round-robin over workers), then pads the shorter ranks by repeating one
    of their samples up to `ceil(N / world_size)` (as `DistributedSampler` does). A shard-level split
    (`split_by_node`) would leave ranks without data when there are fewer shards than ranks and give ranks
    different batch counts, which hangs FSDP and any per-batch collective; here every sample is seen once (plus at
    most one repeat per rank) and every rank runs the same number of batches. The cost is that each worker reads the
    whole val shard list; cap it with `val_samples` for large val sets.

Corrupt data
    Every sample is checked on its own before it can reach a batch (`decode_sample`, `SampleSpec`): integer codes of
    the set's number of codebooks, 1 to the set's segment length of frames, codes in [0, 2048), a valid-frame count
    inside them, and for a set with melodies a finite `[F, 12]` chroma of the codes' length. A bad sample, an
    unreadable shard or a broken tar member is skipped and counted, never raised; each batch carries `skipped`, the
    samples this worker skipped since its previous batch (named), which the trainer reports once per sample and
    counts (`train/skipped_samples`). Once a worker has seen `skip_check_after` samples, a skipped fraction above
    `max_skipped_fraction` raises `DataError` naming the shards. What a set holds (the spec) is read from its first
    sample before training, which must itself be whole (`describe_shards`: else one line, no training).
"""

from __future__ import annotations

import functools
import glob
import hashlib
import io
import itertools
import json
import logging
import math
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import braceexpand
import lightning as L
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from data_prep.schema import (
    CARDINALITY,
    CHROMA_HOP,
    CHROMA_KEY,
    CODEBOOKS_PER_CHANNEL,
    CODES_KEY,
    HOP_LENGTH,
    INFO_KEY,
    N_CHROMA,
    SHARD_GLOB,
    chroma_frames,
    read_valid_frames,
)
from finetune.errors import BadFileError, DataError
from finetune.lm.captions import augment_caption
from finetune.training.stream_position import StreamPosition, resumed_worker

log = logging.getLogger(__name__)

class Batch(TypedDict):
    """The batch contract between the data module and the LightningModule (what `collate` returns).

    Attributes:
        codes: int64 `[B, K, T]`; T padded with 0 to the longest sample (`valid_frames` masks the padding).
        valid_frames: int64 `[B]`, frames of each sample that hold audio.
        captions: one caption per sample (None: no description, trained unconditionally).
        chroma: float32 one-hot `[B, F, 12]`, F padded with 0; None unless every sample has a melody.
        chroma_valid_frames: int64 `[B]` or None, chroma frames of each sample that hold audio.
        keys: the shard keys of the samples (for logs and tests).
        skipped: the corrupt samples this worker skipped since its previous batch, each as "KEY in SHARD: reason".
    """

    codes: torch.Tensor
    valid_frames: torch.Tensor
    captions: list[str | None]
    chroma: torch.Tensor | None
    chroma_valid_frames: torch.Tensor | None
    keys: list[str]
    skipped: list[str]


BATCH_KEYS = tuple(Batch.__annotations__)
"""The keys of every batch."""

# --------------------------------------------------------------------------------------------------------------------
# Shard lists and seeds


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def resolve_shards(spec: str) -> list[str]:
    """The shard list of a directory (all `shard-*.tar` in it, sorted), a glob, a brace pattern or a single path.

    Args:
        spec: A folder, e.g. `data/shards`; a glob, e.g. `data/*/shard-*.tar`; a brace pattern, e.g.
            `data/shard-r0000-{000000..000009}.tar` (also remote: `pipe:...`, `s3://...`); or one tar file.

    Returns:
        The shard URLs, sorted for folders and globs, in pattern order for brace patterns.

    Raises:
        FileNotFoundError: No shard matches, or a local shard of a brace pattern does not exist.
    """
    path = Path(spec)
    if _is_local(spec) and path.is_dir():
        urls = sorted(str(p) for p in path.glob(SHARD_GLOB))
    elif _is_local(spec) and "{" not in spec and glob.has_magic(spec):
        urls = sorted(glob.glob(spec))
    else:
        urls = list(braceexpand.braceexpand(spec))
        missing = [u for u in urls if _is_local(u) and not Path(u).exists()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(urls)} shards of {spec!r} do not exist, e.g. {missing[0]}")
    if not urls:
        raise FileNotFoundError(f"no shards found for {spec!r} (a folder holding {SHARD_GLOB}, a glob or a pattern)")
    return urls


def stream_seed(*parts: int | str) -> int:
    """A 63-bit seed that depends on every part, stable across processes and Python versions (no `hash()`).

    Args:
        *parts: What the stream depends on, e.g. (base seed, resume step, rank, worker, epoch).

    Returns:
        A non-negative int usable by `random.Random` and `torch.Generator.manual_seed`.
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _dist_info_from_env() -> tuple[int, int]:
    """(global rank, world size) from an initialized process group, else RANK/WORLD_SIZE, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


def _worker_info() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def split_for_stream(urls: list[str], stream: int, num_streams: int) -> tuple[list[str], int | None]:
    """The shards one (rank, worker) stream resamples from, so no two streams ever read the same sample.

    With at least as many shards as streams, stream `i` owns shards `i, i + n, i + 2n, ...`. With fewer, every
    stream reads all shards and keeps only the samples whose key hashes to it (returned as the filter index);
    that reads more but stays disjoint.
    """
    if len(urls) >= num_streams:
        return urls[stream::num_streams], None
    return list(urls), stream


def _key_bucket(key: str, num_streams: int) -> int:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % num_streams


# --------------------------------------------------------------------------------------------------------------------
# Samples and batches


@dataclass(frozen=True)
class SampleSpec:
    """What every sample of a shard set must look like, from its first sample (`describe_shards`).

    Attributes:
        num_codebooks: K of the codes (4 mono, 8 stereo); the first sample's K is checked against the model.
        max_frames: The set's segment length in frames: prep writes every segment at it (short ones padded), so a
            longer one is corrupt (and could exhaust memory).
        has_chroma: The set holds melodies: every sample needs a chroma of its codes' length.
    """

    num_codebooks: int
    max_frames: int
    has_chroma: bool


def decode_sample(raw: dict[str, Any], require_chroma: bool = False, spec: SampleSpec | None = None) -> dict[str, Any]:
    """Decode one raw webdataset sample (bytes per extension) into tensors, checked; `audio.flac` is ignored.

    Args:
        raw: `{"__key__", "__url__", "codes.npy": bytes, "json": bytes, ["chroma.npy": bytes], ...}`.
        require_chroma: Raise `DataError` when the sample has no `chroma.npy` (melody models need it).
        spec: What the set's samples look like; None checks the sample on its own only.

    Returns:
        `{"key", "url", "codes": int64 [K, T], "valid_frames": int, "caption": str | None, "metadata": dict,
        "chroma": float32 [F, 12] | None, "chroma_valid_frames": int | None}`.

    Raises:
        DataError: `require_chroma` and the sample has no chroma.
        ValueError: The sample is corrupt (the caller skips and counts it); the message says why, without the key.
    """
    key = raw.get("__key__", "?")
    if require_chroma and CHROMA_KEY not in raw:
        raise DataError(
            f"sample {key} in {raw.get('__url__')} has no {CHROMA_KEY}, but require_chroma is set (melody model): "
            "prep the shards with --melody"
        )
    if CODES_KEY not in raw or INFO_KEY not in raw:
        raise ValueError(f"lacks {CODES_KEY} or {INFO_KEY} (has {sorted(raw)})")
    codes = np.load(io.BytesIO(raw[CODES_KEY]), allow_pickle=False)
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be integer [K, T], got {codes.dtype} {list(codes.shape)}")
    k, num_frames = codes.shape
    if k % CODEBOOKS_PER_CHANNEL or not 0 < k <= 2 * CODEBOOKS_PER_CHANNEL:
        raise ValueError(f"codes have {k} codebooks, neither mono ({CODEBOOKS_PER_CHANNEL}) nor stereo "
                         f"({2 * CODEBOOKS_PER_CHANNEL})")
    if spec is not None and k != spec.num_codebooks:
        raise ValueError(f"codes have {k} codebooks, the set's samples {spec.num_codebooks}")
    if num_frames < 1 or (spec is not None and num_frames > spec.max_frames):
        limit = f", the set's segments {spec.max_frames}" if spec is not None else ""
        raise ValueError(f"codes have {num_frames} frames{limit}")
    if codes.min() < 0 or codes.max() >= CARDINALITY:
        raise ValueError(f"codes outside [0, {CARDINALITY}): min {codes.min()}, max {codes.max()}")
    info = json.loads(raw[INFO_KEY])
    if not isinstance(info, dict):
        raise ValueError(f"json is a {type(info).__name__}, not an object")
    valid = read_valid_frames(info, num_frames)  # schema 1 counted a partial last frame; this is the floor
    if not 0 <= valid <= num_frames:
        raise ValueError(f"valid_frames {valid} outside [0, {num_frames}]")
    chroma, chroma_valid = None, None
    if CHROMA_KEY in raw:
        array = np.load(io.BytesIO(raw[CHROMA_KEY]), allow_pickle=False)
        expected = chroma_frames(num_frames * HOP_LENGTH)
        # A segment length that is not whole frames puts the chroma one frame off what the codes imply.
        if array.ndim != 2 or array.shape[1] != N_CHROMA or abs(array.shape[0] - expected) > 1:
            raise ValueError(f"chroma must be [{expected}, {N_CHROMA}] for {num_frames} code frames, got "
                             f"{list(array.shape)}")
        if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
            raise ValueError(f"chroma must be finite floats, got {array.dtype}"
                             f"{'' if not np.issubdtype(array.dtype, np.floating) else ' with NaN or inf'}")
        chroma = torch.from_numpy(array.astype(np.float32, copy=False))
        stored = info.get("chroma_valid_frames")
        chroma_valid = min(int(stored), array.shape[0]) if stored is not None else array.shape[0]
    elif spec is not None and spec.has_chroma:
        raise ValueError(f"has no {CHROMA_KEY}, which the set's samples hold")
    caption = info.get("caption")
    metadata = info.get("metadata") or {}
    return {
        "key": str(key),
        "url": raw.get("__url__"),
        "codes": torch.from_numpy(codes.astype(np.int64)),  # [K, T]; int16 on disk, int64 for embedding lookups
        "valid_frames": valid,
        "caption": caption if isinstance(caption, str) else None,
        "metadata": metadata if isinstance(metadata, dict) else {},
        "chroma": chroma,  # [F, 12] or None
        "chroma_valid_frames": chroma_valid,
        "sample_rate": info.get("sample_rate"),
    }


def crop_sample(sample: dict[str, Any], max_frames: int, start: int = 0) -> dict[str, Any]:
    """Keep codes frames `[start, start + max_frames)` and the chroma frames of the same time span.

    Codes run at 50 Hz (640 samples a frame), chroma at 7.8125 Hz (4096 samples a frame, frame `f` centred on sample
    `4096 f`). The chroma window starts at the chroma frame nearest the crop's first sample and holds as many frames
    as a chroma computed on the cropped audio would (`chroma_frames(max_frames * 640)`), clipped to what is stored.

    Args:
        sample: A `decode_sample` output.
        max_frames: Codes frames to keep; samples that are not longer are returned unchanged.
        start: First kept codes frame (callers keep it inside the valid region).

    Returns:
        The cropped sample (a new dict) with `valid_frames` and `chroma_valid_frames` adjusted.
    """
    num_frames = sample["codes"].shape[1]
    if num_frames <= max_frames:
        return sample
    start = max(0, min(start, num_frames - max_frames))
    out = dict(sample)
    out["codes"] = sample["codes"][:, start : start + max_frames]
    out["valid_frames"] = min(max(sample["valid_frames"] - start, 0), max_frames)
    if sample["chroma"] is not None:
        first = (start * HOP_LENGTH + CHROMA_HOP // 2) // CHROMA_HOP  # nearest chroma frame to the crop's start
        length = chroma_frames(max_frames * HOP_LENGTH)
        out["chroma"] = sample["chroma"][first : first + length]
        kept = out["chroma"].shape[0]
        out["chroma_valid_frames"] = min(max(sample["chroma_valid_frames"] - first, 0), kept)
    return out


def collate(samples: list[dict[str, Any]], skipped: list[str] | None = None) -> Batch:
    """Stack decoded samples into the batch the LightningModule consumes.

    Args:
        samples: `decode_sample` outputs (possibly cropped and with augmented captions).
        skipped: The corrupt samples skipped by this worker since its previous batch.

    Returns:
        A `Batch`.

    Raises:
        ValueError: `samples` is empty.
        DataError: The samples disagree on the number of codebooks (`decode_sample` with a spec rules it out).
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    num_codebooks = {s["codes"].shape[0] for s in samples}
    if len(num_codebooks) != 1:
        by_k = {s["codes"].shape[0]: s["key"] for s in samples}
        raise DataError(f"samples with different numbers of codebooks in one batch (mixed mono/stereo shards?): {by_k}")
    batch_size, k = len(samples), num_codebooks.pop()
    t = max(s["codes"].shape[1] for s in samples)
    codes = torch.zeros(batch_size, k, t, dtype=torch.long)  # [B, K, T]; 0 is a real token, valid_frames masks it
    for i, s in enumerate(samples):
        codes[i, :, : s["codes"].shape[1]] = s["codes"]
    chroma, chroma_valid = None, None
    if all(s["chroma"] is not None for s in samples):
        f = max(s["chroma"].shape[0] for s in samples)
        chroma = torch.zeros(batch_size, f, N_CHROMA, dtype=torch.float32)  # [B, F, 12]
        for i, s in enumerate(samples):
            chroma[i, : s["chroma"].shape[0]] = s["chroma"]
        chroma_valid = torch.tensor([s["chroma_valid_frames"] for s in samples], dtype=torch.long)
    return {
        "codes": codes,
        "valid_frames": torch.tensor([s["valid_frames"] for s in samples], dtype=torch.long),
        "captions": [s["caption"] for s in samples],
        "chroma": chroma,
        "chroma_valid_frames": chroma_valid,
        "keys": [s["key"] for s in samples],
        "skipped": list(skipped or []),
    }


# --------------------------------------------------------------------------------------------------------------------
# Corrupt-sample accounting


class SkipCounter:
    """Counts the good and skipped samples of one worker's stream and enforces `max_skipped_fraction`.

    Skips are not logged here, in the worker: each batch carries the ones since the previous batch (`take`), and the
    trainer names each sample once however often a resampled stream meets it again (`MusicGenLM.training_step`).

    Args:
        urls: The shard list (to name the shard an exception came from).
        max_skipped_fraction: Largest tolerated skipped / (skipped + good) once `check_after` samples were seen.
        check_after: Samples (good + skipped) to see before the fraction is checked; until then a few bad samples at
            the start of a stream cannot fail the run.
    """

    def __init__(self, urls: list[str], max_skipped_fraction: float, check_after: int) -> None:
        self.urls = set(urls)
        self.max_skipped_fraction = max_skipped_fraction
        self.check_after = check_after
        self.good = 0
        self.skipped = 0
        self.pending: list[str] = []  # skips not yet reported in a batch
        self.per_shard: Counter[str] = Counter()

    def _url_of(self, exn: BaseException) -> str:
        for arg in reversed(getattr(exn, "args", ())):
            if isinstance(arg, str) and arg in self.urls:
                return arg
        text = str(exn)
        return next((u for u in self.urls if u in text), "unknown shard")

    def skip(self, url: str, what: str, reason: str) -> None:
        """Record one skipped sample (or unreadable shard or member) and check the threshold.

        Args:
            url: The shard.
            what: What was skipped: "sample KEY", or "a member" when the tar itself is broken.
            reason: Why, in a few words.
        """
        self.skipped += 1
        self.per_shard[url] += 1
        self.pending.append(f"{what} in {url}: {reason}")
        self._check(url, reason)

    def handler(self, exn: Exception) -> bool:
        """webdataset exception handler: count and continue (never raises the data exception itself)."""
        self.skip(self._url_of(exn), "unreadable data", f"{type(exn).__name__}: {exn}")
        return True

    def ok(self) -> None:
        """Record one good sample."""
        self.good += 1

    def take(self) -> list[str]:
        """Skips since the last call (what the next batch reports)."""
        pending, self.pending = self.pending, []
        return pending

    def collate(self, samples: list[dict[str, Any]]) -> Batch:
        """`collate` with this worker's pending skips."""
        return collate(samples, skipped=self.take())

    def _check(self, url: str, reason: str) -> None:
        total = self.good + self.skipped
        if total < self.check_after:
            return
        if self.good == 0 or self.skipped > self.max_skipped_fraction * total:
            worst = ", ".join(f"{u}: {n}" for u, n in self.per_shard.most_common(5))
            raise DataError(
                f"too much corrupt data: {self.skipped} of {total} samples skipped "
                f"({self.skipped / total:.1%} > max_skipped_fraction={self.max_skipped_fraction}); "
                f"last in shard {url} ({reason}); skips per shard: {worst}. Re-run prep for those shards or "
                "remove them."
            )


def shard_sets(shards: str | dict[str, float]) -> list[tuple[str, float]]:
    """The train shard sets and their sampling weights (summing to 1): one set, or a weighted mix of several.

    Args:
        shards: One set (a folder, glob or pattern: `resolve_shards`), or `{set: weight}` to mix sets, e.g.
            `{data/catalog: 0.8, data/general: 0.2}` (a lab's catalog with general music, against forgetting).

    Raises:
        ValueError: An empty mix, or a weight that is not a positive number.
    """
    if isinstance(shards, str):
        return [(shards, 1.0)]
    if not shards:
        raise ValueError("data.shards: an empty mix; give a folder, or {folder: weight, ...}")
    for spec, weight in shards.items():
        if not (isinstance(weight, int | float) and math.isfinite(weight) and weight > 0):
            raise ValueError(f"data.shards: the weight of {spec!r} must be a positive number, got {weight!r}")
    total = float(sum(shards.values()))
    return [(spec, weight / total) for spec, weight in shards.items()]


def weighted_mix(sources: list[Iterator[dict[str, Any]]], weights: list[float],
                 rng: random.Random) -> Iterator[dict[str, Any]]:
    """Each sample from source i with probability `weights[i]`, drawn with `rng`; the sources are endless.

    webdataset's `RandomMix` does this with the global `random` module, which no seed here controls, so a resumed
    run would not draw the mix the uninterrupted run drew; this is the same draw from the stream's own generator.
    """
    indices = range(len(sources))
    while True:
        yield next(sources[rng.choices(indices, weights)[0]])


def _decoded(src: Iterable[dict[str, Any]], counter: SkipCounter, require_chroma: bool,
             spec: SampleSpec | None) -> Iterator[dict[str, Any]]:
    """Decode and check raw samples; corrupt ones are skipped and counted, `DataError`s propagate."""
    for raw in src:
        try:
            sample = decode_sample(raw, require_chroma=require_chroma, spec=spec)
        except DataError:
            raise
        except Exception as exn:  # any decode failure of one sample is a skip, not a crash
            counter.skip(str(raw.get("__url__", "unknown shard")), f"sample {raw.get('__key__')}", str(exn))
            continue
        counter.ok()
        yield sample


# --------------------------------------------------------------------------------------------------------------------
# Streams


class TrainStream(IterableDataset):
    """The infinite, resampled, shuffled and augmented train stream of one rank (each worker draws its own).

    Args:
        urls: Shard URLs of each set (one list; several for a weighted mix).
        rank: Global rank.
        world_size: Number of ranks; the shards are split over ranks x workers (`split_for_stream`).
        seed: Base seed.
        resume_step: Global step the run resumed from (0 for a fresh run); folded into the seed.
        batch_size: Samples per batch.
        shuffle_buffer: Shuffle buffer size in samples.
        max_frames: Random crop length in codes frames, None for whole segments.
        merge_text_p: Caption augmentation, see `finetune.lm.captions.augment_caption`.
        drop_desc_p: Caption augmentation.
        drop_other_p: Caption augmentation.
        require_chroma: Missing chroma is an error.
        max_skipped_fraction: See `SkipCounter`.
        skip_check_after: See `SkipCounter`.
        weights: Sampling weight of each set of `urls` (default: one set).
        specs: What each set's samples look like (`describe_shards`); None checks each sample on its own only.
    """

    def __init__(
        self,
        urls: list[list[str]],
        rank: int,
        world_size: int,
        seed: int,
        resume_step: int,
        batch_size: int,
        shuffle_buffer: int,
        max_frames: int | None,
        merge_text_p: float,
        drop_desc_p: float,
        drop_other_p: float,
        require_chroma: bool,
        max_skipped_fraction: float,
        skip_check_after: int,
        weights: list[float] | None = None,
        specs: list[SampleSpec] | None = None,
    ) -> None:
        super().__init__()
        self.urls = urls
        self.weights = weights or [1.0]
        if len(self.weights) != len(urls):
            raise ValueError(f"{len(urls)} shard sets but {len(self.weights)} weights")
        self.specs: list[SampleSpec | None] = list(specs) if specs is not None else [None] * len(urls)
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.resume_step = resume_step
        self.batch_size = batch_size
        self.shuffle_buffer = shuffle_buffer
        self.max_frames = max_frames
        self.merge_text_p = merge_text_p
        self.drop_desc_p = drop_desc_p
        self.drop_other_p = drop_other_p
        self.require_chroma = require_chroma
        self.max_skipped_fraction = max_skipped_fraction
        self.skip_check_after = skip_check_after
        # Two epoch counters, because workers are copies of this object: `loader_epoch` is bumped by the loader in
        # the main process before it starts (and copies into) fresh workers; `local_epoch` is bumped here, in the
        # worker, which is what moves on with persistent workers or num_workers=0. Either way each epoch differs.
        self.loader_epoch = 0
        self.local_epoch = 0
        self.trainer_epoch: int | None = None  # set by the loader from the trainer, when there is one
        self.skip_batches = 0  # batches of this epoch already trained (a mid-epoch resume), set by the loader

    def worker_seed(self, worker: int) -> int:
        """The seed of this rank's `worker` stream for the current epoch (the trainer's, else local counters)."""
        if self.trainer_epoch is not None:
            return stream_seed(self.seed, self.resume_step, self.rank, worker, "epoch", self.trainer_epoch)
        return stream_seed(self.seed, self.resume_step, self.rank, worker, self.loader_epoch, self.local_epoch)

    def _augmented(self, src: Iterable[dict[str, Any]], seed: int) -> Iterator[dict[str, Any]]:
        for n, sample in enumerate(src):
            if self.max_frames is not None and sample["codes"].shape[1] > self.max_frames:
                # The window starts inside the valid region, so a padded tail is never the whole crop.
                last_start = max(0, min(sample["valid_frames"], sample["codes"].shape[1]) - self.max_frames)
                start = random.Random(stream_seed(seed, "crop", n)).randint(0, last_start)
                sample = crop_sample(sample, self.max_frames, start)
            rng = random.Random(stream_seed(seed, "caption", n))
            sample["caption"] = augment_caption(
                sample["caption"],
                sample["metadata"],
                rng,
                merge_text_p=self.merge_text_p,
                drop_desc_p=self.drop_desc_p,
                drop_other_p=self.drop_other_p,
            )
            yield sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = _worker_info()
        # A mid-epoch resume: this worker replays the stream of the worker that drew the epoch's next batch and drops
        # the batches of it that trained already (finetune/training/stream_position.py).
        worker, drop = resumed_worker(worker, num_workers, self.skip_batches)
        self.local_epoch += 1
        seed = self.worker_seed(worker)
        n_streams = self.world_size * num_workers
        stream = self.rank * num_workers + worker
        counter = SkipCounter([u for urls in self.urls for u in urls], self.max_skipped_fraction,
                              self.skip_check_after)
        # One decoded sample source per set; a single set keeps the seed it always had (runs stay reproducible).
        sources = [self._samples(urls, stream, n_streams, seed if len(self.urls) == 1 else stream_seed(seed, "set", i),
                                 counter, self.specs[i]) for i, urls in enumerate(self.urls)]
        mixed = iter(sources[0]) if len(sources) == 1 else \
            weighted_mix([iter(src) for src in sources], self.weights, random.Random(stream_seed(seed, "mix")))
        pipeline = wds.DataPipeline(
            lambda: mixed,
            wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 100), rng=random.Random(seed)),
            functools.partial(self._augmented, seed=seed),
            wds.batched(self.batch_size, collation_fn=counter.collate, partial=False),
        )
        yield from itertools.islice(pipeline, drop, None)

    def _samples(self, urls: list[str], stream: int, n_streams: int, seed: int, counter: SkipCounter,
                 spec: SampleSpec | None) -> Any:
        """The endless decoded samples of one set for this (rank, worker) stream: its shards, resampled."""
        urls, bucket = split_for_stream(urls, stream, n_streams)
        keep = (lambda raw: _key_bucket(raw["__key__"], n_streams) == bucket) if bucket is not None else None
        return wds.DataPipeline(
            # The seed is ours; webdataset's own worker_seed/epoch mixing is neutralised (constant 0, fresh object).
            wds.ResampledShards(urls, seed=seed, worker_seed=functools.partial(int, 0), deterministic=True),
            wds.tarfile_to_samples(handler=counter.handler),
            *([wds.select(keep)] if keep is not None else []),
            functools.partial(_decoded, counter=counter, require_chroma=self.require_chroma, spec=spec),
        )


class _ValSplit:
    """Sample-level split of the val stream with padding to equal per-rank counts (see the module docstring)."""

    def __init__(self, rank: int, world_size: int, worker: int, num_workers: int, cap: int | None) -> None:
        self.rank, self.world_size = rank, world_size
        self.worker, self.num_workers = worker, num_workers
        self.cap = cap
        self.total: int | None = None  # samples in the val set, known once the source is exhausted
        self.first_raw: dict[str, Any] | None = None

    def mine(self, j: int) -> bool:
        """Whether this worker handles the rank's `j`-th sample."""
        return j % self.num_workers == self.worker

    def split(self, src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Pass on this worker's raw samples; count them all (every worker reads every sample, in order)."""
        i = 0
        for raw in src:
            if self.cap is not None and i >= self.cap:
                break
            if self.first_raw is None:
                self.first_raw = raw
            if i % self.world_size == self.rank and self.mine(i // self.world_size):
                yield raw
            i += 1
        self.total = i

    def pad(
        self, src: Iterable[dict[str, Any]], decode: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> Iterator[dict[str, Any]]:
        """Pass on decoded samples, then repeat one until this worker has its share of `ceil(N / world_size)`."""
        delivered, fallback = 0, None
        for sample in src:
            fallback = fallback or sample
            delivered += 1
            yield sample
        assert self.total is not None
        per_rank = math.ceil(self.total / self.world_size)
        target = sum(1 for j in range(per_rank) if self.mine(j))
        if delivered >= target:
            return
        if fallback is None and self.first_raw is not None:
            try:
                fallback = decode(self.first_raw)
            except DataError:
                raise
            except Exception:  # a corrupt first sample was already counted as a skip where it was read
                fallback = None
        if fallback is None:
            log.warning("val rank %d worker %d has no sample to pad with; ranks may run unequal batch counts",
                        self.rank, self.worker)
            return
        for _ in range(target - delivered):
            yield dict(fallback)


class ValStream(IterableDataset):
    """The deterministic val stream of one rank (see the module docstring for the split).

    Args:
        urls: Val shard URLs.
        rank: Global rank.
        world_size: Number of ranks.
        batch_size: Samples per batch (the last batch may be smaller).
        val_samples: Use only the first `val_samples` samples of the val set, None for all.
        max_frames: Crop from the start to this many codes frames, None for whole segments.
        require_chroma: Missing chroma is an error.
        max_skipped_fraction: See `SkipCounter`.
        skip_check_after: See `SkipCounter`.
        spec: What the set's samples look like (`describe_shards`); None checks each sample on its own only.
    """

    def __init__(
        self,
        urls: list[str],
        rank: int,
        world_size: int,
        batch_size: int,
        val_samples: int | None,
        max_frames: int | None,
        require_chroma: bool,
        max_skipped_fraction: float,
        skip_check_after: int,
        spec: SampleSpec | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        self.urls = urls
        self.rank = rank
        self.world_size = world_size
        self.batch_size = batch_size
        self.val_samples = val_samples
        self.max_frames = max_frames
        self.require_chroma = require_chroma
        self.max_skipped_fraction = max_skipped_fraction
        self.skip_check_after = skip_check_after
        self.spec = spec

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = _worker_info()
        counter = SkipCounter(self.urls, self.max_skipped_fraction, self.skip_check_after)
        split = _ValSplit(self.rank, self.world_size, worker, num_workers, self.val_samples)
        decode = functools.partial(decode_sample, require_chroma=self.require_chroma, spec=self.spec)
        stages: list[Any] = [
            wds.SimpleShardList(self.urls),
            wds.tarfile_to_samples(handler=counter.handler),
            split.split,
            functools.partial(_decoded, counter=counter, require_chroma=self.require_chroma, spec=self.spec),
            functools.partial(split.pad, decode=decode),
        ]
        if self.max_frames is not None:
            stages.append(functools.partial(map, functools.partial(crop_sample, max_frames=self.max_frames)))
        stages.append(wds.batched(self.batch_size, collation_fn=counter.collate, partial=True))
        yield from wds.DataPipeline(*stages)


class StreamLoader(wds.WebLoader):
    """`wds.WebLoader` (a DataLoader over an iterable of ready batches) that sets the stream's epoch and position.

    Its `state_dict()` (saved by Lightning in every checkpoint) is the train stream's position: the epoch and the
    batches of it trained; after `load_state_dict()` the next epoch's iterator starts at that batch.

    Args:
        dataset: A `TrainStream` or `ValStream`.
        num_batches: Batches per epoch (`with_epoch`), None for one pass over a finite stream.
        epoch_fn: The epoch to draw, from the trainer (None without one: the stream counts its own epochs).
        trainer_fn: The attached trainer or None, for the position saved in checkpoints.
        **kwargs: DataLoader arguments (`num_workers`, `pin_memory`, ...); `batch_size` is fixed to None because
            the stream batches itself.
    """

    def __init__(self, dataset: IterableDataset, num_batches: int | None = None,
                 epoch_fn: Callable[[], int] | None = None, trainer_fn: Callable[[], Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)
        self.stream = dataset
        self.num_batches = num_batches
        self.epoch_fn = epoch_fn
        self.position = StreamPosition(trainer_fn or (lambda: None))
        if num_batches is not None:
            self.with_epoch(num_batches)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if isinstance(self.stream, TrainStream):
            # Before workers start: they copy the stream with these values.
            self.stream.loader_epoch += 1
            if self.epoch_fn is not None:
                self.stream.trainer_epoch = self.epoch_fn()
            skip = self.position.start(self.stream.trainer_epoch)
            self.stream.skip_batches = skip if self.num_batches is None or skip < self.num_batches else 0
            if self.stream.skip_batches and self.num_batches is not None:
                # The rest of the epoch only, also when Lightning counts a new epoch (a run resumed from its
                # train-end checkpoint to train longer): the next iterator then starts the next epoch's stream.
                return itertools.islice(super().__iter__(), self.num_batches - self.stream.skip_batches)
        return super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        """The train stream's position (epoch, batches trained in it); empty for validation."""
        return self.position.state_dict() if isinstance(self.stream, TrainStream) else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Start the next iterator at a checkpoint's position (train streams; validation ignores it)."""
        if state and isinstance(self.stream, TrainStream):
            self.position.load_state_dict(state)

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("the validation loader has no known length")  # Lightning's sized_len() expects this
        return self.num_batches

    def __bool__(self) -> bool:
        return True  # truthiness must not go through __len__, which raises for the val loader


# --------------------------------------------------------------------------------------------------------------------
# The data module


def _first_sample(urls: list[str]) -> tuple[str, dict[str, Any]]:
    """The first sample of the first readable shard; unreadable shards are warned about and passed over.

    Raises:
        BadFileError: The first sample is corrupt: it is what the set's other samples are checked against.
        DataError: No shard could be read.
    """
    errors = []
    for url in urls:
        try:
            raw = next(iter(wds.tarfile_samples([{"url": url}])), None)
        except Exception as exn:  # an unreadable shard: report it and try the next one
            errors.append(f"{url}: {type(exn).__name__}: {exn}")
            log.warning("cannot read shard %s: %s", url, exn)
            continue
        if raw is None:
            errors.append(f"{url}: no samples")
            continue
        try:
            return url, decode_sample(raw)
        except DataError:
            raise
        except Exception as exn:  # whatever a corrupt npy or json raises
            raise BadFileError(f"{url}: its first sample {raw.get('__key__')} is corrupt ({exn}); a set is checked "
                               "against its first sample, so re-prep that shard or remove it") from exn
    raise DataError("no readable sample in any shard: " + "; ".join(errors[:5]))


def describe_shards(shards: str) -> dict[str, Any]:
    """What a shard set holds, read from the first sample of its first readable shard (cheap: one sample).

    Args:
        shards: A folder, glob or brace pattern (`resolve_shards`).

    Returns:
        `{"num_shards", "num_codebooks" (K), "num_frames" (T), "channels", "has_chroma", "chroma_frames" (F or None),
        "sample_rate" (None for shards that do not say), "first_shard", "first_key", "spec" (`SampleSpec`)}`.

    Raises:
        FileNotFoundError: No shards.
        BadFileError: The first sample is corrupt.
        DataError: No readable sample.
    """
    urls = resolve_shards(shards)
    url, sample = _first_sample(urls)
    k, t = sample["codes"].shape
    has_chroma = sample["chroma"] is not None
    return {
        "num_shards": len(urls),
        "num_codebooks": int(k),
        "num_frames": int(t),
        "channels": int(k) // CODEBOOKS_PER_CHANNEL,
        "has_chroma": has_chroma,
        "chroma_frames": int(sample["chroma"].shape[0]) if has_chroma else None,
        "sample_rate": sample["sample_rate"],
        "first_shard": url,
        "first_key": sample["key"],
        "spec": SampleSpec(num_codebooks=int(k), max_frames=int(t), has_chroma=has_chroma),
    }


class MusicGenData(L.LightningDataModule):
    """MusicGen LM training data from `mgft prep` shards: resampled train stream and deterministic val stream.

    Batches are dicts with `BATCH_KEYS`: `codes` int64 `[B, K, T]`, `valid_frames` int64 `[B]`, `captions`
    `list[str | None]`, `chroma` float32 `[B, F, 12]` or None, `chroma_valid_frames` int64 `[B]` or None, `keys`
    `list[str]` and `skipped` (corrupt samples skipped since the previous batch of the same worker).

    Args:
        shards: Train shards: a folder of `shard-*.tar` (prep's output), a glob or a brace pattern; or several
            such sets with sampling weights, `{set: weight, ...}`, mixed per sample (`shard_sets`).
        val_shards: Validation shards (same forms), None for no validation.
        batch_size: Samples per batch per rank.
        num_workers: DataLoader worker processes per rank (each draws its own train stream).
        seed: Base seed; every (rank, worker, resume step, epoch) stream is derived from it.
        steps_per_epoch: Train batches per epoch on every rank (`with_epoch`); counts batches, not optimizer steps.
        val_samples: Validate on only the first `val_samples` samples of the val set, None for all.
        max_frames: Random crop (train) or crop from the start (val) to this many codes frames (50 per second),
            None for whole segments.
        merge_text_p: Probability of merging metadata into the caption (audiocraft 0.25); 0 disables augmentation.
        drop_desc_p: Probability of dropping the original caption when merging (audiocraft 0.5).
        drop_other_p: Probability of keeping each metadata field when merging (audiocraft 0.5, a keep probability).
        require_chroma: Fail at the first sample without chroma.npy (melody models).
        shuffle_buffer: Train shuffle buffer in samples (per worker).
        max_skipped_fraction: Fail when a worker has skipped more than this fraction of corrupt samples.
        skip_check_after: Samples a worker must have seen before the skipped fraction is checked.
    """

    def __init__(
        self,
        shards: str | dict[str, float],
        val_shards: str | None = None,
        batch_size: int = 4,
        num_workers: int = 2,
        seed: int = 0,
        steps_per_epoch: int = 1000,
        val_samples: int | None = None,
        max_frames: int | None = None,
        merge_text_p: float = 0.25,
        drop_desc_p: float = 0.5,
        drop_other_p: float = 0.5,
        require_chroma: bool = False,
        shuffle_buffer: int = 1000,
        max_skipped_fraction: float = 0.1,
        skip_check_after: int = 200,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("steps_per_epoch", steps_per_epoch),
                            ("shuffle_buffer", shuffle_buffer)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
        if val_samples is not None and val_samples < 1:
            raise ValueError(f"val_samples must be >= 1 or None, got {val_samples}")
        for name, p in (("merge_text_p", merge_text_p), ("drop_desc_p", drop_desc_p), ("drop_other_p", drop_other_p),
                        ("max_skipped_fraction", max_skipped_fraction)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        self.sets = shard_sets(shards)
        self.save_hyperparameters()
        self.shards = shards
        self.val_shards = val_shards
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.steps_per_epoch = steps_per_epoch
        self.val_samples = val_samples
        self.max_frames = max_frames
        self.merge_text_p = merge_text_p
        self.drop_desc_p = drop_desc_p
        self.drop_other_p = drop_other_p
        self.require_chroma = require_chroma
        self.shuffle_buffer = shuffle_buffer
        self.max_skipped_fraction = max_skipped_fraction
        self.skip_check_after = skip_check_after
        self._resume_step: int | None = None
        self._descriptions: dict[str, dict[str, Any]] = {}

    # -- distributed context ---------------------------------------------------------------------------------------

    def dist_info(self) -> tuple[int, int]:
        """(global rank, world size) of this process.

        From the attached trainer (set up after the process group), else from an initialized `torch.distributed`,
        else RANK/WORLD_SIZE, else (0, 1).
        """
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return _dist_info_from_env()

    def reseed(self, step: int) -> None:
        """Fold `step` (the global step or a restart count) into the train seed of loaders built from now on.

        Without a call the step is 0 and the stream depends only on (seed, rank, worker, epoch), so a resumed run
        replays what the uninterrupted run would have drawn from the restored epoch on.

        Args:
            step: The resume step (or restart count); 0 reproduces a fresh run.
        """
        self._resume_step = int(step)

    @property
    def resume_step(self) -> int:
        """What the train seed folds in: `reseed`'s step, else 0."""
        return self._resume_step if self._resume_step is not None else 0

    # -- datasets and loaders ----------------------------------------------------------------------------------------

    def train_dataset(self, rank: int | None = None, world_size: int | None = None) -> TrainStream:
        """The train stream of one rank.

        Args:
            rank: Global rank (default: `dist_info()`).
            world_size: World size (default: `dist_info()`).

        Returns:
            A `TrainStream` yielding collated batches.
        """
        env_rank, env_world = self.dist_info()
        return TrainStream(
            [resolve_shards(spec) for spec, _ in self.sets],
            weights=[weight for _, weight in self.sets],
            rank=env_rank if rank is None else rank,
            world_size=env_world if world_size is None else world_size,
            seed=self.seed,
            resume_step=self.resume_step,
            batch_size=self.batch_size,
            shuffle_buffer=self.shuffle_buffer,
            max_frames=self.max_frames,
            merge_text_p=self.merge_text_p,
            drop_desc_p=self.drop_desc_p,
            drop_other_p=self.drop_other_p,
            require_chroma=self.require_chroma,
            max_skipped_fraction=self.max_skipped_fraction,
            skip_check_after=self.skip_check_after,
            specs=[self._described(spec)["spec"] for spec, _ in self.sets],
        )

    def val_dataset(self, rank: int | None = None, world_size: int | None = None) -> ValStream:
        """The val stream of one rank.

        Args:
            rank: Global rank (default: `dist_info()`).
            world_size: World size (default: `dist_info()`).

        Returns:
            A `ValStream` yielding collated batches.

        Raises:
            ValueError: No `val_shards` configured.
        """
        if self.val_shards is None:
            raise ValueError("no val_shards configured")
        env_rank, env_world = self.dist_info()
        return ValStream(
            resolve_shards(self.val_shards),
            rank=env_rank if rank is None else rank,
            world_size=env_world if world_size is None else world_size,
            batch_size=self.batch_size,
            val_samples=self.val_samples,
            max_frames=self.max_frames,
            require_chroma=self.require_chroma,
            max_skipped_fraction=self.max_skipped_fraction,
            skip_check_after=self.skip_check_after,
            spec=self._described(self.val_shards)["spec"],
        )

    def _described(self, shards: str) -> dict[str, Any]:
        """`describe_shards(shards)`, read once: what every sample of that set is checked against."""
        if shards not in self._descriptions:
            self._descriptions[shards] = describe_shards(shards)
        return self._descriptions[shards]

    def _stream_epoch(self) -> int:
        """Which epoch's stream to draw, from the batches already trained (restored on resume).

        Lightning's `current_epoch` is not advanced yet when a run resumed from a checkpoint taken on the last
        batch of an epoch builds its iterator; the global step is.
        """
        trainer = self.trainer
        return trainer.global_step * trainer.accumulate_grad_batches // self.steps_per_epoch

    def _loader(self, dataset: IterableDataset, num_batches: int | None) -> StreamLoader:
        trainer = self.trainer
        return StreamLoader(
            dataset,
            num_batches=num_batches,
            epoch_fn=self._stream_epoch if trainer is not None else None,
            trainer_fn=lambda: self.trainer,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            # Non-persistent workers start from the main process's copy of the stream each epoch; the loader bumps
            # its epoch counter first, so each epoch still draws fresh data.
            persistent_workers=False,
        )

    def train_dataloader(self) -> StreamLoader:
        """Exactly `steps_per_epoch` batches per epoch on every rank (see the module docstring for seeding)."""
        return self._loader(self.train_dataset(), self.steps_per_epoch)

    def val_dataloader(self) -> StreamLoader | list[Any]:
        """One deterministic pass over this rank's share of the val set; an empty list when there is none."""
        if self.val_shards is None:
            return []
        return self._loader(self.val_dataset(), None)

    # -- checks --------------------------------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What the train shards hold: `describe_shards` of `shards`, with `num_val_shards` added.

        Raises:
            FileNotFoundError: No shards.
            BadFileError: A set's first sample is corrupt.
            DataError: No readable sample; the sets of a mix, or the val set, differ from the first set; or
                `require_chroma` and the shards have no chroma.
        """
        found = dict(self._described(self.sets[0][0]))
        others = [(f"data.shards: {spec!r}", spec) for spec, _ in self.sets[1:]]  # a mix trains one model
        if self.val_shards is not None:
            others.append(("data.val_shards", self.val_shards))
        for name, spec in others:
            other = self._described(spec)
            for key in ("num_codebooks", "has_chroma", "sample_rate"):
                if other[key] != found[key]:
                    raise DataError(f"{name} holds {key}={other[key]} but data.shards {self.sets[0][0]!r} "
                                    f"{key}={found[key]}; train and validation sets must be prepped alike")
        if self.require_chroma and not found["has_chroma"]:
            raise DataError(f"require_chroma is set (melody model) but {found['first_shard']} holds no {CHROMA_KEY}: "
                            "prep with --melody")
        found["num_val_shards"] = len(resolve_shards(self.val_shards)) if self.val_shards is not None else 0
        return found

    def check_num_codebooks(self, num_codebooks: int) -> dict[str, Any]:
        """Fail before training when the shards' K differs from the model's `num_codebooks`.

        Args:
            num_codebooks: The LM's number of codebooks (4 mono, 8 stereo).

        Returns:
            `describe()`'s dict.

        Raises:
            ValueError: The numbers differ (e.g. stereo shards for a mono model).
        """
        found = self.describe()
        if found["num_codebooks"] != num_codebooks:
            kind = {CODEBOOKS_PER_CHANNEL: "mono", 2 * CODEBOOKS_PER_CHANNEL: "stereo"}
            raise ValueError(
                f"shards {self.shards!r} hold K={found['num_codebooks']} codebooks "
                f"({kind.get(found['num_codebooks'], '?')}) but the model has num_codebooks={num_codebooks} "
                f"({kind.get(num_codebooks, '?')}): prep with --channels {num_codebooks // CODEBOOKS_PER_CHANNEL} "
                "or pick a matching model"
            )
        return found
