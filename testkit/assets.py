"""Writing a trained tiny model into the repository: the shared tail of `tiny_codec.main` and `tiny_htdemucs.main`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def asset_arguments(description: str, asset: Path, train_tracks: int) -> argparse.ArgumentParser:
    """The options every training script takes: where to write, the seed, the size of the training catalog."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=asset)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-tracks", type=int, default=train_tracks,
                        help="tracks of the training catalog (fewer only for a quick check of the script)")
    return parser


def pin_threads() -> float:
    """Use at most 2 threads (the thread count changes float summation order) and return the start time."""
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    return time.time()


def write_asset(model, out: Path, name: str, started: float, quality: dict[str, float]) -> None:
    """Save the model's state dict as safetensors and print the time taken, the size and the quality figures."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    print(f"{name}: {time.time() - started:.0f} s, {out} ({out.stat().st_size / 1e6:.2f} MB)")
    for key, value in quality.items():
        print(f"  {key:<20} {value:.3f}")
