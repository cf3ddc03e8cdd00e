#!/usr/bin/env bash
# Every GPU figure in one command: training (musicgen-small and -medium, full and LoRA, with and without
# model.compile, FSDP2 on one GPU: frames/s, MFU, peak memory, host syncs per step), EnCodec and HTDemucs real-time
# factors, MBD decoding and mgft's sampler against transformers' generate.
#
#   bash bench/gpu.sh                 # on one GPU, real-size random-weight models (written once under bench/out/)
#   bash bench/gpu.sh --dry-run       # CPU, tiny models and lengths: proves the script runs (make test runs it)
#
# Each bench prints its own table; run one alone for more options (python bench/<name>.py --help).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

if [ "${1:-}" = "--dry-run" ]; then
    # Tiny sizes and lengths, CPU: every stage runs, no figure means anything.
    train=(--size tiny --device cpu --models musicgen-small --seconds 1 --batch-size 2 --warmup 1 --steps 1)
    prep=(--device cpu --seconds 1 --segments 2 --batch-size 2 --stems-segments 1 --size tiny)
    mbd=(--device cpu --seconds 0.2 --steps 2 --size tiny)
    gen=(--device cpu --size tiny --seconds 0.2 --repeat 1)
elif [ -n "${1:-}" ]; then
    echo "usage: bash bench/gpu.sh [--dry-run]" >&2
    exit 2
else
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu.sh: no CUDA device (try --dry-run)')"
    train=(--device cuda --seconds 30 --batch-size 4 --warmup 3 --steps 10)
    prep=(--device cuda --seconds 30 --segments 16 --batch-size 16 --stems-segments 8)
    mbd=(--device cuda --seconds 10 --repeat 3)
    gen=(--device cuda --seconds 10 --batch-size 4 --repeat 2)
fi

echo "== training step (bench/gpu_train.py)"
"$PY" bench/gpu_train.py "${train[@]}"
echo "== prep: EnCodec and HTDemucs (bench/prep.py)"
"$PY" bench/prep.py "${prep[@]}"
echo "== MBD decoding (bench/mbd.py)"
"$PY" bench/mbd.py "${mbd[@]}"
echo "== sampling: mgft vs transformers generate (bench/generate.py)"
"$PY" bench/generate.py "${gen[@]}"
