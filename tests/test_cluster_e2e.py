"""Two gateway nodes, one cluster: the channel limit holds across both
(issue 4: several nodes share PostgreSQL and Redis).

Two ``sipgw serve`` processes share a PostgreSQL database (profiles) and a
Redis (admission, ``[admission] backend = "redis"``).  A burst of 1,000
long calls for one registration profile is split across both nodes by two
SIPp PBXs using the same credentials: exactly 300 calls are answered
cluster-wide, 700 refused with 503, and every channel is free afterwards.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import GatewayHome, free_port, random_loopback_block
from tests.sipp import Sipp, SippLauncher
from tests.test_store import postgres_url  # noqa: F401 - the fixture

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
        message = f"Redis is not reachable at {REDIS_URL}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    finally:
        client.close()


def cleanup_redis(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(prefix + "*"):
        client.delete(key)
    client.close()


def test_a_burst_split_across_two_nodes_admits_exactly_the_limit(
    tmp_path: Path,
    postgres_url: str,  # noqa: F811 - the imported fixture
    sipp: SippLauncher,
) -> None:
    require_redis()
    home = ClusterHome(tmp_path / "home", url=postgres_url)
    home.directory.mkdir()
    prefix = f"sipgw-cluster-{uuid.uuid4().hex[:12]}:"
    try:
        # The PostgreSQL database lives for the whole session: names of our own.
        account, name = f"acme-{uuid.uuid4().hex[:8]}", f"load-{uuid.uuid4().hex[:8]}"
        home.cli("account", "create", "--name", account, "--email", "ops@acme.example")
        profile = home.cli_json(
            "profile", "create", "--account", account, "--name", name, "--auth", "registration"
        )
        net = random_loopback_block()
        carrier_port = free_port(net.carrier)
        admission = (
            f'[admission]\nbackend = "redis"\nredis_url = "{REDIS_URL}"\n'
            f'key_prefix = "{prefix}"\nlease_seconds = 30.0'
        )
        nodes = [
            home.serve(
                host=host,
                carrier=(net.carrier, carrier_port),
                carrier_sources=[net.carrier],
                sip_config=admission,
            )
            for host in (net.gateway, net.host(11))
        ]
        carrier = sipp.start(
            Sipp(
                scenario="carrier_uas.xml",
                local_ip=net.carrier,
                local_port=carrier_port,
                timeout=TIMEOUT,
            )
        )
        pbxs = []
        for index, node in enumerate(nodes, start=1):
            host, port = node.sip
            pbxs.append(
                sipp.start(
                    Sipp(
                        scenario="pbx_uac_auth.xml",
                        local_ip=net.pbx(index),
                        remote=node.sip,
                        service=NUMBER,
                        calls=PER_NODE,
                        rate=PER_NODE,
                        rate_period_ms=1000,
                        limit=PER_NODE,
                        duration_ms=CALL_MS,
                        auth_user=profile["sip_username"],
                        auth_password=profile["password"],
                        auth_uri=f"{NUMBER}@{host}:{port}",
                        timeout=TIMEOUT,
                    ),
                    wait_bound=False,
                )
            )
        peak = 0
        deadline = time.monotonic() + TIMEOUT
        while any(p.running() for p in pbxs) and time.monotonic() < deadline:
            # Each node reports the cluster-wide count (read from Redis).
            seen = [node.healthz()["channels"][name] for node in nodes]
            assert seen[0] <= LIMIT and seen[1] <= LIMIT, seen
            peak = max(peak, *seen)
            time.sleep(0.1)
        results = [p.wait() for p in pbxs]
        answered = sum(r.counter("answered") for r in results)
        refused = sum(r.counter("refused") for r in results)
        assert (answered, refused) == (LIMIT, 2 * PER_NODE - LIMIT), [r.explain() for r in results]
        assert all(r.counter("answered") > 0 for r in results), "both nodes admitted calls"
        assert peak == LIMIT
        carrier.stop()
        deadline = time.monotonic() + 10
        while any(node.healthz()["channels"][name] for node in nodes):
            assert time.monotonic() < deadline, [node.healthz() for node in nodes]
            time.sleep(0.1)
    finally:
        home.stop()
        cleanup_redis(prefix)


LEASE = 3.0  # seconds: a dead node's channels must be back within this


def test_a_killed_node_gives_its_channels_back_within_the_lease(
    tmp_path: Path,
    postgres_url: str,  # noqa: F811 - the imported fixture
    sipp: SippLauncher,
) -> None:
    """``kill -9`` of a node with 300 calls up: its leases are no longer
    renewed, the channels come back within the lease time, and the other
    node admits up to the limit again."""
    require_redis()
    home = ClusterHome(tmp_path / "home", url=postgres_url)
    home.directory.mkdir()
    prefix = f"sipgw-cluster-{uuid.uuid4().hex[:12]}:"
    try:
        # The PostgreSQL database lives for the whole session: names of our own.
        account, name = f"acme-{uuid.uuid4().hex[:8]}", f"load-{uuid.uuid4().hex[:8]}"
        home.cli("account", "create", "--name", account, "--email", "ops@acme.example")
        profile = home.cli_json(
            "profile", "create", "--account", account, "--name", name, "--auth", "registration"
        )
        net = random_loopback_block()
        carrier_port = free_port(net.carrier)
        admission = (
            f'[admission]\nbackend = "redis"\nredis_url = "{REDIS_URL}"\n'
            f'key_prefix = "{prefix}"\nlease_seconds = {LEASE}'
        )
        doomed, survivor = (
            home.serve(
                host=host,
                carrier=(net.carrier, carrier_port),
                carrier_sources=[net.carrier],
                sip_config=admission,
            )
            for host in (net.gateway, net.host(11))
        )
        sipp.start(
            Sipp(scenario="carrier_uas.xml", local_ip=net.carrier, local_port=carrier_port,
                 timeout=TIMEOUT)
        )  # fmt: skip

        def pbx(index: int, node_sip: tuple[str, int], duration_ms: int) -> Sipp:
            host, port = node_sip
            return Sipp(
                scenario="pbx_uac_auth.xml",
                local_ip=net.pbx(index),
                remote=node_sip,
                service=NUMBER,
                calls=LIMIT,
                rate=LIMIT,
                rate_period_ms=1000,
                limit=LIMIT,
                duration_ms=duration_ms,
                auth_user=profile["sip_username"],
                auth_password=profile["password"],
                auth_uri=f"{NUMBER}@{host}:{port}",
                timeout=TIMEOUT,
            )

        first = sipp.start(pbx(1, doomed.sip, 60_000), wait_bound=False)
        deadline = time.monotonic() + 30
        while survivor.healthz()["channels"][name] < LIMIT:
            assert time.monotonic() < deadline, survivor.healthz()
            time.sleep(0.1)
        doomed.process.kill()  # kill -9: no release, no goodbye
        doomed.process.wait(10)
        killed_at = time.monotonic()
        while survivor.healthz()["channels"][name]:
            assert time.monotonic() - killed_at < LEASE + 2, survivor.healthz()
            time.sleep(0.1)
        first.kill()
        second = sipp.start(pbx(2, survivor.sip, 1_000), wait_bound=False).wait()
        assert (second.counter("answered"), second.counter("refused")) == (LIMIT, 0), (
            second.explain()
        )
    finally:
        home.stop()
        cleanup_redis(prefix)
