"""The tiny sizes: the hub architectures (`finetune.architectures`) narrowed until a CPU runs them in seconds.

One table for every tiny model, read by the writers (`testkit.tiny_models`) and by the scripts that train the tiny
EnCodec and HTDemucs (`testkit.tiny_codec`, `testkit.tiny_htdemucs`). Importing it costs no torch.
"""

from __future__ import annotations

from typing import Any, Literal

from finetune import architectures

Size = Literal["tiny", "real"]

MUSICGEN_NAMES: tuple[str, ...] = (
    "musicgen-small",
    "musicgen-stereo-small",
    "musicgen-melody",
    "musicgen-stereo-melody",
)
BENCH_ONLY_NAMES: tuple[str, ...] = ("musicgen-medium",)
"""Written only when asked for by name (`only`), for the benchmarks' real-size rows; tiny, it is the tiny small."""

TINY_DECODER = (32, 2, 2)
"""hidden, layers, heads of every tiny MusicGen decoder (about 0.5M parameters of layers and 1M of embeddings/heads)."""

TINY_ENCODEC_WIDTHS: dict[str, Any] = {
    "num_filters": 4,
    "hidden_size": 16,
    "codebook_dim": 16,
    "num_lstm_layers": 1,
    "num_residual_layers": 1,
}
"""The tiny EnCodec keeps the 32 kHz format (2048 codes and hop 640, from which the 4 codebooks follow) and narrows
the layers: 0.17M parameters."""

TINY_T5_VOCAB_SIZE = 1024
"""Embedding rows of the tiny T5; the offline tokenizer (pieces + 100 sentinels) must fit under it."""

TINY_T5: dict[str, Any] = {
    "vocab_size": TINY_T5_VOCAB_SIZE,
    # Narrower than the tiny decoder (32), as t5-base (768) is narrower than MusicGen (1024+): transformers only
    # creates `enc_to_dec_proj` (audiocraft's trained `output_proj`) when the widths differ.
    "d_model": 24,
    "d_kv": 16,
    "d_ff": 128,
    "num_layers": 2,
    "num_heads": 2,
    # Tiny models exist for tests: no dropout keeps train-mode forwards deterministic.
    "dropout_rate": 0.0,
}

TINY_HTDEMUCS: dict[str, Any] = {
    "channels": 4,
    "dconv_comp": 2,
    "bottom_channels": 0,
    "t_layers": 1,
    "t_heads": 2,
    "t_hidden_scale": 2.0,
    "t_dropout": 0.0,
    "t_sparse_attn_window": 500,  # the class default
}
"""The tiny HTDemucs keeps the released STFT (nfft 4096 is baked into the hybrid branch shapes) and depth, with 4
base channels: 0.1M parameters. dconv_comp is 2 because the DConv hidden width is channels // comp, and 4 // 8 = 0
would be a zero-width conv that cannot run."""


def encodec_config(size: Size = "tiny"):
    """EnCodec 32 kHz (mono, hop 640, 50 Hz, 4 codebooks of 2048 at 2.2 kbps), tiny or real widths."""
    return architectures.encodec_config(**(TINY_ENCODEC_WIDTHS if size == "tiny" else {}))


def t5_config(size: Size = "tiny"):
    """The T5 text encoder: tiny (d_model 24, 2 layers, 1024-row vocab) or t5-base."""
    return architectures.t5_config(**(TINY_T5 if size == "tiny" else {}))


def htdemucs_kwargs(size: Size = "tiny") -> dict[str, Any]:
    """`demucs.htdemucs.HTDemucs(**kwargs)`, sources and sample rate included: tiny or the released `955717e8`."""
    return architectures.htdemucs_kwargs(**(TINY_HTDEMUCS if size == "tiny" else {}))


def musicgen_config(name: str = "musicgen-small", size: Size = "tiny"):
    """The composite config (T5 text encoder, EnCodec 32 kHz audio encoder, decoder) of a MusicGen checkpoint.

    Args:
        name: one of `MUSICGEN_NAMES`.
        size: "tiny" (`TINY_DECODER`, tiny T5 and EnCodec, dropout 0 so train-mode tests are deterministic) or
            "real" (the hub architecture and field values).

    Raises:
        ValueError: for an unknown name.
    """
    if name not in MUSICGEN_NAMES + BENCH_ONLY_NAMES:
        raise ValueError(f"unknown MusicGen name {name!r}; expected one of {MUSICGEN_NAMES + BENCH_ONLY_NAMES}")
    if size == "real":
        return architectures.musicgen_config(name)
    return architectures.musicgen_config(name, decoder=TINY_DECODER, text=TINY_T5, audio=TINY_ENCODEC_WIDTHS,
                                         dropout=0.0)


TINY_CLAP_VOCAB_SIZE = 1000
"""Byte-level BPE tokens of the tiny CLAP's RoBERTa-style tokenizer (256 bytes, 4 specials, merges), `<mask>` after."""

TINY_CLAP_TEXT: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 130,  # RoBERTa's positions start after the pad id: 128 tokens + 2
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}

TINY_CLAP_AUDIO: dict[str, Any] = {
    # HTSAT folds the [time, mel] spectrogram into a square image: spec_size = 4 x num_mel_bins, and the time axis
    # (max_length_s x sampling_rate / hop_length + 1 = 251 frames below) must fit in 4 x spec_size = 256.
    "num_mel_bins": 16,
    "spec_size": 64,
    # Patches of 4 give a 16 x 16 grid; two Swin stages (16 -> 8) with windows of 8.
    "window_size": 8,
    "depths": [1, 1],
    "num_attention_heads": [2, 2],
    "patch_embeds_hidden_size": 16,
    "hidden_size": 32,  # the last stage's width: patch_embeds_hidden_size x 2 ** (stages - 1)
    "hidden_dropout_prob": 0.0,
}

TINY_CLAP_PROJECTION_DIM = 16
"""Width of the shared audio-text embedding (512 in laion/clap-htsat-unfused)."""

CLAP_FEATURES: dict[str, dict[str, Any]] = {
    # laion/clap-htsat-unfused's ClapFeatureExtractor: 10 s at 48 kHz, 64 mel bins, random crop of longer audio.
    "real": {"feature_size": 64, "sampling_rate": 48_000, "hop_length": 480, "max_length_s": 10,
             "fft_window_size": 1024, "frequency_min": 50, "frequency_max": 14_000},
    # 4 s at 16 kHz (so prep resamples, as it does to 48 kHz for the real model), 16 mel bins.
    "tiny": {"feature_size": 16, "sampling_rate": 16_000, "hop_length": 256, "max_length_s": 4,
             "fft_window_size": 512, "frequency_min": 50, "frequency_max": 8_000},
}
"""`ClapFeatureExtractor` settings by size; both pad short audio by repeating it ("repeatpad", "rand_trunc")."""


def clap_config(size: Size = "tiny", vocab_size: int = TINY_CLAP_VOCAB_SIZE + 1):
    """The CLAP config: tiny (0.08M parameters) or laion/clap-htsat-unfused's (HTSAT + RoBERTa-base, 512-d).

    Args:
        size: "tiny" or "real".
        vocab_size: Embedding rows of the tiny text encoder (the tokenizer's length); the real one keeps RoBERTa's.
    """
    from transformers import ClapAudioConfig, ClapConfig, ClapTextConfig

    if size == "real":
        return ClapConfig(text_config=ClapTextConfig().to_dict(), audio_config=ClapAudioConfig().to_dict())
    return ClapConfig(text_config=ClapTextConfig(vocab_size=vocab_size, **TINY_CLAP_TEXT).to_dict(),
                      audio_config=ClapAudioConfig(**TINY_CLAP_AUDIO).to_dict(),
                      projection_dim=TINY_CLAP_PROJECTION_DIM)
