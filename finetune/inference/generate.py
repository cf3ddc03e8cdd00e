"""`mgft generate`: music from a fine-tuned (or hub) MusicGen, with audiocraft's sampling, past the 30 s window.

    mgft generate --model runs/x/checkpoints/last.ckpt --prompt "warm lo-fi piano" --duration 40 --out samples/
    mgft generate --model facebook/musicgen-stereo-melody --prompts prompts.txt --melody tune.wav --out samples/

The sampler is `finetune.inference.sampler` (top-k 250, CFG 3.0, delayed pattern, 30 s windows with an 18 s
stride, as audiocraft); decoding is EnCodec (`data_prep.codec.decode_codes`) or multi-band diffusion.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import numpy as np

from data_prep.schema import SAMPLE_RATE


def melody_audio_for(paths: list[str], demucs: str, device: str, channels: int):
    """Melody files as a `MelodyAudio`: decoded, at 32 kHz, in the model's `channels`, with HTDemucs + chroma.

    As audiocraft's `generate_with_chroma`: the melody is converted to the model's channels; the chroma of each
    generation window (see `finetune.inference.sampler.MelodyAudio`) is taken from their mean, as audiocraft's
    `ConditioningProvider._collate_wavs` averages every wav condition before `ChromaStemConditioner` separates it,
    and as `mgft prep --melody` computed the chroma the model trained on.
    """
    import torch

    from data_prep import audio as audio_io
    from data_prep.chroma import ChromaExtractor
    from data_prep.stems import load_demucs
    from finetune.inference.sampler import MelodyAudio

    wavs = []
    for path in paths:
        decoded = audio_io.convert_channels(audio_io.resample(audio_io.decode(Path(path)), SAMPLE_RATE), channels)
        wavs.append(torch.from_numpy(decoded.samples).to(device))  # [C, N]
    separator, extractor = load_demucs(demucs, device), ChromaExtractor().to(device)
    return MelodyAudio(wavs, functools.partial(channel_mean_chroma, separator, extractor))


def channel_mean_chroma(separator, extractor, wav):  # noqa: ANN001, ANN201 (torch modules and tensors)
    """The melody chroma `[B, F, 12]` of audio `[B, C, n]`: of its channel mean, through demucs (seed 0)."""
    from data_prep.stems import melody_chroma

    return melody_chroma(separator, extractor, wav.mean(dim=1, keepdim=True), seed=0)  # [B, 1, n] -> [B, F, 12]


MIN_DURATION = 0.5
"""Shortest clip in seconds: 25 frames, enough for EnCodec's decoder convolutions and the 3-step codebook delay."""
INDEX_FILE = "prompts.txt"
"""`FILE<TAB>PROMPT` per clip: the index of an output folder."""


def clear_earlier_run(out_dir: Path, overwrite: bool) -> None:
    """Refuse an output folder that holds files, or with `overwrite`, remove the clips an earlier run listed there.

    Raises:
        ValueError: `out_dir` is a file, holds files and `overwrite` is off, or holds files no run of ours wrote.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file, not a folder")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise ValueError(f"--out {out_dir} already holds files: choose a new folder, or pass --overwrite to replace "
                         "that folder's clips")
    index = out_dir / INDEX_FILE
    lines = index.read_text(encoding="utf-8").splitlines() if index.is_file() else []
    ours = [line.split("\t", 1)[0] for line in lines]
    others = sorted(p.name for p in out_dir.iterdir() if p.name not in {*ours, INDEX_FILE, "codes.npy"})
    if others:
        raise ValueError(f"--out {out_dir} holds files that no mgft generate wrote ({', '.join(others[:3])}"
                         f"{', ...' if len(others) > 3 else ''}): choose another folder")
    for name in [*ours, "codes.npy", INDEX_FILE]:
        (out_dir / name).unlink(missing_ok=True)


def generate(
    *,
    model: str,
    out: str,
    prompt: str | None = None,
    prompts: str | None = None,
    melody: str | None = None,
    demucs: str = "htdemucs",
    duration: float = 10.0,
    decoder: Literal["encodec", "mbd"] = "encodec",
    mbd: str = "facebook/multiband-diffusion",
    cfg: float = 3.0,
    top_k: int = 250,
    temperature: float = 1.0,
    top_p: float = 0.0,
    two_step_cfg: bool = False,
    seed: int = 0,
    batch_size: int = 4,
    device: str = "cpu",
    trust_checkpoint: bool = False,
    overwrite: bool = False,
    audiocraft_base: str | None = None,
) -> list[str]:
    """Generate 32 kHz WAV files (two channels for stereo models) from text prompts and an optional melody.

    Writes `OUT/0000.wav, 0001.wav, ...`, `prompts.txt` (file, prompt) and `codes.npy` (int16 `[N, K, T]`). An OUT
    that already holds files is refused unless `--overwrite`, which first removes what an earlier run wrote there
    (the files its `prompts.txt` lists, and `codes.npy`), so `prompts.txt` always lists every clip in the folder.

    Args:
        model: A transformers MusicGen directory or hub id, or an mgft checkpoint (.ckpt; EMA weights are used).
        out: Output folder for the WAV files.
        prompt: One text prompt.
        prompts: A text file with one prompt per line.
        melody: An audio file whose melody (chroma of its vocals + other stems) conditions melody models.
        demucs: HTDemucs for the melody (model name or local folder).
        duration: Seconds per clip; past 30 s, windowed continuation with an 18 s stride.
        decoder: Token decoder: encodec, or mbd (multi-band diffusion: 4 band models x 20 denoising steps, cleaner
            highs, much slower; stereo goes through the mono bands as left and right).
        mbd: The MBD file for `--decoder mbd`: hub id, `.th` file, or a folder holding `mbd_musicgen_32khz.th`.
        cfg: Classifier-free guidance coefficient (audiocraft 3.0).
        top_k: Top-k sampling (audiocraft 250; transformers defaults to 50).
        temperature: Sampling temperature (0: greedy).
        top_p: Nucleus sampling when > 0, in place of top-k (audiocraft's option, off by default).
        two_step_cfg: Separate conditional and unconditional passes, as audiocraft's option (off by default).
        seed: Sampling seed.
        batch_size: Prompts generated together.
        device: cpu or cuda.
        trust_checkpoint: Allow checkpoints that need arbitrary unpickling (never for files you did not make).
        overwrite: Replace an earlier run's clips in OUT.
        audiocraft_base: For an audiocraft export as --model: the transformers MusicGen (folder or hub id) whose
            T5, EnCodec and tokenizer it uses (default: the matching facebook/musicgen-* checkpoint).

    Returns:
        The WAV paths written.
    """
    import soundfile as sf

    # Here, not at the top: `mgft generate -h` must not wait for torch and transformers.
    from data_prep.codec import decode_codes
    from finetune.inference.load import load_for_inference
    from finetune.inference.sampler import Sampler, check_sampling, generate_codes

    if (prompt is None) == (prompts is None):
        raise ValueError("give exactly one of --prompt or --prompts")
    check_sampling(temperature, top_k, top_p)
    if not duration >= MIN_DURATION:
        raise ValueError(f"--duration must be at least {MIN_DURATION} s, got {duration}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    if melody is not None and not Path(melody).is_file():
        raise ValueError(f"--melody {melody}: no such file")
    if prompts is not None and not Path(prompts).is_file():
        raise ValueError(f"--prompts {prompts}: no such file")
    captions = [prompt] if prompt is not None else [
        line.strip() for line in Path(prompts).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not captions:
        raise ValueError(f"--prompts {prompts} holds no prompt (one per line)" if prompts else "--prompt is empty")
    out_dir = Path(out)
    clear_earlier_run(out_dir, overwrite)
    module = load_for_inference(model, device, trust_checkpoint, audiocraft_base)
    lm, is_melody = module.model, module.is_melody
    if melody is not None and not is_melody:
        raise ValueError(f"--melody needs a melody model; {model} is text-only")
    channels = getattr(lm.config.decoder, "audio_channels", 1)
    tune = melody_audio_for([melody], demucs, device, channels) if melody is not None else None
    diffusion = None
    if decoder == "mbd":
        from finetune.mbd.decoder import load_mbd

        diffusion = load_mbd(mbd, lm.audio_encoder, trust_checkpoint).to(device)
    sampler = Sampler.from_module(module, cfg=cfg, top_k=top_k, top_p=top_p, temperature=temperature,
                                  two_step_cfg=two_step_cfg, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, all_codes = [], []
    for start in range(0, len(captions), batch_size):
        batch = captions[start : start + batch_size]
        codes = generate_codes(sampler, batch, duration, melody=tune.repeat(len(batch)) if tune else None)  # [B, K, T]
        all_codes.append(codes.cpu().numpy().astype(np.int16))
        if diffusion is not None:
            audio = diffusion.tokens_to_wav(codes, seed=seed + start).float().cpu().numpy()  # [B, C, N]
        else:
            audio = decode_codes(lm.audio_encoder, codes).float().cpu().numpy()
        for i, wav in enumerate(audio):
            path = out_dir / f"{start + i:04d}.wav"
            sf.write(path, np.clip(wav.T, -1, 1), SAMPLE_RATE)
            written.append(str(path))
    np.save(out_dir / "codes.npy", np.concatenate(all_codes))  # [N, K, T]: decode again, e.g. with MBD
    (out_dir / INDEX_FILE).write_text("".join(f"{i:04d}.wav\t{c}\n" for i, c in enumerate(captions)))
    print(f"wrote {len(written)} file(s) of {duration:g} s to {out_dir}")
    return written
