"""The one base class of the errors a user can cause in descgen.

A ``DescgenError`` ends a command with its message on one line of stderr and its exit code,
never a traceback. The command line turns it into that line in one place (``descgen.cli``).
"""

from __future__ import annotations


class DescgenError(Exception):
    """An error the user can fix: bad input, a missing or unusable file, an unreachable model."""

    exit_code: int = 2

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        if code is not None:
            self.exit_code = code
