"""The training data module: batch contract, seeding across ranks/workers/resumes, epochs, corrupt data, validation
split, chroma, describe. Most shards are written directly with the schema keys (fast); one test reads real prep
output."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import webdataset as wds

from data_prep.schema import (
    CHROMA_HOP,
    HOP_LENGTH,
    N_CHROMA,
    SCHEMA_VERSION,
    chroma_frames,
    sample_key,
)
from data_prep.shards import shard_name
from finetune.errors import BadFileError
from finetune.lm.data import (
    BATCH_KEYS,
    DataError,
    MusicGenData,
    collate,
    crop_sample,
    decode_sample,
    resolve_shards,
)

T = 100  # frames per segment (2 s)


def _info(key: str, valid: int, caption: str | None, with_chroma: bool, k: int) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION, "key": key, "track_key": key.rsplit("_s", 1)[0], "segment_index": 0,
        "caption": caption,
        "metadata": {"title": "t", "artist": "a", "genre": "rock", "bpm": 120.0, "key": "c major",
                     "moods": ["calm"], "instrument": "piano", "keywords": None},
        "license": "CC0-1.0", "source_path": f"{key}.wav", "source_sha256": "0" * 64,
        "start_seconds": 0.0, "end_seconds": valid / 50, "valid_frames": valid, "num_frames": T,
        "chroma_valid_frames": math.ceil(valid * HOP_LENGTH / CHROMA_HOP) if with_chroma else None,
        "sample_rate": 32000, "channels": k // 4,
    }


def write_shards(
    out: Path, sizes: list[int], *, k: int = 4, chroma: bool = False, bad: dict[int, list[int]] | None = None,
    seed: int = 0, prefix: str = "track",
) -> dict[str, dict[str, Any]]:
    """Write `shard-r0000-NNNNNN.tar` files with `sizes[i]` samples each; `bad[i]` lists samples whose codes.npy is
    garbage. Returns {key: json info} of the good samples."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    infos = {}
    for s, size in enumerate(sizes):
        with wds.TarWriter(str(out / shard_name(0, s))) as tar:
            for i in range(size):
                key = sample_key(f"{prefix}{s:03d}", i)
                valid = int(rng.integers(T // 2, T + 1))
                info = _info(key, valid, f"Caption {key}.", chroma, k)
                sample: dict[str, Any] = {"__key__": key, "json": info,
                                          "codes.npy": rng.integers(0, 2048, (k, T)).astype(np.int16)}
                if chroma:
                    frames = chroma_frames(T * HOP_LENGTH)
                    sample["chroma.npy"] = np.eye(N_CHROMA, dtype=np.float32)[rng.integers(0, N_CHROMA, frames)]
                if bad and i in bad.get(s, []):
                    sample["codes.npy"] = b"\x93NUMPY garbage"
                else:
                    infos[key] = info
                tar.write(sample)
    return infos


def _dm(shards: Path | str | dict[str, float], **kw: Any) -> MusicGenData:
    args = dict(batch_size=4, num_workers=0, steps_per_epoch=6, shuffle_buffer=16, merge_text_p=0.0)
    args.update(kw)
    return MusicGenData(shards if isinstance(shards, dict) else str(shards), **args)


def _keys(batches: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [tuple(b["keys"]) for b in batches]


@pytest.mark.parametrize("k", [4, 8])
def test_batch_contract(tmp_path: Path, k: int) -> None:
    infos = write_shards(tmp_path, [6, 6], k=k)
    batches = list(_dm(tmp_path, num_workers=2).train_dataloader())
    assert len(batches) == 6
    for b in batches:
        assert set(b) == set(BATCH_KEYS)
        assert b["codes"].dtype == torch.long and b["codes"].shape == (4, k, T)
        assert b["valid_frames"].dtype == torch.long and b["valid_frames"].shape == (4,)
        assert b["valid_frames"].tolist() == [infos[key]["valid_frames"] for key in b["keys"]]
        assert b["captions"] == [infos[key]["caption"] for key in b["keys"]]  # merge_text_p=0: unchanged
        assert b["chroma"] is None and b["chroma_valid_frames"] is None
        assert b["skipped"] == []
        assert int(b["codes"].max()) < 2048


def test_collate_pads_codes_and_chroma() -> None:
    def sample(t: int, f: int) -> dict[str, Any]:
        return {"key": f"k{t}", "codes": torch.ones(4, t, dtype=torch.long), "valid_frames": t, "caption": None,
                "chroma": torch.ones(f, N_CHROMA), "chroma_valid_frames": f}

    b = collate([sample(5, 2), sample(9, 3)], skipped=["sample x in s.tar: bad"])
    assert b["codes"].shape == (2, 4, 9) and b["codes"][0, :, 5:].eq(0).all()
    assert b["valid_frames"].tolist() == [5, 9] and b["skipped"] == ["sample x in s.tar: bad"]
    assert b["chroma"].shape == (2, 3, N_CHROMA) and b["chroma"][0, 2].eq(0).all()
    assert b["chroma_valid_frames"].tolist() == [2, 3]
    with pytest.raises(DataError, match="codebooks"):
        collate([sample(5, 2), {**sample(5, 2), "codes": torch.ones(8, 5, dtype=torch.long)}])


def test_ranks_workers_and_restarts_draw_distinct_reproducible_streams(tmp_path: Path) -> None:
    write_shards(tmp_path, [8, 8, 8, 8])

    def draw(rank: int, world: int, restart: int | None = None, workers: int = 0) -> list[tuple[str, ...]]:
        dm = _dm(tmp_path, num_workers=workers, seed=7)
        if restart is not None:
            dm.reseed(restart)
        loader = dm._loader(dm.train_dataset(rank=rank, world_size=world), dm.steps_per_epoch)
        return _keys(list(loader))

    r0, r1 = draw(0, 2), draw(1, 2)
    assert r0 != r1, "ranks draw different streams from the same seed"
    assert draw(0, 2) == r0 and draw(1, 2) == r1, "same (seed, rank, worker, restart) reproduces exactly"
    assert draw(0, 2, restart=0) == r0
    resumed = draw(0, 2, restart=500)
    assert resumed != r0 and draw(0, 2, restart=500) == resumed, "a resume draws a new, reproducible stream"
    two_workers = draw(0, 2, workers=2)
    assert two_workers == draw(0, 2, workers=2)
    assert two_workers[0::2] != two_workers[1::2], "workers (batches alternate between them) draw different streams"


def test_rank_comes_from_trainer_or_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_shards(tmp_path, [4])
    dm = _dm(tmp_path)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    stream = dm.train_dataset()
    assert (stream.rank, stream.world_size, stream.resume_step) == (3, 4, 0)
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2, global_step=1234)  # type: ignore[assignment]
    stream = dm.train_dataset()
    # The stream follows the trainer's epoch, not its step: a resume at an epoch boundary replays exactly.
    assert (stream.rank, stream.world_size, stream.resume_step) == (1, 2, 0)
    dm.reseed(7)
    assert dm.train_dataset().resume_step == 7


def test_with_epoch_gives_exactly_steps_per_epoch_and_new_data_each_epoch(tmp_path: Path) -> None:
    write_shards(tmp_path, [3, 5])
    loader = _dm(tmp_path, num_workers=2, steps_per_epoch=7).train_dataloader()
    assert len(loader) == 7
    epoch1, epoch2 = list(loader), list(loader)
    assert len(epoch1) == len(epoch2) == 7
    assert _keys(epoch1) != _keys(epoch2), "non-persistent workers must not replay the first epoch"


class _Recorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.train_keys: list[tuple[int, tuple[str, ...]]] = []
        self.val_keys: list[str] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.train_keys.append((self.current_epoch, tuple(batch["keys"])))
        return self.weight * batch["codes"].float().mean()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.val_keys.extend(batch["keys"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_runs_steps_per_epoch(tmp_path: Path) -> None:
    infos = write_shards(tmp_path / "train", [5, 5])
    val = write_shards(tmp_path / "val", [3, 2], seed=1)
    dm = _dm(tmp_path / "train", val_shards=str(tmp_path / "val"), num_workers=2, steps_per_epoch=4)
    model = _Recorder()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    assert Counter(epoch for epoch, _ in model.train_keys) == {0: 4, 1: 4}
    assert {k for _, keys in model.train_keys for k in keys} <= set(infos)
    assert sorted(model.val_keys) == sorted(list(val) * 2), "each validation covers the val set once"


class _StopAfter(L.Callback):
    """Checkpoints after global batch `batches` (mid-epoch) and stops, as a preemption would."""

    def __init__(self, batches: int, path: Path) -> None:
        self.batches, self.path = batches, path

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.batches:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


@pytest.mark.parametrize("workers, mix", [(0, False), (2, False), (2, True)])
def test_a_run_resumed_mid_epoch_trains_on_the_uninterrupted_runs_batches(tmp_path: Path, workers: int,
                                                                          mix: bool) -> None:
    write_shards(tmp_path / "train", [9, 7])
    shards: str | dict[str, float] = str(tmp_path / "train")
    if mix:  # a weighted mix of two sets resumes exactly too
        write_shards(tmp_path / "other", [6, 6], seed=2, prefix="other")
        shards = {shards: 0.6, str(tmp_path / "other"): 0.4}

    def fit(max_steps: int, callbacks: list[L.Callback], ckpt_path: Path | None = None) -> list:
        # 5 batches per epoch with 2 workers: the resumed epoch starts on worker 1's turn.
        dm = _dm(shards, num_workers=workers, steps_per_epoch=5, seed=3)
        model = _Recorder()
        trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                            callbacks=callbacks)
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        return model.train_keys

    uninterrupted = fit(12, [])
    assert len(uninterrupted) == 12 and len(set(uninterrupted)) > 6  # the stream carries information
    if mix:
        assert {key.split("0")[0] for _, keys in uninterrupted for key in keys} == {"track", "other"}
    ckpt = tmp_path / "mid.ckpt"
    first = fit(12, [_StopAfter(8, ckpt)])  # epoch 1, 3 of its 5 batches trained
    assert first == uninterrupted[:8]
    position = torch.load(ckpt, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert position == [{"epoch": 1, "batches": 3}]
    assert fit(12, [], ckpt_path=ckpt) == uninterrupted[8:]


def test_corrupt_shards_and_samples_are_skipped_and_counted(tmp_path: Path) -> None:
    good = write_shards(tmp_path, [10, 10], bad={1: [2, 7]})
    (tmp_path / shard_name(0, 2)).write_bytes(b"this is not a tar file" * 100)
    whole = (tmp_path / shard_name(0, 0)).read_bytes()
    (tmp_path / shard_name(0, 3)).write_bytes(whole[: len(whole) // 2])  # truncated mid-member
    batches = list(_dm(tmp_path, steps_per_epoch=40, max_skipped_fraction=0.5).train_dataloader())
    assert len(batches) == 40
    seen = {k for b in batches for k in b["keys"]}
    assert seen <= set(good), "no corrupt sample reaches a batch"
    assert not seen & {"track001_s00002", "track001_s00007"}
    skipped = [entry for b in batches for entry in b["skipped"]]  # every encounter of a resampled stream
    named = {entry.split(": ", 1)[0] for entry in skipped}
    assert {f"sample track001_s00002 in {tmp_path / shard_name(0, 1)}",
            f"sample track001_s00007 in {tmp_path / shard_name(0, 1)}",
            f"unreadable data in {tmp_path / shard_name(0, 2)}"} <= named


def _rewrite_sample(shard: Path, index: int, **members: Any) -> str:
    """Replace members of sample `index` of `shard` (written by `write_shards`; None removes one); returns its key."""
    samples = list(wds.DataPipeline(wds.SimpleShardList([str(shard)]), wds.tarfile_to_samples()))
    samples[index].update(members)
    samples[index] = {k: v for k, v in samples[index].items() if v is not None}
    with wds.TarWriter(str(shard)) as tar:
        for sample in samples:
            tar.write({k: v for k, v in sample.items() if k != "__url__" and not k.startswith("__local")})
    return samples[index]["__key__"]


def test_every_sample_is_checked_against_its_set_before_it_can_reach_a_batch(tmp_path: Path) -> None:
    """Stereo shards with melodies: a sample of 4 codebooks, codes out of range or of float dtype, more frames than
    the set's segments, a chroma of the wrong shape or with NaN, or no chroma, never reaches a batch; each is named."""
    good = write_shards(tmp_path, [12, 12], k=8, chroma=True)
    shard = tmp_path / shard_name(0, 1)
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 2048, (8, T)).astype(np.int16)
    frames = chroma_frames(T * HOP_LENGTH)
    bad = {
        _rewrite_sample(shard, 0, **{"codes.npy": codes[:3]}): "3 codebooks, neither mono (4) nor stereo (8)",
        _rewrite_sample(shard, 1, **{"codes.npy": codes[:4]}): "4 codebooks, the set's samples 8",
        _rewrite_sample(shard, 2, **{"codes.npy": np.where(codes == codes[0, 0], 4096, codes)}): "outside [0, 2048)",
        _rewrite_sample(shard, 3, **{"codes.npy": codes.astype(np.float32)}): "must be integer",
        _rewrite_sample(shard, 4, **{"codes.npy": np.tile(codes, 2)}): f"{2 * T} frames, the set's segments {T}",
        _rewrite_sample(shard, 5, **{"chroma.npy": np.zeros((frames, 7), np.float32)}): "chroma must be",
        _rewrite_sample(shard, 6, **{"chroma.npy": np.full((frames, 12), np.nan, np.float32)}): "NaN or inf",
        _rewrite_sample(shard, 7, **{"chroma.npy": None}): "no chroma.npy, which the set's samples hold",
    }
    assert len(bad) == 8
    batches = list(_dm(tmp_path, steps_per_epoch=30, max_skipped_fraction=0.5).train_dataloader())
    seen = {k for b in batches for k in b["keys"]}
    assert not seen & set(bad) and len(seen) == len(good) - len(bad)
    reasons = {entry.split(": ", 1)[0].removeprefix("sample ").split(" in ")[0]: entry
               for b in batches for entry in b["skipped"]}
    assert reasons.keys() == bad.keys()
    for key, why in bad.items():
        assert why in reasons[key], (key, reasons[key])
    # The val stream checks the same way.
    val = list(_dm(tmp_path, val_shards=str(tmp_path)).val_dataloader())
    assert {k for b in val for k in b["keys"]} == set(good) - set(bad)


def test_a_corrupt_first_sample_stops_describe_in_one_line(tmp_path: Path) -> None:
    write_shards(tmp_path, [4, 4], k=8)
    key = _rewrite_sample(tmp_path / shard_name(0, 0), 0, **{"codes.npy": np.zeros((3, T), np.int16)})
    with pytest.raises(BadFileError, match=rf"{shard_name(0, 0)}: its first sample {key} is corrupt \(codes have 3 "):
        _dm(tmp_path).describe()


def test_too_many_skips_raise_naming_the_shard(tmp_path: Path) -> None:
    write_shards(tmp_path, [10, 10], bad={1: list(range(10))})
    dm = _dm(tmp_path, steps_per_epoch=50, max_skipped_fraction=0.1, skip_check_after=30)
    with pytest.raises(DataError, match=shard_name(0, 1)):
        list(dm.train_dataloader())
    mostly_bad = tmp_path / "mostly_bad"  # its first sample is good: `describe` refuses a set whose first is not
    write_shards(mostly_bad, [4], bad={0: [1, 2, 3]})
    with pytest.raises(DataError, match="too much corrupt data"):  # never loops forever on unreadable data
        list(_dm(mostly_bad, max_skipped_fraction=0.5, skip_check_after=20).train_dataloader())


@pytest.mark.parametrize("sizes, world, workers", [([5, 7, 4], 2, 0), ([5, 7, 4], 2, 2), ([5], 3, 0), ([2], 3, 2)])
def test_validation_covers_every_sample_once(tmp_path: Path, sizes: list[int], world: int, workers: int) -> None:
    infos = write_shards(tmp_path, sizes)
    dm = _dm(tmp_path, val_shards=str(tmp_path), num_workers=workers, batch_size=2)
    per_rank = []
    for rank in range(world):
        loader = dm._loader(dm.val_dataset(rank=rank, world_size=world), None)
        per_rank.append(list(loader))
    assert len({len(batches) for batches in per_rank}) == 1, "every rank runs the same number of batches"
    counts = Counter(k for batches in per_rank for b in batches for k in b["keys"])
    assert set(counts) == set(infos)
    n = len(infos)
    padding = world * math.ceil(n / world) - n  # DistributedSampler-style repeats on the short ranks
    assert sum(counts.values()) == n + padding
    if n % world == 0:
        assert set(counts.values()) == {1}


def test_validation_env_rank_and_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    infos = write_shards(tmp_path, [4, 4])
    order = list(infos)  # shard order, then sample order
    monkeypatch.setenv("WORLD_SIZE", "2")
    got = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        batches = list(_dm(tmp_path, val_shards=str(tmp_path), val_samples=6).val_dataloader())
        got.append([k for b in batches for k in b["keys"]])
    assert got == [order[0:6:2], order[1:6:2]]
    assert _dm(tmp_path).val_dataloader() == []


def test_chroma_batches_and_crop(tmp_path: Path) -> None:
    infos = write_shards(tmp_path, [6], chroma=True)
    f = chroma_frames(T * HOP_LENGTH)
    b = next(iter(_dm(tmp_path).train_dataloader()))
    assert b["chroma"].shape == (4, f, 12) and b["chroma"].dtype == torch.float32
    assert b["chroma_valid_frames"].tolist() == [infos[k]["chroma_valid_frames"] for k in b["keys"]]
    # Random crop: codes window inside the valid region, chroma window of the same span.
    max_frames = 40
    for b in _dm(tmp_path, max_frames=max_frames, steps_per_epoch=5).train_dataloader():
        assert b["codes"].shape[-1] == max_frames and b["chroma"].shape[1] == chroma_frames(max_frames * HOP_LENGTH)
        assert b["valid_frames"].tolist() == [max_frames] * 4  # every synthetic segment has >= 50 valid frames
    # crop_sample arithmetic on a known sample.
    sample = {"key": "k", "codes": torch.arange(T).repeat(4, 1), "valid_frames": 70, "caption": None,
              "chroma": torch.arange(f).float()[:, None].repeat(1, 12), "chroma_valid_frames": 11}
    out = crop_sample(sample, 40, start=32)
    assert out["codes"][0].tolist() == list(range(32, 72)) and out["valid_frames"] == 38
    first = round(32 * HOP_LENGTH / CHROMA_HOP)  # 5
    assert out["chroma"][:, 0].tolist() == list(range(first, first + chroma_frames(40 * HOP_LENGTH)))
    assert out["chroma_valid_frames"] == 11 - first


def test_require_chroma(tmp_path: Path) -> None:
    write_shards(tmp_path, [4])
    dm = _dm(tmp_path, require_chroma=True)
    with pytest.raises(DataError, match="chroma"):
        next(iter(dm.train_dataloader()))
    with pytest.raises(DataError, match="--melody"):
        dm.describe()


def test_describe_and_codebook_check(tmp_path: Path) -> None:
    write_shards(tmp_path / "stereo", [3, 3, 3], k=8, chroma=True)
    dm = _dm(tmp_path / "stereo", val_shards=str(tmp_path / "stereo" / "shard-r0000-00000[01].tar"))
    found = dm.describe()
    assert found["num_shards"] == 3 and found["num_val_shards"] == 2
    assert (found["num_codebooks"], found["num_frames"], found["channels"]) == (8, T, 2)
    assert found["has_chroma"] and found["chroma_frames"] == chroma_frames(T * HOP_LENGTH)
    assert dm.check_num_codebooks(8)["num_codebooks"] == 8
    with pytest.raises(ValueError, match=r"K=8 codebooks \(stereo\).*num_codebooks=4 \(mono\)"):
        dm.check_num_codebooks(4)
    (tmp_path / "stereo" / shard_name(0, 0)).write_bytes(b"garbage")  # describe passes over an unreadable shard
    dm = _dm(tmp_path / "stereo")
    assert dm.describe()["first_shard"].endswith(shard_name(0, 1))


def test_resolve_shards(tmp_path: Path) -> None:
    write_shards(tmp_path, [1, 1, 1])
    names = [str(tmp_path / shard_name(0, i)) for i in range(3)]
    assert resolve_shards(str(tmp_path)) == names
    assert resolve_shards(str(tmp_path / "shard-*.tar")) == names
    assert resolve_shards(str(tmp_path / "shard-r0000-{000000..000001}.tar")) == names[:2]
    with pytest.raises(FileNotFoundError, match="do not exist"):
        resolve_shards(str(tmp_path / "shard-r0000-{000000..000005}.tar"))
    with pytest.raises(FileNotFoundError, match="no shards"):
        resolve_shards(str(tmp_path / "empty*.tar"))


def test_reads_real_prep_output(tmp_path: Path, tiny_models_dir: Path) -> None:
    from data_prep.prep import prep
    from testkit.synth import synth_catalog

    synth_catalog(str(tmp_path / "catalog"), tracks=3, seconds=5.0, seed=1)
    prep(input=str(tmp_path / "catalog"), output=str(tmp_path / "shards"),
         codec=str(tiny_models_dir / "encodec_32khz"), channels=2, segment_seconds=2.0, shard_max_samples=3)
    dm = _dm(tmp_path / "shards", val_shards=str(tmp_path / "shards"), merge_text_p=1.0, drop_desc_p=0.0)
    assert dm.describe()["num_codebooks"] == 8
    raw = {s["__key__"]: s for s in wds.DataPipeline(wds.SimpleShardList(resolve_shards(str(tmp_path / "shards"))),
                                                     wds.tarfile_to_samples())}
    batch = next(iter(dm.train_dataloader()))
    assert batch["codes"].shape == (4, 8, 100)
    for key, valid, caption in zip(batch["keys"], batch["valid_frames"].tolist(), batch["captions"], strict=True):
        sample = decode_sample(raw[key])
        assert valid == sample["valid_frames"] and 0 < valid <= 100
        assert caption is not None and caption.startswith(sample["caption"].rstrip("."))  # train captions augmented
    val_keys = [k for b in dm.val_dataloader() for k in b["keys"]]
    assert sorted(val_keys) == sorted(raw)


def test_a_weighted_mix_draws_each_set_at_its_weight(tmp_path: Path) -> None:
    """Weights 0.8 / 0.2: over 1,000 drawn samples the share of the first set is within 3 standard errors of 0.8,
    the same seed draws the same mix, and a bad weight is refused before anything is read."""
    from finetune.lm.data import shard_sets

    main = write_shards(tmp_path / "main", [20, 20], prefix="main")
    other = write_shards(tmp_path / "general", [20, 20], seed=1, prefix="general")
    dm = _dm({str(tmp_path / "main"): 4.0, str(tmp_path / "general"): 1.0}, batch_size=4, num_workers=0)

    def draw() -> list[str]:
        stream = iter(dm.train_dataset(rank=0, world_size=1))
        return [key for _ in range(250) for key in next(stream)["keys"]]

    keys = draw()
    assert set(keys) <= set(main) | set(other)
    share = sum(key in main for key in keys) / len(keys)
    assert abs(share - 0.8) < 3 * math.sqrt(0.8 * 0.2 / len(keys)), share
    assert draw() == keys
    assert [w for _, w in shard_sets({"a": 3, "b": 1})] == [0.75, 0.25]
    for bad in ({}, {"a": 0.0}, {"a": -1.0, "b": 2.0}, {"a": float("nan")}):
        with pytest.raises(ValueError, match="data.shards"):
            _dm(bad)
