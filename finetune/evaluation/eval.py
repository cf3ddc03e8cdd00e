r"""`mgft eval`: what a fine-tune did, measured on held-out shards, against its base model.

    mgft eval --model runs/x/checkpoints/last.ckpt --baseline facebook/musicgen-small --data.shards data/val \
        --out reports/x [--num-samples 32] [--decoder encodec|mbd] [--embedder encodec|clap --clap PATH]

For the model (and the baseline, side by side):

1. validation cross-entropy and perplexity per codebook over the held-out shards (audiocraft's masked loss, no
   condition dropout); for melody models also with each sample given another sample's melody, whose difference
   (`melody_gain`, nats per code) says whether the model uses its melody at all;
2. generation from the held-out captions (and, for melody models, their melodies), as long as each held-out segment;
3. Frechet audio distance between the generated and the held-out audio (the shards' `audio.flac`; without
   `--keep-audio` at prep, the EnCodec resynthesis of their codes), on EnCodec latents or CLAP embeddings;
4. for melody models, the chroma cosine similarity of the generated audio to the held-out audio whose melody
   conditioned it (audiocraft's argmax chroma metric).

Writes `metrics.json`, `report.html` (self-contained: metrics table, loss curves from the run's `metrics.jsonl`,
the tag distribution of the held-out and the training catalog from their shards' `manifest.jsonl`, spectrograms and
chroma of generated vs reference, audio players), the WAVs and pictures under `samples/`, and logs the same to wandb
(offline unless an API key is configured).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


@dataclass
class EvalData:
    """Held-out data.

    Attributes:
        shards: Held-out shards (folder, glob or brace pattern) written by `mgft prep` (ideally with --keep-audio).
        batch_size: Batch size for the cross-entropy pass.
        max_samples: Cap on the held-out segments scored for cross-entropy (None: all).
    """

    shards: str
    batch_size: int = 8
    max_samples: int | None = None


def evaluate(
    *,
    model: str,
    data: EvalData,
    out: str,
    baseline: str | None = None,
    num_samples: int = 16,
    decoder: Literal["encodec", "mbd"] = "encodec",
    mbd: str = "facebook/multiband-diffusion",
    embedder: Literal["encodec", "clap"] = "encodec",
    clap: str | None = None,
    batch_size: int = 4,
    top_k: int = 250,
    cfg: float = 3.0,
    seed: int = 0,
    run_dir: str | None = None,
    wandb: bool = True,
    trust_checkpoint: bool = False,
    audiocraft_base: str | None = None,
) -> dict[str, Any]:
    """Evaluate a fine-tuned MusicGen (and optionally its base) on held-out shards; write metrics and a report.

    Args:
        model: An mgft checkpoint (.ckpt), a transformers folder or a hub id.
        data: Held-out shards and the cross-entropy batch settings.
        out: Output folder for metrics.json, report.html and samples/.
        baseline: The model to compare with (usually the fine-tune's base), evaluated identically.
        num_samples: Held-out segments generated and compared (FAD, chroma).
        decoder: Token decoder for the generations (encodec or mbd).
        mbd: MBD file for `--decoder mbd`.
        embedder: FAD embeddings: EnCodec's continuous latent (no download) or CLAP (needs `--clap`).
        clap: A local transformers CLAP checkpoint for `--embedder clap`.
        batch_size: Prompts generated together.
        top_k: Sampling top-k (audiocraft 250).
        cfg: Classifier-free guidance (audiocraft 3.0).
        seed: Sampling seed (the same for model and baseline).
        run_dir: The training run folder whose `metrics.jsonl` gives the loss curves and whose `config.yaml` names
            the training shards (default: found from a .ckpt).
        wandb: Also log the metrics and media to wandb (offline unless an API key is configured).
        trust_checkpoint: Allow checkpoints that need arbitrary unpickling (never for files you did not make).
        audiocraft_base: For an audiocraft export as --model or --baseline: the transformers MusicGen (folder or hub
            id) whose T5, EnCodec and tokenizer it uses (default: the facebook/musicgen-* hub model).

    Returns:
        The metrics written to metrics.json.
    """
    # Here, not at the top: `mgft eval -h` must not wait for torch, transformers and Lightning.
    from finetune.evaluation.catalog import run_folder
    from finetune.evaluation.heldout import evaluate_model, held_out, write_samples
    from finetune.evaluation.metrics import ClapEmbedder, EncodecEmbedder
    from finetune.evaluation.report import loss_history, write_report
    from finetune.inference.load import check_model_arg, load_for_inference

    if embedder == "clap" and not clap:
        raise ValueError("--embedder clap needs --clap PATH (a local transformers CLAP checkpoint)")
    check_model_arg("--model", model)  # both, before anything is written or loaded
    if baseline is not None:
        check_model_arg("--baseline", baseline)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if run_dir is None and model.endswith(".ckpt"):
        run_dir = str(run_folder(Path(model)))
    # Cheap, and before the models: a manifest that cannot be read fails here, not after an hour of generation.
    catalogs = catalog_pictures(out_dir, data.shards, Path(run_dir) if run_dir else None)
    module = load_for_inference(model, trust_checkpoint=trust_checkpoint, audiocraft_base=audiocraft_base)
    codec = module.model.audio_encoder  # frozen, so the fine-tune's EnCodec is the base model's
    held = held_out(data.shards, num_samples, codec)
    chooser = ClapEmbedder(clap) if embedder == "clap" else EncodecEmbedder(codec)
    common = {"decoder": decoder, "mbd": mbd, "seed": seed, "batch_size": batch_size, "top_k": top_k, "cfg": cfg}
    results = {"model": evaluate_model("model", model, module, data, held, chooser, out_dir, **common)}
    del module
    if baseline is not None:
        base = load_for_inference(baseline, trust_checkpoint=trust_checkpoint, audiocraft_base=audiocraft_base)
        results["baseline"] = evaluate_model("baseline", baseline, base, data, held, chooser, out_dir, **common)
    reference_rows = write_samples(out_dir / "samples" / "reference", held.audio, held.captions, held.chroma)

    history = loss_history(Path(run_dir)) if run_dir else []
    metrics = {name: result["metrics"] for name, result in results.items()}
    metrics["settings"] = {"shards": data.shards, "num_samples": len(held.keys), "seconds": held.seconds,
                           "decoder": decoder, "embedder": chooser.name, "top_k": top_k, "cfg": cfg, "seed": seed}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    report = write_report(out_dir / "report.html", metrics, {k: v["samples"] for k, v in results.items()},
                          reference_rows, history, catalogs)
    if wandb:
        _log_wandb(out_dir, metrics, results, catalogs)
    print(json.dumps({k: v for k, v in metrics.items() if k != "settings"}, indent=2))
    print(f"eval: metrics in {out_dir / 'metrics.json'}, report in {report}")
    return metrics


def catalog_pictures(out_dir: Path, heldout: str, run_dir: Path | None) -> list[dict[str, str | None]]:
    """The tag distribution pictures of the held-out shards and, when the run's config names them, the training shards.

    Args:
        out_dir: Where the PNGs go (`catalog_heldout.png`, `catalog_training.png`).
        heldout: The evaluated shards.
        run_dir: The training run folder, or None.

    Returns:
        One row per shard set: `name` (heldout or training), `label` (its heading), `shards` (the set's name) and
        `png` (None when no manifest was found beside the shards).
    """
    from finetune.evaluation.catalog import catalog_png, catalog_summary, run_config, shard_set_name, training_shards

    train = training_shards(run_config(run_dir)[0]) if run_dir else None
    if isinstance(train, str) and os.path.realpath(train) == os.path.realpath(heldout):  # one picture, said so
        sets = [("training and held-out", "heldout", heldout)]
    else:
        sets = [("held-out", "heldout", heldout)] + ([("training", "training", train)] if train else [])
    rows: list[dict[str, str | None]] = []
    for label, stem, shards in sets:
        summary = catalog_summary(shards)
        png = catalog_png(summary, out_dir / f"catalog_{stem}.png") if summary else None
        rows.append({"name": stem, "label": label, "shards": shard_set_name(shards), "png": str(png) if png else None})
    return rows


def _log_wandb(out_dir: Path, metrics: dict[str, Any], results: dict[str, Any],
               catalogs: list[dict[str, str | None]]) -> None:
    import wandb as wb

    from finetune.training.loggers import Wandb

    logger = Wandb(project="mgft-eval", save_dir=str(out_dir), name=out_dir.name)
    run = logger.experiment
    for name, result in results.items():
        run.log({f"{name}/{k}": v for k, v in result["metrics"].items() if isinstance(v, int | float)})
        run.log({f"{name}/audio": [wb.Audio(r["wav"], caption=r["caption"]) for r in result["samples"]],
                 f"{name}/spectrogram": [wb.Image(r["spectrogram"], caption=r["caption"]) for r in result["samples"]]})
    pictures = {f"catalog/{c['name']}": wb.Image(c["png"], caption=c["shards"]) for c in catalogs if c["png"]}
    if pictures:
        run.log(pictures)
    run.summary.update({"settings": metrics["settings"]})
    run.finish()
