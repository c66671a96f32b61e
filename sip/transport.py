"""The SIP transport layer on asyncio: UDP and TCP sockets (RFC 3261 §18).

This is the one place in :mod:`sip` that touches sockets and the event loop,
in the style of aioquic's ``asyncio/protocol.py``: bytes come in, go through
the sans-I/O parser, and the resulting messages are handed to a
:class:`MessageHandler`; whatever the application wants sent goes out
through :meth:`TransportLayer.send_response` or :meth:`TransportLayer.send`.

What the RFCs ask of a transport, and where it is done here:

- server side of a received request (RFC 3261 §18.2.1, RFC 3581 §4): the
  top Via gets ``received`` and ``rport`` (:func:`stamp_top_via`);
- response routing (RFC 3261 §18.2.2, RFC 3581 §4):
  :meth:`TransportLayer.send_response`;
- TCP framing (RFC 3261 §18.3) by one :class:`sip.parser.StreamParser` per
  connection; keep-alive pings answered (RFC 5626 §4.4.1); connections
  reused for requests to the same peer (RFC 3261 §18.1.1, §18.2.2);
- malformed input (DESIGN.md "Bad input gets a clear answer and costs
  nothing"): a request whose request line and top Via can still be read is
  answered with the parser's status and reason, anything else is dropped and
  counted.  Nothing a peer sends escapes the receive path as an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import hashlib
import ipaddress
import logging
import secrets
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, fields
from typing import Any, NamedTuple, Protocol, cast

from sip.errors import ParseError
from sip.message import Message, Request, Response, build_response
from sip.parser import FramingError, StreamParser, parse_datagram, salvage_request
from sip.settings import SIPSettings
from sip.uri import host_port

__all__ = [
    "DEFAULT_PORT",
    "MAX_TCP_CONNECTIONS",
    "Listener",
    "MessageHandler",
    "Source",
    "TransportLayer",
    "TransportStats",
    "event_loop_factory",
    "install_event_loop_policy",
    "stamp_top_via",
    "stateless_tag",
]

logger = logging.getLogger(__name__)

#: RFC 3261 §18.2.2 / §19.1.2: the port when a Via sent-by names none.
DEFAULT_PORT = 5060
#: Each PBX keeps one connection (RFC 3261 §18: connection reuse), so a node
#: serving a few thousand PBXs needs a few thousand; the bound keeps a
#: connection flood from exhausting file descriptors (the common soft limit
#: is raised to this order by the service unit) and memory (each connection
#: may buffer up to ``max_message_size``).
MAX_TCP_CONNECTIONS = 4096
#: A peer that stops reading must not make us buffer without bound: 256 KiB
#: holds dozens of the largest messages we would ever send it.  Past this the
#: connection is aborted and the send counted as dropped.
MAX_WRITE_BUFFER = 256 * 1024
#: Pending TCP accepts the kernel may queue; SIP peers reconnect in bursts
#: after an outage, and 512 covers a burst without silent SYN drops.
LISTEN_BACKLOG = 512
# UDP socket buffers asked for (bytes): ~5,000 typical INVITEs of headroom.
UDP_SOCKET_BUFFER = 4 * 1024 * 1024
#: Binding port 0 for UDP and then the same port for TCP can collide with
#: another process's TCP socket; a few fresh tries find a port free for both.
PORT_ZERO_ATTEMPTS = 16


_CRLF = b"\r\n"
# Wall time spent handling what arrives (TransportLayer.busy), on the
# clock of the kernel's receive timestamps (TransportLayer.queue_delay).
_clock = time.time
# socket(7): the receive timestamp of the last datagram read (struct
# timeval); the first call on a socket turns timestamping on.
_SIOCGSTAMP = 0x8906
_TIMEVAL = struct.Struct("@ll")
# Per-process key for stateless To tags: tags stay unguessable (RFC 3261
# §19.3) while retransmissions of one request get the same tag (§8.2.7).
_TAG_KEY = secrets.token_bytes(16)


class Source(NamedTuple):
    """Where a message came from: transport (``"UDP"``/``"TCP"``), peer host
    and port, and the local address it arrived on (the listener for UDP, the
    connection's own address for TCP).  Its first three fields are what the
    message's ``.source`` attribute holds."""

    transport: str
    host: str
    port: int
    local: tuple[str, int] | None = None


class MessageHandler(Protocol):
    """What the application implements to receive messages.

    Called synchronously from the event loop for every well-formed message
    (requests already carry ``received``/``rport`` in their top Via).  An
    exception raised here is logged and counted; it never reaches the socket.
    """

    def on_message(self, message: Message, source: Source) -> None: ...


@dataclass(slots=True)
class TransportStats:
    """Counters of the transport layer; plain ints read by metrics later.

    ``received`` counts every message or datagram that arrived (keep-alives
    apart), ``sent`` every message written to a socket, ``rejected`` the
    malformed requests answered with an error; each ``dropped_*`` is one
    reason for something received or to be sent that went nowhere.
    """

    received: int = 0
    sent: int = 0
    rejected: int = 0
    keepalives: int = 0
    tcp_accepted: int = 0
    dropped_malformed: int = 0  # unparseable and unanswerable (incl. every bad response)
    dropped_handler_error: int = 0  # the handler raised
    dropped_unroutable: int = 0  # no Via to route by, no socket of that family, name unresolvable
    dropped_send_error: int = 0  # the socket refused it or a connection could not be opened
    dropped_connection_limit: int = 0  # TCP connections refused past the limit
    dropped_internal_error: int = 0  # a bug of ours, caught so that the receiver survives

    @property
    def dropped(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self) if f.name.startswith("dropped_"))

    def as_dict(self) -> dict[str, int]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["dropped"] = self.dropped
        return out


@dataclass(frozen=True, slots=True)
class Listener:
    """A bound address serving both UDP and TCP."""

    host: str
    port: int

    def __str__(self) -> str:
        return host_port(self.host, self.port)


# ---------------------------------------------------------------------------
# Pure helpers: addresses, Via stamping, salvaging a malformed request


def _strip_brackets(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


@functools.lru_cache(maxsize=4096)
def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an address, or None for a name.  Cached: the same few
    peers' addresses are read on every message (a name or a forged Via host
    only costs its entry, bounded)."""
    try:
        return ipaddress.ip_address(_strip_brackets(host).split("%", 1)[0])
    except ValueError:
        return None


def _host_key(host: str) -> str:
    """One spelling per address, so that ``[::1]``, ``::1`` and ``0::1`` match."""
    ip = _ip(host)
    return ip.compressed if ip is not None else host.lower()


def _family(host: str) -> socket.AddressFamily | None:
    ip = _ip(host)
    if ip is None:
        return None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def stamp_top_via(request: Request, host: str, port: int) -> None:
    """Server-side processing of a received request's top Via.

    RFC 3261 §18.2.1: add ``received`` when sent-by is a name or an address
    other than the packet's source.  RFC 3581 §4: an empty ``rport`` is
    filled with the source port, and then ``received`` is added even when it
    equals sent-by.  Raises :class:`ParseError` if the top Via is unreadable.
    """
    via = request.top_via
    params: dict[str, str | None] = {}
    if via.has_rport and via.params.get("rport") is None:
        params["rport"] = str(port)
        params["received"] = host
    else:
        sent_by = _ip(via.host)
        if sent_by is None or sent_by != _ip(host):
            params["received"] = host
    if params and any(via.params.get(k, "\0") != v for k, v in params.items()):
        request.replace_top_via(via.with_params(**params))


def stateless_tag(request: Request) -> str:
    """A To tag for a response sent without transaction state.

    RFC 3261 §8.2.7: a stateless UAS must give retransmissions of a request
    the same tag, so the tag is a keyed hash of what identifies the request
    (raw Via, From, Call-ID, CSeq); the key makes it unguessable (§19.3).
    """
    h = hashlib.blake2s(digest_size=8, key=_TAG_KEY)
    for name in ("via", "from", "call-id", "cseq"):
        h.update((request.headers.get(name) or "").encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


# ---------------------------------------------------------------------------
# asyncio protocols: one per UDP socket, one per TCP connection


class _DatagramEndpoint(asyncio.DatagramProtocol):
    """A listening UDP socket."""

    def __init__(self, layer: TransportLayer) -> None:
        self._layer = layer
        self.transport: asyncio.DatagramTransport | None = None
        self.local: tuple[str, int] = ("", 0)
        self.family = socket.AF_INET
        #: When the last datagram was read (``_clock``), and the socket.
        self.read_at = 0.0
        self._fd = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.DatagramTransport, transport)
        sockname = transport.get_extra_info("sockname")
        self.local = (sockname[0], sockname[1])
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.family = sock.family
            self._fd = sock.fileno()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        layer = self._layer
        self.read_at = started = _clock()
        layer._on_datagram(self, data, addr)
        layer.busy += _clock() - started

    def queue_delay(self, since: float) -> float:
        """How long the last datagram read had waited in the socket's
        receive buffer, if it was read at ``since`` or later (else 0, as
        when unknown)."""
        if self._fd < 0 or self.read_at < since:
            return 0.0
        try:
            stamp = fcntl.ioctl(self._fd, _SIOCGSTAMP, bytes(_TIMEVAL.size))
        except OSError:  # nothing read yet, or not Linux
            return 0.0
        seconds, micros = cast(tuple[int, int], _TIMEVAL.unpack(stamp))
        return max(0.0, self.read_at - (seconds + micros / 1e6))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable, ...) of earlier sends; nothing to do.
        logger.debug("UDP %s: %s", self.local, exc)

    def sendto(self, data: bytes, host: str, port: int) -> bool:
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        transport.sendto(data, (host, port))
        return True


class _StreamConnection(asyncio.Protocol):
    """One TCP connection, accepted or opened: framing, keep-alives, idleness."""

    def __init__(self, layer: TransportLayer) -> None:
        self._layer = layer
        self.parser = StreamParser(layer.settings)
        self.transport: asyncio.Transport | None = None
        self.source = Source("TCP", "", 0)
        self.key: tuple[str, int] = ("", 0)
        self.last_activity = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self.registered = False

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        host = _strip_brackets(str(peer[0])) if peer else ""
        port = int(peer[1]) if peer else 0
        self.source = Source("TCP", host, port, (local[0], local[1]) if local else None)
        self.key = (_host_key(host), port)
        self.last_activity = self._layer.loop.time()
        self._layer._on_connection_made(self)

    def data_received(self, data: bytes) -> None:
        layer = self._layer
        started = _clock()
        self.last_activity = layer.loop.time()
        layer._on_stream_data(self, data)
        layer.busy += _clock() - started

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._layer._on_connection_lost(self)

    # our side
    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def arm_idle_timer(self) -> None:
        loop = self._layer.loop
        timeout = self._layer.settings.tcp_idle_timeout
        self._idle_timer = loop.call_at(self.last_activity + timeout, self._check_idle)

    def _check_idle(self) -> None:
        # One timer per connection, re-armed lazily: activity only stamps a
        # time, the timer looks at it when it fires.
        self._idle_timer = None
        if not self.is_open:
            return
        timeout = self._layer.settings.tcp_idle_timeout
        if self._layer.loop.time() - self.last_activity >= timeout:
            logger.debug("closing idle TCP connection from %s:%s", *self.key)
            self.close()
        else:
            self.arm_idle_timer()

    def write(self, data: bytes) -> bool:
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            logger.debug("TCP peer %s:%s does not read; aborting", *self.key)
            transport.abort()
            return False
        transport.write(data)
        self.last_activity = self._layer.loop.time()
        return True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()  # flushes what was written first


# ---------------------------------------------------------------------------
# The transport layer


class TransportLayer:
    """UDP and TCP listeners, TCP connections, and the routing of what we send.

    ``handler`` receives every well-formed message; it may be set after
    construction (the application usually needs the layer to build its
    handler).  ``settings`` bounds sizes and the TCP idle time.
    """

    def __init__(
        self,
        handler: MessageHandler | None = None,
        settings: SIPSettings | None = None,
        *,
        max_connections: int = MAX_TCP_CONNECTIONS,
    ) -> None:
        self.handler = handler
        self.settings = settings if settings is not None else SIPSettings()
        self.max_connections = max_connections
        self.stats = TransportStats()
        #: Seconds of wall time spent in handling received data (parsing and
        #: everything the handler does): the overload control's occupancy.
        self.busy = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[Listener] = []
        self._endpoints: list[_DatagramEndpoint] = []
        self._servers: list[asyncio.Server] = []
        self._connections: dict[tuple[str, int], _StreamConnection] = {}
        self._all_connections: set[_StreamConnection] = set()
        self._connecting: dict[tuple[str, int], asyncio.Future[_StreamConnection]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def listeners(self) -> list[Listener]:
        """The bound addresses, in the order they were added."""
        return list(self._listeners)

    def queue_delay(self, since: float) -> float:
        """The longest the last datagram read on a UDP socket at ``since``
        (``time.time()``) or later had waited in its receive buffer (the
        kernel's receive timestamp against the time it was read): the
        backlog the loop had not reached yet."""
        return max((endpoint.queue_delay(since) for endpoint in self._endpoints), default=0.0)

    @property
    def connection_count(self) -> int:
        return len(self._all_connections)

    # -- listening --------------------------------------------------------
    async def listen(self, host: str, port: int) -> Listener:
        """Serve UDP and TCP on ``host:port`` (port 0: one free port for both).

        Raises :class:`OSError` whose ``strerror`` says what could not be
        bound, e.g. ``cannot listen on UDP 127.0.0.1:5060: Address already in
        use``.
        """
        host = _strip_brackets(host)
        family = _family(host)
        if family is None:
            try:
                infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise OSError(exc.errno, f"cannot listen on {host}:{port}: {reason}") from exc
            family = infos[0][0]
            host = str(infos[0][4][0])
        udp_sock, tcp_sock = self._bind_pair(family, host, port)
        bound = Listener(host, udp_sock.getsockname()[1])
        endpoint: _DatagramEndpoint | None = None
        try:
            _, endpoint = await self.loop.create_datagram_endpoint(
                lambda: _DatagramEndpoint(self), sock=udp_sock
            )
            server = await self.loop.create_server(lambda: _StreamConnection(self), sock=tcp_sock)
        except BaseException:
            if endpoint is not None and endpoint.transport is not None:
                endpoint.transport.close()
            else:
                udp_sock.close()
            tcp_sock.close()
            raise
        self._endpoints.append(endpoint)
        self._servers.append(server)
        self._listeners.append(bound)
        logger.info("SIP listening on %s (UDP and TCP)", bound)
        return bound

    def attach_datagram(self, transport: asyncio.DatagramTransport) -> asyncio.DatagramProtocol:
        """Serve UDP over a datagram transport made elsewhere (an in-process
        benchmark's fake socket, ``loadtests/bench_calls.py``): its
        ``sockname`` is the listener's address, and what arrives on it is
        given to the returned protocol's ``datagram_received``.  UDP only,
        so it is not one of :attr:`listeners` (which serve TCP too)."""
        endpoint = _DatagramEndpoint(self)
        endpoint.connection_made(transport)
        self._endpoints.append(endpoint)
        return endpoint

    @staticmethod
    def _bind_pair(
        family: socket.AddressFamily, host: str, port: int
    ) -> tuple[socket.socket, socket.socket]:
        label = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        attempts = PORT_ZERO_ATTEMPTS if port == 0 else 1
        for attempt in range(attempts):
            udp = _bind(family, socket.SOCK_DGRAM, host, port, f"UDP {label}")
            bound_port = udp.getsockname()[1]
            try:
                tcp = _bind(family, socket.SOCK_STREAM, host, bound_port, f"TCP {label}")
                tcp.listen(LISTEN_BACKLOG)
            except OSError as exc:
                udp.close()
                if port == 0 and exc.errno == errno.EADDRINUSE and attempt + 1 < attempts:
                    continue
                raise
            udp.setblocking(False)
            tcp.setblocking(False)
            return udp, tcp
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        """Stop listening, close every connection, cancel pending sends."""
        self._closed = True
        for server in self._servers:
            server.close()
        for endpoint in self._endpoints:
            if endpoint.transport is not None:
                endpoint.transport.close()
        for conn in list(self._all_connections):
            if conn.transport is not None:
                conn.transport.abort()
        for future in self._connecting.values():
            future.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._servers.clear()
        self._endpoints.clear()
        self._listeners.clear()
        await asyncio.sleep(0)  # let connection_lost callbacks run

    # -- receiving --------------------------------------------------------
    def _on_datagram(self, endpoint: _DatagramEndpoint, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            source = Source("UDP", str(addr[0]), int(addr[1]), endpoint.local)
            if data[:1] in (b"\r", b"\n", b"") and not data.strip(b"\r\n"):
                # A CRLF keep-alive over UDP (RFC 5626 uses STUN there); ignore.
                self.stats.keepalives += 1
                return
            self.stats.received += 1
            try:
                message = parse_datagram(data, self.settings)
            except ParseError as error:
                self._reject(data, error, source)
                return
            self._deliver(message, source)
        except Exception:
            self.stats.dropped_internal_error += 1
            logger.debug("error handling a datagram from %s", addr, exc_info=True)

    def _on_connection_made(self, conn: _StreamConnection) -> None:
        if self._closed or len(self._all_connections) >= self.max_connections:
            self.stats.dropped_connection_limit += 1
            logger.debug("TCP connection from %s:%s refused: limit reached", *conn.key)
            if conn.transport is not None:
                conn.transport.abort()
            return
        self.stats.tcp_accepted += 1
        self._all_connections.add(conn)
        self._connections[conn.key] = conn
        conn.registered = True
        conn.arm_idle_timer()

    def _on_connection_lost(self, conn: _StreamConnection) -> None:
        if not conn.registered:
            return
        conn.registered = False
        self._all_connections.discard(conn)
        if self._connections.get(conn.key) is conn:
            del self._connections[conn.key]

    def _on_stream_data(self, conn: _StreamConnection, data: bytes) -> None:
        if not conn.registered:
            return
        try:
            parser = conn.parser
            pings = parser.keepalives
            try:
                messages = parser.feed(data)
            except FramingError as error:
                # The stream cannot be framed any more (RFC 3261 §18.3):
                # deliver what was framed before the bad bytes, answer the
                # bad head if it can be read, then close.
                for message in error.framed:
                    self.stats.received += 1
                    self._deliver(message, conn.source)
                self.stats.received += 1
                self._reject(parser.unparsed, error, conn.source)
                conn.close()
                return
            for message in messages:
                self.stats.received += 1
                self._deliver(message, conn.source)
            pongs = parser.keepalives - pings
            if pongs:
                # RFC 5626 §4.4.1: each double-CRLF ping gets a single CRLF pong.
                self.stats.keepalives += pongs
                conn.write(_CRLF * pongs)
        except Exception:
            self.stats.dropped_internal_error += 1
            logger.debug("error handling TCP data from %s:%s", *conn.key, exc_info=True)
            conn.close()

    def _deliver(self, message: Message, source: Source) -> None:
        message.source = (source.transport, source.host, source.port)
        if isinstance(message, Request):
            try:
                stamp_top_via(message, source.host, source.port)
            except ParseError as error:
                self.stats.dropped_malformed += 1
                logger.debug("dropped request from %s:%s: %s", source.host, source.port, error)
                return
        handler = self.handler
        if handler is None:
            self.stats.dropped_handler_error += 1
            return
        try:
            handler.on_message(message, source)
        except Exception:
            self.stats.dropped_handler_error += 1
            logger.debug("handler failed on %r from %s", message, source, exc_info=True)

    def _reject(self, data: bytes, error: ParseError, source: Source) -> None:
        """Answer a message the parser refused, if it is an answerable request."""
        request = salvage_request(data, self.settings)
        if request is None or request.method == "ACK":
            # Unreadable, a response, or an ACK: never answered (RFC 3261 §17).
            self.stats.dropped_malformed += 1
            logger.debug("dropped from %s:%s: %s", source.host, source.port, error.reason)
            return
        request.source = (source.transport, source.host, source.port)
        stamp_top_via(request, source.host, source.port)
        response = build_response(
            request, error.status, error.reason, to_tag=stateless_tag(request)
        )
        self.stats.rejected += 1
        logger.debug(
            "answered %s %s to %s:%s", error.status, error.reason, source.host, source.port
        )
        self.send_response(response, source)

    # -- sending ----------------------------------------------------------
    def send_response(
        self, response: Response, source: Source | None = None, *, data: bytes | None = None
    ) -> None:
        """Send a response where RFC 3261 §18.2.2 and RFC 3581 §4 say.

        ``source`` is the :class:`Source` of the request.  A request that
        arrived over TCP is answered on its connection if it is still open,
        else on a new connection to ``received`` (or sent-by) at the sent-by
        port.  Over UDP the response goes to ``maddr`` if present, else to
        ``received`` at ``rport`` (or the sent-by port, default 5060), from
        the socket the request arrived on.  ``data`` is the response's
        bytes if the caller has them (a transaction's Transmit).  Never
        raises: failures are counted.
        """
        try:
            via = response.top_via
        except ParseError:
            self.stats.dropped_unroutable += 1
            return
        if data is None:
            data = response.to_bytes()
        transport = source.transport if source is not None else via.transport.upper()
        if transport == "TCP":
            if source is not None:
                conn = self._connections.get((_host_key(source.host), source.port))
                if conn is not None and self._write(conn, data):
                    return
            elif via.rport is not None:
                # No source (a later transaction layer): find the connection
                # by the address RFC 3581 recorded in the Via.
                conn = self._connections.get((_host_key(via.received or via.host), via.rport))
                if conn is not None and self._write(conn, data):
                    return
            host = via.received or via.host
            self._spawn(self._send_stream(data, host, via.port or DEFAULT_PORT))
            return
        if transport != "UDP":
            # TLS, SCTP, WebSocket: not served by this layer (yet).
            self.stats.dropped_unroutable += 1
            return
        if via.maddr is not None:
            host, port = via.maddr, via.port or DEFAULT_PORT
        elif via.received is not None:
            host, port = via.received, via.rport or via.port or DEFAULT_PORT
        else:
            host, port = via.host, via.port or DEFAULT_PORT
        local = source.local if source is not None else None
        host = _strip_brackets(host)
        if _ip(host) is None:
            self._spawn(self._resolve_and_send_datagram(data, host, port, local))
        else:
            self._send_datagram(data, host, port, local)

    async def send(
        self, message: Message, transport: str, host: str, port: int, *, data: bytes | None = None
    ) -> None:
        """Send a message to ``host:port`` as a client (RFC 3261 §18.1.1).

        UDP goes out of the listening socket of the destination's family, so
        that the peer sees our listening port (at once to an address:
        :meth:`send_datagram_now`); TCP reuses an open connection to that
        peer or opens one.  ``data`` is the message's bytes if the caller
        has them.  Raises :class:`OSError` if it cannot be sent.
        """
        if data is None:
            data = message.to_bytes()
        host = _strip_brackets(host)
        if transport.upper() == "UDP":
            sent = self.send_datagram_now(data, host, port)
            if sent is None:
                sent = self._send_datagram(data, await self._resolve(host, port), port, None)
            if not sent:
                raise OSError(errno.ENETUNREACH, f"no UDP socket can reach {host}:{port}")
            return
        if transport.upper() != "TCP":
            raise OSError(errno.EPROTONOSUPPORT, f"transport {transport} is not supported")
        conn = await self._connection_to(host, port)
        if not self._write(conn, data):
            raise OSError(errno.ECONNRESET, f"connection to {host}:{port} is closed")

    def send_datagram_now(self, data: bytes, host: str, port: int) -> bool | None:
        """Send ``data`` over UDP at once if ``host`` is an address: True if
        it went, False if it could not (counted; :meth:`send` would have
        raised).  None if ``host`` is a name: :meth:`send` must resolve it."""
        host = _strip_brackets(host)
        if _ip(host) is None:
            return None
        return self._send_datagram(data, host, port, None)

    def _write(self, conn: _StreamConnection, data: bytes) -> bool:
        if conn.write(data):
            self.stats.sent += 1
            return True
        return False

    def _send_datagram(
        self, data: bytes, host: str, port: int, local: tuple[str, int] | None
    ) -> bool:
        family = _family(host)
        chosen: _DatagramEndpoint | None = None
        for endpoint in self._endpoints:
            if endpoint.family != family:
                continue
            if local is None or endpoint.local == local:
                chosen = endpoint
                break
            if chosen is None:
                chosen = endpoint
        if chosen is None:
            self.stats.dropped_unroutable += 1
            logger.debug("no UDP socket for %s:%s", host, port)
            return False
        try:
            sent = chosen.sendto(data, host, port)
        except (OSError, ValueError):
            sent = False
        if sent:
            self.stats.sent += 1
        else:
            self.stats.dropped_send_error += 1
        return sent

    async def _resolve(self, host: str, port: int) -> str:
        infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        families = {e.family for e in self._endpoints}
        for info in infos:
            if info[0] in families:
                return str(info[4][0])
        raise OSError(errno.EHOSTUNREACH, f"cannot resolve {host} to a usable address")

    async def _resolve_and_send_datagram(
        self, data: bytes, host: str, port: int, local: tuple[str, int] | None
    ) -> None:
        try:
            address = await self._resolve(host, port)
        except OSError:
            self.stats.dropped_unroutable += 1
            logger.debug("cannot resolve %s", host)
            return
        self._send_datagram(data, address, port, local)

    async def _send_stream(self, data: bytes, host: str, port: int) -> None:
        try:
            conn = await self._connection_to(_strip_brackets(host), port)
        except (OSError, TimeoutError):
            self.stats.dropped_send_error += 1
            logger.debug("cannot connect to %s:%s", host, port)
            return
        if not self._write(conn, data):
            self.stats.dropped_send_error += 1

    async def _connection_to(self, host: str, port: int) -> _StreamConnection:
        """An open connection to ``host:port``: reused (RFC 3261 §18) or new."""
        if self._closed:
            raise OSError(errno.ESHUTDOWN, "transport layer is closed")
        if _ip(host) is None:
            host = await self._resolve(host, port)
        key = (_host_key(host), port)
        conn = self._connections.get(key)
        if conn is not None and conn.is_open:
            return conn
        pending = self._connecting.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        if len(self._all_connections) >= self.max_connections:
            self.stats.dropped_connection_limit += 1
            raise OSError(errno.EMFILE, "TCP connection limit reached")
        future: asyncio.Future[_StreamConnection] = self.loop.create_future()
        self._connecting[key] = future
        try:
            # Opening a connection is bounded by the time a transaction would
            # wait for it anyway (Timer B/F, 64*T1).
            async with asyncio.timeout(self.settings.timer_f):
                _, conn = await self.loop.create_connection(
                    lambda: _StreamConnection(self), host, port
                )
            if not conn.registered:
                raise OSError(errno.ECONNRESET, f"connection to {host}:{port} was refused")
            future.set_result(conn)
            return conn
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here; concurrent waiters re-raise it
            raise
        finally:
            self._connecting.pop(key, None)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._closed:
            coro.close()
            return
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _bind(
    family: socket.AddressFamily, kind: int, host: str, port: int, label: str
) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            # Restart without waiting for TIME_WAIT; on Linux this does not
            # let two listeners share a TCP port (unlike UDP, where it would).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            # A burst of datagrams while the loop is busy (a GC pause, a
            # database poll) must wait in the kernel, not be dropped: the
            # default ~200 KiB holds ~250 INVITEs.  The kernel caps the
            # request at net.core.rmem_max / wmem_max.
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, option, UDP_SOCKET_BUFFER)
        if family == socket.AF_INET6:
            # Separate IPv4 and IPv6 listeners: "0.0.0.0" and "::" can both be
            # configured, and IPv4 peers never show up as ::ffff: addresses.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise OSError(exc.errno, f"cannot listen on {label}: {reason}") from exc
    return sock


# ---------------------------------------------------------------------------
# Event loop choice


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop factory when uvloop is installed, else asyncio's.

    For ``asyncio.Runner(loop_factory=...)``; uvloop roughly halves the
    per-datagram overhead of the event loop, the protocol code is the same.
    """
    try:
        import uvloop  # noqa: PLC0415 - optional dependency
    except ImportError:
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def install_event_loop_policy() -> str:
    """Make new event loops uvloop loops if uvloop is importable.

    Returns the name of the loop implementation in use (``"uvloop"`` or
    ``"asyncio"``).  Prefer :func:`event_loop_factory` with
    ``asyncio.Runner``; this is for code that calls ``asyncio.run``.
    """
    try:
        import uvloop  # noqa: PLC0415 - optional dependency
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"
