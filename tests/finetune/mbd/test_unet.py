"""The MBD U-Net has audiocraft's state-dict names, shapes and sizes, so released band weights load strictly."""

from __future__ import annotations

import pytest
import torch

from finetune.mbd.unet import DiffusionUnet, UnetConfig, count_parameters


def _meta(cfg: UnetConfig) -> DiffusionUnet:
    with torch.device("meta"):  # real-size shapes without allocating 2 GB
        return DiffusionUnet(cfg)


def test_real_size_keys_and_shapes_are_audiocrafts() -> None:
    shapes = {k: tuple(v.shape) for k, v in _meta(UnetConfig(codec_dim=128)).state_dict().items()}
    channels = [1, 48, 192, 768, 3072]  # docs/mbd.md
    for i in range(4):
        chin, chout = channels[i], channels[i + 1]
        assert shapes[f"encoders.{i}.conv.weight"] == (chout, chin, 8)
        assert shapes[f"encoders.{i}.norm.weight"] == (chout,)
        for part in ("norm1", "norm2"):
            assert shapes[f"encoders.{i}.res_blocks.0.{part}.bias"] == (chout,)
        assert shapes[f"encoders.{i}.res_blocks.0.conv1.weight"] == (chout, chout, 3)
        # Decoders run deepest first: decoder 0 maps 3072 -> 768, decoder 3 maps 48 -> 1.
        assert shapes[f"decoders.{3 - i}.convtr.weight"] == (chout, chin, 8)
        assert shapes[f"decoders.{3 - i}.res_blocks.0.conv2.bias"] == (chout,)
    assert shapes["embedding.weight"] == (1000, 48)
    assert [shapes[f"embeddings.{i}.weight"] for i in range(3)] == [(1000, 192), (1000, 768), (1000, 3072)]
    assert shapes["conv_codec.weight"] == (3072, 128, 1) and shapes["conv_codec.bias"] == (3072,)
    assert "encoders.0.conv.bias" not in shapes and "decoders.0.convtr.bias" not in shapes


@pytest.mark.parametrize(("bottleneck", "millions"), [({}, 165.6), ({"transformer": True}, 467.7),
                                                      ({"bilstm": True}, 562.1)])
def test_real_size_parameter_counts(bottleneck: dict, millions: float) -> None:
    assert count_parameters(_meta(UnetConfig(codec_dim=128, **bottleneck))) / 1e6 == pytest.approx(millions, abs=0.1)


def test_transformer_bottleneck_keys() -> None:
    shapes = {k: tuple(v.shape) for k, v in _meta(UnetConfig(codec_dim=128, transformer=True)).state_dict().items()}
    layer = "transformer.layers.5."
    assert shapes[layer + "self_attn.mha.in_proj_weight"] == (9216, 3072)
    assert shapes[layer + "self_attn.mha.out_proj.weight"] == (3072, 3072)
    assert shapes[layer + "linear1.weight"] == (2048, 3072) and shapes[layer + "linear2.weight"] == (3072, 2048)
    assert {layer + f"norm{i}.{p}" for i in (1, 2) for p in ("weight", "bias")} <= set(shapes)
    assert "transformer.layers.6.linear1.weight" not in shapes
    assert not any(k.endswith("in_proj_bias") or k.endswith("out_proj.bias") for k in shapes)  # bias_attn False


def test_output_matches_input_length_and_condition_matters() -> None:
    torch.manual_seed(0)
    unet = DiffusionUnet(UnetConfig(hidden=8, depth=3, growth=2, stride=8, kernel=16, codec_dim=16,
                                    transformer=True)).eval()
    x = torch.randn(2, 1, 8001)  # not a stride multiple
    condition = torch.randn(2, 16, 13)
    out = unet(x, torch.tensor([3, 900]), condition)
    assert out.shape == x.shape
    assert not torch.allclose(out, unet(x, torch.tensor([3, 900]), torch.randn(2, 16, 13)))
    assert not torch.allclose(out, unet(x, torch.tensor([4, 900]), condition))
    with pytest.raises(ValueError, match="frames"):
        unet(x, 3, torch.randn(2, 16, 200))  # longer than twice the bottleneck


def test_without_a_bottleneck_module_the_condition_is_dropped_as_in_audiocraft() -> None:
    unet = DiffusionUnet(UnetConfig(hidden=8, depth=2, growth=2, codec_dim=16)).eval()
    x = torch.randn(1, 1, 4000)
    torch.testing.assert_close(unet(x, 5, torch.randn(1, 16, 7)), unet(x, 5, torch.randn(1, 16, 7)))
