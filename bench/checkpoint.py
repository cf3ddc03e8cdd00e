"""How long a sharded checkpoint stalls training: DCP `save` vs `async_save`, FSDP2 over N processes.

    python bench/checkpoint.py [--model musicgen-small] [--ranks 2] [--layers 24] [--out bench/out/ckpt]

Each rank builds the real-size MusicGen decoder (random weights, transformers' `MusicgenForCausalLM`), shards it
with `finetune.training.fsdp.ShardedStrategy`'s layout (`fully_shard` per layer), takes one AdamW step so the
optimizer state exists, then writes the model + AdamW state through DCP three times each way. The stall is the time
until the call returns: the whole write for `save`, the copy to host memory for `async_save` (the write goes on in a
background thread; the total is timed to its end). CPU/gloo by default; `--device cuda` on a GPU machine (one GPU per
rank).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _run(rank: int, args: argparse.Namespace) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import MusicgenForCausalLM

    from testkit.tiny_models import musicgen_config

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
    backend = "nccl" if args.device == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=args.ranks)
    device = torch.device(args.device, rank) if args.device == "cuda" else torch.device("cpu")
    if args.device == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(0)
    config = musicgen_config(args.model, "real").decoder
    if args.layers:
        config.num_hidden_layers = args.layers
    model = MusicgenForCausalLM(config).to(device)
    mesh = init_device_mesh(args.device, (args.ranks,))
    for layer in model.model.decoder.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(0, config.vocab_size, (config.num_codebooks, 50), device=device)
    model(input_ids=ids).logits.float().mean().backward()
    optimizer.step()
    group = dist.new_group(backend="gloo")  # what ShardedStrategy synchronizes checkpoints on
    state = {"state_dict": get_model_state_dict(model), "optimizer_0": get_optimizer_state_dict(model, optimizer)}
    params = sum(p.numel() for p in model.parameters())
    rows = []
    for mode in ("save", "async_save"):
        for i in range(args.repeats):
            folder = Path(args.out) / f"{mode}-{i}"
            if rank == 0 and folder.exists():
                shutil.rmtree(folder)
            dist.barrier()
            start = time.perf_counter()
            if mode == "save":
                dcp.save(state, checkpoint_id=folder, process_group=group)
                stall = total = time.perf_counter() - start
            else:
                future = dcp.async_save(state, checkpoint_id=folder, process_group=group)
                stall = time.perf_counter() - start
                future.result()
                total = time.perf_counter() - start
            dist.barrier()
            rows.append((mode, i, stall, total))
    if rank == 0:
        size = sum(f.stat().st_size for f in (Path(args.out) / "save-0").iterdir()) / 2**30
        print(f"{args.model} decoder, {config.num_hidden_layers} layers, {params / 1e6:.0f}M parameters, FSDP2 over "
              f"{args.ranks} {args.device} ranks; checkpoint (weights + AdamW) {size:.2f} GiB")
        print(f"{'mode':<11} {'try':>3} {'stall s':>8} {'total s':>8}")
        for mode, i, stall, total in rows:
            print(f"{mode:<11} {i:>3} {stall:>8.2f} {total:>8.2f}")
        for mode in ("save", "async_save"):
            best = min(r[2] for r in rows if r[0] == mode)
            print(f"best stall, {mode}: {best:.2f} s")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="musicgen-small")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--layers", type=int, default=0, help="override the decoder depth (0: the real one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--port", type=int, default=29517)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "ckpt"))
    args = parser.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // args.ranks))
    mp.spawn(_run, args=(args,), nprocs=args.ranks, join=True)


if __name__ == "__main__":
    main()
