"""The Redis admission backend against a real Redis: exact limits across two
nodes, idempotent acquire and release, leases that lapse when a node dies
and last while it renews, live limit changes, counts.

Redis is found at ``SIPGW_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``).
If it is unreachable the tests are skipped, or fail when ``CI`` is set.  Each
test writes under a prefix of its own and deletes its keys afterwards.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

import admission
from admission import (
    MAX_CHANNELS,
    AdmissionController,
    AdmissionResult,
    Admitted,
    Rejected,
    RejectReason,
)
from admission.redis import MAX_LEASE_SECONDS, RedisAdmission
from tests.support.environment import missing

REDIS_URL = os.environ.get("SIPGW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ALICE = 1
BOB = 2
#: A short lease so lapsing is observable in a test; renewal runs every third.
SHORT_LEASE = 1.0

NodeFactory = Callable[..., RedisAdmission]


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A prefix no other test (or test run) uses; its keys are deleted after."""
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=2)
    try:
        await client.ping()
    except (aioredis.RedisError, OSError) as exc:
        await client.aclose()
        missing(f"Redis unreachable at {REDIS_URL}: {exc}")
    name = f"sipgw-test:{uuid.uuid4().hex}:"
    try:
        yield name
    finally:
        keys = [key async for key in client.scan_iter(match=f"{name}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
async def node(prefix: str) -> AsyncIterator[NodeFactory]:
    """Makes gateway nodes sharing the test's prefix; closes them all after."""
    made: list[RedisAdmission] = []

    def make(lease_seconds: float = 60.0) -> RedisAdmission:
        controller = RedisAdmission(REDIS_URL, prefix=prefix, lease_seconds=lease_seconds)
        made.append(controller)
        return controller

    yield make
    for controller in made:
        await controller.close()


def crash(controller: RedisAdmission) -> None:
    """What a node that dies does: nothing any more.  Its renewal task stops
    and it releases nothing; its connections stay for the fixture to close."""
    renewer = controller._renewer
    assert renewer is not None
    renewer.cancel()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    """Polls ``check`` until it holds or ``timeout`` seconds pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return await check()


# -- exactness under a burst, across nodes ---------------------------------------


async def test_a_burst_of_1000_calls_on_two_nodes_admits_exactly_the_limit(
    node: NodeFactory,
) -> None:
    a, b = node(), node()
    results: list[AdmissionResult] = await asyncio.gather(
        *((a if i % 2 else b).acquire(ALICE, f"call-{i}@pbx", 300) for i in range(1000))
    )
    admitted = [r for r in results if isinstance(r, Admitted)]
    rejected = [r for r in results if isinstance(r, Rejected)]
    assert len(admitted) == 300
    assert len(rejected) == 700
    # Every admitted call saw a distinct count: no two took the same channel.
    assert sorted(r.in_use for r in admitted) == list(range(1, 301))
    assert all(r.reason is RejectReason.CHANNEL_LIMIT and r.limit == 300 for r in rejected)
    assert all(r.in_use == 300 for r in rejected)
    assert await a.in_use(ALICE) == await b.in_use(ALICE) == 300
    assert await b.counts() == {ALICE: 300}
    assert a.held + b.held == 300


async def test_a_limit_above_300_is_held_to_300(node: NodeFactory) -> None:
    a = node()
    results = await asyncio.gather(*(a.acquire(ALICE, f"c{i}", 10_000) for i in range(400)))
    assert sum(isinstance(r, Admitted) for r in results) == MAX_CHANNELS
    assert Rejected(reason=RejectReason.CHANNEL_LIMIT, in_use=300, limit=300) in results


async def test_a_limit_below_one_is_held_to_one(node: NodeFactory) -> None:
    a = node()
    assert isinstance(await a.acquire(ALICE, "a", 0), Admitted)
    assert await a.acquire(ALICE, "b", -3) == Rejected(
        reason=RejectReason.CHANNEL_LIMIT, in_use=1, limit=1
    )


# -- idempotence ---------------------------------------------------------------------


async def test_acquiring_twice_with_one_call_id_takes_one_channel(node: NodeFactory) -> None:
    a, b = node(), node()
    assert await a.acquire(ALICE, "invite-1", 10) == Admitted(
        profile_id=ALICE, call_id="invite-1", in_use=1
    )
    assert await a.acquire(ALICE, "invite-1", 10) == Admitted(
        profile_id=ALICE, call_id="invite-1", in_use=1
    )
    # The retransmission reached the other node: still one channel.
    assert await b.acquire(ALICE, "invite-1", 10) == Admitted(
        profile_id=ALICE, call_id="invite-1", in_use=1
    )
    assert await a.in_use(ALICE) == 1


async def test_concurrent_acquires_of_one_call_id_take_one_channel(node: NodeFactory) -> None:
    a, b = node(), node()
    results = await asyncio.gather(
        *((a if i % 2 else b).acquire(ALICE, "same", 300) for i in range(50))
    )
    assert all(isinstance(r, Admitted) for r in results)
    assert await a.in_use(ALICE) == 1


async def test_a_retransmission_is_admitted_even_when_the_profile_is_full(
    node: NodeFactory,
) -> None:
    a = node()
    assert isinstance(await a.acquire(ALICE, "a", 2), Admitted)
    assert isinstance(await a.acquire(ALICE, "b", 2), Admitted)
    assert isinstance(await a.acquire(ALICE, "c", 2), Rejected)
    assert await a.acquire(ALICE, "b", 2) == Admitted(profile_id=ALICE, call_id="b", in_use=2)


async def test_release_is_idempotent_and_works_from_any_node(node: NodeFactory) -> None:
    a, b = node(), node()
    await a.acquire(ALICE, "call", 1)
    assert isinstance(await b.acquire(ALICE, "other", 1), Rejected)
    # The BYE reached the other node.
    assert await b.release("call") is True
    assert await a.release("call") is False
    assert await b.release("call") is False
    assert await a.in_use(ALICE) == 0
    # The channel really came back, for either node.
    assert isinstance(await b.acquire(ALICE, "other", 1), Admitted)


async def test_release_of_an_unknown_call_is_false(node: NodeFactory) -> None:
    a = node()
    assert await a.release("never-admitted") is False
    await a.acquire(ALICE, "a", 1)
    assert isinstance(await a.acquire(ALICE, "b", 1), Rejected)
    assert await a.release("b") is False  # a refused call holds nothing
    assert await a.in_use(ALICE) == 1


async def test_a_call_id_held_by_another_profile_is_refused(node: NodeFactory) -> None:
    a, b = node(), node()
    await a.acquire(ALICE, "shared", 10)
    assert await b.acquire(BOB, "shared", 10) == Rejected(
        reason=RejectReason.CALL_ID_IN_USE, in_use=0, limit=10
    )
    assert await a.counts() == {ALICE: 1}
    assert await b.release("shared") is True
    assert await a.counts() == {}


# -- leases ------------------------------------------------------------------------------


async def test_a_crashed_nodes_channels_come_back_after_the_lease(node: NodeFactory) -> None:
    dying, survivor = node(SHORT_LEASE), node(SHORT_LEASE)
    results = await asyncio.gather(*(dying.acquire(ALICE, f"d{i}", 300) for i in range(300)))
    assert all(isinstance(r, Admitted) for r in results)
    crash(dying)
    # Right after the crash the channels still count: the calls may be alive.
    assert isinstance(await survivor.acquire(ALICE, "s-early", 300), Rejected)
    assert await survivor.in_use(ALICE) == 300

    async def freed() -> bool:
        return await survivor.in_use(ALICE) == 0

    assert await eventually(freed, timeout=SHORT_LEASE + 2)
    results = await asyncio.gather(*(survivor.acquire(ALICE, f"s{i}", 300) for i in range(301)))
    assert sum(isinstance(r, Admitted) for r in results) == 300
    assert await survivor.counts() == {ALICE: 300}
    # The dead node's calls hold nothing to release any more.
    assert await survivor.release("d0") is False


async def test_renewal_keeps_a_call_alive_past_several_leases(node: NodeFactory) -> None:
    a, b = node(SHORT_LEASE), node(SHORT_LEASE)
    await a.acquire(ALICE, "long-call", 1)
    await asyncio.sleep(SHORT_LEASE * 3.5)  # ten renewal rounds
    assert await b.in_use(ALICE) == 1
    assert isinstance(await b.acquire(ALICE, "newcomer", 1), Rejected)
    assert await b.release("long-call") is True


async def test_a_lapsed_or_released_lease_is_not_renewed_back(node: NodeFactory) -> None:
    a, b = node(), node()
    await a.acquire(ALICE, "gone", 5)
    await a.acquire(ALICE, "kept", 5)
    assert await b.release("gone")  # released through the other node
    assert await a.renew() == 1  # renewal finds it gone and forgets it
    assert a.held == 1
    assert await a.in_use(ALICE) == 1
    assert await a.renew() == 0


async def test_start_is_explicit_or_on_first_use_and_close_stops_renewal(
    node: NodeFactory,
) -> None:
    a = node(SHORT_LEASE)
    a.start()
    a.start()  # idempotent
    renewer = a._renewer
    assert renewer is not None
    assert not renewer.done()
    await a.close()
    assert renewer.done()
    await a.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await a.acquire(ALICE, "late", 5)


# -- limits ------------------------------------------------------------------------------


async def test_lowering_the_limit_refuses_new_calls_until_use_drops_under_it(
    node: NodeFactory,
) -> None:
    a, b = node(), node()
    for i in range(5):
        await (a if i % 2 else b).acquire(ALICE, f"c{i}", 10)
    assert await a.acquire(ALICE, "new", 3) == Rejected(
        reason=RejectReason.CHANNEL_LIMIT, in_use=5, limit=3
    )
    await a.release("c0")
    await b.release("c1")
    assert isinstance(await b.acquire(ALICE, "new", 3), Rejected)  # 3 in use, limit 3
    await a.release("c2")
    assert await b.acquire(ALICE, "new", 3) == Admitted(profile_id=ALICE, call_id="new", in_use=3)
    # Raising it admits at once.
    assert isinstance(await a.acquire(ALICE, "more", 4), Admitted)


# -- counts and contract -----------------------------------------------------------------


async def test_counts_list_the_live_profiles_of_every_node(node: NodeFactory) -> None:
    a, b = node(), node()
    assert await a.counts() == {}
    await a.acquire(ALICE, "a1", 5)
    await b.acquire(ALICE, "a2", 5)
    await b.acquire(BOB, "b1", 5)
    assert await a.counts() == {ALICE: 2, BOB: 1}
    await a.release("b1")
    # A profile back to zero disappears rather than lingering as a 0 entry.
    assert await b.counts() == {ALICE: 2}
    assert await b.in_use(BOB) == 0


async def test_counts_leave_out_lapsed_leases(node: NodeFactory) -> None:
    dying, survivor = node(SHORT_LEASE), node()
    await dying.acquire(BOB, "b1", 5)
    crash(dying)
    await survivor.acquire(ALICE, "a1", 5)

    async def only_alice() -> bool:
        return await survivor.counts() == {ALICE: 1}

    assert await eventually(only_alice, timeout=SHORT_LEASE + 2)


def test_leases_are_bounded() -> None:
    with pytest.raises(ValueError, match="lease_seconds"):
        RedisAdmission(REDIS_URL, lease_seconds=MAX_LEASE_SECONDS + 1)
    with pytest.raises(ValueError, match="lease_seconds"):
        RedisAdmission(REDIS_URL, lease_seconds=0)


async def test_an_empty_call_id_is_a_programming_error(node: NodeFactory) -> None:
    with pytest.raises(ValueError, match="call_id"):
        await node().acquire(ALICE, "", 5)


async def test_redis_admission_is_an_admission_controller(node: NodeFactory) -> None:
    controller: AdmissionController = node()  # checked by mypy
    assert isinstance(controller, AdmissionController)
    assert admission.RedisAdmission is RedisAdmission
    assert "RedisAdmission" in admission.__all__


async def test_scripts_are_loaded_again_after_redis_forgets_them(node: NodeFactory) -> None:
    """EVALSHA answers NOSCRIPT after a Redis restart or SCRIPT FLUSH; the
    controller falls back to EVAL (which loads the script) and carries on."""
    a = node()
    assert isinstance(await a.acquire(ALICE, "before", 5), Admitted)
    raw = aioredis.Redis.from_url(REDIS_URL)
    try:
        await raw.script_flush()
    finally:
        await raw.aclose()
    assert await a.acquire(ALICE, "after", 5) == Admitted(
        profile_id=ALICE, call_id="after", in_use=2
    )
    assert await a.release("before") is True
    assert await a.renew() == 0
    assert await a.counts() == {ALICE: 1}
