"""The multi-band diffusion U-Net: audiocraft's `DiffusionUnet`, with its state-dict names so released weights load.

One network per frequency band predicts the noise `eps` in a noisy waveform `[B, 1, N]` at diffusion step `t`,
conditioned on EnCodec's quantized latent `[B, 128, N / 640]` (docs/mbd.md):

    x [B, 1, N] -> encoders (Conv1d k8 s4 -> GroupNorm -> ReLU -> ResBlock), + step embedding after each
               -> bottleneck [B, 3072, N / 256]: + conv_codec(latent) interpolated to its length, then a
                  transformer / BiLSTM (or zeros: audiocraft drops the bottleneck, and with it the condition)
               -> decoders (+ skip, ResBlock -> GroupNorm -> ReLU -> ConvTranspose1d k8 s4) -> eps [B, 1, N]

Key names (`encoders.{i}.conv.weight`, `embeddings.{i}.weight`, `conv_codec.weight`,
`transformer.layers.{i}.self_attn.mha.in_proj_weight`, ...) are audiocraft's so `model_state` of
`mbd_musicgen_32khz.th` loads strictly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class UnetConfig:
    """`diffusion_unet` of audiocraft's `config/model/score/basic.yaml` (the defaults), plus the channel count.

    Attributes:
        chin: Audio channels (MBD is mono: 1).
        hidden: Channels after the first encoder; each further encoder multiplies them by `growth`.
        depth: Encoder/decoder pairs; time is downsampled by `stride ** depth`.
        res_blocks: Residual blocks per encoder/decoder layer (dilation 2 ** i).
        norm_groups: GroupNorm groups.
        kernel: Strided conv kernel size.
        stride: Strided conv stride.
        growth: Channel growth per layer.
        max_channels: Channel cap.
        dropout: Dropout1d inside residual blocks.
        emb_all_layers: Add a step embedding after every encoder (not only the first).
        bilstm: BiLSTM bottleneck.
        transformer: Transformer bottleneck (6 post-norm layers, 8 heads, feed-forward 2048, no biases).
        codec_dim: Width of the codec latent condition (128 for EnCodec 32 kHz); None: unconditional.
        cross_attention: Condition through cross-attention in the transformer instead of addition.
        num_steps: Diffusion steps (size of the step embedding tables).
    """

    chin: int = 1
    hidden: int = 48
    depth: int = 4
    res_blocks: int = 1
    norm_groups: int = 4
    kernel: int = 8
    stride: int = 4
    growth: float = 4.0
    max_channels: int = 10_000
    dropout: float = 0.0
    emb_all_layers: bool = True
    bilstm: bool = False
    transformer: bool = False
    codec_dim: int | None = 128
    cross_attention: bool = False
    num_steps: int = 1000

    @classmethod
    def from_audiocraft(cls, cfg: dict[str, Any]) -> UnetConfig:
        """From an MBD band's solver cfg (`pkg[i]['cfg']`): `diffusion_unet`, `channels`, `schedule.num_steps`."""
        unet = dict(cfg.get("diffusion_unet") or {})
        unknown = set(unet) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"diffusion_unet has keys this U-Net does not know: {sorted(unknown)}")
        return cls(chin=int(cfg.get("channels", 1)), num_steps=int((cfg.get("schedule") or {}).get("num_steps", 1000)),
                   **unet)

    def to_audiocraft(self) -> dict[str, Any]:
        """The `diffusion_unet` section (without `chin` and `num_steps`, which audiocraft takes from elsewhere)."""
        out = asdict(self)
        del out["chin"], out["num_steps"]
        return out


class ResBlock(nn.Module):
    """GroupNorm -> ReLU -> dilated Conv(k=3) -> Dropout1d, twice, plus the input."""

    def __init__(self, channels: int, norm_groups: int, dilation: int, dropout: float) -> None:
        super().__init__()
        padding = dilation  # "same" length for kernel 3
        self.norm1 = nn.GroupNorm(norm_groups, channels)
        self.conv1 = nn.Conv1d(channels, channels, 3, 1, padding, dilation=dilation)
        self.dropout1 = nn.Dropout1d(dropout)
        self.norm2 = nn.GroupNorm(norm_groups, channels)
        self.conv2 = nn.Conv1d(channels, channels, 3, 1, padding, dilation=dilation)
        self.dropout2 = nn.Dropout1d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, C, T]` -> `[B, C, T]`: the two conv passes added to the input."""
        h = self.dropout1(self.conv1(F.relu(self.norm1(x))))
        h = self.dropout2(self.conv2(F.relu(self.norm2(h))))
        return x + h


def _res_blocks(channels: int, cfg: UnetConfig) -> nn.Sequential:
    return nn.Sequential(*[ResBlock(channels, cfg.norm_groups, 2**i, cfg.dropout) for i in range(cfg.res_blocks)])


class EncoderLayer(nn.Module):
    """Right-pad to a stride multiple -> strided Conv1d (no bias) -> GroupNorm -> ReLU -> residual blocks."""

    def __init__(self, chin: int, chout: int, cfg: UnetConfig) -> None:
        super().__init__()
        self.conv = nn.Conv1d(chin, chout, cfg.kernel, cfg.stride, (cfg.kernel - cfg.stride) // 2, bias=False)
        self.norm = nn.GroupNorm(cfg.norm_groups, chout)
        self.res_blocks = _res_blocks(chout, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, chin, T]` -> `[B, chout, ceil(T / stride)]`, right-padding `T` to a stride multiple first."""
        stride = self.conv.stride[0]
        x = F.pad(x, (0, (stride - x.shape[-1] % stride) % stride))
        return self.res_blocks(F.relu(self.norm(self.conv(x))))


class DecoderLayer(nn.Module):
    """Residual blocks -> GroupNorm -> ReLU -> ConvTranspose1d (no bias) that upsamples by the stride."""

    def __init__(self, chin: int, chout: int, cfg: UnetConfig) -> None:
        super().__init__()
        self.res_blocks = _res_blocks(chin, cfg)
        self.norm = nn.GroupNorm(cfg.norm_groups, chin)
        self.convtr = nn.ConvTranspose1d(chin, chout, cfg.kernel, cfg.stride, (cfg.kernel - cfg.stride) // 2,
                                         bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, chin, T]` -> `[B, chout, T * stride]`."""
        return self.convtr(F.relu(self.norm(self.res_blocks(x))))


class BLSTM(nn.Module):
    """Two-layer bidirectional LSTM with a projection back to the input width."""

    def __init__(self, dim: int, layers: int = 2) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size=dim, hidden_size=dim, num_layers=layers, bidirectional=True)
        self.linear = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T]
        """`[B, C, T]` -> `[B, C, T]`, the LSTM running over `T`."""
        y = self.linear(self.lstm(x.permute(2, 0, 1))[0])  # [T, B, C]
        return y.permute(1, 2, 0)


def sin_embedding(length: int, dim: int, device: torch.device, dtype: torch.dtype,
                  max_period: float = 10_000.0) -> torch.Tensor:
    """audiocraft's `create_sin_embedding` for positions 0..length-1: `[1, length, dim]`, cosines then sines."""
    half = dim // 2
    positions = torch.arange(length, device=device, dtype=dtype).view(1, -1, 1)
    frequencies = torch.arange(half, device=device, dtype=dtype).view(1, 1, -1)
    phase = positions / (torch.full([], max_period, device=device, dtype=dtype) ** (frequencies / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


class _Attention(nn.Module):
    """audiocraft's non-custom `StreamingMultiheadAttention`: torch's MHA kept under `.mha` (hence the key names)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, dropout=dropout, bias=False, batch_first=True)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        return self.mha(query, memory, memory, need_weights=False)[0]


class TransformerLayer(nn.Module):
    """Post-norm layer of audiocraft's `StreamingTransformer(dim, 8, 6, bias_ff=False, bias_attn=False)`.

    It subclasses torch's `TransformerEncoderLayer` defaults: ReLU feed-forward of width 2048, dropout 0.1, LayerNorm
    after each residual sum (`norm_first=False`).
    """

    def __init__(self, dim: int, heads: int = 8, feedforward: int = 2048, dropout: float = 0.1,
                 cross_attention: bool = False) -> None:
        super().__init__()
        self.self_attn = _Attention(dim, heads, dropout)
        self.linear1 = nn.Linear(dim, feedforward, bias=False)
        self.linear2 = nn.Linear(feedforward, dim, bias=False)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        self.cross_attention = _Attention(dim, heads, dropout) if cross_attention else None
        self.norm_cross = nn.LayerNorm(dim, eps=1e-5) if cross_attention else None

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:  # [B, T, C]
        """`[B, T, C]` -> `[B, T, C]`; with cross-attention the layer also attends to `memory` `[B, S, C]`."""
        src = x
        x = self.norm1(x + self.dropout(self.self_attn(x, x)))
        if self.cross_attention is not None:
            # audiocraft's post-norm branch queries with the layer *input*, not the updated x; kept for exactness.
            x = self.norm_cross(x + self.dropout(self.cross_attention(src, memory)))
        ff = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm2(x + self.dropout(ff))


class Transformer(nn.Module):
    """Sinusoidal positions + 6 post-norm layers over the bottleneck frames."""

    def __init__(self, dim: int, layers: int = 6, heads: int = 8, cross_attention: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList([TransformerLayer(dim, heads, cross_attention=cross_attention)
                                     for _ in range(layers)])

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:  # [B, T, C]
        """Add sinusoidal positions to `x` `[B, T, C]` and run the layers; `memory` feeds their cross-attention."""
        x = x + sin_embedding(x.shape[1], x.shape[2], x.device, x.dtype)
        for layer in self.layers:
            x = layer(x, memory)
        return x


class DiffusionUnet(nn.Module):
    """Noise predictor of one MBD band (see the module docstring for the data flow)."""

    def __init__(self, cfg: UnetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoders = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.embedding = nn.Embedding(cfg.num_steps, cfg.hidden)
        self.embeddings = nn.ModuleList() if cfg.emb_all_layers else None
        chin, hidden = cfg.chin, cfg.hidden
        for d in range(cfg.depth):
            self.encoders.append(EncoderLayer(chin, hidden, cfg))
            self.decoders.insert(0, DecoderLayer(hidden, chin, cfg))
            if self.embeddings is not None and d > 0:
                self.embeddings.append(nn.Embedding(cfg.num_steps, hidden))
            chin, hidden = hidden, min(int(hidden * cfg.growth), cfg.max_channels)
        self.bottleneck_channels = chin
        self.bilstm = BLSTM(chin) if cfg.bilstm else None
        self.transformer = Transformer(chin, cross_attention=cfg.cross_attention) if cfg.transformer else None
        self.conv_codec = nn.Conv1d(cfg.codec_dim, chin, 1) if cfg.codec_dim is not None else None

    def forward(self, x: torch.Tensor, step: int | torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted noise `[B, C, N]` for noisy audio `x` `[B, C, N]` at `step` (int or `[B]`).

        Args:
            x: Noisy (projected) audio.
            step: Diffusion step(s) in `[0, num_steps)`.
            condition: Codec latent `[B, codec_dim, frames]`; at most twice the bottleneck length.
        """
        b = x.shape[0]
        steps = step if isinstance(step, torch.Tensor) else torch.full((b,), step, device=x.device, dtype=torch.long)
        skips, z = [], x
        for i, encoder in enumerate(self.encoders):
            z = encoder(z)
            if i == 0:
                z = z + self.embedding(steps)[..., None]  # [B, C, 1] broadcast over time
            elif self.embeddings is not None:
                z = z + self.embeddings[i - 1](steps)[..., None]
            skips.append(z)

        memory = None
        if self.conv_codec is not None:
            if condition is None:
                raise ValueError("this MBD U-Net is conditional (codec_dim is set): pass the codec latent")
            cond = self.conv_codec(condition)  # [B, C_bottleneck, frames]
            if cond.shape[-1] > 2 * z.shape[-1]:
                raise ValueError(f"condition has {cond.shape[-1]} frames for a {z.shape[-1]}-frame bottleneck")
            if self.cfg.cross_attention:
                memory = cond.transpose(1, 2)
                memory = memory + sin_embedding(memory.shape[1], memory.shape[2], x.device, memory.dtype)
            else:
                z = z + F.interpolate(cond, z.shape[-1])  # nearest, as audiocraft
        if self.transformer is not None:
            z = self.transformer(z.transpose(1, 2), memory).transpose(1, 2)
        elif self.bilstm is not None:
            z = self.bilstm(z)
        else:
            z = torch.zeros_like(z)  # audiocraft's behaviour without a bottleneck module: the condition is dropped

        for decoder in self.decoders:
            skip = skips.pop()
            z = decoder(z[..., : skip.shape[-1]] + skip)
        return z[..., : x.shape[-1]]


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (for the bench and the model cards)."""
    return sum(p.numel() for p in model.parameters())

