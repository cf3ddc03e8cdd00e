"""Sharded training with FSDP2 (`fully_shard`), through Lightning's `ModelParallelStrategy`.

    mgft fit --config recipes/tiny/small-fsdp.yaml ...            (2 CPU processes, gloo: what `make test` runs)
    mgft fit --config recipes/musicgen-medium/full-80gb-fsdp.yaml  (configs/trainer/gpu-fsdp-bf16.yaml)

What is sharded (`shard_musicgen`): every decoder layer is its own FSDP unit (its parameters are gathered just before
the layer runs and freed after), the rest of the decoder (embeddings, final norm, LM heads) is one more unit, and the
trainable projections into the decoder (`enc_to_dec_proj`, melody's `audio_enc_to_dec_proj`) are units of their own,
because they are called outside the decoder's forward. The frozen T5 and EnCodec stay whole, replicated on every rank
and out of the optimizer: they are small next to the decoder and are called on their own, outside any FSDP unit.
Parameters become `DTensor`s sharded on dim 0; so do their gradients, the AdamW state and the EMA (built from the
sharded parameters, `MusicGenLM.configure_model`). LoRA adapters shard with the layer they sit in.

On GPU with bf16 the units compute in bf16 and reduce gradients in fp32 (FSDP2's `MixedPrecisionPolicy`, as
torchtitan), keeping fp32 master weights; on CPU everything is fp32.

Checkpoints (`ShardedStrategy.save_checkpoint`): a torch.distributed.checkpoint (DCP) folder, each rank writing its
shards (`.distcp`), rank 0 writing `meta.pt` (everything that is not a sharded tensor: loop state, hyperparameters,
mgft's extras). The folder is written under a temporary name and renamed into place, so `last.ckpt` is always a whole
checkpoint. DCP reshards on load: a checkpoint of N ranks resumes on M ranks, and `mgft export/eval/generate` read it
in a single process (`finetune.checkpoints.distributed.read_checkpoint`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from finetune.checkpoints.atomic import replace_with
from finetune.checkpoints.distributed import META_FILE, SHARDED_PREFIX, fill_sharded, sharded_paths


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer layers of a MusicGen or MusicGen-Melody `decoder` (`decoder.model.decoder.layers`)."""
    return model.decoder.model.decoder.layers


def shard_musicgen(model: torch.nn.Module, mesh: Any, bf16: bool) -> None:
    """Apply `fully_shard` to a transformers MusicGen (text or melody) in place; see the module docstring.

    Args:
        model: `MusicgenForConditionalGeneration` or `MusicgenMelodyForConditionalGeneration`.
        mesh: The data-parallel device mesh (1-D).
        bf16: Compute in bf16 and reduce gradients in fp32 (GPU); False keeps fp32 (CPU).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        # The last layer's parameters are needed again at once by backward: keep them gathered (torchtitan).
        fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=i < len(layers) - 1)
    fully_shard(model.decoder, mesh=mesh, mp_policy=policy)
    for name in ("enc_to_dec_proj", "audio_enc_to_dec_proj"):
        projection = getattr(model, name, None)
        if projection is not None and any(p.requires_grad for p in projection.parameters()):
            fully_shard(projection, mesh=mesh, mp_policy=policy)


def reshard(model: torch.nn.Module) -> None:
    """Free the gathered parameters of every FSDP2 unit in `model`: its next forward gathers the shards anew.

    A unit stays gathered after a forward that no backward follows (the last decoder layer keeps its weights for the
    backward it expects; validation and generation have none). Writes into the sharded parameters (the EMA swap)
    are not seen by such a unit until it is resharded. A no-op without FSDP2.
    """
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def is_dtensor(value: Any) -> bool:
    """Whether `value` is a torch `DTensor` (a sharded parameter, gradient or state)."""
    from torch.distributed.tensor import DTensor

    return isinstance(value, DTensor)


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all `tensors` together, over every rank's shards when they are `DTensor`s (one all-reduce)."""
    if not tensors:
        return torch.zeros(())
    norm = torch.nn.utils.get_total_norm(tensors, norm_type=2.0)
    return norm.full_tensor() if is_dtensor(norm) else norm


def _pull_sharded(tree: Any, path: str, out: dict[str, Any]) -> Any:
    """`tree` with every DTensor leaf moved into `out[path/to/leaf]` (and replaced by its key)."""
    if is_dtensor(tree):
        out[path] = tree
        return {"__sharded__": path}
    if isinstance(tree, dict):
        return {k: _pull_sharded(v, f"{path}/{k}", out) for k, v in tree.items()}
    return tree


class ShardedStrategy(ModelParallelStrategy):
    """`ModelParallelStrategy` (FSDP2) whose distributed checkpoints are written atomically and hold the EMA.

    Args:
        data_parallel_size: Ranks the model is sharded over ("auto": all of them).
        tensor_parallel_size: Tensor-parallel ranks (mgft shards only: 1).
        async_save: Write checkpoints with DCP's `async_save`: training goes on while the shards are written by a
            background thread, from a copy in host memory (costs host memory of one checkpoint). The previous
            asynchronous save is waited for before the next one starts and at the end of training.
        **kwargs: Other `ModelParallelStrategy` arguments (`timeout`, `process_group_backend`).
    """

    def __init__(self, data_parallel_size: int | str = "auto", tensor_parallel_size: int | str = 1,
                 async_save: bool = False, **kwargs: Any) -> None:
        super().__init__(data_parallel_size=data_parallel_size, tensor_parallel_size=tensor_parallel_size,
                         save_distributed_checkpoint=True, **kwargs)
        self.async_save = async_save
        self._pending: tuple[Any, Path, Path] | None = None  # (future, tmp folder, final path) of an async save
        self._group: Any = None  # the gloo group checkpoints synchronize on

    def setup_environment(self) -> None:
        """Resolve `data_parallel_size: auto` to every rank over the tensor-parallel size, then set up the mesh.

        Lightning's "auto" is the number of nodes (its tensor-parallel axis spans a node's GPUs), which with mgft's
        `tensor_parallel_size: 1` made any run of more than one GPU per node fail: 1 x 1 ranks is not the world size.
        """
        if self._data_parallel_size == "auto" and isinstance(self._tensor_parallel_size, int):
            self._data_parallel_size = self.num_nodes * self.num_processes // self._tensor_parallel_size
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """Write the DCP folder under a temporary name on every rank, then rename it into place (rank 0).

        The model and optimizer states are sharded tensors already; sharded tensors elsewhere in the checkpoint
        (the EMA) are moved into the DCP state too, so `meta.pt` holds no rank's shard in place of the others'.
        """
        import torch.distributed.checkpoint as dcp

        if storage_options is not None:
            raise TypeError("ShardedStrategy.save_checkpoint does not take storage_options")
        self.wait_for_checkpoint()
        path = Path(self.broadcast(str(filepath)))
        tmp = path.with_name(path.name + ".tmp")
        if self.is_global_zero and tmp.exists():
            shutil.rmtree(tmp)  # left by a run killed mid-write
        self.barrier("mgft-dcp-tmp")
        state: dict[str, Any] = {"state_dict": checkpoint.pop("state_dict")}
        state.update({f"optimizer_{i}": s for i, s in enumerate(checkpoint.pop("optimizer_states", []))})
        extra: dict[str, Any] = {}
        meta = _pull_sharded(checkpoint, "", extra)
        state.update({SHARDED_PREFIX + k: v for k, v in extra.items()})
        if self.is_global_zero:
            tmp.mkdir(parents=True)
            torch.save(meta, tmp / META_FILE)
        self.barrier("mgft-dcp-mkdir")
        if self._group is None:
            # A group of its own: an asynchronous save's last collective runs on a background thread, which must
            # not interleave with the training collectives of the default group (it deadlocks gloo).
            self._group = torch.distributed.new_group(backend="gloo")
        if self.async_save:
            self._pending = (dcp.async_save(state, checkpoint_id=tmp, process_group=self._group), tmp, path)
            return
        dcp.save(state, checkpoint_id=tmp, process_group=self._group)
        self._finish(tmp, path)

    def wait_for_checkpoint(self) -> None:
        """Block until an asynchronous save in flight is on disk and renamed into place."""
        if self._pending is not None:
            future, tmp, path = self._pending
            self._pending = None
            future.result()
            self._finish(tmp, path)

    def _finish(self, tmp: Path, path: Path) -> None:
        self.barrier("mgft-dcp-written")
        if self.is_global_zero:
            replace_with(tmp, path)
        self.barrier("mgft-dcp-renamed")

    def remove_checkpoint(self, filepath: Any) -> None:
        """Remove a checkpoint folder (rank 0)."""
        path = Path(filepath)
        if self.is_global_zero and path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.barrier("mgft-dcp-removed")

    def teardown(self) -> None:
        """Finish an asynchronous save before the process group goes away."""
        self.wait_for_checkpoint()
        super().teardown()

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Load a DCP folder (written by any number of ranks) into the sharded model; a single file is refused.

        Only the keys the checkpoint holds are loaded (mgft checkpoints leave the frozen T5 and EnCodec out); the
        returned checkpoint carries the loaded `state_dict` so the module can check its keys.
        """
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        from finetune.checkpoints.safe_load import safe_torch_load

        path = Path(self.broadcast(str(checkpoint_path)))
        if not path.is_dir():
            raise ValueError(f"{path} is not a distributed checkpoint folder; the sharded trainer resumes from the "
                             "folders it writes (a single-file checkpoint initializes a run through model.pretrained)")
        meta = safe_torch_load(path / META_FILE)
        stored = set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
        model_state = get_model_state_dict(self.model)
        wanted = {k: v for k, v in model_state.items() if f"state_dict.{k}" in stored}
        dcp.load({"state_dict": wanted}, checkpoint_id=path)
        set_model_state_dict(self.model, wanted, options=StateDictOptions(strict=False))
        for i, optimizer in enumerate(self.optimizers):
            optim_state = {f"optimizer_{i}": get_optimizer_state_dict(self.model, optimizer)}
            dcp.load(optim_state, checkpoint_id=path)
            set_optimizer_state_dict(self.model, optimizer, optim_state_dict=optim_state[f"optimizer_{i}"])
        extra = _templates_of(meta, self.lightning_module)
        if extra:
            loaded = {SHARDED_PREFIX + k: v for k, v in extra.items()}
            dcp.load(loaded, checkpoint_id=path)  # into the module's own sharded tensors
            meta = fill_sharded(meta, loaded)
        meta["state_dict"] = wanted
        return meta


def _templates_of(meta: Any, module: Any) -> dict[str, Any]:
    """Tensors to load the checkpoint's sharded extras into: the module's own (`sharded_state_templates`)."""
    paths = sharded_paths(meta)
    if not paths:
        return {}
    templates = module.sharded_state_templates() if hasattr(module, "sharded_state_templates") else {}
    missing = sorted(set(paths) - set(templates))
    if missing:
        raise RuntimeError(f"the checkpoint holds sharded state this module cannot take: {missing[:3]}")
    return {k: templates[k] for k in paths}
