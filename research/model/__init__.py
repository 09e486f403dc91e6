"""The GPT model in Flax NNX: parameters, layers, the GPT family."""
