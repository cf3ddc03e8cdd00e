"""Run recipes in-process, one after another, for `tests/test_recipes.py`: each rank of a torchrun group (or a single
process) runs every case of CASES.json in the same order, so the collectives of one fit line up across the ranks.

    python -m torch.distributed.run --nproc_per_node 2 -m tests.run_recipes CASES.json OUT.json
    python -m tests.run_recipes CASES.json OUT.json

A case is `{"name", "args"}`: the arguments of `mgft fit|mbd-fit` (command first). Rank 0 writes, per case: whether
it ran, its wall time, the step it ended at, the error line if it failed, and the progress bar's last count and total.
One process for many runs: imports, the process group and the gloo rendezvous are paid once, not once per run.
`tests/helpers.py::run_fits` launches it.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback


def main(cases_file: str, out_file: str) -> None:
    from finetune.cli import run

    rank = int(os.environ.get("RANK", "0"))
    results = {}
    for case in json.loads(open(cases_file).read()):
        start = time.perf_counter()
        try:
            cli = run(case["args"])
            bar = getattr(cli.trainer.progress_bar_callback, "_train_progress_bar", None)  # None: nothing trained
            progress = [bar.n, bar.total] if bar is not None else None
            results[case["name"]] = {"ok": True, "seconds": round(time.perf_counter() - start, 1),
                                     "progress": progress, "step": cli.trainer.global_step}
        except Exception as error:  # noqa: BLE001 (recorded for the test to report; the other cases still run)
            traceback.print_exc()
            results[case["name"]] = {"ok": False, "seconds": round(time.perf_counter() - start, 1),
                                     "error": f"{type(error).__name__}: {error}"}
        if rank == 0:
            with open(out_file, "w") as f:
                json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
