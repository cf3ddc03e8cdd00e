"""LightningCLI entry points: `mgft fit|validate` and `mgft mbd-fit|mbd-validate`.

`mgft fit|validate --config recipes/X.yaml [overrides]`: LightningCLI over `MusicGenLM` and `MusicGenData`;
`mgft mbd-fit|mbd-validate` the same over one multi-band diffusion band (`MBDBand`, `MBDData`).

    mgft fit --config recipes/tiny/stereo-melody-lora.yaml --data.shards demo-run/shards
    mgft fit --config recipes/musicgen-small/full-24gb.yaml --ckpt_path last  # resume a killed run
    mgft mbd-fit --config recipes/mbd/band2.yaml --data.shards data/shards

Configs are parsed and type-checked (unknown keys fail, naming the key) before any model is built; the resolved
config is saved as `config.yaml` in the run folder.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from finetune.lm.data import MusicGenData
from finetune.lm.module import MusicGenLM

LIGHTNING_COMMANDS = ("fit", "validate")
MBD_COMMANDS = ("mbd-fit", "mbd-validate")


RESUME_SETTINGS = ("refuse", "checkpoint", "config")
"""`--resume_settings`: what to do when `--ckpt_path`'s model settings differ from the run's config."""


class MgftCLI(LightningCLI):
    """LightningCLI that keeps a run in one folder: `default_root_dir/{config.yaml, checkpoints/, wandb/, samples/}`.

    Checkpoints go to a fixed `checkpoints/` folder (not one per logger version) so `--ckpt_path last` finds the
    previous segment's checkpoint after a kill or a SLURM requeue, when the logger starts a new run.
    """

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (LightningArgumentParser)
        """`--resume_settings refuse|checkpoint|config`, for a `--ckpt_path` trained with other model settings."""
        parser.add_argument(
            "--resume_settings", type=str, default="refuse", choices=RESUME_SETTINGS,
            help="when --ckpt_path was trained with other model settings than the config: refuse (default), "
                 "checkpoint (take the checkpoint's model settings), config (keep the config's, e.g. a new lr)")

    def _parse_ckpt_path(self) -> None:
        """Resolve `--ckpt_path`, check the file is whole, and compare its model settings with the config's.

        Replaces LightningCLI's version, which loads the whole file (a truncated one ends in a traceback) and silently
        replaces the config's `model` section with the checkpoint's hyperparameters: a checkpoint of another run would
        swap the model without a word. Here that is refused, listing the differing keys, unless `--resume_settings`
        says which side to take.
        """
        if not self.config.get("subcommand"):
            return
        cfg = self.config[self.config.subcommand]
        root = cfg.trainer.get("default_root_dir") or os.getcwd()
        path = resolve_ckpt_path(cfg, Path(root) / "checkpoints")
        if path is None:
            return
        from finetune.checkpoints.integrity import check_checkpoint, stored_hyperparameters

        check_checkpoint(path)
        stored = stored_hyperparameters(path)
        differing = {key: (value, cfg.model[key]) for key, value in stored.items()
                     if key in cfg.model and _plain(cfg.model[key]) != _plain(value)}
        if not differing or cfg.resume_settings == "config":
            return
        if cfg.resume_settings == "checkpoint":
            self.config = self.parser.parse_object({self.config.subcommand: {"model": stored}}, self.config)
            return
        listed = "; ".join(f"model.{key}: {_short(ours)} here, {_short(theirs)} in the checkpoint"
                           for key, (theirs, ours) in sorted(differing.items()))
        raise ValueError(f"--ckpt_path {path} was trained with other model settings ({listed}): resume with the "
                         "run's own config (config.yaml in its folder), or pass --resume_settings checkpoint to take "
                         "the checkpoint's (config: keep this config's)")

    def before_instantiate_classes(self) -> None:
        """Check the config before any model is built, and point loggers without a `save_dir` at the run folder.

        `trainer.max_steps` (or `model.total_steps`) must be set: the cosine schedule and resume use step counts.
        """
        cfg = self.config[self.config.subcommand] if self.config.get("subcommand") else self.config
        if cfg.trainer.get("max_steps", -1) in (None, -1) and cfg.model.get("total_steps") is None:
            raise ValueError("trainer.max_steps must be set: the cosine schedule and resume use step counts")
        per_epoch, accumulate = cfg.data.get("steps_per_epoch"), cfg.trainer.get("accumulate_grad_batches") or 1
        if isinstance(per_epoch, int) and isinstance(accumulate, int) and per_epoch % accumulate:
            # Epochs are counted from optimizer steps (the data stream's position on resume); a partial step at each
            # epoch end would also be an optimizer step on fewer batches.
            raise ValueError(f"data.steps_per_epoch ({per_epoch}) must be a multiple of "
                             f"trainer.accumulate_grad_batches ({accumulate})")
        root = cfg.trainer.get("default_root_dir") or os.getcwd()
        if self.model_class is MusicGenLM and cfg.data.get("shards"):
            from finetune.lm.data import shard_sets

            for spec, _ in shard_sets(cfg.data.shards):  # each set of a weighted mix
                check_shards_fit_model(cfg.model, spec)
        loggers = cfg.trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init_args = getattr(logger, "init_args", None)
            if init_args is not None and "save_dir" in init_args and init_args.save_dir in (None, "."):
                init_args.save_dir = root

    def after_fit(self) -> None:
        """Finish the loggers' wandb runs once fitting ends."""
        # Close wandb runs so an in-process caller (tests, notebooks) finds the offline run complete on disk.
        from lightning.pytorch.loggers import WandbLogger

        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger) and logger._experiment is not None:
                logger.experiment.finish()
        exit_if_interrupted(self.trainer)

    def before_validate(self) -> None:
        """Put checkpoints in the run's `checkpoints/` folder, as for `fit`."""
        self.before_fit()

    def before_fit(self) -> None:
        """Send checkpoints without a `dirpath` to `default_root_dir/checkpoints`, where `--ckpt_path last` looks.

        Every run that checkpoints also checkpoints its final step (`FinalCheckpoint`), whatever its interval.
        """
        from finetune.training.preemption import FinalCheckpoint

        for callback in self.trainer.checkpoint_callbacks:
            if callback.dirpath is None:
                callback.dirpath = os.path.join(self.trainer.default_root_dir, "checkpoints")
        if self.trainer.checkpoint_callbacks and not any(isinstance(c, FinalCheckpoint)
                                                         for c in self.trainer.callbacks):
            self.trainer.callbacks.append(FinalCheckpoint())


def exit_if_interrupted(trainer) -> None:  # noqa: ANN001 (a Lightning Trainer)
    """After a run that Ctrl-C or SIGTERM stopped (`PreemptionCheckpoint`): say where it stopped, exit 128 + signal."""
    import signal
    import sys

    from finetune.training.preemption import PreemptionCheckpoint

    for callback in trainer.callbacks:
        if isinstance(callback, PreemptionCheckpoint) and callback.interrupted:
            if trainer.is_global_zero:
                print(f"mgft fit: stopped by {callback.interrupted} at step {callback.saved_step}, checkpointed to "
                      f"{callback.saved_path}; to go on, run the same command with --ckpt_path last", file=sys.stderr)
            raise SystemExit(128 + signal.Signals[callback.interrupted])


def check_shards_fit_model(model_cfg, shards: str) -> None:  # noqa: ANN001 (a jsonargparse Namespace)
    """Refuse shards the model cannot train on, from the model's config and one sample, before anything is built.

    Codebooks (4 mono, 8 stereo, after `mono_to_stereo`), chroma for a melody model, and the sample rate. A model
    whose config cannot be read here (an audiocraft export) is checked at fit start instead.
    """
    from finetune.lm.data import describe_shards
    from finetune.lm.load import model_layout

    layout = model_layout(model_cfg.pretrained, bool(model_cfg.get("mono_to_stereo")))
    if layout is None:
        return
    found = describe_shards(shards)
    name = model_cfg.pretrained
    if found["num_codebooks"] != layout["num_codebooks"]:
        kind = {4: "mono", 8: "stereo"}
        raise ValueError(
            f"data.shards {shards} hold {found['num_codebooks']} codebooks "
            f"({kind.get(found['num_codebooks'], '?')}, {found['first_shard']}) but model.pretrained {name} has "
            f"{layout['num_codebooks']} ({kind.get(layout['num_codebooks'], '?')}): prep with --channels "
            f"{layout['num_codebooks'] // 4}, or pick a matching model (model.mono_to_stereo: true starts a stereo "
            "model from a mono one)"
        )
    if layout["is_melody"] and not found["has_chroma"]:
        raise ValueError(f"model.pretrained {name} is a melody model but data.shards {shards} hold no chroma "
                         f"({found['first_shard']}): prep with --melody --demucs htdemucs")
    if found["sample_rate"] not in (None, layout["sample_rate"]):
        raise ValueError(f"data.shards {shards} were prepped at {found['sample_rate']} Hz but model.pretrained "
                         f"{name}'s EnCodec runs at {layout['sample_rate']} Hz")


def resolve_ckpt_path(cfg, checkpoints: Path) -> Path | None:  # noqa: ANN001 (a jsonargparse Namespace)
    """The checkpoint `--ckpt_path` names: `last` must find one in `checkpoints`, `auto` resumes when there is one.

    Lightning starts from scratch (with a warning) when `last` finds nothing, so a mistyped run folder would train a
    new model and exit 0. `auto` (litgpt's `resume="auto"`) is for jobs that run the same command first and after a
    requeue (slurm/fit.sbatch); it becomes `last` or None in `cfg`.

    Returns:
        The checkpoint file or folder to resume from (for `last`, the newest `last*.ckpt`, as Lightning picks it), or
        None when there is none to resume (or `ckpt_path` names Lightning's `best`/`hpc`).
    """
    wanted = cfg.get("ckpt_path")
    if wanted in ("last", "auto"):
        found = sorted(checkpoints.glob("last*.ckpt"), key=lambda p: p.stat().st_mtime) if checkpoints.is_dir() else []
        if wanted == "last" and not found:
            raise ValueError(f"--ckpt_path last: no checkpoint in {checkpoints} (check trainer.default_root_dir; "
                             "--ckpt_path auto starts fresh when there is none)")
        cfg.ckpt_path = "last" if found else None
        return found[-1] if found else None
    if wanted is None or wanted in ("best", "hpc", "registry"):
        return None
    return Path(wanted)


def _plain(value: object) -> object:
    """A config value as plain data (jsonargparse Namespaces as dicts, tuples as lists), for comparing settings."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _short(value: object, width: int = 40) -> str:
    text = repr(_plain(value))
    return text if len(text) <= width else text[: width - 3] + "..."


def default_plugins() -> list[dict]:
    """Atomic checkpoint writes; under SLURM, Lightning's SLURM environment without its own requeue handler.

    Lightning's handler checkpoints inside the signal handler (possibly mid-backward); `PreemptionCheckpoint` in the
    trainer configs does it at a step boundary instead (finetune/training/preemption.py).
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment

    plugins: list[dict] = [{"class_path": "finetune.checkpoints.atomic.AtomicCheckpointIO"}]
    if SLURMEnvironment.detect():
        plugins.append({"class_path": "lightning.pytorch.plugins.environments.SLURMEnvironment",
                        "init_args": {"auto_requeue": False}})
    return plugins


def expand_recipe(path: str, scratch: Path) -> list[str]:
    """Arguments equivalent to `--config path` for a recipe that mixes fragment includes and dotted overrides.

    Recipes say `trainer: ../../configs/trainer/gpu-bf16.yaml` and then `trainer.devices: 8`. Inside one YAML file
    jsonargparse drops the included fragment when a dotted key of the same group follows, so such a recipe becomes
    `--trainer FRAGMENT --config REST.yaml --trainer.devices 8`: includes first, then the nested sections, then the
    dotted overrides, which is the order a reader of the recipe expects. REST.yaml is written into `scratch`.
    """
    import json

    import yaml

    recipe = Path(path)
    raw = yaml.safe_load(recipe.read_text()) if recipe.is_file() else None
    if not isinstance(raw, dict) or not any("." in str(key) for key in raw):
        return ["--config", path]
    includes, nested, dotted = [], {}, []
    for key, value in raw.items():
        if "." in str(key):
            dotted += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
        elif isinstance(value, str) and value.endswith((".yaml", ".yml")):
            includes += [f"--{key}", str((recipe.parent / value).resolve())]
        else:
            nested[key] = value
    rest = scratch / f"{len(list(scratch.iterdir()))}-{recipe.stem}.yaml"
    rest.write_text(yaml.safe_dump(nested))
    return [*includes, "--config", str(rest), *dotted]


def _expand_configs(args: list[str], scratch: Path) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(args):
        if args[i] == "--config" and i + 1 < len(args):
            out += expand_recipe(args[i + 1], scratch)
            i += 2
        else:
            out.append(args[i])
            i += 1
    return out


def run(args: list[str]) -> MgftCLI:
    """Run a Lightning subcommand (`fit`, `validate`, `mbd-fit`, `mbd-validate`) with `args` (subcommand first).

    Returns:
        The finished CLI, whose `trainer` and `model` in-process callers (tests, notebooks) can inspect.
    """
    # Frozen T5/EnCodec stay in eval mode on purpose (no dropout), which Lightning warns about.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    if args and args[0] in MBD_COMMANDS:
        from finetune.mbd.data import MBDData
        from finetune.mbd.module import MBDBand

        model_class, data_class, args = MBDBand, MBDData, [args[0].removeprefix("mbd-"), *args[1:]]
    else:
        model_class, data_class = MusicGenLM, MusicGenData
    # The expanded recipe parts are parsed before anything runs; the run folder gets the resolved config.yaml.
    with tempfile.TemporaryDirectory(prefix="mgft-recipe-") as scratch:
        return MgftCLI(
            model_class,
            data_class,
            args=_expand_configs(args, Path(scratch)),
            trainer_defaults={"plugins": default_plugins()},
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            parser_kwargs={"parser_mode": "yaml"},
        )
