"""How long `mgft --help` (and one command's help) takes, as a ratio to `python -c "import torch"`, in one run.

    python bench/startup.py [--repeat 5]

Each command runs as a fresh process, interleaved (torch, mgft -h, mgft generate -h, ...) so that a busy machine
slows them alike; the medians and the ratios are printed. `mgft -h` imports nothing beyond `finetune/__main__.py`
and `mgft <command> -h` only that command's module (tests/test_cli.py checks that neither imports torch).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "mgft -h": [sys.executable, "-m", "finetune", "-h"],
    "mgft generate -h": [sys.executable, "-m", "finetune", "generate", "-h"],
    "mgft prep -h": [sys.executable, "-m", "finetune", "prep", "-h"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeat):
        for name, command in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - start)
    torch_s = statistics.median(times["import torch"])
    print(f"{'command':<20} {'median s':>9} {'x import torch':>15}   ({args.repeat} runs each, interleaved)")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<20} {median:9.3f} {median / torch_s:15.2f}")


if __name__ == "__main__":
    main()
