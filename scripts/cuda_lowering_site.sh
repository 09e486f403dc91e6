#!/usr/bin/env bash
# A folder that lets JAX lower cuDNN attention for CUDA on a machine without a GPU, for
# tests/integration/test_cuda_lowering.py (which uses .cache/cuda-lowering-site when it exists, and else
# stubs JAX's cuDNN version check: the lowered modules came out identical). JAX asks the jax-cuda13-plugin
# wheel's _versions module for the cuDNN version, and that loads libcudnn.so.9 and libcudnn_graph.so.9;
# nothing else of CUDA is needed and nothing is installed (no PJRT plugin, so JAX still runs on the CPU).
# Downloads 7.5 MB + 517 MB once; keeps 162 MB.
#
#   bash scripts/cuda_lowering_site.sh [DIR]      # default .cache/cuda-lowering-site
set -euo pipefail
cd "$(dirname "$0")/.."
site="${1:-.cache/cuda-lowering-site}"
py=.venv/bin/python
jax_version="$($py -c 'import jax; print(jax.__version__)')"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
$py -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "jax-cuda13-plugin==$jax_version" "nvidia-cudnn-cu13>=9.12,<10"
rm -rf "$site.tmp" && mkdir -p "$site.tmp/nvidia/cudnn/lib"
(cd "$site.tmp" && unzip -q "$tmp"/jax_cuda13_plugin-*.whl 'jax_cuda13_plugin/*')
unzip -q -j "$tmp"/nvidia_cudnn_cu13-*.whl 'nvidia/cudnn/lib/libcudnn.so.9' 'nvidia/cudnn/lib/libcudnn_graph.so.9' \
  -d "$site.tmp/nvidia/cudnn/lib"
rm -rf "$site" && mv "$site.tmp" "$site"
LOWERING_CUDA_SITE="$site" $py -c 'import sys; sys.path.insert(0, sys.argv[1]); import jax_cuda13_plugin._versions as v; print("cuDNN", v.cudnn_get_version(), "in", sys.argv[1])' "$site"
