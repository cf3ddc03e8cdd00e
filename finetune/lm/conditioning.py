"""Text and melody conditions with audiocraft's training-time dropouts.

audiocraft applies, in order: classifier-free-guidance dropout (one draw per batch nulls every condition), attribute
dropout (one draw per batch per attribute: the melody's `self_wav` with p=0.5) and T5 word dropout (per word). The
batch-level draws here are a pure function of (seed, step, salt): every rank draws the same value without any
communication, and a resumed run draws what the uninterrupted run would have (audiocraft uses a generator seeded 1234
for the same lockstep).
"""

from __future__ import annotations

import hashlib

import torch

# audiocraft's defaults per conditioner config (docs/fidelity.md): text2music vs chroma2music.
TEXT_DEFAULTS = {"cfg_dropout": 0.3, "word_dropout": 0.3, "chroma_dropout": 0.0}
MELODY_DEFAULTS = {"cfg_dropout": 0.2, "word_dropout": 0.2, "chroma_dropout": 0.5}


def batch_draw(seed: int, step: int | str, salt: str) -> float:
    """A U(0, 1) draw identical on every rank for a given (seed, step, salt); `step` may name a micro-batch."""
    digest = hashlib.sha256(f"{seed}:{step}:{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


@torch.no_grad()
def encode_text(tokenizer, text_encoder: torch.nn.Module, captions: list[str | None], null: torch.Tensor,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen T5 in fp32: returns hidden states `[B, L, 768]` and the attention mask `[B, L]`.

    A null caption (None, or nulled by CFG dropout) tokenizes as "" (`[</s>]`) and gets an all-zero mask, so its
    projected condition is all zeros, as audiocraft's T5Conditioner does (docs/fidelity.md).
    """
    texts = [c if c is not None else "" for c in captions]
    tokens = tokenizer(texts, padding=True, return_tensors="pt")  # on the host
    # The condition mask is made on the host too, then everything goes to the device without a sync.
    mask = tokens["attention_mask"].clone()  # [B, L]
    mask[null.cpu() | torch.tensor([t == "" for t in texts])] = 0
    ids, attention, mask = (_to_device(t, device) for t in (tokens["input_ids"], tokens["attention_mask"], mask))
    # T5 is fp16-unsafe; audiocraft runs it with autocast_dtype float32.
    with torch.autocast(device_type=device.type, enabled=False):
        hidden = text_encoder(input_ids=ids, attention_mask=attention).last_hidden_state
    return hidden.float(), mask


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`; to a GPU through pinned memory, so the copy does not wait for the GPU's queue."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def text_condition(model, tokenizer, captions: list[str | None], null: torch.Tensor,
                   device: torch.device) -> torch.Tensor:
    """The text condition the decoder sees: T5 states projected to its width, zero where nulled or padded.

    Args:
        model: a transformers MusicGen (or MusicGen-Melody) model.
        tokenizer: its T5 tokenizer.
        captions: one caption per item (None or "" for no text).
        null: bool `[B]`, True for items whose condition is dropped (CFG dropout, the unconditional half).
        device: where the tensors go.

    Returns:
        `[B, L, D]`: cross-attention memory (text models) or the text part of the prefix (melody models).
    """
    hidden, mask = encode_text(tokenizer, model.text_encoder, captions, null, device)  # [B, L, 768], [B, L]
    # transformers omits enc_to_dec_proj when T5 and the decoder have one width; every hub checkpoint has it.
    project = getattr(model, "enc_to_dec_proj", None) or torch.nn.Identity()
    return project(hidden) * mask[..., None]


def melody_condition(model, chroma: torch.Tensor, valid_frames: torch.Tensor | None = None) -> torch.Tensor:
    """The melody prefix of a MusicGen-Melody: chroma `[B, F, 12]` projected to `[B, F, D]`.

    Frames at or past `valid_frames` `[B]` (the padding of short segments) become zero vectors, still attended, as
    audiocraft's masked chroma is.
    """
    proj = model.audio_enc_to_dec_proj
    melody = proj(chroma.to(proj.weight.dtype))  # [B, F, D]
    if valid_frames is None:
        return melody
    valid = torch.arange(chroma.shape[1], device=chroma.device)[None] < valid_frames.to(chroma.device)[:, None]
    return melody * valid[..., None]
