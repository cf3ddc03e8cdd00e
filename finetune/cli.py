"""`mgft fit|validate --config recipes/X.yaml [overrides]`: LightningCLI over `MusicGenLM` and `MusicGenData`.

    mgft fit --config recipes/tiny/stereo-melody-lora.yaml --data.shards demo-run/shards
    mgft fit --config recipes/musicgen-small/full.yaml --ckpt_path last      # resume a killed run

Configs are parsed and type-checked (unknown keys fail, naming the key) before any model is built; the resolved
config is saved as `config.yaml` in the run folder.
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from finetune.checkpoint_io import AtomicCheckpointIO
from finetune.data import MusicGenData
from finetune.module import MusicGenLM

LIGHTNING_COMMANDS = ("fit", "validate")


class MgftCLI(LightningCLI):
    """LightningCLI with the trainer's schedule length fed to the model and atomic checkpoint writes."""

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.config.subcommand] if self.config.get("subcommand") else self.config
        if cfg.trainer.get("max_steps", -1) in (None, -1) and cfg.model.get("total_steps") is None:
            raise ValueError("trainer.max_steps must be set: the cosine schedule and resume use step counts")


def run(args: list[str]) -> None:
    """Run a Lightning subcommand (`fit`, `validate`) with `args` (including the subcommand)."""
    MgftCLI(
        MusicGenLM,
        MusicGenData,
        args=args,
        trainer_defaults={"plugins": [AtomicCheckpointIO()]},
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        parser_kwargs={"parser_mode": "yaml"},
    )
