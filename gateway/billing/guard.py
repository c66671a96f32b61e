"""The credit guard: when a profile's live charged calls must end.

The :class:`~gateway.billing.credit.CreditMeter` knows what each profile
has left and what its live calls spend (on this node and, summed, on the
others); the guard turns that into one timer per profile that spends
anything, so that the calls end just before the credit would be
overdrawn.  It keeps the timer cheap on every call event: a call answered
or ended (here or on another node) re-arms the profile's timer at a lower
bound of the moment the credit runs out (:meth:`CreditMeter.safe_until`,
O(1)); only when that bound is reached is the exact moment worked out
(:meth:`CreditMeter.exhausted_at`) and, if it is still ahead, a second
timer armed for it.

The guard knows profiles only as ids and calls only by their record keys:
it is told when a charged call is answered and when it ends, and it asks
its owner to end a profile's charged calls (``on_exhausted``) when the
credit is spent.  Timers come from a :class:`Clock` port (the router's
I/O), so a test drives it with a manual clock.  It implements
:class:`gateway.cluster.credit_share.CreditParticipant` (what the nodes of
a cluster exchange) for its owner to delegate to.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Protocol

from gateway.billing.credit import CreditMeter, CreditShare

__all__ = ["CREDIT_MARGIN", "Clock", "CreditGuard", "Timer"]

#: Calls are cut this long before the credit would be overdrawn (seconds):
#: a BYE that leaves late must not start another billed second.
CREDIT_MARGIN = 0.2


class Timer(Protocol):
    """A timer armed with :meth:`Clock.call_at` (asyncio's ``TimerHandle``)."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """The monotonic clock and the timers the guard needs (the router's
    :class:`gateway.proxy.router.CallIO` is one)."""

    def now(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer: ...


class CreditGuard:
    """One timer per profile with live charged calls: when it fires,
    ``on_exhausted(profile_id)`` ends them.

    Without a meter (``meter=None``, unit tests of the call path) nothing
    is charged: every profile has credit and no timer is ever armed.
    """

    def __init__(
        self,
        meter: CreditMeter | None,
        clock: Clock,
        on_exhausted: Callable[[int], None],
        *,
        margin: float = CREDIT_MARGIN,
    ) -> None:
        self.meter = meter
        self.clock = clock
        self.on_exhausted = on_exhausted
        self.margin = margin
        self._timers: dict[int, Timer] = {}

    @property
    def charging(self) -> bool:
        """Whether calls are charged at all (a meter is present)."""
        return self.meter is not None

    # -- what the profile directory says -------------------------------------------
    def set_credit(self, profile_id: int, credit: Decimal, version: int) -> None:
        """The profile's credit as committed at directory ``version``."""
        if self.meter is not None:
            self.meter.set_snapshot(profile_id, credit, version)

    def forget(self, profile_id: int) -> None:
        """The profile is gone: nothing of it is kept."""
        if self.meter is not None:
            self.meter.forget(profile_id)

    def has_credit(self, profile_id: int) -> bool:
        """Whether a new outbound call of the profile may start (402 if not)."""
        return self.meter is None or self.meter.has_credit(profile_id, self.clock.now())

    # -- the calls ----------------------------------------------------------------
    def call_answered(self, profile_id: int, call_key: str, price: Decimal) -> None:
        """A charged call was answered: it spends ``price`` per minute from
        now, and every call of its profile may have to end sooner (they
        share the credit)."""
        if self.meter is None:
            return
        self.meter.start(profile_id, call_key, price, self.clock.now())
        self.recheck(profile_id)

    def call_ended(self, profile_id: int, call_key: str) -> Decimal:
        """A charged call ended: its cost (debited when its record is
        written); the profile's other calls may now last longer."""
        if self.meter is None:
            return Decimal(0)
        cost = self.meter.stop(call_key, self.clock.now())
        self.recheck(profile_id)
        return cost

    def recheck(self, profile_id: int) -> None:
        """(Re)arm the profile's timer at a cheap lower bound of the moment
        its live calls spend its credit (O(1) per call event); the exact
        moment is worked out when that timer fires."""
        timer = self._timers.pop(profile_id, None)
        if timer is not None:
            timer.cancel()
        if self.meter is None:
            return
        now = self.clock.now()
        when = self.meter.safe_until(profile_id, now)
        if when is None:
            return
        self._timers[profile_id] = self.clock.call_at(
            max(now, when - self.margin), lambda: self._bound_reached(profile_id)
        )

    def _bound_reached(self, profile_id: int) -> None:
        """The cheap bound is reached: find the exact moment the credit is
        spent and end the calls just before it."""
        self._timers.pop(profile_id, None)
        if self.meter is None:
            return
        now = self.clock.now()
        when = self.meter.exhausted_at(profile_id, now)
        if when is None:
            return
        if when - self.margin <= now:
            self._exhausted(profile_id)
            return
        self._timers[profile_id] = self.clock.call_at(
            when - self.margin, lambda: self._exhausted(profile_id)
        )

    def _exhausted(self, profile_id: int) -> None:
        self._timers.pop(profile_id, None)
        self.on_exhausted(profile_id)

    # -- credit across the nodes of a cluster (CreditParticipant) ------------------------
    def credit_shares(self, clock_offset: float) -> dict[int, CreditShare]:
        """What this node's calls spend, per profile that spends anything,
        for the other nodes (answer times on the shared clock, ``now +
        clock_offset``)."""
        if self.meter is None:
            return {}
        return self.meter.local_shares(clock_offset)

    def apply_remote_credit(
        self, profile_id: int, share: CreditShare | None, clock_offset: float
    ) -> None:
        """What the profile's calls on the other nodes spend, summed (None:
        nothing, or nothing known any more): admission counts it from now
        on, and this node's calls of the profile may have to end sooner."""
        if self.meter is None:
            return
        if share is None:
            self.meter.clear_remote(profile_id)
        else:
            self.meter.set_remote(
                profile_id, share, clock_offset=clock_offset, now=self.clock.now()
            )
        self.recheck(profile_id)
