"""Sweeps: per-size rules, the ${sweep.*} resolvers, the Hydra callback, the report."""
