#!/usr/bin/env bash
# Issue 8's CPU figures in one command, side by side on this machine, in interleaved rounds (take the best
# round: other load only slows a run down). Per round and shape (nanogpt_bench_s, nanogpt_bench_m, batch 16 x 256):
#   jax         the project's train step as `make bench` runs it (research/runtime.py: tcmalloc + XLA flags)
#   jax-bare    the same without the runtime settings (glibc malloc, no flags)          [with --ab]
#   torch       scripts/torch_reference.py, PyTorch eager, glibc malloc and tcmalloc
# The load average is printed before each run; a quiet machine reads below ~0.3.
#
#   bash scripts/perf_cpu.sh            # 2 rounds
#   bash scripts/perf_cpu.sh 3 --ab     # 3 rounds, also the bare JAX step
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
rounds=${1:-2}
ab=${2:-}
tc=$($PY -c "from research.runtime import find_tcmalloc as f; print(f() or '')")
load() { cut -d' ' -f1 /proc/loadavg; }
jax() {  # label, runtime prefix..., then model
  local label=$1 model=${@: -1}; shift
  local out
  out=$("${@:1:$#-1}" $PY experiments/bench.py --model "$model" --batch 16 --steps 10 --warmup 2 --no-loader 2>&1)
  echo "$out" | grep -q "tokens/s" || { echo "$label $model FAILED:"; echo "$out" | tail -5; return; }
  printf '%-9s %-16s %s | %s   (load %s)\n' "$label" "$model" "$(echo "$out" | grep -m1 'tokens/s' | xargs)" \
    "$(echo "$out" | grep -m1 ' step ' | xargs)" "$(load)"
}
$PY -m research.runtime --print
for r in $(seq "$rounds"); do
  echo "== round $r of $rounds ($(date +%T), load $(load))"
  for shape in s m; do
    model=nanogpt_bench_$shape
    jax jax $PY -m research.runtime -- "$model"
    [ "$ab" = "--ab" ] && jax jax-bare env "$model"
    $PY scripts/torch_reference.py "$shape"
    [ -n "$tc" ] && LD_PRELOAD=$tc $PY scripts/torch_reference.py "$shape"
  done
done
