"""Model arguments are local paths or hub ids; a mistyped path is reported as one, never as a hub failure.

`from_pretrained("models/encodec_32khz")` with a typo in the folder asks the hub for a repository of that name and
reports a connection error (or, offline, a cache miss), which sends people looking at their network.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
"""`owner/name`, the shape of a hub repository id."""
FILE_SUFFIXES = (".ckpt", ".th", ".pt", ".pth", ".bin", ".safetensors", ".json", ".yaml")
"""Names ending like this are files, whatever their shape."""


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: nothing may be fetched from the hub."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE",
                                                                                     "TRANSFORMERS_OFFLINE"))


def check_model_name(flag: str, name: str) -> None:
    """Refuse, naming `flag`, a model argument that is neither an existing local path nor a reachable hub id.

    A hub id is fine when the hub may be used, or, offline, when its `config.json` is in the local cache.
    """
    if Path(name).expanduser().exists():
        return
    if not HUB_ID.fullmatch(name) or name.endswith(FILE_SUFFIXES):
        raise ValueError(f"{flag} {name}: no such file or folder")
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise ValueError(f"{flag} {name}: no such local folder, and HF_HUB_OFFLINE=1 forbids fetching it from "
                             "the hub (it is not in the local cache)")
