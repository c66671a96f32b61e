"""Local overload control (RFC 6357's "local overload control"): shed new
work early, keep what was admitted.

A server past its capacity that takes every request falls behind: the
peers retransmit, the calls it took time out while they wait, and goodput
collapses.  This controller keeps the server's *occupancy* (the fraction of
its time spent working, measured by the adapter over each period) at a
target by refusing a fraction of the requests that start new work, as the
occupancy-based example algorithm of RFC 7339 throttles a server's load:

* once per period, :meth:`OverloadControl.measure` takes the occupancy seen
  and, once it has been at the target for a few periods in a row (a short
  pause is not an overload), moves the acceptance ratio ``accept``:
  multiplied by ``target / occupancy`` (so it rises again as soon as the
  load allows), and halved while the server is saturated (occupancy at 1
  says only that the load is *at least* the capacity, so the ratio cannot
  be derived);
* :meth:`OverloadControl.admits` decides per new request, by priority
  class: an answer to our own challenge (the request carries credentials)
  finishes work already begun and is shed last, an initial INVITE next,
  and a REGISTER first (a registration can wait for its retry, a caller
  cannot).  The acceptance of a class is ``accept`` raised to the
  class's power (½, 1, 2), so with nothing shed nothing is shed in any
  class, and the order holds at every level.  The decision is
  deterministic (a credit that grows by the class's ratio per request and
  takes one when it reaches 1), so a ratio of ¼ takes exactly every fourth
  request.

Requests that are not new work are never shed: responses, ACK, CANCEL,
in-dialog requests (a To tag), retransmissions (the transaction layer
absorbs them before asking), and OPTIONS (answered as cheaply as a 503
would be).  A shed request is answered ``503 Service Unavailable`` with
``Retry-After`` (RFC 3261 §21.5.4) statelessly, before any authentication,
routing or admission work.

Sans-I/O: the caller measures and supplies the occupancy; nothing here
reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sip.message import Request

__all__ = [
    "OVERLOAD_RETRY_AFTER",
    "OverloadControl",
    "OverloadSettings",
    "ShedClass",
    "shed_class",
]

# Retry-After (seconds) of the 503 sent to shed load, or when the transaction
# table is full.  Overload is usually a burst; a PBX that honours a short
# Retry-After backs off for a few seconds instead of declaring the trunk dead
# for half a minute.
OVERLOAD_RETRY_AFTER = 5


class ShedClass(Enum):
    """New work, by the order it is shed in (last first).  The value is the
    exponent applied to the acceptance ratio."""

    CHALLENGE_ANSWER = 0.5
    INVITE = 1.0
    REGISTER = 2.0


_NEW_WORK = frozenset(("INVITE", "REGISTER"))
# The headers that carry an answer to a challenge (RFC 3261 §22.2, §22.3).
_CREDENTIALS = ("proxy-authorization", "authorization")


def shed_class(request: Request) -> ShedClass | None:
    """The class of a request that starts new work, or None for one that
    is never shed (see the module docstring)."""
    method = request.method
    if method not in _NEW_WORK:
        return None
    if method == "INVITE" and request.to.tag is not None:
        return None  # a re-INVITE: the call was admitted
    headers = request.headers
    for name in _CREDENTIALS:
        if headers.get(name) is not None:
            return ShedClass.CHALLENGE_ANSWER
    return ShedClass.INVITE if method == "INVITE" else ShedClass.REGISTER


@dataclass(frozen=True, slots=True, kw_only=True)
class OverloadSettings:
    """``target``: the occupancy held under overload (0 < target ≤ 1; 1
    sheds only once the server is saturated).  ``period``: seconds between
    measurements.  ``retry_after``: seconds in the 503's Retry-After.
    ``floor``: the lowest acceptance ratio, so that the server keeps
    probing its capacity while it sheds.  ``sustain``: how many periods in a
    row the occupancy must reach the target before shedding starts, so that
    a pause shorter than that (a garbage collection, a reload, start-up)
    sheds nothing: what arrived meanwhile waits a little instead.
    ``max_delay``: the longest a request may wait before it is read (in
    the socket's buffer); more is a backlog, which the occupancy cannot
    show (it is 1 whether the backlog grows or not) and which delays every
    call, admitted ones included, into retransmissions: it halves the ratio
    every period at once, until the backlog is gone.  ``enabled``: false
    only measures (the occupancy is still reported)."""

    target: float = 0.9
    period: float = 0.1
    retry_after: int = OVERLOAD_RETRY_AFTER
    floor: float = 0.01
    sustain: int = 3
    max_delay: float = 0.1
    enabled: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.target <= 1:
            raise ValueError("target must be in (0, 1]")
        if self.sustain < 1:
            raise ValueError("sustain must be at least 1")
        if self.period <= 0:
            raise ValueError("period must be positive")
        if self.max_delay <= 0:
            raise ValueError("max_delay must be positive")
        if self.retry_after < 0:
            raise ValueError("retry_after must not be negative")
        if not 0 <= self.floor <= 1:
            raise ValueError("floor must be in [0, 1]")


# At or above this the server is saturated: the load is known to exceed the
# capacity, not by how much.
_SATURATED = 0.98
_SATURATED_FACTOR = 0.5


class OverloadControl:
    """The acceptance ratio and the shed counts (read by the metrics)."""

    __slots__ = (
        "_above",
        "_credit",
        "accept",
        "delay",
        "occupancy",
        "settings",
        "shed",
        "table_full",
    )

    def __init__(self, settings: OverloadSettings | None = None) -> None:
        self.settings = settings if settings is not None else OverloadSettings()
        #: The fraction of new INVITEs taken (1.0: nothing is shed).
        self.accept = 1.0
        #: The occupancy and the queueing delay (seconds) last measured.
        self.occupancy = 0.0
        self.delay = 0.0
        #: Requests shed so far, by class.
        self.shed: dict[ShedClass, int] = dict.fromkeys(ShedClass, 0)
        #: New requests refused because the transaction table was full
        #: (counted by :class:`sip.transaction.TransactionLayer`).
        self.table_full = 0
        self._credit: dict[ShedClass, float] = dict.fromkeys(ShedClass, 0.0)
        self._above = 0  # periods in a row at or above the target

    @property
    def shedding(self) -> bool:
        """Whether some new work is being refused."""
        return self.accept < 1.0

    @property
    def retry_after(self) -> int:
        return self.settings.retry_after

    def measure(self, occupancy: float, delay: float = 0.0) -> None:
        """The period that just ended: its occupancy (0 = idle, 1 = busy
        all the time), and how long the last request read had waited."""
        settings = self.settings
        occupancy = min(max(occupancy, 0.0), 1.0)
        self.occupancy = occupancy
        self.delay = delay
        self._above = self._above + 1 if occupancy >= settings.target else 0
        if not settings.enabled:
            return
        if delay > settings.max_delay:
            self.accept = max(settings.floor, self.accept * _SATURATED_FACTOR)
            return
        if self.accept >= 1.0 and self._above < settings.sustain:
            return
        if occupancy >= _SATURATED:
            accept = self.accept * min(_SATURATED_FACTOR, settings.target / occupancy)
        elif occupancy <= 0.0:
            accept = 1.0
        else:
            accept = self.accept * settings.target / occupancy
        self.accept = min(1.0, max(settings.floor, accept))

    def admits(self, kind: ShedClass) -> bool:
        """Whether to take one new request of ``kind``; counts it if shed."""
        accept = self.accept
        if accept >= 1.0:
            return True
        ratio = accept**kind.value
        credit = self._credit[kind] + ratio
        if credit >= 1.0:
            self._credit[kind] = credit - 1.0
            return True
        self._credit[kind] = credit
        self.shed[kind] += 1
        return False
