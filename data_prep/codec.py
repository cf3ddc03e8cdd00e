"""EnCodec 32 kHz, the one home of its use.

Load, encode (prep), decode (generation, MBD's EQ reference, eval) and the continuous latents (MBD's condition, FAD
embeddings).

The codec is transformers' `EncodecModel` loaded with `from_pretrained` (a hub id such as `facebook/encodec_32khz`
or a local directory), called exactly as audiocraft's `HFEncodecCompressionModel` does:
`model.encode(x, None, bandwidth=2.2).audio_codes[0]`. Mono segments give int16 codes `[4, T]`; stereo goes through
the mono codec channel by channel and is interleaved to `[8, T]` (L0, R0, L1, R1, ...), as audiocraft's
`InterleaveStereoCompressionModel`.
"""

from __future__ import annotations

import numpy as np
import torch

from data_prep.schema import CARDINALITY, CODEBOOKS_PER_CHANNEL, CODES_DTYPE, HOP_LENGTH, SAMPLE_RATE


def load_codec(name_or_path: str, device: str = "cpu"):
    """Load and check an EnCodec 32 kHz model (frozen, eval mode): 50 Hz frames, 4 codebooks of 2048.

    Args:
        name_or_path: a hub id (`facebook/encodec_32khz`) or a local folder saved by `save_pretrained`.
        device: where to put it.

    Raises:
        ValueError: for a codec of another rate, hop, channel count or codebook size.
    """
    from transformers import EncodecModel

    from data_prep.names import check_model_name

    check_model_name("--codec", name_or_path)
    model = EncodecModel.from_pretrained(name_or_path).to(device).eval().requires_grad_(False)
    cfg = model.config
    hop = int(np.prod(cfg.upsampling_ratios))
    if cfg.sampling_rate != SAMPLE_RATE or hop != HOP_LENGTH or cfg.audio_channels != 1:
        raise ValueError(
            f"--codec {name_or_path}: need a mono {SAMPLE_RATE} Hz EnCodec with hop {HOP_LENGTH}, got "
            f"{cfg.audio_channels} channel(s) at {cfg.sampling_rate} Hz with hop {hop}"
        )
    if cfg.codebook_size != CARDINALITY:
        raise ValueError(f"--codec {name_or_path}: codebook size {cfg.codebook_size} != {CARDINALITY}")
    return model


class CodecEncoder:
    """Batched EnCodec encoding with a fixed batch shape.

    Every call runs the model on exactly `[batch_size, 1, N]` (zero items fill a short batch), so each segment's
    codes are computed by the same kernels whatever it is batched with: a resumed run or another rank produces the
    same codes as an uninterrupted one.
    """

    def __init__(self, model, batch_size: int = 8) -> None:
        self.model = model
        self.batch_size = batch_size
        self.bandwidth = float(model.config.target_bandwidths[-1])
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def encode_mono(self, segments: np.ndarray) -> np.ndarray:
        """Encode mono segments `[B, N]` (all of one length) to codes `[B, 4, T]` int16."""
        out = []
        for start in range(0, len(segments), self.batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(segments[start : start + self.batch_size]))
            n = chunk.shape[0]
            batch = torch.zeros(self.batch_size, 1, chunk.shape[-1])
            batch[:n, 0] = chunk
            codes = self.model.encode(batch.to(self.device), None, bandwidth=self.bandwidth).audio_codes[0]
            if codes.shape[1] != CODEBOOKS_PER_CHANNEL:
                raise ValueError(
                    f"the codec gives {codes.shape[1]} codebooks at {self.bandwidth} kbps, "
                    f"MusicGen needs {CODEBOOKS_PER_CHANNEL}"
                )
            out.append(codes[:n].cpu().numpy())  # [n, 4, T]
        return np.concatenate(out).astype(CODES_DTYPE)

    def encode(self, segments: np.ndarray) -> np.ndarray:
        """Encode segments `[B, C, N]` (C = 1 or 2) to `[B, 4 * C, T]`; stereo interleaved L0, R0, L1, R1, ...

        Left and right go through the mono codec separately, as audiocraft's `InterleaveStereoCompressionModel`.
        """
        b, c, n = segments.shape
        codes = self.encode_mono(segments.reshape(b * c, n))  # [B * C, 4, T], channel fastest
        k, t = codes.shape[1:]
        # [B, C, K, T] -> [B, K, C, T] -> [B, K * C, T]: codebook index = C * k + channel
        return codes.reshape(b, c, k, t).transpose(0, 2, 1, 3).reshape(b, k * c, t)


@torch.no_grad()
def decode_codes(codec, codes: torch.Tensor) -> torch.Tensor:
    """EnCodec decode of `[B, K, T]` codes to `[B, C, samples]`; stereo decodes L (even) and R (odd) separately.

    Args:
        codec: transformers' `EncodecModel` (a MusicGen's `audio_encoder`).
        codes: `[B, 4, T]` mono or `[B, 8, T]` interleaved stereo codes.
    """
    if codes.shape[1] == 2 * CODEBOOKS_PER_CHANNEL:
        left = codec.decode(codes[:, 0::2][None], [None]).audio_values  # [B, 1, N]
        right = codec.decode(codes[:, 1::2][None], [None]).audio_values
        return torch.cat([left, right], dim=1)
    return codec.decode(codes[None], [None]).audio_values


@torch.no_grad()
def quantized_latent(codec, codes: torch.Tensor) -> torch.Tensor:
    """The RVQ's reconstruction of the latent from mono codes `[B, 4, T]`: `[B, D, T]` (MBD's condition)."""
    return codec.quantizer.decode(codes.transpose(0, 1))  # transformers' quantizer wants [K, B, T]


@torch.no_grad()
def encoder_latent(codec, audio: torch.Tensor) -> torch.Tensor:
    """The encoder's continuous latent (before quantization) of audio `[B, C, N]`: `[B * C, D, frames]`.

    Each channel is encoded as a mono item (channel fastest), as the mono codec sees stereo.
    """
    device = next(codec.parameters()).device
    return codec.encoder(audio.reshape(-1, 1, audio.shape[-1]).to(device))
