"""The one atomic write: a kill between writing the temporary file and renaming it leaves the old file intact."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.atomic import atomic_write, atomic_write_text

ROOT = Path(__file__).resolve().parents[2]

KILLED_BEFORE_RENAME = """
import os, signal, sys
import data_prep.atomic as atomic

def die(*args):  # the temporary file is complete and fsynced; the process dies before the rename
    os.kill(os.getpid(), signal.SIGKILL)

os.replace = die
atomic.atomic_write_text(sys.argv[1], "new contents")
"""


def test_a_kill_before_the_rename_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "stats.json"
    target.write_text("old contents")
    proc = subprocess.run([sys.executable, "-c", KILLED_BEFORE_RENAME, str(target)], cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert target.read_text() == "old contents"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "stats.json"]
    assert len(leftovers) == 1 and leftovers[0].endswith(".tmp")  # the complete temporary, never under the name
    # The next write replaces the file as usual.
    atomic_write_text(target, "new contents")
    assert target.read_text() == "new contents"


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")

    def half_then_fail(f) -> None:
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.bin"]
    atomic_write(tmp_path / "new" / "file.bin", lambda f: f.write(b"x"))  # creates the folder
    assert (tmp_path / "new" / "file.bin").read_bytes() == b"x"
