#!/usr/bin/env bash
# Issue 8's CPU figures side by side on this machine, in interleaved rounds (compare within a round, and take
# the best round: other load on the host only slows a run down). Per round and shape (nanogpt_bench_s,
# nanogpt_bench_m, batch 16 x 256):
#   jax-bf16    the project's train step as `make bench` runs it (research/cpu/runtime.py), bf16 matmuls
#   jax-f32     the same step in float32, the precision of the PyTorch reference
#   jax-bare    float32 without the runtime settings (glibc malloc, no flags)                  [with --ab]
#   torch       scripts/torch_reference.py, PyTorch eager float32, glibc malloc and tcmalloc
#
#   bash scripts/perf_cpu.sh            # 2 rounds
#   bash scripts/perf_cpu.sh 3 --ab     # 3 rounds, also the bare JAX step
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
rounds=${1:-2}
ab=${2:-}
tc=$($PY -c "from research.cpu.runtime import find_tcmalloc as f; print(f() or '')")
load() { cut -d' ' -f1 /proc/loadavg; }
jax() {  # label, model, dtype, launcher...
  local label=$1 model=$2 dtype=$3; shift 3
  local out steps=$([ "$model" = nanogpt_bench_s ] && echo 20 || echo 5)
  out=$("$@" $PY experiments/bench.py --model "$model" --batch 16 --steps "$steps" --warmup 2 --no-loader --no-torch \
    --set model.compute_dtype="$dtype" 2>&1)
  echo "$out" | grep -q "tokens/s" || { echo "$label $model FAILED:"; echo "$out" | tail -5; return; }
  printf '%-9s %-16s %s | %s   (load %s)\n' "$label" "$model" "$(echo "$out" | grep -m1 '   tokens/s' | xargs)" \
    "$(echo "$out" | grep -m1 '   step ' | xargs)" "$(load)"
}
$PY -m research.cpu.runtime --print
for r in $(seq "$rounds"); do
  echo "== round $r of $rounds ($(date +%T), load $(load))"
  for shape in s m; do
    model=nanogpt_bench_$shape
    jax jax-bf16 "$model" bfloat16 $PY -m research.cpu.runtime --
    jax jax-f32 "$model" float32 $PY -m research.cpu.runtime --
    [ "$ab" = "--ab" ] && jax jax-bare "$model" float32 env RESEARCH_TCMALLOC=0
    $PY scripts/torch_reference.py "$shape"
    [ -n "$tc" ] && LD_PRELOAD=$tc $PY scripts/torch_reference.py "$shape"
  done
done
