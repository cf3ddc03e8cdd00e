"""Demucs stems for melody conditioning: a deterministic port of audiocraft's `ChromaStemConditioner._get_stemmed_wav`.

audiocraft removes drums and bass before computing chroma, because they dominate the pitch-class energy and hide
the melody. Its pipeline, reproduced here operation for operation:

    wav [B, C, 32 kHz] -> demucs.audio.convert_audio(wav, 32000, 44100, 2)   (julius resample_frac; mono duplicated)
                       -> demucs.apply.apply_model(htdemucs, wav)            (shifts=1, split=True, overlap=0.25)
                       -> stems [vocals, other] (indices [3, 2] in htdemucs) -> sum
                       -> convert_audio(mix, 44100, 32000, 1)                (channel mean, julius resample)

Two deliberate differences, both needed for reproducible data prep:

- `apply_model(shifts=1)` draws its random time shift from Python's *global* `random` module. audiocraft lets it
  float; here, when `seed` is not None, the draw comes from `random.seed(seed)` and the caller's global state is
  restored afterwards, so the same seed gives bit-identical stems on every rank and on resume. (Manipulating the
  global state is not thread-safe: do not call this concurrently from several threads of one process.)
- The julius round trip 32 kHz -> 44.1 kHz -> 32 kHz floors lengths twice and can come back one sample short; the
  result is cropped/zero-padded to the input length, so the chroma frame count is `1 + T // 4096`
  (`data_prep.schema.chroma_frames`). audiocraft keeps the short length, which changes the frame count only when
  T is a multiple of 4096 but not of 20480 (never for whole-second segments at 32 kHz).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from data_prep.chroma import ChromaExtractor
from data_prep.schema import SAMPLE_RATE

__all__ = ["MELODY_SOURCES", "load_demucs", "melody_chroma", "melody_stems", "stem_indices"]

MELODY_SOURCES: tuple[str, ...] = ("vocals", "other")
"""Sources kept for melody chroma, in audiocraft's order (htdemucs indices [3, 2]); drums and bass are dropped."""


def _looks_like_path(name_or_path: str) -> bool:
    """Demucs hub names ('htdemucs', '955717e8') never contain a path separator; `hf://` names are hub names."""
    if name_or_path.startswith("hf://"):
        return False
    return "/" in name_or_path or "\\" in name_or_path or name_or_path.startswith(("~", "."))


def stem_indices(sources: Sequence[str]) -> list[int]:
    """Indices of the melody stems (vocals, other) in a demucs model's `sources`.

    Args:
        sources: The model's source names, e.g. `['drums', 'bass', 'other', 'vocals']`.

    Returns:
        `[sources.index('vocals'), sources.index('other')]` ([3, 2] for htdemucs).

    Raises:
        ValueError: If a melody source is missing.
    """
    missing = [name for name in MELODY_SOURCES if name not in sources]
    if missing:
        raise ValueError(f"demucs model sources {list(sources)} lack {missing}; melody chroma needs vocals and other")
    return [list(sources).index(name) for name in MELODY_SOURCES]


def load_demucs(name_or_path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a demucs model (usually a `BagOfModels`) in eval mode.

    A directory is read as a local demucs repo laid out like demucs' remote one: exactly one bag file `NAME.yaml`
    (`models: ['<sig>']`) beside the model packages `<sig>[-<sha256[:8]>].th`; it is loaded with
    `demucs.pretrained.get_model(NAME, repo=dir)`. Anything else is a pretrained name (e.g. 'htdemucs',
    'hf://...') passed to `demucs.pretrained.get_model`, which downloads it.

    Args:
        name_or_path: A local repo directory or a demucs model name.
        device: Where to put the model.

    Returns:
        The model, eval mode, on `device`, with `sources`, `samplerate` and `audio_channels` attributes.

    Raises:
        ValueError: If the directory does not hold exactly one `*.yaml` bag, a path is not a directory, the repo
            cannot be loaded, or the model has no vocals/other sources.
    """
    from demucs.pretrained import ModelLoadingError, get_model

    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        bags = sorted(path.glob("*.yaml"))
        if len(bags) != 1:
            found = ", ".join(b.name for b in bags) or "none"
            raise ValueError(
                f"demucs repo {path} must hold exactly one bag file *.yaml (like htdemucs.yaml), found: {found}"
            )
        try:
            model = get_model(bags[0].stem, repo=path)
        except ModelLoadingError as exc:
            raise ValueError(f"could not load demucs bag {bags[0]} from {path}: {exc}") from exc
    elif path.exists() or isinstance(name_or_path, Path) or _looks_like_path(text):
        raise ValueError(f"demucs model path {path} is not a directory (expected DIR/NAME.yaml + DIR/<sig>.th)")
    else:
        from data_prep.names import hub_offline

        if hub_offline():  # demucs downloads from its own servers, which HF_HUB_OFFLINE does not cover
            raise ValueError(f"--demucs {text} is a model to download, and HF_HUB_OFFLINE=1: pass a local demucs "
                             "folder (NAME.yaml beside its .th files)")
        model = get_model(text)
    stem_indices(model.sources)
    return model.to(device).eval()


def _model_device(model: torch.nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a parameterless module)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def melody_stems(
    model: torch.nn.Module,
    wav: Tensor,
    *,
    sample_rate: int = SAMPLE_RATE,
    seed: int | None = 0,
    shifts: int = 1,
) -> Tensor:
    """Vocals + other of a batch, mono at 32 kHz: audiocraft's `_get_stemmed_wav`, made deterministic.

    Args:
        model: A demucs model or bag from `load_demucs`.
        wav: Audio `[B, C, T]` (C = 1 or 2) or `[B, T]` (mono) at `sample_rate`.
        sample_rate: Input sample rate (32 kHz in the MusicGen pipeline).
        seed: Seed for demucs' random shift; None leaves Python's global `random` untouched (audiocraft behaviour).
        shifts: demucs' shift trick count (audiocraft: 1).

    Returns:
        `[B, T']` float32 at 32 kHz, `T' = T` when `sample_rate` is 32 kHz (else `T * 32000 // sample_rate`).
    """
    if wav.dim() == 2:
        wav = wav[:, None]  # [B, 1, T]
    if wav.dim() != 3 or wav.shape[1] not in (1, 2):
        raise ValueError(f"melody_stems expects audio [B, C, T] with C in (1, 2) or [B, T], got {tuple(wav.shape)}")
    from demucs.apply import apply_model
    from demucs.audio import convert_audio

    out_length = wav.shape[-1] * SAMPLE_RATE // sample_rate
    indices = stem_indices(model.sources)
    device = _model_device(model)
    # [B, C, T] -> [B, model.audio_channels, T44]; mono is duplicated (expand), stereo kept, julius resample.
    mix = convert_audio(wav.float(), sample_rate, model.samplerate, model.audio_channels)
    state = random.getstate() if seed is not None else None
    try:
        if seed is not None:
            random.seed(seed)  # apply_model's shift: random.randint(0, 0.5 s) from the global module
        stems = apply_model(model, mix, shifts=shifts, split=True, overlap=0.25, device=device)  # [B, S, C, T44]
    finally:
        if state is not None:
            random.setstate(state)
    melody = stems[:, indices].sum(1)  # [B, C, T44]: vocals + other, drums and bass removed
    out = convert_audio(melody, model.samplerate, SAMPLE_RATE, 1)[:, 0]  # [B, T'']: channel mean, then resample
    if out.shape[-1] >= out_length:
        return out[..., :out_length]
    return F.pad(out, (0, out_length - out.shape[-1]))  # [B, T']: the round trip can lose a sample


@torch.no_grad()
def instrumental_and_melody(
    model: torch.nn.Module,
    wav: Tensor,
    *,
    seed: int,
    shifts: int = 1,
) -> tuple[Tensor, Tensor]:
    """One demucs pass over a 32 kHz segment: the instrumental (every stem but vocals) and the melody stems.

    `mgft prep --drop-vocals` trains on the instrumental, as MusicGen was trained on instrument-only music
    (musicgen-dreamboothing's `--audio_separation`, cog-musicgen-fine-tuner's `drop_vocals`). The melody (vocals +
    other, as `melody_stems`) comes from the same pass, so a melody prep separates each segment once; it is the
    channel mean of the stereo separation rather than the separation of the channel mean.

    Args:
        model: A demucs model or bag from `load_demucs`.
        wav: Audio `[1, C, N]` at 32 kHz, C = 1 or 2.
        seed: Seed of demucs' random shift.
        shifts: demucs' shift trick count.

    Returns:
        `(instrumental [C, N], melody [N])`, float32 at 32 kHz.
    """
    from demucs.apply import apply_model
    from demucs.audio import convert_audio

    if wav.dim() != 3 or wav.shape[0] != 1 or wav.shape[1] not in (1, 2):
        raise ValueError(f"instrumental_and_melody expects audio [1, C, N] with C in (1, 2), got {tuple(wav.shape)}")
    channels, length = wav.shape[1], wav.shape[-1]
    mix = convert_audio(wav.float(), SAMPLE_RATE, model.samplerate, model.audio_channels)
    state = random.getstate()
    try:
        random.seed(seed)  # apply_model's shift: random.randint(0, 0.5 s) from the global module
        stems = apply_model(model, mix, shifts=shifts, split=True, overlap=0.25, device=_model_device(model))
    finally:
        random.setstate(state)
    stems = stems[0]  # [S, 2, T44]
    keep = [i for i, name in enumerate(model.sources) if name != "vocals"]
    instrumental = convert_audio(stems[keep].sum(0), model.samplerate, SAMPLE_RATE, channels)  # [C, T']
    melody = convert_audio(stems[stem_indices(model.sources)].sum(0), model.samplerate, SAMPLE_RATE, 1)[0]  # [T']

    def fit(x: Tensor) -> Tensor:  # the resampling round trip can lose a sample
        return x[..., :length] if x.shape[-1] >= length else F.pad(x, (0, length - x.shape[-1]))

    return fit(instrumental), fit(melody)


@torch.no_grad()
def melody_chroma(
    model: torch.nn.Module,
    extractor: ChromaExtractor,
    wav: Tensor,
    *,
    sample_rate: int = SAMPLE_RATE,
    seed: int | None = 0,
    shifts: int = 1,
) -> Tensor:
    """The full melody condition of a batch: demucs stems (vocals + other), then chroma.

    Args:
        model: A demucs model or bag from `load_demucs`.
        extractor: The chroma extractor (32 kHz, argmax for audiocraft's melody models).
        wav: Audio `[B, C, T]` or `[B, T]` at `sample_rate`.
        sample_rate: Input sample rate.
        seed: Seed for demucs' random shift (see `melody_stems`).
        shifts: demucs' shift trick count.

    Returns:
        `[B, frames, 12]` with `frames = 1 + max(T, 16384) // 4096` (235 for 30 s at 32 kHz).
    """
    if wav.shape[-1] == 1:
        # audiocraft skips demucs for a nullified (1-sample) condition and takes the chroma of the zeros directly.
        mono = wav if wav.dim() == 2 else wav.mean(dim=1)  # [B, 1]
        return extractor(mono.float().to(extractor.fbanks.device))  # [B, 5, 12]
    stems = melody_stems(model, wav, sample_rate=sample_rate, seed=seed, shifts=shifts)  # [B, T']
    return extractor(stems.to(extractor.fbanks.device))  # [B, frames, 12]
