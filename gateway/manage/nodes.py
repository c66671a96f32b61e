"""The gateway nodes running now, as they announced themselves in the store
(:class:`gateway.store.models.GatewayNode`), and what the management front ends
ask them.

Why this exists: the addresses given to a PBX administrator (the profile
documents of the CLI, the REST API and the credentials e-mail) must be the
ones the running gateways advertise.  Another process reading the
configuration file can only guess: a wildcard listener, or the flags given
to ``sipgw serve``, are not in the file.  So each node writes where PBXs
reach it (its advertised SIP addresses and transports, :mod:`gateway.config.advertise`)
and where local tools reach its HTTP listener when it starts
(:class:`NodeAnnouncer`), refreshes the row while it runs, and removes it
when it stops; a row not refreshed for :data:`NODE_TTL` belongs to a node
that died without saying so, and is ignored.

The front ends also ask the live nodes what only they know, over their
``GET /healthz``: whether a profile being deleted still has calls up or
call records not yet written (:func:`wait_until_settled`), so that its calls
are charged before its credit goes back to the account.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from sqlalchemy import delete, select, update

from gateway.manage.errors import ProfileError
from gateway.manage.profiles import ProfileView, Settle
from gateway.store.database import Store
from gateway.store.models import GatewayNode, utcnow

__all__ = [
    "HEARTBEAT_INTERVAL",
    "NODE_TTL",
    "SETTLE_TIMEOUT",
    "GatewayQueryError",
    "NodeAnnouncer",
    "NodeView",
    "advertised",
    "announce",
    "calls_up",
    "live_nodes",
    "local_url",
    "new_node_id",
    "settle_deletion",
    "wait_until_settled",
    "withdraw",
]

logger = logging.getLogger(__name__)

#: How often a running node refreshes its row (seconds).
HEARTBEAT_INTERVAL = 5.0
#: A row older than this is a node gone without withdrawing it (killed, host
#: lost): four missed heartbeats, so a store busy for a few seconds does not
#: make a live node disappear from the profile documents.
NODE_TTL = 4 * HEARTBEAT_INTERVAL
#: How long one ``/healthz`` question may take while waiting for a profile's
#: calls to end.
HEALTHZ_TIMEOUT = 2.0
#: Pause between two rounds of questions while waiting.
SETTLE_POLL = 0.05
#: How long a deletion waits for the gateways to end a profile's calls and
#: write their records: a directory reload (at once with NOTIFY, else the
#: poll), the BYEs, and the record writer's batch interval, with room.
SETTLE_TIMEOUT = 10.0
#: Where a wildcard HTTP listener is reached from this host.
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class GatewayQueryError(ProfileError):
    """A running gateway could not be asked, or did not confirm in time
    that a profile's calls have ended and been charged.  A deletion stopped
    by it has given nothing back yet; asking again continues it."""

    exit_status = 1
    http_status = 503


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeView:
    node_id: str
    sip_addresses: tuple[str, ...]
    transports: tuple[str, ...]
    http_address: str | None
    started_at: datetime
    seen_at: datetime


def new_node_id() -> str:
    """This process's id among the nodes: readable (host and pid) and unique
    (a pid is reused after a restart, the random part is not)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def _view(row: GatewayNode) -> NodeView:
    return NodeView(
        node_id=row.node_id,
        sip_addresses=tuple(json.loads(row.sip_addresses)),
        transports=tuple(row.transports.split(",")) if row.transports else (),
        http_address=row.http_address,
        started_at=row.started_at,
        seen_at=row.seen_at,
    )


async def announce(store: Store, node: NodeView) -> None:
    """Write ``node``'s row, or refresh it (``seen_at`` now).  Not a
    directory change: running gateways need not reload for it."""
    values = {
        "sip_addresses": json.dumps(list(node.sip_addresses)),
        "transports": ",".join(node.transports),
        "http_address": node.http_address,
        "seen_at": utcnow(),
    }
    async with store.write(bump=False) as session:
        changed = await session.execute(
            update(GatewayNode)
            .where(GatewayNode.node_id == node.node_id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if not getattr(changed, "rowcount", 0):
            session.add(GatewayNode(node_id=node.node_id, started_at=node.started_at, **values))


async def withdraw(store: Store, node_id: str) -> None:
    """Remove a stopping node's row."""
    async with store.write(bump=False) as session:
        await session.execute(delete(GatewayNode).where(GatewayNode.node_id == node_id))


async def live_nodes(store: Store, *, now: datetime | None = None) -> list[NodeView]:
    """The nodes seen within :data:`NODE_TTL`, oldest first (the order the
    profile documents list their addresses in)."""
    cutoff = (utcnow() if now is None else now) - timedelta(seconds=NODE_TTL)
    async with store.read() as session:
        rows = await session.scalars(
            select(GatewayNode)
            .where(GatewayNode.seen_at >= cutoff)
            .order_by(GatewayNode.started_at, GatewayNode.node_id)
        )
        return [_view(row) for row in rows]


def advertised(nodes: Sequence[NodeView]) -> tuple[list[str], list[str]]:
    """The SIP addresses of ``nodes`` and the transports they serve, each
    once, in the nodes' order."""
    addresses: list[str] = []
    transports: list[str] = []
    for node in nodes:
        addresses += [a for a in node.sip_addresses if a not in addresses]
        transports += [t for t in node.transports if t not in transports]
    return addresses, transports


def local_url(http_address: str, path: str) -> str:
    """``http://HOST:PORT/path`` for a node's HTTP listener, a wildcard
    listener reached on the loopback address of its family."""
    host, _, port = http_address.rpartition(":")
    host = host.strip("[]")
    host = _LOOPBACK.get(host, host)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{path}"


class NodeAnnouncer:
    """Keeps this node's row in the store while the gateway runs: written at
    :meth:`start`, refreshed every :data:`HEARTBEAT_INTERVAL`, removed at
    :meth:`close`.  A store that fails a refresh is logged once and tried
    again at the next beat; the gateway itself goes on."""

    def __init__(self, store: Store, node: NodeView) -> None:
        self._store = store
        self.node = node
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def start(self) -> None:
        await announce(self._store, self.node)
        self._task = asyncio.create_task(self._beat())

    async def set_http_address(self, address: str) -> None:
        """The HTTP listener is bound (after the SIP side): tools may ask it."""
        self.node = replace(self.node, http_address=address)
        await self._refresh()

    async def _refresh(self) -> None:
        try:
            await announce(self._store, self.node)
        except Exception as exc:
            if not self._failing:
                logger.warning("cannot refresh this node's entry in the store: %s", exc)
            self._failing = True
        else:
            if self._failing:
                logger.info("this node's entry in the store is fresh again")
            self._failing = False

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            await self._refresh()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await withdraw(self._store, self.node.node_id)
        except Exception as exc:  # the row expires by itself
            logger.warning("cannot remove this node's entry from the store: %s", exc)


async def _ask(client: aiohttp.ClientSession, node: NodeView) -> dict[str, Any] | None:
    """A node's ``/healthz``; None when nothing listens there any more (the
    node stopped: it holds no calls)."""
    assert node.http_address is not None
    try:
        async with client.get(local_url(node.http_address, "/healthz")) as reply:
            reply.raise_for_status()
            health: dict[str, Any] = await reply.json()
            return health
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, ConnectionRefusedError):
            return None
        raise


async def calls_up(store: Store, *, account: str, profile: str) -> int:
    """How many calls the profile has up on the live nodes, from their
    ``/healthz`` (each node's own channels: in-memory admission).  A node
    whose listener refuses the connection has stopped: it holds none."""
    total = 0
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=HEALTHZ_TIMEOUT)
    ) as client:
        for node in await live_nodes(store):
            if node.http_address is None:
                continue
            try:
                health = await _ask(client, node)
                if health is not None:
                    total += int(health["channels"].get(account, {}).get(profile, 0))
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
                url = local_url(node.http_address, "/healthz")
                raise GatewayQueryError(
                    f"cannot ask the gateway at {url} how many calls are up: {exc or type(exc)}"
                ) from None
    return total


def _busy(health: dict[str, Any], profile_id: int, version: int) -> int | None:
    """How many calls and unwritten call records of the profile the node
    holds (None: it has not applied ``version`` yet)."""
    if int(health.get("directory_version", 0)) < version:
        return None
    return int(health.get("unsettled", {}).get(str(profile_id), 0))


async def wait_until_settled(
    store: Store, *, profile_id: int, profile: str, version: int, timeout: float
) -> None:
    """Return once every live node has applied directory ``version`` (the
    profile marked closing), has ended the profile's calls and has written
    their call records, charging them; :class:`GatewayQueryError` if that
    takes longer than ``timeout`` seconds or a node cannot be asked."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    waiting: list[str] = []
    problem = ""
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=HEALTHZ_TIMEOUT)
    ) as client:
        while True:
            waiting, problem = [], ""
            for node in await live_nodes(store):
                if node.http_address is None:
                    waiting.append(node.node_id)  # starting: it says where soon
                    continue
                try:
                    health = await _ask(client, node)
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    waiting.append(node.node_id)
                    problem = f"; {local_url(node.http_address, '/healthz')}: {exc or type(exc)}"
                    continue
                if health is not None and _busy(health, profile_id, version) != 0:
                    waiting.append(node.node_id)
            if not waiting or loop.time() >= deadline:
                break
            await asyncio.sleep(SETTLE_POLL)
    if waiting:
        raise GatewayQueryError(
            f"the calls of profile {profile!r} were not confirmed ended and charged within"
            f" {timeout:g} s by gateway node {', '.join(waiting)}{problem}: the profile takes"
            " no new calls; ask for the deletion again"
        )


def settle_deletion(store: Store, *, wake: Callable[[], None] | None = None) -> Settle:
    """The ``settle`` step of :func:`gateway.manage.profiles.delete_profile` for a
    front end: :func:`wait_until_settled` for the profile and version, at
    most :data:`SETTLE_TIMEOUT`; ``wake`` first (the REST API wakes its own
    node's directory watcher, so it applies the closing at once)."""

    async def settle(view: ProfileView, version: int) -> None:
        if wake is not None:
            wake()
        await wait_until_settled(
            store, profile_id=view.id, profile=view.name, version=version, timeout=SETTLE_TIMEOUT
        )

    return settle
