"""Caption augmentation and word dropout against transcriptions of audiocraft that draw from the global `random`.

The reference functions below restate audiocraft's `augment_music_info_description` (data/music_dataset.py) and
`T5Conditioner.tokenize` word dropout (modules/conditioners.py) on a stand-in of the real `MusicInfo` dataclass
(same fields in the same order), drawing from the module-level `random` exactly as audiocraft does. Seeding the
global `random` and a `random.Random` with the same value must then give the same text and leave both generators in
the same state.
"""

from __future__ import annotations

import random
import typing as tp
from dataclasses import dataclass, fields, replace

import pytest

from finetune.lm.captions import MUSIC_INFO_FIELDS, augment_caption, word_dropout

# --------------------------------------------------------------------------------------------------------------------
# Reference (audiocraft semantics, global random)


@dataclass
class _SegmentInfo:
    meta: tp.Any = None
    seek_time: float = 0.0
    n_frames: int = 0
    total_frames: int = 0
    sample_rate: int = 32000
    channels: int = 1


@dataclass
class _AudioInfo(_SegmentInfo):
    audio_tokens: tp.Any = None


@dataclass
class _MusicInfo(_AudioInfo):
    title: str | None = None
    artist: str | None = None
    key: str | None = None
    bpm: float | None = None
    genre: str | None = None
    moods: list | None = None
    keywords: list | None = None
    description: str | None = None
    name: str | None = None
    instrument: str | None = None
    self_wav: tp.Any = None
    joint_embed: dict = None  # type: ignore[assignment]


def _reference_augment(info: _MusicInfo, merge_text_p: float, drop_desc_p: float, drop_other_p: float) -> _MusicInfo:
    def keep_field(name: str, value: tp.Any) -> bool:
        ok_name = name in ["key", "bpm", "genre", "moods", "instrument", "keywords"]
        ok_value = value is not None and isinstance(value, (int, float, str, list))
        draw = random.uniform(0, 1) < drop_other_p  # drawn for every field
        return ok_name and ok_value and draw

    def as_text(value: tp.Any) -> str:
        return ", ".join(value) if isinstance(value, list) else str(value)

    description = info.description
    metadata_text = ""
    if random.uniform(0, 1) < merge_text_p:
        pairs = [f"{f.name}: {as_text(getattr(info, f.name))}" for f in fields(info)
                 if keep_field(f.name, getattr(info, f.name))]
        random.shuffle(pairs)
        metadata_text = ". ".join(pairs)
        description = description if not random.uniform(0, 1) < drop_desc_p else None
    if description is None:
        description = metadata_text if len(metadata_text) > 1 else None
    else:
        description = ". ".join([description.rstrip("."), metadata_text])
    description = description.strip() if description else None
    out = replace(info)
    out.description = description
    return out


def _reference_dataset_caption(description: str | None, metadata: dict, merge_text_p: float, drop_desc_p: float,
                               drop_other_p: float) -> str | None:
    """`MusicDataset.__getitem__`: augmentation only `if self.merge_text_p`."""
    info = _MusicInfo(description=description, **metadata)
    if merge_text_p:
        info = _reference_augment(info, merge_text_p, drop_desc_p, drop_other_p)
    return info.description


def _reference_word_dropout(text: str | None, p: float) -> str:
    entry = text if text is not None else ""
    if p > 0.0:
        entry = " ".join([w for w in entry.split(" ") if random.random() >= p])
    return entry


# --------------------------------------------------------------------------------------------------------------------

_CAPTIONS = [None, "A calm piano piece.", "Upbeat rock with drums", "Ends with dots...", "x", "  padded text  ."]


def _random_metadata(rng: random.Random) -> dict:
    def maybe(value):
        return value if rng.random() < 0.7 else None

    return {
        "title": maybe("Song Title"),
        "artist": maybe("someone"),
        "key": maybe(rng.choice(["c major", "a minor", "f# minor"])),
        "bpm": maybe(float(rng.choice([90, 120, 127.5]))),
        "genre": maybe(rng.choice(["rock", "jazz", "ambient"])),
        "moods": maybe(rng.sample(["calm", "happy", "dark", "epic"], rng.randint(1, 3))),
        "instrument": maybe(rng.choice(["piano", "guitar", "synth"])),
        "keywords": maybe(rng.sample(["lofi", "chill", "retro", "cinematic"], rng.randint(1, 3))),
    }


def test_dataclass_stand_in_has_audiocrafts_field_order() -> None:
    assert tuple(f.name for f in fields(_MusicInfo)) == MUSIC_INFO_FIELDS
    assert len(MUSIC_INFO_FIELDS) == 19


@pytest.mark.parametrize("probs", [(0.25, 0.5, 0.5), (1.0, 0.5, 0.5), (0.7, 0.2, 0.9), (1.0, 0.0, 1.0)])
def test_matches_audiocraft_draw_for_draw(probs: tuple[float, float, float]) -> None:
    merge_text_p, drop_desc_p, drop_other_p = probs
    meta_rng = random.Random(1234)
    outcomes = set()
    for seed in range(1500):
        caption = _CAPTIONS[seed % len(_CAPTIONS)]
        metadata = _random_metadata(meta_rng)
        random.seed(seed)
        expected = _reference_dataset_caption(caption, metadata, merge_text_p, drop_desc_p, drop_other_p)
        rng = random.Random(seed)
        got = augment_caption(caption, metadata, rng, merge_text_p=merge_text_p, drop_desc_p=drop_desc_p,
                              drop_other_p=drop_other_p)
        assert got == expected, (seed, caption, metadata)
        assert rng.random() == random.random(), f"seed {seed}: a different number of draws was consumed"
        outcomes.add("merged" if got and ": " in got else "plain")
    assert outcomes == {"merged", "plain"} or merge_text_p == 1.0


def test_full_merge_formats_fields_like_audiocraft() -> None:
    metadata = {"title": "T", "artist": "A", "key": "c major", "bpm": 120, "genre": "rock",
                "moods": ["calm", "sad"], "instrument": "piano", "keywords": ["lofi", "chill"]}
    out = augment_caption("A song.", metadata, random.Random(0), merge_text_p=1.0, drop_desc_p=0.0, drop_other_p=1.0)
    assert out is not None and out.startswith("A song. ")
    pairs = set(out[len("A song. "):].split(". "))
    assert pairs == {"key: c major", "bpm: 120.0", "genre: rock", "moods: calm, sad", "instrument: piano",
                     "keywords: lofi, chill"}  # bpm is a float ("120.0"); title and artist are never merged
    orders = {augment_caption(None, metadata, random.Random(s), merge_text_p=1.0, drop_desc_p=0.0, drop_other_p=1.0)
              for s in range(20)}
    assert len(orders) > 1, "the pairs are shuffled"


def test_edge_cases() -> None:
    empty = dict.fromkeys(["title", "artist", "key", "bpm", "genre", "moods", "instrument", "keywords"])
    rng = random.Random(0)
    # merge_text_p = 0: audiocraft never calls the augmentation: text unchanged, no draws consumed.
    assert augment_caption("Ends with dots...", empty, rng, merge_text_p=0.0) == "Ends with dots..."
    assert augment_caption(None, empty, rng, merge_text_p=0.0) is None
    assert rng.random() == random.Random(0).random()
    # The quirk: with merge_text_p > 0 an unmerged description still ends with exactly one ".".
    for text in ("Calm piano", "Calm piano.", "Calm piano..."):
        assert augment_caption(text, empty, random.Random(0), merge_text_p=1e-12) == "Calm piano."
    # All fields None: merging adds nothing; dropping the description leaves no text at all.
    assert augment_caption("Calm", empty, random.Random(0), merge_text_p=1.0, drop_desc_p=0.0) == "Calm."
    assert augment_caption("Calm", empty, random.Random(0), merge_text_p=1.0, drop_desc_p=1.0) is None
    # No description: only metadata text, or None.
    meta = {**empty, "genre": "jazz"}
    assert augment_caption(None, meta, random.Random(0), merge_text_p=1.0, drop_other_p=1.0) == "genre: jazz"
    assert augment_caption(None, meta, random.Random(0), merge_text_p=1.0, drop_other_p=0.0) is None
    assert augment_caption(None, meta, random.Random(0), merge_text_p=1e-12) is None
    # Empty or "None" descriptions are no description (audiocraft's get_string).
    assert augment_caption("", empty, random.Random(0), merge_text_p=0.0) is None
    assert augment_caption("None", empty, random.Random(0), merge_text_p=0.0) is None


@pytest.mark.parametrize("text", [None, "", "one", "a calm  piano piece with soft drums", " leading space"])
def test_word_dropout_matches_audiocraft(text: str | None) -> None:
    for seed in range(200):
        random.seed(seed)
        expected = _reference_word_dropout(text, 0.3)
        rng = random.Random(seed)
        assert word_dropout(text, 0.3, rng) == expected
        assert rng.random() == random.random()


def test_word_dropout_extremes_and_rate() -> None:
    text = "a calm piano piece with soft drums and a warm bass line"
    rng = random.Random(0)
    assert word_dropout(text, 0.0, rng) == text
    assert word_dropout(None, 0.0, rng) == ""
    assert rng.random() == random.Random(0).random(), "p = 0 consumes no draws"
    assert word_dropout(text, 1.0, random.Random(0)) == ""
    words = [f"w{i}" for i in range(20_000)]
    kept = word_dropout(" ".join(words), 0.3, random.Random(7)).split(" ")
    assert abs(len(kept) / len(words) - 0.7) < 0.015
    kept_set = set(kept)
    assert kept == [w for w in words if w in kept_set], "kept words stay in order"
