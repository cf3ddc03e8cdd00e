"""The training-sample callback generates what `mgft generate` generates: one sampler for both."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np


def test_training_samples_equal_mgft_generate_for_the_same_seed_prompt_and_melody(
        tmp_path: Path, tiny_lm_dir: Path, tiny_models_dir: Path, stereo_melody_shards: Path) -> None:
    from finetune.inference.generate import generate
    from finetune.lm.data import MusicGenData
    from finetune.lm.module import MusicGenLM
    from finetune.training.callbacks import SampleGenerator
    from testkit import synth

    [spec] = synth.plan_catalog(1, 3.0, seed=8)
    tune = synth.write_track(tmp_path / "tunes", spec)
    demucs = str(tiny_models_dir / "htdemucs")
    module = MusicGenLM(pretrained=str(tiny_lm_dir / "musicgen-stereo-melody"), lr=1e-3, warmup_steps=1,
                        ema_decay=None)
    data = MusicGenData(str(stereo_melody_shards), batch_size=2, num_workers=0, steps_per_epoch=2,
                        require_chroma=True)
    sampler_cb = SampleGenerator(every_n_steps=2, captions=["calm piano with a bell"], melodies=[str(tune)],
                                 demucs=demucs, num_samples=1, seconds=1.0, seed=3)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, callbacks=[sampler_cb], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=str(tmp_path / "run"))
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(tmp_path / "final.ckpt")

    round_dir = tmp_path / "run" / "samples" / "step_000002"
    during_training = np.load(round_dir / "codes.npy")
    generate(model=str(tmp_path / "final.ckpt"), prompt="calm piano with a bell", melody=str(tune), demucs=demucs,
             duration=1.0, seed=3, out=str(tmp_path / "generated"))
    afterwards = np.load(tmp_path / "generated" / "codes.npy")
    assert during_training.shape == afterwards.shape == (1, 8, 50)
    np.testing.assert_array_equal(during_training, afterwards)
    assert len(np.unique(afterwards)) > 20  # informative codes, not a constant

    # Another melody changes what the callback generates (the melody really conditions it).
    [other] = synth.plan_catalog(1, 3.0, seed=9)
    other_cb = SampleGenerator(captions=["calm piano with a bell"], melodies=[str(synth.write_track(tmp_path / "o",
                               other))], demucs=demucs, num_samples=1, seconds=1.0, seed=3)
    other_cb.on_train_batch_start(trainer, module, {"captions": ["x"]}, 0)
    codes, _ = other_cb.generate(module)
    assert (codes != afterwards).mean() > 0.5
