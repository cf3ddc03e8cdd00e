"""`mgft plan`: will a recipe fit, and at what batch size? Parameters, optimizer state and activations per GPU.

    mgft plan --config recipes/musicgen-medium/lora-24gb.yaml
    mgft plan --config recipes/musicgen-large/full-80gb-fsdp.yaml --gpus 8 --gpu-mem 80

Nothing is downloaded or allocated: the recipe is resolved as `mgft fit` would (`--print_config`), the architecture
comes from the checkpoint's config (local folder) or the known hub architectures, and every figure is a formula:

- parameters per module, written out from the config (decoder, projections, T5 encoder); EnCodec's are counted on a
  meta-device build. The tests check the formulas against built models.
- static memory per GPU: fp32 weights of every module (bf16-mixed keeps fp32 masters), and for the trainable ones
  fp32 gradients, AdamW's two moments and the optional EMA copy. FSDP2 (`finetune.training.fsdp.ShardedStrategy`)
  divides the decoder's and projections' weights and all trainable states (gradients, AdamW, EMA) over the GPUs,
  keeps T5 and EnCodec whole on each, and gathers two decoder layers at a time in bf16 (the running one and the
  prefetched next). FSDP1 (Lightning's `FSDPStrategy`, SHARD_GRAD_OP) divides only the trainable states.
- activations per 30 s sample (bf16, SDPA attention so no score matrix is kept): about 34 x S x D bytes per decoder
  layer (Korthikanti et al. 2022) without checkpointing, 2 x S x D per layer plus one recomputed layer with it, plus
  the logits and their gradient (K x S x 2048, 10 bytes per entry). S = frames + 1 (+ 235 chroma + text for melody).
- the largest batch per GPU that fits in 90% of the card after the static memory and a 1.5 GB CUDA context.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from finetune.architectures import LORA_TARGETS

GB = 1024**3
CUDA_CONTEXT_BYTES = 1.5 * GB
USABLE_FRACTION = 0.9
TEXT_TOKENS = 32  # a typical padded caption length; it only matters for melody models' prefix
CHROMA_FRAMES = 235

def hub_config(pretrained: str):
    """The composite config of a `facebook/musicgen-*` hub id, built offline, or a local folder's config."""
    from transformers import AutoConfig

    from finetune.architectures import musicgen_config

    if Path(pretrained).is_dir():
        return AutoConfig.from_pretrained(pretrained)
    if not pretrained.startswith("facebook/musicgen"):
        # A mistyped local folder must not be read as the hub model its last path part happens to name.
        raise ValueError(f"model.pretrained {pretrained!r} is no local folder and no hub MusicGen id "
                         "(facebook/musicgen-...): fix the recipe, or name the model with --pretrained")
    return musicgen_config(pretrained)


def decoder_params(config) -> int:
    """Parameters of the MusicGen decoder (`model.decoder`): embeddings, layers, final norm, heads."""
    d, dec = config.decoder.hidden_size, config.decoder
    k, vocab, ffn = dec.num_codebooks, dec.vocab_size, dec.ffn_dim
    melody = config.model_type == "musicgen_melody"
    attention = 4 * d * d  # q, k, v, out; no biases
    per_layer = attention + 2 * d + d * ffn + ffn * d + 2 * d  # self-attn + norm, fc1, fc2, final norm
    if not melody:
        per_layer += attention + 2 * d  # cross-attention + its norm
    return k * (vocab + 1) * d + dec.num_hidden_layers * per_layer + 2 * d + k * d * vocab


def projection_params(config) -> int:
    """`enc_to_dec_proj` (T5 -> decoder) and, for melody, `audio_enc_to_dec_proj` (chroma -> decoder)."""
    d, t5 = config.decoder.hidden_size, config.text_encoder.d_model
    total = t5 * d + d
    if config.model_type == "musicgen_melody":
        total += config.num_chroma * d + d
    return total


def t5_encoder_params(config) -> int:
    """Parameters of the T5 encoder (`T5EncoderModel`: shared embedding, layers, final norm)."""
    t5 = config.text_encoder
    d, inner, ff = t5.d_model, t5.num_heads * t5.d_kv, t5.d_ff
    gated = getattr(t5, "is_gated_act", False)
    per_layer = 4 * d * inner + d + (3 if gated else 2) * d * ff + d  # attention + norm, feed-forward + norm
    return t5.vocab_size * d + t5.num_layers * per_layer + t5.relative_attention_num_buckets * t5.num_heads + d


def encodec_params(config) -> int:
    """EnCodec's parameters, counted on a meta-device build (frozen; only its fp32 weights matter here)."""
    import torch
    from transformers import EncodecModel

    with torch.device("meta"):
        return sum(p.numel() for p in EncodecModel(config.audio_encoder).parameters())


def lora_params(config, rank: int, targets: list[str] | None) -> int:
    """Adapter parameters: rank x (in + out) per adapted linear of every decoder layer."""
    d, ffn = config.decoder.hidden_size, config.decoder.ffn_dim
    targets = targets or list(LORA_TARGETS)
    shapes = {"q_proj": (d, d), "k_proj": (d, d), "v_proj": (d, d), "out_proj": (d, d), "fc1": (d, ffn),
              "fc2": (ffn, d)}
    per_layer = sum(rank * sum(shapes[t]) for t in targets if t in shapes)
    if config.model_type != "musicgen_melody":  # the cross-attention projections share the target names
        per_layer += sum(rank * sum(shapes[t]) for t in targets if t in ("q_proj", "k_proj", "v_proj", "out_proj"))
    return config.decoder.num_hidden_layers * per_layer


@dataclass
class Plan:
    """The figures `mgft plan` prints (bytes are per GPU)."""

    recipe: str
    pretrained: str
    params_decoder: int
    params_projections: int
    params_t5: int
    params_encodec: int
    params_total: int
    params_trainable: int
    weights_bytes: float
    optimizer_state_bytes: float
    static_bytes: float
    activation_bytes_per_sample: float
    activation_bytes_per_sample_checkpointed: float
    gradient_checkpointing: bool
    sequence_length: int
    gpus: int
    sharded_weights: bool
    gpu_mem_gb: float
    recipe_batch_size: int
    max_batch_per_gpu: int
    recipe_fits: bool


def resolve_recipe(config: str) -> dict[str, Any]:
    """The recipe as `mgft fit --config X --print_config` resolves it (includes and dotted keys applied)."""
    from finetune.cli import run

    if not Path(config).is_file():
        raise ValueError(f"--config {config}: no such recipe file")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.suppress(SystemExit), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LightningCLI's notes about sys.argv and srun are noise here
        run(["fit", "--config", config, "--print_config"])
    resolved = yaml.safe_load(buffer.getvalue())
    if not isinstance(resolved, dict):
        raise ValueError(f"--config {config} does not parse as a recipe; `mgft fit --config {config} --print_config` "
                         "says why")
    return resolved


def make_plan(recipe_path: str, gpus: int | None = None, gpu_mem: float | None = None, seconds: float = 30.0,
              pretrained: str | None = None) -> Plan:
    """Compute the plan of a recipe (see the module docstring for the formulas); `pretrained` replaces its model."""
    recipe = resolve_recipe(recipe_path)
    model, trainer, data = recipe["model"], recipe["trainer"], recipe["data"]
    model["pretrained"] = pretrained or model["pretrained"]
    arch = hub_config(model["pretrained"])
    if model.get("mono_to_stereo"):
        arch.decoder.num_codebooks *= 2
        arch.decoder.audio_channels = 2
    p_dec, p_proj, p_t5, p_codec = decoder_params(arch), projection_params(arch), t5_encoder_params(arch), \
        encodec_params(arch)
    total = p_dec + p_proj + p_t5 + p_codec
    lora = int(model.get("lora_rank") or 0)
    trainable = lora_params(arch, lora, model.get("lora_targets")) if lora else p_dec + p_proj
    strategy = trainer.get("strategy")
    strategy_name = strategy.get("class_path", "") if isinstance(strategy, dict) else str(strategy or "")
    devices = trainer.get("devices")
    n_gpus = gpus or (int(devices) if str(devices).isdigit() else 1) * int(trainer.get("num_nodes") or 1)
    fsdp2 = strategy_name.endswith(("ShardedStrategy", "ModelParallelStrategy"))
    shard = n_gpus if fsdp2 or "FSDP" in strategy_name else 1
    ema = 4 if model.get("ema_decay", 0.99) else 0

    adapters = trainable if lora else 0  # LoRA adapters come on top of the base weights
    if fsdp2:
        layer = p_dec / arch.decoder.num_hidden_layers  # an upper bound: embeddings and heads spread over layers
        weights = 4.0 * (p_t5 + p_codec) + 4.0 * (p_dec + p_proj + adapters) / shard + 2 * 2.0 * layer
    else:
        weights = 4.0 * (total + adapters)  # fp32 masters, whole on every GPU
    states = (4 + 8 + ema) * trainable / shard  # grads + AdamW moments (+ EMA), sharded under FSDP
    static = weights + states

    d, layers, k = arch.decoder.hidden_size, arch.decoder.num_hidden_layers, arch.decoder.num_codebooks
    frames = round(seconds * 50)
    seq = frames + 1 + (CHROMA_FRAMES + TEXT_TOKENS if arch.model_type == "musicgen_melody" else 0)
    logits = 10.0 * k * seq * arch.decoder.vocab_size
    full = 34.0 * seq * d * layers + logits
    checkpointed = 2.0 * seq * d * layers + 34.0 * seq * d + logits
    checkpointing = bool(model.get("gradient_checkpointing")) or "activation_checkpointing" in json.dumps(strategy)
    per_sample = checkpointed if checkpointing else full
    memory = (gpu_mem or 80.0) * GB
    free = memory * USABLE_FRACTION - CUDA_CONTEXT_BYTES - static
    max_batch = max(int(free // per_sample), 0)
    batch = int(data.get("batch_size") or 1)
    return Plan(recipe=recipe_path, pretrained=model["pretrained"], params_decoder=p_dec, params_projections=p_proj,
                params_t5=p_t5, params_encodec=p_codec, params_total=total, params_trainable=trainable,
                weights_bytes=weights, optimizer_state_bytes=states, static_bytes=static,
                activation_bytes_per_sample=full, activation_bytes_per_sample_checkpointed=checkpointed,
                gradient_checkpointing=checkpointing, sequence_length=seq, gpus=n_gpus, sharded_weights=fsdp2,
                gpu_mem_gb=memory / GB,
                recipe_batch_size=batch, max_batch_per_gpu=max_batch, recipe_fits=batch <= max_batch)


def _gb(value: float) -> str:
    return f"{value / GB:7.2f} GB"


def plan(*, recipe: str, pretrained: str | None = None, gpus: int | None = None, gpu_mem: float | None = None,
         seconds: float = 30.0) -> dict:
    """Print the memory plan of a recipe: parameters, optimizer state, activations, the largest batch per GPU.

    Args:
        recipe: A recipe (what `mgft fit --config` takes; `mgft plan --config RECIPE` is accepted too).
        pretrained: The model in place of the recipe's `model.pretrained` (as `mgft fit --model.pretrained`): a
            local folder or a hub id.
        gpus: GPUs the run will use (default: the recipe's devices x num_nodes); FSDP shards over them.
        gpu_mem: Memory of one GPU in GB (default 80).
        seconds: Segment length of the training samples (30 s = 1500 frames, the recipes' default).

    Returns:
        The figures, as a dict.
    """
    p = make_plan(recipe, gpus, gpu_mem, seconds, pretrained)
    lines = [
        f"{p.recipe}: {p.pretrained}",
        f"  parameters     {p.params_total:>15,} total = decoder {p.params_decoder:,} + projections "
        f"{p.params_projections:,} + T5 {p.params_t5:,} + EnCodec {p.params_encodec:,}",
        f"  trainable      {p.params_trainable:>15,}",
        f"  weights (fp32)         {_gb(p.weights_bytes)}"
        f"{'   per GPU, decoder sharded (FSDP2), 2 layers gathered in bf16' if p.sharded_weights else ''}",
        f"  grads + AdamW (+ EMA)  {_gb(p.optimizer_state_bytes)}   per GPU, {p.gpus} GPU(s)",
        f"  activations / sample   {_gb(p.activation_bytes_per_sample)} without checkpointing, "
        f"{_gb(p.activation_bytes_per_sample_checkpointed).strip()} with (S = {p.sequence_length})",
        f"  largest batch per GPU  {p.max_batch_per_gpu:>7} on {p.gpu_mem_gb:g} GB "
        f"({'with' if p.gradient_checkpointing else 'without'} checkpointing, as the recipe runs)",
        f"  recipe batch {p.recipe_batch_size}: {'fits' if p.recipe_fits else 'DOES NOT FIT: lower data.batch_size, '}"
        f"{'' if p.recipe_fits else 'turn on gradient checkpointing, LoRA or FSDP'}",
    ]
    print("\n".join(lines))
    return asdict(p)
