"""Preempt a tiny run at every step boundary (and during validation and checkpoint writes), resume it, and compare.

    python bench/preemption_sweep.py [--steps 17] [--strategy single|fsdp2|both] [--async-save] [--no-validation]
                                     [--rank R]

For each trigger, a run of `recipes/tiny/small-fsdp.yaml` (FSDP2 over 2 gloo ranks) or `small-full.yaml` (one
process) is preempted by `tests.finetune.helpers.PreemptAt` (the SIGUSR1 handler called at a chosen point: no timed
signal), resumed with `--ckpt_path last`, and its final trainable weights and EMA are compared bit for bit with an
uninterrupted run's. Both recipes validate (unless `--no-validation`) and generate training samples every 10 steps and
checkpoint every 10, as the recipes do, so the sweep crosses the interval save, a validation and sample generation.
Prints one line per trigger: the step the checkpoint was taken at, and "exact" or how many tensors differ. The runs
of one strategy go through one process (group): `tests/run_recipes.py`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from finetune.checkpoints.safe_load import safe_torch_load  # noqa: E402
from tests.helpers import run_fits  # noqa: E402


def state_of(run: Path) -> dict:
    ckpt = safe_torch_load(run / "checkpoints" / "last.ckpt")
    return {"step": ckpt["global_step"], "weights": ckpt["state_dict"], "ema": ckpt["mgft"]["ema"]["shadow"]}


def differing(a: dict, b: dict) -> int:
    return sum(not torch.equal(a[group][k], b[group][k]) for group in ("weights", "ema") for k in a[group])


def sweep(strategy: str, steps: int, models: Path, shards: Path, work: Path, async_save: bool,
          validation: bool, rank: int | None) -> None:
    recipe = "recipes/tiny/small-fsdp.yaml" if strategy == "fsdp2" else "recipes/tiny/small-full.yaml"
    common = ["--config", str(ROOT / recipe), "--model.pretrained", str(models / "musicgen-small"), "--data.shards",
              str(shards), "--trainer.logger", "false", "--trainer.max_steps", str(steps), "--model.dropout", "0.1"]
    if validation:
        common += ["--data.val_shards", str(shards)]
    if strategy == "fsdp2" and async_save:
        common += ["--trainer.strategy.init_args.async_save", "true"]
    triggers = [(k, "batch_end") for k in range(1, steps - 1)] + [(10, "validation")] * validation + [(10, "save")]
    cases = [{"name": "reference", "args": ["fit", *common, "--trainer.default_root_dir", str(work / "reference")]}]
    for step, where in triggers:
        root = str(work / f"{where}-{step}")
        cases.append({"name": f"{where}-{step}", "args": [
            "fit", *common, "--trainer.default_root_dir", root, "--trainer.callbacks+=tests.finetune.helpers.PreemptAt",
            "--trainer.callbacks.step", str(step), "--trainer.callbacks.where", where,
            *(["--trainer.callbacks.ranks", f"[{rank}]"] if rank is not None else [])]})
        cases.append({"name": f"{where}-{step}-resumed", "args": ["fit", *common, "--trainer.default_root_dir", root,
                                                                  "--ckpt_path", "last"]})
    results, _ = run_fits(cases, work, 2 if strategy == "fsdp2" else 1, timeout=3000)
    reference = state_of(work / "reference")
    print(f"{strategy}{' (async save)' if async_save else ''}: {steps}-step run, interval checkpoint, "
          f"{'validation and ' if validation else ''}samples every 10 steps; preempted on "
          f"{'every rank' if rank is None else f'rank {rank} only'}")
    for step, where in triggers:
        name = f"{where}-{step}"
        if not (results.get(name, {}).get("ok") and results.get(f"{name}-resumed", {}).get("ok")):
            print(f"  {where} of step {step}: failed ({results.get(name)}, {results.get(name + '-resumed')})")
            continue
        stopped = results[name]["step"]
        got = state_of(work / name)
        n = differing(got, reference)
        verdict = "exact" if got["step"] == reference["step"] and n == 0 else f"{n} tensors differ"
        print(f"  {where} of step {step}: stopped after step {stopped}, resumed to {got['step']}: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=17)
    parser.add_argument("--strategy", choices=["single", "fsdp2", "both"], default="both")
    parser.add_argument("--async-save", action="store_true", help="FSDP2 writes checkpoints asynchronously")
    parser.add_argument("--no-validation", action="store_true", help="no val shards (as recipes/tiny/small-fsdp.yaml)")
    parser.add_argument("--rank", type=int, default=None, help="preempt this rank only (the others learn it from it)")
    args = parser.parse_args()
    from data_prep.prep import prep
    from testkit.synth import synth_catalog
    from testkit.tiny_models import tiny_models

    with tempfile.TemporaryDirectory(prefix="mgft-preempt-") as tmp:
        work = Path(tmp)
        tiny_models(str(work / "models"), only=["encodec_32khz", "musicgen-small"])
        synth_catalog(str(work / "catalog"), tracks=6, seconds=8.0, seed=3)
        prep(input=str(work / "catalog"), output=str(work / "shards"), codec=str(work / "models" / "encodec_32khz"),
             channels=1, segment_seconds=2.0, shard_max_samples=6)
        for strategy in (["single", "fsdp2"] if args.strategy == "both" else [args.strategy]):
            (work / strategy).mkdir()
            sweep(strategy, args.steps, work / "models", work / "shards", work / strategy, args.async_save,
                  not args.no_validation, args.rank)


if __name__ == "__main__":
    main()
