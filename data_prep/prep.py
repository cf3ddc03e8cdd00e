r"""`mgft prep`: a licensed catalog becomes EnCodec (+ chroma, + audio) webdataset shards.

    mgft prep --input CATALOG_DIR_OR_CSV --output SHARDS --codec facebook/encodec_32khz \
        [--channels 2] [--segment-seconds 30] [--melody --demucs htdemucs] [--keep-audio] \
        [--license CC-BY-4.0] [--allowed-licenses CC0-1.0,CC-BY-4.0] [--device cuda] [--batch-size 16] \
        [--workers 4] [--rank R --world-size W] [--val-fraction 0.1 --split-by artist] [--near-duplicates] \
        [--auto-tags [--clap laion/clap-htsat-unfused]] [--instance-prompt TEXT] [--drop-vocals]

A track's path through prep: scan (catalog.py) -> this rank's share (by size hash) -> worker: hash, sidecar/tags,
license, decode, validate, resample to 32 kHz, channels (audio.py), fingerprint (fingerprint.py) -> main process:
duplicate and near-duplicate checks, segment, EnCodec (codec.py), stems + chroma (stems.py, chroma.py) -> shard
writer + journal (shards.py) -> merge (merge.py, which also drops near-duplicates that straddle two ranks). With
--val-fraction the scanned catalog is first split by artist, album or track (split.py) into OUT/train and OUT/val.
Killed at any point and rerun with the same command, it finishes with exactly the samples of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from data_prep import audio as audio_io
from data_prep.atomic import atomic_write_text
from data_prep.audio import RejectError
from data_prep.catalog import (
    AUDIO_SUFFIXES,
    Track,
    describe,
    partition,
    path_fields,
    printable,
    read_sidecar,
    row_rel,
    scan,
)
from data_prep.duplicates import license_conflicts, sha256_of
from data_prep.schema import (
    CHROMA_DTYPE,
    SAMPLE_RATE,
    SCHEMA_VERSION,
    SHARD_GLOB,
    SampleInfo,
    num_frames,
    sample_key,
    valid_frames,
)
from data_prep.segments import Window, cut_windows
from data_prep.shards import (
    Journal,
    ShardWriter,
    clean_uncommitted,
    encode_flac,
    journal_path,
    read_journal,
)
from data_prep.split import SplitBy
from data_prep.tags import caption_from, check_clap_flags, clap_fills, estimate_tags

CONFIG_FILE = "prep_config.json"
MIN_SEGMENT_SECONDS = 1.0
"""Shortest --segment-seconds (and --stride-seconds): 50 frames. MusicGen trains on 30 s; far shorter segments are a
typo (0.001 s would write a sample per 32 samples of audio, each holding no whole frame)."""
_TAG_FIELDS = ("title", "artist", "genre", "license")


@dataclass(frozen=True)
class PrepSettings:
    """Everything that determines the output; a rerun or another rank must use the same values."""

    input: str
    codec: str
    channels: int
    segment_seconds: float
    stride_seconds: float
    melody: bool
    demucs: str | None
    demucs_shifts: int
    keep_audio: bool
    default_license: str | None
    allowed_licenses: list[str] | None
    min_seconds: float
    silence_dbfs: float
    world_size: int
    shard_max_samples: int
    shard_max_mb: float
    # EnCodec's call shape [batch_size, 1, N]: codes depend on it at float precision (kernels chosen per shape), so a
    # resumed run or another rank must encode with the same one.
    batch_size: int = 2
    # A split output (OUT/train, OUT/val) records its split in both halves: a rerun must split the same way.
    val_fraction: float = 0.0
    split_by: str | None = None
    auto_tags: bool = False
    drop_vocals: bool = False
    near_duplicates: bool = False
    # --clap (resolved as `local_or_hub` records it) and the label lists it scored; None: no CLAP labels.
    clap: str | None = None
    clap_labels: dict[str, list[str]] | None = None
    instance_prompt: str | None = None
    schema_version: int = SCHEMA_VERSION


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit flags win; otherwise a SLURM array task's index and count; otherwise a single rank."""
    env = os.environ
    if rank is None and "SLURM_ARRAY_TASK_ID" in env:
        rank = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
    if world_size is None and "SLURM_ARRAY_TASK_COUNT" in env:
        world_size = int(env["SLURM_ARRAY_TASK_COUNT"])
    rank, world_size = rank or 0, world_size or 1
    if not 0 <= rank < world_size:
        raise ValueError(f"--rank {rank} must be in [0, --world-size {world_size})")
    return rank, world_size


def nothing_prepped(out_dir: Path) -> bool:
    """No rank of the prep in `out_dir` has committed a shard or a reject (nor left a shard file) yet."""
    if any(out_dir.glob(SHARD_GLOB)):
        return False
    return not any(read_journal(path).done for path in out_dir.glob("journal.r*.jsonl"))


def check_settings(out_dir: Path, settings: PrepSettings) -> None:
    """Record the settings on the first run; refuse to resume or add ranks with different ones.

    Settings under which nothing was committed (a run that failed before its first track: a model that did not load,
    a wrong flag found late) are replaced, so the corrected command can use the same `--output`.
    """
    path = out_dir / CONFIG_FILE
    current = asdict(settings)
    if path.exists() and nothing_prepped(out_dir):
        path.unlink()
    if path.exists():
        previous = json.loads(path.read_text())
        # Older outputs stored the model paths as typed: compare them resolved, as this version stores them.
        previous.update({k: local_or_hub(previous[k]) for k in ("codec", "demucs", "clap") if previous.get(k)})
        # Older outputs did not record the EnCodec batch; 8 was the default then.
        previous.setdefault("batch_size", 8)
        previous.setdefault("val_fraction", 0.0)  # and were never split
        previous.setdefault("split_by", None)
        previous.setdefault("auto_tags", False)
        previous.setdefault("drop_vocals", False)
        for name in ("clap", "clap_labels", "instance_prompt"):  # older outputs had neither CLAP nor a phrase
            previous.setdefault(name, None)
        previous.setdefault("near_duplicates", False)
        diff = {k: (previous.get(k), v) for k, v in current.items() if previous.get(k) != v}
        if "schema_version" in diff:
            raise ValueError(
                f"{out_dir} holds shards of schema {previous.get('schema_version')}, which counted a partial last "
                f"frame as valid; this version writes schema {SCHEMA_VERSION} (whole frames only, as audiocraft). "
                "Mixing both in one output would mix the two counts: prep into a new --output. The old shards "
                "still train as they are (the trainer reads both counts as whole frames)."
            )
        if diff:
            lines = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in diff.items())
            hint = f" (or --batch-size {diff['batch_size'][0]})" if list(diff) == ["batch_size"] else ""
            raise ValueError(f"{out_dir} was prepped with other settings ({lines}); use a new --output{hint}")
        return
    atomic_write_text(path, json.dumps(current, indent=2))


def local_or_hub(name: str) -> str:
    """A model argument as settings record it: an existing local path resolved, anything else as typed.

    So `models/x` typed in one folder and `/abs/models/x` are the same model; a hub id or a demucs name stays a name.
    """
    return str(Path(name).resolve()) if Path(name).exists() else name


STREAM_SECONDS = 600.0
"""Tracks longer than this are not handed whole from a worker to the main process: the worker only checks them, and
the main process decodes them again block by block while it encodes (`_stream_track`), so memory stays bounded by
the segment and batch sizes however long the track (a worker holds at most this much decoded audio per track)."""


class TrackDecoder:
    """Per-track CPU work, run in DataLoader workers: everything up to 32 kHz audio in the model's channel count.

    A map-style dataset (`__len__`, `__getitem__`), which is all `torch.utils.data.DataLoader` needs. The item holds
    `audio` `[C, N]` at 32 kHz, or, for a track longer than `STREAM_SECONDS`, `stream` (the decoder to read it
    again with) and no audio.
    """

    def __init__(self, tracks: list[Track], settings: PrepSettings, conflicts: dict[str, str] | None = None) -> None:
        self.tracks = tracks
        self.settings = settings
        self.conflicts = conflicts or {}

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, index: int) -> dict[str, Any]:
        track, s = self.tracks[index], self.settings
        result: dict[str, Any] = {"track": track, "sha256": None}
        try:
            if track.problem is not None:
                raise RejectError(*track.problem)
            result["sha256"] = sha256_of(track.path)
            if track.rel in self.conflicts:
                raise RejectError("license_conflict", self.conflicts[track.rel])
            info = describe_track(track, s)
            scan = audio_io.scan_audio(track.path, keep_seconds=STREAM_SECONDS)
            audio_io.check_content(scan, min_seconds=s.min_seconds, silence_dbfs=s.silence_dbfs)
            result["source"] = {
                "sample_rate": scan.info.sample_rate,
                "channels": scan.info.channels,
                "codec": scan.info.codec,
                "seconds": scan.seconds,
            }
            notes = list(info.notes)
            if clipping := audio_io.clipping_note(scan.peak):
                notes.append(clipping)
            conversion, blocks = audio_io.prepare_blocks(scan.info, scan.blocks or [], SAMPLE_RATE, s.channels)
            notes.extend(conversion)
            if scan.blocks is None:
                result["stream"] = scan.info.backend
            else:
                result["audio"] = np.concatenate(list(blocks), axis=1)  # [C, N] at 32 kHz
            if s.auto_tags:
                if "audio" in result:
                    info = with_estimates(info, estimate_tags(result["audio"], SAMPLE_RATE, s.clap, s.clap_labels))
                else:
                    notes.append(f"auto-tags: not estimated (a track over {STREAM_SECONDS / 60:g} minutes, streamed)")
            if s.instance_prompt:
                info = with_instance_prompt(info, s.instance_prompt)
            if s.near_duplicates:
                result["fingerprint"] = track_fingerprint(track, result, s.channels)
                if result["fingerprint"] is None:
                    notes.append("near-duplicates: too short to fingerprint (under about 4 s), not compared")
        except RejectError as e:
            result.update(reason=e.reason, detail=printable(e.detail))
            return result
        except OSError as e:  # permissions or I/O, on the file or between its scan and now
            result.update(reason="unreadable", detail=printable(f"{type(e).__name__}: {e.strerror or e}"))
            return result
        result.update(info=info, notes=notes)
        return result


def track_fingerprint(track: Track, item: dict[str, Any], channels: int) -> str | None:
    """The Chromaprint fingerprint of a decoded track's 32 kHz audio (for a streamed one, its start read again)."""
    from data_prep.fingerprint import FINGERPRINT_SECONDS, fingerprint

    if "audio" in item:
        return fingerprint([item["audio"]], SAMPLE_RATE)
    # The same samples as a whole read (soxr's stream equals whole resampling); decoding stops after the start.
    info, raw = audio_io.read_blocks(track.path, item["stream"])
    _, blocks = audio_io.prepare_blocks(info, raw, SAMPLE_RATE, channels)
    try:
        return fingerprint(blocks, SAMPLE_RATE)
    except RejectError as e:
        raise RejectError(e.reason, f"{e.detail} (while fingerprinting its first {FINGERPRINT_SECONDS:g} s)") from e


def with_estimates(info: Any, estimates: dict[str, Any]) -> Any:
    """`info` with its empty fields filled from `estimates`, and a caption when it has none.

    bpm and key come from the tempo and key estimates; genre, moods and instrument from CLAP's top labels. Filled
    fields are marked `estimated:FIELD` among the sources; a composed caption `estimated:caption`.
    """
    metadata, sources = dict(info.metadata), list(info.metadata_sources)
    fills = {"bpm": estimates.get("bpm"), "key": (estimates.get("key") or "").lower() or None,
             **clap_fills(estimates.get("clap") or {})}
    for name, value in fills.items():
        if metadata.get(name) is None and value is not None:
            metadata[name] = value
            sources.append(f"estimated:{name}")
    caption = info.caption
    if caption is None and (caption := caption_from(metadata)) is not None:
        sources.append("estimated:caption")
    return dataclasses.replace(info, caption=caption, metadata=metadata, metadata_sources=sources,
                               estimates=estimates)


def with_instance_prompt(info: Any, prompt: str) -> Any:
    """`info` with the trigger phrase in front of its caption ("PROMPT, caption"; the phrase alone if it has none).

    Marked `instance_prompt` among the sources, so a reader knows the caption's first words are the phrase.
    """
    caption = f"{prompt}, {info.caption}" if info.caption else prompt
    return dataclasses.replace(info, caption=caption, metadata_sources=[*info.metadata_sources, "instance_prompt"])


def describe_track(track: Track, settings: PrepSettings) -> Any:
    """Caption, metadata and license of a track from its sidecar, catalog row and tags (`catalog.describe`)."""
    tags = {k: v for k, v in audio_io.read_tags(track.path).items() if k in _TAG_FIELDS}
    return describe(track, read_sidecar(track), tags, default_license=settings.default_license,
                    allowed_licenses=settings.allowed_licenses)


@dataclass
class OpenTrack:
    """A kept track being segmented; its manifest row is written once its last window has its codes."""

    item: dict[str, Any]
    windows: list[tuple[int, int]] = field(default_factory=list)
    num_samples: int = 0  # [C, N] at 32 kHz: N, known once the last window is cut


@dataclass
class Segment:
    """One window waiting for its codes (and chroma) in the encoder's queue."""

    track: OpenTrack
    window: Window
    codes: np.ndarray | None = None  # [4 C, T] int16
    chroma: np.ndarray | None = None  # [F, 12]


def _seed_for(key: str) -> int:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)


class SegmentEncoder:
    """Turns pending tracks into codes (+ chroma): segments are padded to the segment length and batched."""

    def __init__(self, settings: PrepSettings, device: str) -> None:
        from data_prep.codec import CodecEncoder, load_codec

        self.settings = settings
        self.segment_samples = round(settings.segment_seconds * SAMPLE_RATE)
        self.codec = CodecEncoder(load_codec(settings.codec, device), settings.batch_size)
        self.demucs = self.extractor = None
        if settings.melody or settings.drop_vocals:
            from data_prep.stems import load_demucs

            self.demucs = load_demucs(settings.demucs, device)
        if settings.melody:
            from data_prep.chroma import ChromaExtractor

            self.extractor = ChromaExtractor().to(device)

    def padded(self, audio: np.ndarray) -> np.ndarray:
        """`[C, segment_samples]`: the window `[C, n]`, right-padded with zeros as audiocraft's dataset pads."""
        out = np.zeros((audio.shape[0], self.segment_samples), dtype=np.float32)
        out[:, : audio.shape[1]] = audio
        return out

    def run(self, queue: list[Segment]) -> None:
        """Fill the codes (and, for melody, the chroma) of every queued segment, all encoded together."""
        if not queue:
            return
        batch = np.stack([self.padded(q.window.audio) for q in queue])  # [B, C, N]
        if self.settings.drop_vocals:
            self._drop_vocals(queue, batch)
        codes = self.codec.encode(batch)  # [B, 4C, T]
        for q, c in zip(queue, codes):
            q.codes = c
        if self.extractor is not None and not self.settings.drop_vocals:
            import torch

            from data_prep.stems import melody_chroma

            for q, wav in zip(queue, batch):
                key = sample_key(q.track.item["track"].key, q.window.index)
                # One segment per call: demucs' random shift is seeded per sample, so chroma never depends on
                # which segments share a batch (resume and rank equivalence).
                # audiocraft's chroma (its cache, with which the melody models were trained) averages the channels
                # before demucs; separating each channel of a stereo segment would also take twice as long.
                mono = torch.from_numpy(wav).mean(0, keepdim=True)[None]  # [1, 1, N]
                chroma = melody_chroma(self.demucs, self.extractor, mono, seed=_seed_for(key),
                                       shifts=self.settings.demucs_shifts)  # [1, F, 12]
                q.chroma = chroma[0].cpu().numpy().astype(CHROMA_DTYPE)


    def _drop_vocals(self, queue: list[Segment], batch: np.ndarray) -> None:
        """Replace each segment's audio (in `batch` `[B, C, N]` and its window) by its instrumental, in place.

        One demucs pass per segment, seeded per sample as the chroma's is; with --melody the chroma comes from the
        same pass (`stems.instrumental_and_melody`), so nothing is separated twice.
        """
        import torch

        from data_prep.stems import instrumental_and_melody

        for i, q in enumerate(queue):
            key = sample_key(q.track.item["track"].key, q.window.index)
            wav = torch.from_numpy(batch[i])[None]  # [1, C, N]
            instrumental, melody = instrumental_and_melody(self.demucs, wav, seed=_seed_for(key),
                                                           shifts=self.settings.demucs_shifts)
            n = q.window.audio.shape[1]
            batch[i] = 0.0
            batch[i, :, :n] = instrumental[:, :n].cpu().numpy()  # the padding stays silent
            q.window = dataclasses.replace(q.window, audio=batch[i, :, :n].copy())
            if self.extractor is not None:
                chroma = self.extractor(melody[None].to(self.extractor.fbanks.device))  # [1, F, 12]
                q.chroma = chroma[0].cpu().numpy().astype(CHROMA_DTYPE)


def build_sample(q: Segment, settings: PrepSettings) -> dict[str, Any]:
    """The webdataset sample of one encoded window: codes, (chroma), (audio), and its json."""
    from data_prep.chroma import chroma_valid_frames

    item, track, w = q.track.item, q.track.item["track"], q.window
    info = item["info"]
    n_total = num_frames(settings.segment_seconds)
    key = sample_key(track.key, w.index)
    meta: SampleInfo = {
        "schema_version": SCHEMA_VERSION,
        "key": key,
        "track_key": track.key,
        "segment_index": w.index,
        "caption": info.caption,
        "metadata": info.metadata,
        "license": info.license,
        "source_path": path_fields(track.rel)["path"],
        "source_sha256": item["sha256"],
        "start_seconds": w.start / SAMPLE_RATE,
        "end_seconds": w.end / SAMPLE_RATE,
        "valid_frames": min(valid_frames(w.end - w.start), n_total),
        "num_frames": n_total,
        "chroma_valid_frames": chroma_valid_frames(w.end - w.start) if settings.melody else None,
        "sample_rate": SAMPLE_RATE,
        "channels": settings.channels,
    }
    sample: dict[str, Any] = {"__key__": key, "codes.npy": q.codes, "json": meta}
    if settings.melody:
        sample["chroma.npy"] = q.chroma
    if settings.keep_audio:
        sample["audio.flac"] = encode_flac(w.audio, SAMPLE_RATE)
    return sample


def manifest_row(t: OpenTrack) -> dict[str, Any]:
    """The manifest row of a track whose windows are all written."""
    item, track, info = t.item, t.item["track"], t.item["info"]
    keys = [sample_key(track.key, i) for i in range(len(t.windows))]
    # With a stride shorter than the segment, windows overlap; count each second of the track once.
    kept = sum(min(end, t.windows[i + 1][0] if i + 1 < len(t.windows) else end) - start
               for i, (start, end) in enumerate(t.windows))
    return {
        **path_fields(track.rel),
        "key": track.key,
        "sha256": item["sha256"],
        "size_bytes": track.size,
        "source": item["source"],
        "seconds": t.num_samples / SAMPLE_RATE,
        "kept_seconds": kept / SAMPLE_RATE,
        "license": info.license,
        "caption": info.caption,
        "metadata": info.metadata,
        "metadata_sources": info.metadata_sources,
        **({"estimates": info.estimates} if info.estimates else {}),
        **({"fingerprint": item["fingerprint"]} if "fingerprint" in item else {}),
        "notes": item["notes"],
        "segments": [{"key": k, "start_seconds": s / SAMPLE_RATE, "end_seconds": e / SAMPLE_RATE}
                     for k, (s, e) in zip(keys, t.windows)],
    }


def _reject_row(item: dict[str, Any], reason: str, detail: str) -> dict[str, Any]:
    track: Track = item["track"]
    return {**path_fields(track.rel), "reason": reason, "detail": printable(detail), "sha256": item.get("sha256"),
            "size": track.size}


def prep(
    *,
    input: str,
    output: str,
    codec: str,
    channels: int = 2,
    segment_seconds: float = 30.0,
    stride_seconds: float | None = None,
    melody: bool = False,
    demucs: str | None = None,
    demucs_shifts: int = 1,
    keep_audio: bool = False,
    license: str | None = None,
    allowed_licenses: str | None = None,
    min_seconds: float = 1.0,
    silence_dbfs: float = -80.0,
    device: str = "cpu",
    batch_size: int = 2,
    workers: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    shard_max_samples: int = 1000,
    shard_max_mb: float = 1024.0,
    val_fraction: float = 0.0,
    split_by: SplitBy = "artist",
    auto_tags: bool = False,
    drop_vocals: bool = False,
    near_duplicates: bool = False,
    clap: str | None = None,
    clap_labels: str | None = None,
    instance_prompt: str | None = None,
) -> dict[str, Any]:
    """Turn a licensed catalog into webdataset shards of EnCodec codes, with chroma and audio on request.

    Args:
        input: A folder tree of audio files (with optional sidecar .json), or a .csv/.jsonl catalog with a `path`
            column (relative paths are relative to the catalog file).
        output: Output folder for shards, manifest.jsonl, rejects.jsonl and stats.json. Rerunning into it resumes.
        codec: EnCodec 32 kHz as a hub id (facebook/encodec_32khz) or a local transformers directory.
        channels: 1 for mono MusicGen models (channel mean), 2 for stereo ones (interleaved codebooks).
        segment_seconds: Segment length; T = 50 x segment_seconds frames. Shorter tracks and tails are zero-padded
            and keep their valid frame count.
        stride_seconds: Hop between segment starts (default: segment_seconds, no overlap).
        melody: Also store the chroma of the vocals + other stems of every segment (needs --demucs).
        demucs: HTDemucs as a demucs model name (htdemucs) or a local folder holding NAME.yaml and its .th files.
        demucs_shifts: demucs random-shift passes (audiocraft uses 1); the shift is seeded per sample.
        keep_audio: Store each 32 kHz segment as audio.flac (multi-band diffusion training needs it).
        license: License for tracks whose sidecar, catalog row and tags name none.
        allowed_licenses: Comma-separated licenses to accept; anything else is rejected.
        min_seconds: Tracks shorter than this are rejected.
        silence_dbfs: Tracks whose peak is at or below this level are rejected as silent.
        device: Where EnCodec and demucs run (cpu, cuda, cuda:1, ...).
        batch_size: Mono segments per EnCodec call (a stereo segment is two). Peak memory grows with it (EnCodec's
            activations of 30 s at 32 kHz), speed a little (docs/performance.md). Recorded: a resume must use it.
        workers: DataLoader worker processes for decoding and resampling (0: in the main process).
        rank: This task's index among world_size (default: SLURM_ARRAY_TASK_ID, else 0).
        world_size: Number of tasks splitting the catalog (default: SLURM_ARRAY_TASK_COUNT, else 1).
        shard_max_samples: Close a shard once it holds this many samples (tracks are never split).
        shard_max_mb: Close a shard once it holds this many megabytes.
        val_fraction: Split the catalog: this share of its tracks goes to `OUTPUT/val`, the rest to `OUTPUT/train`,
            two complete prep outputs (for `data.val_shards` and `data.shards`). 0: no split, one output.
        split_by: What never appears on both sides of the split: an artist, an album (of an artist, from the
            sidecar or catalog row's `album`), or only a track. Tracks without the field are split alone.
        drop_vocals: Store the instrumental: codes (and audio.flac) of every stem but the vocals, from a demucs
            pass per segment (needs --demucs; with --melody the chroma comes from the same pass).
        auto_tags: Estimate tempo, key and loudness from the audio (`data_prep/tags.py`): they fill the bpm and key
            a track's sidecar leaves empty, a caption for a track without one, and the manifest's `estimates`.
        clap: With --auto-tags, a CLAP checkpoint (a folder saved by `save_pretrained`, or a hub id such as
            laion/clap-htsat-unfused) whose zero-shot labels fill the genre, moods and instrument a track's metadata
            leaves empty; the top labels of each list and their scores go in the manifest's `estimates`.
        clap_labels: A JSON or YAML file of the label lists CLAP scores, `{"genre": [...], "mood": [...],
            "instrument": [...]}`; a list it leaves out keeps its default (`data_prep/tags.py`).
        instance_prompt: A trigger phrase put in front of every kept track's caption ("PHRASE, caption"; the phrase
            alone for a track without one), as DreamBooth-style fine-tuning uses one.
        near_duplicates: Refuse a track whose audio is a kept track's recording in another encoding (a FLAC master
            and its MP3), by Chromaprint fingerprints (`data_prep/fingerprint.py`; needs the libchromaprint
            library): the first in catalog order is kept, across ranks too (the merge drops the later copy), and a
            validation track matching a training track is dropped from the validation side.

    Returns:
        The merged stats when this call produced them (one rank, or the last of several to finish), else this
        rank's counts; split, `{"train": ..., "val": ...}` of those.
    """
    if channels not in (1, 2):
        raise ValueError(f"--channels must be 1 or 2, got {channels}")
    if not segment_seconds >= MIN_SEGMENT_SECONDS:
        raise ValueError(f"--segment-seconds must be at least {MIN_SEGMENT_SECONDS} (MusicGen trains on 30), "
                         f"got {segment_seconds}")
    stride = segment_seconds if stride_seconds is None else stride_seconds
    if not min(MIN_SEGMENT_SECONDS, segment_seconds) <= stride <= segment_seconds:
        raise ValueError(f"--stride-seconds must be in [{MIN_SEGMENT_SECONDS}, --segment-seconds], got {stride}")
    for flag, value, low in (("--batch-size", batch_size, 1), ("--workers", workers, 0),
                             ("--demucs-shifts", demucs_shifts, 1), ("--shard-max-samples", shard_max_samples, 1)):
        if value < low:
            raise ValueError(f"{flag} must be at least {low}, got {value}")
    if not shard_max_mb > 0:
        raise ValueError(f"--shard-max-mb must be positive, got {shard_max_mb}")
    if not min_seconds >= 0:
        raise ValueError(f"--min-seconds must be 0 or more, got {min_seconds}")
    if melody and not demucs:
        raise ValueError("--melody needs --demucs (a model name such as htdemucs, or a local folder)")
    if drop_vocals and not demucs:
        raise ValueError("--drop-vocals needs --demucs (a model name such as htdemucs, or a local folder)")
    if near_duplicates:
        from data_prep.fingerprint import require_chromaprint

        require_chromaprint()
    clap_label_lists = check_clap_flags(clap, clap_labels, auto_tags)
    if instance_prompt is not None and not instance_prompt.strip():
        raise ValueError("--instance-prompt is empty (give the trigger phrase, e.g. 'in the style of sks')")
    if val_fraction and not 0 < val_fraction < 1:
        raise ValueError(f"--val-fraction must be between 0 and 1 (exclusive; 0: no split), got {val_fraction}")
    if split_by not in ("artist", "album", "track"):
        raise ValueError(f"--split-by must be artist, album or track, got {split_by!r}")
    input_path = Path(input).resolve()
    if not input_path.exists():
        raise ValueError(f"--input {input} does not exist")
    rank, world_size = resolve_rank(rank, world_size)
    all_tracks = scan(input_path)
    if not all_tracks:
        raise ValueError(f"--input {input} holds no audio files (looked for {', '.join(sorted(AUDIO_SUFFIXES))}, "
                         "in subfolders too)")
    settings = PrepSettings(
        input=str(input_path),
        codec=local_or_hub(codec),
        channels=channels,
        segment_seconds=float(segment_seconds),
        stride_seconds=float(stride),
        melody=melody,
        demucs=local_or_hub(demucs) if (melody or drop_vocals) and demucs else None,
        demucs_shifts=demucs_shifts,
        keep_audio=keep_audio,
        default_license=license,
        allowed_licenses=[x.strip() for x in allowed_licenses.split(",") if x.strip()] if allowed_licenses else None,
        min_seconds=float(min_seconds),
        silence_dbfs=float(silence_dbfs),
        world_size=world_size,
        shard_max_samples=shard_max_samples,
        shard_max_mb=float(shard_max_mb),
        batch_size=batch_size,
        val_fraction=float(val_fraction),
        split_by=split_by if val_fraction else None,
        auto_tags=auto_tags,
        drop_vocals=drop_vocals,
        near_duplicates=near_duplicates,
        clap=local_or_hub(clap) if clap else None,
        clap_labels=clap_label_lists,
        instance_prompt=instance_prompt.strip() if instance_prompt else None,
    )
    out_dir = Path(output)
    check_split_layout(out_dir, bool(val_fraction))
    if not val_fraction:
        return _prep_into(out_dir, all_tracks, settings, rank, world_size, device, workers)

    from data_prep.split import SPLITS, split_catalog

    def metadata_of(track: Track) -> dict[str, Any] | None:
        if track.problem is not None:
            return None
        try:
            return describe_track(track, settings).metadata
        except Exception:  # noqa: BLE001 -- rejected later with its reason; here it is only split on its own
            return None

    sides = split_catalog(all_tracks, val_fraction, split_by, metadata_of)
    print(f"split by {split_by}: {len(sides['train'])} tracks to {out_dir / 'train'}, {len(sides['val'])} to "
          f"{out_dir / 'val'}")
    return {name: _prep_into(out_dir / name, sides[name], settings, rank, world_size, device, workers)
            for name in SPLITS}


def check_split_layout(out_dir: Path, split: bool) -> None:
    """Refuse to mix a split output (OUT/train, OUT/val) and an unsplit one (shards in OUT) in one folder."""
    if split and (out_dir / "prep_config.json").exists():
        raise ValueError(f"{out_dir} holds a prep without a split; use a new --output for --val-fraction")
    if not split and (out_dir / "train" / "prep_config.json").exists():
        raise ValueError(f"{out_dir} holds a split prep (train/, val/): rerun with its --val-fraction and "
                         "--split-by to resume it, or use a new --output")


def _prep_into(out_dir: Path, all_tracks: list[Track], settings: PrepSettings, rank: int, world_size: int,
               device: str, workers: int) -> dict[str, Any]:
    """Prep `all_tracks` (this rank's share of them) into one output folder, resuming what it holds."""
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    with rank_lock(out_dir, rank):
        check_settings(out_dir, settings)
        try:
            return _prep_resumed(out_dir, all_tracks, settings, rank, world_size, device, workers)
        except BaseException:
            if nothing_prepped(out_dir):  # failed before its first track: leave nothing that a rerun must match
                (out_dir / CONFIG_FILE).unlink(missing_ok=True)
                if created:
                    shutil.rmtree(out_dir)
                elif journal_path(out_dir, rank).stat().st_size == 0:
                    journal_path(out_dir, rank).unlink()
            raise


@contextlib.contextmanager
def rank_lock(out_dir: Path, rank: int) -> Iterator[None]:
    """Hold a lock on this rank's journal while it preps: a second prep of the same rank and folder is refused.

    Its resume would delete the first one's open shard (`clean_uncommitted`). The lock is the kernel's (flock on the
    journal, which an empty file starts), so a killed prep releases it.
    """
    import fcntl

    with open(journal_path(out_dir, rank), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"--output {out_dir}: another mgft prep is running there as rank {rank}; wait for it, "
                             "or stop it and rerun this command to resume") from None
        yield


def _prep_resumed(out_dir: Path, all_tracks: list[Track], settings: PrepSettings, rank: int, world_size: int,
                  device: str, workers: int) -> dict[str, Any]:
    from data_prep.merge import format_summary, merge_if_complete

    tracks = partition(all_tracks, rank, world_size)
    jpath = journal_path(out_dir, rank)
    state = read_journal(jpath, repair=True)
    clean_uncommitted(out_dir, rank, state)
    done = state.done
    todo = [t for t in tracks if t.rel not in done]
    conflicts = license_conflicts(tracks, lambda t: describe_track(t, settings).license)
    (out_dir / f"done.r{rank:04d}").unlink(missing_ok=True)

    counts = _run(todo, settings, out_dir, rank, state, device, workers, len(tracks), conflicts)
    (out_dir / f"done.r{rank:04d}").write_text(json.dumps(counts))
    stats = merge_if_complete(out_dir)
    if stats is not None:
        print(format_summary(stats))
        return stats
    print(f"rank {rank}/{world_size}: {counts}; merge runs when every rank is done (or: mgft prep-merge {out_dir})")
    return counts


class PrepLoop:
    """The main process's side of prep: windows of kept tracks -> batched codes -> samples in the shard writer.

    Windows queue up across tracks (in track order) until a batch is full; the samples are written in that order, and
    a track's manifest row goes in once its last window is written, so shards hold whole tracks.
    """

    def __init__(self, settings: PrepSettings, writer: ShardWriter, encoder: SegmentEncoder,
                 counts: dict[str, int]) -> None:
        self.settings = settings
        self.writer = writer
        self.encoder = encoder
        self.counts = counts
        self.segment = round(settings.segment_seconds * SAMPLE_RATE)
        self.stride = round(settings.stride_seconds * SAMPLE_RATE)
        self.queue: list[Segment] = []  # waiting for codes

    def flush(self) -> None:
        """Encode the queued windows and write their samples (and the rows of tracks they complete)."""
        self.encoder.run(self.queue)
        for q in self.queue:
            if q.window.index == 0:
                self.writer.begin_track()
            self.writer.add_sample(build_sample(q, self.settings))
            if q.window.last:
                self.writer.end_track(manifest_row(q.track))
                self.counts["segments"] += len(q.track.windows)
        self.queue.clear()

    def add_track(self, item: dict[str, Any], blocks: Iterator[np.ndarray]) -> None:
        """Cut a kept track's 32 kHz blocks `[C, n]` into windows and queue them, encoding whenever a batch fills."""
        track = OpenTrack(item)
        for window in cut_windows(blocks, self.segment, self.stride):
            track.windows.append((window.start, window.end))
            if window.last:
                track.num_samples = window.end
            self.queue.append(Segment(track, window))
            if len(self.queue) * self.settings.channels >= self.settings.batch_size:
                self.flush()

    def stream_track(self, item: dict[str, Any]) -> bool:
        """Decode, segment and encode a long track block by block; False (the item's reason set) if its read fails.

        The track starts a fresh shard, so that if its file fails on this second read (changed or gone since the
        worker checked it), dropping the open shard drops only its samples.
        """
        self.flush()
        self.writer.close()
        track: Track = item["track"]
        inner = tqdm(total=round(item["source"]["seconds"]), desc=f"  {printable(track.rel)[-40:]}", unit="s",
                     leave=False, dynamic_ncols=True, position=1)
        try:
            info, raw = audio_io.read_blocks(track.path, item["stream"])

            def counted() -> Iterator[np.ndarray]:
                for block in raw:  # [C, n] at the file's rate
                    inner.update(block.shape[1] / info.sample_rate)
                    yield block

            _, blocks = audio_io.prepare_blocks(info, counted(), SAMPLE_RATE, self.settings.channels)
            self.add_track(item, blocks)
            self.flush()
        except (RejectError, OSError) as e:
            detail = e.detail if isinstance(e, RejectError) else f"{type(e).__name__}: {e}"
            item.update(reason="decode_error", detail=printable(f"failed on the second, streamed read: {detail}"))
            self.queue.clear()
            self.writer.discard()
            return False
        finally:
            inner.close()
        return True


def _run(
    todo: list[Track],
    settings: PrepSettings,
    out_dir: Path,
    rank: int,
    state: Any,
    device: str,
    workers: int,
    total: int,
    conflicts: dict[str, str],
) -> dict[str, int]:
    import torch

    journal = Journal(journal_path(out_dir, rank))
    writer = ShardWriter(
        out_dir, rank, journal, len(state.shards), settings.shard_max_samples, int(settings.shard_max_mb * 2**20)
    )
    counts = {"tracks": total, "resumed_done": total - len(todo), "kept": 0, "rejected": 0, "segments": 0}
    loop = PrepLoop(settings, writer, SegmentEncoder(settings, device), counts)
    seen = state.seen_hashes
    recordings = None  # near-duplicate detection: the fingerprints of this rank's kept tracks
    if settings.near_duplicates:
        from data_prep.fingerprint import FingerprintIndex

        recordings = FingerprintIndex()
        for row in state.kept_rows:
            recordings.add(row_rel(row), row.get("fingerprint"))
    loader = torch.utils.data.DataLoader(
        TrackDecoder(todo, settings, conflicts), batch_size=None, num_workers=workers, collate_fn=lambda x: x
    )
    bar = tqdm(loader, total=len(todo), desc=f"prep r{rank}", unit="track", dynamic_ncols=True)
    for item in bar:
        if "reason" not in item and item["sha256"] in seen:
            item.update(reason="duplicate", detail=f"same bytes as {seen[item['sha256']]}")
        if recordings is not None and "reason" not in item and (match := recordings.match(item["fingerprint"])):
            item.update(reason="near_duplicate", detail=match.detail(printable(match.rel)))
        if "reason" in item:
            kept = False
        elif "stream" in item:
            kept = loop.stream_track(item)
        else:
            loop.add_track(item, iter([item.pop("audio")]))
            kept = True
        if kept:
            seen[item["sha256"]] = item["track"].rel
            if recordings is not None:
                recordings.add(item["track"].rel, item["fingerprint"])
            counts["kept"] += 1
        else:
            journal.reject(_reject_row(item, item["reason"], item["detail"]))
            counts["rejected"] += 1
        bar.set_postfix(kept=counts["kept"], rejected=counts["rejected"], segments=counts["segments"])
    loop.flush()
    writer.close()
    return counts
