"""`mgft export`: a fine-tune as a transformers model, an audiocraft export, or both, each with a model card.

    mgft export runs/x/checkpoints/last.ckpt --out exports/x --format both
    mgft export runs/x/checkpoints/last.ckpt --out exports/x-adapter --adapter-only

LoRA adapters are merged into the weights (or saved alone as a peft adapter with `--adapter-only`); EMA weights are
exported when the run kept an EMA, as audiocraft exports its EMA `best_state`. The transformers export loads with
plain `from_pretrained` of the right class; the audiocraft export is a folder with `state_dict.bin` and
`compression_state_dict.bin`, the layout `MusicGen.get_pretrained(DIR)` reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml

from data_prep.schema import SPECIAL_TOKEN_ID, STATS_FILE
from finetune.architectures import LORA_TARGETS


def merge_lora(model) -> int:
    """Fold every LoRA adapter into its base layer and put the plain layer back; returns how many were merged."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], module.get_base_layer())
            merged += 1
    return merged


def run_summary(ckpt: Path) -> dict[str, Any]:
    """What the model card reports: the run's resolved config and the data's prep stats, when they can be found."""
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.exists() else None
    stats = None
    shards = ((config or {}).get("data") or {}).get("shards")
    if shards:
        shard_dir = Path(shards) if Path(shards).is_dir() else Path(shards).parent
        if (shard_dir / STATS_FILE).exists():
            stats = json.loads((shard_dir / STATS_FILE).read_text())
    return {"config": config, "config_text": config_path.read_text() if config else None, "stats": stats}


def model_card(base: str, summary: dict[str, Any], validation: dict[str, float] | None, fmt: str, lora: bool) -> str:
    """A README.md model card: base model, data summary (hours, tracks, licenses), config, final metrics."""
    stats = summary.get("stats")
    lines = [
        "---",
        "library_name: transformers" if fmt == "hf" else "library_name: audiocraft",
        f"base_model: {base}",
        "tags: [musicgen, text-to-audio, mgft]",
        "---",
        f"# Fine-tune of {base}",
        "",
        f"Trained with mgft ({'LoRA, merged' if lora else 'full fine-tune'}); exported as "
        f"{'transformers' if fmt == 'hf' else 'audiocraft'} files.",
        "",
    ]
    if fmt == "hf":
        # mgft trains and generates with audiocraft's position table (finetune.lm.load.use_audiocraft_positions).
        lines += [
            "Note: the model was trained with audiocraft's sinusoidal position table. Plain transformers builds its "
            "own (the same formula computed another way in fp32: up to 1.2e-4 apart within 1,500 positions), so its "
            "logits differ slightly from mgft's; `mgft generate` on this folder uses audiocraft's table.",
            "",
        ]
    lines += ["## Training data"]
    if stats:
        lines += [
            f"- {stats['tracks_kept']} tracks, {stats['hours_kept']:.2f} hours, {stats['segments']} segments "
            f"({stats['tracks_rejected']} inputs refused at prep)",
            "- Licenses:",
            *[f"  - {lic}: {row['tracks']} tracks, {row['hours']:.2f} h" for lic, row in stats["by_license"].items()],
        ]
    else:
        lines.append("- The prep stats of the training shards were not found next to the run; licenses unknown.")
    # The last validation, not the last logged values: those mix the last train step with an older validation.
    lines += ["", "## Final metrics", ""]
    if validation:
        lines.append(f"Validation at step {int(validation['step'])}:")
        lines += [f"- {k}: {v:.4f}" for k, v in sorted(validation.items()) if k != "step"]
    else:
        lines.append("- no validation ran (set data.val_shards)")
    if summary.get("config_text"):
        lines += ["", "## Training config", "", "```yaml", summary["config_text"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def export_hf(module, out: Path) -> Path:
    """transformers files: `save_pretrained` of the composite model, tokenizer and audiocraft-like generation config."""
    model = module.model
    model.save_pretrained(out)
    module.tokenizer.save_pretrained(out)
    generation = model.generation_config
    # audiocraft's sampling defaults (docs/fidelity.md); transformers' own default top_k is 50. transformers counts the
    # BOS column and the 3 delayed steps in max_length (frames = max_length - 4), so 1504 gives audiocraft's 30 s.
    generation.update(do_sample=True, top_k=250, temperature=1.0, guidance_scale=3.0, max_length=1504,
                      decoder_start_token_id=SPECIAL_TOKEN_ID, pad_token_id=SPECIAL_TOKEN_ID,
                      bos_token_id=SPECIAL_TOKEN_ID)
    generation.save_pretrained(out)
    return out


def export(
    ckpt: str,
    *,
    out: str,
    format: Literal["hf", "audiocraft", "both"] = "both",
    adapter_only: bool = False,
    trust_checkpoint: bool = False,
) -> dict[str, str]:
    """Export an mgft checkpoint for transformers and/or audiocraft, with a model card.

    Args:
        ckpt: An mgft checkpoint (`checkpoints/last.ckpt` of a run).
        out: Output folder (`both` writes `out/hf` and `out/audiocraft`).
        format: hf, audiocraft or both.
        adapter_only: For a LoRA run, save only the peft adapter (`adapter_config.json`, `adapter_model.safetensors`)
            for the decoder instead of merged weights.
        trust_checkpoint: Allow checkpoints that need arbitrary unpickling (never for files you did not make).

    Returns:
        Format name -> folder written.
    """
    from finetune.checkpoints.audiocraft import audiocraft_xp_cfg, write_audiocraft_export
    from finetune.lm.module import MusicGenLM

    module, checkpoint = MusicGenLM.from_checkpoint(ckpt, trust_checkpoint)
    hp = checkpoint["hyper_parameters"]
    lora = hp.get("lora_rank", 0) > 0
    summary = run_summary(Path(ckpt))
    validation = checkpoint.get("mgft", {}).get("validation")
    root = Path(out)
    written: dict[str, str] = {}
    if adapter_only:
        if not lora:
            raise ValueError("--adapter-only needs a LoRA run (model.lora_rank > 0)")
        from peft import LoraConfig, get_peft_model_state_dict
        from safetensors.torch import save_file

        root.mkdir(parents=True, exist_ok=True)
        state = get_peft_model_state_dict(module.model.decoder)
        save_file({k: v.contiguous() for k, v in state.items()}, root / "adapter_model.safetensors")
        LoraConfig(r=hp["lora_rank"], lora_alpha=hp["lora_alpha"], lora_dropout=hp["lora_dropout"],
                   target_modules=hp.get("lora_targets") or list(LORA_TARGETS),
                   base_model_name_or_path=hp["pretrained"]).save_pretrained(root)
        (root / "README.md").write_text(model_card(hp["pretrained"], summary, validation, "hf", lora))
        return {"adapter": str(root)}
    if lora:
        merge_lora(module.model)
    formats = ["hf", "audiocraft"] if format == "both" else [format]
    for fmt in formats:
        target = root / fmt if format == "both" else root
        target.mkdir(parents=True, exist_ok=True)
        if fmt == "hf":
            export_hf(module, target)
        else:
            write_audiocraft_export(module.model, target, xp_cfg=audiocraft_xp_cfg(module.model))
        (target / "README.md").write_text(model_card(hp["pretrained"], summary, validation, fmt, lora))
        written[fmt] = str(target)
    print("\n".join(f"exported {fmt}: {path}" for fmt, path in written.items()))
    return written
