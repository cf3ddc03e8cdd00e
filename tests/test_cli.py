"""The `mgft` entry point: help lists the commands, flags from files, unknown keys fail naming the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from finetune.__main__ import COMMANDS, LIGHTNING_COMMANDS, main, normalize_flags
from tests.helpers import one_line_error

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


@pytest.mark.parametrize("duration", ["0", "0.01", "-3"])
def test_generate_refuses_a_duration_below_half_a_second(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                         duration: str) -> None:
    line = one_line_error(capsys, ["generate", "--model", str(tmp_path), "--prompt", "x", "--duration", duration,
                                    "--out", str(tmp_path / "out")])
    assert line == f"mgft generate: error: --duration must be at least 0.5 s, got {float(duration)}"


def test_generate_never_overwrites_an_earlier_run(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                  tiny_lm_dir: Path) -> None:
    from finetune.inference.generate import generate

    out = tmp_path / "out"
    model = str(tiny_lm_dir / "musicgen-small")
    generate(model=model, prompts=_prompts(tmp_path, "one", "two", "three"), duration=1.0, out=str(out))
    assert sorted(p.name for p in out.iterdir()) == ["0000.wav", "0001.wav", "0002.wav", "codes.npy", "prompts.txt"]
    line = one_line_error(capsys, ["generate", "--model", model, "--prompt", "four", "--duration", "1",
                                    "--out", str(out)])
    assert "already holds files" in line and "--overwrite" in line
    generate(model=model, prompt="four", duration=1.0, out=str(out), overwrite=True)
    # The index lists every clip in the folder: none of the earlier three is left behind.
    assert sorted(p.name for p in out.iterdir()) == ["0000.wav", "codes.npy", "prompts.txt"]
    assert (out / "prompts.txt").read_text() == "0000.wav\tfour\n"
    (out / "mine.txt").write_text("not a clip")
    with pytest.raises(ValueError, match="no mgft generate wrote"):
        generate(model=model, prompt="five", duration=1.0, out=str(out), overwrite=True)


@pytest.mark.parametrize("command", ["generate", "eval"])
def test_audiocraft_base_reaches_the_model_loader(command: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`--audiocraft-base` names the local base model of an audiocraft export for both commands that load one."""
    from finetune.inference import load

    seen = {}

    class Loaded(Exception):
        pass

    def loader(path, device="cpu", trust_checkpoint=False, audiocraft_base=None):
        seen.update(path=path, audiocraft_base=audiocraft_base)
        raise Loaded

    monkeypatch.setattr(load, "load_for_inference", loader)
    export, base = tmp_path / "state_dict.bin", tmp_path / "base"
    export.touch()  # the commands check that it exists before loading it
    args = {"generate": ["--prompt", "x", "--duration", "1", "--out", str(tmp_path / "out")],
            "eval": ["--data.shards", str(tmp_path), "--out", str(tmp_path / "report")]}[command]
    with pytest.raises(Loaded):
        main([command, "--model", str(export), "--audiocraft-base", str(base), *args])
    assert seen == {"path": str(export), "audiocraft_base": str(base)}


def _prompts(folder: Path, *lines: str) -> str:
    path = folder / "prompts.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_prep_refuses_a_batch_size_of_zero(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    line = one_line_error(capsys, ["prep", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--codec", "x",
                                    "--batch-size", "0"])
    assert line == "mgft prep: error: --batch-size must be at least 1, got 0"


def test_export_says_what_a_wrong_file_is(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    import soundfile as sf
    import torch

    sf.write(tmp_path / "a.wav", np.zeros(3200, dtype=np.float32), 32000)
    (tmp_path / "notes.txt").write_text("a text file\n")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    torch.save({"best_state": {"x": torch.zeros(1)}, "xp.cfg": {}}, tmp_path / "state_dict.bin")
    cases = {"a.wav": "an audio file (wav), not a checkpoint", "notes.txt": "a text file, not a checkpoint",
             "hf": "a transformers model folder", "empty": "a folder that holds no checkpoint",
             "missing.ckpt": "no such file or folder", "state_dict.bin": "an audiocraft export"}
    for name, expected in cases.items():
        status = 2 if name == "missing.ckpt" else 1  # a wrong path, or a file that is not a checkpoint
        line = one_line_error(capsys, ["export", str(tmp_path / name), "--out", str(tmp_path / "out")], status)
        assert line.startswith("mgft export: error: ") and expected in line, (name, line)
    assert not (tmp_path / "out").exists()


def test_fit_resume_without_a_checkpoint_names_the_folder(tmp_path: Path, tiny_lm_dir: Path) -> None:
    args = ["fit", "--config", str(ROOT / "recipes" / "tiny" / "small-full.yaml"), "--model.pretrained",
            str(tiny_lm_dir / "musicgen-small"), "--data.shards", str(tmp_path), "--trainer.default_root_dir",
            str(tmp_path / "typo"), "--trainer.logger", "false", "--ckpt_path", "last"]
    # In a subprocess, as people run it (Lightning's loggers keep the stream of the first test that used them).
    out = subprocess.run([sys.executable, "-m", "finetune", *args], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("mgft fit: error: ")
    assert f"--ckpt_path last: no checkpoint in {tmp_path / 'typo' / 'checkpoints'}" in line
    assert not (tmp_path / "typo").exists(), "nothing may be created for a run that cannot resume"


def test_fit_refuses_shards_of_another_channel_count_before_building_anything(
    tmp_path: Path, tiny_lm_dir: Path, stereo_melody_shards: Path
) -> None:
    # The recipe's wandb logger stays on: a check that ran after the model and logger were built would leave a run
    # folder holding a wandb run.
    run = tmp_path / "run"
    args = ["fit", "--config", str(ROOT / "recipes" / "tiny" / "small-full.yaml"), "--model.pretrained",
            str(tiny_lm_dir / "musicgen-small"), "--data.shards", str(stereo_melody_shards),
            "--trainer.default_root_dir", str(run)]
    out = subprocess.run([sys.executable, "-m", "finetune", *args], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)})
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("mgft fit: error: data.shards ") and "hold 8 codebooks (stereo" in line, line
    assert "has 4 (mono): prep with --channels 1" in line, line
    assert "trainable" not in out.stdout, "the model must not have been built"
    assert not run.exists() and not (tmp_path / "wandb").exists(), "a refused run leaves no run folder or wandb run"


def test_the_early_shard_check_covers_mono_to_stereo_melody_and_sample_rate(
    tmp_path: Path, tiny_lm_dir: Path, mono_shards: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from finetune.cli import check_shards_fit_model
    from finetune.lm import data

    def model(name: str, mono_to_stereo: bool = False) -> SimpleNamespace:
        """`cfg.model` as jsonargparse gives it: attributes and `.get`."""
        ns = SimpleNamespace(pretrained=str(tiny_lm_dir / name), mono_to_stereo=mono_to_stereo)
        ns.get = lambda key, default=None: getattr(ns, key, default)
        return ns

    check_shards_fit_model(model("musicgen-small"), str(mono_shards))  # matching: no error
    with pytest.raises(ValueError, match="hold 4 codebooks .* has 8 .stereo"):
        check_shards_fit_model(model("musicgen-small", mono_to_stereo=True), str(mono_shards))
    with pytest.raises(ValueError, match="hold 4 codebooks"):
        check_shards_fit_model(model("musicgen-stereo-melody"), str(mono_shards))
    # Shards as they would look without chroma / at another rate, from the real first sample.
    real = data.describe_shards(str(mono_shards))
    monkeypatch.setattr(data, "describe_shards", lambda shards: {**real, "num_codebooks": 8, "has_chroma": False})
    with pytest.raises(ValueError, match="is a melody model but data.shards .* hold no chroma.*--melody"):
        check_shards_fit_model(model("musicgen-stereo-melody"), str(mono_shards))
    monkeypatch.setattr(data, "describe_shards", lambda shards: {**real, "sample_rate": 44100})
    with pytest.raises(ValueError, match="prepped at 44100 Hz .* runs at 32000 Hz"):
        check_shards_fit_model(model("musicgen-small"), str(mono_shards))
    assert real["sample_rate"] == 32000 and real["num_codebooks"] == 4


def test_plan_names_a_recipe_model_it_cannot_find(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the tiny recipe's demo-run/models/... does not exist here
    line = one_line_error(capsys, ["plan", "--config", str(ROOT / "recipes" / "tiny" / "small-full.yaml")])
    assert "'demo-run/models/musicgen-small' is no local folder and no hub MusicGen id" in line
    assert "no such recipe file" in one_line_error(capsys, ["plan", "--config", "missing.yaml"])


def test_a_mistyped_local_model_is_reported_as_missing_not_as_the_hub(capsys: pytest.CaptureFixture,
                                                                      tmp_path: Path) -> None:
    line = one_line_error(capsys, ["generate", "--model", str(tmp_path / "modles" / "musicgen-small"), "--prompt",
                                    "x", "--out", str(tmp_path / "out")])
    assert line.endswith(f"--model {tmp_path / 'modles' / 'musicgen-small'}: no such file or folder")
    line = one_line_error(capsys, ["prep", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--codec",
                                    "facebook/encodec_32khz"])
    assert "holds no audio files" in line  # checked before the codec is looked up


def test_offline_melody_without_a_local_demucs_says_so(tmp_path: Path, tiny_lm_dir: Path) -> None:
    import soundfile as sf

    from finetune.inference.generate import generate

    sf.write(tmp_path / "tune.wav", np.zeros(32000, dtype=np.float32), 32000)
    with pytest.raises(ValueError, match="--demucs htdemucs is a model to download, and HF_HUB_OFFLINE=1"):
        generate(model=str(tiny_lm_dir / "musicgen-stereo-melody"), prompt="x", melody=str(tmp_path / "tune.wav"),
                 duration=1.0, out=str(tmp_path / "out"))
