# Everything runs inside .venv, created and filled by `make setup` (every target depends on it).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
EXPERIMENT ?= cpu_sweep
SWEEP_DIR = runs/$(EXPERIMENT)
LAW ?=
FIT_ARGS ?= --bootstrap 1000
ARGS ?=
PYTEST_ARGS ?=

# CPU runtime for train, sweep and bench: tcmalloc via LD_PRELOAD when installed (else one line says how to
# install it) and the XLA CPU flags of research/cpu/runtime.py; it prints what it applied. RUNTIME= runs bare.
RUNTIME ?= $(PY) -m research.cpu.runtime --

# Persistent XLA compilation cache shared by runs, sweeps and tests.
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.cache/jax
export PYTHONUNBUFFERED := 1

.PHONY: setup data train sweep test test-unit lint format bench bench-wheels bench-fit bench-data plan tensorboard clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[dev]"
	-@$(PY) -m research.cpu.runtime --install-tcmalloc
	touch $(STAMP)

data: setup
	$(PY) -m research.data

train: data
	$(RUNTIME) $(PY) experiments/train.py $(ARGS)

# The sweep (conf/experiment/$(EXPERIMENT).yaml) as a Hydra multirun into runs/$(EXPERIMENT)/, then the
# fit of the experiment's law (sweep.law and sweep.fit_args; LAW= overrides the law) with its figures into
# runs/$(EXPERIMENT)/fit/, then the report. Finished members are skipped, interrupted ones resume, failed ones
# rerun. A fit the data cannot support is refused (the report says why) and `make sweep` exits non-zero.
sweep: data
	$(RUNTIME) $(PY) experiments/train.py -m +experiment=$(EXPERIMENT) $(ARGS)
	fit=0; $(PY) -m analysis fit $(SWEEP_DIR) --law $(or $(LAW),$$($(PY) -m research.sweep law $(EXPERIMENT))) \
		$$($(PY) -m research.sweep fit-args $(EXPERIMENT)) --out $(SWEEP_DIR)/fit $(FIT_ARGS) || fit=$$?; \
		$(PY) -m research.sweep report $(SWEEP_DIR) && exit $$fit

# The suite: tests/unit (modules on their own, seconds each) then tests/integration (tiny runs, faults, sweeps,
# multihost). `make test-unit` runs the first alone.
test: data
	$(PY) -m pytest -q tests/unit tests/integration $(PYTEST_ARGS)

test-unit: data
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

# ruff's linter and its formatter (enforced: CI runs `make lint`; `make format` rewrites).
LINTED := research analysis experiments tests scripts
lint: setup
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

format: setup
	$(VENV)/bin/ruff format $(LINTED)
	$(VENV)/bin/ruff check --fix $(LINTED)

plan: setup
	$(PY) experiments/plan.py $(ARGS)

# Times the jitted train step after warm-up: compile time, step time, tokens/s, TFLOP/s and MFU in both
# FLOP conventions, the data loader's tokens/s beside it. The CPU set here (nano_xl, nanogpt_bench_s/m);
# gpt2_small and gpt2_medium 32x1024 (bf16, cuDNN attention; small also from the persistent cache) on a GPU.
# ARGS: e.g. --model nano_m --mesh fsdp --batch 32.
bench: setup
	$(RUNTIME) $(PY) experiments/bench.py $(ARGS)

# The wheels a bare GPU image (Python 3.12, JAX, no Hydra/grain) needs for `bash experiments/bench_device.sh`,
# pinned to this venv's versions, into .whl/ (git-ignored; carry it to the device).
BENCH_WHEELS := flax hydra-core omegaconf grain array-record portpicker cloudpickle
bench-wheels: setup
	mkdir -p .whl && rm -f .whl/*.whl  # data.tar.xz (experiments/device_run.py --pack-data) stays
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl \
		$$($(PY) -m pip freeze | grep -iE '^($(subst $(eval) ,|,$(subst -,.,$(BENCH_WHEELS))))==')
	$(PY) -m pip wheel -q --no-deps -w .whl $$($(PY) -m pip freeze | grep -i '^antlr4-python3-runtime==')
	ls -la .whl

bench-fit: setup
	$(PY) -m analysis bench

# Preparing synthetic corpora of 0.3 and 3 GB (written once under data/bench/): peak RSS, time per stage, MB/s
# and tokens/s with 1 and 2 workers against the tokenizer's own rate (docs/performance.md). About 30 minutes.
bench-data: setup
	$(PY) experiments/bench_data.py $(ARGS)

tensorboard: setup
	$(VENV)/bin/tensorboard --logdir runs/

clean:
	rm -rf runs outputs multirun .cache .pytest_cache
