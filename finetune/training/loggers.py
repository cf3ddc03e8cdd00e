"""wandb by default, offline when no API key is configured (clusters without internet; `wandb sync` later).

On SLURM every requeue segment is its own wandb run (offline runs cannot be resumed, and segments synced under one id
overwrite each other), grouped by experiment (`MGFT_EXPERIMENT`, set by slurm/fit.sbatch to `<job name>-<job id>`)
and named and tagged with `SLURM_RESTART_COUNT`; the logged `trainer/global_step` continues across segments.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.loggers import WandbLogger


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = os.path.expanduser("~/.netrc")
    return os.path.exists(netrc) and "api.wandb.ai" in open(netrc).read()


class Wandb(WandbLogger):
    """`WandbLogger` that goes offline by itself when there is no key or `WANDB_MODE=offline`."""

    def __init__(self, project: str = "mgft", name: str | None = None, group: str | None = None,
                 save_dir: str | None = None, offline: bool | None = None, tags: list[str] | None = None,
                 log_model: bool = False, **kwargs: Any) -> None:
        """Pick offline or online mode; under `MGFT_EXPERIMENT`, group, name and tag the run by experiment and restart.

        Args:
            project: wandb project.
            name: Run name (default: wandb's).
            group: Groups runs of one experiment, e.g. every SLURM requeue segment.
            save_dir: Where `wandb/` goes (default: the trainer's default_root_dir; shared storage on clusters).
            offline: Force offline (True) or online (False); default: offline unless a key is configured.
            tags: Run tags.
            log_model: Upload checkpoints as artifacts.
            **kwargs: Passed to `WandbLogger`.
        """
        if offline is None:
            offline = os.environ.get("WANDB_MODE") in ("offline", "dryrun") or not _has_wandb_key()
        experiment = os.environ.get("MGFT_EXPERIMENT")
        if experiment and group is None:
            group = experiment
            restart = os.environ.get("SLURM_RESTART_COUNT", "0")
            name = name or f"{experiment}-restart{restart}"
            tags = [*(tags or []), f"slurm-restart-{restart}"]
        super().__init__(project=project, name=name, group=group, save_dir=save_dir or ".", offline=offline, tags=tags,
                         log_model=log_model, **kwargs)
