"""`mgft generate`: the cached sampler against full teacher-forced forwards, and windowed continuation past 30 s."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
import torch

from data_prep.codec import decode_codes
from finetune.inference.generate import generate, melody_chroma_for
from finetune.inference.load import load_for_inference
from finetune.inference.sampler import Sampler, generate_codes
from finetune.lm.patterns import build_delayed_inputs


@pytest.mark.parametrize("name", ["musicgen-small", "musicgen-stereo-melody"])
def test_greedy_sampling_matches_teacher_forced_argmax(tiny_lm_dir: Path, name: str) -> None:
    module = load_for_inference(str(tiny_lm_dir / name))
    # cfg 1 keeps only the conditional logits; top_k 1 is greedy: every sampled code must be the argmax of a full,
    # uncached forward over the delayed sequence built from the codes themselves.
    sampler = Sampler.from_module(module, cfg=1.0, top_k=1)
    chroma = torch.nn.functional.one_hot(torch.randint(0, 12, (1, 20)), 12).float() if module.is_melody else None
    condition = sampler.conditions(["bright synth arpeggio"], chroma)
    codes = sampler.generate(condition, 12)  # [1, K, 12]
    inputs = build_delayed_inputs(codes, sampler.delays, special=sampler.card)  # [1, K, 13]
    k = codes.shape[1]
    with torch.no_grad():
        logits = module.model.decoder(input_ids=inputs.reshape(k, -1), encoder_hidden_states=condition[:1]).logits
    logits = logits.reshape(1, k, -1, sampler.card)[:, :, -inputs.shape[-1]:]
    for q, d in enumerate(sampler.delays):
        for t in range(12 - d):  # frame t of codebook q was sampled from the logits at delayed step t + d
            assert codes[0, q, t] == logits[0, q, t + d].argmax(), (q, t)


def test_continuation_keeps_the_prompt_and_adds_frames(tiny_lm_dir: Path) -> None:
    module = load_for_inference(str(tiny_lm_dir / "musicgen-small"))
    sampler = Sampler.from_module(module, seed=3)
    condition = sampler.conditions(["a", "b"], None)
    prompt = torch.randint(0, 2048, (2, 4, 7))
    codes = sampler.generate(condition, 5, prompt)
    assert codes.shape == (2, 4, 12) and torch.equal(codes[..., :7], prompt)
    assert codes.min() >= 0 and codes.max() < 2048


def test_generate_40_seconds_stereo_writes_a_two_channel_32khz_wav(tmp_path: Path, tiny_models_dir: Path) -> None:
    from testkit.tiny_models import write_musicgen

    write_musicgen(tmp_path / "stereo", "musicgen-stereo-small")
    paths = generate(model=str(tmp_path / "stereo"), prompt="calm piano", duration=40.0, out=str(tmp_path / "out"))
    info = sf.info(paths[0])
    assert info.samplerate == 32000 and info.channels == 2
    assert abs(info.frames - 40 * 32000) <= 640  # within one frame


def test_windows_past_30_seconds_advance_by_the_extend_stride(tiny_lm_dir: Path) -> None:
    module = load_for_inference(str(tiny_lm_dir / "musicgen-small"))
    sampler = Sampler.from_module(module)
    calls = []
    real = sampler.generate

    def spy(condition, num_frames, prompt=None, progress=None):
        calls.append((num_frames, None if prompt is None else prompt.shape[-1]))
        return real(condition, num_frames, prompt, progress)

    sampler.generate = spy  # type: ignore[method-assign]
    codes = generate_codes(sampler, ["x"], 40.0, progress=False)
    assert codes.shape[-1] == 2000
    # 30 s window, then prompted by the last 12 s (600 frames) it adds the remaining 10 s, as audiocraft.
    assert calls == [(1500, None), (500, 600)]


@pytest.mark.parametrize("name", ["musicgen-small", "musicgen-stereo-melody"])
def test_two_prompts_give_different_codes_and_audio(tiny_lm_dir: Path, name: str) -> None:
    module = load_for_inference(str(tiny_lm_dir / name))
    codes, audio = [], []
    for prompt in ("warm lo-fi piano with soft drums", "bright synth arpeggio over a slow bass line"):
        sampler = Sampler.from_module(module, seed=0)  # same seed: only the prompt differs
        codes.append(generate_codes(sampler, [prompt], 1.0, progress=False))
        audio.append(decode_codes(module.model.audio_encoder, codes[-1]))
    assert (codes[0] != codes[1]).float().mean() > 0.5
    assert (audio[0] - audio[1]).abs().mean() > 0.1 * audio[0].abs().mean()


def test_two_melodies_give_different_codes_and_audio(tiny_lm_dir: Path, tiny_models_dir: Path,
                                                     tmp_path: Path) -> None:
    """`mgft generate --melody`, end to end: two synthesized tunes (through HTDemucs and chroma) -> two outputs."""
    from testkit import synth

    melodies = []
    for spec in synth.plan_catalog(2, 3.0, seed=5):
        melodies.append(synth.write_track(tmp_path / "tunes", spec))
    wavs = []
    for i, melody in enumerate(melodies):
        [path] = generate(model=str(tiny_lm_dir / "musicgen-stereo-melody"), prompt="calm piano", melody=str(melody),
                          demucs=str(tiny_models_dir / "htdemucs"), duration=1.0, out=str(tmp_path / f"out{i}"))
        wavs.append(sf.read(path)[0])
    assert wavs[0].shape == wavs[1].shape
    assert abs(wavs[0] - wavs[1]).mean() > 0.1 * abs(wavs[0]).mean()
    module = load_for_inference(str(tiny_lm_dir / "musicgen-stereo-melody"))
    codes = []
    for melody in melodies:
        chroma = melody_chroma_for(str(melody), str(tiny_models_dir / "htdemucs"), "cpu")
        codes.append(generate_codes(Sampler.from_module(module, seed=0), ["calm piano"], 1.0, chroma,
                                    progress=False))
    assert (codes[0] != codes[1]).float().mean() > 0.5


def test_generate_rejects_bad_requests(tiny_lm_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        generate(model=str(tiny_lm_dir / "musicgen-small"), out=str(tmp_path))
    with pytest.raises(ValueError, match="melody model"):
        generate(model=str(tiny_lm_dir / "musicgen-small"), prompt="x", melody="x.wav", out=str(tmp_path))
