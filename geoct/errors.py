"""Typed errors that the CLI turns into one-line messages."""

from pathlib import Path


class GeoctError(Exception):
    """Base class of every error geoct reports to the user."""


class InputError(GeoctError):
    """A user-supplied file is missing, unreadable or not what was expected."""

    def __init__(self, path: str | Path, problem: str) -> None:
        """Initialise a new InputError.

        Args:
            path: The offending file or folder.
            problem: What is wrong with it, as a short clause.
        """
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class AlignmentError(InputError):
    """Two rasters that must share a grid (CRS, transform, shape) do not."""


class OutputExistsError(InputError):
    """An output exists and ``--overwrite`` was not given."""

    def __init__(self, path: str | Path) -> None:
        """Initialise a new OutputExistsError for *path*."""
        super().__init__(path, "already exists (use --overwrite to replace it)")


class ConfigError(GeoctError):
    """A model, task or command option is invalid."""


class CheckpointError(InputError):
    """A checkpoint cannot be used for prediction."""
