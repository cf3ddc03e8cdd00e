"""The sbatch templates on a real SLURM (slurmctld + slurmd + munge from Debian, started here), and two simulated
nodes over loopback. These tests fail, never skip, when SLURM cannot start: CI must run this tier."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from finetune.checkpoints.safe_load import safe_torch_load
from tests.finetune.test_fit import SMALL, fit_args

ROOT = Path(__file__).resolve().parents[2]
MGFT = f"{sys.executable} -m finetune"


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    started = subprocess.run(["bash", str(ROOT / "slurm" / "local-cluster.sh"), "start"], capture_output=True,
                             text=True, timeout=900)
    assert started.returncode == 0, f"the local SLURM cluster did not start:\n{started.stdout}\n{started.stderr}"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, "PYTHONPATH": str(ROOT), "MGFT": MGFT, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", **extra}


ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")
"""Job states after which a job (or an array task) runs no more."""


NEVER_STARTS = ("PartitionConfig", "BadConstraints", "PartitionNodeLimit", "ReqNodeNotAvail")
"""Reasons a pending job gives when the cluster cannot run it at all (e.g. more tasks than the node has CPUs)."""
STALL_S = 300.0
"""A job whose state and output have not changed for this long has stalled. Waits end on progress, not on a fixed
total, so a loaded machine (slower steps, slower SLURM RPCs) only makes them longer."""


def sbatch(*args: str, wait: bool = True) -> str:
    """Submit from the repository root; returns the job id (after every task of it ended, successfully, if `wait`).

    `sbatch --wait` polls with a growing interval (up to about 10 s late); `wait_for` polls every half second.
    """
    command = ["sbatch", "--parsable", "--chdir", str(ROOT), *args]
    out = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=STALL_S)
    job = out.stdout.strip().split(";")[0]
    assert job, out.stderr
    if wait:
        states = wait_for(job)
        assert set(states) == {"COMPLETED"}, f"job {job} ended {states}:\n{_job_info(job)}"
    return job


def _progress(info: str, watch: Path | None) -> tuple:
    """What changes while a job makes progress: its tasks' states, the sizes of their output files and of the files
    in `watch` (e.g. the per-step records of a training job)."""
    files = [Path(out) for out in re.findall(r"\bStdOut=(\S+)", info)]
    files += sorted(watch.glob("*")) if watch is not None and watch.is_dir() else []
    sizes = tuple(f.stat().st_size if f.exists() else -1 for f in files)
    return tuple(re.findall(r"\bJobState=(\S+)", info)), sizes


def wait_for(job: str, until: Callable[[], bool] | None = None, watch: Path | None = None,
             stall_s: float = STALL_S) -> list[str]:
    """Poll every half second until every task of `job` ended (or `until()` holds); returns the tasks' states.

    Fails when the job made no progress (`_progress`) for `stall_s` seconds, however long it has run in all, and,
    with `until`, when the job ends before `until()` holds.
    """
    last, changed = None, time.monotonic()
    while True:
        info = _job_info(job)
        states = re.findall(r"\bJobState=(\S+)", info)
        ended = bool(states) and all(state in ENDED for state in states)
        if until is not None and until():
            return states
        if ended:
            assert until is None, f"job {job} ended {states} before the awaited condition:\n{info}"
            return states
        reason = re.search(r"\bReason=(\S+)", info)
        assert not (reason and reason.group(1) in NEVER_STARTS), f"job {job} can never start:\n{info}"
        now = _progress(info, watch)
        if now != last:
            last, changed = now, time.monotonic()
        assert time.monotonic() - changed < stall_s, f"job {job} made no progress for {stall_s} s:\n{info}"
        time.sleep(0.5)


def _job_info(job: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout


def _job_field(job: str, field: str) -> str:
    match = re.search(rf"\b{field}=(\S+)", _job_info(job))
    return match.group(1) if match else ""


def _records(folder: Path, rank: int) -> list[dict]:
    path = folder / f"rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


FSDP2 = json.dumps({"class_path": "finetune.training.fsdp.ShardedStrategy", "init_args": {"data_parallel_size": 2}})


def _fit_sbatch_args(tmp_path: Path, tiny_lm_dir: Path, shards: Path, steps: int, *extra: str,
                     strategy: str = "ddp") -> list[str]:
    return [str(ROOT / "slurm" / "fit.sbatch"),
            *fit_args(SMALL, tiny_lm_dir / "musicgen-small", shards, tmp_path / "run")[2:],
            "--trainer.logger", "false", "--trainer.max_steps", str(steps), "--trainer.strategy", strategy,
            "--trainer.callbacks+=tests.finetune.helpers.BatchRecorder",
            "--trainer.callbacks.out_dir", str(tmp_path / "record"), *extra]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", FSDP2], ids=["ddp", "fsdp2"])
def test_usr1_checkpoints_requeues_and_resumes_without_losing_or_repeating_steps(
        slurm_cluster: None, tmp_path: Path, tiny_lm_dir: Path, mono_shards: Path, strategy: str) -> None:
    """fit.sbatch with two tasks (one per rank): trains, takes SLURM's USR1, requeues, resumes where it stopped."""
    log = tmp_path / "job.out"
    steps = 20  # a multiple of the recipe's checkpoint interval, so last.ckpt ends at max_steps
    job = sbatch("--ntasks-per-node", "2", "--output", str(log), *_fit_sbatch_args(
        tmp_path, tiny_lm_dir, mono_shards, steps, "--trainer.callbacks+=tests.finetune.helpers.SlowSteps",
        "--trainer.callbacks.seconds", "0.5", strategy=strategy), wait=False)
    # Let it train a few steps first.
    wait_for(job, until=lambda: len(_records(tmp_path / "record", 0)) >= 4, watch=tmp_path / "record")
    subprocess.run(["scancel", "--signal=USR1", job], check=True)  # what SLURM sends before a preemption

    states = wait_for(job, watch=tmp_path / "record")
    text = log.read_text()
    assert states == ["COMPLETED"], text[-4000:]
    assert _job_field(job, "Restarts") == "1", _job_info(job)
    saved = re.findall(r"preemption signal: checkpoint at step (\d+)", text)
    assert saved, text[-4000:]
    preempted_at = int(saved[0])
    for rank in (0, 1):
        trained = [x["step"] for x in _records(tmp_path / "record", rank)]
        # Every step exactly once across the two segments: none trained twice, none lost.
        assert trained == list(range(1, steps + 1)), (rank, trained)
        pids = [x["pid"] for x in _records(tmp_path / "record", rank)]
        assert len(set(pids[:preempted_at])) == 1 and pids[preempted_at] != pids[0]  # a new process resumed
    assert "restart 1" in text
    rows = {r: _records(tmp_path / "record", r) for r in (0, 1)}
    assert {x["world_size"] for x in rows[0] + rows[1]} == {2} and rows[0][0]["pid"] != rows[1][0]["pid"]
    keys = [{k for x in rows[r] for k in x["keys"]} for r in (0, 1)]
    assert keys[0] and keys[0].isdisjoint(keys[1])
    last = safe_torch_load(tmp_path / "run" / "checkpoints" / "last.ckpt")  # a DCP folder under FSDP2
    assert last["global_step"] == steps
    # The data stream went on where it stopped: both segments together trained the batches of an uninterrupted run.
    assert last["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 10}]
    for rank in (0, 1):
        trained = [x["keys"] for x in _records(tmp_path / "record", rank)]
        assert trained == _uninterrupted_keys(mono_shards, rank, 2, steps), rank


def _uninterrupted_keys(shards: Path, rank: int, world: int, steps: int) -> list[list[str]]:
    """The sample keys of each step of an uninterrupted run of the SMALL recipe (2 per batch, 10 per epoch)."""
    from itertools import islice

    from finetune.lm.data import MusicGenData

    data = MusicGenData(str(shards), batch_size=2, num_workers=0, steps_per_epoch=10)
    keys = []
    for epoch in range(-(-steps // 10)):
        stream = data.train_dataset(rank=rank, world_size=world)
        stream.trainer_epoch = epoch  # as the loader sets it from the trainer's step
        keys += [list(batch["keys"]) for batch in islice(stream, 10)]
    return keys[:steps]


@contextlib.contextmanager
def cpu_load(processes: int, seconds: float) -> Iterator[None]:
    """`processes` busy loops beside the test (each ends by itself after `seconds`, and at the latest with the block):
    the load of a shared machine, under which SLURM's RPCs and the jobs' steps slow down."""
    loop = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
    busy = [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(processes)]
    try:
        yield
    finally:
        for p in busy:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_prep_array_of_two_equals_a_one_task_prep(slurm_cluster: None, tmp_path: Path, synth_catalog_dir: Path,
                                                  tiny_models_dir: Path, mono_shards: Path) -> None:
    from tests.data_prep.shard_reader import read_samples

    out = tmp_path / "shards"
    # Two busy loops per core run beside the array job (the tier once failed only on a loaded machine).
    with cpu_load(2 * (os.cpu_count() or 1), seconds=STALL_S):
        _prep_array(out, tmp_path, synth_catalog_dir, tiny_models_dir)
    logs = " ".join(p.read_text() for p in tmp_path.glob("prep-*.out"))
    assert "array task 0 of 2" in logs and "array task 1 of 2" in logs, logs
    # mono_shards is the same catalog prepped by one task with the same settings.
    ours, reference = read_samples(out), read_samples(mono_shards)
    assert sorted(ours) == sorted(reference)
    for key, sample in reference.items():
        assert (ours[key]["codes"] == sample["codes"]).all(), key
    assert json.loads((out / "stats.json").read_text())["segments"] == len(reference)


def _prep_array(out: Path, tmp_path: Path, synth_catalog_dir: Path, tiny_models_dir: Path) -> None:
    sbatch("--array", "0-1", "--output", str(tmp_path / "prep-%a.out"), str(ROOT / "slurm" / "prep.sbatch"),
           "--input", str(synth_catalog_dir), "--output", str(out), "--codec", str(tiny_models_dir / "encodec_32khz"),
           "--segment-seconds", "2", "--shard-max-samples", "6", "--batch-size", "8", "--channels", "1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_simulated_nodes_train_with_node_disjoint_data(tmp_path: Path, tiny_lm_dir: Path,
                                                           mono_shards: Path) -> None:
    port = str(_free_port())
    args = [*fit_args(SMALL, tiny_lm_dir / "musicgen-small", mono_shards, tmp_path / "run"),
            "--trainer.logger", "false", "--trainer.max_steps", "4", "--trainer.num_nodes", "2",
            "--trainer.devices", "1", "--trainer.strategy", "ddp",
            "--trainer.callbacks+=tests.finetune.helpers.BatchRecorder",
            "--trainer.callbacks.out_dir", str(tmp_path / "record")]
    nodes = [subprocess.Popen([sys.executable, "-m", "finetune", *args], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(rank),
                                       LOCAL_RANK="0"))
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    rows = {r: _records(tmp_path / "record", r) for r in (0, 1)}
    assert [x["step"] for x in rows[0]] == [x["step"] for x in rows[1]] == [1, 2, 3, 4]
    assert {x["world_size"] for x in rows[0] + rows[1]} == {2}
    keys = [{k for x in rows[r] for k in x["keys"]} for r in (0, 1)]
    assert keys[0] and keys[1] and keys[0].isdisjoint(keys[1])
