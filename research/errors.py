"""Errors a user can fix. Each message is one sentence naming the setting (or file) and the fix.

This module imports nothing from the project, so every layer can raise these without importing the
layers above it.
"""

from __future__ import annotations


class UserError(ValueError):
    """Something the user can fix; the message is one sentence naming it and the fix."""


class ConfigError(UserError):
    """A setting (config, command line, data source, mesh) that cannot work as given."""


class CheckpointError(UserError):
    """Writing or reading checkpoints failed for a reason the user fixes (disk space, permissions)."""


class BadStepsError(UserError):
    """The run stopped because of bad steps (train.nan_policy=stop, or too many rollbacks); the message
    names the step, its batch and the settings that change the outcome."""


class ExportError(UserError):
    """The model has no Hugging Face equivalent (the message names the setting)."""
