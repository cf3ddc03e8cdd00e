"""`mgft prep --auto-tags`: tempo, key and loudness estimated from the audio, for catalogs without descriptions.

- Tempo: librosa's beat tracker (`librosa.beat.beat_track`, dynamic programming over the onset envelope), then the
  beat period refined from the tracked beat times (`refine_tempo`): the tracker's own tempo lies on the grid of its
  onset frame rate (60 x 43.07 / lag at 22,050 / 512), up to 2-4% off between grid points, while its beats follow the
  onsets. Beat trackers often lock onto half or double the tempo; such an estimate is still written: the tempo alone
  cannot tell a 70 BPM ballad from a 140 BPM track counted in half time.
- Key and mode: the Krumhansl-Kessler key profiles (probe-tone ratings of the 12 pitch classes in a major and a
  minor key, Krumhansl 1990) correlated with the track's mean chroma (`librosa.feature.chroma_cqt`); the best of
  the 24 rotations names the key. librosa has the chroma but no key finder: the correlation is the whole method.
- Loudness: integrated loudness in LUFS (ITU-R BS.1770-4, K-weighting and gating) with pyloudnorm.

- Genre, mood and instrument (`--clap PATH`): zero-shot CLAP (transformers' `ClapModel`, e.g.
  laion/clap-htsat-unfused). The track's audio embedding (the mean of up to three evenly spaced windows of the
  model's length, 10 s at 48 kHz for the real model) is compared with the text embedding of a prompt per label
  ("This is a jazz song."); a softmax over each label list, at CLAP's own logit scale, scores its labels.

Estimates fill only the metadata fields a sidecar or catalog row leaves empty and are recorded as estimated
(`metadata_sources`, and the manifest's `estimates`), so a human label always wins and a reader can tell them apart.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

ANALYSIS_RATE = 22050
"""librosa's default rate: the beat tracker and CQT chroma are tuned for it; tempo and key need no more."""
MAX_SECONDS = 120.0
"""Estimate from at most the first two minutes: enough for a stable tempo and key, bounded cost per track."""

NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# Krumhansl-Kessler probe-tone profiles, tonic first (Krumhansl, Cognitive Foundations of Musical Pitch, 1990).
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def estimate_key(chroma: np.ndarray) -> tuple[str, float]:
    """The key whose rotated profile correlates best with the mean chroma, e.g. ("A minor", 0.83).

    Args:
        chroma: `[12, frames]` pitch-class energies, C first.

    Returns:
        (key name as captions write it, Pearson correlation of the winner in [-1, 1]).
    """
    mean = chroma.mean(axis=1)  # [12]
    best = ("", -2.0)
    for mode, profile in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE)):
        for tonic in range(12):
            r = float(np.corrcoef(mean, np.roll(profile, tonic))[0, 1])
            if r > best[1]:
                best = (f"{NOTE_NAMES[tonic]} {mode}", r)
    return best


def refine_tempo(beats: np.ndarray, coarse_bpm: float) -> float:
    """The tempo of tracked beat times, from a least-squares line through them, in BPM.

    Each beat's index counts the coarse periods since the previous beat (a skipped beat adds two), so the index
    does not drift however far the coarse tempo is off; beats further than a quarter period from the first line are
    dropped (a stray onset at a fill) and the line is fitted again. Over 20 s of beats at 23 ms per onset frame the
    slope is within a few hundredths of a percent.

    Args:
        beats: Beat times in seconds `[N]`, increasing (`beat_track(..., units="time")`).
        coarse_bpm: The tracker's tempo, which sets the beat indices.

    Returns:
        The refined tempo, or `coarse_bpm` with fewer than 4 beats or when the fit strays more than 10% from it.
    """
    if len(beats) < 4 or not coarse_bpm > 0:
        return coarse_bpm
    period = 60.0 / coarse_bpm
    index = np.concatenate([[0.0], np.cumsum(np.maximum(1.0, np.round(np.diff(beats) / period)))])  # [N]
    slope, intercept = np.polyfit(index, beats, 1)
    close = np.abs(beats - (slope * index + intercept)) < 0.25 * slope
    if close.sum() >= 4:
        slope, _ = np.polyfit(index[close], beats[close], 1)
    bpm = 60.0 / slope
    return float(bpm) if abs(bpm / coarse_bpm - 1) <= 0.1 else coarse_bpm


def estimate_tags(audio: np.ndarray, sample_rate: int, clap: str | None = None,
                  clap_labels: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Tempo, key and loudness of a track, and with `clap` its zero-shot genre, mood and instrument.

    Args:
        audio: `[C, N]` float samples.
        sample_rate: Their rate.
        clap: A CLAP checkpoint (local folder or hub id) to label the track with, or None.
        clap_labels: The label lists to score (`read_clap_labels`); default `DEFAULT_CLAP_LABELS`.

    Returns:
        `{"bpm": float, "key": str, "key_confidence": float, "lufs": float | None}`; `lufs` is None for a clip too
        short for BS.1770's 400 ms gating blocks. With `clap`, also `"clap"`: `clap_estimates`'s top labels.
    """
    import librosa
    import pyloudnorm

    audio = np.asarray(audio, dtype=np.float32)
    try:
        lufs = float(pyloudnorm.Meter(sample_rate).integrated_loudness(audio.T.astype(np.float64)))
    except ValueError:  # shorter than one gating block
        lufs = None
    head = audio[:, : int(MAX_SECONDS * sample_rate)].mean(axis=0)  # [N] mono
    y = librosa.resample(head, orig_sr=sample_rate, target_sr=ANALYSIS_RATE, res_type="soxr_hq")
    tempo, beats = librosa.beat.beat_track(y=y, sr=ANALYSIS_RATE, units="time")
    bpm = refine_tempo(beats, float(np.atleast_1d(tempo)[0]))
    key, confidence = estimate_key(librosa.feature.chroma_cqt(y=y, sr=ANALYSIS_RATE))
    tags = {"bpm": round(bpm, 1), "key": key, "key_confidence": round(confidence, 3),
            "lufs": None if lufs is None or not np.isfinite(lufs) else round(lufs, 1)}
    if clap:
        tags["clap"] = clap_estimates(audio, sample_rate, clap, clap_labels or DEFAULT_CLAP_LABELS)
    return tags


def caption_from(metadata: dict[str, Any]) -> str | None:
    """A caption for a track with no description, from what is known of it.

    "An ambient track in A minor at 96 BPM, calm, with piano.": genre, key, tempo, moods and instrument, each where
    known; None when none is.
    """
    genre, key, bpm = metadata.get("genre"), metadata.get("key"), metadata.get("bpm")
    moods, instrument = metadata.get("moods") or [], metadata.get("instrument")
    if not (genre or key or bpm or moods or instrument):
        return None
    kind = f"{genre} track" if genre else "track"
    text = f"{_article(kind)} {kind}"
    if key:
        text += f" in {key[0].upper()}{key[1:]}"
    if bpm:
        text += f" at {round(bpm)} BPM"
    if moods:
        text += f", {_join(moods)}"
    if instrument:
        text += f", with {instrument}"
    return text + "."


def _article(word: str) -> str:
    return "An" if word[:1].lower() in "aeiou" else "A"


def _join(words: list[str]) -> str:
    """Words joined as prose: "calm", "calm and dreamy", "calm, dreamy and dark"."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


# ---------------------------------------------------------------------------------------------------------------------
# Zero-shot genre, mood and instrument with CLAP (--clap)
# ---------------------------------------------------------------------------------------------------------------------

CLAP_FIELDS: dict[str, str] = {"genre": "genre", "mood": "moods", "instrument": "instrument"}
"""Label list -> the metadata field its top label fills (audiocraft's MusicInfo: moods is a list, the others text)."""
DEFAULT_CLAP_LABELS: dict[str, list[str]] = {
    "genre": ["rock", "pop", "jazz", "blues", "classical", "electronic", "hip hop", "ambient", "folk", "metal",
              "reggae", "funk", "country", "techno"],
    "mood": ["happy", "sad", "calm", "energetic", "dark", "uplifting", "romantic", "aggressive", "dreamy",
             "melancholic", "epic", "playful"],
    "instrument": ["piano", "acoustic guitar", "electric guitar", "bass guitar", "drums", "synthesizer", "strings",
                   "violin", "organ", "saxophone", "trumpet", "flute", "vocals"],
}
"""The labels scored without `--clap-labels`: common genre, mood and instrument words, a dozen or so each."""
CLAP_PROMPTS: dict[str, str] = {
    "genre": "This is {a} {label} song.",
    "mood": "This is {a} {label} song.",
    "instrument": "This is a song with {label}.",
}
"""Text prompt per label list: CLAP scores captions, not bare words (its zero-shot templates: "This is a sound of
{label}.")."""
CLAP_TOP = 3
"""Labels (with their scores) of each list kept in the manifest's `estimates`."""
CLAP_WINDOWS = 3
"""Windows of the model's input length averaged per track: start, middle and end of a long track, bounded cost."""


def read_clap_labels(path: str | None) -> dict[str, list[str]]:
    """The label lists to score: `DEFAULT_CLAP_LABELS`, with the lists a JSON or YAML file gives in their place.

    The file maps `genre`, `mood` and/or `instrument` to lists of labels, e.g. `{"genre": ["lofi", "jazz"]}`; a list
    it leaves out keeps its default, and an empty list labels nothing for that field.

    Args:
        path: The `--clap-labels` file, or None for the defaults.

    Returns:
        Label list name -> lowercase labels, in the file's order.

    Raises:
        ValueError: naming `--clap-labels`, for a missing or unreadable file, an unknown list name, a list with one
            label (a softmax over one label always says 1.0) or repeated labels, or a label that is not a string.
    """
    labels = {name: list(values) for name, values in DEFAULT_CLAP_LABELS.items()}
    if path is None:
        return labels
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))  # JSON is YAML
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"--clap-labels {path}: cannot be read ({type(e).__name__}: {e})".splitlines()[0]) from e
    if not isinstance(data, dict) or not data:
        raise ValueError(f"--clap-labels {path}: expected a mapping of {', '.join(CLAP_FIELDS)} to label lists")
    for name, values in data.items():
        if name not in CLAP_FIELDS:
            raise ValueError(f"--clap-labels {path}: unknown list {name!r}; expected some of {', '.join(CLAP_FIELDS)}")
        if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
            raise ValueError(f"--clap-labels {path}: {name} must be a list of non-empty strings, got {values!r}")
        clean = [v.strip().lower() for v in values]
        if len(clean) == 1 or len(set(clean)) != len(clean):
            raise ValueError(f"--clap-labels {path}: {name} needs two or more different labels (or none), "
                             f"got {values!r}")
        labels[name] = clean
    return labels


def check_clap_flags(clap: str | None, clap_labels: str | None, auto_tags: bool) -> dict[str, list[str]] | None:
    """Check `--clap` and `--clap-labels` before prep reads anything; the label lists to score, or None without CLAP.

    Raises:
        ValueError: naming the flag, for `--clap` without `--auto-tags`, `--clap-labels` without `--clap`, a `--clap`
            that is neither a folder nor a reachable hub id, a local folder that is not a CLAP checkpoint, or a bad
            label file (`read_clap_labels`).
    """
    from data_prep.names import check_model_name

    if clap is None:
        if clap_labels is not None:
            raise ValueError("--clap-labels needs --clap (the CLAP checkpoint that scores the labels)")
        return None
    if not auto_tags:
        raise ValueError("--clap needs --auto-tags (its genre, mood and instrument labels are auto-tags)")
    check_model_name("--clap", clap)
    folder = Path(clap).expanduser()
    if folder.exists():  # a hub id is checked when a worker loads it
        try:
            kind = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError) as e:
            raise ValueError(f"--clap {clap}: not a transformers checkpoint folder (no readable config.json)") from e
        if kind != "clap":
            raise ValueError(f"--clap {clap}: a {kind!r} checkpoint, not a CLAP one (model_type 'clap')")
    return read_clap_labels(clap_labels)


class ClapTagger:
    """A CLAP model with the text embeddings of its label prompts, computed once; scores tracks' audio.

    Args:
        path: A CLAP checkpoint (local folder or hub id) for `ClapModel` and `ClapProcessor.from_pretrained`.
        labels: Label list name -> labels.
    """

    def __init__(self, path: str, labels: dict[str, list[str]]) -> None:
        import torch
        from transformers import ClapModel, ClapProcessor
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # one "Loading weights" bar per DataLoader worker says nothing
        try:
            self.model = ClapModel.from_pretrained(path).eval().requires_grad_(False)
            processor = ClapProcessor.from_pretrained(path)
        except OSError as e:  # not a track's problem: prep would reject every track as unreadable
            raise RuntimeError(f"--clap {path}: cannot load a CLAP model ({e})") from e
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        self.extractor, self.tokenizer = processor.feature_extractor, processor.tokenizer
        self.labels = {name: list(values) for name, values in labels.items() if values}
        self.scale = float(self.model.logit_scale_a.exp())  # CLAP's audio->text logits: scale * cosine
        with torch.inference_mode():
            self.text = {name: self._embed_text([_prompt(name, label) for label in values])  # [L, D]
                         for name, values in self.labels.items()}

    def _embed_text(self, prompts: list[str]) -> Any:
        inputs = self.tokenizer(prompts, padding=True, return_tensors="pt")
        return _unit(_pooled(self.model.get_text_features(**inputs)))  # [L, D]

    def audio_embedding(self, audio: np.ndarray, sample_rate: int) -> Any:
        """The track's unit-norm audio embedding `[D]`: the mean over `clap_windows` of its mono mix.

        The windows are cut here, at the model's input length, so the feature extractor never crops at random
        (its `rand_trunc`): a resumed run or another rank labels a track the same.
        """
        import soxr
        import torch

        rate = int(self.extractor.sampling_rate)
        mono = np.asarray(audio, dtype=np.float32).mean(axis=0)  # [N]
        if sample_rate != rate:
            mono = soxr.resample(mono, sample_rate, rate, quality="HQ")  # [N'] at CLAP's rate (48 kHz real)
        windows = clap_windows(mono, int(self.extractor.nb_max_samples))
        features = self.extractor(windows, sampling_rate=rate, return_tensors="pt")
        # No window is longer than the model's input, so none needs the fused model's long-audio branch; set here
        # because the extractor marks one window "longer" at random when none is.
        is_longer = torch.zeros(len(windows), 1, dtype=torch.bool)
        with torch.inference_mode():
            embeddings = self.model.get_audio_features(
                input_features=features["input_features"].to(self.model.dtype), is_longer=is_longer)
            embeddings = _unit(_pooled(embeddings))  # [W, D]
            return _unit(embeddings.mean(dim=0))  # [D]

    def scores(self, audio: np.ndarray, sample_rate: int) -> dict[str, list[tuple[str, float]]]:
        """Every label of every list with its softmax score, best first; each list's scores sum to 1.

        Args:
            audio: `[C, N]` float samples.
            sample_rate: Their rate.
        """
        embedding = self.audio_embedding(audio, sample_rate)  # [D]
        out = {}
        for name, text in self.text.items():
            probs = (self.scale * (text @ embedding)).softmax(dim=0).tolist()  # [L]
            out[name] = sorted(zip(self.labels[name], probs), key=lambda pair: -pair[1])
        return out


def clap_windows(mono: np.ndarray, length: int, count: int = CLAP_WINDOWS) -> list[np.ndarray]:
    """Up to `count` evenly spaced windows `[length]` of `mono` `[N]` (first to last); a short track whole."""
    if mono.shape[0] <= length:
        return [mono]
    n = min(count, math.ceil(mono.shape[0] / length))
    starts = np.linspace(0, mono.shape[0] - length, n).round().astype(int)
    return [mono[s : s + length] for s in starts]


def _prompt(name: str, label: str) -> str:
    return CLAP_PROMPTS[name].format(a=_article(label).lower(), label=label)


def _pooled(output: Any) -> Any:
    """transformers 5 returns the model output (the embedding its `pooler_output`), 4.x the embedding itself."""
    return getattr(output, "pooler_output", output)


def _unit(x: Any) -> Any:
    import torch

    return torch.nn.functional.normalize(x, dim=-1)


_TAGGERS: dict[str, ClapTagger] = {}
"""One CLAP per process (each DataLoader worker loads its own, lazily: the model is never pickled to it)."""


def clap_tagger(path: str, labels: dict[str, list[str]]) -> ClapTagger:
    """The process's `ClapTagger` for this checkpoint and these labels, loaded on first use."""
    key = json.dumps([path, labels], sort_keys=True)
    if key not in _TAGGERS:
        _TAGGERS[key] = ClapTagger(path, labels)
    return _TAGGERS[key]


def clap_estimates(audio: np.ndarray, sample_rate: int, path: str,
                   labels: dict[str, list[str]]) -> dict[str, list[list[Any]]]:
    """The `CLAP_TOP` labels of each list with their scores, as the manifest's `estimates["clap"]` holds them.

    Args:
        audio: `[C, N]` float samples.
        sample_rate: Their rate.
        path: The CLAP checkpoint.
        labels: Label list name -> labels.

    Returns:
        e.g. `{"genre": [["ambient", 0.41], ["jazz", 0.22], ["folk", 0.09]], "mood": [...], "instrument": [...]}`.
    """
    scores = clap_tagger(path, labels).scores(audio, sample_rate)
    return {name: [[label, round(score, 4)] for label, score in ranked[:CLAP_TOP]] for name, ranked in scores.items()}


def clap_fills(clap: dict[str, list[list[Any]]]) -> dict[str, Any]:
    """Metadata field -> the value CLAP's top label gives it: `{"genre": "jazz", "moods": ["calm"], ...}`."""
    fills: dict[str, Any] = {}
    for name, ranked in clap.items():
        if ranked and name in CLAP_FIELDS:
            field = CLAP_FIELDS[name]
            fills[field] = [ranked[0][0]] if field == "moods" else ranked[0][0]
    return fills
