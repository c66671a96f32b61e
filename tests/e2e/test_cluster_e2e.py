"""Two gateway nodes, one cluster: the channel limit holds across both
(issue 4: several nodes share PostgreSQL and Redis).

Two ``sipgw serve`` processes share a PostgreSQL database (profiles) and a
Redis (admission, ``[admission] backend = "redis"``).  A burst of 1,000
long calls for one registration profile is split across both nodes by two
SIPp PBXs using the same credentials: exactly 300 calls are answered
cluster-wide, 700 refused with 503, and every channel is free afterwards:
in each node's /healthz and /metrics and in Redis itself.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.environment import missing
from tests.support.harness import (
    GatewayHome,
    LoopbackBlock,
    ServedGateway,
    free_port,
    random_loopback_block,
)
from tests.support.sipp import Sipp, SippLauncher
from tests.unit.test_store import postgres_url  # noqa: F401 - the fixture

pytestmark = pytest.mark.sipp

REDIS_URL = "redis://127.0.0.1:6379/0"
NUMBER = "+14155550123"
LIMIT = 300  # the default channel limit of a profile
PER_NODE = 500  # calls offered through each node, all at once
CALL_MS = 8_000  # long enough for every call of the burst to overlap
TIMEOUT = 90.0  # seconds, the most the burst may take


@dataclass
class ClusterHome(GatewayHome):
    """A :class:`GatewayHome` whose database is PostgreSQL."""

    url: str = ""

    @property
    def database_url(self) -> str:
        return self.url


def require_redis() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        missing(f"Redis is not reachable at {REDIS_URL}")
    finally:
        client.close()


def cleanup_redis(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(prefix + "*"):
        client.delete(key)
    client.close()


def redis_channels_held(prefix: str) -> dict[str, int]:
    """Channels still held in Redis under ``prefix``, read at the source
    (the key layout of ``admission/redis.py``): per profile set
    ``<prefix>p:<id>``, its members whose lease (score, Redis server
    milliseconds) has not passed; and every live ``<prefix>c:<call_id>``.
    Only non-zero entries; empty when nothing is held."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        seconds, micros = client.time()
        now_ms = seconds * 1000 + micros // 1000
        held: dict[str, int] = {}
        for raw in client.scan_iter(prefix + "p:*"):
            live = int(client.zcount(raw, f"({now_ms}", "+inf"))
            if live:
                held[raw.decode()] = live
        calls = [raw for raw in client.scan_iter(prefix + "c:*") if client.exists(raw)]
        if calls:
            held[prefix + "c:*"] = len(calls)
        return held
    finally:
        client.close()


def assert_redis_holds_no_channel(prefix: str) -> None:
    held = redis_channels_held(prefix)
    assert not held, f"channels still held in Redis: {held}"


LEASE = 3.0  # seconds: a dead node's channels must be back within this


@dataclass
class Cluster:
    """Two nodes on one database and one Redis, a registration profile and
    the carrier's address."""

    net: LoopbackBlock
    account: str
    name: str  # the profile's name
    profile: dict[str, str]
    nodes: list[ServedGateway] = field(default_factory=list)

    def channels(self, node: ServedGateway) -> int:
        """Channels in use as ``node`` reports them (cluster-wide: from Redis)."""
        return int(node.healthz()["channels"][self.account][self.name])

    def pbx(self, index: int, node: ServedGateway, calls: int, duration_ms: int) -> Sipp:
        """A PBX of the profile offering ``calls`` at once through ``node``."""
        host, port = node.sip
        return Sipp(
            scenario="pbx_uac_auth.xml",
            local_ip=self.net.pbx(index),
            remote=node.sip,
            service=NUMBER,
            calls=calls,
            rate=calls,
            rate_period_ms=1000,
            limit=calls,
            duration_ms=duration_ms,
            auth_user=self.profile["sip_username"],
            auth_password=self.profile["password"],
            auth_uri=f"{NUMBER}@{host}:{port}",
            timeout=TIMEOUT,
        )


@contextlib.contextmanager
def cluster(
    tmp_path: Path, database_url: str, sipp: SippLauncher, *, lease: float
) -> Iterator[Cluster]:
    """Two ``sipgw serve`` nodes sharing ``database_url`` and Redis (leases
    of ``lease`` seconds), with a SIPp carrier answering; all stopped and
    the Redis keys removed afterwards.  After a passing test the nodes
    still running must be idle and Redis must hold no channel."""
    require_redis()
    home = ClusterHome(tmp_path / "home", url=database_url)
    home.directory.mkdir()
    prefix = f"sipgw-cluster-{uuid.uuid4().hex[:12]}:"
    try:
        # The PostgreSQL database lives for the whole session: names of our own.
        account, name = f"acme-{uuid.uuid4().hex[:8]}", f"load-{uuid.uuid4().hex[:8]}"
        home.cli(
            "account", "create", "--name", account, "--email", "ops@acme.example",
            "--balance", "1000",
        )  # fmt: skip
        profile = home.cli_json(
            "profile", "create", "--account", account, "--name", name, "--auth", "registration"
        )
        home.open_for_calls(account, [name])
        net = random_loopback_block()
        carrier_port = free_port(net.carrier)
        # The bursts here are a second or more of work for a node, which
        # its overload control would rightly shed part of (503 with
        # Retry-After, test_overload_e2e.py): these tests are about what
        # admission decides, so every INVITE must reach it.
        admission = (
            "overload_control = false\n"
            f'[admission]\nbackend = "redis"\nredis_url = "{REDIS_URL}"\n'
            f'key_prefix = "{prefix}"\nlease_seconds = {lease}'
        )
        built = Cluster(net, account, name, profile)
        for host in (net.gateway, net.host(11)):
            built.nodes.append(
                home.serve(
                    host=host,
                    carrier=(net.carrier, carrier_port),
                    carrier_sources=[net.carrier],
                    sip_config=admission,
                )
            )
        sipp.start(
            Sipp(
                scenario="carrier_uas.xml",
                local_ip=net.carrier,
                local_port=carrier_port,
                timeout=TIMEOUT,
            )
        )
        yield built
        # The test passed: every node still running must be idle (/healthz,
        # /metrics), and Redis itself must hold no channel, before cleanup.
        home.stop()
        assert_redis_holds_no_channel(prefix)
    finally:
        home.stop(check_idle=False)  # after a failure: its own error says enough
        cleanup_redis(prefix)


def test_a_burst_split_across_two_nodes_admits_exactly_the_limit(
    tmp_path: Path,
    postgres_url: str,  # noqa: F811 - the imported fixture
    sipp: SippLauncher,
) -> None:
    with cluster(tmp_path, postgres_url, sipp, lease=30.0) as c:
        pbxs = [
            sipp.start(c.pbx(index, node, PER_NODE, CALL_MS), wait_bound=False)
            for index, node in enumerate(c.nodes, start=1)
        ]
        peak = 0
        deadline = time.monotonic() + TIMEOUT
        while any(p.running() for p in pbxs) and time.monotonic() < deadline:
            # Each node reports the cluster-wide count (read from Redis).
            seen = [c.channels(node) for node in c.nodes]
            assert seen[0] <= LIMIT and seen[1] <= LIMIT, seen
            peak = max(peak, *seen)
            time.sleep(0.1)
        results = [p.wait() for p in pbxs]
        answered = sum(r.counter("answered") for r in results)
        refused = sum(r.counter("refused") for r in results)
        assert (answered, refused) == (LIMIT, 2 * PER_NODE - LIMIT), [r.explain() for r in results]
        assert all(r.counter("answered") > 0 for r in results), "both nodes admitted calls"
        assert peak == LIMIT
        deadline = time.monotonic() + 10
        while any(c.channels(node) for node in c.nodes):
            assert time.monotonic() < deadline, [node.healthz() for node in c.nodes]
            time.sleep(0.1)


def test_a_killed_node_gives_its_channels_back_within_the_lease(
    tmp_path: Path,
    postgres_url: str,  # noqa: F811 - the imported fixture
    sipp: SippLauncher,
) -> None:
    """``kill -9`` of a node with 300 calls up: its leases are no longer
    renewed, the channels come back within the lease time, and the other
    node admits up to the limit again."""
    with cluster(tmp_path, postgres_url, sipp, lease=LEASE) as c:
        doomed, survivor = c.nodes
        first = sipp.start(c.pbx(1, doomed, LIMIT, 60_000), wait_bound=False)
        deadline = time.monotonic() + 30
        while c.channels(survivor) < LIMIT:
            assert time.monotonic() < deadline, survivor.healthz()
            time.sleep(0.1)
        doomed.process.kill()  # kill -9: no release, no goodbye
        doomed.process.wait(10)
        killed_at = time.monotonic()
        while c.channels(survivor):
            assert time.monotonic() - killed_at < LEASE + 2, survivor.healthz()
            time.sleep(0.1)
        first.kill()
        second = sipp.start(c.pbx(2, survivor, LIMIT, 1_000), wait_bound=False).wait()
        assert (second.counter("answered"), second.counter("refused")) == (LIMIT, 0), (
            second.explain()
        )
