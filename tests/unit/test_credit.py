"""Credit logic (gateway/billing/credit.py): rating, pricing and the per-profile
meter, driven with an explicit clock (no sleeping, no database)."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.billing.credit import (
    CreditMeter,
    CreditShare,
    billed_seconds,
    call_cost,
    elapsed_ms,
    longest_prefix_rate,
    normalise_destination,
)

D = Decimal

# ---------------------------------------------------------------------------
# Rating

RATES = {
    "": D("0.5000"),
    "44": D("0.0200"),
    "4420": D("0.0100"),
    "447": D("0.1500"),
    "4479": D("0.0900"),
    "1": D("0.0080"),
}


@pytest.mark.parametrize(
    ("destination", "price"),
    [
        ("+442079460000", D("0.0100")),  # 4420 beats 44
        ("441134960000", D("0.0200")),  # 44 only
        ("+447700900000", D("0.1500")),  # 447 beats 44
        ("+447900900000", D("0.0900")),  # 4479 beats 447
        ("+1 (212) 555-0100", D("0.0080")),  # visual separators (RFC 3966 §5.1.1)
        ("+44 113.496-0000", D("0.0200")),
        ("+33142278186", D("0.5000")),  # only the empty prefix
        ("0044113496000", D("0.5000")),  # no dialling-plan rewriting
        ("alice", D("0.5000")),  # not a number: only the empty prefix
        ("44", D("0.0200")),  # the whole number is the prefix
    ],
)
def test_the_longest_matching_prefix_wins(destination: str, price: Decimal) -> None:
    assert longest_prefix_rate(RATES, destination) == price


def test_without_the_empty_prefix_an_unknown_destination_has_no_rate() -> None:
    rates = {k: v for k, v in RATES.items() if k}
    assert longest_prefix_rate(rates, "+33142278186") is None
    assert longest_prefix_rate(rates, "alice") is None
    assert longest_prefix_rate(rates, "") is None
    assert longest_prefix_rate({}, "+442079460000") is None


def test_normalise_destination() -> None:
    assert normalise_destination(" +44 (0) 113-496.0000 ") == "4401134960000"
    assert normalise_destination("+") == ""
    assert normalise_destination("12+3") == "12+3"  # only a leading "+" goes


def test_a_large_rate_table_agrees_with_a_linear_scan() -> None:
    rng = random.Random(5)
    rates: dict[str, Decimal] = {}
    while len(rates) < 10_000:
        prefix = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 8)))
        rates[prefix] = D(rng.randint(1, 99_999)).scaleb(-4)
    for _ in range(400):
        number = "".join(rng.choice("0123456789") for _ in range(rng.randint(6, 15)))
        matches = [p for p in rates if number.startswith(p)]
        expected = rates[max(matches, key=len)] if matches else None
        assert longest_prefix_rate(rates, "+" + number) == expected


# ---------------------------------------------------------------------------
# Pricing


@pytest.mark.parametrize(
    ("duration_ms", "seconds"),
    [(0, 0), (1, 1), (999, 1), (1000, 1), (1001, 2), (60_000, 60), (60_001, 61)],
)
def test_every_started_second_is_billed(duration_ms: int, seconds: int) -> None:
    assert billed_seconds(duration_ms) == seconds


@pytest.mark.parametrize(
    ("price", "duration_ms", "cost"),
    [
        (D("0.6000"), 0, D("0.0000")),  # an unanswered or instantly ended call
        (D("0.6000"), 1, D("0.0100")),  # 1 ms is a second
        (D("0.6000"), 10_000, D("0.1000")),  # exact: nothing rounded
        (D("0.6000"), 10_001, D("0.1100")),
        (D("0.0100"), 1_000, D("0.0002")),  # 0.000166… rounded up
        (D("0.0001"), 1_000, D("0.0001")),  # never rounded down to nothing
        (D("0.0000"), 3_600_000, D("0.0000")),  # a free destination
        (D("1.2345"), 61_000, D("1.2551")),  # 1.25507… rounded up
        (D("9999.9999"), 86_400_000, D("14399999.8560")),  # a day at a huge price
    ],
)
def test_call_cost(price: Decimal, duration_ms: int, cost: Decimal) -> None:
    assert call_cost(price, duration_ms) == cost
    assert call_cost(price, duration_ms).as_tuple().exponent == -4


def test_call_cost_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="negative duration"):
        call_cost(D("0.1000"), -1)
    with pytest.raises(ValueError, match="negative price"):
        call_cost(D("-0.1000"), 1000)


@given(
    price=st.decimals(min_value=0, max_value=1000, places=4),
    duration_ms=st.integers(0, 10**9),
)
def test_call_cost_is_never_less_than_the_exact_price(price: Decimal, duration_ms: int) -> None:
    cost = call_cost(price, duration_ms)
    exact = price * billed_seconds(duration_ms) / 60
    assert exact <= cost < exact + D("0.0001")


def test_elapsed_ms_rounds_to_the_nearest_millisecond() -> None:
    assert elapsed_ms(100.0, 100.0) == 0
    assert elapsed_ms(100.0, 99.0) == 0  # a clock never runs backwards into a refund
    assert elapsed_ms(100.0, 100.0004) == 0
    assert elapsed_ms(100.0, 100.0006) == 1
    assert elapsed_ms(100.0, 110.0) == 10_000


# ---------------------------------------------------------------------------
# The meter


def meter_with(credit: str, *, profile: int = 1, version: int = 1) -> CreditMeter:
    meter = CreditMeter()
    meter.set_snapshot(profile, D(credit), version)
    return meter


def test_a_profile_without_a_snapshot_has_no_credit() -> None:
    meter = CreditMeter()
    assert meter.available(7, 0.0) == 0
    assert not meter.has_credit(7, 0.0)
    assert meter.exhausted_at(7, 0.0) is None


def test_has_credit_is_false_at_zero_and_true_above() -> None:
    meter = meter_with("0")
    assert not meter.has_credit(1, 0.0)
    meter.set_snapshot(1, D("0.0001"), 2)
    assert meter.has_credit(1, 0.0)


def test_one_call_burns_per_started_second() -> None:
    meter = meter_with("1.0000")
    meter.start(1, "a", D("0.6000"), now=1000.0)  # 0.01 per second
    assert meter.live_calls(1) == ["a"]
    assert meter.available(1, 1000.0) == D("1.0000")
    assert meter.available(1, 1000.001) == D("0.9900")  # the first second is started
    assert meter.available(1, 1010.0) == D("0.9000")
    assert meter.available(1, 1010.001) == D("0.8900")
    # 100 seconds cost exactly the credit; the 101st overdraws.
    assert meter.exhausted_at(1, 1000.0) == pytest.approx(1100.0005)
    assert meter.available(1, 1100.0) == 0
    assert not meter.has_credit(1, 1100.0)
    assert meter.exhausted_at(1, 1100.0) == pytest.approx(1100.0005)
    assert meter.available(1, 1100.001) == D("-0.0100")
    assert meter.exhausted_at(1, 1100.001) == 1100.001  # overdrawn already


def test_a_call_at_a_free_destination_burns_nothing() -> None:
    meter = meter_with("1.0000")
    meter.start(1, "free", D("0"), now=0.0)
    assert meter.exhausted_at(1, 0.0) is None
    assert meter.available(1, 10_000.0) == D("1.0000")
    assert meter.stop("free", 10_000.0) == 0
    assert meter.pending_cost(1) == 0


def test_two_calls_at_different_rates_share_the_credit() -> None:
    meter = meter_with("1.0000")
    meter.start(1, "a", D("0.6000"), now=0.0)  # 0.01 per second
    assert meter.exhausted_at(1, 0.0) == pytest.approx(100.0005)
    meter.start(1, "b", D("1.2000"), now=10.0)  # 0.02 per second
    # At 10 s "a" has spent 0.10; the 0.90 left go at 0.03 per second: 30 s.
    # At 40 s "a" costs 0.40 and "b" 0.60, exactly the credit; the next
    # started second of either overdraws.
    assert sorted(meter.live_calls(1)) == ["a", "b"]
    exhausted = meter.exhausted_at(1, 10.0)
    assert exhausted == pytest.approx(40.0005)
    assert meter.available(1, 40.0) == 0
    assert meter.available(1, 40.001) < 0
    # Ending both just before that moment costs exactly the credit.
    assert meter.stop("a", 40.0) + meter.stop("b", 40.0) == D("1.0000")


def test_calls_of_other_profiles_do_not_share_the_credit() -> None:
    meter = meter_with("1.0000", profile=1)
    meter.set_snapshot(2, D("1.0000"), 1)
    meter.start(1, "a", D("0.6000"), now=0.0)
    meter.start(2, "b", D("6.0000"), now=0.0)
    assert meter.exhausted_at(1, 0.0) == pytest.approx(100.0005)
    assert meter.exhausted_at(2, 0.0) == pytest.approx(10.0005)
    assert meter.live_calls(1) == ["a"]
    assert meter.live_calls(2) == ["b"]


def test_a_call_key_is_metered_once() -> None:
    meter = meter_with("1.0000")
    meter.start(1, "a", D("0.6000"), now=0.0)
    with pytest.raises(ValueError, match="already metered"):
        meter.start(1, "a", D("0.6000"), now=1.0)
    with pytest.raises(ValueError, match="negative price"):
        meter.start(1, "b", D("-1"), now=1.0)


def test_stop_of_an_unknown_call_costs_nothing() -> None:
    meter = meter_with("1.0000")
    assert meter.stop("nobody", 5.0) == 0
    meter.start(1, "a", D("0.6000"), now=0.0)
    assert meter.stop("a", 5.0) == D("0.0500")
    assert meter.stop("a", 9.0) == 0  # stopped twice: the second costs nothing
    assert meter.live_calls(1) == []


def test_stop_commit_then_snapshot_counts_the_cost_exactly_once() -> None:
    meter = meter_with("1.0000", version=4)
    meter.start(1, "a", D("0.6000"), now=0.0)
    assert meter.stop("a", 30.0) == D("0.3000")
    assert meter.available(1, 31.0) == D("0.7000")  # pending
    meter.committed("a", 5)
    assert meter.available(1, 31.0) == D("0.7000")  # still pending: snapshot is v4
    meter.set_snapshot(1, D("1.0000"), 4)  # a reload of the same version
    assert meter.available(1, 31.0) == D("0.7000")
    meter.set_snapshot(1, D("0.7000"), 5)  # the reload that holds the debit
    assert meter.pending_cost(1) == 0
    assert meter.available(1, 31.0) == D("0.7000")  # not counted twice
    meter.set_snapshot(1, D("0.7000"), 6)
    assert meter.available(1, 31.0) == D("0.7000")


def test_a_snapshot_reloaded_before_the_commit_is_reported() -> None:
    """The writer commits (version 5), another task reloads the directory,
    and only then does the writer's report arrive: in between the cost is
    counted twice (refusing, never over-spending), then once."""
    meter = meter_with("1.0000", version=4)
    meter.start(1, "a", D("0.6000"), now=0.0)
    meter.stop("a", 30.0)
    meter.set_snapshot(1, D("0.7000"), 5)
    assert meter.available(1, 31.0) == D("0.4000")  # counted twice for now
    meter.committed("a", 5)
    assert meter.pending_cost(1) == 0
    assert meter.available(1, 31.0) == D("0.7000")


def test_a_snapshot_older_than_the_commit_keeps_the_cost_pending() -> None:
    meter = meter_with("1.0000", version=4)
    meter.start(1, "a", D("0.6000"), now=0.0)
    meter.stop("a", 30.0)
    meter.committed("a", 7)  # other changes bumped the version meanwhile
    meter.set_snapshot(1, D("1.0000"), 6)  # read before the debit committed
    assert meter.available(1, 31.0) == D("0.7000")
    meter.set_snapshot(1, D("0.7000"), 7)
    assert meter.available(1, 31.0) == D("0.7000")
    assert meter.pending_cost(1) == 0


def test_a_late_reload_of_an_older_snapshot_is_ignored() -> None:
    meter = meter_with("0.7000", version=9)
    meter.set_snapshot(1, D("1.0000"), 8)
    assert meter.available(1, 0.0) == D("0.7000")


def test_a_commit_reported_for_a_call_with_nothing_pending_is_ignored() -> None:
    meter = meter_with("1.0000")
    meter.committed("never-started", 3)
    meter.start(1, "short", D("0.6000"), now=0.0)
    meter.stop("short", 0.0)  # 0 ms: nothing to pend
    meter.committed("short", 3)
    assert meter.available(1, 1.0) == D("1.0000")


@pytest.mark.parametrize(
    "order",
    [
        ("stop", "commit", "snapshot"),
        ("stop", "snapshot", "commit"),
    ],
)
def test_every_order_ends_with_the_cost_counted_once(order: tuple[str, ...]) -> None:
    meter = meter_with("5.0000", version=1)
    meter.start(1, "a", D("6.0000"), now=0.0)  # 0.10 per second
    meter.start(1, "b", D("6.0000"), now=0.0)
    for step in order:
        if step == "stop":
            assert meter.stop("a", 10.0) == D("1.0000")
        elif step == "commit":
            meter.committed("a", 2)
        else:
            meter.set_snapshot(1, D("4.0000"), 2)
    # "b" still runs: 10 s cost 1.00, so 5.00 - 1.00 ("a") - 1.00 ("b").
    assert meter.available(1, 10.0) == D("3.0000")
    assert meter.exhausted_at(1, 10.0) == pytest.approx(40.0005)


def test_forget_drops_the_profile_but_stop_still_prices_its_calls() -> None:
    meter = meter_with("1.0000")
    meter.start(1, "a", D("0.6000"), now=0.0)
    meter.start(1, "b", D("0.6000"), now=0.0)
    meter.stop("a", 10.0)
    meter.forget(1)
    assert meter.pending_cost(1) == 0
    assert meter.available(1, 10.0) == 0
    assert meter.stop("b", 20.0) == D("0.2000")  # for its call record
    assert meter.pending_cost(1) == 0  # nobody will report it committed
    assert meter.live_calls(1) == []


def test_exhausted_at_with_many_calls_matches_a_walk_in_milliseconds() -> None:
    rng = random.Random(11)
    meter = meter_with("3.0000")
    for index in range(20):
        price = D(rng.randint(1, 30_000)).scaleb(-4)
        meter.start(1, f"c{index}", price, now=rng.uniform(0, 5))
    now = 5.0
    exhausted = meter.exhausted_at(1, now)
    assert exhausted is not None
    # Walk the clock in half-millisecond steps: the first moment the
    # calls overdraw is where the meter said.
    t = now
    while meter.available(1, t) >= 0:
        t += 0.0005
        assert t < now + 3600
    assert t - 0.0005 < exhausted <= t + 1e-9
    assert meter.available(1, exhausted - 0.0002) >= 0
    assert meter.available(1, exhausted + 0.0002) < 0


# ---------------------------------------------------------------------------
# The meter in a cluster: what the other nodes spend


def remote_share(
    calls: list[tuple[str, float]], *, pending: str = "0", clock: float = 0.0
) -> CreditShare:
    """Another node's share: its live calls as (price, answer time on the
    shared clock ``clock`` seconds ahead of ours)."""
    prices = [D(price) for price, _ in calls]
    return CreditShare(
        calls=len(calls),
        price=sum(prices, D(0)),
        price_answered=sum(
            (p * D(answered + clock) for p, (_, answered) in zip(prices, calls, strict=True)),
            D(0),
        ),
        pending=D(pending),
    )


def test_a_share_refuses_what_no_meter_publishes() -> None:
    with pytest.raises(ValueError, match="negative"):
        CreditShare(pending=D("-0.0001"))
    with pytest.raises(ValueError, match="disagree"):
        CreditShare(calls=1)  # a burning call has a price
    with pytest.raises(ValueError, match="disagree"):
        CreditShare(price=D("0.6000"))
    with pytest.raises(ValueError, match="answer times"):
        CreditShare(price_answered=D(5))
    total = CreditShare(calls=1, price=D("0.6"), price_answered=D(6)) + CreditShare(
        pending=D("0.2")
    )
    assert total == CreditShare(calls=1, price=D("0.6"), price_answered=D(6), pending=D("0.2"))
    assert total.spends
    assert not CreditShare().spends


def test_remote_pending_and_burn_use_up_the_credit() -> None:
    """Another node's call at 0.60 per minute (0.01 per second), answered
    at 0, and 0.50 of its ended calls not yet in the snapshot: its bound is
    0.01 x (t + 2) + one money step, so the 1.0001 of credit are spent at
    t = 48 exactly."""
    meter = meter_with("1.0001")
    meter.set_remote(1, remote_share([("0.6000", 0.0)], pending="0.5"), clock_offset=0.0, now=0.0)
    assert meter.remote_profiles() == [1]
    assert meter.available(1, 0.0) == D("1.0001") - D("0.5") - D("0.0201")
    assert meter.available(1, 47.5) == D("0.0050")
    assert meter.has_credit(1, 47.5)
    assert meter.available(1, 48.0) == 0
    assert not meter.has_credit(1, 48.0)
    assert meter.available(1, 48.5) == D("-0.0050")
    # Nothing burns here: no timer to arm, no call to end.
    assert meter.safe_until(1, 0.0) is None
    assert meter.exhausted_at(1, 0.0) is None


def test_remote_pending_alone_can_leave_nothing() -> None:
    meter = meter_with("0.5000")
    meter.set_remote(1, CreditShare(pending=D("0.5")), clock_offset=0.0, now=0.0)
    assert meter.available(1, 0.0) == 0
    assert not meter.has_credit(1, 0.0)
    meter.set_remote(1, CreditShare(pending=D("0.4999")), clock_offset=0.0, now=0.0)
    assert meter.available(1, 0.0) == D("0.0001")
    assert meter.has_credit(1, 0.0)


def test_clearing_the_remote_share_gives_the_credit_back() -> None:
    meter = meter_with("1.0000")
    meter.start(1, "a", D("0.6000"), now=0.0)
    alone = (meter.available(1, 30.0), meter.safe_until(1, 0.0), meter.exhausted_at(1, 0.0))
    share = remote_share([("0.6000", 0.0)], pending="0.1")
    meter.set_remote(1, share, clock_offset=0.0, now=0.0)
    assert meter.available(1, 30.0) < alone[0]
    meter.set_remote(1, CreditShare(), clock_offset=0.0, now=0.0)  # spends nothing
    assert meter.remote_profiles() == []
    assert (meter.available(1, 30.0), meter.safe_until(1, 0.0), meter.exhausted_at(1, 0.0)) == alone
    meter.set_remote(1, share, clock_offset=0.0, now=0.0)
    meter.clear_remote(1)
    assert (meter.available(1, 30.0), meter.safe_until(1, 0.0), meter.exhausted_at(1, 0.0)) == alone
    meter.set_remote(1, share, clock_offset=0.0, now=0.0)
    meter.forget(1)  # a deleted profile
    assert meter.remote_profiles() == []


def test_a_remote_call_ends_local_calls_between_their_steps() -> None:
    """This node's call and another's, both 0.01 per second from 0, on 1.00:
    alone the local call could run 100 s.  With the other's bound
    0.01 x (t + 2) + 0.0001, during the local call's 49th second (0.49
    charged) the bound reaches the 0.51 left at t = 48.99: between two
    steps."""
    meter = meter_with("1.0000")
    meter.start(1, "a", D("0.6000"), now=0.0)
    assert meter.exhausted_at(1, 0.0) == pytest.approx(100.0005)
    meter.set_remote(1, remote_share([("0.6000", 0.0)]), clock_offset=0.0, now=0.0)
    exhausted = meter.exhausted_at(1, 0.0)
    assert exhausted == pytest.approx(48.99)
    assert meter.available(1, 48.989) >= 0
    assert meter.available(1, 48.991) < 0
    safe = meter.safe_until(1, 0.0)
    assert safe is not None and exhausted is not None
    assert 0.0 <= safe <= exhausted
    assert meter.exhausted_at(1, 48.995) == 48.995  # overdrawn already


def test_a_local_step_can_overdraw_before_the_remote_bound_does() -> None:
    """Local 0.10 per second, remote 0.001 per second, 1.00 of credit: the
    local call's 10th second (1.00 charged) overdraws at 9.0005, with the
    remote bound at 0.0111; alone it would be the 11th at 10.0005."""
    meter = meter_with("1.0000")
    meter.start(1, "a", D("6.0000"), now=0.0)
    assert meter.exhausted_at(1, 0.0) == pytest.approx(10.0005)
    meter.set_remote(1, remote_share([("0.0600", 0.0)]), clock_offset=0.0, now=0.0)
    assert meter.exhausted_at(1, 0.0) == pytest.approx(9.0005)
    assert meter.available(1, 9.0) == D("1.0000") - D("0.9000") - D("0.0111")


def test_remote_answer_times_are_converted_to_this_nodes_clock() -> None:
    """The shared clock runs 1,000 s ahead of this node's: a call answered
    at 1,000 there was answered at 0 here."""
    here = meter_with("1.0000")
    here.set_remote(1, remote_share([("0.6000", 0.0)]), clock_offset=0.0, now=0.0)
    shifted = meter_with("1.0000")
    shared = remote_share([("0.6000", 0.0)], clock=1000.0)
    shifted.set_remote(1, shared, clock_offset=1000.0, now=0.0)
    for t in (0.0, 10.0, 47.5):
        assert shifted.available(1, t) == here.available(1, t)


def test_a_remote_call_answered_in_the_future_counts_from_now() -> None:
    """Clocks that disagree must not turn a remote call into a refund."""
    meter = meter_with("1.0000")
    meter.set_remote(1, remote_share([("0.6000", 50.0)]), clock_offset=0.0, now=10.0)
    assert meter.available(1, 10.0) == D("1.0000") - D("0.0201")


def test_local_shares_are_what_the_other_nodes_need() -> None:
    meter = meter_with("5.0000")
    meter.set_snapshot(2, D("5.0000"), 1)
    meter.start(1, "a", D("0.6000"), now=10.0)
    meter.start(1, "b", D("1.2000"), now=12.5)
    meter.start(1, "free", D("0"), now=12.5)  # costs nothing: not shared
    meter.start(2, "c", D("0.6000"), now=0.0)
    meter.stop("c", 30.0)  # pending 0.30
    meter.set_remote(1, remote_share([("6.0000", 0.0)]), clock_offset=0.0, now=0.0)
    shares = meter.local_shares(clock_offset=100.0)
    assert shares == {
        # 0.6 x 110 + 1.2 x 112.5 = 201: answer times on the shared clock.
        1: CreditShare(calls=2, price=D("1.8000"), price_answered=D("201"), pending=D(0)),
        2: CreditShare(pending=D("0.3000")),
    }
    assert meter_with("1").local_shares(0.0) == {}  # nothing spends: nothing to tell


def test_local_shares_round_answer_sums_down() -> None:
    """To a millionth: the other nodes' bound of the cost gets larger."""
    meter = meter_with("5.0000")
    meter.start(1, "a", D("0.6000"), now=1 / 3)
    (share,) = meter.local_shares(clock_offset=0.0).values()
    assert share.price_answered == D("0.199999")


# ---------------------------------------------------------------------------
# Properties

prices = st.decimals(min_value=0, max_value=20, places=4)
call_plans = st.lists(
    st.tuples(prices, st.floats(min_value=0, max_value=600, allow_nan=False)),
    min_size=1,
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(
    credit=st.decimals(min_value=0, max_value=100, places=4),
    calls=call_plans,
    moments=st.lists(st.floats(min_value=0, max_value=7200, allow_nan=False), max_size=30),
)
def test_available_never_goes_up_while_calls_burn(
    credit: Decimal, calls: list[tuple[Decimal, float]], moments: list[float]
) -> None:
    meter = meter_with(str(credit))
    for index, (price, answered) in enumerate(calls):
        meter.start(1, f"c{index}", price, now=answered)
    last = None
    for now in sorted(moments):
        value = meter.available(1, now)
        assert value <= credit
        if last is not None:
            assert value <= last
        last = value


remote_plans = st.one_of(
    st.none(),
    st.tuples(
        st.lists(
            st.tuples(
                st.decimals(min_value="0.0001", max_value=20, places=4),
                st.floats(min_value=0, max_value=600, allow_nan=False),
            ),
            max_size=6,
        ),
        st.decimals(min_value=0, max_value=5, places=4),  # remote pending
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),  # shared clock offset
    ),
)


def set_remote_plan(
    meter: CreditMeter,
    plan: tuple[list[tuple[Decimal, float]], Decimal, float] | None,
    now: float,
) -> None:
    """Other nodes' calls (price, answered on our clock) and pending costs,
    published on a shared clock ``offset`` seconds ahead of ours."""
    if plan is None:
        return
    calls, pending, offset = plan
    share = remote_share([(str(p), a) for p, a in calls], pending=str(pending), clock=offset)
    meter.set_remote(1, share, clock_offset=offset, now=now)


@settings(max_examples=200, deadline=None)
@given(
    credit=st.decimals(min_value=0, max_value=50, places=4),
    calls=call_plans,
    now=st.floats(min_value=0, max_value=900, allow_nan=False),
    remote=remote_plans,
)
def test_exhausted_at_is_where_available_turns_negative(
    credit: Decimal,
    calls: list[tuple[Decimal, float]],
    now: float,
    remote: tuple[list[tuple[Decimal, float]], Decimal, float] | None,
) -> None:
    """With or without other nodes' calls and pending costs."""
    meter = meter_with(str(credit))
    for index, (price, answered) in enumerate(calls):
        meter.start(1, f"c{index}", price, now=answered)
    set_remote_plan(meter, remote, min(now, 600.0))
    exhausted = meter.exhausted_at(1, now)
    if all(price == 0 for price, _ in calls):
        assert exhausted is None
        return
    assert exhausted is not None
    assert exhausted >= now
    assert meter.available(1, exhausted + 0.0002) < 0
    if exhausted > now:
        assert meter.available(1, max(now, exhausted - 0.0002)) >= 0
    else:
        assert meter.available(1, now) < 0


@settings(max_examples=100, deadline=None)
@given(
    costs=st.lists(st.integers(1, 600), min_size=1, max_size=8),
    data=st.data(),
)
def test_pending_costs_are_counted_once_whatever_the_order(
    costs: list[int], data: st.DataObject
) -> None:
    """Calls end, their commits are reported in some order at increasing
    versions, and snapshots holding the debits arrive in some order: at
    every step available equals the credit minus the costs not yet in the
    snapshot held (or less, while a commit is unreported); at the end,
    exactly the credit the database holds."""
    meter = meter_with("1000.0000", version=1)
    price = D("0.6000")
    ended: dict[str, Decimal] = {}
    for index, seconds in enumerate(costs):
        key = f"c{index}"
        meter.start(1, key, price, now=0.0)
        ended[key] = meter.stop(key, float(seconds))
    versions = {key: 2 + index for index, key in enumerate(ended)}  # commit i → version 2+i
    events = [("commit", key) for key in ended] + [("snapshot", key) for key in ended]
    order = data.draw(st.permutations(events))
    reported: set[str] = set()
    held_version = 1
    for kind, key in order:
        if kind == "commit":
            meter.committed(key, versions[key])
            reported.add(key)
        else:
            held_version = max(held_version, versions[key])
            meter.set_snapshot(
                1, D("1000.0000") - _debited(ended, versions, held_version), held_version
            )
        in_snapshot = {k for k in ended if versions[k] <= held_version}
        exact = D("1000.0000") - sum((ended[k] for k in ended if k not in in_snapshot), D(0))
        exact -= _debited(ended, versions, held_version)
        value = meter.available(1, 0.0)
        assert value <= exact
        if reported >= in_snapshot:
            assert value == exact
    assert meter.available(1, 0.0) == D("1000.0000") - sum(ended.values(), D(0))
    assert meter.pending_cost(1) == 0


def _debited(ended: dict[str, Decimal], versions: dict[str, int], version: int) -> Decimal:
    return sum((ended[k] for k in ended if versions[k] <= version), D(0))


@settings(max_examples=300, deadline=None)
@given(
    credit=st.decimals(min_value=0, max_value=50, places=4),
    calls=st.lists(
        st.tuples(
            st.decimals(min_value=0, max_value=5, places=4),  # price per minute
            st.floats(min_value=0, max_value=120, allow_nan=False),  # answered
        ),
        max_size=12,
    ),
    pending=st.decimals(min_value=0, max_value=5, places=4),
    later=st.floats(min_value=0, max_value=600, allow_nan=False),
    remote=remote_plans,
)
def test_the_cheap_answers_agree_with_the_exact_ones(
    credit: Decimal,
    calls: list[tuple[Decimal, float]],
    pending: Decimal,
    later: float,
    remote: tuple[list[tuple[Decimal, float]], Decimal, float] | None,
) -> None:
    """has_credit's O(1) path answers what ``available > 0`` answers, and
    safe_until is never later than the exact exhausted_at, however many
    calls start and stop, and whatever the other nodes spend."""
    meter = meter_with(str(credit))
    set_remote_plan(meter, remote, 120.0)
    if pending:  # a call that ended, cost not yet in the snapshot
        meter.start(1, "ended", pending * 60, 0.0)
        meter.stop("ended", 1.0)
    for index, (price, answered) in enumerate(calls):
        meter.start(1, f"c{index}", price, answered)
    if calls:
        meter.stop("c0", 120.0 + later / 2)
    now = 120.0 + later
    assert meter.has_credit(1, now) == (meter.available(1, now) > 0)
    bound = meter.safe_until(1, now)
    exact = meter.exhausted_at(1, now)
    assert (bound is None) == (exact is None)
    if bound is not None and exact is not None:
        assert now <= bound <= exact


@settings(max_examples=200, deadline=None)
@given(
    credit=st.decimals(min_value=0, max_value=50, places=4),
    calls=call_plans,
    pending=st.decimals(min_value=0, max_value=5, places=4),
    clocks=st.tuples(
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),  # shared - A's
        st.floats(min_value=-1e5, max_value=1e5, allow_nan=False),  # B's - A's
    ),
    later=st.lists(st.floats(min_value=0, max_value=3600, allow_nan=False), max_size=10),
)
def test_another_node_never_sees_more_left_than_the_node_running_the_calls(
    credit: Decimal,
    calls: list[tuple[Decimal, float]],
    pending: Decimal,
    clocks: tuple[float, float],
    later: list[float],
) -> None:
    """Node A runs the calls and publishes its share on the shared clock
    (A's clock + ``offset``); node B, whose own clock reads ``skew`` more
    than A's, applies it: at every later instant B's view of what is left
    is at most A's exact one (the bound errs towards ending calls early,
    never towards overspending)."""
    offset, skew = clocks
    node_a, node_b = meter_with(str(credit)), meter_with(str(credit))
    if pending:
        node_a.start(1, "ended", pending * 60, 0.0)
        node_a.stop("ended", 1.0)
    for index, (price, answered) in enumerate(calls):
        node_a.start(1, f"c{index}", price, answered)
    now = 600.0  # on A's clock
    for profile_id, share in node_a.local_shares(clock_offset=offset).items():
        node_b.set_remote(profile_id, share, clock_offset=offset - skew, now=now + skew)
    for t in [now, *(now + x for x in later)]:
        assert node_b.available(1, t + skew) <= node_a.available(1, t)
        assert node_b.has_credit(1, t + skew) <= node_a.has_credit(1, t)
