# Everything runs inside .venv, created and filled by `make setup` (every target depends on it).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
EXPERIMENT ?= cpu_sweep
ARGS ?=
PYTEST_ARGS ?=

# Persistent XLA compilation cache shared by runs, sweeps and tests.
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.cache/jax
export PYTHONUNBUFFERED := 1

.PHONY: setup data train sweep test lint bench bench-fit plan tensorboard clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $(STAMP)

data: setup
	$(PY) -m research.data

train: data
	$(PY) experiments/train.py $(ARGS)

sweep: data
	$(PY) experiments/train.py $(ARGS)

test: data
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check research analysis experiments tests

plan: setup
	$(PY) experiments/plan.py $(ARGS)

bench-fit: setup
	$(PY) -m analysis bench

tensorboard: setup
	$(VENV)/bin/tensorboard --logdir runs/

clean:
	rm -rf runs outputs multirun .cache .pytest_cache
