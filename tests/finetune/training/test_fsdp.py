"""FSDP2 on 2 CPU processes (gloo): sharded training equals one process on the same global batch, DCP checkpoints
resume exactly (same and other world size), export reads them, LoRA and the stereo-melody model shard too."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from finetune.checkpoints.distributed import is_distributed_checkpoint, read_distributed_checkpoint
from finetune.checkpoints.export import export
from finetune.inference.load import load_for_inference
from finetune.training.fsdp import ShardedStrategy
from tests.finetune.helpers import DataParallelInOne, RanksInOneProcess
from tests.finetune.test_fit import LORA, fit_args, run_cli

FSDP = "recipes/tiny/small-fsdp.yaml"
STEPS = 8
# The tiny mono full fine-tune with no word dropout (its draws are per rank, which one process cannot mirror), and
# clipping at 0.1, below the tiny model's gradient norms (about 0.2), so the sharded global-norm clip acts every step.
CLIP = 0.1
COMMON = ("--trainer.logger", "false", "--trainer.max_steps", str(STEPS), "--model.word_dropout", "0.0",
          "--trainer.gradient_clip_val", str(CLIP))
SHARDED = ("--trainer.devices", "2", "--trainer.strategy",
           json.dumps({"class_path": "finetune.training.fsdp.ShardedStrategy", "init_args": {"data_parallel_size": 2}}))


def _rows(record: Path) -> dict[int, list[dict]]:
    return {r: [json.loads(x) for x in (record / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)}


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory: pytest.TempPathFactory, tiny_lm_dir: Path, mono_shards: Path) -> Path:
    """The tiny mono full fine-tune, FSDP2 over 2 ranks, STEPS steps, every batch recorded per rank."""
    root = tmp_path_factory.mktemp("fsdp-run")
    out = run_cli(fit_args(FSDP, tiny_lm_dir / "musicgen-small", mono_shards, root, *COMMON,
                           "--trainer.callbacks+=tests.finetune.helpers.BatchRecorder",
                           "--trainer.callbacks.out_dir", str(root / "record")))
    assert out.returncode == 0, out.stderr[-3000:]
    return root


@pytest.mark.slow
def test_fsdp2_equals_one_process_on_the_same_global_batch_and_exports_the_same_model(
        sharded_run: Path, tiny_lm_dir: Path, mono_shards: Path, tmp_path: Path) -> None:
    last = sharded_run / "checkpoints" / "last.ckpt"
    assert is_distributed_checkpoint(last) and len(list(last.glob("*.distcp"))) == 2
    rows = _rows(sharded_run / "record")
    keys = [{k for x in rows[r] for k in x["keys"]} for r in (0, 1)]
    assert keys[0].isdisjoint(keys[1]), "each rank trains on its own samples"

    # One process, the two ranks' batches side by side, the loss of each half averaged (= gradient averaging).
    L.seed_everything(0)
    reference = DataParallelInOne(pretrained=str(tiny_lm_dir / "musicgen-small"), lr=0.003, warmup_steps=5,
                                  ema_decay=0.99, ema_every=1, word_dropout=0.0)
    data = RanksInOneProcess(str(mono_shards), batch_size=2, num_workers=0, steps_per_epoch=10)
    initial = {f"model.{n}": p.detach().clone() for n, p in reference.model.named_parameters() if p.requires_grad}
    losses: list[float] = []
    norms: list[float] = []

    class Losses(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, idx) -> None:
            losses.append(float(outputs["loss"]))
            norms.append(float(trainer.callback_metrics["train/grad_norm"]))

    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=STEPS, gradient_clip_val=CLIP, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, callbacks=[Losses()])
    trainer.fit(reference, datamodule=data)
    sharded_losses = [(a["loss"] + b["loss"]) / 2 for a, b in zip(rows[0], rows[1])]
    assert len(set(losses)) == STEPS  # the curve moves: the comparison is not between constants
    assert min(norms) > CLIP, norms  # every step was clipped: the comparison covers the sharded global-norm clip
    # Tolerance: the ranks reduce gradients in another order than one process sums them (fp32 rounding).
    torch.testing.assert_close(torch.tensor(sharded_losses), torch.tensor(losses), rtol=0, atol=1e-5)

    state = read_distributed_checkpoint(last)
    assert state["global_step"] == STEPS
    expected = {f"model.{n}": p.detach() for n, p in reference.model.named_parameters() if p.requires_grad}
    assert state["state_dict"].keys() == expected.keys()
    moved = sum(not torch.allclose(value, initial[key], rtol=1e-4, atol=1e-5) for key, value in expected.items())
    assert moved > len(expected) // 2, "training moved the weights beyond the tolerance the comparison allows"
    for key, value in expected.items():
        torch.testing.assert_close(state["state_dict"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert set(state["mgft"]["ema"]["shadow"]) == {k.removeprefix("model.") for k in expected}

    # `mgft export` reads the folder as it reads a file: both exports hold the same (EMA) weights.
    single = tmp_path / "single.ckpt"
    trainer.save_checkpoint(single)
    from_sharded = export(str(last), out=str(tmp_path / "sharded-export"), format="hf")["hf"]
    from_single = export(str(single), out=str(tmp_path / "single-export"), format="hf")["hf"]
    a, b = load_file(Path(from_sharded) / "model.safetensors"), load_file(Path(from_single) / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    # `mgft generate` and `mgft eval` load the folder too, with the EMA weights.
    loaded = dict(load_for_inference(str(last)).model.named_parameters())
    for name, shadow in state["mgft"]["ema"]["shadow"].items():
        torch.testing.assert_close(loaded[name], shadow, rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_fsdp2_usr1_mid_epoch_then_resume_is_bit_identical_and_resumes_on_one_rank(
        sharded_run: Path, tiny_lm_dir: Path, mono_shards: Path, tmp_path: Path) -> None:
    pretrained = tiny_lm_dir / "musicgen-small"
    run = tmp_path / "preempted"
    out = run_cli(fit_args(FSDP, pretrained, mono_shards, run, *COMMON,
                           "--trainer.callbacks+=tests.finetune.helpers.SignalAt", "--trainer.callbacks.step", "4"))
    assert out.returncode == 0, out.stderr[-3000:]
    preempted = read_distributed_checkpoint(run / "checkpoints" / "last.ckpt")
    # Several ranks agree on the flag one step late (an asynchronous all-reduce): the signal after step 4 stops at 6.
    assert preempted["global_step"] == 6
    assert preempted["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "batches": 6}]
    out = run_cli(fit_args(FSDP, pretrained, mono_shards, run, *COMMON, "--ckpt_path", "last"))
    assert out.returncode == 0, out.stderr[-3000:]
    ref = read_distributed_checkpoint(sharded_run / "checkpoints" / "last.ckpt")
    got = read_distributed_checkpoint(run / "checkpoints" / "last.ckpt")
    assert got["global_step"] == ref["global_step"] == STEPS
    assert any(not torch.equal(v, preempted["state_dict"][k]) for k, v in ref["state_dict"].items())
    for key, value in ref["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][key], value, rtol=0, atol=0, msg=key)
    for key, value in ref["mgft"]["ema"]["shadow"].items():
        torch.testing.assert_close(got["mgft"]["ema"]["shadow"][key], value, rtol=0, atol=0, msg=key)

    # The same sharded checkpoint resumes on one rank (no strategy): DCP is read whole, training goes on.
    single = tmp_path / "single"
    (single / "checkpoints").mkdir(parents=True)
    import shutil

    shutil.copytree(run / "checkpoints" / "last.ckpt", single / "checkpoints" / "last.ckpt")
    out = run_cli(fit_args("recipes/tiny/small-full.yaml", pretrained, mono_shards, single, *COMMON[:2],
                           "--trainer.max_steps", str(STEPS + 2), "--model.word_dropout", "0.0",
                           "--trainer.callbacks+=tests.finetune.helpers.BatchRecorder",
                           "--trainer.callbacks.out_dir", str(single / "record"), "--ckpt_path", "last"))
    assert out.returncode == 0, out.stderr[-3000:]
    steps = [json.loads(x)["step"] for x in (single / "record" / "rank0.jsonl").read_text().splitlines()]
    assert steps == [STEPS + 1, STEPS + 2]  # it went on from the sharded run's step
    resumed = torch.load(single / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == STEPS + 2 and resumed["state_dict"].keys() == ref["state_dict"].keys()


@pytest.mark.slow
@pytest.mark.parametrize("lora_rank", [4, 0])
def test_fsdp2_trains_the_stereo_melody_model_full_and_lora(tmp_path: Path, tiny_lm_dir: Path,
                                                            stereo_melody_shards: Path, lora_rank: int) -> None:
    out = run_cli(fit_args(LORA, tiny_lm_dir / "musicgen-stereo-melody", stereo_melody_shards, tmp_path, *SHARDED,
                           "--trainer.logger", "false", "--trainer.max_steps", "2", "--data.val_shards", "null",
                           "--model.lora_rank",
                           str(lora_rank), "--trainer.callbacks+=tests.finetune.helpers.BatchRecorder",
                           "--trainer.callbacks.out_dir", str(tmp_path / "record")))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = _rows(tmp_path / "record")
    assert [x["step"] for x in rows[0]] == [x["step"] for x in rows[1]] == [1, 2]
    state = read_distributed_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    names = state["state_dict"].keys()
    assert names and all(("lora_" in k) == (lora_rank > 0) for k in names)
    assert any("audio_enc_to_dec_proj" in k for k in names) == (lora_rank == 0)


def test_the_sharded_strategy_refuses_a_single_file_checkpoint_to_resume_from(tmp_path: Path) -> None:
    strategy = ShardedStrategy.__new__(ShardedStrategy)
    strategy.broadcast = lambda obj, src=0: obj  # type: ignore[method-assign]
    (tmp_path / "last.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match="not a distributed checkpoint"):
        strategy.load_checkpoint(tmp_path / "last.ckpt")
