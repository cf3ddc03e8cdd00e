"""`mgft tiny-models`: every model it writes loads through the real loading code and behaves like its hub original.

Run: `HF_HUB_OFFLINE=1 .venv/bin/pytest -q tests/finetune/models/test_tiny.py` (CPU, offline, about 20 s).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from finetune.architectures import HTDEMUCS_SOURCES
from testkit.tiny_configs import (
    MUSICGEN_NAMES,
    TINY_T5_VOCAB_SIZE,
    clap_config,
    encodec_config,
    htdemucs_kwargs,
    musicgen_config,
)
from testkit.tiny_models import ALL_NAMES, build_t5_tokenizer, count_params, tiny_models

CAPTION = "A calm lofi hip hop track with rhodes piano and soft drums, 85 bpm."


def _musicgen_class(name: str) -> type:
    from transformers import MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration

    return MusicgenMelodyForConditionalGeneration if "melody" in name else MusicgenForConditionalGeneration


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_models")
    written = tiny_models(str(out))
    assert written == {name: str(out / name) for name in ALL_NAMES}
    return out


def test_layout_matches_the_hub(models_dir: Path) -> None:
    files = {name: sorted(p.name for p in (models_dir / name).iterdir()) for name in ALL_NAMES}
    assert files["encodec_32khz"] == ["config.json", "model.safetensors", "preprocessor_config.json"]
    for name in MUSICGEN_NAMES:
        expected = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"}
        assert expected | {"tokenizer_config.json"} <= set(files[name]), name
        # Text models carry a MusicgenProcessor; melody ones cannot (its feature extractor needs torchaudio).
        assert ("processor_config.json" in files[name]) == ("melody" not in name)
    [th] = [f for f in files["htdemucs"] if f.endswith(".th")]
    sig = th.split("-")[0]
    assert (models_dir / "htdemucs" / "htdemucs.yaml").read_text().strip() == f"models: ['{sig}']"


def test_encodec_encodes_one_second_to_4x50_codes(models_dir: Path) -> None:
    from transformers import AutoFeatureExtractor, EncodecModel

    model = EncodecModel.from_pretrained(models_dir / "encodec_32khz").eval()
    extractor = AutoFeatureExtractor.from_pretrained(models_dir / "encodec_32khz")
    assert extractor.sampling_rate == model.config.sampling_rate == 32_000
    assert model.config.frame_rate == 50 and model.config.num_quantizers == 4
    inputs = extractor(raw_audio=torch.randn(32_000).numpy() * 0.1, sampling_rate=32_000, return_tensors="pt")
    with torch.no_grad():
        out = model.encode(inputs["input_values"], inputs["padding_mask"], bandwidth=2.2)
    assert out.audio_codes.shape == (1, 1, 4, 50)
    assert 0 <= int(out.audio_codes.min()) and int(out.audio_codes.max()) < 2048
    assert out.audio_scales == [None]  # normalize=False, as audiocraft asserts (docs/fidelity.md)


def test_htdemucs_loads_with_get_model_and_separates(models_dir: Path) -> None:
    from demucs.apply import BagOfModels, apply_model
    from demucs.pretrained import get_model

    bag = get_model("htdemucs", repo=models_dir / "htdemucs")
    assert isinstance(bag, BagOfModels)
    assert bag.sources == HTDEMUCS_SOURCES and bag.samplerate == 44_100 and bag.audio_channels == 2
    assert float(bag.models[0].segment) == pytest.approx(7.8)
    mix = torch.randn(1, 2, 44_100 * 10) * 0.1  # 10 s: longer than the 7.8 s segment, so apply_model splits
    with torch.no_grad():
        stems = apply_model(bag, mix, progress=False)
    assert stems.shape == (1, 4, 2, 44_100 * 10)
    assert torch.isfinite(stems).all()


@pytest.mark.parametrize("name", MUSICGEN_NAMES)
def test_musicgen_labels_forward_gives_uniform_loss(models_dir: Path, name: str) -> None:
    from transformers import AutoTokenizer

    model = _musicgen_class(name).from_pretrained(models_dir / name).eval()
    decoder = model.config.decoder
    stereo = "stereo" in name
    assert (decoder.num_codebooks, decoder.audio_channels) == ((8, 2) if stereo else (4, 1))
    assert decoder.vocab_size == 2048 and decoder.pad_token_id == decoder.decoder_start_token_id == 2048
    assert model.generation_config.guidance_scale == 3.0 and model.generation_config.max_length == 1500
    if "melody" in name:
        assert (model.config.num_chroma, model.config.chroma_length) == (12, 235)

    tokenizer = AutoTokenizer.from_pretrained(models_dir / name)
    text = tokenizer([CAPTION, ""], padding=True, return_tensors="pt")
    torch.manual_seed(0)
    labels = torch.randint(0, 2048, (2, 6, decoder.num_codebooks))  # (B, T, K): time before codebook (docs/fidelity.md)
    with torch.no_grad():
        out = model(**text, labels=labels)
    assert torch.isfinite(out.loss)
    # Random init predicts close to uniform over the 2048 codes.
    assert float(out.loss) == pytest.approx(math.log(2048), abs=0.1)


def test_tokenizer_is_t5_like(models_dir: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    for name in MUSICGEN_NAMES:
        tokenizer = AutoTokenizer.from_pretrained(models_dir / name)
        assert type(tokenizer).__name__.startswith("T5Tokenizer")
        assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
        assert tokenizer("").input_ids == [1]
        assert tokenizer.convert_ids_to_tokens(tokenizer("").input_ids) == ["</s>"]
        ids = tokenizer(CAPTION).input_ids
        assert ids[-1] == 1 and tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == CAPTION
        assert len(tokenizer) <= AutoConfig.from_pretrained(models_dir / name).text_encoder.vocab_size
    # Common music words are single pieces, as in t5-base.
    assert build_t5_tokenizer().tokenize("jazz piano") == ["▁jazz", "▁piano"]


def test_processor_for_text_models(models_dir: Path) -> None:
    from transformers import AutoProcessor, MusicgenProcessor

    processor = AutoProcessor.from_pretrained(models_dir / "musicgen-small")
    assert isinstance(processor, MusicgenProcessor)
    assert processor.feature_extractor.sampling_rate == 32_000
    assert processor(text=[""]).input_ids == [[1]]


@pytest.mark.parametrize("name", ["musicgen-small", "musicgen-stereo-small"])
def test_generate_short(models_dir: Path, name: str) -> None:
    from transformers import AutoProcessor

    model = _musicgen_class(name).from_pretrained(models_dir / name).eval()
    processor = AutoProcessor.from_pretrained(models_dir / name)
    inputs = processor(text=[CAPTION], padding=True, return_tensors="pt")
    torch.manual_seed(0)
    with torch.no_grad():
        audio = model.generate(**inputs, max_new_tokens=5)  # sampling with CFG 3.0, from generation_config.json
    channels = 2 if "stereo" in name else 1
    assert audio.shape[:2] == (1, channels) and audio.shape[-1] > 0
    assert torch.isfinite(audio).all()


def test_musicgen_audio_encoder_is_the_standalone_encodec(models_dir: Path) -> None:
    from safetensors.torch import load_file

    codec = load_file(models_dir / "encodec_32khz" / "model.safetensors")
    for name in MUSICGEN_NAMES:
        model = load_file(models_dir / name / "model.safetensors")
        assert all(torch.equal(model[f"audio_encoder.{key}"], value) for key, value in codec.items()), name


def test_only_and_determinism(models_dir: Path, tmp_path: Path) -> None:
    written = tiny_models(str(tmp_path), only=["musicgen-small", "htdemucs"])
    assert set(written) == {"musicgen-small", "htdemucs"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["htdemucs", "musicgen-small"]
    # Same seed, same bytes (weights, tokenizer, and the demucs package whose name carries its checksum).
    for rel in ["musicgen-small/model.safetensors", "musicgen-small/tokenizer.json", "htdemucs/htdemucs.yaml"]:
        assert (tmp_path / rel).read_bytes() == (models_dir / rel).read_bytes(), rel
    assert sorted(p.name for p in (tmp_path / "htdemucs").glob("*.th")) == sorted(
        p.name for p in (models_dir / "htdemucs").glob("*.th")
    )
    with pytest.raises(ValueError, match="unknown model name"):
        tiny_models(str(tmp_path), only=["musicgen-large"])
    tiny_models(str(tmp_path / "again"), only="clap")  # the BPE trainer breaks ties deterministically too
    for rel in ["clap/model.safetensors", "clap/tokenizer.json"]:
        assert (tmp_path / "again" / rel).read_bytes() == (models_dir / rel).read_bytes(), rel


def test_cli_dispatch(tmp_path: Path) -> None:
    from finetune.__main__ import main

    main(["tiny-models", str(tmp_path), "--only", "encodec_32khz,htdemucs", "--seed", "1"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encodec_32khz", "htdemucs"]


def test_clap_loads_and_tells_inputs_apart(models_dir: Path) -> None:
    """The tiny CLAP loads with `from_pretrained`, tokenizes as roberta-base does, and is not degenerate: two
    different sounds get different audio embeddings and different zero-shot scores."""
    import numpy as np
    from transformers import ClapModel, ClapProcessor

    files = {p.name for p in (models_dir / "clap").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    model = ClapModel.from_pretrained(models_dir / "clap").eval()
    processor = ClapProcessor.from_pretrained(models_dir / "clap")
    tokenizer, extractor = processor.tokenizer, processor.feature_extractor
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (
        0, 1, 2, 3)
    assert len(tokenizer) == model.config.text_config.vocab_size
    ids = tokenizer("This is a jazz song.").input_ids
    assert ids[0] == 0 and ids[-1] == 2 and tokenizer.decode(ids, skip_special_tokens=True) == "This is a jazz song."
    assert "Ġjazz" in tokenizer.convert_ids_to_tokens(ids)  # a common music word is one piece

    rate = extractor.sampling_rate
    t = np.arange(4 * rate) / rate
    sounds = [0.3 * np.sin(2 * np.pi * 440 * t), 0.1 * np.random.default_rng(0).standard_normal(len(t))]
    prompts = ["This is a jazz song.", "This is a rock song.", "This is a calm song."]
    inputs = processor(text=prompts, audio=sounds, sampling_rate=rate, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    assert out.audio_embeds.shape == (2, model.config.projection_dim)
    assert float(out.audio_embeds[0] @ out.audio_embeds[1]) < 0.999  # unit vectors, not the same direction
    probs = out.logits_per_audio.softmax(dim=-1)  # [2 sounds, 3 prompts]
    assert (probs[0] - probs[1]).abs().max() > 1e-3


def test_real_configs_have_the_hub_dims() -> None:
    small = musicgen_config("musicgen-small", "real")
    d = small.decoder
    assert (d.hidden_size, d.num_hidden_layers, d.num_attention_heads, d.ffn_dim) == (1024, 24, 16, 4096)
    assert (d.num_codebooks, d.audio_channels, d.vocab_size, d.dropout) == (4, 1, 2048, 0.1)
    t5 = small.text_encoder  # t5-base
    assert (t5.d_model, t5.d_ff, t5.num_layers, t5.num_heads, t5.d_kv, t5.vocab_size) == (768, 3072, 12, 12, 64, 32128)
    codec = small.audio_encoder
    assert (codec.num_filters, codec.hidden_size, codec.codebook_dim, codec.num_lstm_layers) == (64, 128, 128, 2)
    assert (codec.upsampling_ratios, codec.target_bandwidths, codec.codebook_size) == ([8, 5, 4, 4], [2.2], 2048)
    assert codec.num_quantizers == 4 and codec.frame_rate == 50

    stereo_melody = musicgen_config("musicgen-stereo-melody", "real")
    d = stereo_melody.decoder
    assert (d.hidden_size, d.num_hidden_layers, d.num_attention_heads, d.ffn_dim) == (1536, 48, 24, 6144)
    assert (d.num_codebooks, d.audio_channels) == (8, 2)
    assert (stereo_melody.num_chroma, stereo_melody.chroma_length) == (12, 235)
    assert encodec_config("tiny").num_quantizers == 4  # the tiny codec keeps 2048 codes, hence 4 codebooks
    with pytest.raises(ValueError):
        musicgen_config("musicgen-large", "real")
    clap = clap_config("real")  # laion/clap-htsat-unfused: HTSAT-tiny audio, RoBERTa-base text, 512-d, no fusion
    assert (clap.projection_dim, clap.text_config.hidden_size, clap.text_config.vocab_size) == (512, 768, 50265)
    audio = clap.audio_config
    assert (audio.spec_size, audio.num_mel_bins, list(audio.depths), audio.enable_fusion) == (256, 64, [2, 2, 6, 2],
                                                                                             False)


def test_real_sizes_match_the_hub_files() -> None:
    """Parameter counts of the real architectures, built on the meta device (no memory), against hub file sizes."""
    from transformers import EncodecModel

    with torch.device("meta"):
        codec = EncodecModel(encodec_config("real"))
        small = _musicgen_class("musicgen-small")(musicgen_config("musicgen-small", "real"))
        melody = _musicgen_class("musicgen-melody")(musicgen_config("musicgen-melody", "real"))

    def lm_params(model: torch.nn.Module) -> int:  # what audiocraft's LM state_dict.bin holds: decoder + projections
        return count_params(model) - count_params(model.text_encoder) - count_params(model.audio_encoder)

    codec_state = sum(t.numel() for t in codec.state_dict().values())
    print(f"encodec_32khz real: {count_params(codec):,} params, {codec_state:,} state values")
    print(f"musicgen-small real: {count_params(small):,} params ({lm_params(small):,} LM)")
    print(f"musicgen-melody real: {count_params(melody):,} params ({lm_params(melody):,} LM)")
    # Hub files (docs/formats.md): the 236 MB fp32 EnCodec export, 841 MB / 2.77 GB fp16 LM state_dict.bin.
    assert codec_state * 4 == pytest.approx(236e6, rel=0.02)
    assert lm_params(small) * 2 == pytest.approx(841e6, rel=0.01)
    assert lm_params(melody) * 2 == pytest.approx(2.77e9, rel=0.01)
    assert count_params(small.text_encoder) == count_params(melody.text_encoder)


def test_real_htdemucs_architecture() -> None:
    from demucs.htdemucs import HTDemucs

    kwargs = htdemucs_kwargs("real")
    assert kwargs["sources"] == HTDEMUCS_SOURCES and kwargs["samplerate"] == 44_100
    model = HTDemucs(**kwargs)
    print(f"htdemucs real: {count_params(model):,} params")
    assert (model.channels, model.depth, len(model.crosstransformer.layers)) == (48, 4, 5)
    assert TINY_T5_VOCAB_SIZE < 32128
