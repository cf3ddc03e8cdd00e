"""Load MusicGen for training: transformers checkpoints (hub id or directory), with audiocraft's training tweaks.

The same `from_pretrained` path serves `facebook/musicgen-*` on the hub and the tiny local models of the tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def audiocraft_sin_table(num_positions: int, dim: int) -> torch.Tensor:
    """audiocraft's sinusoidal position table `[num_positions, dim]`, in fp32.

    As `create_sin_embedding` (`audiocraft/modules/transformer.py`): `phase = pos / 10000 ** (i / (dim/2 - 1))`, then
    `[cos(phase), sin(phase)]`. transformers' `MusicgenSinusoidalPositionalEmbedding` computes the same angles as
    `pos * exp(-i * log(10000) / (dim/2 - 1))`; in fp32 the two tables differ by up to 1.2e-4 within 1,500 positions.
    The released weights were trained with audiocraft's table (docs/fidelity.md).
    """
    half = dim // 2
    positions = torch.arange(num_positions, dtype=torch.float32)[:, None]  # [P, 1]
    exponents = torch.arange(half, dtype=torch.float32)[None] / (half - 1)  # [1, dim/2]
    phase = positions / torch.tensor(10000.0) ** exponents  # [P, dim/2]
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


def use_audiocraft_positions(model: torch.nn.Module) -> None:
    """Swap the decoder's position table for audiocraft's, now and whenever transformers extends it.

    transformers rebuilds the table through the module's `get_embedding` when a sequence outgrows it; an instance
    attribute of that name takes over both the first build here and every later one.
    """
    table = model.decoder.model.decoder.embed_positions
    table.get_embedding = audiocraft_sin_table
    table.make_weights(table.weights.shape[0], table.embedding_dim)


def _classes(model_type: str):
    from transformers import MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration

    if model_type == "musicgen_melody":
        return MusicgenMelodyForConditionalGeneration, True
    if model_type == "musicgen":
        return MusicgenForConditionalGeneration, False
    raise ValueError(f"not a MusicGen checkpoint: model_type {model_type!r}")


def stereo_from_mono(mono: torch.nn.Module, model_class) -> torch.nn.Module:
    """audiocraft's mono -> stereo recipe: 2K codebooks, codebook k's embedding and head copied from mono's k // 2.

    Everything else is copied unchanged; the interleaved order L0, R0, L1, R1, ... makes both channels of codebook
    level k start from the mono level k.
    """
    config = mono.config.__class__.from_dict(mono.config.to_dict())
    k = config.decoder.num_codebooks
    if getattr(config.decoder, "audio_channels", 1) != 1:
        raise ValueError("mono_to_stereo needs a mono checkpoint")
    config.decoder.num_codebooks = 2 * k
    config.decoder.audio_channels = 2
    stereo = model_class(config)
    mono_state = mono.state_dict()
    state = {}
    for name in stereo.state_dict():
        for prefix in ("decoder.model.decoder.embed_tokens.", "decoder.lm_heads."):
            if name.startswith(prefix):
                index, rest = name[len(prefix):].split(".", 1)
                state[name] = mono_state[f"{prefix}{int(index) // 2}.{rest}"]
                break
        else:
            state[name] = mono_state[name]
    stereo.load_state_dict(state, strict=True)
    return stereo


def is_audiocraft_export(path: str) -> bool:
    """An audiocraft LM export: a `state_dict.bin` file, or a folder holding one (and no transformers config)."""
    p = Path(path)
    return (p.is_file() and p.suffix == ".bin") or (p.is_dir() and (p / "state_dict.bin").exists()
                                                    and not (p / "config.json").exists())


def load_audiocraft(path: str, base: str, dropout: float = 0.0):
    """Build the transformers model of an audiocraft export (`state_dict.bin` with `best_state` and `xp.cfg`).

    audiocraft keeps T5 and EnCodec outside the LM state dict: they (and the tokenizer) come from `base`, a
    transformers MusicGen checkpoint (hub id or folder); the decoder and projections come from the export.
    """
    from transformers import AutoConfig, AutoTokenizer

    from data_prep.names import check_model_name
    from finetune.checkpoints.audiocraft import hf_config_from_xp_cfg, load_audiocraft_into_hf, read_audiocraft_export

    check_model_name("model.audiocraft_base", base)
    state, xp = read_audiocraft_export(path)
    base_config = AutoConfig.from_pretrained(base)
    config = hf_config_from_xp_cfg(xp, base_config.text_encoder, base_config.audio_encoder)
    config.decoder.dropout = dropout
    model_class, is_melody = _classes(config.model_type)
    base_model = _classes(base_config.model_type)[0].from_pretrained(base)
    model = model_class(config)
    # Frozen parts from the base; everything the LM trained from the export.
    model.text_encoder.load_state_dict(base_model.text_encoder.state_dict())
    model.audio_encoder.load_state_dict(base_model.audio_encoder.state_dict())
    load_audiocraft_into_hf(state, model)
    return model, AutoTokenizer.from_pretrained(base), is_melody


def model_layout(pretrained: str, mono_to_stereo: bool = False) -> dict[str, Any] | None:
    """What a checkpoint expects of its data, from its config alone (no weights read): for `mgft fit`'s early check.

    Returns:
        `{"num_codebooks" (K, after mono_to_stereo), "is_melody", "sample_rate"}`, or None when the config cannot be
        read without loading the model (an audiocraft export, or a hub id that is not cached): the model's own
        loading then reports the problem, and `MusicGenLM.on_fit_start` checks the shards.
    """
    from transformers import AutoConfig

    if is_audiocraft_export(pretrained):
        return None
    try:
        config = AutoConfig.from_pretrained(pretrained)
    except (OSError, ValueError):
        return None
    try:
        _, is_melody = _classes(config.model_type)
    except ValueError as e:
        raise ValueError(f"model.pretrained {pretrained}: {e}") from e
    num_codebooks = config.decoder.num_codebooks
    return {
        "num_codebooks": 2 * num_codebooks if mono_to_stereo else num_codebooks,
        "is_melody": is_melody,
        "sample_rate": config.audio_encoder.sampling_rate,
    }


def load_musicgen(pretrained: str, dropout: float = 0.0, mono_to_stereo: bool = False,
                  audiocraft_base: str | None = None):
    """Returns (model, tokenizer, is_melody) for a MusicGen / MusicGen-Melody checkpoint.

    `pretrained` is a transformers checkpoint (hub id or folder) or an audiocraft export (`state_dict.bin`, file or
    folder), whose T5, EnCodec and tokenizer come from `audiocraft_base` (default: the matching facebook/musicgen-*
    hub checkpoint). `dropout` overrides the decoder's dropout: the hub configs carry 0.1 but audiocraft trained with
    0.0; the decoder's position table is audiocraft's (`use_audiocraft_positions`; docs/fidelity.md).
    """
    from transformers import AutoConfig, AutoTokenizer

    from data_prep.names import check_model_name

    check_model_name("model.pretrained", pretrained)
    if is_audiocraft_export(pretrained):
        from finetune.checkpoints.audiocraft import read_audiocraft_export

        if audiocraft_base is None:
            _, xp = read_audiocraft_export(pretrained)
            melody = "self_wav" in (xp.get("fuser") or {}).get("prepend", [])
            audiocraft_base = "facebook/musicgen-melody" if melody else "facebook/musicgen-small"
        model, tokenizer, is_melody = load_audiocraft(pretrained, audiocraft_base, dropout)
    else:
        config = AutoConfig.from_pretrained(pretrained)
        model_class, is_melody = _classes(config.model_type)
        config.decoder.dropout = dropout
        model = model_class.from_pretrained(pretrained, config=config)
        tokenizer = AutoTokenizer.from_pretrained(pretrained)
    if mono_to_stereo:
        model = stereo_from_mono(model, _classes(model.config.model_type)[0])
    use_audiocraft_positions(model)
    return model, tokenizer, is_melody
