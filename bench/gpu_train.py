"""Training throughput of the real `mgft fit` step: frames/s, MFU, peak memory and host syncs per step.

    python bench/gpu_train.py [--models musicgen-small musicgen-medium] [--seconds 30] [--batch-size 4] [--steps 10]
    python bench/gpu_train.py --size tiny --device cpu --seconds 1 --steps 2      # what `bench/gpu.sh --dry-run` runs

Each row is a Lightning `Trainer.fit` of `MusicGenLM` (the module `mgft fit` trains, with its EMA, gradient clipping
and non-finite check) on random codes of `--seconds` (the step's cost does not depend on code values), bf16-mixed on
a GPU: full and LoRA fine-tunes, without and with `model.compile`, and the full fine-tune under FSDP2
(`ShardedStrategy`) on one device. Timed after `--warmup` steps (compilation, allocator warm-up). Syncs: host-device
synchronizations per step counted by `torch.cuda.set_sync_debug_mode("warn")` over the timed steps (Lightning's
own included). MFU: the model FLOPs of `bench/train_step.py::step_flops` against the GPU's dense bf16 peak, looked
up from its name (`--peak-tflops` overrides). Real-size models are random-weight builds (`mgft tiny-models --size
real`, written once under bench/out/real).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import step_flops  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, by a part of the device name.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "L40": 181.0,
               "A6000": 155.0, "A10": 125.0, "4090": 165.0, "V100": 125.0, "B200": 2250.0}


def peak_tflops(device: str) -> float | None:
    """The device's bf16 peak from `PEAK_TFLOPS`, or None (CPU, or a GPU not listed)."""
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


class Meter:
    """Times the steps after `warmup`, counts their host syncs and records the peak device memory."""

    def __init__(self, warmup: int, device: str) -> None:
        self.warmup, self.cuda = warmup, device.startswith("cuda")
        self.start = self.seconds = 0.0
        self.steps = self.syncs = 0
        self._caught: Any = None

    def callback(self) -> Any:
        import lightning as L

        meter = self

        class _Callback(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, idx) -> None:
                if trainer.global_step == meter.warmup and meter._caught is None:
                    if meter.cuda:
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                        torch.cuda.set_sync_debug_mode("warn")
                    meter._caught = warnings.catch_warnings(record=True)
                    meter._records = meter._caught.__enter__()
                    warnings.simplefilter("always")
                    meter.start = time.perf_counter()

            def on_train_end(self, trainer, pl_module) -> None:
                if meter._caught is None:
                    return
                if meter.cuda:
                    torch.cuda.set_sync_debug_mode("default")
                    torch.cuda.synchronize()
                meter.seconds = time.perf_counter() - meter.start
                meter.steps = trainer.global_step - meter.warmup
                meter.syncs = sum("synchronizing" in str(w.message) for w in meter._records)
                meter._caught.__exit__(None, None, None)

        return _Callback()


def random_batches(module: Any, n: int, batch_size: int, frames: int) -> list[dict[str, Any]]:
    """`n` batches of random codes `[B, K, T]` with captions, shaped as `finetune.lm.data.collate` makes them."""
    g = torch.Generator().manual_seed(0)
    return [{
        "codes": torch.randint(0, module.card, (batch_size, module.num_codebooks, frames), generator=g),
        "valid_frames": torch.full((batch_size,), frames),
        "captions": [f"an upbeat electronic track number {i} with drums and a plucked lead" for i in range(batch_size)],
        "keys": [str(i) for i in range(batch_size)],
        "skipped": 0,
        "chroma": None,
        "chroma_valid_frames": None,
    } for _ in range(n)]


def run(path: Path, args: argparse.Namespace, lora: bool, compile: bool, fsdp: bool) -> dict[str, Any]:
    """One row: fit `args.warmup + args.steps` steps and measure the last `args.steps`."""
    import lightning as L

    from finetune.lm.module import MusicGenLM
    from finetune.training.fsdp import ShardedStrategy

    torch.manual_seed(0)
    module = MusicGenLM(str(path), lora_rank=16 if lora else 0, compile=compile, warmup_steps=1,
                        gradient_checkpointing=args.gradient_checkpointing)
    frames = round(args.seconds * 50)
    batches = random_batches(module, args.warmup + args.steps, args.batch_size, frames)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda x: x)
    cuda = args.device.startswith("cuda")
    meter = Meter(args.warmup, args.device)
    trainer = L.Trainer(
        accelerator="gpu" if cuda else "cpu", devices=1, precision="bf16-mixed" if cuda else "32-true",
        strategy=ShardedStrategy(data_parallel_size=1) if fsdp else "auto", max_steps=args.warmup + args.steps,
        gradient_clip_val=1.0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[meter.callback()], default_root_dir=tempfile.mkdtemp())
    trainer.fit(module, train_dataloaders=loader)
    seconds = meter.seconds / max(1, meter.steps)
    peak = peak_tflops(args.device) if args.peak_tflops is None else args.peak_tflops
    mfu = step_flops(module.model, frames, args.batch_size) / seconds / (peak * 1e12) if peak else None
    memory = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return {"seconds": seconds, "frames_per_s": frames * args.batch_size / seconds, "mfu": mfu, "memory": memory,
            "syncs": meter.syncs / max(1, meter.steps) if cuda else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["musicgen-small", "musicgen-medium"])
    parser.add_argument("--size", choices=["real", "tiny"], default="real")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled rows")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args()
    if args.seconds <= 0 or args.batch_size < 1 or args.steps < 1 or args.warmup < 1:
        parser.error("--seconds must be > 0; --batch-size, --steps and --warmup >= 1")

    from testkit.tiny_models import tiny_models

    root = OUT / "real" if args.size == "real" else Path(tempfile.mkdtemp()) / "tiny"
    missing = [m for m in args.models if not (root / m).exists()]
    if missing:
        print(f"writing {args.size}-size random-weight {missing} to {root} (once)", flush=True)
        tiny_models(str(root), size=args.size, only=missing)
    kinds = [(False, False, False), (True, False, False)]
    if not args.no_compile:
        kinds += [(False, True, False), (True, True, False)]
    kinds.append((False, False, True))
    header = (f"{'model':<16} {'kind':<16} {'s/step':>8} {'frames/s':>10} {'MFU':>6} {'peak GiB':>9} "
              f"{'syncs/step':>10}")
    rows = []
    for name in args.models:
        for lora, compile, fsdp in kinds:
            kind = ("LoRA" if lora else "full") + (" compiled" if compile else "") + (" FSDP2" if fsdp else "")
            print(f"  {name} {kind} ...", file=sys.stderr, flush=True)
            r = run(root / name, args, lora, compile, fsdp)
            fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
            rows.append(f"{name:<16} {kind:<16} {r['seconds']:8.3f} {r['frames_per_s']:10.1f} "
                        f"{fmt(r['mfu'] and 100 * r['mfu'], '5.1f'):>6} {fmt(r['memory'], '9.2f'):>9} "
                        f"{fmt(r['syncs'], '10.1f'):>10}")
    cuda = args.device.startswith("cuda")
    device = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(f"mgft fit step, {args.size}-size, batch {args.batch_size} x {args.seconds:g} s, "
          f"{'bf16-mixed' if args.device.startswith('cuda') else 'fp32'}, {device}, {args.steps} timed steps "
          f"after {args.warmup}")
    print(header)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
