"""What every admission backend promises: the results and the interface.

The call router asks one question per new call — may this profile take one
more channel? — and must get a typed answer, not a boolean (DESIGN.md), so
that a refusal carries what the SIP answer and the CDR need.  Backends
implement :class:`AdmissionController`: :class:`admission.memory.MemoryAdmission`
now (one node, the embedded default); a Redis backend (atomic Lua scripts,
per-call leases renewed while the call lives, so a crashed node's channels
come back) arrives in issue 4 behind this same Protocol, so the router never
learns which one it talks to.

Admission knows profiles only as integer ids and limits; whether a profile
exists, has credit or is enabled is the router's business.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeAlias, runtime_checkable

__all__ = [
    "MAX_CHANNELS",
    "MIN_CHANNELS",
    "AdmissionController",
    "AdmissionResult",
    "Admitted",
    "ImmediateAdmission",
    "RejectReason",
    "Rejected",
    "clamp_limit",
]

# The product's promise (DESIGN.md, README): a profile holds at most 300
# concurrent calls, whatever its stored limit says.  An operator may set a
# lower limit, never a higher one, so every backend clamps to this.
MAX_CHANNELS = 300
# A limit below one would make a profile unable to call at all; that is what
# disabling or deleting a profile is for, not a channel limit of zero.
MIN_CHANNELS = 1


def clamp_limit(limit: int) -> int:
    """``limit`` brought into ``MIN_CHANNELS..MAX_CHANNELS``.

    Clamping rather than refusing keeps a bad stored value (a limit of 1000
    typed into the database by hand) from turning into failed calls: the
    promise of 300 holds either way.
    """
    return min(max(limit, MIN_CHANNELS), MAX_CHANNELS)


class RejectReason(StrEnum):
    """Why a call was refused a channel; the value is fit for logs and metric labels."""

    # The profile already holds as many channels as its limit allows.
    CHANNEL_LIMIT = "channel_limit"
    # The Call-ID already holds a channel for a *different* profile.  One
    # Call-ID holds one channel (that is what makes retransmissions free), so
    # a router that needs two (a call hairpinned through two of its profiles)
    # must acquire under two distinct keys.
    CALL_ID_IN_USE = "call_id_in_use"


@dataclass(frozen=True, slots=True, kw_only=True)
class Admitted:
    """The call holds a channel of ``profile_id`` until ``release(call_id)``.

    ``in_use`` counts the profile's channels including this one, as seen right
    after the acquire (for logs; metrics read :meth:`AdmissionController.counts`).
    """

    profile_id: int
    call_id: str
    in_use: int

    def __post_init__(self) -> None:
        if not self.call_id:
            raise ValueError("call_id must not be empty")
        if self.in_use < 1:
            raise ValueError("an admitted call holds at least its own channel")


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected:
    """No channel was taken; ``in_use`` and ``limit`` say how full the profile was.

    The router answers a ``CHANNEL_LIMIT`` refusal with ``503`` (or ``486``
    towards the carrier) and records the attempt; nothing needs releasing.
    """

    reason: RejectReason
    in_use: int
    limit: int

    def __post_init__(self) -> None:
        if self.in_use < 0:
            raise ValueError("in_use must not be negative")
        if not MIN_CHANNELS <= self.limit <= MAX_CHANNELS:
            raise ValueError(f"limit must be within {MIN_CHANNELS}..{MAX_CHANNELS}")


AdmissionResult: TypeAlias = Admitted | Rejected


@runtime_checkable
class AdmissionController(Protocol):
    """Per-profile channel counting, the same contract for every backend.

    Every method is a coroutine so that a networked backend (Redis) fits
    without changing a caller.  Contract:

    - ``acquire`` is one atomic compare-and-increment: two concurrent calls can
      never both take the last channel (DESIGN.md: we do not read the count
      and then take the channel in two steps, as Kamailio's dialog profiles
      do).  The limit is clamped with :func:`clamp_limit`.  A ``call_id`` that
      already holds a channel of ``profile_id`` is ``Admitted`` again without
      taking a second one, so an INVITE retransmission or a second INVITE with
      the same Call-ID never costs two channels.  A limit lower than the
      current use refuses new calls until use drops below it; calls already
      admitted are never cut.
    - ``release`` is idempotent: ``True`` if it freed a channel, ``False`` if
      ``call_id`` held none (already released, or never admitted).
    - ``counts`` maps each profile holding at least one channel to its count;
      a profile that is absent holds none (metrics: scrape-time reads).
    - ``close`` frees the backend's resources; the controller is not used
      afterwards.
    """

    async def acquire(self, profile_id: int, call_id: str, limit: int) -> AdmissionResult:
        """Take one channel of ``profile_id`` for ``call_id`` if under ``limit``."""
        ...

    async def release(self, call_id: str) -> bool:
        """Give back the channel ``call_id`` holds, if any."""
        ...

    async def in_use(self, profile_id: int) -> int:
        """How many channels ``profile_id`` holds now."""
        ...

    async def counts(self) -> dict[int, int]:
        """Channels in use per profile, for profiles that hold any."""
        ...

    async def close(self) -> None:
        """Release the backend's resources."""
        ...


@runtime_checkable
class ImmediateAdmission(Protocol):
    """A backend that answers without waiting (in this process's memory):
    the same decisions as ``acquire`` and ``release``, as plain calls, so
    that the call path takes and frees a channel without a task per call
    (DESIGN.md: nothing spawned per message when nothing has to wait)."""

    def acquire_now(self, profile_id: int, call_id: str, limit: int) -> AdmissionResult:
        """``acquire``, answered at once."""
        ...

    def release_now(self, call_id: str) -> bool:
        """``release``, at once."""
        ...
