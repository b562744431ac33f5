"""Errors and warnings of the data layer.

Every :class:`DataError` message is one line that names the offending file (or folder) and says what to do.
Command-line tools print it and exit with status 2.
"""

from __future__ import annotations

import os


class DataError(Exception):
    """A dataset problem the user must fix: one line, naming the file and what to do."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        message = " ".join(str(message).split())  # always one line
        super().__init__(message)
        self.path = None if path is None else str(path)


class DataWarning(UserWarning):
    """A dataset irregularity that was repaired by a documented rule (e.g. a non-binary mask thresholded)."""
