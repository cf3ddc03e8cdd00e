"""Builders and checks shared by test modules across the tree (test modules never import each other)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(capsys: pytest.CaptureFixture, args: list[str], status: int = 2) -> str:
    """Run `mgft ARGS` as the console script does; it must end with `status` (2: a wrong command line, 1: a file it
    names that cannot be used) and exactly one line on stderr, no traceback. Returns the line."""
    from finetune.__main__ import cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == status and len(err) == 1 and "Traceback" not in err[0], (exit_.value.code, err)
    return err[0]


def run_fits(cases: list[dict[str, Any]], work: Path, ranks: int, timeout: float = 1200) -> tuple[dict, str]:
    """Run `mgft fit|mbd-fit` cases one after another in one process, or in one torchrun group of `ranks`.

    Args:
        cases: `{"name", "args"}` each (`tests/run_recipes.py`).
        work: Where the case and result files go.
        ranks: 1 for one process; more for a gloo group of that many ranks (each runs every case, in order).
        timeout: Seconds for the whole group.

    Returns:
        (the results by case name, as `tests/run_recipes.py` writes them; the group's stderr).
    """
    if not cases:
        return {}, ""
    cases_file, results_file = work / f"cases{ranks}.json", work / f"results{ranks}.json"
    cases_file.write_text(json.dumps(cases))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # As a module from the repository root: run as a file, tests/ would come first on sys.path and its `finetune`
    # test package would shadow the real one.
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_addr",
              "127.0.0.1", "--master_port", str(port)] if ranks > 1 else [sys.executable]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([*launch, "-m", "tests.run_recipes", str(cases_file), str(results_file)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert results_file.exists(), done.stderr[-4000:]
    return json.loads(results_file.read_text()), done.stderr
