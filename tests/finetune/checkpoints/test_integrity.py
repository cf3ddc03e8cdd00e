"""Damaged checkpoints end every command that reads them in one line (exit status 1), before anything loads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from finetune.checkpoints.integrity import check_checkpoint
from finetune.errors import BadFileError
from tests.helpers import one_line_error


@pytest.fixture
def damaged(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Files a full disk, a killed copy or a wrong name leave behind: path -> (what it is, what the error says)."""
    import torch.distributed.checkpoint as dcp

    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.randn(64, 64)}, "hyper_parameters": {"lr": 1.0}}, whole)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    text = tmp_path / "text.ckpt"
    text.write_text("model weights: see the shared drive\n")
    folder = tmp_path / "sharded.ckpt"  # a distributed checkpoint, as the FSDP2 trainer writes one
    dcp.save({"state_dict": {"w": torch.randn(64, 64)}}, checkpoint_id=str(folder))
    torch.save({"hyper_parameters": {"lr": 1.0}}, folder / "meta.pt")
    check_checkpoint(whole), check_checkpoint(folder)  # the originals are whole
    missing = tmp_path / "missing-shard.ckpt"
    shutil.copytree(folder, missing)
    [shard] = missing.glob("*.distcp")
    shard.unlink()
    cut = tmp_path / "cut-shard.ckpt"
    shutil.copytree(folder, cut)
    [shard] = cut.glob("*.distcp")
    shard.write_bytes(shard.read_bytes()[:100])
    no_meta = tmp_path / "no-meta.ckpt"
    shutil.copytree(folder, no_meta)
    (no_meta / "meta.pt").unlink()
    return {"truncated": (truncated, "truncated or corrupt: the zip directory"),
            "text": (text, "a text file, not a checkpoint"),
            "missing shard": (missing, f"missing its shard file {shard.name}"),
            "cut shard": (cut, f"its shard file {shard.name} holds 100 bytes"),
            "no meta.pt": (no_meta, "without its meta.pt")}


def test_check_checkpoint_names_what_is_wrong(damaged: dict[str, tuple[Path, str]]) -> None:
    for name, (path, expected) in damaged.items():
        with pytest.raises(BadFileError, match=expected) as error:
            check_checkpoint(path)
        assert str(path) in str(error.value), name


@pytest.mark.parametrize("command", ["generate", "export", "eval"])
def test_every_reader_stops_in_one_line_with_status_1(command: str, damaged: dict[str, tuple[Path, str]],
                                                      capsys: pytest.CaptureFixture, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import finetune.lm.load

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded for a damaged checkpoint")

    monkeypatch.setattr(finetune.lm.load, "load_musicgen", no_model)  # the check comes before any model
    out = tmp_path / "out"
    for path, expected in damaged.values():
        args = {"generate": ["generate", "--model", str(path), "--prompt", "x", "--out", str(out)],
                "export": ["export", str(path), "--out", str(out)],
                "eval": ["eval", "--model", str(path), "--data.shards", str(tmp_path), "--out", str(out)]}[command]
        line = one_line_error(capsys, args, status=1)
        assert line.startswith(f"mgft {command}: error: {path}") and expected in line, line
    assert not out.exists()
