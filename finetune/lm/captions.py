"""Caption augmentation as audiocraft does it, as pure functions of an explicit `random.Random`.

Two functions, each a draw-for-draw transcription of audiocraft (docs/fidelity.md):

- `augment_caption`: `audiocraft.data.music_dataset.augment_music_info_description`, the train-split text
  augmentation that merges metadata ("bpm: 120.0. genre: rock") into the description and sometimes drops the
  description. audiocraft draws from the global `random` module; here the caller passes a `random.Random`, and the
  same seed gives the same draws in the same order, so the result is identical to audiocraft's.
- `word_dropout`: `T5Conditioner.tokenize`'s word dropout (training only).

Draw order of `augment_music_info_description` (what makes a seeded transcription exact):

1. one `uniform(0, 1)` against `merge_text_p` (only when `merge_text_p > 0`: `MusicDataset.__getitem__` skips the
   call entirely otherwise);
2. if it fired: one `uniform(0, 1)` for *every* field of audiocraft's `MusicInfo` dataclass, in declaration order
   (`is_valid_field` draws before it looks at the name or value, so fields that can never be merged still consume a
   draw), then `shuffle` of the kept "name: value" pairs, then one `uniform(0, 1)` against `drop_desc_p`.
"""

from __future__ import annotations

import random
from typing import Any

MUSIC_INFO_FIELDS: tuple[str, ...] = (
    # SegmentInfo (audiocraft/data/audio_dataset.py)
    "meta",
    "seek_time",
    "n_frames",
    "total_frames",
    "sample_rate",
    "channels",
    # AudioInfo (audiocraft/data/info_audio_dataset.py)
    "audio_tokens",
    # MusicInfo (audiocraft/data/music_dataset.py)
    "title",
    "artist",
    "key",
    "bpm",
    "genre",
    "moods",
    "keywords",
    "description",
    "name",
    "instrument",
    "self_wav",
    "joint_embed",
)
"""`dataclasses.fields(MusicInfo)` in order: one random draw each when metadata is merged."""

MERGEABLE_FIELDS: frozenset[str] = frozenset({"key", "bpm", "genre", "moods", "instrument", "keywords"})
"""The only fields audiocraft merges into the description."""


def _preprocess_description(value: Any) -> str | None:
    """audiocraft's `get_string` (applied by `MusicInfo.from_dict` before augmentation)."""
    if value is None or not isinstance(value, str) or len(value) == 0 or value == "None":
        return None
    return value.strip()


def _preprocess_bpm(value: Any) -> float | None:
    """audiocraft's `get_bpm`: bpm is always a float by the time it is printed ("120.0", never "120")."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _process_value(value: Any) -> str:
    """audiocraft's `process_value`: scalars via `str`, lists joined with ", "."""
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, list):
        return ", ".join(value)
    raise ValueError(f"Unknown type for text value! ({type(value)}, {value})")


def augment_caption(
    info_caption: str | None,
    metadata: dict[str, Any],
    rng: random.Random,
    *,
    merge_text_p: float = 0.25,
    drop_desc_p: float = 0.5,
    drop_other_p: float = 0.5,
) -> str | None:
    """audiocraft's `augment_music_info_description` on a caption and its metadata.

    With probability `merge_text_p`, "field: value" pairs of key, bpm, genre, moods, keywords and instrument are
    built (a field is kept when it is not None and a uniform draw is below `drop_other_p`, a *keep* probability
    despite its name), shuffled and joined with ". "; then the description is dropped with probability
    `drop_desc_p`. The result is `description.rstrip('.') + ". " + metadata`, stripped, or the metadata alone
    (None if it is empty) when the description was dropped or absent.

    Quirk kept on purpose: whenever `merge_text_p > 0`, a description that was not merged still goes through the
    join with an empty metadata text, so "Calm piano" becomes "Calm piano." and "Calm piano..." becomes
    "Calm piano.". With `merge_text_p == 0` audiocraft never calls the function and the caption is unchanged
    (no draws are consumed either).

    Args:
        info_caption: The segment's description (`json["caption"]` of a shard sample), or None.
        metadata: The sample's `json["metadata"]` (`data_prep.catalog.normalize_info` output: key, bpm, genre,
            moods, instrument, keywords, plus title/artist which are never merged).
        rng: Random source; audiocraft uses the global `random` module, whose draws this reproduces in order.
        merge_text_p: Probability of merging metadata into the description (audiocraft default for MusicGen 0.25).
        drop_desc_p: Probability of dropping the original description when merging (0.5).
        drop_other_p: Probability of *keeping* each metadata field when merging (0.5).

    Returns:
        The augmented caption, or None when there is no text at all.
    """
    description = _preprocess_description(info_caption)
    if not merge_text_p:
        return description
    values = {name: metadata.get(name) for name in MERGEABLE_FIELDS}
    values["bpm"] = _preprocess_bpm(values["bpm"])

    metadata_text = ""
    if rng.uniform(0, 1) < merge_text_p:
        pairs = []
        for name in MUSIC_INFO_FIELDS:
            value = values.get(name)
            valid_value = value is not None and isinstance(value, (int, float, str, list))
            keep = rng.uniform(0, 1) < drop_other_p  # drawn for every field, as audiocraft's is_valid_field does
            if name in MERGEABLE_FIELDS and valid_value and keep:
                pairs.append(f"{name}: {_process_value(value)}")
        rng.shuffle(pairs)
        metadata_text = ". ".join(pairs)
        description = description if not rng.uniform(0, 1) < drop_desc_p else None

    if description is None:
        description = metadata_text if len(metadata_text) > 1 else None
    else:
        description = ". ".join([description.rstrip("."), metadata_text])
    return description.strip() if description else None


def word_dropout(text: str | None, p: float, rng: random.Random) -> str:
    """audiocraft's T5 word dropout: each word is dropped independently with probability `p`.

    Transcribes `T5Conditioner.tokenize` (training only): None becomes "" (audiocraft's null text, whose attention
    mask the conditioner zeroes), the text is split on single spaces (`entry.split(" ")`, so runs of spaces yield
    empty "words" that also consume a draw), a word is kept when `random() >= p`, and the kept words are joined with
    one space. When every word is dropped the result is "", i.e. the sample becomes unconditional. With `p <= 0`
    no draws are consumed.

    Args:
        text: A caption, or None for no caption.
        p: Drop probability per word (0.3 for text2music, 0.2 for chroma2music and the large grids).
        rng: Random source standing in for audiocraft's global `random`.

    Returns:
        The text with words dropped; "" when there is no text left.
    """
    entry = text if text is not None else ""
    if p <= 0.0:
        return entry
    return " ".join(word for word in entry.split(" ") if rng.random() >= p)
