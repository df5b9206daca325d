"""Error types of gspdml.

Every error that a user can cause (bad argument, bad config, bad data on disk) is raised as a
subclass of :class:`GspdmlError`, with a message that says what was wrong, where, and what was
expected. The command-line tool prints such errors without a traceback (``--debug`` shows it).
"""
from __future__ import annotations


class GspdmlError(Exception):
    """Base class of all user-facing gspdml errors."""


class InputError(GspdmlError, ValueError):
    """An argument or tensor given to a gspdml function or layer is invalid."""


class ConfigError(GspdmlError, ValueError):
    """A configuration file or override is invalid (unknown key, wrong type, unknown choice)."""


class DataError(GspdmlError, ValueError):
    """A dataset on disk is missing, malformed, or inconsistent."""


class CheckpointError(GspdmlError, ValueError):
    """A checkpoint or run folder cannot be read or does not match the model."""


def unknown_choice(kind: str, value: object, choices) -> ConfigError:
    """Build the error for an unknown registry name, listing the valid choices."""
    listed = ", ".join(sorted((str(c) for c in choices), key=str.lower))
    return ConfigError(f"unknown {kind} {value!r}; valid choices are: {listed}")
