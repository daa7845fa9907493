"""The errors rvec raises. Each message says what is wrong and what to do next."""

from __future__ import annotations


class RvecError(Exception):
    """Base of every error rvec raises on bad input; the CLI prints it as one line and exits 1."""

    exit_code = 1

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


class FormatError(RvecError):
    """A vector directory or manifest that does not follow the format."""


class IntegrityError(RvecError):
    """A payload whose bytes differ from what its manifest records."""


class CheckpointError(RvecError):
    """A model checkpoint that cannot be read safely (missing, truncated, pickle, mismatched)."""


class CompatibilityError(RvecError):
    """A vector that does not fit a base model; `problems` lists every mismatch."""


class OutputExistsError(RvecError):
    """An output path that already exists and was not allowed to be replaced."""


class HubError(RvecError):
    """A failure talking to a Hub, or a reference that does not resolve there."""


class DataError(RvecError):
    """Evaluation data that cannot be fetched or read: no network, a corrupt archive, a task file of another schema."""


class UsageError(RvecError):
    """Arguments that contradict each other or are out of range."""
