"""Wiring: the gateway built from settings, as one aiohttp application.

:class:`SIPService` is the thin asyncio layer between the transports and
the sans-I/O core, in the aioquic style: a message comes in, goes through
validation, the transaction layer and the call router, the resulting
actions go out, and the one timer that serves every transaction is re-armed
with ``call_at``.  It is also the router's :class:`gateway.proxy.router.CallIO`.

:func:`create_app` builds the aiohttp application; the store, the profile
directory, the admission controller, the registrar and the SIP listeners
are resources of its ``cleanup_ctx`` (the aiohttp-demos style), started in
order and closed in reverse.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from admission import AdmissionController, MemoryAdmission, RedisAdmission
from gateway import __version__
from gateway.billing.cdr import CallRecordEntry, CallRecordWriter
from gateway.billing.credit import CreditMeter
from gateway.cluster.credit_share import CreditExchange
from gateway.config.advertise import advertised_address, gateway_addresses, needs_advertise
from gateway.config.settings import GatewaySettings, SIPServerSettings
from gateway.manage.mailer import SMTPMailer
from gateway.manage.nodes import TRANSPORTS, NodeAnnouncer, NodeView, new_node_id
from gateway.proxy.directory import Directory, load_directory, watch_directory
from gateway.proxy.registrar import LocationService, RegistrarPolicy
from gateway.proxy.router import CallRouter, CarrierSettings, Hop
from gateway.store.database import Store, open_store
from gateway.store.models import utcnow
from gateway.store.notify import listen_for_changes
from gateway.web.metrics import Metrics
from sip.digest import DigestRealm
from sip.errors import ParseError
from sip.message import Message, Request, Response, build_response
from sip.transaction import ClientTransaction, TransactionLayer
from sip.transport import Source, TransportLayer, stateless_tag

__all__ = ["NODE", "SETTINGS", "SIP_SERVICE", "SIP_TRANSPORT", "SIPService", "create_app"]

logger = logging.getLogger(__name__)

# How often expired registrations are swept (RFC 3261 §10.3: a binding
# lapses at its expiry; a second of lateness is invisible to a PBX).
REGISTRAR_SWEEP_INTERVAL = 1.0
DIGEST_ALGORITHMS = ("MD5", "SHA-256")


class SIPService:
    """The transport's message handler and the router's I/O port."""

    def __init__(
        self, transport: TransportLayer, layer: TransactionLayer, metrics: Metrics | None = None
    ) -> None:
        self.transport = transport
        self.layer = layer
        self.metrics = metrics
        self.router: CallRouter | None = None
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- from the transport -----------------------------------------------
    def on_message(self, message: Message, source: Source) -> None:
        try:
            message.validate()
        except ParseError as error:
            # RFC 3261 §8.2 / h11 habit: the error carries its answer.  A
            # response or an ACK is never answered (RFC 3261 §17).
            if isinstance(message, Request) and message.method != "ACK":
                response = build_response(
                    message, error.status, error.reason, to_tag=stateless_tag(message)
                )
                self.send_response(response, source)
            return
        if self.metrics is not None and isinstance(message, Request):
            self.metrics.request_received(message.method)
        router = self.router
        if router is None:
            return
        router.on_message(message, source, reliable=source.transport == "TCP")
        self._rearm()

    # -- CallIO -----------------------------------------------------------------
    def now(self) -> float:
        return self._loop.time()

    def send_response(self, response: Response, source: object) -> None:
        if self.metrics is not None:
            self.metrics.response_sent(response.status)
        self.transport.send_response(response, source if isinstance(source, Source) else None)

    def send_request(
        self, message: Message, hop: Hop, transaction: ClientTransaction | None
    ) -> None:
        self.spawn(self._send(message, hop, transaction))

    async def _send(
        self, message: Message, hop: Hop, transaction: ClientTransaction | None
    ) -> None:
        try:
            await self.transport.send(message, hop.transport, hop.host, hop.port)
        except OSError as error:
            logger.debug("cannot send to %s: %s", hop, error)
            if transaction is not None and self.router is not None:
                self.router.run(self.layer.transport_error(transaction, self.now()))

    def call_at(self, when: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        def fire() -> None:
            try:
                callback()
            except Exception:
                logger.exception("timer callback failed")
            self._rearm()

        return self._loop.call_at(when, fire)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("SIP task failed", exc_info=task.exception())
        self._rearm()

    # -- the transaction timer --------------------------------------------
    def _rearm(self) -> None:
        deadline = self.layer.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = None if deadline is None else self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.router is not None:
            self.router.run(self.layer.timers(self.now()))
        self._rearm()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------------------
# The aiohttp application

SETTINGS = web.AppKey("settings", GatewaySettings)
STORE = web.AppKey("store", Store)
SIP_TRANSPORT = web.AppKey("sip_transport", TransportLayer)
SIP_SERVICE = web.AppKey("sip_service", SIPService)
ROUTER = web.AppKey("router", CallRouter)
ADMISSION = web.AppKey("admission", AdmissionController)
METRICS = web.AppKey("metrics", Metrics)
#: Set it after a change to profiles, numbers, credit or rates: the
#: directory is reloaded at once instead of at the next poll.
DIRECTORY_REFRESH = web.AppKey("directory_refresh", asyncio.Event)
CALL_RECORDS = web.AppKey("call_records", CallRecordWriter)
#: This node's entry among the running gateways (:mod:`gateway.manage.nodes`).
NODE = web.AppKey("node", NodeAnnouncer)
#: Seconds the BYEs of calls ended at shutdown get to leave.
SHUTDOWN_GRACE = 0.2
#: Seconds a stopping gateway keeps trying to write its call records before
#: it spools the rest to ``store.record_spool``.
RECORD_FLUSH_TIMEOUT = 5.0


def _advertised(sip: SIPServerSettings, transport: TransportLayer) -> tuple[str, int]:
    """The address we put in Via and Record-Route (:mod:`gateway.config.advertise`):
    ``sip.advertise``, else the first listener with a concrete host, else a
    guess, which the operator is warned about."""
    listeners = transport.listeners
    address = advertised_address(sip, listeners)
    if needs_advertise(sip, listeners):
        logger.warning(
            "every SIP listener is a wildcard address: Via and Record-Route will carry %s,"
            " which PBXs and the carrier may not reach; set sip.advertise to the address"
            " they reach this gateway at",
            address,
        )
    return address.host, address.port


def _admission(settings: GatewaySettings) -> AdmissionController:
    """The configured admission backend: this process alone (memory) or
    every node sharing one Redis."""
    config = settings.admission
    if config.backend == "redis":
        return RedisAdmission(
            config.redis_url, prefix=config.key_prefix, lease_seconds=config.lease_seconds
        )
    return MemoryAdmission()


def _carrier(settings: GatewaySettings) -> CarrierSettings:
    carrier = settings.carrier
    return CarrierSettings(
        carrier.uri,
        carrier.transport.upper(),
        tuple((host.lower(), port) for host, port in carrier.trusted_sources),
    )


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the database (migrated to the current schema)."""
    store = await open_store(app[SETTINGS])
    app[STORE] = store
    yield
    await store.close()


async def sip_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: directory, admission, registrar, transactions, listeners.

    A bind failure (address in use) fails the start-up with the
    :class:`OSError` from :meth:`TransportLayer.listen`; listeners already
    bound are closed first.
    """
    settings = app[SETTINGS]
    sip = settings.sip
    store = app[STORE]
    directory: Directory = await load_directory(store)
    transport = TransportLayer(settings=sip.core, max_connections=sip.max_tcp_connections)
    layer = TransactionLayer(sip.core)
    registrar = LocationService(
        RegistrarPolicy(
            min_expires=settings.registrar.min_expires,
            max_expires=settings.registrar.max_expires,
            default_expires=settings.registrar.default_expires,
            max_bindings=settings.registrar.max_bindings,
        )
    )
    # Read at scrape time: the router's current directory, live registrations.
    metrics = Metrics(lambda: router.directory, lambda: registrar.counts(service.now()))
    service = SIPService(transport, layer, metrics)

    try:
        for address in sip.listen:
            await transport.listen(address.host, address.port)
    except BaseException:
        await transport.close()
        raise
    admission = _admission(settings)
    meter = CreditMeter()

    def committed(entries: list[CallRecordEntry], version: int) -> None:
        for entry in entries:
            meter.committed(entry.record_key, version)

    records = CallRecordWriter(store, spool_path=settings.store.record_spool, on_commit=committed)
    await records.load_spool()
    router = CallRouter(
        layer=layer,
        io=service,
        directory=directory,
        admission=admission,
        registrar=registrar,
        # MD5 offered first: many PBXs (and SIPp) answer only the first
        # challenge; RFC 8760 §2.4 orders by preference with a SHOULD, and
        # reaching every PBX is the preference of a trunk.
        digest=DigestRealm(sip.realm, secrets.token_bytes(32), algorithms=DIGEST_ALGORITHMS),
        carrier=_carrier(settings),
        own_addresses=[(listener.host, listener.port) for listener in transport.listeners],
        advertised=_advertised(sip, transport),
        observer=metrics,
        max_call_duration=settings.calls.max_call_duration,
        min_session_expires=settings.calls.min_session_expires,
        meter=meter,
        records=records,
    )
    service.router = router
    transport.handler = service
    router.apply_directory(directory)  # the credit meter's first snapshot

    def apply(new: Directory) -> None:
        router.apply_directory(new)
        metrics.profiles_changed(new.profiles())

    async def sweep_registrations() -> None:
        while True:
            await asyncio.sleep(REGISTRAR_SWEEP_INTERVAL)
            registrar.expire(service.now())

    refresh = asyncio.Event()
    background = [
        asyncio.create_task(
            watch_directory(
                store,
                apply,
                settings.store.directory_poll_interval,
                current=directory.version,
                wake=refresh,
            )
        ),
        asyncio.create_task(sweep_registrations()),
        asyncio.create_task(records.run()),
    ]
    if store.dialect == "postgresql":
        # Other nodes' and the CLI's changes arrive at once (LISTEN/NOTIFY).
        background.append(asyncio.create_task(listen_for_changes(store.url, refresh)))
    exchange: CreditExchange | None = None
    if settings.admission.backend == "redis":
        # Several nodes: each also counts what the profile's calls on the
        # others spend (gateway.cluster.credit_share), in the admission's Redis.
        exchange = CreditExchange(
            settings.admission.redis_url, router, prefix=settings.admission.key_prefix
        )
        exchange.start()
    app[SIP_TRANSPORT] = transport
    app[SIP_SERVICE] = service
    app[ROUTER] = router
    app[ADMISSION] = admission
    app[METRICS] = metrics
    app[DIRECTORY_REFRESH] = refresh
    app[CALL_RECORDS] = records
    # Where PBXs reach this node, for every profile document given out
    # (CLI, API, e-mail), now that the listeners are bound.
    http = settings.http.listen
    node = NodeAnnouncer(
        store,
        NodeView(
            node_id=new_node_id(),
            sip_addresses=tuple(gateway_addresses(sip, transport.listeners)),
            transports=TRANSPORTS,
            http_address=None if http.port == 0 else str(http),
            started_at=utcnow(),
            seen_at=utcnow(),
        ),
    )
    await node.start()
    app[NODE] = node
    yield
    await node.close()  # first: no more profile documents name this node
    ended = router.end_all_calls()
    if ended:
        # Let the BYEs (and CANCELs) leave before the sockets close.
        logger.info("%d calls ended at shutdown", ended)
        await asyncio.sleep(SHUTDOWN_GRACE)
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    await records.close(RECORD_FLUSH_TIMEOUT)
    if exchange is not None:
        # After the records: the ended calls' costs are in the database.
        await exchange.close()
    await transport.close()
    await service.close()
    await admission.close()
    logger.info("SIP listeners closed")


async def healthz(request: web.Request) -> web.Response:
    """Liveness for load balancers and operators: SIP addresses, channels
    in use per profile (``{account: {profile: n}}``), live calls and
    registrations."""
    app = request.app
    router = app[ROUTER]
    admission = app[ADMISSION]
    counts = await admission.counts()
    channels: dict[str, dict[str, int]] = {}
    for entry in router.directory.profiles():
        channels.setdefault(entry.account, {})[entry.name] = counts.get(entry.id, 0)
    return web.json_response(
        {
            "status": "ok",
            "version": __version__,
            "sip_listen": [str(listener) for listener in app[SIP_TRANSPORT].listeners],
            "channels": channels,
            "calls": len(router.calls),
            "transactions": len(router.layer),
            "tracked": router.tracked,
            "registrations": sum(router.registrar.counts(app[SIP_SERVICE].now()).values()),
            "call_records_pending": app[CALL_RECORDS].pending,
            "directory_version": router.directory.version,
            "node": app[NODE].node.node_id,
            # Per profile id: calls up here and their records not yet
            # written (a profile being deleted waits for 0 everywhere).
            "unsettled": {str(k): n for k, n in _unsettled(router, app[CALL_RECORDS]).items()},
        }
    )


def _unsettled(router: CallRouter, records: CallRecordWriter) -> dict[int, int]:
    busy = records.pending_by_profile()
    for call in router.calls.values():
        busy[call.profile.id] += 1
    return dict(busy)


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus scrape: channel counts are read first (the admission
    controller may be remote), then every metric is rendered."""
    app = request.app
    metrics = app[METRICS]
    metrics.channel_counts = await app[ADMISSION].counts()
    return web.Response(
        body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def create_app(settings: GatewaySettings) -> web.Application:
    """The gateway as one aiohttp application (SIP listeners included)."""
    app = web.Application()
    app[SETTINGS] = settings
    app.cleanup_ctx.append(store_ctx)
    app.cleanup_ctx.append(sip_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)
    # Imported here: gateway.web.api.routes imports this module's application keys.
    from gateway.web.api.routes import mount_api  # noqa: PLC0415

    mount_api(app, mailer=SMTPMailer(settings.smtp))  # disabled when smtp.host is empty
    return app
