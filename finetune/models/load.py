"""Load MusicGen for training: transformers checkpoints (hub id or directory), with audiocraft's training tweaks.

The same `from_pretrained` path serves `facebook/musicgen-*` on the hub and the tiny local models of the tests.
"""

from __future__ import annotations

import torch


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


def load_musicgen(pretrained: str, dropout: float = 0.0, mono_to_stereo: bool = False):
    """Returns (model, tokenizer, is_melody) for a MusicGen / MusicGen-Melody checkpoint.

    `dropout` overrides the decoder's dropout: the hub configs carry 0.1 but audiocraft trained with 0.0 (facts G.6).
    """
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(pretrained)
    model_class, is_melody = _classes(config.model_type)
    config.decoder.dropout = dropout
    model = model_class.from_pretrained(pretrained, config=config)
    if mono_to_stereo:
        model = stereo_from_mono(model, model_class)
    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    return model, tokenizer, is_melody
