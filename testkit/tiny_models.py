"""`mgft tiny-models OUT [--size tiny|real] [--only NAME,NAME] [--seed 0]`: random-init models in the hub's formats.

Writes EnCodec 32 kHz, htdemucs, the four MusicGen checkpoints (small, stereo-small, melody, stereo-melody), MBD
and CLAP with random weights but in exactly the on-disk layout the real checkpoints use, so tests and the demo drive
the real loading code (`from_pretrained`, `AutoTokenizer`, demucs' `get_model`) without any network access:

    OUT/encodec_32khz/            config.json, model.safetensors, preprocessor_config.json
    OUT/htdemucs/                 htdemucs.yaml (`models: ['<sig>']`), <sig>-<sha256[:8]>.th
    OUT/musicgen-small/           config.json, generation_config.json, model.safetensors, tokenizer.json,
                                  tokenizer_config.json, processor_config.json (MusicgenProcessor; transformers v5
                                  nests the EnCodec feature extractor there instead of preprocessor_config.json)
    OUT/musicgen-stereo-small/    same as musicgen-small, decoder with 8 codebooks and audio_channels=2
    OUT/musicgen-melody/          config.json, generation_config.json, model.safetensors, tokenizer files
    OUT/musicgen-stereo-melody/   same as musicgen-melody, decoder with 8 codebooks and audio_channels=2
    OUT/multiband-diffusion/      mbd_musicgen_32khz.th (4 band U-Nets, their configs and normalizer statistics)
    OUT/clap/                     config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
                                  processor_config.json (ClapProcessor: RoBERTa-style BPE tokenizer and
                                  ClapFeatureExtractor), for `mgft prep --auto-tags --clap`

`--size tiny` (default) gives models small enough for CPU tests (0.1M to 1.3M parameters each);
`--size real` gives the real architectures (GBs on disk; use `--only`).

Tiny must not mean degenerate. Random weights are fine for the language models and MBD (their outputs still depend
on their inputs), but not for the two models that turn audio into what the LM learns: a random-init EnCodec maps
every latent to code 0 (transformers registers its codebooks as zero buffers), and a random HTDemucs keeps no pitch
in its melody stems. So the tiny EnCodec and the tiny HTDemucs are trained, once, on synthesized music by
`testkit/tiny_codec.py` and `testkit/tiny_htdemucs.py`; their weights ship beside this file and are
written here in the hub layouts. At `--size real` the codec's codebooks are set by k-means over its encoder's
latents (as EnCodec starts training), so benchmarks run an RVQ whose codes spread.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import io
import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from data_prep.schema import SPECIAL_TOKEN_ID
from testkit.tiny_configs import (
    BENCH_ONLY_NAMES,
    CLAP_FEATURES,
    MUSICGEN_NAMES,
    TINY_CLAP_VOCAB_SIZE,
    TINY_T5_VOCAB_SIZE,
    Size,
    clap_config,
    encodec_config,
    htdemucs_kwargs,
    musicgen_config,
    t5_config,
)

ENCODEC = "encodec_32khz"
HTDEMUCS = "htdemucs"
MBD = "multiband-diffusion"
CLAP = "clap"
ALL_NAMES: tuple[str, ...] = (ENCODEC, HTDEMUCS, *MUSICGEN_NAMES, MBD, CLAP)

def count_params(model) -> int:
    """Count the parameters of a module.

    Args:
        model: any torch module.

    Returns:
        The total number of parameter elements (buffers excluded).
    """
    return sum(p.numel() for p in model.parameters())


def write_htdemucs(out_dir: Path, size: Size = "tiny", seed: int = 0) -> Path:
    """Write a random-init HTDemucs as a local demucs repo that `get_model('htdemucs', repo=out_dir)` loads.

    The layout is demucs' own: a bag file `htdemucs.yaml` naming one signature, and the model package
    `<sig>-<checksum>.th` (the dict `demucs.states.load_model` reads: klass, args, kwargs, state), where the checksum
    is the first 8 hex digits of the file's sha256, as `demucs.states.save_with_checksum` writes and
    `demucs.repo.LocalRepo` verifies.

    Args:
        out_dir: directory to write (created if missing); pass it as `repo=` to `demucs.pretrained.get_model`.
        size: "tiny" (about 0.1M parameters, CPU-fast, the committed weights trained on synthesized stems) or
            "real" (the released htdemucs architecture, 42M, random weights).
        seed: torch seed of a real-size model's random weights (and of the signature).

    Returns:
        `out_dir`.
    """
    import torch
    from demucs.htdemucs import HTDemucs

    from testkit import tiny_htdemucs

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs = htdemucs_kwargs(size)
    torch.manual_seed(seed)
    model = HTDemucs(**kwargs)
    if size == "tiny":  # trained on synthesized stems: a random one keeps no pitch (testkit/tiny_htdemucs.py)
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(tiny_htdemucs.ASSET)))
    package = {
        "klass": HTDemucs,
        "args": (),
        "kwargs": kwargs,
        # fp32 (demucs' releases use half=True): a tiny model gains nothing from fp16 and tests can compare exactly.
        "state": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()},
        # `serialize_model` stores the resolved training config here (an OmegaConf object); a plain dict keeps the
        # package loadable with `weights_only=True`.
        "training_args": {"tiny_models": {"size": size, "seed": seed}},
    }
    # The signature names the architecture and seed; demucs signatures are 8 hex digits and must not contain '-'.
    sig = hashlib.sha256(f"htdemucs/{size}/{seed}".encode()).hexdigest()[:8]
    buf = io.BytesIO()
    torch.save(package, buf)
    checksum = hashlib.sha256(buf.getvalue()).hexdigest()[:8]
    # LocalRepo refuses two files with one signature: drop what an earlier run with the same signature left.
    for stale in out_dir.glob(f"{sig}*.th"):
        stale.unlink()
    (out_dir / f"{sig}-{checksum}.th").write_bytes(buf.getvalue())
    (out_dir / "htdemucs.yaml").write_text(f"models: ['{sig}']\n")
    print(f"{HTDEMUCS:<24} {count_params(model):>13,} params  {out_dir}")
    return out_dir


# ---------------------------------------------------------------------------------------------------------------------
# EnCodec 32 kHz
# ---------------------------------------------------------------------------------------------------------------------

def encodec_feature_extractor():
    """The `EncodecFeatureExtractor` saved beside `facebook/encodec_32khz` (and inside each MusicGen processor).

    Returns:
        A transformers `EncodecFeatureExtractor` for 32 kHz mono audio, without chunking.
    """
    from transformers import EncodecFeatureExtractor

    # The conversion script builds it from the model config: feature_size = channels, no chunking/overlap.
    return EncodecFeatureExtractor(feature_size=1, sampling_rate=32_000, chunk_length_s=None, overlap=None)


def build_encodec(size: Size, seed: int):
    """An EnCodec whose codes carry information (a random-init one maps every latent to code 0).

    tiny: the committed trained codec (`tiny_codec.ASSET`, see `testkit/tiny_codec.py`); it is the same for
    every seed, as all hub MusicGens share one EnCodec. real: random weights from `seed`, with each RVQ level's
    codebook set by k-means over the encoder's latents of synthesized music, so the RVQ's codes spread as a trained
    one's do (its decoder stays random).
    """
    from transformers import EncodecModel

    model = EncodecModel(encodec_config(size))
    model.load_state_dict(_encodec_state(size, seed))
    return model.eval()


@functools.lru_cache(maxsize=2)
def _encodec_state(size: Size, seed: int) -> dict:
    """The state dict `build_encodec` loads, computed once per process (every MusicGen writer embeds it)."""
    import torch
    from safetensors.torch import load_file
    from transformers import EncodecModel

    from testkit import tiny_codec

    if size == "tiny":
        return load_file(str(tiny_codec.ASSET))
    torch.manual_seed(seed)
    model = EncodecModel(encodec_config(size)).eval()
    # 8 tracks of about 10 s: ~8,000 latent frames, ~4 per code (encoding them takes ~20 s on 2 CPU cores).
    audio = tiny_codec.synth_audio(tracks=8, seconds=10.0, seed=seed)
    tiny_codec.kmeans_codebooks(model, tiny_codec.encoder_latents(model, audio, max_frames=8192), iters=10,
                                seed=seed)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------------------
# T5 text encoder and an offline T5-style tokenizer
# ---------------------------------------------------------------------------------------------------------------------

# t5-base's layout: <pad>=0, </s>=1, <unk>=2, the sentencepiece pieces, then <extra_id_99> ... <extra_id_0> last.
T5_SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "</s>", "<unk>")
T5_EXTRA_IDS = 100
_TOKENIZER_PIECES = TINY_T5_VOCAB_SIZE - T5_EXTRA_IDS - 24  # trainer target, a little slack under the embedding rows

def _build_t5_encoder(size: Size, seed: int):
    import torch
    from transformers import T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(t5_config(size))


_GENRES = (
    "rock", "pop", "jazz", "blues", "funk", "soul", "disco", "house", "deep house", "techno", "trance", "dubstep",
    "drum and bass", "hip hop", "rap", "trap", "lofi", "lo-fi hip hop", "ambient", "classical", "orchestral",
    "cinematic", "folk", "country", "reggae", "latin", "salsa", "bossa nova", "metal", "punk", "indie", "electronic",
    "edm", "synthwave", "chillout", "gospel", "r&b", "k-pop", "afrobeat", "world", "soundtrack", "ballad", "acoustic",
    "experimental", "minimal", "industrial", "grunge", "swing", "bebop", "tango", "flamenco", "celtic", "garage",
)
_MOODS = (
    "happy", "sad", "calm", "energetic", "dark", "bright", "upbeat", "mellow", "relaxing", "epic", "dreamy",
    "melancholic", "romantic", "aggressive", "uplifting", "peaceful", "tense", "playful", "nostalgic", "groovy",
    "chill", "emotional", "powerful", "mysterious", "hopeful", "joyful", "angry", "soft", "warm", "intense",
    "cheerful", "moody", "somber", "triumphant", "quirky", "lively", "gentle", "haunting", "suspenseful", "inspiring",
)
_INSTRUMENTS = (
    "piano", "guitar", "acoustic guitar", "electric guitar", "bass", "bass guitar", "drums", "drum machine",
    "percussion", "violin", "viola", "cello", "strings", "synth", "synthesizer", "pads", "organ", "flute", "saxophone",
    "trumpet", "trombone", "clarinet", "harp", "choir", "vocals", "female vocals", "male vocals", "bells", "marimba",
    "ukulele", "banjo", "mandolin", "harmonica", "808", "hi-hats", "kick", "snare", "claps", "sub bass", "arpeggiator",
    "orchestra", "brass", "woodwinds", "xylophone", "sitar", "tabla", "accordion", "rhodes", "vibraphone", "congas",
)
_NOTES = ("C", "C#", "Db", "D", "D#", "Eb", "E", "F", "F#", "Gb", "G", "G#", "Ab", "A", "A#", "Bb", "B")
_COMMON = (
    "a an the and with of in on for to by at from this that is are it its some very slow fast medium tempo beat "
    "rhythm melody harmony song track music loop intro outro verse chorus bridge solo riff groove vibe sound style "
    "feel instrumental vocal lead background heavy light soft loud deep high low long short simple complex catchy "
    "driving steady building rising falling repetitive live studio recording featuring plays over under behind "
    "layered sparse dense warm crisp clean distorted reverb echo delay filtered modern vintage retro classic "
    "summer night morning rain city ocean space dance party film game trailer movie video background"
).split()


def _tokenizer_corpus(n_captions: int = 4000) -> list[str]:
    """A deterministic corpus of music captions in the styles MusicGen sees (free text and `key: ... bpm: ...`)."""
    rng = random.Random(0)
    keys = [f"{note} {quality}" for note in _NOTES for quality in ("major", "minor")]
    lines: list[str] = [" ".join(_COMMON), " ".join(_GENRES), " ".join(_MOODS), " ".join(_INSTRUMENTS), " ".join(keys)]
    lines += [" ".join(str(n) for n in range(0, 201))]
    lines += [f"{decade}s" for decade in range(1920, 2030, 10)] + [f"{d}0s" for d in range(2, 10)]
    for _ in range(n_captions):
        genre, mood, mood2 = rng.choice(_GENRES), rng.choice(_MOODS), rng.choice(_MOODS)
        inst, inst2 = rng.choice(_INSTRUMENTS), rng.choice(_INSTRUMENTS)
        key, bpm = rng.choice(keys), rng.randrange(60, 181)
        words = " ".join(rng.sample(_COMMON, 4))
        template = rng.randrange(4)
        if template == 0:
            lines.append(f"A {mood} {genre} track with {inst} and {inst2}.")
        elif template == 1:
            lines.append(f"{mood.capitalize()} {genre} song in {key} at {bpm} bpm, {words}.")
        elif template == 2:
            # audiocraft's metadata-merged captions (docs/formats.md): "field: value" pairs joined with ". ".
            lines.append(f"key: {key}. bpm: {bpm}.0. genre: {genre}. moods: {mood}, {mood2}. instrument: {inst}")
        else:
            lines.append(f"{genre.title()} {words} featuring {inst}, {mood} and {mood2}. {bpm} BPM")
    return lines


@functools.lru_cache(maxsize=1)
def _t5_pieces() -> tuple[tuple[str, float], ...]:
    """Train (once per process) a Unigram model like T5's sentencepiece: returns (piece, log-prob) pairs."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.Unigram())
    # T5's sentencepiece splits on whitespace and marks word starts with "▁"; train with the same pre-tokenizer that
    # transformers' T5Tokenizer attaches, so the pieces are what it will look up.
    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), metaspace])
    # Every printable ASCII character and Latin-1 letter gets a piece, so unseen words split into characters instead
    # of <unk>; the alphabet line puts each in the corpus at least once.
    alphabet = [chr(c) for c in [*range(33, 127), *range(0xC0, 0x100)] if chr(c) not in "×÷"]
    corpus = [*_tokenizer_corpus(), " ".join(alphabet)]
    trainer = trainers.UnigramTrainer(
        vocab_size=_TOKENIZER_PIECES,
        special_tokens=list(T5_SPECIAL_TOKENS),
        unk_token="<unk>",
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    vocab = json.loads(tokenizer.to_str())["model"]["vocab"]
    specials = [(str(piece), 0.0) for piece, _ in vocab[: len(T5_SPECIAL_TOKENS)]]
    trained = [(str(piece), float(score)) for piece, score in vocab[len(specials) :]]
    # Make the result identical between runs. The trainer's EM sums in parallel (scores wobble in the last bits) and it
    # re-adds pruned characters with made-up scores in hash-set order. So: round the multi-character scores, give
    # every single character a score from its corpus frequency below all of them, and sort by (score, piece).
    words = [p for p in trained if len(p[0]) > 1 or p[0] == "▁"]
    floor = min(score for _, score in words) - 1.0
    counts = collections.Counter("".join(corpus).replace(" ", ""))
    top = max(counts.values())
    chars = {p for p, _ in trained if len(p) == 1 and p != "▁"} | set(alphabet)
    pieces = [(p, round(score, 8)) for p, score in words]
    pieces += [(c, round(floor + math.log(counts[c] / top), 8)) for c in chars if counts[c]]
    pieces.sort(key=lambda item: (-item[1], item[0]))
    return tuple(specials + pieces)


def build_t5_tokenizer():
    """A T5-style tokenizer built offline (no hub): a small Unigram vocabulary trained on in-code music captions.

    Same layout and behaviour as t5-base's tokenizer: `<pad>`=0, `</s>`=1, `<unk>`=2, 100 `<extra_id_*>` sentinels
    last, "▁" word-start pieces, and `</s>` appended to every sequence (so `""` encodes to `[1]`). Its length is at
    most `TINY_T5_VOCAB_SIZE`, so it also fits the t5-base (32128) embedding of the "real" configs.

    Returns:
        A transformers `T5Tokenizer` (tokenizers-backed); `save_pretrained` makes `AutoTokenizer` load it.
    """
    from transformers import T5Tokenizer

    pieces = list(_t5_pieces())
    sentinels = [(f"<extra_id_{i}>", 0.0) for i in range(T5_EXTRA_IDS - 1, -1, -1)]
    tokenizer = T5Tokenizer(vocab=pieces + sentinels, extra_ids=T5_EXTRA_IDS, model_max_length=512)
    if len(tokenizer) > TINY_T5_VOCAB_SIZE:  # guards the T5 embedding size against a change in the corpus/trainer
        raise RuntimeError(f"offline tokenizer has {len(tokenizer)} tokens > {TINY_T5_VOCAB_SIZE}")
    return tokenizer


# ---------------------------------------------------------------------------------------------------------------------
# CLAP (zero-shot tags for `mgft prep --clap`) and an offline RoBERTa-style tokenizer
# ---------------------------------------------------------------------------------------------------------------------

ROBERTA_SPECIAL_TOKENS: tuple[str, ...] = ("<s>", "<pad>", "</s>", "<unk>")
"""roberta-base's first ids (`<mask>` is its last), which ClapTextConfig's bos/pad/eos ids (0, 1, 2) assume."""


def build_clap_tokenizer():
    """A RoBERTa-style tokenizer built offline (no hub): byte-level BPE trained on the in-code music captions.

    roberta-base's layout and behaviour: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, `<mask>` last, "Ġ" word-start
    pieces, `<s> ... </s>` around every sequence; being byte-level it has no unknown words. The BPE trainer is
    deterministic (ties broken by pair), so the same vocabulary comes out on every run.

    Returns:
        A transformers `RobertaTokenizer` (tokenizers-backed) of `TINY_CLAP_VOCAB_SIZE + 1` tokens.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import RobertaTokenizer

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # as RobertaTokenizer's
    trainer = trainers.BpeTrainer(vocab_size=TINY_CLAP_VOCAB_SIZE, special_tokens=list(ROBERTA_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(_tokenizer_corpus(), trainer)
    model = json.loads(tokenizer.to_str())["model"]
    vocab = {**model["vocab"], "<mask>": len(model["vocab"])}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=128)


def clap_feature_extractor(size: Size = "tiny"):
    """The `ClapFeatureExtractor` of a CLAP checkpoint: laion/clap-htsat-unfused's at "real", a small one at "tiny".

    Returns:
        A transformers `ClapFeatureExtractor` (`CLAP_FEATURES[size]`, repeat-padding, random crop of long audio).
    """
    from transformers import ClapFeatureExtractor

    return ClapFeatureExtractor(**CLAP_FEATURES[size], truncation="rand_trunc", padding="repeatpad")


def write_clap(out_dir: Path, size: Size = "tiny", seed: int = 0) -> Path:
    """Write a random-init CLAP as `ClapModel.save_pretrained` plus its `ClapProcessor`.

    Random weights are not degenerate here: the audio and text embeddings depend on their inputs, so different
    tracks get different zero-shot scores (only their meaning is random).

    Args:
        out_dir: directory to write (created if missing).
        size: "tiny" (about 0.08M parameters, a 4 s window at 16 kHz) or "real" (laion/clap-htsat-unfused's
            architecture and feature extractor, random weights, the tiny tokenizer).
        seed: torch seed of the weights.

    Returns:
        `out_dir`, loadable with `ClapModel.from_pretrained` and `ClapProcessor.from_pretrained`.
    """
    import torch
    from transformers import ClapModel, ClapProcessor

    out_dir = Path(out_dir)
    with _quiet_transformers():
        tokenizer = build_clap_tokenizer()
        torch.manual_seed(seed)
        model = ClapModel(clap_config(size, vocab_size=len(tokenizer))).eval()
        model.save_pretrained(out_dir)
        ClapProcessor(feature_extractor=clap_feature_extractor(size), tokenizer=tokenizer).save_pretrained(out_dir)
    _report(CLAP, model, out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------------------------------------
# MusicGen (text, stereo, melody)
# ---------------------------------------------------------------------------------------------------------------------

def musicgen_generation_config():
    """The `generation_config.json` of the hub MusicGen checkpoints (written by transformers' conversion scripts).

    Returns:
        A transformers `GenerationConfig`: sampling, CFG scale 3.0, 1500 steps, 2048 as start and pad token.
    """
    from transformers import GenerationConfig

    # top_k is not set, so transformers' default 50 applies; audiocraft samples with top_k=250 (docs/fidelity.md).
    return GenerationConfig(
        bos_token_id=SPECIAL_TOKEN_ID,
        decoder_start_token_id=SPECIAL_TOKEN_ID,
        pad_token_id=SPECIAL_TOKEN_ID,
        max_length=1500,
        do_sample=True,
        guidance_scale=3.0,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars and its "2048 outside the vocabulary" token-id warnings while writing.

    The warnings are expected: 2048 (pad/BOS) is one past the 2048 codes, exactly as in the hub configs.
    """
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _report(name: str, model, path: Path) -> None:
    print(f"{name:<24} {count_params(model):>13,} params  {path}")


def write_encodec(out_dir: Path, size: Size = "tiny", seed: int = 0) -> Path:
    """Write a random-init EnCodec 32 kHz as `EncodecModel.save_pretrained` plus its feature extractor.

    Args:
        out_dir: directory to write (created if missing).
        size: "tiny" or "real" (the `facebook/encodec_32khz` architecture).
        seed: torch seed of a real-size codec's random weights and k-means (the tiny codec is the committed trained
            one for every seed); the same seed gives the audio encoder inside `write_musicgen`'s checkpoints.

    Returns:
        `out_dir`, loadable with `EncodecModel.from_pretrained` and `AutoFeatureExtractor.from_pretrained`.
    """
    out_dir = Path(out_dir)
    with _quiet_transformers():
        model = build_encodec(size, seed)
        model.save_pretrained(out_dir)
        encodec_feature_extractor().save_pretrained(out_dir)
    _report(ENCODEC, model, out_dir)
    return out_dir


def write_musicgen(out_dir: Path, name: str = "musicgen-small", size: Size = "tiny", seed: int = 0) -> Path:
    """Write a random-init MusicGen checkpoint in the hub layout.

    Files: `config.json`, `model.safetensors`, `generation_config.json`, the tokenizer (`tokenizer.json`,
    `tokenizer_config.json`) and, for the text models, the `MusicgenProcessor` (`processor_config.json`, which holds
    the EnCodec feature extractor). Melody checkpoints get no processor: `MusicgenMelodyFeatureExtractor` needs
    torchaudio.

    Args:
        out_dir: directory to write (created if missing).
        name: one of `MUSICGEN_NAMES`.
        size: "tiny" or "real".
        seed: torch seed. As on the hub, all checkpoints share one text encoder and one EnCodec: those are rebuilt
            from the same seed (the EnCodec equals `write_encodec(..., seed=seed)`), so tokens made by the standalone
            codec decode with the checkpoint's audio encoder.

    Returns:
        `out_dir`, loadable with `MusicgenForConditionalGeneration.from_pretrained` (or the Melody class) and
        `AutoTokenizer.from_pretrained`.
    """
    import torch
    from transformers import (
        MusicgenForConditionalGeneration,
        MusicgenMelodyForConditionalGeneration,
        MusicgenProcessor,
    )

    out_dir = Path(out_dir)
    klass = MusicgenMelodyForConditionalGeneration if ("melody" in name) else MusicgenForConditionalGeneration
    with _quiet_transformers():
        config = musicgen_config(name, size)
        torch.manual_seed(seed)
        model = klass(config)
        model.text_encoder.load_state_dict(_build_t5_encoder(size, seed).state_dict())
        model.audio_encoder.load_state_dict(build_encodec(size, seed).state_dict())
        model.generation_config = musicgen_generation_config()
        model.save_pretrained(out_dir)
        tokenizer = build_t5_tokenizer()
        if ("melody" in name):
            tokenizer.save_pretrained(out_dir)
        else:
            processor = MusicgenProcessor(feature_extractor=encodec_feature_extractor(), tokenizer=tokenizer)
            processor.save_pretrained(out_dir)
    _report(name, model, out_dir)
    return out_dir


def mbd_unet_config(size: Size = "tiny"):
    """The band U-Net: audiocraft's basic.yaml with the EnCodec latent as condition and a transformer bottleneck.

    Which bottleneck the released `mbd_musicgen_32khz.th` uses could not be read offline (docs/mbd.md); a conditional
    MBD needs one (without it the condition is dropped), and the transformer is audiocraft's first choice.

    Returns:
        A `finetune.mbd.unet.UnetConfig`.
    """
    from finetune.mbd.unet import UnetConfig

    if size == "real":
        return UnetConfig(codec_dim=128, transformer=True)  # 48 -> 192 -> 768 -> 3072 channels, ~468M per band
    latent = encodec_config("tiny").codebook_dim
    # 8 -> 16 -> 32 channels, stride 8: the bottleneck runs at 62.5 Hz, so its attention stays cheap on CPU.
    return UnetConfig(hidden=8, depth=3, growth=2, stride=8, kernel=16, codec_dim=latent, transformer=True)


def write_mbd(out_dir: Path, size: Size = "tiny", seed: int = 0) -> Path:
    """Write a random-init 4-band MBD as `OUT/mbd_musicgen_32khz.th` (the layout of `facebook/multiband-diffusion`).

    The normalizers of bands 2 and 3 get the statistics of white noise (a near-identity normalization) so that the
    file decodes; a trained file holds the statistics of its training audio.

    Returns:
        `out_dir`.
    """
    import torch

    from finetune.mbd.decoder import BAND_PROCESSORS, MBD_FILENAME, BandConfig, BandModel, save_mbd
    from finetune.mbd.processor import MultiBandProcessor

    torch.manual_seed(seed)
    bands = []
    for index, processor in enumerate(BAND_PROCESSORS):
        band = BandModel(BandConfig(band=index, unet=mbd_unet_config(size), processor=processor))
        if isinstance(band.processor, MultiBandProcessor):
            with torch.no_grad():
                band.processor.project_sample(torch.randn(4, 1, 32_000))
                scale = band.processor.num_samples / band.processor.counts.item()
                for buffer in (band.processor.counts, band.processor.sum_x, band.processor.sum_x2,
                               band.processor.sum_target_x2):
                    buffer.mul_(scale)  # same means, counted as frozen
        bands.append(band)
    path = save_mbd(bands, Path(out_dir) / MBD_FILENAME)
    print(f"{MBD:<24} {sum(count_params(b.unet) for b in bands):>13,} params  {path}")
    return Path(out_dir)


def tiny_models(
    out: str,
    *,
    size: Literal["tiny", "real"] = "tiny",
    only: str | list[str] | None = None,
    seed: int = 0,
) -> dict[str, str]:
    """Write random-init EnCodec, htdemucs, MusicGen, MBD and CLAP checkpoints in their hub formats under OUT.

    Args:
        out: output directory; each model goes to `out/<name>`.
        size: "tiny" (CPU-test sized) or "real" (the real architectures; several GB, combine with `only`).
        only: names to write, comma-separated (default all): encodec_32khz, htdemucs, musicgen-small,
            musicgen-stereo-small, musicgen-melody, musicgen-stereo-melody, multiband-diffusion, clap.
        seed: torch seed, reset before each model so any subset gives the same weights.

    Returns:
        Mapping from model name to the directory written.

    Raises:
        ValueError: for an unknown name in `only`.
    """
    if isinstance(only, str):
        only = [name.strip() for name in only.split(",") if name.strip()]
    names = list(ALL_NAMES) if not only else list(dict.fromkeys(only))
    unknown = [n for n in names if n not in ALL_NAMES + BENCH_ONLY_NAMES]
    if unknown:
        raise ValueError(f"unknown model name(s) {unknown}; expected some of {list(ALL_NAMES + BENCH_ONLY_NAMES)}")
    root = Path(out)
    written: dict[str, str] = {}
    for name in names:
        path = root / name
        if name == ENCODEC:
            write_encodec(path, size, seed)
        elif name == HTDEMUCS:
            write_htdemucs(path, size, seed)
        elif name == MBD:
            write_mbd(path, size, seed)
        elif name == CLAP:
            write_clap(path, size, seed)
        else:
            write_musicgen(path, name, size, seed)
        written[name] = str(path)
    return written
