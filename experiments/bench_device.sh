#!/usr/bin/env bash
# The GPU benchmark in one command on a bare accelerator image (Python 3.12 with JAX + CUDA; no Hydra,
# no grain): installs the wheels in .whl/ (made here with `make bench-wheels`) into a private folder,
# then runs experiments/bench.py (default: the gpu preset, gpt2_small 32x1024, bf16, cuDNN attention).
#
#   bash experiments/bench_device.sh                         # the preset that fits the device
#   bash experiments/bench_device.sh --json bench-gpu.json   # any bench.py arguments pass through
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  site="${BENCH_SITE:-/tmp/bench-site}"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec python3 experiments/bench.py "$@"
