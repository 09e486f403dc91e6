"""Inference from a trained run: loading, KV-cache sampling, Hugging Face export."""
