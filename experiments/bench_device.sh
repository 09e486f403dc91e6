#!/usr/bin/env bash
# The device run in one command on a bare accelerator image (Python 3.12 with JAX + CUDA; no Hydra, no grain),
# inside 8 minutes, everything written under $OUT (experiments/device_run.py: nvidia-smi, the benchmark of
# gpt2_small and gpt2_medium at 32 x 1024 in bf16 with cuDNN attention, gpt2_small trained 300 steps on the
# books corpus with a checkpoint and a resume, summary.json/summary.txt).
#
# Carry .whl/: the wheels the image lacks (`make bench-wheels` here) and data.tar.xz, the books corpus prepared at
# GPT-2's vocabulary (`.venv/bin/python experiments/device_run.py --pack-data` here; the device has no network).
#
#   bash experiments/bench_device.sh                  # on the GPU: writes $OUT (default runs/device/)
#   bash experiments/bench_device.sh --dry-run        # on a CPU: every stage on tiny models
#   bash experiments/bench_device.sh --model gpt2_xl --batch 8    # other arguments: experiments/bench.py alone
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"  # the image's; PYTHON=.venv/bin/python for a dry run here
if compgen -G ".whl/*.whl" >/dev/null && ! "$python" -c "import hydra, grain" 2>/dev/null; then
  site="${BENCH_SITE:-/tmp/bench-site}"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -f .whl/data.tar.xz ]; then  # once: the prepared dataset's folder under data/
  name="$(tar -tJf .whl/data.tar.xz 2>/dev/null | head -1 | cut -d/ -f1 || true)"
  [ -n "$name" ] && [ -d "data/$name" ] || { mkdir -p data && tar -xJf .whl/data.tar.xz -C data; }
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
case "${1:-}" in
  ""|--dry-run|--out|--out=*|--deadline|--deadline=*|--work|--work=*|-h|--help) exec "$python" experiments/device_run.py "$@" ;;
  *) exec "$python" experiments/bench.py "$@" ;;  # bench.py's own arguments: the benchmark alone, as before
esac
