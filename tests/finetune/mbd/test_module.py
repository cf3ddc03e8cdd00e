"""Training MBD bands with `mgft mbd-fit` on prepped audio, packing them, and decoding MusicGen tokens with them."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
import torch

from finetune.__main__ import main
from finetune.mbd.module import MBDBand

ROOT = Path(__file__).resolve().parents[3]
RECIPE = str(ROOT / "recipes" / "tiny" / "mbd-band.yaml")


def _fit(codec: Path, shards: Path, root: Path, *extra: str) -> Path:
    main(["mbd-fit", "--config", RECIPE, "--model.codec", str(codec), "--data.shards", str(shards),
          "--data.val_shards", str(shards), "--trainer.default_root_dir", str(root), "--trainer.logger", "false",
          *extra])
    return root / "checkpoints" / "last.ckpt"


def _val_loss(module: MBDBand, audio: torch.Tensor) -> float:
    """Denoising loss on fixed crops with fixed steps and noise (what validation computes)."""
    module.generator.manual_seed(123)
    module.model.processor.eval()
    with torch.no_grad():
        return float(module.losses(audio)[0].mean())


@pytest.fixture(scope="module")
def band0(tiny_models_dir: Path, audio_shards: Path, tmp_path_factory) -> Path:
    return _fit(tiny_models_dir / "encodec_32khz", audio_shards, tmp_path_factory.mktemp("band0"))


def test_validation_denoising_loss_falls_with_training(band0: Path, tiny_models_dir: Path,
                                                        audio_shards: Path) -> None:
    from finetune.mbd.data import MBDData

    data = MBDData(str(audio_shards), str(audio_shards), batch_size=16, num_workers=0, val_items=16)
    audio = next(iter(data.val_dataloader()))  # [16, 1, 32000]: 1 s mono crops of the prepped audio
    assert audio.shape == (16, 1, 32000) and audio.abs().max() > 0.01

    trained = MBDBand.from_checkpoint(str(band0))
    torch.manual_seed(0)
    fresh = MBDBand(**{k: v for k, v in trained.hparams.items() if not k.startswith("_")})
    before, after = _val_loss(fresh, audio), _val_loss(trained, audio)
    assert after < 0.85 * before, (before, after)
    checkpoint = torch.load(band0, weights_only=True)  # loads without trusting pickles
    assert checkpoint["global_step"] == 40 and not any(k.startswith("codec.") for k in checkpoint["state_dict"])
    samples = band0.parent.parent / "samples" / "step_000040"
    assert {p.name for p in samples.iterdir()} >= {"0_reference.wav", "0_regenerated.wav", "0_regenerated.png"}


def test_pack_four_bands_and_generate_with_the_mbd_decoder(band0: Path, tiny_models_dir: Path, audio_shards: Path,
                                                           tmp_path: Path) -> None:
    from finetune.inference.generate import generate
    from finetune.mbd.decoder import load_bands
    from testkit.tiny_models import write_musicgen

    codec = tiny_models_dir / "encodec_32khz"
    ckpts = [band0]
    for band in (1, 2, 3):
        extra = ["--model.band", str(band), "--trainer.max_steps", "2", "--trainer.val_check_interval", "2"]
        if band >= 2:  # the grid's normalizer for the high bands, fitted on the first items
            extra += ["--model.processor.use", "true", "--model.processor.num_samples", "32",
                      "--model.processor.power_std", "0.4"]
        ckpts.append(_fit(codec, audio_shards, tmp_path / f"band{band}", *extra))
    main(["mbd-pack", ",".join(map(str, reversed(ckpts))), "--out", str(tmp_path / "mbd")])
    bands, _ = load_bands(str(tmp_path / "mbd"))
    assert [b.cfg.band for b in bands] == [0, 1, 2, 3] and bands[2].cfg.processor.use
    assert float(bands[2].processor.counts) == 32  # 2 steps x 16 crops: statistics gathered, then frozen
    trained = MBDBand.from_checkpoint(str(band0))
    for key, value in trained.model.unet.state_dict().items():
        assert torch.equal(bands[0].unet.state_dict()[key], value), key

    write_musicgen(tmp_path / "lm", "musicgen-stereo-small")
    paths = generate(model=str(tmp_path / "lm"), prompt="calm piano", duration=0.5, decoder="mbd",
                     mbd=str(tmp_path / "mbd"), out=str(tmp_path / "out"))
    info = sf.info(paths[0])
    assert info.channels == 2 and info.samplerate == 32000 and info.frames == 16000


def test_pack_refuses_a_missing_band(band0: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one checkpoint per band"):
        main(["mbd-pack", str(band0), "--out", str(tmp_path / "mbd")])


def test_init_from_a_released_file_takes_its_band(tiny_models_dir: Path, tiny_mbd_dir: Path) -> None:
    from finetune.mbd.decoder import load_bands
    from finetune.mbd.unet import UnetConfig

    module = MBDBand(str(tiny_models_dir / "encodec_32khz"), band=3, init_from=str(tiny_mbd_dir))
    released, _ = load_bands(str(tiny_mbd_dir))
    for key, value in released[3].unet.state_dict().items():
        assert torch.equal(module.model.unet.state_dict()[key], value), key
    assert module.band_cfg.processor.power_std == 0.75 and module.model.processor.frozen
    with pytest.raises(ValueError, match="unset"):
        MBDBand(str(tiny_models_dir / "encodec_32khz"), band=3, init_from=str(tiny_mbd_dir), unet=UnetConfig())


def test_bad_band_fails_before_any_model_is_built(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="band 7"):
        MBDBand(str(tmp_path / "no-codec-here"), band=7)


def test_a_checkpoint_holds_the_ema_of_its_own_step(tiny_models_dir: Path, audio_shards: Path,
                                                    tmp_path: Path) -> None:
    """ModelCheckpoint runs before the module's batch-end hook: an EMA updated there would be one step behind."""
    decay, steps = 0.8, 20
    ckpt = _fit(tiny_models_dir / "encodec_32khz", audio_shards, tmp_path / "run", "--trainer.max_steps", str(steps),
                "--model.ema_decay", str(decay), "--model.sample_items", "0",
                "--trainer.callbacks+=tests.finetune.helpers.WeightRecorder",
                "--trainer.callbacks.out_dir", str(tmp_path / "weights"))
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / f"step{steps:06d}.ckpt", weights_only=True)
    assert checkpoint["global_step"] == steps and ckpt.exists()
    count, expected = 0.0, None
    for step in range(1, steps + 1):  # audiocraft's unbiased EMA over the weights after each step
        weights = torch.load(tmp_path / "weights" / f"step{step}.pt", weights_only=True)
        count = count * decay + 1
        w = 1 / count
        current = {k.removeprefix("model.unet."): v.float() for k, v in weights.items()}
        expected = current if expected is None else {k: expected[k] * (1 - w) + current[k] * w for k in current}
    shadow = checkpoint["mgft_ema"]["shadow"]
    assert set(shadow) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(shadow[key], value, rtol=1e-6, atol=1e-7, msg=key)


def test_usr1_mid_epoch_then_resume_reaches_the_uninterrupted_band_bit_for_bit(tiny_models_dir: Path,
                                                                               audio_shards: Path,
                                                                               tmp_path: Path) -> None:
    # 5 batches per epoch: the signal after step 6 checkpoints step 7, batch 2 of epoch 1's 5; the resumed run must
    # continue both the crop stream and the step/noise draws.
    codec = tiny_models_dir / "encodec_32khz"
    common = ("--trainer.max_steps", "10", "--data.steps_per_epoch", "5", "--model.sample_items", "0",
              "--model.ema_decay", "0.9", "--trainer.val_check_interval", "100")
    reference = torch.load(_fit(codec, audio_shards, tmp_path / "reference", *common), weights_only=True)
    run = tmp_path / "preempted"
    signal_at = ("--trainer.callbacks+=tests.finetune.helpers.SignalAt", "--trainer.callbacks.step", "6")
    preempted = torch.load(_fit(codec, audio_shards, run, *common, *signal_at), weights_only=True)
    assert preempted["global_step"] == 7
    loops = preempted["loops"]["fit_loop"]
    assert loops["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 2}]
    assert loops["epoch_loop.val_loop.batch_progress"]["total"]["completed"] == 0  # no validation in the grace period
    got = torch.load(_fit(codec, audio_shards, run, *common, "--ckpt_path", "last"), weights_only=True)
    assert got["global_step"] == reference["global_step"] == 10
    assert any(not torch.equal(v, preempted["state_dict"][k]) for k, v in reference["state_dict"].items())
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][key], value, rtol=0, atol=0, msg=key)
    for key, value in reference["mgft_ema"]["shadow"].items():
        torch.testing.assert_close(got["mgft_ema"]["shadow"][key], value, rtol=0, atol=0, msg=key)
