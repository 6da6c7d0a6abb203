"""The one base class of the errors a user can cause in msta.

An ``MstaError`` ends a command with its message on one line of stderr and its exit code,
never a traceback. The command line turns it into that line in one place (``msta.cli``).
It shares its base, ``descgen.errors.UserError`` (message and exit code), with ``DescgenError``.
"""

from __future__ import annotations

from descgen.errors import UserError


class MstaError(UserError):
    """An error the user can fix: a bad config, a missing file, an unusable checkpoint."""


class TrainError(MstaError):
    """A training, evaluation or prediction problem the user can fix; the message is shown as is."""
