"""Credit shared across the nodes of a cluster (gateway/cluster/credit_share.py),
against two served gateways.

Two ``sipgw serve`` nodes share a PostgreSQL database and a Redis
(``[admission] backend = "redis"``).  One IP profile has credit for 6 s of
one call at its rate; its PBX places one call through each node at about
the same time.  Each node counts the other's call, so both calls are ended
by the gateways (BYE to both sides, ``credit_exhausted``) after about a
third of that, and what the two records cost together stays within the
credit, give or take what a call spends while the other node has not heard
of it yet.  Metering per node only, each call would run the whole 6 s and
the profile would be charged twice its credit.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.cluster.credit_share import DEFAULT_INTERVAL
from gateway.manage import profiles, rates
from gateway.manage.history import call_history
from gateway.store.database import Store
from sip.message import Message, Request
from tests.e2e.test_cluster_e2e import REDIS_URL, ClusterHome, cleanup_redis, require_redis
from tests.support.harness import free_port, random_loopback_block
from tests.support.peers import NUMBER, TIMERS, Peer, Setup, answer, answered_call, scrape
from tests.unit.test_store import postgres_url  # noqa: F401 - the fixture

PRICE = Decimal("6.0000")  # per minute: 0.10 per started second
CREDIT = Decimal("0.6000")  # one call's 6 seconds
SECOND = PRICE / 60
#: What a call may spend before the other node hears of it: two rounds of
#: the exchange at both calls' price (module docstring of credit_share).
STALENESS = Decimal(str(2 * DEFAULT_INTERVAL)) * 2 * SECOND
WAIT = 30.0  # seconds for the gateways to end both calls, at most


@pytest.fixture
def home(tmp_path: Path, postgres_url: str) -> Iterator[ClusterHome]:  # noqa: F811
    built = ClusterHome(tmp_path / "home", url=postgres_url)
    built.directory.mkdir()
    try:
        yield built
    finally:
        built.stop(check_idle=False)  # a passing test checked it already


def test_two_nodes_share_a_profiles_credit(home: ClusterHome) -> None:
    require_redis()
    net = random_loopback_block()
    pbx = Peer(net.pbx(1), free_port(net.pbx(1)))
    carrier = Peer(net.carrier, free_port(net.carrier))
    # The session's database is shared: an account of our own, and a rate
    # for the number called (longest prefix wins) that goes afterwards.
    account = f"acme-{uuid.uuid4().hex[:8]}"
    prefix = f"sipgw-credit-{uuid.uuid4().hex[:12]}:"
    destination = NUMBER.removeprefix("+")

    async def build(store: Store) -> None:
        await profiles.create_account(store, name=account, email="ops@acme.example", balance="10")
        await profiles.create_profile(
            store, account=account, name="pbx", auth="ip", ip=pbx.host, port=pbx.port
        )
        await rates.set_rate(store, destination, PRICE)
        await profiles.allocate_credit(store, "pbx", CREDIT, account=account)

    async def remove_rate(store: Store) -> None:
        await rates.delete_rate(store, destination)

    try:
        home.with_store(build)
        admission = (
            f'[admission]\nbackend = "redis"\nredis_url = "{REDIS_URL}"\n'
            f'key_prefix = "{prefix}"\nlease_seconds = 30.0'
        )
        nodes = [
            home.serve(
                host=host,
                carrier=(carrier.host, carrier.port),
                carrier_sources=[carrier.host],
                sip_config=f"{TIMERS}\n{admission}",
            )
            for host in (net.gateway, net.host(11))
        ]
        setups = [Setup(node, node.sip, pbx, carrier) for node in nodes]
        # One call through each node, answered one right after the other.
        through = {f"share-{index}-{uuid.uuid4().hex[:6]}": s for index, s in enumerate(setups)}
        for call_id, setup in through.items():
            answered_call(setup, call_id)
        # Each gateway ends its call: BYE to the PBX and to the carrier.
        byes: dict[tuple[str, str], Request] = {}

        def new_bye(side: str) -> Callable[[Message], bool]:
            """A BYE of a call not seen on this side yet (not a retransmission)."""
            return lambda m: (
                isinstance(m, Request) and m.method == "BYE" and (side, m.call_id) not in byes
            )

        for side, peer in (("pbx", pbx), ("carrier", carrier)):
            for _ in through:
                bye = peer.expect(new_bye(side), timeout=WAIT)
                assert isinstance(bye, Request)
                peer.send(answer(bye, 200), through[bye.call_id].sip)
                byes[side, bye.call_id] = bye
        for bye in byes.values():
            assert 'text="Credit exhausted"' in (bye.headers.get("reason") or ""), bye
        for setup in setups:
            releases = {
                dict(labels)["reason"]: value
                for (name, labels), value in scrape(setup).items()
                if name == "sipgw_channel_releases_total" and dict(labels)["account"] == account
            }
            assert releases == {"credit_exhausted": 1}, setup.gateway.log()

        # The records, and the debits made with them.
        async def records(store: Store) -> tuple[list[Decimal], Decimal]:
            page = await call_history(store, "pbx", account=account)
            view = await profiles.get_profile(store, "pbx", account=account, reveal=False)
            return [item.cost for item in page.items if item.call_id in through], view.credit

        deadline = time.monotonic() + WAIT
        while len((found := home.with_store(records))[0]) < len(through):
            assert time.monotonic() < deadline, f"records: {found}"
            time.sleep(0.2)
        costs, credit_left = found
        spent = sum(costs, Decimal(0))
        # Both calls charged, each well short of the 6 s one call alone
        # could have had: each node counted the other's call.
        assert all(SECOND <= cost <= CREDIT * 3 / 4 for cost in costs), costs
        assert spent <= CREDIT + STALENESS, (costs, [n.log() for n in nodes])
        # Nothing was clamped: the profile holds the credit minus the costs.
        assert credit_left >= 0
        assert credit_left == CREDIT - spent
        home.stop()  # every node idle
    finally:
        pbx.close()
        carrier.close()
        home.stop(check_idle=False)
        cleanup_redis(prefix)
        home.with_store(remove_rate)
