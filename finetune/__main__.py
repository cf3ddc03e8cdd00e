"""The `mgft` command: `mgft -h` lists the subcommands.

    mgft synth-catalog OUT --tracks 12 --seconds 20
    mgft tiny-models OUT
    mgft prep --input CATALOG --output SHARDS --codec PATH_OR_HUB_ID [--melody --demucs PATH_OR_NAME]
    mgft prep-merge SHARDS

One table of commands; each is a typed function whose signature is its schema (jsonargparse), so unknown or
mistyped flags fail before anything is loaded. Imports are lazy so `mgft -h` stays fast.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

COMMANDS: dict[str, str] = {
    "synth-catalog": "data_prep.synth:synth_catalog",
    "tiny-models": "finetune.models.tiny:tiny_models",
    "prep": "data_prep.prep:prep",
    "prep-merge": "data_prep.merge:prep_merge",
}


def _load(target: str) -> Callable[..., Any]:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> None:
    """Dispatch `mgft <command> ...` to the command's function."""
    from jsonargparse import CLI

    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in COMMANDS:
        # Only the chosen command's module is imported (torch, transformers and demucs are slow to import).
        CLI({args[0]: _load(COMMANDS[args[0]])}, args=args, as_positional=True)
        return
    # `mgft`, `mgft -h` or an unknown command: build the full parser so help and errors list every command.
    CLI({name: _load(target) for name, target in COMMANDS.items()}, args=args)


if __name__ == "__main__":
    main()
