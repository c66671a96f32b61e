"""Credit shared across nodes (gateway/cluster/credit_share.py) against a real Redis:
two exchanges play two nodes, each with a real credit meter behind it.

Redis is found as in test_admission_redis.py (skipped when unreachable,
failing under ``CI``); every test writes under a prefix of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from gateway.billing.credit import CreditMeter, CreditShare
from gateway.cluster.credit_share import CreditExchange, decode_share, encode_share
from tests.support.tcp_proxy import TcpProxy
from tests.unit.test_admission_redis import REDIS_URL, prefix  # noqa: F401 - the fixture

D = Decimal
PROFILE = 1
CREDIT = D("10.0000")
PRICE = D("6.0000")  # 0.10 per second
#: Rounds of the background tests: short, so a node's time to live
#: (TTL_ROUNDS intervals) passes quickly.
FAST = 0.05
WAIT = 10.0  # seconds a background round may take to show, at most


class Node:
    """A gateway node as the exchange sees it: a meter on the event loop's
    clock, and a log of what the exchange applied."""

    def __init__(self) -> None:
        self.meter = CreditMeter()
        self.meter.set_snapshot(PROFILE, CREDIT, 1)
        self.applied: list[tuple[int, CreditShare | None]] = []

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()

    def credit_shares(self, clock_offset: float) -> dict[int, CreditShare]:
        return self.meter.local_shares(clock_offset)

    def apply_remote_credit(
        self, profile_id: int, share: CreditShare | None, clock_offset: float
    ) -> None:
        self.applied.append((profile_id, share))
        if share is None:
            self.meter.clear_remote(profile_id)
        else:
            self.meter.set_remote(profile_id, share, clock_offset=clock_offset, now=self.now())

    def remote(self) -> CreditShare | None:
        """What the exchange last applied for the profile."""
        last = [share for profile_id, share in self.applied if profile_id == PROFILE]
        return last[-1] if last else None


ExchangeFactory = Callable[..., tuple[Node, CreditExchange]]


@pytest.fixture
async def nodes(prefix: str) -> AsyncIterator[ExchangeFactory]:  # noqa: F811 - the fixture
    """``nodes(url=REDIS_URL, interval=...)``: a node and its exchange under
    the test's prefix; every exchange is closed afterwards."""
    made: list[CreditExchange] = []

    def make(*, url: str = REDIS_URL, interval: float = 0.25) -> tuple[Node, CreditExchange]:
        node = Node()
        exchange = CreditExchange(url, node, prefix=prefix, interval=interval)
        made.append(exchange)
        return node, exchange

    yield make
    for exchange in made:
        await exchange.close()


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.01)


def test_a_share_travels_as_four_numbers() -> None:
    share = CreditShare(
        calls=2, price=D("1.8000"), price_answered=D("123456.789012"), pending=D("0.3000")
    )
    text = encode_share(share)
    assert text == "2 1.8000 123456.789012 0.3000"
    assert decode_share(text) == share
    assert decode_share(encode_share(CreditShare(pending=D("0.0001")))) == CreditShare(
        pending=D("0.0001")
    )
    for bad in ("", "1 2 3", "1 2 3 4 5", "x 1 1 0", "1 NaN 1 0", "1 1 Infinity 0", "-1 1 1 0"):
        with pytest.raises(ValueError):
            decode_share(bad)
    with pytest.raises(ValueError):
        decode_share("1 0 0 0")  # a burning call without a price


async def test_each_node_learns_what_the_other_spends_but_not_its_own(
    nodes: ExchangeFactory,
) -> None:
    (a, exchange_a), (b, exchange_b) = nodes(), nodes()
    a.meter.start(PROFILE, "a1", PRICE, a.now())
    b_answered = b.now()
    b.meter.start(PROFILE, "b1", PRICE / 2, b_answered)
    await exchange_a.exchange()
    await exchange_b.exchange()
    await exchange_a.exchange()
    # Each holds exactly the other's call: its own field is not added.
    seen_by_b, seen_by_a = b.remote(), a.remote()
    assert seen_by_b is not None
    assert (seen_by_b.calls, seen_by_b.price, seen_by_b.pending) == (1, PRICE, D(0))
    assert seen_by_a is not None
    assert (seen_by_a.calls, seen_by_a.price, seen_by_a.pending) == (1, PRICE / 2, D(0))
    # B's view of what is left counts A's call (at its bound: 2 s and a
    # money step more than its exact cost) on top of its own.
    now = b.now()
    alone = CreditMeter()
    alone.set_snapshot(PROFILE, CREDIT, 1)
    alone.start(PROFILE, "b1", PRICE / 2, b_answered)
    assert b.meter.available(PROFILE, now) < alone.available(PROFILE, now) - D("0.2")
    # Nothing changed: a round applies nothing again.
    applied = len(b.applied)
    await exchange_b.exchange()
    assert len(b.applied) == applied


async def test_ended_calls_stay_counted_until_the_snapshot_holds_them(
    nodes: ExchangeFactory,
) -> None:
    (a, exchange_a), (b, exchange_b) = nodes(), nodes()
    a.meter.start(PROFILE, "a1", PRICE, a.now() - 10)  # ten seconds ago: 1.00
    await exchange_a.exchange()
    await exchange_b.exchange()
    seen = b.remote()
    assert seen is not None
    assert (seen.calls, seen.price, seen.pending) == (1, PRICE, D(0))
    cost = a.meter.stop("a1", a.now())
    assert cost >= D("1.0000")
    await exchange_a.exchange()
    await exchange_b.exchange()
    assert b.remote() == CreditShare(pending=cost)
    assert b.meter.available(PROFILE, b.now()) == CREDIT - cost
    # The record is written and A reloads: nothing left to share, and B
    # (which reloaded too) forgets A's part.
    a.meter.committed("a1", 2)
    a.meter.set_snapshot(PROFILE, CREDIT - cost, 2)
    b.meter.set_snapshot(PROFILE, CREDIT - cost, 2)
    await exchange_a.exchange()
    await exchange_b.exchange()
    assert b.remote() is None
    assert b.meter.remote_profiles() == []
    assert b.meter.available(PROFILE, b.now()) == CREDIT - cost


async def test_a_vanished_nodes_shares_expire(nodes: ExchangeFactory, prefix: str) -> None:  # noqa: F811
    """A node that stops its rounds without goodbye (a crash): its shares
    outlive its last round by its time to live, then the others stop
    counting them."""
    (a, exchange_a), (b, exchange_b) = nodes(interval=FAST), nodes(interval=FAST)
    a.meter.start(PROFILE, "a1", PRICE, a.now())
    await exchange_a.exchange()
    crashed_at = time.monotonic()
    await exchange_b.exchange()
    assert b.remote() is not None
    while time.monotonic() - crashed_at < exchange_a.ttl / 2:
        await exchange_b.exchange()
        assert b.remote() is not None  # still within the time to live
        await asyncio.sleep(FAST)
    await asyncio.sleep(exchange_a.ttl)
    await exchange_b.exchange()
    assert b.remote() is None
    assert b.meter.remote_profiles() == []
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        assert exchange_a.node_id not in await client.smembers(f"{prefix}credit:nodes")
    finally:
        await client.aclose()


async def test_a_closed_node_removes_its_shares(nodes: ExchangeFactory) -> None:
    (a, exchange_a), (b, exchange_b) = nodes(), nodes()
    a.meter.start(PROFILE, "a1", PRICE, a.now())
    await exchange_a.exchange()
    await exchange_b.exchange()
    assert b.remote() is not None
    await exchange_a.close()
    await exchange_b.exchange()
    assert b.remote() is None


async def test_shares_lost_in_redis_are_written_again(
    nodes: ExchangeFactory,
    prefix: str,  # noqa: F811 - the fixture
    caplog: pytest.LogCaptureFixture,
) -> None:
    (a, exchange_a), (b, exchange_b) = nodes(), nodes()
    a.meter.set_snapshot(2, CREDIT, 1)
    a.meter.start(PROFILE, "a1", PRICE, a.now())
    a.meter.start(2, "a2", PRICE, a.now())
    await exchange_a.exchange()
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        await client.delete(f"{prefix}credit:node:{exchange_a.node_id}")  # e.g. a Redis restart
        a.meter.stop("a2", a.now())  # one change: only it would be written
        with caplog.at_level(logging.WARNING, logger="gateway.cluster.credit_share"):
            await exchange_a.exchange()
        assert "lost in Redis" in caplog.text
        await exchange_a.exchange()
        await exchange_b.exchange()
        held = await client.hgetall(f"{prefix}credit:node:{exchange_a.node_id}")
        assert set(held) == {str(PROFILE), "2"}
        assert b.remote() is not None
    finally:
        await client.aclose()


async def test_the_shared_clock_is_redis_time(nodes: ExchangeFactory) -> None:
    """Answer times travel on Redis time: each node's offset to it turns
    them into its own clock (here, one machine: about the wall clock)."""
    a, exchange_a = nodes()
    await exchange_a.exchange()
    offset = exchange_a.clock_offset
    assert offset is not None
    assert abs(offset - (time.time() - a.now())) < 1.0


async def test_rounds_run_in_the_background_and_outlive_a_redis_outage(
    nodes: ExchangeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """B reaches Redis through a proxy that the test cuts: B warns once,
    keeps what it heard for a time to live, then meters alone (and says
    so); when Redis is back it hears A again."""
    host, port = "127.0.0.1", 6379
    async with TcpProxy(host, port) as proxy:
        a, exchange_a = nodes(interval=FAST)
        b, exchange_b = nodes(url=f"redis://{proxy.host}:{proxy.port}/0", interval=FAST)
        a.meter.start(PROFILE, "a1", PRICE, a.now())
        exchange_a.start()
        exchange_b.start()
        await wait_for(lambda: b.remote() is not None, "B hears of A's call")
        with caplog.at_level(logging.INFO, logger="gateway.cluster.credit_share"):
            await proxy.cut()
            cut_at = time.monotonic()
            await wait_for(lambda: b.remote() is None, "B forgets A after a time to live")
            # Not before what it last heard was a time to live old (the
            # last good round was at most a round before the cut).
            assert time.monotonic() - cut_at >= exchange_b.ttl / 2
            await asyncio.sleep(5 * FAST)  # more failed rounds: no more warnings
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 2, warnings
            assert "Redis unreachable" in warnings[0]
            assert "this node's calls only" in warnings[1]
            await proxy.restore()
            await wait_for(lambda: b.remote() is not None, "B hears of A again")
            assert any("Redis is back" in r.getMessage() for r in caplog.records)
