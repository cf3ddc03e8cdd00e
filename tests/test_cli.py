"""The `mgft` entry point: help lists the commands, flags from files, unknown keys fail naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finetune.__main__ import COMMANDS, LIGHTNING_COMMANDS, main, normalize_flags

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_command() -> None:
    out = subprocess.run([sys.executable, "-m", "finetune", "-h"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    for name in [*COMMANDS, *LIGHTNING_COMMANDS]:
        assert name in out.stdout


def test_normalize_flags_accepts_kebab_case_and_bare_switches() -> None:
    from data_prep.prep import prep

    args = ["--input", "a", "--keep-audio", "--melody", "false", "--segment-seconds", "5", "--demucs", "x"]
    assert normalize_flags(prep, args) == [
        "--input", "a", "--keep_audio", "true", "--melody", "false", "--segment_seconds", "5", "--demucs", "x"
    ]


@pytest.mark.parametrize("config", sorted((ROOT / "configs" / "prep").glob("*.yaml")), ids=lambda p: p.name)
def test_prep_config_files_parse(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every shipped prep config is accepted by the real parser (the command itself is replaced)."""
    import data_prep.prep

    seen = {}
    monkeypatch.setattr(data_prep.prep, "prep", _capture(seen, data_prep.prep.prep))
    main(["prep", "--config", str(config), "--input", "in", "--output", "out"])
    assert seen["codec"] == yaml.safe_load(config.read_text())["codec"]


def _capture(store: dict, real):
    import functools

    @functools.wraps(real)
    def fake(**kwargs):
        store.update(kwargs)

    return fake


def test_unknown_config_key_fails_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"codec": "x", "segmnet_seconds": 10}))
    out = subprocess.run(
        [sys.executable, "-m", "finetune", "prep", "--config", str(bad), "--input", str(tmp_path), "--output", "o"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert out.returncode != 0
    assert "segmnet_seconds" in out.stderr
    assert not (Path(ROOT) / "o").exists(), "nothing may run before the config is validated"


def test_bad_values_fail_before_any_model_is_loaded(tmp_path: Path) -> None:
    from data_prep.prep import prep

    with pytest.raises(ValueError, match="--channels"):
        prep(input=str(tmp_path), output=str(tmp_path / "o"), codec="nonexistent", channels=3)
    with pytest.raises(ValueError, match="--demucs"):
        prep(input=str(tmp_path), output=str(tmp_path / "o"), codec="nonexistent", melody=True)
    assert not (tmp_path / "o").exists()


HELP_IMPORTS = """
import sys
from finetune.__main__ import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = [name for name in ("torch", "lightning", "transformers") if name in sys.modules]
print("HEAVY=" + ",".join(heavy))
"""


@pytest.mark.parametrize("command", ["-h", *COMMANDS])
def test_help_imports_neither_torch_nor_lightning(command: str) -> None:
    args = [command] if command == "-h" else [command, "--help"]
    out = subprocess.run([sys.executable, "-c", HELP_IMPORTS, *args], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage" in out.stdout.lower()
    assert out.stdout.strip().endswith("HEAVY="), out.stdout[-300:]


def test_unknown_command_lists_the_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "finetune", "fti"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "unknown command 'fti'" in out.stderr and "generate" in out.stderr
