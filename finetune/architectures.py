"""The hub checkpoints' architectures, in one table.

What `facebook/musicgen-*`, `facebook/encodec_32khz`, t5-base and the released htdemucs are, as transformers configs
and demucs arguments built offline.

Used by `mgft plan` (parameter and memory formulas for a hub id without downloading it), by
`mgft tiny-models --size real` (random weights in these shapes, for benchmarks) and by the tests, which check the
parameter counts against the hub files (docs/formats.md). Tiny test models are these configs with narrower widths
(`testkit/tiny_models.py`).
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING, Any

from data_prep.schema import CARDINALITY, HOP_LENGTH, SAMPLE_RATE, SPECIAL_TOKEN_ID

if TYPE_CHECKING:
    from transformers import EncodecConfig, MusicgenConfig, MusicgenMelodyConfig, T5Config

MUSICGEN_DECODERS: dict[str, tuple[int, int, int]] = {
    "small": (1024, 24, 16),
    "medium": (1536, 48, 24),
    "large": (2048, 48, 32),
    "melody": (1536, 48, 24),
    "melody-large": (2048, 48, 32),
}
"""Decoder (hidden size, layers, heads) per checkpoint size; the feed-forward is 4 x hidden. Stereo checkpoints
(`musicgen-stereo-<size>`) have the same decoders with 8 codebooks (docs/formats.md)."""

LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
"""The decoder layers LoRA adapts unless a recipe says otherwise (`model.lora_targets`): every attention projection
(self- and, in text models, cross-attention, which share these names) and both feed-forward linears."""

# EnCodec 32 kHz as transformers' `convert_encodec_checkpoint_to_pytorch.py` sets it. The bandwidth picks the
# codebook count: floor(2200 / (log2(2048) * 50 Hz)) = 4 codebooks, which holds only with 2048 codes and hop 640.
ENCODEC_32KHZ_FORMAT: dict[str, Any] = {
    "sampling_rate": SAMPLE_RATE,
    "audio_channels": 1,
    "upsampling_ratios": [8, 5, 4, 4],  # product 640 = HOP_LENGTH
    "target_bandwidths": [2.2],
    "codebook_size": CARDINALITY,
    "normalize": False,
    "use_causal_conv": False,
    "use_conv_shortcut": False,
    "chunk_length_s": None,
    "overlap": None,
}
ENCODEC_32KHZ_WIDTHS: dict[str, Any] = {
    "num_filters": 64,
    "hidden_size": 128,
    "codebook_dim": 128,
    "num_lstm_layers": 2,
    "num_residual_layers": 1,
}

T5_BASE: dict[str, Any] = {
    "vocab_size": 32128,
    "d_model": 768,
    "d_kv": 64,
    "d_ff": 3072,
    "num_layers": 12,
    "num_heads": 12,
    "relative_attention_num_buckets": 32,
    "dropout_rate": 0.1,
    "feed_forward_proj": "relu",
    "layer_norm_epsilon": 1e-6,
}
"""t5-base: the text encoder of every MusicGen checkpoint."""

HTDEMUCS_SOURCES: list[str] = ["drums", "bass", "other", "vocals"]
"""The stem order of the released htdemucs (`955717e8`); melody conditioning keeps [3, 2] (vocals, other)."""

# The released htdemucs comes from demucs' `grids/mmi.py` (dconv_mode 3, t_dropout 0.02, 5 transformer layers,
# bottom_channels 512) over the `htdemucs` defaults of demucs' `conf/config.yaml` (t_sparse_attn_window 400, where
# the class default is 500). 41,984,456 parameters.
HTDEMUCS_RELEASED: dict[str, Any] = {
    "channels": 48,
    "growth": 2,
    "nfft": 4096,
    "depth": 4,
    "dconv_mode": 3,
    "dconv_depth": 2,
    "dconv_comp": 8,
    "bottom_channels": 512,
    "t_layers": 5,
    "t_heads": 8,
    "t_hidden_scale": 4.0,
    "t_dropout": 0.02,
    "t_sparse_attn_window": 400,
}


def encodec_config(**widths: Any) -> EncodecConfig:
    """EnCodec 32 kHz (mono, hop 640, 50 Hz, 4 codebooks of 2048 at 2.2 kbps), optionally with other widths.

    Args:
        **widths: overrides of `ENCODEC_32KHZ_WIDTHS` (the format fields stay fixed).

    Returns:
        A transformers `EncodecConfig`.
    """
    from transformers import EncodecConfig

    config = EncodecConfig(**ENCODEC_32KHZ_FORMAT, **{**ENCODEC_32KHZ_WIDTHS, **widths})
    assert config.hop_length == HOP_LENGTH
    return config


def t5_config(**overrides: Any) -> T5Config:
    """t5-base as MusicGen's composite config holds it (pad 0, eos 1), optionally with other sizes."""
    from transformers import T5Config

    return T5Config(**{**T5_BASE, **overrides}, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def htdemucs_kwargs(**overrides: Any) -> dict[str, Any]:
    """`demucs.htdemucs.HTDemucs(**kwargs)` arguments of the released htdemucs, optionally with other sizes.

    The segment is 7.8 s = 10 s * 0.88 (repitch trim) - 1 s (random shift), a Fraction as the released package
    stores it.
    """
    return {"sources": list(HTDEMUCS_SOURCES), "audio_channels": 2, "samplerate": 44100,
            "segment": Fraction(39, 5), **HTDEMUCS_RELEASED, **overrides}


def musicgen_variant(name: str) -> tuple[str, bool, bool]:
    """`(size, stereo, melody)` of a checkpoint name such as `facebook/musicgen-stereo-melody-large`.

    Raises:
        ValueError: for a name that is not a MusicGen checkpoint of the hub.
    """
    short = name.rsplit("/", 1)[-1].removeprefix("musicgen-")
    stereo = short.startswith("stereo-")
    size = short.removeprefix("stereo-")
    if size not in MUSICGEN_DECODERS:
        raise ValueError(f"unknown MusicGen checkpoint {name!r}; the hub has musicgen-[stereo-]"
                         f"{{{','.join(MUSICGEN_DECODERS)}}}")
    return size, stereo, size.startswith("melody")


def musicgen_config(
    name: str,
    decoder: tuple[int, int, int] | None = None,
    text: dict[str, Any] | None = None,
    audio: dict[str, Any] | None = None,
    dropout: float = 0.1,
) -> MusicgenConfig | MusicgenMelodyConfig:
    """The composite config (T5, EnCodec 32 kHz, decoder) of a hub MusicGen checkpoint.

    Args:
        name: a checkpoint name, e.g. `facebook/musicgen-small` or `musicgen-stereo-melody`.
        decoder: (hidden, layers, heads) instead of the checkpoint's (for tiny models).
        text: T5 overrides (for tiny models).
        audio: EnCodec width overrides (for tiny models).
        dropout: decoder dropout; the hub configs keep transformers' default 0.1 (audiocraft trained with 0.0, which
            the trainer sets: docs/fidelity.md).

    Returns:
        `MusicgenConfig` (text models) or `MusicgenMelodyConfig` (melody: num_chroma 12, chroma_length 235); stereo
        decoders have 8 codebooks and audio_channels 2. The decoder config carries `decoder_start_token_id=2048`,
        which `MusicgenForConditionalGeneration.forward(labels=...)` reads although strict v5 configs do not declare
        it.
    """
    from transformers import MusicgenConfig, MusicgenDecoderConfig, MusicgenMelodyConfig, MusicgenMelodyDecoderConfig

    size, stereo, melody = musicgen_variant(name)
    hidden, layers, heads = decoder or MUSICGEN_DECODERS[size]
    decoder_kwargs: dict[str, Any] = {
        "vocab_size": CARDINALITY,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "ffn_dim": 4 * hidden,
        "num_codebooks": 8 if stereo else 4,
        "audio_channels": 2 if stereo else 1,
        "pad_token_id": SPECIAL_TOKEN_ID,
        "bos_token_id": SPECIAL_TOKEN_ID,
        "decoder_start_token_id": SPECIAL_TOKEN_ID,
        "dropout": dropout,
    }
    text_config, audio_config = t5_config(**(text or {})), encodec_config(**(audio or {}))
    if melody:
        return MusicgenMelodyConfig(text_encoder=text_config, audio_encoder=audio_config,
                                    decoder=MusicgenMelodyDecoderConfig(**decoder_kwargs), num_chroma=12,
                                    chroma_length=235)
    return MusicgenConfig(text_encoder=text_config, audio_encoder=audio_config,
                          decoder=MusicgenDecoderConfig(**decoder_kwargs))
