"""Does a tiny melody MusicGen learn to use its melody? Held-out `melody_gain` per checkpoint, in two arms.

    python bench/melody_following.py --arm control [--steps 1500] [--out /tmp/melody-following]
    python bench/melody_following.py --arm audio [--steps 1500] [--tracks 240] [--out /tmp/melody-following]

`melody_gain` is `mgft eval`'s: the held-out cross-entropy with each sample given another sample's melody minus with
its own, in nats per code (teacher-forced, so it does not depend on how well the model generates). Both arms train
the tiny stereo-melody MusicGen of `mgft tiny-models` from random init with everything but the melody taken away
(every caption word dropped, no CFG dropout, the chroma always on; lr 0.01), so the melody is the only condition:

- control: shards whose codes are a function of the aligned chroma frame alone. Each sample is a random sequence of
  pitch classes, each held for 2 to 8 chroma frames, and each pitch class is one fixed code per codebook; nothing in
  the codes before a note change says when it comes or what it changes to. A gain here shows the melody path works
  end to end (chroma -> `audio_enc_to_dec_proj` -> the prefix -> attention to the frame at the same time).
- audio: a synthesized catalog of a lone lead (plucked string or FM bell) playing a random pitch every beat
  (`testkit.synth.render_random_melody`), prepped as `mgft prep --melody` does, with the tiny EnCodec and tiny
  HTDemucs. The same question on real codes, where a pitch is one of many things a code says.

Prints the held-out cross-entropy with the own melody and with another, and the gain, at each saved step. Cost on 2
CPU cores, 1500 steps: control 8 min; audio 12.5 min (synthesis and prep of 256 tracks included). Figures and what
they mean for the demo: docs/tiny-models.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from data_prep.schema import CARDINALITY, FRAME_RATE, SAMPLE_RATE, chroma_frames

ROOT = Path(__file__).resolve().parents[1]
MODEL = "musicgen-stereo-melody"
SEGMENT_SECONDS = 5
CHROMA_FRAMES = chroma_frames(SEGMENT_SECONDS * SAMPLE_RATE)  # 40 at 7.8 Hz
CODE_FRAMES = SEGMENT_SECONDS * FRAME_RATE  # 250 at 50 Hz
CODEBOOKS = 8  # stereo: 4 left, 4 right


def mgft(*args: str) -> None:
    """Run an mgft command offline, its output to this process's stderr; raise on failure."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    subprocess.run([sys.executable, "-m", "finetune", *args], cwd=ROOT, env=env, check=True, stdout=sys.stderr)


def control_shards(out: Path, samples: int, seed: int) -> Path:
    """Write `samples` segments whose codes `[8, 250]` follow the aligned pitch class of their chroma `[40, 12]`.

    The pitch-class-to-code table is the same for every seed (train and held-out share it); the note sequences are
    drawn from `seed`.
    """
    import webdataset as wds

    table = np.random.default_rng(0).integers(0, CARDINALITY, size=(CODEBOOKS, 12))  # [K, 12]
    rng = np.random.default_rng(seed)
    frame_of_code = np.minimum(np.arange(CODE_FRAMES) * CHROMA_FRAMES // CODE_FRAMES, CHROMA_FRAMES - 1)  # [T]
    out.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(out / "shard-r0000-000000.tar")) as tar:
        for i in range(samples):
            pitches: list[int] = []
            while len(pitches) < CHROMA_FRAMES:
                pitches += [int(rng.integers(12))] * int(rng.integers(2, 9))
            pitch = np.array(pitches[:CHROMA_FRAMES])  # [F]
            key = f"control_{i:05d}"
            info = {"schema_version": 2, "key": key, "track_key": key, "segment_index": 0, "caption": "",
                    "license": "CC0-1.0", "valid_frames": CODE_FRAMES, "num_frames": CODE_FRAMES,
                    "chroma_valid_frames": CHROMA_FRAMES, "sample_rate": SAMPLE_RATE, "channels": 2}
            tar.write({"__key__": key, "json": info,
                       "codes.npy": table[:, pitch[frame_of_code]].astype(np.int16),  # [K, T]
                       "chroma.npy": np.eye(12, dtype=np.float32)[pitch]})  # [F, 12]
    return out


def audio_catalog(out: Path, tracks: int, seconds: float, seed: int) -> Path:
    """Write `tracks` random-melody tracks (stereo FLAC at 44.1 or 48 kHz) with CC0 sidecars under `out`."""
    from testkit.synth import plan_catalog, render_random_melody

    out.mkdir(parents=True, exist_ok=True)
    for spec in plan_catalog(tracks, seconds, seed):
        path = out / f"{spec.index:04d}.flac"
        sf.write(path, render_random_melody(spec), spec.sample_rate, format="FLAC")
        sidecar = {"title": f"Random melody {spec.index}", "artist": "mgft bench", "license": "CC0-1.0",
                   "description": f"a lone {spec.lead} playing a random pitch every beat"}
        path.with_suffix(".json").write_text(json.dumps(sidecar) + "\n")
    return out


def train(models: Path, shards: Path, val: Path, run: Path, steps: int, every: int) -> None:
    """Train the tiny stereo-melody model with only its melody as a condition; a checkpoint every `every` steps."""
    mgft("fit", "--config", "recipes/tiny/stereo-melody-pretrain.yaml", "--model.pretrained", str(models / MODEL),
         "--data.shards", str(shards), "--data.val_shards", str(val), "--trainer.default_root_dir", str(run),
         "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(every),
         "--data.steps_per_epoch", str(every), "--trainer.logger", "false", "--model.lr", "0.01",
         "--model.word_dropout", "1.0", "--model.cfg_dropout", "0.0", "--model.chroma_dropout", "0.0")


def report(run: Path, val: Path, steps: int, every: int) -> None:
    """Print the held-out cross-entropy with the own and another melody, and the gain, at each `every` steps."""
    from finetune.evaluation.heldout import codebook_cross_entropy
    from finetune.inference.load import load_for_inference

    print(f"{'step':>6} {'CE own melody':>14} {'CE other melody':>16} {'melody_gain':>12}  (nats per code, held out)")
    for step in range(every, steps + 1, every):
        ckpt = run / "checkpoints" / f"step{step:06d}.ckpt"
        if not ckpt.exists():
            continue
        ce = codebook_cross_entropy(load_for_inference(str(ckpt)), str(val), batch_size=8)
        print(f"{step:>6} {ce['val/ce']:>14.4f} {ce['val/ce_other_melody']:>16.4f} {ce['melody_gain']:>12.4f}",
              flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", choices=("control", "audio"), default="control")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=500, help="evaluate every this many steps")
    parser.add_argument("--tracks", type=int, default=240, help="audio arm: training tracks (held out: 16)")
    parser.add_argument("--samples", type=int, default=2000, help="control arm: training segments (held out: 64)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/melody-following"))
    args = parser.parse_args(argv)
    if args.steps < args.every:
        parser.error(f"--steps {args.steps} is below --every {args.every}: nothing would be evaluated")
    out = args.out / args.arm
    models = args.out / "models"
    if not (models / MODEL).exists():
        mgft("tiny-models", str(models), "--only", f"{MODEL},encodec_32khz,htdemucs")
    if args.arm == "control":
        shards, val = control_shards(out / "shards", args.samples, seed=1), control_shards(out / "val", 64, seed=2)
    else:
        prep = ["--codec", str(models / "encodec_32khz"), "--demucs", str(models / "htdemucs"), "--melody",
                "--channels", "2", "--segment-seconds", str(SEGMENT_SECONDS)]
        shards, val = out / "shards", out / "val"
        for catalog, tracks, seed, dest in ((out / "catalog", args.tracks, 20, shards),
                                            (out / "catalog-val", 16, 21, val)):
            if not (dest / "stats.json").exists():
                audio_catalog(catalog, tracks, 10.0, seed)
                mgft("prep", "--input", str(catalog), "--output", str(dest), *prep)
    shutil.rmtree(out / "run", ignore_errors=True)  # a fresh run each time, not a resume of the last one
    train(models, shards, val, out / "run", args.steps, args.every)
    for ckpt in (out / "run" / "checkpoints").glob("step*.ckpt"):  # the trainer keeps one every 10 steps (13 MB)
        if int(ckpt.stem[4:]) % args.every:
            ckpt.unlink()
    print(f"arm {args.arm}: {args.steps} steps, held out {val}")
    report(out / "run", val, args.steps, args.every)


if __name__ == "__main__":
    main()
