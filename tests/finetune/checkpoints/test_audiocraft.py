"""transformers <-> audiocraft LM checkpoints: exact round trips, audiocraft's key names and shapes, a usable xp.cfg."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from finetune.checkpoints.audiocraft import (
    CHROMA_WINDOW_KEY,
    audiocraft_xp_cfg,
    hf_config_from_xp_cfg,
    load_audiocraft_into_hf,
    read_audiocraft_export,
    write_audiocraft_export,
)

VARIANTS = ["musicgen-small", "musicgen-melody", "musicgen-stereo-small", "musicgen-stereo-melody"]


def _tiny(tmp_path: Path, name: str):
    from finetune.lm.load import load_musicgen
    from testkit.tiny_models import write_musicgen

    write_musicgen(tmp_path / name, name, seed=7)
    model, _, is_melody = load_musicgen(str(tmp_path / name))
    return model.eval(), is_melody


def _expected_audiocraft_shapes(model, melody: bool) -> dict[str, tuple[int, ...]]:
    """audiocraft's LMModel state-dict layout (docs/formats.md), written out from the config, independently of the
    conversion code."""
    dec = model.config.decoder
    d, ffn, card, t5 = dec.hidden_size, dec.ffn_dim, dec.vocab_size, model.config.text_encoder.hidden_size
    shapes: dict[str, tuple[int, ...]] = {
        "condition_provider.conditioners.description.output_proj.weight": (d, t5),
        "condition_provider.conditioners.description.output_proj.bias": (d,),
        "out_norm.weight": (d,),
        "out_norm.bias": (d,),
    }
    if melody:
        shapes |= {
            "condition_provider.conditioners.self_wav.output_proj.weight": (d, 12),
            "condition_provider.conditioners.self_wav.output_proj.bias": (d,),
            "condition_provider.conditioners.self_wav.chroma.spec.window": (16384,),
        }
    for k in range(dec.num_codebooks):
        shapes[f"emb.{k}.weight"] = (card + 1, d)  # the special token 2048 has its own row
        shapes[f"linears.{k}.weight"] = (card, d)
    for i in range(dec.num_hidden_layers):
        p = f"transformer.layers.{i}."
        shapes |= {
            p + "self_attn.in_proj_weight": (3 * d, d),
            p + "self_attn.out_proj.weight": (d, d),
            p + "linear1.weight": (ffn, d),
            p + "linear2.weight": (d, ffn),
            p + "norm1.weight": (d,), p + "norm1.bias": (d,),
            p + "norm2.weight": (d,), p + "norm2.bias": (d,),
        }
        if not melody:  # text models cross-attend to T5; melody models prepend the conditions instead
            shapes |= {
                p + "cross_attention.in_proj_weight": (3 * d, d),
                p + "cross_attention.out_proj.weight": (d, d),
                p + "norm_cross.weight": (d,), p + "norm_cross.bias": (d,),
            }
    return shapes


@pytest.mark.parametrize("name", VARIANTS)
def test_transformers_audiocraft_transformers_round_trip_is_exact(tmp_path: Path, name: str) -> None:
    model, _ = _tiny(tmp_path, name)
    write_audiocraft_export(model, tmp_path / "ac", xp_cfg=audiocraft_xp_cfg(model), dtype=torch.float32)
    state, xp = read_audiocraft_export(tmp_path / "ac")

    config = hf_config_from_xp_cfg(xp, model.config.text_encoder, model.config.audio_encoder)
    assert type(config) is type(model.config)
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim", "num_codebooks",
                  "audio_channels", "vocab_size"):
        assert getattr(config.decoder, field) == getattr(model.config.decoder, field), field
    rebuilt = type(model)(config).eval()
    rebuilt.text_encoder.load_state_dict(model.text_encoder.state_dict())
    rebuilt.audio_encoder.load_state_dict(model.audio_encoder.state_dict())
    load_audiocraft_into_hf(state, rebuilt)

    original, back = model.state_dict(), rebuilt.state_dict()
    assert set(original) == set(back)
    for key, tensor in original.items():
        assert torch.equal(tensor, back[key]), key


@pytest.mark.parametrize("name", VARIANTS)
def test_audiocraft_export_has_audiocrafts_keys_shapes_and_config(tmp_path: Path, name: str) -> None:
    model, melody = _tiny(tmp_path, name)
    write_audiocraft_export(model, tmp_path / "ac", xp_cfg=audiocraft_xp_cfg(model))
    package = torch.load(tmp_path / "ac" / "state_dict.bin", weights_only=True)
    assert set(package) == {"best_state", "xp.cfg", "version", "exported"} and package["exported"] is True

    best = package["best_state"]
    expected = _expected_audiocraft_shapes(model, melody)
    assert {k: tuple(v.shape) for k, v in best.items()} == expected
    assert best["emb.0.weight"].dtype == torch.float16  # as the hub's state_dict.bin files
    if melody:
        assert best[CHROMA_WINDOW_KEY].dtype == torch.float32
        torch.testing.assert_close(best[CHROMA_WINDOW_KEY], torch.hann_window(16384, periodic=True))
    # q; k; v are stacked in that order in the fused projection.
    layer = model.decoder.model.decoder.layers[0].self_attn
    fused = torch.cat([layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight]).to(torch.float16)
    assert torch.equal(best["transformer.layers.0.self_attn.in_proj_weight"], fused)

    xp = yaml.safe_load(package["xp.cfg"])  # a YAML string, as audiocraft's export_lm writes
    dec = model.config.decoder
    stereo = dec.audio_channels == 2
    # What builders.get_lm_model / get_conditioner_provider / genmodel read (docs/formats.md).
    assert xp["lm_model"] == "transformer_lm"
    lm = xp["transformer_lm"]
    assert (lm["dim"], lm["num_heads"], lm["num_layers"], lm["n_q"], lm["card"]) == (
        dec.hidden_size, dec.num_attention_heads, dec.num_hidden_layers, dec.num_codebooks, 2048)
    assert lm["hidden_scale"] * lm["dim"] == dec.ffn_dim and lm["dropout"] == 0.0
    assert lm["memory_efficient"] is True and lm["norm_first"] is True and lm["bias_ff"] is False
    assert xp["codebooks_pattern"]["modeling"] == "delay"
    assert xp["codebooks_pattern"]["delay"] == {
        "delays": [0, 0, 1, 1, 2, 2, 3, 3] if stereo else [0, 1, 2, 3], "flatten_first": 0, "empty_initial": 0}
    assert xp["interleave_stereo_codebooks"] == {"use": stereo, "per_timestep": False}
    assert "compression_model_n_q" in xp and xp["dataset"]["segment_duration"] == 30.0
    assert set(xp["classifier_free_guidance"]) == {"training_dropout", "inference_coef"}
    assert "attribute_dropout" in xp
    assert set(xp["fuser"]) == {"cross_attention_pos_emb", "cross_attention_pos_emb_scale", "sum", "prepend", "cross",
                                "input_interpolate"}
    t5 = xp["conditioners"]["description"]["t5"]
    assert set(t5) >= {"name", "finetune", "word_dropout", "normalize_text"} and t5["finetune"] is False
    if melody:
        assert xp["fuser"]["prepend"] == ["self_wav", "description"] and xp["fuser"]["cross"] == []
        chroma = xp["conditioners"]["self_wav"]["chroma_stem"]
        assert set(chroma) >= {"sample_rate", "n_chroma", "radix2_exp", "argmax", "match_len_on_eval", "eval_wavs",
                               "n_eval_wavs"}
        assert (chroma["n_chroma"], chroma["radix2_exp"], chroma["argmax"]) == (12, 14, True)
    else:
        assert xp["fuser"]["cross"] == ["description"] and xp["fuser"]["prepend"] == []
    assert {"device", "dtype"} <= set(xp)

    pointer = torch.load(tmp_path / "ac" / "compression_state_dict.bin", weights_only=True)
    assert pointer["pretrained"] == "facebook/encodec_32khz" and pointer["exported"] is True


def test_audiocraft_training_checkpoint_layouts_import(tmp_path: Path) -> None:
    """A mono->stereo init file (`{'best_state': {'model': sd}}`) and audiocraft's non-fused `mha.` keys both import."""
    model, _ = _tiny(tmp_path, "musicgen-small")
    write_audiocraft_export(model, tmp_path / "ac", xp_cfg=audiocraft_xp_cfg(model), dtype=torch.float32)
    state, xp = read_audiocraft_export(tmp_path / "ac")
    unfused = {k.replace("self_attn.in_proj", "self_attn.mha.in_proj"): v for k, v in state.items()}
    torch.save({"best_state": {"model": unfused}, "xp.cfg": yaml.safe_dump(xp)}, tmp_path / "checkpoint.th")

    state2, xp2 = read_audiocraft_export(tmp_path / "checkpoint.th")
    assert xp2 == xp
    rebuilt = type(model)(hf_config_from_xp_cfg(xp2, model.config.text_encoder, model.config.audio_encoder))
    load_audiocraft_into_hf(state2, rebuilt)
    for key, tensor in model.decoder.state_dict().items():
        assert torch.equal(tensor, rebuilt.decoder.state_dict()[key]), key


def test_mismatched_audiocraft_state_is_refused_naming_the_keys(tmp_path: Path) -> None:
    model, _ = _tiny(tmp_path, "musicgen-small")
    write_audiocraft_export(model, tmp_path / "ac", xp_cfg=audiocraft_xp_cfg(model))
    state, xp = read_audiocraft_export(tmp_path / "ac")
    del state["linears.3.weight"]
    with pytest.raises(ValueError, match=r"linears\.3\.weight"):
        load_audiocraft_into_hf(state, type(model)(model.config))
    xp["codebooks_pattern"]["modeling"] = "parallel"
    with pytest.raises(ValueError, match="codebooks_pattern.modeling"):
        hf_config_from_xp_cfg(xp, model.config.text_encoder, model.config.audio_encoder)
