"""The errors training raises for things a user can fix (``agingrt train`` prints them on one line)."""

from __future__ import annotations

from pyagingrt.errors import AgingError, InputError


class TrainingError(AgingError, RuntimeError):
    """Training cannot start or continue: a missing frozen model file, a run folder in the way, no data."""


class ConfigError(InputError):
    """A bad ``--set``, config file, preset or stage."""


class DivergedError(TrainingError, ArithmeticError):
    """A loss became NaN or Inf; the message names the step and the loss."""
