"""Load torch checkpoints without running code from them, including audiocraft files that pickle OmegaConf configs.

`torch.load(weights_only=True)` (torch's default since 2.6) only rebuilds tensors and plain containers, so a file
cannot run code when it is loaded. audiocraft's training checkpoints (`checkpoint.th`: `xp.cfg`) and the multi-band
diffusion `.th` files (`pkg[i]['cfg']`) hold OmegaConf `DictConfig` objects, which that loader refuses, and omegaconf is
not a dependency of this project. `safe_torch_load` therefore retries with an allowlist of the OmegaConf class names
mapped to small stand-in classes defined here: unpickling them only stores their pickled `__dict__` (a DictConfig
pickles as `NEWOBJ` + `BUILD` with its `_metadata`/`_parent`/`_content` dict), and afterwards every stand-in is turned
into the plain `dict`/`list`/scalar it holds, with `${a.b}` interpolations resolved as `OmegaConf.to_container(cfg,
resolve=True)` would. Anything else outside torch's allowlist (e.g. a pickle whose `__reduce__` calls `os.system`) is
refused with `UnsafeCheckpointError` before any of it runs, unless the caller passes `trust_checkpoint=True`
(`--trust-checkpoint` on the CLI), which falls back to full unpickling.

Usage:

    from finetune.checkpoints.safe_load import safe_torch_load
    pkg = safe_torch_load("checkpoint.th")          # xp.cfg comes back as a plain dict
    pkg = safe_torch_load("old.pt", trust_checkpoint=True)  # only for files from a trusted source
"""

from __future__ import annotations

import logging
import os
import pathlib
import pickle
import re
import types
import zipfile
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from finetune.checkpoints.integrity import check_checkpoint
from finetune.errors import BadFileError

__all__ = [
    "OMEGACONF_SAFE_GLOBALS",
    "UnsafeCheckpointError",
    "resolve_interpolations",
    "safe_torch_load",
]

log = logging.getLogger(__name__)


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """A checkpoint references Python globals that loading without trust may not call (it could run code).

    Also a ValueError: it is the user's input that is refused, so `mgft` prints it as one line.
    """

    def __init__(self, path: str, unsafe_globals: list[str], detail: str = "") -> None:
        self.path = path
        self.unsafe_globals = unsafe_globals
        names = ", ".join(unsafe_globals) if unsafe_globals else "globals that could not be listed"
        message = (
            f"refusing to load {path}: its pickle references {names}, which is not a tensor, a plain container or an "
            "OmegaConf config. Unpickling it could run arbitrary code, so nothing from it was executed. If you trust "
            "where this file comes from, pass --trust-checkpoint (trust_checkpoint=True) to load it with full "
            "unpickling."
        )
        if detail:
            message += f"\ntorch said: {detail}"
        super().__init__(message)


# ---------------------------------------------------------------------------------------------------------------------
# Stand-ins for omegaconf's pickled classes
# ---------------------------------------------------------------------------------------------------------------------


class _OmegaObject:
    """Base of the stand-ins: unpickling (`NEWOBJ` then `BUILD`) stores the pickled state and runs nothing else."""

    omegaconf_name: ClassVar[str] = ""

    def __setstate__(self, state: Any) -> None:
        # omegaconf's __getstate__ returns a copy of __dict__; a (dict, slots) pair is pickle's generic form.
        if isinstance(state, tuple) and len(state) == 2:
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"unexpected pickled state {type(state).__name__} for {self.omegaconf_name}")
        self.__dict__.update(state)


class _DictConfig(_OmegaObject):
    """`omegaconf.DictConfig`: `_content` is a dict of nodes, or None / an interpolation string / '???'."""


class _ListConfig(_OmegaObject):
    """`omegaconf.ListConfig`: `_content` is a list of nodes, or None / an interpolation string / '???'."""


class _ValueNode(_OmegaObject):
    """A leaf node (`AnyNode`, `StringNode`, ...): the value is `_val`."""


class _Metadata(_OmegaObject):
    """`omegaconf.base.Metadata` / `ContainerMetadata`: `key` is the node's key in its parent."""


class _TypeRef:
    """Placeholder for a type that OmegaConf metadata names (`ref_type`, `object_type`, `key_type`, ...).

    Not callable and not a class, so a pickle cannot use it to construct or call anything.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<type ref {self.name}>"


def _defaultdict_as_dict(*_args: Any) -> dict:
    """`collections.defaultdict(factory)` (OmegaConf's `resolver_cache`) as a plain dict; the factory is ignored.

    Returns:
        An empty dict; pickle's following SETITEMS fill it (torch's unpickler only sets items on plain dicts).
    """
    return {}


def _posix_path_as_str(*parts: str) -> str:
    """`pathlib.PosixPath(*parts)` (OmegaConf `PathNode` values) rebuilt as a string; a pure path never touches disk.

    Returns:
        The path as a string.
    """
    return str(pathlib.PurePosixPath(*parts))


def _windows_path_as_str(*parts: str) -> str:
    """`pathlib.WindowsPath(*parts)` rebuilt as a string (see `_posix_path_as_str`).

    Returns:
        The path as a string.
    """
    return str(pathlib.PureWindowsPath(*parts))


def _stand_in(name: str, base: type[_OmegaObject]) -> type[_OmegaObject]:
    # One subclass per omegaconf name keeps error messages and reprs specific.
    short = name.rsplit(".", 1)[-1]
    return type(f"StandIn{short}", (base,), {"omegaconf_name": name, "__module__": __name__})


_OMEGACONF_CLASSES: dict[str, type[_OmegaObject]] = {
    "omegaconf.dictconfig.DictConfig": _stand_in("omegaconf.dictconfig.DictConfig", _DictConfig),
    "omegaconf.listconfig.ListConfig": _stand_in("omegaconf.listconfig.ListConfig", _ListConfig),
    "omegaconf.base.Metadata": _stand_in("omegaconf.base.Metadata", _Metadata),
    "omegaconf.base.ContainerMetadata": _stand_in("omegaconf.base.ContainerMetadata", _Metadata),
    **{
        f"omegaconf.nodes.{node}": _stand_in(f"omegaconf.nodes.{node}", _ValueNode)
        for node in (
            "AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode", "ValueNode",
            "UnionNode",
        )
    },
}

# Types named only as metadata values inside pickled OmegaConf objects. `__builtin__ long` is mapped to `builtins.int`
# by torch before the allowlist lookup.
_TYPE_NAMES: tuple[str, ...] = (
    "typing.Any", "typing.Dict", "typing.List", "typing.Tuple", "typing.Optional", "typing.Union",
    "builtins.dict", "builtins.list", "builtins.tuple", "builtins.int", "builtins.float", "builtins.str",
    "builtins.bool", "builtins.bytes", "builtins.object",
)

_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "collections.defaultdict": _defaultdict_as_dict,
    "pathlib.PosixPath": _posix_path_as_str,
    "pathlib.PurePosixPath": _posix_path_as_str,
    "pathlib.WindowsPath": _windows_path_as_str,
    "pathlib.PureWindowsPath": _windows_path_as_str,
}

#: `(object, "module.Name")` pairs for `torch.serialization.safe_globals`: the OmegaConf names mapped to the stand-ins.
OMEGACONF_SAFE_GLOBALS: list[tuple[Any, str]] = [
    *((cls, name) for name, cls in _OMEGACONF_CLASSES.items()),
    *((_TypeRef(name), name) for name in _TYPE_NAMES),
    *((fn, name) for name, fn in _FUNCTIONS.items()),
]
_ALLOWED_NAMES: frozenset[str] = frozenset(name for _, name in OMEGACONF_SAFE_GLOBALS)


class _StandInUnpickler(pickle.Unpickler):
    """Full (trusted) unpickler that still maps OmegaConf classes to the stand-ins, so omegaconf need not exist."""

    def find_class(self, module: str, name: str) -> Any:
        stand_in = _OMEGACONF_CLASSES.get(f"{module}.{name}")
        return stand_in if stand_in is not None else super().find_class(module, name)


# torch.load(pickle_module=...) subclasses `pickle_module.Unpickler`; everything else comes from the real pickle.
_TRUSTED_PICKLE = types.ModuleType("finetune_trusted_pickle")
_TRUSTED_PICKLE.__dict__.update({k: getattr(pickle, k) for k in ("load", "loads", "dump", "dumps", "Pickler")})
_TRUSTED_PICKLE.Unpickler = _StandInUnpickler  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------------------------------
# Stand-ins -> plain containers
# ---------------------------------------------------------------------------------------------------------------------


def _node_value(node: Any, memo: dict[Any, Any]) -> Any:
    """The plain value of an OmegaConf node (unresolved: interpolation strings stay strings)."""
    if isinstance(node, _DictConfig | _ListConfig):
        content = node.__dict__.get("_content")
        if isinstance(content, dict):
            return {key: _node_value(child, memo) for key, child in content.items()}
        if isinstance(content, list):
            return [_node_value(child, memo) for child in content]
        return content  # None, '???' (missing) or a '${...}' interpolation of the whole container
    if isinstance(node, _ValueNode):
        return _plain(node.__dict__.get("_val"), memo)
    return _plain(node, memo)


def _key_path(node: _OmegaObject) -> list[Any] | None:
    """Keys from the root config down to `node` (read from each node's `_metadata.key`), or None if unknown."""
    path: list[Any] = []
    while node.__dict__.get("_parent") is not None:
        metadata = node.__dict__.get("_metadata")
        if metadata is None or "key" not in metadata.__dict__:
            return None
        path.append(metadata.__dict__["key"])
        node = node.__dict__["_parent"]
    return path[::-1]


def _config_to_plain(node: _OmegaObject, memo: dict[Any, Any]) -> Any:
    """A DictConfig/ListConfig as plain containers, interpolations resolved against its root config."""
    root: _OmegaObject = node
    while isinstance(root.__dict__.get("_parent"), _OmegaObject):
        root = root.__dict__["_parent"]
    key = ("root", id(root))
    if key not in memo:
        memo[key] = resolve_interpolations(_node_value(root, memo))
    plain = memo[key]
    if root is node:
        return plain
    path = _key_path(node)
    try:
        for part in path or []:
            plain = plain[part]
        if path is None:
            raise KeyError
        return plain
    except (KeyError, IndexError, TypeError):  # not reachable from the root: convert it alone
        return resolve_interpolations(_node_value(node, memo))


def _plain(obj: Any, memo: dict[Any, Any]) -> Any:
    """Replace stand-ins anywhere in a loaded object tree by plain data; dicts and lists are updated in place."""
    if isinstance(obj, torch.Tensor | str | bytes | int | float | bool | type(None)):
        return obj
    if isinstance(obj, _DictConfig | _ListConfig):
        return _config_to_plain(obj, memo)
    if isinstance(obj, _ValueNode):
        return _node_value(obj, memo)
    if isinstance(obj, _OmegaObject | _TypeRef):
        return None  # bare metadata or type references carry no user data
    if id(obj) in memo:
        return obj  # already walked (shared or cyclic reference)
    if isinstance(obj, dict):
        memo[id(obj)] = obj
        for k, v in obj.items():
            new = _plain(v, memo)
            if new is not v:
                obj[k] = new
        return obj
    if isinstance(obj, list):
        memo[id(obj)] = obj
        for i, v in enumerate(obj):
            new = _plain(v, memo)
            if new is not v:
                obj[i] = new
        return obj
    if isinstance(obj, tuple):
        items = [_plain(v, memo) for v in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    return obj


# ---------------------------------------------------------------------------------------------------------------------
# Interpolations
# ---------------------------------------------------------------------------------------------------------------------

# `${a.b}` / `${.sibling}` / `${..uncle}`. A string with a resolver call (`${name:args}`) is left as written.
_INTERPOLATION = re.compile(r"\$\{([^${}:]+)\}")
_RESOLVER_CALL = re.compile(r"\$\{[\w.]+:")
_MAX_DEPTH = 32


def _lookup(root: Any, parents: list[Any], ref: str) -> Any:
    """Value of one interpolation reference; `parents` is the chain of containers from the root to the node's parent.

    Raises:
        KeyError: if the reference does not name an existing node.
    """
    ref = ref.strip()
    if ref.startswith("."):
        level = len(ref) - len(ref.lstrip("."))  # '.x' is a sibling (level 1), '..x' one level up, ...
        if level > len(parents):
            raise KeyError(ref)
        node, rest = parents[len(parents) - level], ref[level:]
    else:
        node, rest = root, ref
    for part in rest.split(".") if rest else []:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit():
            node = node[int(part)]
        else:
            raise KeyError(ref)
    return node


def _resolve_value(value: Any, root: Any, parents: list[Any], depth: int) -> Any:
    if isinstance(value, dict):
        chain = [*parents, value]
        return {k: _resolve_value(v, root, chain, depth) for k, v in value.items()}
    if isinstance(value, list):
        chain = [*parents, value]
        return [_resolve_value(v, root, chain, depth) for v in value]
    if not isinstance(value, str) or "${" not in value or depth >= _MAX_DEPTH or _RESOLVER_CALL.search(value):
        return value
    whole = _INTERPOLATION.fullmatch(value)
    try:
        if whole:  # the node *is* the referenced value, with its type (int, list, dict, ...)
            target = _lookup(root, parents, whole.group(1))
            return _resolve_value(target, root, parents, depth + 1)

        def _sub(match: re.Match[str]) -> str:
            target = _resolve_value(_lookup(root, parents, match.group(1)), root, parents, depth + 1)
            return str(target)

        return _INTERPOLATION.sub(_sub, value)
    except (KeyError, IndexError):
        return value  # a dangling reference stays as written (OmegaConf would raise on access)


def resolve_interpolations(cfg: Any) -> Any:
    """Resolve OmegaConf-style `${path}` interpolations in a plain config (dicts and lists), as `resolve=True` does.

    Supports absolute (`${sample_rate}`, `${optim.lr}`, `${a.0}`) and relative (`${.x}`, `${..x}`) references, whole
    values (typed) and references inside strings (`"${name}_v2"`). Resolver calls (`${oc.env:HOME}`, `${now:%Y}`) and
    references to missing keys are left as written.

    Args:
        cfg: a plain config tree, e.g. `yaml.safe_load(pkg['xp.cfg'])`.

    Returns:
        A new tree with the interpolations replaced; `cfg` is not modified.
    """
    return _resolve_value(cfg, cfg, [], 0)


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------


def _unsafe_globals(path: str, error: Exception) -> list[str] | None:
    """The globals torch's weights-only loader would refuse, read from the pickle without running it.

    Returns:
        The sorted names, or None when the file could not be scanned (then the error text is searched instead).
    """
    try:
        return sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)))
    except Exception:  # legacy (non-zip) format or an unreadable pickle: fall back to torch's message
        found = re.findall(r"GLOBAL ([\w.]+)", str(error))
        return sorted(set(found)) or None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def safe_torch_load(
    path: str | os.PathLike,
    *,
    trust_checkpoint: bool = False,
    map_location: str | torch.device = "cpu",
) -> Any:
    """`torch.load` that never runs code from the file unless told to trust it.

    1. `torch.load(weights_only=True)`: tensors, plain containers and scalars (exported audiocraft files, HF/Lightning
       checkpoints).
    2. If that fails only because of OmegaConf objects (audiocraft `checkpoint.th`, MBD `.th` files), load again with
       the OmegaConf class names allowlisted to inert stand-ins; every DictConfig/ListConfig comes back as a plain
       dict/list with interpolations resolved.
    3. Anything else is refused with `UnsafeCheckpointError` naming the offending globals, or, with
       `trust_checkpoint=True`, loaded with full unpickling (OmegaConf objects still become plain containers, so
       omegaconf need not be installed).

    Args:
        path: the checkpoint file, or a distributed checkpoint folder (read whole, `read_distributed_checkpoint`).
        trust_checkpoint: load with `weights_only=False` when the safe loaders refuse the file. Only for files from a
            trusted source: unpickling can run arbitrary code.
        map_location: passed to `torch.load`.

    Returns:
        The unpickled object.

    Raises:
        UnsafeCheckpointError: the file needs globals outside the allowlist and `trust_checkpoint` is False.
        FileNotFoundError: the file does not exist.
        BadFileError: the file is not a checkpoint, or it is truncated or corrupt (`check_checkpoint`).
    """
    from finetune.checkpoints.distributed import is_distributed_checkpoint, read_distributed_checkpoint

    check_checkpoint(path)  # whole and of the right kind, from its directory and first bytes: else one line
    if is_distributed_checkpoint(path):  # a sharded run's folder: tensors whole, meta.pt with weights_only
        return read_distributed_checkpoint(path)
    path = os.fspath(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        first_error = error
    except (RuntimeError, EOFError, zipfile.BadZipFile) as error:  # a record inside the archive is damaged
        raise BadFileError(f"{path}: corrupt checkpoint, torch cannot read it ({_first_line(error)})") from error
    unsafe = _unsafe_globals(path, first_error)
    if unsafe is not None and set(unsafe) <= _ALLOWED_NAMES:
        with torch.serialization.safe_globals(OMEGACONF_SAFE_GLOBALS):
            obj = torch.load(path, map_location=map_location, weights_only=True)
        return _plain(obj, {})
    remaining = [name for name in unsafe or [] if name not in _ALLOWED_NAMES]
    if not trust_checkpoint:
        # When the globals could not be listed, keep the one line of torch's long advice that says what it refused.
        detail = "" if remaining else next(
            (line.strip() for line in str(first_error).splitlines() if "WeightsUnpickler" in line), str(first_error)
        )
        raise UnsafeCheckpointError(path, remaining, detail) from first_error
    log.warning("loading %s with full unpickling (trust_checkpoint=True); it references %s", path, remaining)
    obj = torch.load(path, map_location=map_location, weights_only=False, pickle_module=_TRUSTED_PICKLE)
    return _plain(obj, {})
