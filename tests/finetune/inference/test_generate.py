"""`mgft generate`: the cached sampler against full teacher-forced forwards, and windowed continuation past 30 s."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from data_prep.codec import decode_codes
from finetune.inference.generate import generate, melody_audio_for
from finetune.inference.load import load_for_inference
from finetune.inference.sampler import MelodyAudio, Sampler, generate_codes
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
    assert torch.equal(codes, Sampler.from_module(module, cfg=1.0, temperature=0).generate(condition, 12))
    inputs = build_delayed_inputs(codes, sampler.delays, special=sampler.card)  # [1, K, 13]
    k = codes.shape[1]
    with torch.no_grad():
        logits = module.model.decoder(input_ids=inputs.reshape(k, -1), encoder_hidden_states=condition[0]).logits
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
        tune = melody_audio_for([str(melody)], str(tiny_models_dir / "htdemucs"), "cpu", 2)
        codes.append(generate_codes(Sampler.from_module(module, seed=0), ["calm piano"], 1.0, melody=tune,
                                    progress=False))
    assert (codes[0] != codes[1]).float().mean() > 0.5


def test_generate_rejects_bad_requests(tiny_lm_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        generate(model=str(tiny_lm_dir / "musicgen-small"), out=str(tmp_path))
    sf.write(tmp_path / "x.wav", np.zeros(32000, dtype=np.float32), 32000)
    with pytest.raises(ValueError, match="melody model"):
        generate(model=str(tiny_lm_dir / "musicgen-small"), prompt="x", melody=str(tmp_path / "x.wav"),
                 out=str(tmp_path / "out"))
    with pytest.raises(ValueError, match=r"top_p 1.5 \(in \[0, 1\]"):
        generate(model=str(tmp_path / "no-such-model"), prompt="x", top_p=1.5, out=str(tmp_path))  # before loading


class WindowSpy:
    """Records the waveform each window's chroma is taken from; its chroma names the samples it saw."""

    def __init__(self) -> None:
        self.cuts: list[torch.Tensor] = []

    def __call__(self, wav: torch.Tensor) -> torch.Tensor:  # [1, C, n] -> [1, F, 12]
        self.cuts.append(wav)
        frames = 1 + wav.shape[-1] // 4096
        bins = (wav[0, 0, :: 4096][:frames].long() // 4096) % 12  # which part of the melody each frame came from
        return torch.nn.functional.one_hot(bins, 12).float()[None]


def test_melody_windows_past_30_seconds_recut_the_waveform_as_audiocraft(tiny_lm_dir: Path) -> None:
    """audiocraft's `_generate_tokens` past 30 s: window w takes samples `arange(t_w, t_w + 30 s) % N` of the melody,
    t_w its exact start time (18 s per stride); up to 30 s, the chroma of the whole melody, cut or tiled to 235."""
    module = load_for_inference(str(tiny_lm_dir / "musicgen-stereo-melody"))
    n = 20 * 32000  # a 20 s melody whose samples are their own indices (left) and index + 1 (right)
    wav = torch.stack([torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32) + 1])
    sampler = Sampler.from_module(module)
    seen = []
    real = sampler.conditions
    sampler.conditions = lambda captions, chroma: seen.append(chroma) or real(captions, chroma)  # type: ignore

    spy = WindowSpy()
    codes = generate_codes(sampler, ["x"], 40.0, melody=MelodyAudio([wav], spy), progress=False)
    assert codes.shape[-1] == 2000 and len(spy.cuts) == 2
    for cut, start in zip(spy.cuts, (0, 18 * 32000)):
        expected = wav[:, torch.arange(start, start + 30 * 32000) % n]  # wraps around the 20 s melody
        assert torch.equal(cut[0], expected)
    assert all(c.shape == (1, 235, 12) for c in seen)
    assert not torch.equal(seen[0], seen[1])  # the second window hears the melody from 18 s on

    spy = WindowSpy()
    long = torch.arange(40 * 32000, dtype=torch.float32)[None]  # 40 s melody, 10 s of output: one window
    seen.clear()
    generate_codes(sampler, ["x"], 10.0, melody=MelodyAudio([long], spy), progress=False)
    assert [c.shape[-1] for c in spy.cuts] == [40 * 32000]  # the whole melody...
    whole = spy(long[None])
    torch.testing.assert_close(seen[0], whole[:, :235], rtol=0, atol=0)  # ...its chroma cut to 30 s


def test_precomputed_chroma_windows_wrap_the_melody_instead_of_dropping_it(tiny_lm_dir: Path) -> None:
    module = load_for_inference(str(tiny_lm_dir / "musicgen-stereo-melody"))
    sampler = Sampler.from_module(module)
    seen = []
    real = sampler.conditions
    sampler.conditions = lambda captions, chroma: seen.append(chroma) or real(captions, chroma)  # type: ignore
    chroma = torch.nn.functional.one_hot(torch.arange(100) % 12, 12).float()[None]  # 12.8 s of chroma
    generate_codes(sampler, ["x"], 50.0, chroma=chroma, progress=False)
    starts = [0, int(18 * 32000 / 4096), int(36 * 32000 / 4096)]  # 0, 140, 281 chroma frames
    assert len(seen) == 3
    for got, start in zip(seen, starts):
        assert torch.equal(got, chroma[:, torch.arange(start, start + 235) % 100])


def audiocraft_top_p(probs: torch.Tensor, p: float) -> torch.Tensor:
    """The distribution audiocraft's `sample_top_p` (audiocraft/utils/utils.py) draws from, in vocabulary order."""
    out = torch.zeros_like(probs)
    for row in range(probs.shape[0]):
        mass = 0.0
        for index in probs[row].argsort(descending=True).tolist():
            if mass > p:  # every code whose preceding mass already exceeds p is dropped
                break
            out[row, index] = probs[row, index]
            mass += float(probs[row, index])
    return out / out.sum(-1, keepdim=True)


def test_top_p_samples_audiocrafts_nucleus_and_temperature_zero_is_argmax(tiny_lm_dir: Path) -> None:
    module = load_for_inference(str(tiny_lm_dir / "musicgen-small"))
    logits = torch.randn(2, 12, generator=torch.Generator().manual_seed(0)) * 2
    sampler = Sampler.from_module(module, top_p=0.6, seed=0)
    draws = torch.stack([sampler._sample(logits) for _ in range(4000)])  # [4000, 2]
    expected = audiocraft_top_p(logits.softmax(-1), 0.6)
    for row in range(2):
        freq = torch.bincount(draws[:, row], minlength=12).float() / len(draws)
        assert set(freq.nonzero()[:, 0].tolist()) == set(expected[row].nonzero()[:, 0].tolist())
        assert (freq - expected[row]).abs().max() < 0.03
    greedy = Sampler.from_module(module, temperature=0)
    assert torch.equal(greedy._sample(logits), logits.argmax(-1))
    with pytest.raises(ValueError, match="top_p"):
        Sampler.from_module(module, top_p=1.5)


@pytest.mark.parametrize("name", ["musicgen-small", "musicgen-stereo-melody"])
def test_two_step_cfg_runs_a_separate_unconditional_pass_with_a_one_token_null_text(tiny_lm_dir: Path,
                                                                                   name: str) -> None:
    """audiocraft's two_step_cfg: the unconditional pass has its own condition (the null text tokenized alone) and
    its own cache; greedy codes equal argmax(uncond + cfg * (cond - uncond)) of two full teacher-forced forwards."""
    module = load_for_inference(str(tiny_lm_dir / name))
    prompt = "a long prompt about a bright synth arpeggio over a slow bass line"
    sampler = Sampler.from_module(module, temperature=0, two_step_cfg=True)
    cond, uncond = sampler.conditions([prompt], None)
    text_width = 1 + (235 if module.is_melody else 0)
    assert uncond.shape[1] == text_width and cond.shape[1] > text_width and not uncond[:, -1].abs().sum()
    codes = sampler.generate((cond, uncond), 8)  # [1, K, 8]
    inputs = build_delayed_inputs(codes, sampler.delays, special=sampler.card)
    k = codes.shape[1]
    with torch.no_grad():
        full = [module.model.decoder(input_ids=inputs.reshape(k, -1), encoder_hidden_states=c).logits
                .reshape(1, k, -1, sampler.card)[:, :, -inputs.shape[-1]:] for c in (cond, uncond)]
    guided = full[1] + 3.0 * (full[0] - full[1])
    for q, d in enumerate(sampler.delays):
        for t in range(8 - d):
            assert codes[0, q, t] == guided[0, q, t + d].argmax(), (q, t)
    batched = Sampler.from_module(module, temperature=0).conditions([prompt], None)
    assert batched[1].shape == batched[0].shape  # batched CFG pads the null text to the prompt's length


def test_one_melody_for_a_batch_goes_through_demucs_once_per_window(tiny_lm_dir: Path) -> None:
    """`mgft generate --melody` with several prompts, and the sample callback's rounds, reuse one chroma per window."""
    module = load_for_inference(str(tiny_lm_dir / "musicgen-stereo-melody"))
    spy = WindowSpy()
    tune = MelodyAudio([torch.arange(2 * 32000, dtype=torch.float32).repeat(2, 1)], spy)
    for _ in range(2):
        codes = generate_codes(Sampler.from_module(module), ["a", "b", "c"], 0.5, melody=tune.repeat(3),
                               progress=False)
        assert codes.shape[0] == 3
    assert len(spy.cuts) == 1


def test_a_stereo_melody_conditions_with_the_chroma_of_its_channel_mean(tiny_models_dir: Path,
                                                                        tmp_path: Path) -> None:
    """audiocraft averages every melody's channels before demucs (`ConditioningProvider._collate_wavs`), at training
    and at generation; prep does, so `mgft generate --melody` must too, for a melody whose channels differ."""
    from data_prep.chroma import ChromaExtractor
    from data_prep.stems import load_demucs, melody_chroma
    from finetune.inference.sampler import match_chroma_length
    from testkit import synth

    tracks = [sf.read(synth.write_track(tmp_path / "tunes", spec), always_2d=True) for spec in
              synth.plan_catalog(2, 4.0, seed=11)]
    n = min(len(audio) for audio, _ in tracks)
    stereo = np.stack([tracks[0][0][:n, 0], tracks[1][0][:n, 0]], axis=1)  # left: one tune, right: another
    sf.write(tmp_path / "melody.wav", stereo, tracks[0][1])
    tune = melody_audio_for([str(tmp_path / "melody.wav")], str(tiny_models_dir / "htdemucs"), "cpu", 2)
    got = tune.window_chroma(0, False)  # [1, 235, 12]: what conditions the first window

    [wav] = tune.wavs  # [2, N] at 32 kHz, the model's channels
    assert (wav[0] - wav[1]).abs().mean() > 0.1 * wav.abs().mean()  # the channels differ
    separator, extractor = load_demucs(str(tiny_models_dir / "htdemucs"), "cpu"), ChromaExtractor()
    of_mean = match_chroma_length(melody_chroma(separator, extractor, wav.mean(0, keepdim=True)[None], seed=0))
    per_channel = match_chroma_length(melody_chroma(separator, extractor, wav[None], seed=0))
    torch.testing.assert_close(got, of_mean, rtol=0, atol=0)
    assert (got.argmax(-1) != per_channel.argmax(-1)).float().mean() > 0.05  # the test tells the two apart
