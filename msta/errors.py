"""The one base class of the errors a user can cause in msta.

An ``MstaError`` ends a command with its message on one line of stderr and its exit code,
never a traceback. The command line turns it into that line in one place (``msta.cli``).
"""

from __future__ import annotations


class MstaError(Exception):
    """An error the user can fix: a bad config, a missing file, an unusable checkpoint."""

    exit_code: int = 2

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        if code is not None:
            self.exit_code = code
