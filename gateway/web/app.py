"""Wiring: the gateway built from settings, as one aiohttp application.

:func:`create_app` builds the aiohttp application.  Each resource is one
``cleanup_ctx`` (the aiohttp-demos style), started in this order and closed
in reverse: the store, the admission controller, the SIP service
(:class:`gateway.proxy.service.SIPService`: transactions and their timer),
the SIP listeners, the call path (directory snapshot, registrar, credit
meter, call-record writer, router), the credit exchange between nodes, the
call-record writer's work, the registrations' expiry timer, the directory
watch, the calls, and this node's entry among the running gateways.  So a
stopping gateway first stops naming itself, then ends its calls, stops its
background work, writes its call records, and closes the exchange, the
listeners, the service and the admission controller, in that order.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator

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
from gateway.manage.nodes import NodeAnnouncer, NodeView, new_node_id
from gateway.manage.profiles import DIGEST_ALGORITHMS, GATEWAY_TRANSPORTS
from gateway.proxy.directory import Directory
from gateway.proxy.registrar import LocationService, RegistrarPolicy
from gateway.proxy.router import CallRouter
from gateway.proxy.service import RegistrationExpiry, SIPService
from gateway.store.database import open_store
from gateway.store.models import utcnow
from gateway.store.notify import listen_for_changes
from gateway.web.api.routes import mount_api
from gateway.web.directory import load_directory, watch_directory
from gateway.web.keys import (
    ADMISSION,
    CALL_RECORDS,
    DIRECTORY_REFRESH,
    METRICS,
    NODE,
    ROUTER,
    SETTINGS,
    SIP_TRANSPORT,
    STORE,
)
from gateway.web.metrics import Metrics
from sip.digest import DigestRealm
from sip.overload import OverloadControl
from sip.transaction import TransactionLayer
from sip.transport import TransportLayer

__all__ = ["SIP_SERVICE", "create_app"]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# The aiohttp application (its other keys: gateway.web.keys)

SIP_SERVICE = web.AppKey("sip_service", SIPService)
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


async def _cancel(*tasks: asyncio.Task[None]) -> None:
    """Cancel background tasks and wait until they are gone."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the database (migrated to the current schema)."""
    store = await open_store(app[SETTINGS])
    app[STORE] = store
    yield
    await store.close()


async def admission_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the admission controller, the last of the SIP side to close."""
    admission = _admission(app[SETTINGS])
    app[ADMISSION] = admission
    yield
    await admission.close()


async def sip_service_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the transaction layer, the SIP transport (not listening
    yet) and the :class:`SIPService` between them, with the metrics it
    counts into.  Closed after the listeners: its transaction timer and its
    send tasks stop."""
    sip = app[SETTINGS].sip
    transport = TransportLayer(settings=sip.core, max_connections=sip.max_tcp_connections)
    overload = OverloadControl(sip.overload)
    layer = TransactionLayer(sip.core, overload=overload)
    # Read at scrape time: the router's current directory, live
    # registrations, the transport's and the router's counters.
    metrics = Metrics(
        lambda: app[ROUTER].directory,
        lambda: app[ROUTER].registrar.counts(service.now()),
        transport=lambda: transport.stats,
        router=lambda: app[ROUTER].stats,
        overload=overload,
    )
    service = SIPService(transport, layer, metrics)
    app[SIP_TRANSPORT] = transport
    app[SIP_SERVICE] = service
    app[METRICS] = metrics
    yield
    await service.close()


async def listeners_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the SIP listeners (``sip.listen``, UDP and TCP each).

    A bind failure (address in use) fails the start-up with the
    :class:`OSError` from :meth:`TransportLayer.listen`; listeners already
    bound are closed first.
    """
    transport = app[SIP_TRANSPORT]
    try:
        for address in app[SETTINGS].sip.listen:
            await transport.listen(address.host, address.port)
    except BaseException:
        await transport.close()
        raise
    yield
    await transport.close()
    logger.info("SIP listeners closed")


async def router_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the call path, from the store's directory: the
    registrar, the credit meter, the call-record writer (with what a
    previous run spooled) and the router over them.  Nothing of it closes
    here: the calls end in :func:`calls_ctx`, the writer stops in
    :func:`call_records_ctx`."""
    settings = app[SETTINGS]
    sip = settings.sip
    store = app[STORE]
    transport = app[SIP_TRANSPORT]
    service = app[SIP_SERVICE]
    directory: Directory = await load_directory(store)
    registrar = LocationService(
        RegistrarPolicy(
            min_expires=settings.registrar.min_expires,
            max_expires=settings.registrar.max_expires,
            default_expires=settings.registrar.default_expires,
            max_bindings=settings.registrar.max_bindings,
        )
    )
    meter = CreditMeter()

    def committed(entries: list[CallRecordEntry], version: int) -> None:
        for entry in entries:
            meter.committed(entry.record_key, version)

    records = CallRecordWriter(store, spool_path=settings.store.record_spool, on_commit=committed)
    await records.load_spool()
    router = CallRouter(
        layer=service.layer,
        io=service,
        directory=directory,
        admission=app[ADMISSION],
        registrar=registrar,
        # MD5 offered first: many PBXs (and SIPp) answer only the first
        # challenge; RFC 8760 §2.4 orders by preference with a SHOULD, and
        # reaching every PBX is the preference of a trunk.
        digest=DigestRealm(sip.realm, secrets.token_bytes(32), algorithms=DIGEST_ALGORITHMS),
        carrier=settings.carrier,
        own_addresses=[(listener.host, listener.port) for listener in transport.listeners],
        advertised=_advertised(sip, transport),
        observer=app[METRICS],
        max_call_duration=settings.calls.max_call_duration,
        min_session_expires=settings.calls.min_session_expires,
        meter=meter,
        records=records,
    )
    service.router = router
    router.apply_directory(directory)  # the credit meter's first snapshot
    app[ROUTER] = router
    app[CALL_RECORDS] = records
    yield


async def credit_exchange_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: with several nodes (the Redis admission backend), each
    also counts what the profile's calls on the others spend
    (:mod:`gateway.cluster.credit_share`), in the admission's Redis.
    Closed after the call records are written: the ended calls' costs are
    in the database before this node's shares leave Redis."""
    admission = app[SETTINGS].admission
    if admission.backend != "redis":
        yield
        return
    exchange = CreditExchange(admission.redis_url, app[ROUTER], prefix=admission.key_prefix)
    exchange.start()
    yield
    await exchange.close()


async def call_records_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the call-record writer at work, in batches.  At the end
    it writes what is pending for up to :data:`RECORD_FLUSH_TIMEOUT`
    seconds and spools the rest to ``store.record_spool``."""
    records = app[CALL_RECORDS]
    task = asyncio.create_task(records.run())
    yield
    await _cancel(task)
    await records.close(RECORD_FLUSH_TIMEOUT)


async def registrar_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: registrations lapse at their expiry (RFC 3261 §10.3),
    on one timer that the service re-arms after each REGISTER."""
    service = app[SIP_SERVICE]
    expiry = RegistrationExpiry(app[ROUTER].registrar, service)
    service.registrations = expiry
    yield
    service.registrations = None
    expiry.close()


async def directory_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the directory kept current.  It is polled every
    ``store.directory_poll_interval`` seconds and reloaded at once when
    :data:`DIRECTORY_REFRESH` is set (a change made through this node) or,
    on PostgreSQL, when another node or the CLI notifies a change."""
    settings = app[SETTINGS]
    store = app[STORE]
    router = app[ROUTER]
    metrics = app[METRICS]

    def apply(new: Directory) -> None:
        router.apply_directory(new)
        metrics.profiles_changed(new.profiles())

    refresh = asyncio.Event()
    app[DIRECTORY_REFRESH] = refresh
    tasks = [
        asyncio.create_task(
            watch_directory(
                store,
                apply,
                settings.store.directory_poll_interval,
                current=router.directory.version,
                wake=refresh,
            )
        )
    ]
    if store.dialect == "postgresql":
        # Other nodes' and the CLI's changes arrive at once (LISTEN/NOTIFY).
        tasks.append(asyncio.create_task(listen_for_changes(store.url, refresh)))
    yield
    await _cancel(*tasks)


async def calls_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the calls.  From here the transport hands every message
    to the service, whose overload control measures the load.  At the end
    every live call is ended (BYE, CANCEL) and the requests get
    :data:`SHUTDOWN_GRACE` to leave before anything else closes."""
    app[SIP_TRANSPORT].handler = app[SIP_SERVICE]
    app[SIP_SERVICE].start_overload_control()
    yield
    ended = app[ROUTER].end_all_calls()
    if ended:
        logger.info("%d calls ended at shutdown", ended)
        await asyncio.sleep(SHUTDOWN_GRACE)


async def node_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: this node's entry among the running gateways
    (:mod:`gateway.manage.nodes`): where PBXs reach it, for every profile
    document given out (CLI, API, e-mail), now that the listeners are
    bound.  Removed first at shutdown: no document names a stopping node."""
    settings = app[SETTINGS]
    http = settings.http.listen
    node = NodeAnnouncer(
        app[STORE],
        NodeView(
            node_id=new_node_id(),
            sip_addresses=tuple(gateway_addresses(settings.sip, app[SIP_TRANSPORT].listeners)),
            transports=GATEWAY_TRANSPORTS,
            http_address=None if http.port == 0 else str(http),
            started_at=utcnow(),
            seen_at=utcnow(),
        ),
    )
    await node.start()
    app[NODE] = node
    yield
    await node.close()


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
    # One per resource, in start order; aiohttp closes them in reverse.
    app.cleanup_ctx.extend(
        (
            store_ctx,
            admission_ctx,
            sip_service_ctx,
            listeners_ctx,
            router_ctx,
            credit_exchange_ctx,
            call_records_ctx,
            registrar_ctx,
            directory_ctx,
            calls_ctx,
            node_ctx,
        )
    )
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)
    mount_api(app, mailer=SMTPMailer(settings.smtp))  # disabled when smtp.host is empty
    return app
