"""Config: schema (dataclasses), derived quantities, the one validation pass, Hydra registration, CLI checks."""
