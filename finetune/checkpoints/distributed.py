"""Read a distributed (DCP) checkpoint folder, as the FSDP2 trainer writes it, into one ordinary checkpoint dict.

    checkpoints/last.ckpt/            a folder (finetune/training/fsdp.py)
        __0_0.distcp, __1_0.distcp    each rank's shards of the weights, AdamW state and EMA
        .metadata                     DCP's index of every tensor (global shape, which file holds which piece)
        meta.pt                       the rest: loop state, hyperparameters, mgft's extras

`read_distributed_checkpoint` gathers every tensor whole in a single process, without a process group, and returns
what a single-file checkpoint holds: `state_dict` (full tensors), `optimizer_states` (keyed by parameter index, as
`torch.optim.Optimizer.state_dict()`), the EMA in `mgft.ema.shadow`, and the rest of `meta.pt`. So `mgft export`,
`mgft eval`, `mgft generate`, and a single-device resume read a sharded run's checkpoint as they read any other.
"""

from __future__ import annotations

import os
from itertools import chain
from pathlib import Path
from typing import Any

from finetune.checkpoints.integrity import META_FILE, check_checkpoint, is_distributed_checkpoint

__all__ = ["META_FILE", "SHARDED_PREFIX", "is_distributed_checkpoint", "read_distributed_checkpoint"]

SHARDED_PREFIX = "sharded."  # DCP entries of sharded tensors found outside the model and optimizer states (the EMA)


def _indexed_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """DCP's optimizer state (keyed by parameter name) -> `Optimizer.state_dict()`'s (keyed by position).

    `get_optimizer_state_dict` lists each group's parameters by name in the optimizer's order, so positions follow
    from the groups in order, which is how `Optimizer.state_dict()` numbers them.
    """
    names = list(chain.from_iterable(group["params"] for group in state["param_groups"]))
    index = {name: i for i, name in enumerate(names)}
    groups = [{**group, "params": [index[n] for n in group["params"]]} for group in state["param_groups"]]
    return {"state": {index[n]: s for n, s in state["state"].items()}, "param_groups": groups}


def fill_sharded(tree: Any, loaded: dict[str, Any]) -> Any:
    """`meta.pt`'s tree with each `{"__sharded__": path}` marker replaced by `loaded[SHARDED_PREFIX + path]`."""
    if isinstance(tree, dict):
        if set(tree) == {"__sharded__"}:
            return loaded[SHARDED_PREFIX + tree["__sharded__"]]
        return {k: fill_sharded(v, loaded) for k, v in tree.items()}
    return tree


def sharded_paths(tree: Any) -> list[str]:
    """The paths of the `{"__sharded__": path}` markers in `meta.pt`'s tree."""
    if isinstance(tree, dict):
        if set(tree) == {"__sharded__"}:
            return [tree["__sharded__"]]
        return [path for value in tree.values() for path in sharded_paths(value)]
    return []


def read_distributed_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Every tensor of a DCP checkpoint folder, whole, in this process, plus its `meta.pt`: one checkpoint dict.

    Args:
        path: The folder (`checkpoints/last.ckpt`).

    Returns:
        The checkpoint as a single-file save holds it (see the module docstring).
    """
    import torch
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    folder = Path(path)
    check_checkpoint(folder)  # every shard file listed and whole, meta.pt readable: else one line naming what is not
    meta = torch.load(folder / META_FILE, map_location="cpu", weights_only=True)  # plain containers and tensors only
    # Every stored tensor, whole, without a process group (the loader behind DCP's own dcp_to_torch_save).
    tensors = _load_state_dict_from_keys(checkpoint_id=str(folder))
    optimizers = sorted((k for k in tensors if k.startswith("optimizer_")), key=lambda k: int(k.split("_")[1]))
    checkpoint = fill_sharded(meta, tensors)
    checkpoint["state_dict"] = tensors["state_dict"]
    checkpoint["optimizer_states"] = [_indexed_optimizer_state(tensors[k]) for k in optimizers]
    return checkpoint
