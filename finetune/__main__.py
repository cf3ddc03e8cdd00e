"""The `mgft` command: `mgft -h` lists the subcommands.

    mgft synth-catalog OUT --tracks 12 --seconds 20 [--style bright|dark]
    mgft tiny-models OUT
    mgft prep --input CATALOG --output SHARDS --codec PATH_OR_HUB_ID [--melody --demucs PATH_OR_NAME]
    mgft prep-merge SHARDS
    mgft fit --config recipes/tiny/stereo-melody-lora.yaml [--data.shards DIR] [--ckpt_path last]
    mgft validate --config RECIPE --ckpt_path CKPT
    mgft export CKPT --out DIR [--format hf|audiocraft|both] [--adapter-only]
    mgft generate --model DIR_OR_CKPT --prompt TEXT [--melody AUDIO] [--duration 40] [--decoder mbd] --out DIR
    mgft eval --model runs/x/checkpoints/last.ckpt --baseline facebook/musicgen-small --data.shards VAL --out DIR
    mgft plan --config recipes/musicgen-medium/lora-24gb.yaml [--gpus 8 --gpu-mem 80]
    mgft mbd-fit --config recipes/mbd/band0.yaml --data.shards SHARDS   # one multi-band diffusion band
    mgft mbd-pack "runs/mbd/band*/checkpoints/last.ckpt" --out exports/mbd

One table of commands. Each plain command is a typed function whose signature is its schema (jsonargparse), so
unknown or mistyped flags fail before anything is loaded; the Lightning commands are LightningCLI over a recipe
(`finetune/cli.py`). `mgft -h` imports nothing but this file, and `mgft <command> -h` imports only that command's
module, whose heavy imports (torch, transformers, Lightning) wait inside the functions that use them.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from typing import Any

COMMANDS: dict[str, tuple[str, str]] = {
    "prep": ("data_prep.prep:prep", "catalog -> webdataset shards (EnCodec codes, chroma, audio, metadata)"),
    "prep-merge": ("data_prep.merge:prep_merge", "merge the ranks of a parallel prep (manifest, rejects, stats)"),
    "generate": ("finetune.inference.generate:generate", "music from a checkpoint, text prompts and a melody"),
    "export": ("finetune.checkpoints.export:export", "a checkpoint as a transformers and/or audiocraft model"),
    "eval": ("finetune.evaluation.eval:evaluate", "held-out CE, FAD and chroma against a baseline; HTML report"),
    "plan": ("finetune.training.plan:plan", "will a recipe fit: parameters, memory and largest batch per GPU"),
    "mbd-pack": ("finetune.mbd.pack:mbd_pack", "pack four trained MBD bands into mbd_musicgen_32khz.th"),
    "synth-catalog": ("testkit.synth:synth_catalog", "synthesize a licensed stereo catalog (demo, tests)"),
    "tiny-models": ("testkit.tiny_models:tiny_models", "write tiny models in the hub formats (demo, tests)"),
}
"""Plain commands: name -> (module:function, one line of help)."""

LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "train a MusicGen LM from a recipe",
    "validate": "validate a MusicGen LM checkpoint",
    "mbd-fit": "train one multi-band diffusion band",
    "mbd-validate": "validate one MBD band checkpoint",
}
"""Handled by LightningCLI (finetune/cli.py): the model, data and trainer come from recipe YAML files."""


def _load(target: str) -> Callable[..., Any]:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def normalize_flags(fn: Callable[..., Any], args: list[str]) -> list[str]:
    """Accept the documented flag style: `--keep-audio` for `keep_audio`, and bare boolean switches.

    jsonargparse names flags after the parameters (`--keep_audio`) and wants booleans spelled `--keep_audio true`;
    this rewrites `--kebab-case` to the parameter's name and gives a boolean flag with no value an explicit `true`.
    """
    params = inspect.signature(fn).parameters
    bools = {name for name, p in params.items() if p.annotation in (bool, "bool")}
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg.startswith("--") and "=" not in arg:
            name = arg[2:].replace("-", "_")
            if name in params:
                arg = "--" + name
            out.append(arg)
            following = args[i + 1] if i + 1 < len(args) else None
            if name in bools and (following is None or following.lower() not in ("true", "false")):
                out.append("true")
        else:
            out.append(arg)
    return out


def usage() -> str:
    """The text of `mgft -h`: every command with its line of help."""
    width = max(map(len, [*COMMANDS, *LIGHTNING_COMMANDS]))
    lines = ["usage: mgft COMMAND [options]   (mgft COMMAND -h for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in LIGHTNING_COMMANDS.items()]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Dispatch `mgft <command> ...` to the command's function."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return
    if args[0] in LIGHTNING_COMMANDS:
        from finetune.cli import run

        run(args)
        return
    if args[0] not in COMMANDS:
        print(f"mgft: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    from jsonargparse import CLI

    # Only the chosen command's module is imported.
    fn = _load(COMMANDS[args[0]][0])
    if args[0] == "plan":  # `--config` is jsonargparse's own option (a file of arguments); plan's is the recipe
        aliases = {"--config": "--recipe", "--model.pretrained": "--pretrained"}  # as `mgft fit` spells them
        args = [args[0], *(aliases.get(a, a) for a in args[1:])]
    CLI({args[0]: fn}, args=[args[0], *normalize_flags(fn, args[1:])], as_positional=True)


USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)
"""What a wrong command line raises (a wrong number or path, a flag's rule broken); `cli` prints these as one line
with exit status 2. Commands check their arguments before loading anything and raise ValueError naming the flag."""


INTERRUPTED: dict[str, str] = {
    "prep": ": rerun the same command to resume (committed shards and rejects are kept; nothing is prepped twice)",
    "prep-merge": ": rerun it (the merge writes each file whole)",
}
"""What a Ctrl-C'd command leaves, said after `interrupted` (fit checkpoints first and says so itself)."""


def cli(argv: list[str] | None = None) -> None:
    """The `mgft` console entry point: `main`, with bad input ending in one line on stderr instead of a traceback.

    Exit status 2 for a wrong command line (`USER_ERRORS`), 1 for a file it names that cannot be used or data that
    went bad during a run (`finetune.errors`). Set MGFT_DEBUG=1 for the traceback. In-process callers (tests,
    notebooks) call `main`, which raises.
    """
    import os

    from finetune.errors import BadFileError, DataError, one_line

    args = sys.argv[1:] if argv is None else argv
    command = f"mgft {args[0]}" if args else "mgft"
    try:
        main(argv)
    except KeyboardInterrupt:
        if os.environ.get("MGFT_DEBUG"):
            raise
        print(f"{command}: interrupted{INTERRUPTED.get(args[0] if args else '', '')}", file=sys.stderr)
        raise SystemExit(130) from None  # 128 + SIGINT, as a shell reports a command that Ctrl-C stopped
    except (BadFileError, DataError, *USER_ERRORS) as e:
        if os.environ.get("MGFT_DEBUG"):
            raise
        print(f"{command}: error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(1 if isinstance(e, BadFileError | DataError) else 2) from None


if __name__ == "__main__":
    cli()
