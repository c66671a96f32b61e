"""The credit guard (gateway.billing.guard) on a manual clock: it times the
end of a profile's charged calls from what the meter says, and asks its
owner to end them just before the credit runs out."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from gateway.billing.credit import CreditMeter, CreditShare
from gateway.billing.guard import CREDIT_MARGIN, CreditGuard

PROFILE = 7
#: 0.60 a minute: a cent a second.
CENT_A_SECOND = Decimal("0.60")


@dataclass(eq=False)
class _Timer:
    when: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Clock:
    """A manual clock with timers (the guard's Clock port)."""

    at: float = 1000.0
    _timers: list[tuple[float, int, _Timer]] = field(default_factory=list)
    _order: itertools.count[int] = field(default_factory=itertools.count)

    def now(self) -> float:
        return self.at

    def call_at(self, when: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(when, callback)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def advance(self, seconds: float) -> None:
        until = self.at + seconds
        while self._timers and self._timers[0][0] <= until:
            when, _, timer = heapq.heappop(self._timers)
            self.at = max(self.at, when)
            if not timer.cancelled:
                timer.callback()
        self.at = until

    def armed(self) -> int:
        return sum(not t.cancelled for _, _, t in self._timers)


def guard_with(credit: str) -> tuple[CreditGuard, Clock, list[tuple[float, int]]]:
    clock = Clock()
    ended: list[tuple[float, int]] = []
    meter = CreditMeter()
    guard = CreditGuard(meter, clock, lambda profile_id: ended.append((clock.now(), profile_id)))
    guard.set_credit(PROFILE, Decimal(credit), version=1)
    return guard, clock, ended


def test_the_calls_end_just_before_the_credit_is_spent() -> None:
    guard, clock, ended = guard_with("0.10")  # ten seconds of one call
    start = clock.now()
    guard.call_answered(PROFILE, "call-1", CENT_A_SECOND)
    clock.advance(30)
    assert len(ended) == 1
    when, profile_id = ended[0]
    assert profile_id == PROFILE
    # Every started second is billed: the eleventh starts at 10 s (and the
    # meter's half millisecond of rounding); the margin keeps the BYE early.
    assert 10 - CREDIT_MARGIN - 0.01 < when - start < 10 - CREDIT_MARGIN + 0.01
    assert not guard.has_credit(PROFILE)


def test_two_calls_share_the_credit() -> None:
    guard, clock, ended = guard_with("0.10")
    start = clock.now()
    guard.call_answered(PROFILE, "call-1", CENT_A_SECOND)
    clock.advance(2)
    guard.call_answered(PROFILE, "call-2", CENT_A_SECOND)  # the rest lasts half as long
    clock.advance(30)
    ((when, _),) = ended
    assert when - start < 7  # (10 - 2) / 2 + 2 seconds, less the margin


def test_a_call_that_ends_in_time_ends_nothing() -> None:
    guard, clock, ended = guard_with("0.10")
    guard.call_answered(PROFILE, "call-1", CENT_A_SECOND)
    clock.advance(3)
    assert guard.call_ended(PROFILE, "call-1") == Decimal("0.03")  # every started second
    clock.advance(60)
    assert ended == [] and clock.armed() == 0
    assert guard.has_credit(PROFILE)


def test_the_other_nodes_spending_brings_the_end_forward() -> None:
    guard, clock, ended = guard_with("0.10")
    start = clock.now()
    guard.call_answered(PROFILE, "call-1", CENT_A_SECOND)
    # Another node has a call at the same price, answered now.
    share = CreditShare(calls=1, price=CENT_A_SECOND, price_answered=CENT_A_SECOND * Decimal(start))
    guard.apply_remote_credit(PROFILE, share, clock_offset=0.0)
    clock.advance(30)
    ((when, _),) = ended
    assert when - start < 5  # the credit is spent twice as fast
    assert PROFILE in guard.credit_shares(0.0)


def test_without_a_meter_nothing_is_charged_or_timed() -> None:
    clock = Clock()
    guard = CreditGuard(None, clock, lambda profile_id: None)
    assert not guard.charging and guard.has_credit(PROFILE)
    guard.call_answered(PROFILE, "call-1", CENT_A_SECOND)
    assert guard.call_ended(PROFILE, "call-1") == Decimal(0)
    guard.apply_remote_credit(PROFILE, None, 0.0)
    assert guard.credit_shares(0.0) == {} and clock.armed() == 0
