"""The refusals of the management service, shared by every front end.

The service modules (:mod:`gateway.manage.profiles`, :mod:`gateway.manage.rates`,
:mod:`gateway.manage.history`, :mod:`gateway.manage.tokens`) raise these; the CLI and the
REST API turn them into an answer at one boundary.  Each class carries that
answer (the h11 habit): ``exit_status`` for the CLI, ``http_status`` for the
API, and ``str()`` is one line for the operator.

They live in a module of their own so that :mod:`gateway.manage.paging` can raise
:class:`ValidationError` without importing the profile service that uses it.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "CallsUpError",
    "ConflictError",
    "ForbiddenError",
    "InsufficientFundsError",
    "NotFoundError",
    "ProfileError",
    "ValidationError",
]


class ProfileError(Exception):
    """A request the service refuses; ``str()`` is one line for the operator.

    ``exit_status`` is what the CLI exits with, ``http_status`` what the
    REST API answers.
    """

    exit_status: ClassVar[int] = 1
    http_status: ClassVar[int] = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        #: The input at fault, by the service's (and the API's) name for it
        #: (``"ip"``, ``"channel_limit"``, ``"number"``...), or None.  The
        #: message names fields, never a front end's spelling of them; a
        #: front end adds its own hint from this (the CLI: which flag).
        self.field = field


class ValidationError(ProfileError):
    """Bad input: a malformed value, a missing or contradictory option."""

    exit_status = 2
    http_status = 422


class NotFoundError(ProfileError):
    """An account, profile, number, rate or token that does not exist, or
    that the caller may not see (the same answer, so existence never leaks)."""

    exit_status = 1
    http_status = 404


class ConflictError(ProfileError):
    """Something that would break a rule of the current state: a name,
    IP:port or number taken, not enough money, calls up."""

    exit_status = 1
    http_status = 409


class InsufficientFundsError(ConflictError):
    """A credit move that would make an account balance or a profile's
    credit negative (or push one above the largest amount kept)."""


class CallsUpError(ConflictError):
    """A profile deletion refused because the profile has calls up and the
    caller did not ask for them to be ended."""


class ForbiddenError(ProfileError):
    """An operation reserved to operators, asked for by an account manager."""

    exit_status = 1
    http_status = 403
