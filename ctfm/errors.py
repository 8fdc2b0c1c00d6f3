"""Exceptions that tell the user which file is wrong and why."""

from __future__ import annotations

from pathlib import Path


class CTFMError(Exception):
    """Base class of every error ctfm raises on purpose."""


class UsageError(CTFMError, ValueError):
    """A bad command line or argument value (a negative count, two options that exclude each other): exit code 2."""


class InvalidScanError(CTFMError, ValueError):
    """A scan that cannot be used: unreadable, not CT, not 3D, non-finite, or an inconsistent series.

    The message always starts with the offending path so a long run can report it and move on.
    """

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class ModelLoadError(CTFMError, RuntimeError):
    """Weights or configuration that cannot be found, downloaded or matched to the model."""
