"""Is this file a whole torch checkpoint? Cheap checks before anything is loaded or built.

A checkpoint that a full disk, a killed copy or a bad transfer cut short fails deep inside `torch.load` ("failed
finding central directory") or halfway through a distributed load, after the model was built. The checks here read
only directories and headers:

- a file: what its first bytes say it is (a zip archive or a legacy pickle; not text, audio or empty), and for a zip
  archive (what `torch.save` writes) that its central directory, at the end of the file, is there and that every
  member it lists lies inside the file;
- a distributed (DCP) checkpoint folder: `meta.pt` passes the file check, DCP's `.metadata` index is readable, and
  every byte range it lists is present in the shard files it names.

`check_checkpoint` raises `BadFileError` (one line, exit status 1) naming the file and what is wrong with it.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from finetune.errors import BadFileError

DCP_INDEX = ".metadata"  # DCP's index of every stored tensor piece
META_FILE = "meta.pt"  # Lightning's name for the non-tensor part of a distributed checkpoint


def is_distributed_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a DCP checkpoint folder (has DCP's `.metadata` or Lightning's `meta.pt`).

    Either file marks it: a folder that lost one of them is a damaged distributed checkpoint, which
    `check_checkpoint` reports as such, not a folder of something else.
    """
    folder = Path(path)
    return folder.is_dir() and ((folder / DCP_INDEX).is_file() or (folder / META_FILE).is_file())


def not_a_checkpoint(path: str | os.PathLike) -> str | None:
    """Why the file or folder at `path` is not a torch checkpoint, from what it is and its first bytes; else None.

    torch.load's own errors for such files mislead (`pop from empty list` for a WAV, advice to trust a text file).
    torch writes a zip archive (starting `PK`); files of torch < 1.6 start with a pickle protocol byte (0x80).
    """
    p = Path(path)
    if p.is_dir():
        if is_distributed_checkpoint(p):
            return None
        if (p / "config.json").is_file():
            return "a transformers model folder (config.json), not a training checkpoint: it is already a model"
        return f"a folder that holds no checkpoint (a distributed checkpoint has {DCP_INDEX} and {META_FILE})"
    with open(p, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return None
    from data_prep.audio import sniff_container

    if not head:
        return "an empty file"
    if kind := sniff_container(head):
        return f"an audio file ({kind}), not a checkpoint"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "a text file, not a checkpoint"
    return "not a torch checkpoint (neither a zip archive nor a pickle)"


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _zip_problem(path: Path) -> str | None:
    """What is wrong with the zip archive `torch.save` wrote at `path`, reading only its directory; None if whole."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return (f"truncated or corrupt: the zip directory torch.save writes at its end is missing ({size:,} bytes; "
                "cut short by a full disk, or a copy or transfer that did not finish?)")
    if not members:
        return "an empty zip archive, not a checkpoint"
    for member in members:
        # The local header (30 bytes + name + extra) then the data; the directory says where each member starts.
        end = member.header_offset + 30 + len(member.filename.encode()) + member.compress_size
        if end > size:
            return f"truncated: its member {member.filename} ends at byte {end:,} but the file holds {size:,}"
    return None


def _dcp_problem(folder: Path) -> str | None:
    """What is missing from a distributed checkpoint folder; None when every listed byte range is present."""
    for name in (DCP_INDEX, META_FILE):
        if not (folder / name).is_file():
            return f"a distributed checkpoint without its {name}"
    if problem := not_a_checkpoint(folder / META_FILE) or _zip_problem(folder / META_FILE):
        return f"its {META_FILE} is {problem}"
    from torch.distributed.checkpoint import FileSystemReader

    try:
        metadata = FileSystemReader(str(folder)).read_metadata()
    except Exception as e:  # noqa: BLE001 (any failure to read the index means a damaged checkpoint)
        return f"its {DCP_INDEX} cannot be read ({type(e).__name__}: {e})"
    needed: dict[str, int] = {}  # shard file -> bytes it must hold
    for info in (metadata.storage_data or {}).values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        shard = folder / name
        if not shard.is_file():
            return f"a distributed checkpoint missing its shard file {name} (listed in {DCP_INDEX})"
        if shard.stat().st_size < size:
            return f"truncated: its shard file {name} holds {shard.stat().st_size:,} bytes, {DCP_INDEX} lists {size:,}"
    return None


def check_checkpoint(path: str | os.PathLike) -> None:
    """Refuse a checkpoint file or folder that cannot load, before anything reads it whole.

    Args:
        path: A `.ckpt`/`.th`/`.pt` file or a distributed checkpoint folder.

    Raises:
        FileNotFoundError: Nothing is at `path`.
        BadFileError: It is not a checkpoint, or it is truncated or incomplete (the message names the file and why).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if problem := not_a_checkpoint(p):
        raise BadFileError(f"{path}: {problem}")
    if p.is_dir():
        problem = _dcp_problem(p)
    else:
        problem = _zip_problem(p) if _is_zip(p) else None
    if problem:
        raise BadFileError(f"{path}: {problem}")


def stored_hyperparameters(path: str | os.PathLike) -> dict[str, object]:
    """The `hyper_parameters` a Lightning checkpoint stores (the module's init arguments), without reading its tensors.

    A file is memory-mapped, so only the pickle is read; a distributed checkpoint keeps them in `meta.pt`. Entries
    LightningCLI adds (`_instantiator`, `_class_path`) are left out. Call `check_checkpoint` first.
    """
    import torch

    p = Path(path)
    target = p / META_FILE if p.is_dir() else p
    try:
        checkpoint = torch.load(target, map_location="cpu", weights_only=True, mmap=_is_zip(target))
    except Exception as e:  # noqa: BLE001 (an unreadable pickle is a damaged checkpoint, whatever torch raises)
        raise BadFileError(f"{path}: cannot read its settings ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    return {k: v for k, v in (hparams or {}).items() if not str(k).startswith("_")}
