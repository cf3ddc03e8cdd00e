"""The errors that end an `mgft` command with one line instead of a traceback (`finetune/__main__.py::cli`).

Exit status 2, `ValueError` / `OSError`: the command line is wrong (a flag's value, a path that does not exist).
Exit status 1, `BadFileError`: a file the command was given is truncated, corrupt or not what the flag takes (a text
file named `.ckpt`, a distributed checkpoint missing a shard, a corrupt first sample of a shard set).
Exit status 1, `DataError`: the data went bad during a run (too many corrupt samples).

This module imports nothing, so the command line can name these classes without loading torch.
"""

from __future__ import annotations


class BadFileError(Exception):
    """A file given to a command cannot be used: unreadable, truncated, corrupt, or of another kind."""


class DataError(RuntimeError):
    """A data problem that must stop training; never swallowed by the corrupt-sample handler."""


def one_line(error: BaseException) -> str:
    """The message of `error` as one line.

    An error raised in a DataLoader worker comes back with the worker's traceback in its message ("Caught DataError in
    DataLoader worker process 0. Original Traceback ..."); its last line holds the original message.
    """
    text = str(error).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        name, _, message = last.partition(": ")
        text = message if name.endswith(type(error).__name__) else last
    return " ".join(text.split())
