"""`mgft plan`: its parameter formulas equal the built models' counts; its memory figures follow the recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finetune.training.plan import decoder_params, hub_config, make_plan, projection_params, t5_encoder_params

ROOT = Path(__file__).resolve().parents[3]


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("hub_id", ["facebook/musicgen-small", "facebook/musicgen-medium", "facebook/musicgen-large",
                                    "facebook/musicgen-melody", "facebook/musicgen-stereo-small"])
def test_parameter_formulas_equal_the_built_real_models(hub_id: str) -> None:
    from transformers import MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration

    config = hub_config(hub_id)
    melody = config.model_type == "musicgen_melody"
    klass = MusicgenMelodyForConditionalGeneration if melody else MusicgenForConditionalGeneration
    with torch.device("meta"):  # real size, nothing allocated
        model = klass(config)
    assert decoder_params(config) == _count(model.decoder)
    projections = _count(model.enc_to_dec_proj) + (_count(model.audio_enc_to_dec_proj) if melody else 0)
    assert projection_params(config) == projections
    assert t5_encoder_params(config) == _count(model.text_encoder)
    assert make_total(config) == _count(model)


def make_total(config) -> int:
    from finetune.training.plan import encodec_params

    return decoder_params(config) + projection_params(config) + t5_encoder_params(config) + encodec_params(config)


def test_plan_of_recipes() -> None:
    full = make_plan(str(ROOT / "recipes" / "musicgen-large" / "full-80gb-fsdp.yaml"))
    from transformers import MusicgenForConditionalGeneration

    with torch.device("meta"):
        built = MusicgenForConditionalGeneration(hub_config("facebook/musicgen-large"))
    assert full.params_total == _count(built)
    assert full.gpus == 8 and full.gradient_checkpointing  # the FSDP trainer config checkpoints decoder layers
    # FSDP2 shards gradients, AdamW moments and the EMA over the 8 GPUs: 16 bytes per trainable parameter / 8; and
    # the decoder's weights too (T5 and EnCodec stay whole), plus two gathered bf16 layers.
    assert full.optimizer_state_bytes == pytest.approx(16 * full.params_trainable / 8)
    layer = full.params_decoder / hub_config("facebook/musicgen-large").decoder.num_hidden_layers
    assert full.sharded_weights and full.weights_bytes == pytest.approx(
        4 * (full.params_t5 + full.params_encodec) + 4 * (full.params_decoder + full.params_projections) / 8
        + 4 * layer)
    on_one = make_plan(str(ROOT / "recipes" / "musicgen-large" / "full-80gb-fsdp.yaml"), gpus=1)
    assert on_one.weights_bytes > 4 * on_one.params_total  # one rank holds everything (plus the gathered layers)
    lora = make_plan(str(ROOT / "recipes" / "musicgen-medium" / "lora-24gb.yaml"), gpu_mem=24)
    assert lora.params_trainable < 0.03 * lora.params_total and lora.recipe_fits
    assert lora.activation_bytes_per_sample_checkpointed < lora.activation_bytes_per_sample / 5
    # 8.5 GB of sharded static state per GPU: a 16 GB card now takes a batch (9), an 8 GB card none.
    assert make_plan(str(ROOT / "recipes" / "musicgen-large" / "full-80gb-fsdp.yaml"), gpu_mem=16).recipe_fits
    small_card = make_plan(str(ROOT / "recipes" / "musicgen-large" / "full-80gb-fsdp.yaml"), gpu_mem=8)
    assert small_card.max_batch_per_gpu == 0 and not small_card.recipe_fits


def test_lora_formula_equals_peft(tiny_lm_dir: Path) -> None:
    from finetune.lm.module import MusicGenLM
    from finetune.training.plan import lora_params

    for name in ("musicgen-small", "musicgen-stereo-melody"):
        module = MusicGenLM(str(tiny_lm_dir / name), lora_rank=4, ema_decay=None)
        adapters = sum(p.numel() for n, p in module.model.named_parameters() if "lora_" in n)
        assert lora_params(module.model.config, 4, None) == adapters, name
