"""Checkpoints load without running code from them: OmegaConf configs become dicts, code-running pickles are refused."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from finetune.checkpoints.safe_load import UnsafeCheckpointError, resolve_interpolations, safe_torch_load


class _RunsCode:
    """Unpickling this calls `os.system`, as a malicious checkpoint would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Benign:
    """A plain user class: outside the allowlist, so it needs trust, but harmless."""

    def __init__(self) -> None:
        self.value = 3


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"w": torch.ones(2)}, "payload": _RunsCode(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system|os\.system") as error:
        safe_torch_load(tmp_path / "evil.ckpt")
    assert "--trust-checkpoint" in str(error.value)
    assert not marker.exists()


def test_the_cli_refuses_it_with_the_same_message(tmp_path: Path) -> None:
    from finetune.__main__ import main

    marker = tmp_path / "pwned"
    torch.save({"hyper_parameters": {}, "x": _RunsCode(marker)}, tmp_path / "last.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        main(["export", str(tmp_path / "last.ckpt"), "--out", str(tmp_path / "out")])
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        main(["generate", "--model", str(tmp_path / "last.ckpt"), "--prompt", "x", "--out", str(tmp_path / "out")])
    assert not marker.exists()


def test_trust_checkpoint_allows_full_unpickling(tmp_path: Path) -> None:
    torch.save({"obj": _Benign()}, tmp_path / "custom.pt")
    with pytest.raises(UnsafeCheckpointError, match="_Benign"):
        safe_torch_load(tmp_path / "custom.pt")
    assert safe_torch_load(tmp_path / "custom.pt", trust_checkpoint=True)["obj"].value == 3


def test_audiocraft_omegaconf_checkpoints_load_as_plain_dicts(tmp_path: Path) -> None:
    """audiocraft's `checkpoint.th` and the MBD `.th` pickle DictConfigs; they load without trust, interpolations
    resolved, as `OmegaConf.to_container(resolve=True)` gives."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({
        "sample_rate": 32000,
        "channels": 1,
        "dataset": {"segment_duration": 30, "sample_rate": "${sample_rate}"},
        "transformer_lm": {"dim": 64, "n_q": 4, "delays": [0, 1, 2, 3], "name": "lm_${transformer_lm.dim}"},
        "schedule": {"beta_t0": 1e-5, "beta_t1": 2.9e-2, "num_steps": 1000, "repartition": "power"},
        "optional": None,
    })
    package = {
        "xp.cfg": cfg,
        "best_state": {"model": {"emb.0.weight": torch.randn(3, 2)}},
        0: {"cfg": cfg.schedule, "model_state": {"w": torch.ones(1)}},
    }
    torch.save(package, tmp_path / "checkpoint.th")
    with pytest.raises(pickle.UnpicklingError):  # torch's own safe loader refuses DictConfig (docs/formats.md)
        torch.load(tmp_path / "checkpoint.th", weights_only=True)

    loaded = safe_torch_load(tmp_path / "checkpoint.th")
    assert loaded["xp.cfg"] == OmegaConf.to_container(cfg, resolve=True)
    assert loaded["xp.cfg"]["dataset"]["sample_rate"] == 32000 and loaded["xp.cfg"]["transformer_lm"]["name"] == "lm_64"
    assert loaded[0]["cfg"] == OmegaConf.to_container(cfg.schedule, resolve=True)
    assert torch.equal(loaded["best_state"]["model"]["emb.0.weight"], package["best_state"]["model"]["emb.0.weight"])


def test_resolve_interpolations_handles_relative_and_embedded_references() -> None:
    cfg = {"a": {"b": 2, "c": "${.b}", "d": "x${..top}y"}, "top": 5, "lst": ["${a.b}"], "env": "${oc.env:HOME}"}
    assert resolve_interpolations(cfg) == {"a": {"b": 2, "c": 2, "d": "x5y"}, "top": 5, "lst": [2],
                                           "env": "${oc.env:HOME}"}
