"""The base classes of the errors a user can cause.

A ``DescgenError`` ends a command with its message on one line of stderr and its exit code,
never a traceback. The command line turns it into that line in one place (``descgen.cli``).
``UserError`` is what such errors of both packages share: ``msta.errors.MstaError`` derives
from it too, so one ``except UserError`` handles either.
"""

from __future__ import annotations


class UserError(Exception):
    """An error with a message meant for the user, as is, and the exit code it ends a command with."""

    exit_code: int = 2

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        if code is not None:
            self.exit_code = code


class DescgenError(UserError):
    """An error the user can fix: bad input, a missing or unusable file, an unreachable model."""
