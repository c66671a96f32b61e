"""Wiring: the gateway's SIP endpoint and its HTTP application.

:class:`SIPEndpoint` is the application side of the SIP transport layer.
For now it answers ``OPTIONS`` itself (RFC 3261 §11) and every other request
with the error the RFC asks for; later issues plug the registrar and the
proxy into :meth:`SIPEndpoint.dispatch`.  Everything is stateless: answers
depend on the request alone (RFC 3261 §8.2.7), so a retransmitted request
gets the same answer, To tag included.

:func:`create_app` builds the aiohttp application that owns the SIP
listeners (started and stopped by ``cleanup_ctx``, in the aiohttp-demos
style) and serves ``GET /healthz``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from gateway import __version__
from gateway.settings import GatewaySettings
from sip.errors import ParseError
from sip.message import Message, Request, Response, build_response
from sip.transport import Source, TransportLayer, stateless_tag

__all__ = [
    "ACCEPTED_BODIES",
    "KNOWN_METHODS",
    "SETTINGS",
    "SIP_ENDPOINT",
    "SIP_TRANSPORT",
    "SUPPORTED_URI_SCHEMES",
    "EndpointStats",
    "ResponseSender",
    "SIPEndpoint",
    "create_app",
]

logger = logging.getLogger(__name__)

#: Methods of RFC 3261 and the extensions a trunk meets (RFC 3262, 3265,
#: 3311, 3428, 3515, 3903, 6086, 6665).  A known method we do not handle yet
#: is still answered 501 (RFC 3261 §8.2.1 keeps 405 for methods the element
#: implements elsewhere, which a gateway that will proxy them does).
KNOWN_METHODS = frozenset(
    {
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "REGISTER",
        "UPDATE",
        "INFO",
        "PRACK",
        "SUBSCRIBE",
        "NOTIFY",
        "MESSAGE",
        "REFER",
        "PUBLISH",
    }
)
#: Request-URI schemes we can route (RFC 3261 §8.2.2.1, §16.3 step 2; RFC 3966).
SUPPORTED_URI_SCHEMES = frozenset({"sip", "sips", "tel"})
#: Body types we accept (RFC 3261 §11.2: Accept in the OPTIONS answer).
ACCEPTED_BODIES = ("application/sdp",)


class ResponseSender(Protocol):
    """What the endpoint needs from the transport layer."""

    def send_response(self, response: Response, source: Source | None = None) -> None: ...


@dataclass(slots=True)
class EndpointStats:
    """What the endpoint did with the messages the transport handed it."""

    options_answered: int = 0
    rejected: int = 0  # requests answered with an error status
    acks_absorbed: int = 0  # ACKs are never answered (RFC 3261 §17.2.1)
    stray_responses: int = 0  # responses matching no transaction (RFC 3261 §18.1.2)


class SIPEndpoint:
    """The gateway's SIP request handling (a :class:`sip.transport.MessageHandler`).

    ``allowed_methods`` and ``supported_option_tags`` are what the OPTIONS
    answer advertises and what ``Require`` is checked against; they grow as
    the registrar and proxy arrive.
    """

    def __init__(
        self,
        sender: ResponseSender,
        *,
        allowed_methods: Iterable[str] = ("OPTIONS",),
        supported_option_tags: Iterable[str] = (),
    ) -> None:
        self.sender = sender
        self.allowed_methods = tuple(allowed_methods)
        self.supported_option_tags = frozenset(t.lower() for t in supported_option_tags)
        self.stats = EndpointStats()

    def on_message(self, message: Message, source: Source) -> None:
        if isinstance(message, Response):
            # No client transactions exist yet, so every response is stray:
            # RFC 3261 §18.1.2 / RFC 4475 §3.1.1.12 say discard it silently.
            self.stats.stray_responses += 1
            return
        assert isinstance(message, Request)
        if message.method == "ACK":
            self.stats.acks_absorbed += 1
            return
        response = self.answer(message)
        if response.status >= 300:
            self.stats.rejected += 1
        self.sender.send_response(response, source)

    def answer(self, request: Request) -> Response:
        """The response to a (non-ACK) request; a pure function of it."""
        try:
            return self.dispatch(request)
        except ParseError as error:
            # RFC 3261 §8.2 / h11 habit: the error carries its answer.
            return self.reply(request, error.status, error.reason)

    def dispatch(self, request: Request) -> Response:
        """Check the request in the order of RFC 3261 §16.3 / §8.2, then handle it."""
        request.validate()  # 400 / 505 with the reason, e.g. "Missing Call-ID"
        if request.uri.scheme not in SUPPORTED_URI_SCHEMES:
            # RFC 3261 §8.2.2.1, §16.3 step 2; RFC 4475 §3.3.2, §3.3.3.
            return self.reply(request, 416)
        if request.max_forwards == 0 and request.method != "OPTIONS":
            # RFC 3261 §16.3 step 3: an OPTIONS may be answered by the element
            # itself (RFC 4475 §3.3.11); anything else would be forwarded.
            return self.reply(request, 483)
        if request.method != "CANCEL":
            # RFC 3261 §8.2.2.3 and §16.3 step 5 (CANCEL carries no Require
            # of its own meaning, §9.1).  Option tags compare case-insensitively.
            tags = request.option_tags("require") + request.option_tags("proxy-require")
            supported = self.supported_option_tags
            unsupported = list(dict.fromkeys(t for t in tags if t not in supported))
            if unsupported:
                return self.reply(request, 420, extra=[("Unsupported", ", ".join(unsupported))])
        if request.method == "OPTIONS":
            self.stats.options_answered += 1
            return self.options_answer(request)
        # RFC 3261 §8.2.1: 501 for what we do not implement (known or not).
        return self.reply(request, 501, extra=[("Allow", ", ".join(self.allowed_methods))])

    def options_answer(self, request: Request) -> Response:
        """RFC 3261 §11.2: 200 with what we allow, accept and support."""
        return self.reply(
            request,
            200,
            extra=[
                ("Allow", ", ".join(self.allowed_methods)),
                ("Accept", ", ".join(ACCEPTED_BODIES)),
                ("Supported", ", ".join(sorted(self.supported_option_tags))),
            ],
        )

    @staticmethod
    def reply(
        request: Request,
        status: int,
        reason: str | None = None,
        *,
        extra: list[tuple[str, str]] | None = None,
    ) -> Response:
        """A response with a stateless To tag (RFC 3261 §8.2.6.2, §8.2.7)."""
        return build_response(request, status, reason, to_tag=stateless_tag(request), extra=extra)


# ---------------------------------------------------------------------------
# The aiohttp application

SETTINGS = web.AppKey("settings", GatewaySettings)
SIP_TRANSPORT = web.AppKey("sip_transport", TransportLayer)
SIP_ENDPOINT = web.AppKey("sip_endpoint", SIPEndpoint)


async def sip_service(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: bind every SIP listen address, close them on shutdown.

    A bind failure (address in use) fails the start-up with the
    :class:`OSError` from :meth:`TransportLayer.listen`; listeners already
    bound are closed first.
    """
    sip = app[SETTINGS].sip
    layer = TransportLayer(settings=sip.core, max_connections=sip.max_tcp_connections)
    endpoint = SIPEndpoint(layer)
    layer.handler = endpoint
    try:
        for address in sip.listen:
            await layer.listen(address.host, address.port)
    except BaseException:
        await layer.close()
        raise
    app[SIP_TRANSPORT] = layer
    app[SIP_ENDPOINT] = endpoint
    yield
    await layer.close()
    logger.info("SIP listeners closed")


async def healthz(request: web.Request) -> web.Response:
    """Liveness for load balancers and operators: the SIP addresses in use."""
    layer = request.app[SIP_TRANSPORT]
    return web.json_response(
        {
            "status": "ok",
            "version": __version__,
            "sip_listen": [str(listener) for listener in layer.listeners],
        }
    )


def create_app(settings: GatewaySettings) -> web.Application:
    """The gateway as one aiohttp application (SIP listeners included)."""
    app = web.Application()
    app[SETTINGS] = settings
    app.cleanup_ctx.append(sip_service)
    app.router.add_get("/healthz", healthz)
    return app
