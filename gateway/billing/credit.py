"""Credit: rating a destination, pricing a call, and metering what a
profile has left to spend while its calls run.

Pure logic, like the sans-I/O SIP core: no database, no event loop, no
clock of its own.  Every entry point that depends on time takes ``now`` (a
monotonic clock in seconds, e.g. ``loop.time()``), so tests drive it with
plain numbers.

The billing rule (one rule, used for the call record, the debit and the
meter alike):

* a call's duration runs from the answer (the 200 OK to the INVITE) to its
  end, counted in whole milliseconds (:func:`elapsed_ms` rounds to the
  nearest millisecond, half up);
* it is billed per second, every started second counts: 0 ms costs
  nothing, 1 ms costs one second, 60,001 ms cost 61 seconds;
* cost = price per minute x seconds / 60, rounded *up* to 1/10,000 of the
  currency (:data:`gateway.store.models.BALANCE_SCALE`), so that a rounding error
  never favours the caller and the stored amount is exact.

Where the money is (:class:`CreditMeter`): the database holds each profile's
credit, debited when a call's record is written (``gateway.billing.cdr``).  A node
sees it through the directory snapshot it last loaded, which lags behind:
calls that ended but whose debit is not in that snapshot yet are *pending*,
and answered calls burn credit as they go.  The meter subtracts both, so
what it offers is never more than the database will hold once everything
is written.

Several nodes (a cluster): each node meters its own calls, and also what
the profile's calls on the *other* nodes spend, learnt as a
:class:`CreditShare` per profile and node (their live calls summed, their
pending costs).  Answer times cross nodes on a clock they share; each node
converts them to its own monotonic clock with an offset.  Other nodes'
calls are counted at an upper bound of their cost (their answer times are
known only as a sum), so the meter errs towards ending calls early, never
towards overspending.  Exchanging the shares is ``gateway.cluster.credit_share``'s
business; this module only adds them up.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from fractions import Fraction

from gateway.store.models import BALANCE_SCALE, PREFIX_MAX_LENGTH

__all__ = [
    "CreditMeter",
    "CreditShare",
    "billed_seconds",
    "call_cost",
    "elapsed_ms",
    "longest_prefix_rate",
    "normalise_destination",
]

#: The smallest amount of money the store keeps (1/10,000).
MONEY_STEP = Decimal(1).scaleb(-BALANCE_SCALE)
_STEPS_PER_UNIT = 10**BALANCE_SCALE
#: RFC 3966 §5.1.1 visual separators ("-", ".", "(", ")") plus the spaces
#: people type; removed before a destination is rated.
_VISUAL_SEPARATORS = str.maketrans("", "", "-.() \t")
#: Answer-time sums published to other nodes are rounded down to this
#: (price x microseconds): rounding down makes the other nodes' bound of
#: the cost larger, never smaller, and keeps the published text short and
#: stable between rounds.
SHARE_ANSWERED_STEP = Decimal("0.000001")
#: :func:`elapsed_ms` rounds half up, so the billed second k+1 starts when
#: the elapsed time reaches k seconds and half a millisecond.
_ROUNDING_OFFSET = 0.0005


# ---------------------------------------------------------------------------
# Rating


def normalise_destination(destination: str) -> str:
    """The destination as the rate table spells prefixes: visual
    separators and one leading "+" removed ("+44 113-496.0000" →
    "441134960000").  No dialling-plan rewriting: "0044…" stays as it is."""
    text = destination.strip().translate(_VISUAL_SEPARATORS)
    return text.removeprefix("+")


def longest_prefix_rate(rates: Mapping[str, Decimal], destination: str) -> Decimal | None:
    """The price per minute of the longest prefix in ``rates`` that the
    destination's digits start with; the empty prefix, if present, matches
    every destination.  None when nothing matches.

    A destination that is not all digits once normalised (a SIP user name
    such as "alice") matches only the empty prefix.  Rate prefixes have at
    most :data:`~gateway.store.models.PREFIX_MAX_LENGTH` digits, so this is at
    most 16 dictionary lookups whatever the size of the table.
    """
    digits = normalise_destination(destination)
    if digits.isascii() and digits.isdigit():
        for length in range(min(len(digits), PREFIX_MAX_LENGTH), 0, -1):
            price = rates.get(digits[:length])
            if price is not None:
                return price
    return rates.get("")


# ---------------------------------------------------------------------------
# Pricing


def elapsed_ms(answered: float, now: float) -> int:
    """Milliseconds from ``answered`` to ``now`` (monotonic seconds),
    rounded to the nearest millisecond (half up); never negative.  What a
    call record's ``duration_ms`` should hold."""
    return max(0, math.floor((now - answered) * 1000 + 0.5))


def billed_seconds(duration_ms: int) -> int:
    """Every started second counts: 0 ms → 0, 1..1000 ms → 1, 1001 ms → 2."""
    if duration_ms < 0:
        raise ValueError(f"negative duration {duration_ms} ms")
    return -(-duration_ms // 1000)


def _cost_of_seconds(price_per_minute: Decimal, seconds: int) -> Decimal:
    # Fractions are exact for any Decimal, so the rounding up happens once,
    # on the exact value, never on an intermediate one.
    exact = Fraction(price_per_minute) * seconds / 60
    steps = math.ceil(exact * _STEPS_PER_UNIT)
    return Decimal(steps).scaleb(-BALANCE_SCALE)


def call_cost(price_per_minute: Decimal, duration_ms: int) -> Decimal:
    """What a call of ``duration_ms`` (answer to end) costs at
    ``price_per_minute``: per-second billing, every started second counted,
    price x seconds / 60 rounded up to 4 decimal places.

    >>> call_cost(Decimal("0.0600"), 1)
    Decimal('0.0010')
    >>> call_cost(Decimal("0.0100"), 1000)
    Decimal('0.0002')
    """
    if price_per_minute < 0:
        raise ValueError(f"negative price {price_per_minute}")
    return _cost_of_seconds(price_per_minute, billed_seconds(duration_ms))


# ---------------------------------------------------------------------------
# Metering


@dataclass(slots=True)
class _LiveCall:
    profile_id: int
    price_per_minute: Decimal
    answered: float

    def cost(self, now: float) -> Decimal:
        return call_cost(self.price_per_minute, elapsed_ms(self.answered, now))


@dataclass(slots=True)
class _PendingCost:
    profile_id: int
    cost: Decimal
    #: The directory version whose transaction holds the debit; None until
    #: the record writer reports the commit.
    committed_version: int | None = None


@dataclass(slots=True)
class _Burn:
    """A profile's live calls that cost something, summed: what the cheap
    bounds of :meth:`CreditMeter.has_credit` and :meth:`CreditMeter.safe_until`
    need, kept up to date by start and stop (O(1) per event)."""

    calls: int = 0
    price: Decimal = Decimal(0)  # Σ price per minute
    price_answered: Decimal = Decimal(0)  # Σ price × answer time

    def add(self, call: _LiveCall, sign: int) -> None:
        self.calls += sign
        self.price += sign * call.price_per_minute
        self.price_answered += sign * call.price_per_minute * Decimal(call.answered)

    def spent_at_most(self, now: float) -> Decimal:
        """An upper bound of what the calls cost if they ended at ``now``:
        each is billed fewer than (now - answered + 2) whole seconds, and
        rounded up by less than one money step (see _no_overdraw_before)."""
        seconds = self.price * (Decimal(now) + 2) - self.price_answered
        return seconds / 60 + self.calls * MONEY_STEP

    def plus(self, other: _Burn | None) -> _Burn:
        """Both sets of calls, summed (``other`` None: these alone).  The
        bounds are linear in time, so the bound of a sum is the sum's."""
        if other is None:
            return self
        return _Burn(
            self.calls + other.calls,
            self.price + other.price,
            self.price_answered + other.price_answered,
        )

    def no_overdraw_before(self, unspent: Decimal) -> float:
        """The time at which :meth:`spent_at_most` reaches ``unspent``, less
        one second for the float rounding of clock values: before it the
        calls cannot cost more than ``unspent`` (derivation in
        _no_overdraw_before).  Needs calls that cost something."""
        budget = 60 * (unspent - self.calls * MONEY_STEP)
        return float((budget + self.price_answered - 2 * self.price) / self.price) - 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CreditShare:
    """What one node's calls of one profile spend, as another node adds it
    to its own: the live calls that cost something, summed like the meter
    sums its own (count, Σ price per minute, Σ price × answer time, answer
    times on the clock the nodes share), and the costs of ended calls not
    yet in the directory snapshot (pending).  Shares of several nodes add
    up with ``+``."""

    calls: int = 0
    price: Decimal = Decimal(0)  # Σ price per minute
    price_answered: Decimal = Decimal(0)  # Σ price × answer time (shared clock)
    pending: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        if self.calls < 0 or self.price < 0 or self.pending < 0:
            raise ValueError(f"negative share {self}")
        # Only calls that cost something are summed: a price sum without
        # calls (or calls without one) cannot come from a meter.
        if (self.calls == 0) != (self.price == 0):
            raise ValueError(f"calls and price disagree in {self}")
        if self.calls == 0 and self.price_answered != 0:
            raise ValueError(f"answer times without calls in {self}")

    def __add__(self, other: CreditShare) -> CreditShare:
        return CreditShare(
            calls=self.calls + other.calls,
            price=self.price + other.price,
            price_answered=self.price_answered + other.price_answered,
            pending=self.pending + other.pending,
        )

    @property
    def spends(self) -> bool:
        """Whether the share takes anything from the credit."""
        return self.calls > 0 or self.pending > 0


@dataclass(slots=True)
class _RemoteSpend:
    """Other nodes' shares of a profile, summed, answer times on this
    node's clock."""

    burn: _Burn
    pending: Decimal


@dataclass(slots=True)
class _Snapshot:
    credit: Decimal
    version: int


class CreditMeter:
    """Per profile, what is left to spend *now* on this node.

    ``available = snapshot credit − pending costs − what live calls cost
    if they ended now``.  A live call's part is its :func:`call_cost` at the
    current moment (rounded up per started second), not a continuous burn,
    so the meter never promises money a call will be billed for.

    A pending cost (a call that ended) stays subtracted until the database
    holds its debit *and* this node has loaded a snapshot that includes it:
    :meth:`committed` says in which directory version the debit committed,
    and a snapshot of that version or newer contains it.  Whatever order
    the three events arrive in (end, commit, reload), the cost is counted
    exactly once from then on; while the order is unknown it may be counted
    twice for a moment (snapshot reloaded before the commit is reported),
    which errs on the side of refusing, never of over-spending.

    Admission (:meth:`has_credit`) and timer placement (:meth:`safe_until`)
    are O(1) while the credit is far from spent: they use sums kept per
    profile and fall back to the exact O(calls) answer only near the end.
    :meth:`exhausted_at` is exact and O(calls × log calls).

    In a cluster, :meth:`set_remote` says what the profile's calls on the
    other nodes spend (their pending costs, and their live calls at the
    upper bound of :meth:`_Burn.spent_at_most`); every question above
    subtracts it too.  :meth:`local_shares` is what this node tells the
    others.
    """

    def __init__(self) -> None:
        self._snapshots: dict[int, _Snapshot] = {}
        self._live: dict[str, _LiveCall] = {}
        self._live_by_profile: dict[int, dict[str, _LiveCall]] = {}
        self._pending: dict[str, _PendingCost] = {}
        self._pending_by_profile: dict[int, dict[str, _PendingCost]] = {}
        self._pending_sum: dict[int, Decimal] = {}
        self._burn: dict[int, _Burn] = {}
        self._remote: dict[int, _RemoteSpend] = {}

    # -- the database's view ----------------------------------------------------
    def set_snapshot(self, profile_id: int, credit: Decimal, version: int) -> None:
        """The profile's credit as read in the directory snapshot of
        ``version``.  Pending costs committed at or before ``version`` are in
        it, and stop being subtracted.  A snapshot older than the one held
        (reloads racing) is ignored."""
        held = self._snapshots.get(profile_id)
        if held is not None and version < held.version:
            return
        self._snapshots[profile_id] = _Snapshot(credit, version)
        pending = self._pending_by_profile.get(profile_id)
        if pending:
            for call_key in [
                key
                for key, cost in pending.items()
                if cost.committed_version is not None and cost.committed_version <= version
            ]:
                self._drop_pending(call_key)

    def forget(self, profile_id: int) -> None:
        """The profile is gone from the directory (deleted): its snapshot
        and pending costs go.  Its live calls stay until they are stopped,
        so that :meth:`stop` still prices them for their call records."""
        self._snapshots.pop(profile_id, None)
        self._remote.pop(profile_id, None)
        for call_key in list(self._pending_by_profile.get(profile_id, ())):
            self._drop_pending(call_key)

    def committed(self, call_key: str, version: int) -> None:
        """The record writer committed this call's record and debit in the
        transaction that produced directory ``version`` (or found it already
        written, at or before ``version``).  Unknown keys are ignored
        (calls that cost nothing are not pending)."""
        pending = self._pending.get(call_key)
        if pending is None:
            return
        pending.committed_version = version
        snapshot = self._snapshots.get(pending.profile_id)
        if snapshot is not None and snapshot.version >= version:
            self._drop_pending(call_key)

    # -- the other nodes of a cluster ----------------------------------------------
    def set_remote(
        self, profile_id: int, share: CreditShare, *, clock_offset: float, now: float
    ) -> None:
        """What the profile's calls on the other nodes spend, all of them
        summed, replacing what was set before; a share that spends nothing
        clears it.  ``clock_offset`` is the shared clock minus this node's
        (``shared = now + clock_offset``).  A remote call that seems
        answered after ``now`` (clocks disagree) counts as answered at
        ``now``, so its bound of cost is never below nothing."""
        if not share.spends:
            self._remote.pop(profile_id, None)
            return
        # Σ price × (shared answer - offset), each answer at most ``now``.
        answered = share.price_answered - share.price * Decimal(clock_offset)
        answered = min(answered, share.price * Decimal(now))
        burn = _Burn(share.calls, share.price, answered)
        self._remote[profile_id] = _RemoteSpend(burn, share.pending)

    def clear_remote(self, profile_id: int) -> None:
        """The other nodes spend nothing of the profile (or are not heard from)."""
        self._remote.pop(profile_id, None)

    def remote_profiles(self) -> list[int]:
        """Profiles the other nodes spend credit of, as last set."""
        return list(self._remote)

    def local_shares(self, clock_offset: float) -> dict[int, CreditShare]:
        """What this node's calls spend, per profile that spends anything
        (live charged calls or pending costs), for the other nodes: answer
        times on the shared clock (``now + clock_offset``), their sum
        rounded down (see :data:`SHARE_ANSWERED_STEP`)."""
        offset = Decimal(clock_offset)
        shares: dict[int, CreditShare] = {}
        for profile_id in self._burn.keys() | self._pending_sum.keys():
            burn = self._burn.get(profile_id)
            if burn is None:
                burn = _Burn()
            answered = (burn.price_answered + burn.price * offset).quantize(
                SHARE_ANSWERED_STEP, rounding=ROUND_FLOOR
            )
            shares[profile_id] = CreditShare(
                calls=burn.calls,
                price=burn.price,
                price_answered=answered if burn.calls else Decimal(0),
                pending=self._pending_sum.get(profile_id, Decimal(0)),
            )
        return shares

    # -- calls ------------------------------------------------------------------
    def start(self, profile_id: int, call_key: str, price_per_minute: Decimal, now: float) -> None:
        """The call was answered at ``now``; it burns ``price_per_minute``
        from then on, shared with the profile's other live calls."""
        if price_per_minute < 0:
            raise ValueError(f"negative price {price_per_minute}")
        if call_key in self._live or call_key in self._pending:
            raise ValueError(f"call {call_key!r} is already metered")
        call = _LiveCall(profile_id, price_per_minute, now)
        self._live[call_key] = call
        self._live_by_profile.setdefault(profile_id, {})[call_key] = call
        if price_per_minute > 0:
            self._burn.setdefault(profile_id, _Burn()).add(call, 1)

    def stop(self, call_key: str, now: float) -> Decimal:
        """The call ended at ``now``: its cost (:func:`call_cost` of
        :func:`elapsed_ms` since the answer), which stays pending until
        committed and reloaded.  An unknown key costs 0."""
        call = self._live.pop(call_key, None)
        if call is None:
            return Decimal(0)
        calls = self._live_by_profile[call.profile_id]
        del calls[call_key]
        if not calls:
            del self._live_by_profile[call.profile_id]
        if call.price_per_minute > 0:
            burn = self._burn[call.profile_id]
            burn.add(call, -1)
            if not burn.calls:
                del self._burn[call.profile_id]
        cost = call.cost(now)
        # A profile no longer in the directory has no credit to protect;
        # its record will be discarded by the writer, and a pending cost
        # would never be reported committed.
        if cost > 0 and call.profile_id in self._snapshots:
            pending = _PendingCost(call.profile_id, cost)
            self._pending[call_key] = pending
            self._pending_by_profile.setdefault(call.profile_id, {})[call_key] = pending
            self._pending_sum[call.profile_id] = (
                self._pending_sum.get(call.profile_id, Decimal(0)) + cost
            )
        return cost

    def _drop_pending(self, call_key: str) -> None:
        pending = self._pending.pop(call_key)
        costs = self._pending_by_profile[pending.profile_id]
        del costs[call_key]
        if not costs:
            del self._pending_by_profile[pending.profile_id]
            del self._pending_sum[pending.profile_id]
        else:
            self._pending_sum[pending.profile_id] -= pending.cost

    # -- questions --------------------------------------------------------------
    def live_calls(self, profile_id: int) -> list[str]:
        return list(self._live_by_profile.get(profile_id, ()))

    def pending_cost(self, profile_id: int) -> Decimal:
        """Costs of ended calls not yet in the snapshot held."""
        return self._pending_sum.get(profile_id, Decimal(0))

    def _unspent(self, profile_id: int) -> Decimal:
        """Snapshot credit − pending costs, this node's and the others'."""
        snapshot = self._snapshots.get(profile_id)
        if snapshot is None:
            return Decimal(0)
        unspent = snapshot.credit - self.pending_cost(profile_id)
        remote = self._remote.get(profile_id)
        if remote is not None:
            unspent -= remote.pending
        return unspent

    def _remote_burn(self, profile_id: int) -> _Burn | None:
        remote = self._remote.get(profile_id)
        if remote is None or not remote.burn.calls:
            return None
        return remote.burn

    def _remote_spent(self, profile_id: int, now: float) -> Decimal:
        """What the other nodes' live calls cost at ``now``, at most."""
        burn = self._remote_burn(profile_id)
        return Decimal(0) if burn is None else burn.spent_at_most(now)

    def available(self, profile_id: int, now: float) -> Decimal:
        """Snapshot credit − pending costs − what the live calls would cost
        if they ended at ``now`` (the other nodes' at their upper bound).
        May be negative (a call outlived the credit); 0 for a profile
        without a snapshot."""
        if profile_id not in self._snapshots:
            return Decimal(0)
        live = self._live_by_profile.get(profile_id, {}).values()
        spent = sum((c.cost(now) for c in live), Decimal(0)) + self._remote_spent(profile_id, now)
        return self._unspent(profile_id) - spent

    def has_credit(self, profile_id: int, now: float) -> bool:
        """What admission asks before an outbound call: is anything left?
        (``available > 0``, answered in O(1) unless the credit is nearly
        spent.)"""
        if profile_id not in self._snapshots:
            return False
        unspent = self._unspent(profile_id)
        if unspent <= 0:
            return False
        burn = self._burn.get(profile_id)
        bound = self._remote_spent(profile_id, now)
        if burn is not None:
            bound += burn.spent_at_most(now)
        if unspent - bound > 0:
            return True
        return self.available(profile_id, now) > 0

    def safe_until(self, profile_id: int, now: float) -> float | None:
        """A moment (``now`` or later) before which the live calls cannot
        overdraw the credit, in O(1); None when nothing burns.  It is never
        later than :meth:`exhausted_at`: a timer set here and re-checked
        exactly when it fires is cheap while the credit lasts."""
        burn = self._burn.get(profile_id)
        if burn is None:
            return None
        if profile_id not in self._snapshots:
            return now
        everyone = burn.plus(self._remote_burn(profile_id))
        return max(now, everyone.no_overdraw_before(self._unspent(profile_id)))

    def exhausted_at(self, profile_id: int, now: float) -> float | None:
        """The moment the profile's live calls would cost more than its
        credit: ending them before it costs at most the credit, at or after
        it more.  ``now`` if that is already so (also for a profile without
        a snapshot: no credit at all); None when no live call burns
        anything.  A call answered later makes it earlier for all.

        Billing counts every started second, so the cost steps up when a
        call enters a new second (:func:`elapsed_ms` rounding: at k seconds
        and half a millisecond).  The answer is the step that first
        overdraws; a caller ending calls on a timer should stop a little
        before it, since a BYE that leaves a moment late is billed a whole
        second more.

        The other nodes' calls (:meth:`set_remote`) count at their upper
        bound, which grows continuously: between two steps of this node's
        calls the credit may run out at any moment, the one where the
        bound reaches what this node's calls leave.

        The search starts at a time before which overdrawing is impossible
        (a bound from the calls' combined rate), then walks the steps in
        time order: about one second's worth of steps per call.
        """
        burning = [
            c for c in self._live_by_profile.get(profile_id, {}).values() if c.price_per_minute > 0
        ]
        if not burning:
            return None
        unspent = self._unspent(profile_id)
        remote = self._remote_burn(profile_id)
        if (
            unspent
            - sum((c.cost(now) for c in burning), Decimal(0))
            - self._remote_spent(profile_id, now)
            < 0
        ):
            return now
        start = max(now, _no_overdraw_before(burning, remote, unspent, now))
        # Each call's billed seconds at ``start`` and its next step.
        steps: list[tuple[float, int, int]] = []
        charged = Decimal(0)
        for index, call in enumerate(burning):
            seconds = billed_seconds(elapsed_ms(call.answered, start))
            charged += _cost_of_seconds(call.price_per_minute, seconds)
            steps.append((call.answered + seconds + _ROUNDING_OFFSET, index, seconds + 1))
        if unspent - charged - self._remote_spent(profile_id, start) < 0:  # only if start == now
            return start
        heapq.heapify(steps)
        while True:
            moment, index, seconds = heapq.heappop(steps)
            if remote is not None:
                # Where the remote bound alone uses up what is left, before
                # this node's next step: (price × (t + 2) − Σ price ×
                # answered) / 60 + calls × step = unspent − charged.
                left = unspent - charged - remote.calls * MONEY_STEP
                crossing = float((60 * left + remote.price_answered) / remote.price) - 2
                if crossing < moment:
                    return max(crossing, now)
            price = burning[index].price_per_minute
            charged += _cost_of_seconds(price, seconds) - _cost_of_seconds(price, seconds - 1)
            if unspent - charged - self._remote_spent(profile_id, moment) < 0:
                return max(moment, now)
            next_step = burning[index].answered + seconds + _ROUNDING_OFFSET
            heapq.heappush(steps, (next_step, index, seconds + 1))


def _no_overdraw_before(
    calls: list[_LiveCall], remote: _Burn | None, unspent: Decimal, now: float
) -> float:
    """A time (``now`` or later) before which the calls, and the other
    nodes' calls at their bound (``remote``), cannot cost more than
    ``unspent``.

    A call billed k started seconds at time t has k < t - answered + 2
    (whole seconds, rounded up, of a duration rounded to the millisecond),
    and its cost is below price x k / 60 + one money step, so the total
    stays within ``unspent`` while
    Σ price x (t - answered + 2) / 60 + n x step <= unspent, i.e. until
    t = (60 x (unspent - n x step) + Σ price x (answered - 2)) / Σ price.
    (A call answered after ``now`` counts as answered at ``now``, which
    keeps the bound true for every t >= now.)  The remote bound is the same
    linear expression of t, so it joins the sums.  One more second is taken
    off for the float rounding of clock values.
    """
    local = _Burn(
        len(calls),
        sum((c.price_per_minute for c in calls), Decimal(0)),
        sum((c.price_per_minute * Decimal(min(c.answered, now)) for c in calls), Decimal(0)),
    )
    return local.plus(remote).no_overdraw_before(unspent)
