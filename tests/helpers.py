"""Builders and checks shared by test modules across the tree (test modules never import each other)."""

from __future__ import annotations

import pytest


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
