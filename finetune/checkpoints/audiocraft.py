"""transformers MusicGen <-> audiocraft checkpoints: state-dict key maps, `xp.cfg`, and the exported file layout.

audiocraft cannot be installed next to a current torch, so its formats are read and written here directly
(docs/formats.md):

* `state_dict.bin`: `{'best_state': <LMModel state_dict>, 'xp.cfg': <YAML str>, 'version': str, 'exported': True}`,
  written by audiocraft's `utils/export.py::export_lm` and read by `models/loaders.py::load_lm_model`, which rebuilds
  the LM from `xp.cfg` with `builders.get_lm_model` and loads `best_state` strictly.
* `compression_state_dict.bin`: the pointer `{'pretrained': 'facebook/encodec_32khz', 'exported': True,
  'version': str}` (the small file of the stereo hub repos), which makes audiocraft use the Hugging Face EnCodec.

A directory holding both files loads with `MusicGen.get_pretrained('/that/dir')`.

The key map is the inverse of transformers' `convert_musicgen_transformers.py` (+ the melody script). Those scripts
rename by chained substring replacement (`emb` -> `model.decoder.embed_tokens`, `transformer` -> `model.decoder`,
`norm1` -> `self_attn_layer_norm`, ...); here every key is mapped explicitly per layer and per codebook, so no rename
can hit a substring of another key. audiocraft fuses q, k, v into one `in_proj_weight` `[3D, D]` (rows q; k; v);
transformers keeps `q_proj`/`k_proj`/`v_proj` `[D, D]`.

Usage:

    sd = hf_to_audiocraft_lm(model)                       # {audiocraft key: tensor}
    write_audiocraft_export(model, "out/", xp_cfg=audiocraft_xp_cfg(model))
    state, xp = read_audiocraft_export("out/")
    config = hf_config_from_xp_cfg(xp, model.config.text_encoder, model.config.audio_encoder)
    load_audiocraft_into_hf(state, fresh_model)
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from data_prep.schema import CARDINALITY
from finetune.checkpoints.safe_load import resolve_interpolations, safe_torch_load

if TYPE_CHECKING:
    from transformers import MusicgenConfig, MusicgenMelodyConfig, PretrainedConfig, PreTrainedModel

__all__ = [
    "AUDIOCRAFT_CONFIG_SOURCES",
    "CHROMA_WINDOW_KEY",
    "audiocraft_delays",
    "audiocraft_to_hf_lm",
    "audiocraft_xp_cfg",
    "chroma_window",
    "hf_config_from_xp_cfg",
    "hf_to_audiocraft_lm",
    "load_audiocraft_into_hf",
    "read_audiocraft_export",
    "write_audiocraft_export",
]

#: The audiocraft files (facebookresearch/audiocraft, 1.4.0a2 era) whose keys and defaults `audiocraft_xp_cfg` writes
#: and `hf_config_from_xp_cfg` reads.
AUDIOCRAFT_CONFIG_SOURCES: tuple[str, ...] = (
    "config/model/lm/default.yaml",  # transformer_lm key set and defaults
    "config/model/lm/musicgen_lm.yaml",  # delay pattern, n_q 4, card 2048, no biases, pre-norm, memory_efficient
    "config/conditioner/text2music.yaml",  # text models: fuser cross [description], cfg dropout 0.3, T5 t5-base
    "config/conditioner/chroma2music.yaml",  # melody: fuser prepend [self_wav, description], chroma_stem arguments
    "config/solver/musicgen/default.yaml",  # solver, interleave_stereo_codebooks, compression_model_n_q, dataset
    "config/solver/musicgen/musicgen_melody_stereo_32khz.yaml",  # stereo: n_q 8, delays [0,0,1,1,2,2,3,3], channels 2
    "config/config.yaml",  # device, dtype
    "audiocraft/models/builders.py",  # get_lm_model / get_conditioner_provider / get_wrapped_compression_model
    "audiocraft/models/loaders.py",  # load_lm_model: OmegaConf.create(xp.cfg), strict load of best_state
    "audiocraft/models/lm.py",  # LMModel arguments; emb / transformer / out_norm / linears
    "audiocraft/modules/transformer.py",  # StreamingTransformer(Layer) arguments; in_proj_weight when memory_efficient
    "audiocraft/modules/conditioners.py",  # T5Conditioner / ChromaStemConditioner arguments, output_proj
    "audiocraft/modules/chroma.py",  # ChromaExtractor: torchaudio Spectrogram -> persistent `spec.window`
    "audiocraft/utils/export.py",  # export_lm / export_pretrained_compression_model file contents
)

AUDIOCRAFT_VERSION = "1.4.0a2"
ENCODEC_32KHZ = "facebook/encodec_32khz"
LM_FILENAME = "state_dict.bin"
COMPRESSION_FILENAME = "compression_state_dict.bin"

_DESCRIPTION_PROJ = "condition_provider.conditioners.description.output_proj"
_CHROMA_PROJ = "condition_provider.conditioners.self_wav.output_proj"
#: The torchaudio Spectrogram window inside audiocraft's ChromaExtractor: a persistent buffer, so it is in
#: `best_state` and a strict load needs it.
CHROMA_WINDOW_KEY = "condition_provider.conditioners.self_wav.chroma.spec.window"
_CHROMA_WINLEN = 2**14  # radix2_exp 14 -> n_fft = win_length = 16384, hop 4096

# transformers' module paths inside the composite MusicgenForConditionalGeneration / Melody model.
_HF_DECODER = "decoder.model.decoder."
_HF_HEADS = "decoder.lm_heads."
_HF_TEXT_PROJ = "enc_to_dec_proj"
_HF_CHROMA_PROJ = "audio_enc_to_dec_proj"

# T5 width -> the audiocraft T5Conditioner name with that width (its output_proj is Linear(width, dim)).
_T5_BY_WIDTH = {512: "t5-small", 768: "t5-base", 1024: "t5-large"}


# ---------------------------------------------------------------------------------------------------------------------
# Key map
# ---------------------------------------------------------------------------------------------------------------------


def _lm_key_map(
    *, num_layers: int, num_codebooks: int, cross_attention: bool, chroma: bool
) -> dict[str, tuple[str, ...]]:
    """audiocraft LM key -> the transformers key(s) it is made of (three for a fused q;k;v `in_proj_weight`).

    The order is audiocraft's `state_dict()` order: conditioners (self_wav before description, as in
    chroma2music.yaml), emb, per layer self_attn, linear1, linear2, norm1, norm2, cross_attention, norm_cross, then
    out_norm and linears.
    """
    m: dict[str, tuple[str, ...]] = {}
    if chroma:
        for p in ("weight", "bias"):
            m[f"{_CHROMA_PROJ}.{p}"] = (f"{_HF_CHROMA_PROJ}.{p}",)
    for p in ("weight", "bias"):
        m[f"{_DESCRIPTION_PROJ}.{p}"] = (f"{_HF_TEXT_PROJ}.{p}",)
    for k in range(num_codebooks):
        m[f"emb.{k}.weight"] = (f"{_HF_DECODER}embed_tokens.{k}.weight",)
    for i in range(num_layers):
        ac, hf = f"transformer.layers.{i}.", f"{_HF_DECODER}layers.{i}."
        m[f"{ac}self_attn.in_proj_weight"] = tuple(f"{hf}self_attn.{x}_proj.weight" for x in "qkv")
        m[f"{ac}self_attn.out_proj.weight"] = (f"{hf}self_attn.out_proj.weight",)
        m[f"{ac}linear1.weight"] = (f"{hf}fc1.weight",)
        m[f"{ac}linear2.weight"] = (f"{hf}fc2.weight",)
        for p in ("weight", "bias"):
            m[f"{ac}norm1.{p}"] = (f"{hf}self_attn_layer_norm.{p}",)
        for p in ("weight", "bias"):
            m[f"{ac}norm2.{p}"] = (f"{hf}final_layer_norm.{p}",)
        if cross_attention:
            m[f"{ac}cross_attention.in_proj_weight"] = tuple(f"{hf}encoder_attn.{x}_proj.weight" for x in "qkv")
            m[f"{ac}cross_attention.out_proj.weight"] = (f"{hf}encoder_attn.out_proj.weight",)
            for p in ("weight", "bias"):
                m[f"{ac}norm_cross.{p}"] = (f"{hf}encoder_attn_layer_norm.{p}",)
    for p in ("weight", "bias"):
        m[f"out_norm.{p}"] = (f"{_HF_DECODER}layer_norm.{p}",)
    for k in range(num_codebooks):
        m[f"linears.{k}.weight"] = (f"{_HF_HEADS}{k}.weight",)
    return m


def _is_melody_config(config: Any) -> bool:
    return getattr(config, "model_type", "") == "musicgen_melody"


def _key_map_for(config: Any) -> dict[str, tuple[str, ...]]:
    decoder = config.decoder
    melody = _is_melody_config(config)
    return _lm_key_map(
        num_layers=decoder.num_hidden_layers,
        num_codebooks=decoder.num_codebooks,
        cross_attention=not melody,  # the melody decoder prepends conditions and has no encoder_attn
        chroma=melody,
    )


def _check_projections(config: Any) -> None:
    """Raise if the transformers config has no module for audiocraft's always-present condition projections."""
    decoder = config.decoder
    text_width = config.text_encoder.hidden_size
    if text_width == decoder.hidden_size or getattr(decoder, "cross_attention_hidden_size", None) is not None:
        raise ValueError(
            f"this transformers model has no `enc_to_dec_proj` (text encoder width {text_width} == decoder width "
            f"{decoder.hidden_size}, or cross_attention_hidden_size is set), but audiocraft's T5 conditioner always "
            "has an output projection (`condition_provider.conditioners.description.output_proj`). Only configs "
            "whose T5 width differs from the decoder width (all released MusicGen models) can be converted."
        )
    if _is_melody_config(config) and config.num_chroma == decoder.hidden_size:
        raise ValueError(
            f"this melody model has no `audio_enc_to_dec_proj` (num_chroma == decoder width {decoder.hidden_size}); "
            "audiocraft's chroma conditioner always has an output projection."
        )


def chroma_window() -> torch.Tensor:
    """The Spectrogram window audiocraft's ChromaExtractor keeps in its state dict.

    Returns:
        A periodic Hann window of 16384 samples, float32 `[16384]` (torchaudio's default `torch.hann_window`).
    """
    return torch.hann_window(_CHROMA_WINLEN, periodic=True, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------------------------
# transformers -> audiocraft
# ---------------------------------------------------------------------------------------------------------------------


def hf_to_audiocraft_lm(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The audiocraft LM `best_state` of a transformers MusicGen model (docs/formats.md).

    Args:
        model: a `MusicgenForConditionalGeneration` or `MusicgenMelodyForConditionalGeneration` (LoRA adapters must
            be merged first, e.g. with peft's `merge_and_unload()`).

    Returns:
        `{audiocraft key: tensor}` on CPU in the model's dtype, in audiocraft's key order. Tensors that are not fused
        share memory with the model. Melody models also get the float32 chroma window (`CHROMA_WINDOW_KEY`).

    Raises:
        ValueError: if the model has no `enc_to_dec_proj` (T5 width == decoder width), or its decoder/projection
            parameters are not exactly the ones audiocraft's LM has (e.g. unmerged adapters, biases).
    """
    config = model.config
    _check_projections(config)
    key_map = _key_map_for(config)
    hf_state = {
        k: v for k, v in model.state_dict().items() if not k.startswith(("text_encoder.", "audio_encoder."))
    }
    expected = {hf_key for hf_keys in key_map.values() for hf_key in hf_keys}
    unexpected = sorted(set(hf_state) - expected)
    missing = sorted(expected - set(hf_state))
    if unexpected or missing:
        raise ValueError(
            "the model's decoder/projection parameters do not match audiocraft's LM layout: "
            f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}, "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}. Merge adapters (merge_and_unload) and pass "
            "the plain MusicgenForConditionalGeneration / MusicgenMelodyForConditionalGeneration."
        )

    out: dict[str, torch.Tensor] = {}
    for ac_key, hf_keys in key_map.items():
        parts = [hf_state[k].detach().cpu() for k in hf_keys]
        out[ac_key] = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]  # q;k;v -> [3D, D]
        if ac_key == f"{_CHROMA_PROJ}.bias":
            out[CHROMA_WINDOW_KEY] = chroma_window()  # audiocraft's order: output_proj, then chroma.spec.window
    return out


# ---------------------------------------------------------------------------------------------------------------------
# audiocraft -> transformers
# ---------------------------------------------------------------------------------------------------------------------


def _normalize_audiocraft_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Undo audiocraft's non-custom attention layout so both layouts map the same way.

    The non-custom layout is `self_attn.mha.in_proj_weight`, used when neither `custom` nor `memory_efficient` was set.
    """
    return {k.replace(".mha.", "."): v for k, v in state.items()}


def audiocraft_to_hf_lm(state: Mapping[str, torch.Tensor], config: MusicgenConfig | MusicgenMelodyConfig) -> dict:
    """transformers keys and tensors for an audiocraft LM `best_state` (the inverse of `hf_to_audiocraft_lm`).

    Args:
        state: audiocraft LM state dict (`pkg['best_state']` of an exported `state_dict.bin`).
        config: the composite transformers config the weights go into (`MusicgenConfig` or `MusicgenMelodyConfig`);
            its decoder sets the layer and codebook counts that are expected.

    Returns:
        `{transformers key: tensor}` for `decoder.*`, `enc_to_dec_proj.*` and, for melody, `audio_enc_to_dec_proj.*`.
        The chroma window is ignored; the text and audio encoders are not part of an audiocraft LM.

    Raises:
        ValueError: if keys are missing or unexpected (the message lists them), or a fused projection is not `[3D, D]`.
    """
    _check_projections(config)
    key_map = _key_map_for(config)
    state = _normalize_audiocraft_keys(state)
    present = set(state) - {CHROMA_WINDOW_KEY}
    missing = [k for k in key_map if k not in present]
    unexpected = sorted(present - set(key_map))
    if missing or unexpected:
        kind = "melody" if _is_melody_config(config) else "text"
        raise ValueError(
            f"audiocraft state does not match a {kind} MusicGen with {config.decoder.num_hidden_layers} layers and "
            f"{config.decoder.num_codebooks} codebooks: missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
        )

    hidden = config.decoder.hidden_size
    out: dict[str, torch.Tensor] = {}
    for ac_key, hf_keys in key_map.items():
        tensor = state[ac_key]
        if len(hf_keys) == 1:
            out[hf_keys[0]] = tensor
            continue
        if tensor.shape != (3 * hidden, hidden):
            raise ValueError(f"{ac_key} has shape {tuple(tensor.shape)}, expected {(3 * hidden, hidden)}")
        # q = W[:D], k = W[D:2D], v = W[-D:] (transformers' conversion script); each [D, D].
        q, k, v = tensor[:hidden], tensor[hidden : 2 * hidden], tensor[-hidden:]
        out.update(dict(zip(hf_keys, (q, k, v))))
    return out


def load_audiocraft_into_hf(state: Mapping[str, torch.Tensor], model: PreTrainedModel) -> PreTrainedModel:
    """Load an audiocraft LM `best_state` into a transformers MusicGen model, strictly on the converted part.

    Every decoder and projection tensor of `model` is overwritten (values are cast to the model's dtype); the text
    encoder, the audio encoder and the non-persistent position table are left untouched.

    Args:
        state: audiocraft LM state dict.
        model: a `MusicgenForConditionalGeneration` / `MusicgenMelodyForConditionalGeneration` built from a config that
            matches the checkpoint (see `hf_config_from_xp_cfg`).

    Returns:
        `model`, updated in place.

    Raises:
        ValueError: on missing/unexpected keys or shape mismatches.
    """
    converted = audiocraft_to_hf_lm(state, model.config)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(("text_encoder.", "audio_encoder."))}
    not_loaded = sorted(set(own) - set(converted))
    extra = sorted(set(converted) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in converted.items()
        if k in own and v.shape != own[k].shape
    ]
    if not_loaded or extra or mismatched:
        raise ValueError(
            f"cannot load the audiocraft LM into this model: model keys without a value {not_loaded[:8]}, "
            f"keys the model lacks {extra[:8]}, shape mismatches {mismatched[:8]}"
        )
    missing, unexpected = model.load_state_dict(converted, strict=False)
    stray = [k for k in missing if not k.startswith(("text_encoder.", "audio_encoder."))]
    if stray or unexpected:  # cannot happen after the checks above; guards against transformers layout changes
        raise ValueError(f"load_state_dict left decoder keys unloaded {stray[:8]} / unexpected {unexpected[:8]}")
    return model


# ---------------------------------------------------------------------------------------------------------------------
# xp.cfg
# ---------------------------------------------------------------------------------------------------------------------


def _deep_merge(base: dict, extra: Mapping) -> dict:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def audiocraft_delays(num_codebooks: int, stereo: bool) -> list[int]:
    """audiocraft's `codebooks_pattern.delay.delays` for a MusicGen decoder.

    Args:
        num_codebooks: K (4 mono, 8 interleaved stereo).
        stereo: True for interleaved L0,R0,L1,R1,... codebooks, which share the delay of their channel codebook.

    Returns:
        `[0, 1, 2, 3]` (mono) or `[0, 0, 1, 1, 2, 2, 3, 3]` (stereo).
    """
    return [k // 2 for k in range(num_codebooks)] if stereo else list(range(num_codebooks))


def audiocraft_xp_cfg(
    model: PreTrainedModel | MusicgenConfig | MusicgenMelodyConfig,
    *,
    segment_duration: float = 30.0,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The YAML `xp.cfg` that audiocraft's `load_lm_model`, `builders.get_lm_model` and `MusicGen` need.

    See docs/formats.md for the keys.

    Values follow `AUDIOCRAFT_CONFIG_SOURCES`: `musicgen_lm.yaml` over `lm/default.yaml` for `transformer_lm` (every
    key there is an `LMModel`/`StreamingTransformer` argument), `text2music.yaml` or `chroma2music.yaml` for the
    conditioners, fuser and dropouts, and the solver defaults. Dims come from the model's decoder config. The
    `dropout` is audiocraft's 0.0 (the hub's transformers configs carry 0.1 for no reason, docs/fidelity.md).

    Args:
        model: a transformers MusicGen model or its composite config.
        segment_duration: training segment length in seconds: audiocraft's default generation length, and for
            melody models the chroma length (`1 + sr * duration // 4096`, 235 frames for 30 s).
        extra: nested overrides merged on top (e.g. `{'classifier_free_guidance': {'inference_coef': 5.0}}`).

    Returns:
        The YAML text (safe to `yaml.safe_load`).
    """
    config = getattr(model, "config", model)
    decoder = config.decoder
    melody = _is_melody_config(config)
    stereo = decoder.audio_channels == 2
    dim = decoder.hidden_size
    hidden_scale: float | int = decoder.ffn_dim // dim if decoder.ffn_dim % dim == 0 else decoder.ffn_dim / dim
    if int(hidden_scale * dim) != decoder.ffn_dim:
        raise ValueError(f"ffn_dim {decoder.ffn_dim} is not expressible as int(hidden_scale * {dim})")
    if decoder.activation_function not in ("gelu", "relu"):
        raise ValueError(f"activation {decoder.activation_function!r} has no audiocraft equivalent")
    if getattr(decoder, "scale_embedding", False):
        raise ValueError("scale_embedding=True has no audiocraft equivalent")
    sample_rate = 32000
    if melody:
        chroma_len = 1 + int(sample_rate * segment_duration) // (_CHROMA_WINLEN // 4)
        if chroma_len != config.chroma_length:
            warnings.warn(
                f"segment_duration {segment_duration} s gives audiocraft a chroma length of {chroma_len} frames but "
                f"the transformers config uses chroma_length {config.chroma_length}; melody conditioning will differ",
                stacklevel=2,
            )

    transformer_lm: dict[str, Any] = {
        # config/model/lm/default.yaml, with musicgen_lm.yaml's overrides and the model's dims.
        "dim": dim,
        "num_heads": decoder.num_attention_heads,
        "num_layers": decoder.num_hidden_layers,
        "hidden_scale": hidden_scale,
        "n_q": decoder.num_codebooks,
        "card": decoder.vocab_size,
        "dropout": 0.0,
        "emb_lr": None,
        "activation": decoder.activation_function,
        "norm_first": True,
        "bias_ff": False,
        "bias_attn": False,
        "bias_proj": False,
        "past_context": None,
        "causal": True,
        "custom": False,
        # As the released models: fused `in_proj_weight` keys (with custom=False, keys would be `self_attn.mha.*`,
        # which audiocraft also accepts). On CPU audiocraft then runs torch's scaled_dot_product_attention.
        "memory_efficient": True,
        "attention_as_float32": False,
        "layer_scale": None,
        "positional_embedding": "sin",
        "xpos": False,
        "checkpointing": "none",
        "weight_init": "gaussian",
        "depthwise_init": "current",
        "zero_bias_init": True,
        "norm": "layer_norm",
        "cross_attention": False,  # get_lm_model turns it on when the fuser has 'cross' conditions
        "qk_layer_norm": False,
        "qk_layer_norm_cross": False,
        "attention_dropout": None,
        "kv_repeat": 1,
        "two_step_cfg": False,
    }
    t5_width = config.text_encoder.hidden_size
    t5 = {
        # audiocraft only knows the widths of its T5 list; tiny test models (other widths) keep t5-base's name.
        "name": _T5_BY_WIDTH.get(t5_width, "t5-base"),
        "finetune": False,
        "word_dropout": 0.2 if melody else 0.3,
        "normalize_text": False,
    }
    conditioners: dict[str, Any] = {}
    if melody:  # chroma2music.yaml: self_wav first, so its keys come first in the state dict
        conditioners["self_wav"] = {
            "model": "chroma_stem",
            "chroma_stem": {
                "sample_rate": sample_rate,
                "n_chroma": config.num_chroma,
                "radix2_exp": 14,
                "argmax": True,
                "match_len_on_eval": False,  # MusicGen.get_pretrained switches it on for inference
                "eval_wavs": None,
                "n_eval_wavs": 100,
                "cache_path": None,  # load_lm_model deletes it
            },
        }
    conditioners["description"] = {"model": "t5", "t5": t5}

    xp: dict[str, Any] = {
        "solver": "musicgen",
        "lm_model": "transformer_lm",
        "sample_rate": sample_rate,
        "channels": 2 if stereo else 1,
        "device": "cpu",  # load_lm_model overwrites device and dtype
        "dtype": "float32",
        "compression_model_checkpoint": f"//pretrained/{ENCODEC_32KHZ}",
        "compression_model_n_q": None,
        "interleave_stereo_codebooks": {"use": stereo, "per_timestep": False},
        "dataset": {"segment_duration": float(segment_duration)},
        "codebooks_pattern": {
            "modeling": "delay",
            "delay": {
                "delays": audiocraft_delays(decoder.num_codebooks, stereo),
                "flatten_first": 0,
                "empty_initial": 0,
            },
        },
        "transformer_lm": transformer_lm,
        "classifier_free_guidance": {"training_dropout": 0.2 if melody else 0.3, "inference_coef": 3.0},
        "attribute_dropout": (
            {"args": {"active_on_eval": False}, "text": {}, "wav": {"self_wav": 0.5}} if melody else {}
        ),
        "fuser": {
            "cross_attention_pos_emb": False,
            "cross_attention_pos_emb_scale": 1,
            "sum": [],
            "prepend": ["self_wav", "description"] if melody else [],
            "cross": [] if melody else ["description"],
            "input_interpolate": [],
        },
        "conditioners": conditioners,
    }
    if extra:
        _deep_merge(xp, extra)
    return yaml.safe_dump(xp, sort_keys=False, default_flow_style=False)


def _get(tree: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def hf_config_from_xp_cfg(
    xp: Mapping[str, Any],
    text_encoder_config: PretrainedConfig,
    audio_encoder_config: PretrainedConfig,
) -> MusicgenConfig | MusicgenMelodyConfig:
    """The transformers composite config that holds an audiocraft LM described by `xp.cfg`.

    Args:
        xp: the parsed `xp.cfg` (e.g. from `read_audiocraft_export`).
        text_encoder_config: the T5 encoder config (audiocraft loads T5 by name; transformers keeps it in the model).
        audio_encoder_config: the EnCodec 32 kHz config.

    Returns:
        `MusicgenMelodyConfig` when the fuser prepends `self_wav` (chroma), else `MusicgenConfig`. Decoder dims from
        `transformer_lm`, `num_codebooks = n_q`, `audio_channels = 2` when `interleave_stereo_codebooks.use`.

    Raises:
        ValueError: if the config uses features a transformers MusicGen decoder cannot represent.
    """
    from transformers import (
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenMelodyConfig,
        MusicgenMelodyDecoderConfig,
    )

    lm = dict(_get(xp, "transformer_lm", {}) or {})
    stereo = bool(_get(xp, "interleave_stereo_codebooks.use", False))
    prepend = list(_get(xp, "fuser.prepend", []) or [])
    cross = list(_get(xp, "fuser.cross", []) or [])
    melody = "self_wav" in prepend
    n_q = int(lm.get("n_q", 4))

    problems = []
    for key, want in (("norm_first", True), ("bias_ff", False), ("bias_attn", False), ("bias_proj", False)):
        if lm.get(key, want) != want:
            problems.append(f"transformer_lm.{key}={lm[key]} (transformers needs {want})")
    for key, want in (("positional_embedding", "sin"), ("norm", "layer_norm"), ("layer_scale", None),
                      ("past_context", None), ("qk_layer_norm", False), ("kv_repeat", 1)):
        if lm.get(key, want) != want:
            problems.append(f"transformer_lm.{key}={lm[key]!r} (transformers needs {want!r})")
    if _get(xp, "lm_model", "transformer_lm") != "transformer_lm":
        problems.append(f"lm_model={xp['lm_model']!r}")
    if _get(xp, "codebooks_pattern.modeling", "delay") != "delay":
        problems.append(f"codebooks_pattern.modeling={_get(xp, 'codebooks_pattern.modeling')!r} (only delay)")
    delays = _get(xp, "codebooks_pattern.delay.delays")
    if delays is not None and list(delays) != audiocraft_delays(n_q, stereo):
        problems.append(f"delays {list(delays)} (transformers uses {audiocraft_delays(n_q, stereo)})")
    if not melody and "description" not in cross:
        problems.append(f"fuser cross={cross} prepend={prepend}: expected cross [description] or prepend self_wav")
    if problems:
        raise ValueError("audiocraft config cannot be represented by transformers' MusicGen: " + "; ".join(problems))

    dim = int(lm["dim"])
    card = int(lm.get("card", CARDINALITY))
    decoder_kwargs: dict[str, Any] = {
        "vocab_size": card,
        "hidden_size": dim,
        "num_hidden_layers": int(lm["num_layers"]),
        "num_attention_heads": int(lm["num_heads"]),
        "ffn_dim": int(float(lm.get("hidden_scale", 4)) * dim),
        "num_codebooks": n_q,
        "audio_channels": 2 if stereo else 1,
        "activation_function": lm.get("activation", "gelu"),
        "dropout": float(lm.get("dropout", 0.0)),
        "pad_token_id": card,
        "bos_token_id": card,
        # Not a declared field of transformers' strict decoder config, but MusicgenForConditionalGeneration.forward
        # (labels=...) reads it (docs/fidelity.md).
        "decoder_start_token_id": card,
    }
    if melody:
        chroma = _get(xp, "conditioners.self_wav.chroma_stem", {}) or {}
        sample_rate = int(chroma.get("sample_rate", _get(xp, "sample_rate", 32000)))
        hop = 2 ** int(chroma.get("radix2_exp", 14)) // 4
        duration = float(_get(xp, "dataset.segment_duration", 30.0))
        return MusicgenMelodyConfig(
            text_encoder=text_encoder_config,
            audio_encoder=audio_encoder_config,
            decoder=MusicgenMelodyDecoderConfig(**decoder_kwargs),
            num_chroma=int(chroma.get("n_chroma", 12)),
            chroma_length=1 + int(sample_rate * duration) // hop,  # ChromaStemConditioner._get_chroma_len
        )
    return MusicgenConfig(
        text_encoder=text_encoder_config,
        audio_encoder=audio_encoder_config,
        decoder=MusicgenDecoderConfig(**decoder_kwargs),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------------


def _save(obj: Any, path: Path) -> None:
    """torch.save through the atomic write: a killed export never leaves a torn file under the real name."""
    from data_prep.atomic import atomic_write

    atomic_write(path, lambda f: torch.save(obj, f))


def write_audiocraft_export(
    model: PreTrainedModel,
    out_dir: str | os.PathLike,
    *,
    xp_cfg: str,
    version: str = AUDIOCRAFT_VERSION,
    dtype: torch.dtype = torch.float16,
    compression_model: str = ENCODEC_32KHZ,
) -> Path:
    """Write an audiocraft export directory: `state_dict.bin` and the `compression_state_dict.bin` pointer.

    Args:
        model: the transformers MusicGen model to export.
        out_dir: directory to write (created if missing); `MusicGen.get_pretrained(out_dir)` loads it in audiocraft.
        xp_cfg: the YAML config string, usually `audiocraft_xp_cfg(model)`.
        version: audiocraft version string stored in both files.
        dtype: floating dtype of the weights (the hub files are float16; pass torch.float32 for a lossless export).
            The chroma window stays float32 whatever this is: audiocraft loads it into a float32 buffer, and a float16
            window would change its chroma.
        compression_model: the pretrained codec name stored in the pointer file.

    Returns:
        `out_dir` as a Path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        k: v if k == CHROMA_WINDOW_KEY or not v.is_floating_point() else v.to(dtype).contiguous()
        for k, v in hf_to_audiocraft_lm(model).items()
    }
    _save({"best_state": state, "xp.cfg": xp_cfg, "version": version, "exported": True}, out / LM_FILENAME)
    _save(
        {"pretrained": compression_model, "exported": True, "version": version}, out / COMPRESSION_FILENAME
    )
    return out


def _unwrap_best_state(pkg: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The LM state dict from an export (`best_state`) or a training/init checkpoint (`[fsdp_]best_state.model`)."""
    for key in ("fsdp_best_state", "best_state"):
        state = pkg.get(key)
        if not state:
            continue
        if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
            state = state["model"]  # training checkpoint / mono->stereo init file: {'best_state': {'model': sd}}
        return dict(state)
    raise ValueError(f"no 'best_state' in the checkpoint (keys: {sorted(map(str, pkg))})")


def read_audiocraft_export(
    path: str | os.PathLike, *, trust_checkpoint: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an audiocraft LM export (or training checkpoint) without running code from it.

    Args:
        path: a `state_dict.bin` / `checkpoint.th` file, or a directory holding `state_dict.bin`.
        trust_checkpoint: passed to `safe_torch_load` (full unpickling for files the safe loader refuses).

    Returns:
        `(state, xp)`: the LM state dict and the parsed `xp.cfg` as a plain dict with `${...}` interpolations
        resolved (`{}` when the file has no config, like a mono->stereo init file).

    Raises:
        ValueError: if the file has no LM state.
    """
    path = Path(path)
    if path.is_dir():
        path = path / LM_FILENAME
    pkg = safe_torch_load(path, trust_checkpoint=trust_checkpoint)
    if not isinstance(pkg, Mapping):
        raise ValueError(f"{path} holds a {type(pkg).__name__}, not an audiocraft checkpoint dict")
    state = _unwrap_best_state(pkg)
    cfg = pkg.get("xp.cfg")
    if isinstance(cfg, str | bytes):
        cfg = yaml.safe_load(cfg)  # export_lm stores OmegaConf.to_yaml(cfg), interpolations unresolved
    xp = resolve_interpolations(dict(cfg)) if isinstance(cfg, Mapping) else {}
    return state, xp
