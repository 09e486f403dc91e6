"""The train-step benchmark behind `make bench` (experiments/bench.py is its command line)."""
