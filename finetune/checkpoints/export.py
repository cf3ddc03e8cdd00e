"""`mgft export`: a fine-tune as a transformers model, an audiocraft export, or both, each with a model card.

    mgft export runs/x/checkpoints/last.ckpt --out exports/x --format both
    mgft export runs/x/checkpoints/last.ckpt --out exports/x-adapter --adapter-only

LoRA adapters are merged into the weights (or saved alone as a peft adapter with `--adapter-only`); EMA weights are
exported when the run kept an EMA, as audiocraft exports its EMA `best_state`. The transformers export loads with
plain `from_pretrained` of the right class; the audiocraft export is a folder with `state_dict.bin` and
`compression_state_dict.bin`, the layout `MusicGen.get_pretrained(DIR)` reads.

Each export folder has a model card, `README.md`: base model, training data (prep stats, licenses, and the tag
distribution of the training shards' manifest as a table and as `catalog.png` beside the card), metrics, config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from data_prep.schema import SPECIAL_TOKEN_ID, STATS_FILE
from finetune.architectures import LORA_TARGETS
from finetune.evaluation.catalog import (
    CatalogSummary,
    TagCount,
    catalog_png,
    catalog_summary,
    run_config,
    run_folder,
    shard_folders,
    shard_set_name,
    tempo_range,
    top,
    training_shards,
)

CATALOG_PNG = "catalog.png"
PEFT_PREFIX = "base_model.model."
"""What `PeftModel` puts before a module's path in the adapter files it writes and reads."""
"""The tag distribution picture written beside the model card."""
CARD_TOP = 8
"""Values of each tag the model card's table lists."""


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
    """What the model card reports: the run's config, its training shards' prep stats and tag counts, where found.

    Args:
        ckpt: A checkpoint of the run (`RUN/checkpoints/last.ckpt`).

    Returns:
        `config` and `config_text` (None without `RUN/config.yaml`), `shards` (`data.shards`: a set or a weighted mix),
        `stats` ([(folder, its stats.json)], one per folder found) and `catalog` (`CatalogSummary` or None).
    """
    config, config_text = run_config(run_folder(ckpt))
    shards = training_shards(config)
    return {"config": config, "config_text": config_text if config else None, "shards": shards,
            "stats": prep_stats(shards) if shards else [], "catalog": catalog_summary(shards) if shards else None}


def prep_stats(shards: str | dict[str, float]) -> list[tuple[str, dict[str, Any]]]:
    """The `stats.json` of each folder of a shard set or mix, with the folder (none found: empty)."""
    found: dict[str, dict[str, Any]] = {}
    for spec in [shards] if isinstance(shards, str) else list(shards):
        for folder, _ in shard_folders(spec):
            path = folder / STATS_FILE
            if str(folder) not in found and path.is_file():
                found[str(folder)] = json.loads(path.read_text())
    return list(found.items())


def _stats_lines(stats: list[tuple[str, dict[str, Any]]]) -> list[str]:
    if not stats:
        return ["- The prep stats of the training shards were not found next to the run; licenses unknown."]
    lines = []
    for folder, row in stats:
        where = f"`{folder}`: " if len(stats) > 1 else ""  # a mix: one block per set
        lines += [
            f"- {where}{row['tracks_kept']} tracks, {row['hours_kept']:.2f} hours, {row['segments']} segments "
            f"({row['tracks_rejected']} inputs refused at prep)",
            "- Licenses:",
            *[f"  - {lic}: {n['tracks']} tracks, {n['hours']:.2f} h" for lic, n in row["by_license"].items()],
        ]
    return lines


def _cell(counts: list[tuple[Any, TagCount]]) -> str:
    return ", ".join(f"{str(value).replace('|', '/')} {count.tracks}" for value, count in counts)


def _catalog_lines(catalog: CatalogSummary | None, shards: str | dict[str, float] | None) -> list[str]:
    """The tag table of the training data and the link to its picture; one line when its manifest was not found."""
    if catalog is None:
        where = f"the training shards (`{shard_set_name(shards)}`)" if shards else "the training shards (unknown)"
        return [f"- No manifest.jsonl was found beside {where}: the tags of the training data are unknown."]
    tempo = tempo_range(catalog)
    rows = [("genre", _cell(top(catalog.genres, CARD_TOP))), ("moods", _cell(top(catalog.moods, CARD_TOP))),
            ("key", _cell(top(catalog.keys, CARD_TOP))),
            ("bpm", f"{tempo[0]:.0f}-{tempo[2]:.0f} BPM, median {tempo[1]:.0f}" if tempo else "")]
    lines = [f"Tags of the {catalog.tracks} tracks ({catalog.hours:.2f} hours) in the manifest of "
             f"`{catalog.shards}`; estimated: filled from the audio by `mgft prep --auto-tags`.", "",
             "| tag | tracks labeled | estimated | most frequent (tracks) |", "|---|---:|---:|---|"]
    for tag, cell in rows:
        labeled = catalog.labeled[tag]
        lines.append(f"| {'tempo' if tag == 'bpm' else tag} | {labeled.tracks} of {catalog.tracks} | "
                     f"{labeled.estimated} | {cell or '-'} |")
    return [*lines, "", f"![Genres, moods, keys and tempi of the training data]({CATALOG_PNG})"]


def model_card(base: str, summary: dict[str, Any], validation: dict[str, float] | None, fmt: str, lora: bool) -> str:
    """A README.md model card: base model, data summary (hours, tracks, licenses, tags), config, final metrics."""
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
    lines += ["## Training data", "", *_stats_lines(summary.get("stats") or []), "",
              *_catalog_lines(summary.get("catalog"), summary.get("shards"))]
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


def write_card(folder: Path, card: str, summary: dict[str, Any]) -> None:
    """`README.md`, and the `catalog.png` it links to when the training data's manifest was found."""
    (folder / "README.md").write_text(card)
    if summary.get("catalog") is not None:
        catalog_png(summary["catalog"], folder / CATALOG_PNG)


EXPORT_NAMES = (
    "README.md", CATALOG_PNG,  # the model card
    "config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
    "model.safetensors.index.json", "tokenizer*.json", "special_tokens_map.json", "spiece.model",  # transformers
    "state_dict.bin", "compression_state_dict.bin",  # audiocraft
    "adapter_config.json", "adapter_model.safetensors",  # peft
)
"""What an export writes into a folder (`hf/` and `audiocraft/` hold the same for `--format both`)."""


def _written_by_export(path: Path) -> bool:
    if path.is_dir():
        return path.name in ("hf", "audiocraft") and all(_written_by_export(p) for p in path.iterdir())
    return any(path.match(pattern) for pattern in EXPORT_NAMES)


def check_out_folder(out: Path, overwrite: bool) -> list[Path]:
    """What must go before exporting into `out`: nothing, or with `overwrite` an earlier export's files.

    Removing them first means an adapter and a merged model never end up mixed in one folder.

    Raises:
        ValueError: `out` is a file; it holds files and `overwrite` is off; or it holds files no export wrote.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    entries = sorted(out.iterdir()) if out.is_dir() else []
    if not entries:
        return []
    if not overwrite:
        raise ValueError(f"--out {out} already holds files ({', '.join(p.name for p in entries[:3])}"
                         f"{', ...' if len(entries) > 3 else ''}): choose a new folder, or pass --overwrite to replace "
                         "the earlier export there")
    foreign = [p.name for p in entries if not _written_by_export(p)]
    if foreign:
        raise ValueError(f"--out {out} holds files that no mgft export wrote ({', '.join(foreign[:3])}"
                         f"{', ...' if len(foreign) > 3 else ''}): --overwrite replaces an export only; choose another "
                         "folder")
    return entries


def _remove(entries: list[Path]) -> None:
    import shutil

    for path in entries:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


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
    overwrite: bool = False,
    trust_checkpoint: bool = False,
) -> dict[str, str]:
    """Export an mgft checkpoint for transformers and/or audiocraft, with a model card.

    Args:
        ckpt: An mgft checkpoint (`checkpoints/last.ckpt` of a run).
        out: Output folder (`both` writes `out/hf` and `out/audiocraft`).
        format: hf, audiocraft or both.
        adapter_only: For a LoRA run, save only the peft adapter (`adapter_config.json`, `adapter_model.safetensors`)
            for the decoder instead of merged weights.
        overwrite: Replace an earlier export in `out` (a folder holding anything else is still refused).
        trust_checkpoint: Allow checkpoints that need arbitrary unpickling (never for files you did not make).

    Returns:
        Format name -> folder written.
    """
    from finetune.checkpoints.audiocraft import audiocraft_xp_cfg, write_audiocraft_export
    from finetune.lm.module import MusicGenLM

    root = Path(out)
    earlier = check_out_folder(root, overwrite)  # before the model loads: a refused folder costs nothing
    module, checkpoint = MusicGenLM.from_checkpoint(ckpt, trust_checkpoint)
    hp = checkpoint["hyper_parameters"]
    lora = hp.get("lora_rank", 0) > 0
    summary = run_summary(Path(ckpt))
    validation = checkpoint.get("mgft", {}).get("validation")
    written: dict[str, str] = {}
    if adapter_only and not lora:
        raise ValueError("--adapter-only needs a LoRA run (model.lora_rank > 0)")
    _remove(earlier)  # the checkpoint loaded: the earlier export can go
    if adapter_only:
        from peft import LoraConfig, get_peft_model_state_dict
        from safetensors.torch import save_file

        root.mkdir(parents=True, exist_ok=True)
        # Keys as `PeftModel.save_pretrained` writes them for the whole MusicGen ("base_model.model.decoder.model.
        # decoder.layers.0..."), which `PeftModel.from_pretrained(MusicgenForConditionalGeneration...)` looks up;
        # relative to the decoder they matched no module, and peft left the adapter as initialized (lora_B = 0): the
        # fine-tune silently not applied.
        state = get_peft_model_state_dict(module.model.decoder)  # the adapters were injected there
        save_file({f"{PEFT_PREFIX}decoder.{k}": v.contiguous() for k, v in state.items()},
                  root / "adapter_model.safetensors")
        LoraConfig(r=hp["lora_rank"], lora_alpha=hp["lora_alpha"], lora_dropout=hp["lora_dropout"],
                   target_modules=hp.get("lora_targets") or list(LORA_TARGETS),
                   base_model_name_or_path=hp["pretrained"]).save_pretrained(root)
        write_card(root, model_card(hp["pretrained"], summary, validation, "hf", lora), summary)
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
        write_card(target, model_card(hp["pretrained"], summary, validation, fmt, lora), summary)
        written[fmt] = str(target)
    print("\n".join(f"exported {fmt}: {path}" for fmt, path in written.items()))
    return written
