"""The asyncio transport layer over real loopback sockets (RFC 3261 §18, RFC 3581)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from sip.headers import Via
from sip.message import Message, Request, Response, build_response
from sip.parser import StreamParser, parse_datagram, salvage_request
from sip.settings import SIPSettings
from sip.transport import (
    Listener,
    Source,
    TransportLayer,
    event_loop_factory,
    stamp_top_via,
    stateless_tag,
)
from tests.support.harness import has_ipv6_loopback, options_over_udp, random_loopback, sip_request

IPV6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
HOSTS = [pytest.param("127.0.0.1", id="ipv4"), pytest.param("::1", id="ipv6", marks=IPV6)]
TIMEOUT = 2.0


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Recorder:
    """A handler that records what arrives and, if asked, answers 200."""

    def __init__(self, *, answer: bool = True) -> None:
        self.answer = answer
        self.layer: TransportLayer | None = None
        self.received: list[tuple[Message, Source]] = []
        self.event = asyncio.Event()
        self.fail_next = False

    def on_message(self, message: Message, source: Source) -> None:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("handler bug")
        self.received.append((message, source))
        self.event.set()
        if self.answer and isinstance(message, Request) and message.method != "ACK":
            assert self.layer is not None
            self.layer.send_response(build_response(message, 200, to_tag="t1"), source)

    async def wait_for(self, count: int, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            self.event.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"got {len(self.received)} messages, expected {count}")
            try:
                await asyncio.wait_for(self.event.wait(), remaining)
            except TimeoutError:
                pass


class UDPPeer:
    """A UDP socket on the test's side."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.setblocking(False)
        self.host, self.port = self.sock.getsockname()[:2]

    def via(self, *, rport: bool = True, port: int | None = None, params: str = "") -> str:
        sent_by = hostport(self.host, self.port if port is None else port)
        return f"SIP/2.0/UDP {sent_by}{';rport' if rport else ''}{params}"

    async def send(self, data: bytes, to: tuple[str, int]) -> None:
        await asyncio.get_running_loop().sock_sendto(self.sock, data, to)

    async def recv(self, timeout: float = TIMEOUT) -> tuple[bytes, tuple[str, int]] | None:
        try:
            data, addr = await asyncio.wait_for(
                asyncio.get_running_loop().sock_recvfrom(self.sock, 65535), timeout
            )
        except TimeoutError:
            return None
        return data, (addr[0], addr[1])

    async def response(self, timeout: float = TIMEOUT) -> Response | None:
        got = await self.recv(timeout)
        if got is None:
            return None
        message = parse_datagram(got[0])
        assert isinstance(message, Response)
        return message

    def close(self) -> None:
        self.sock.close()


LayerFactory = Callable[..., Awaitable[tuple[TransportLayer, Recorder, Listener]]]


@pytest.fixture
async def make_layer() -> AsyncIterator[LayerFactory]:
    layers: list[TransportLayer] = []

    async def make(
        host: str = "127.0.0.1",
        *,
        settings: SIPSettings | None = None,
        answer: bool = True,
        max_connections: int = 100,
    ) -> tuple[TransportLayer, Recorder, Listener]:
        recorder = Recorder(answer=answer)
        layer = TransportLayer(recorder, settings, max_connections=max_connections)
        recorder.layer = layer
        layers.append(layer)
        listener = await layer.listen(host, 0)
        return layer, recorder, listener

    yield make
    for layer in layers:
        await layer.close()


@pytest.fixture
def peers() -> Any:
    opened: list[UDPPeer] = []

    def open_peer(host: str = "127.0.0.1", port: int = 0) -> UDPPeer:
        peer = UDPPeer(host, port)
        opened.append(peer)
        return peer

    yield open_peer
    for peer in opened:
        peer.close()


async def read_messages(reader: asyncio.StreamReader, count: int) -> list[Message]:
    parser = StreamParser()
    out: list[Message] = []
    deadline = time.monotonic() + TIMEOUT
    while len(out) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            data = await asyncio.wait_for(reader.read(65536), remaining)
        except TimeoutError:
            break
        if not data:
            break
        out.extend(parser.feed(data))
    return out


async def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def assert_closed_by_server(reader: asyncio.StreamReader, timeout: float = TIMEOUT) -> bytes:
    """Read until EOF; fail if the server keeps the connection open."""
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"connection still open; got {data!r}"
        try:
            chunk = await asyncio.wait_for(reader.read(65536), remaining)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


# ---------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("host", HOSTS)
async def test_udp_round_trip(make_layer: LayerFactory, peers: Any, host: str) -> None:
    layer, recorder, listener = await make_layer(host)
    peer = peers(host)
    await peer.send(sip_request(via=peer.via()), (listener.host, listener.port))
    response = await peer.response()
    assert response is not None and response.status == 200
    assert response.to.tag == "t1"
    message, source = recorder.received[0]
    assert message.source == ("UDP", host, peer.port)
    assert source.local == (host, listener.port)
    assert layer.stats.received == 1 and layer.stats.sent == 1 and layer.stats.dropped == 0


@pytest.mark.parametrize("host", HOSTS)
async def test_tcp_round_trip(make_layer: LayerFactory, host: str) -> None:
    layer, recorder, listener = await make_layer(host)
    reader, writer = await asyncio.open_connection(listener.host, listener.port)
    local_port = writer.get_extra_info("sockname")[1]
    try:
        writer.write(sip_request(via=f"SIP/2.0/TCP {hostport(host, 5999)}"))
        (response,) = await read_messages(reader, 1)
        assert isinstance(response, Response) and response.status == 200
        message, _ = recorder.received[0]
        assert message.source == ("TCP", host, local_port)
        assert layer.connection_count == 1
    finally:
        writer.close()
    await wait_until(lambda: layer.connection_count == 0)


async def test_listen_port_zero_serves_udp_and_tcp_on_one_port(make_layer: LayerFactory) -> None:
    layer, _, listener = await make_layer("127.0.0.1")
    assert listener.port > 0
    assert layer.listeners == [listener]
    assert str(listener) == f"127.0.0.1:{listener.port}"
    _, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.close()


async def test_listen_on_a_port_in_use_says_which(peers: Any) -> None:
    taken = peers("127.0.0.1")
    layer = TransportLayer(Recorder())
    with pytest.raises(OSError) as info:
        await layer.listen("127.0.0.1", taken.port)
    assert info.value.strerror is not None
    assert info.value.strerror.startswith(f"cannot listen on UDP 127.0.0.1:{taken.port}")
    await layer.close()


# ---------------------------------------------------------------------------
# received / rport (RFC 3261 §18.2.1, RFC 3581 §4)


def request_with_via(via: str) -> Request:
    message = parse_datagram(sip_request(via=via))
    assert isinstance(message, Request)
    return message


def test_via_matching_the_source_is_left_alone() -> None:
    request = request_with_via("SIP/2.0/UDP 192.0.2.1:5060")
    raw = request.to_bytes()
    stamp_top_via(request, "192.0.2.1", 5060)
    assert request.top_via.received is None
    assert request.to_bytes() == raw  # untouched: the exact bytes received


def test_via_from_another_address_gets_received() -> None:
    request = request_with_via("SIP/2.0/UDP 192.0.2.1:5060")
    stamp_top_via(request, "198.51.100.7", 40000)
    assert request.top_via.received == "198.51.100.7"
    assert not request.top_via.has_rport


def test_via_with_a_host_name_gets_received() -> None:
    request = request_with_via("SIP/2.0/UDP pbx.example.com")
    stamp_top_via(request, "192.0.2.1", 5060)
    assert request.top_via.received == "192.0.2.1"


def test_empty_rport_is_filled_and_received_added_even_if_equal() -> None:
    request = request_with_via("SIP/2.0/UDP 192.0.2.1:5060;rport")
    stamp_top_via(request, "192.0.2.1", 33333)
    via = request.top_via
    assert via.rport == 33333 and via.received == "192.0.2.1"
    wire = request.to_bytes()
    assert b";rport=33333;" in wire and b";received=192.0.2.1\r\n" in wire


def test_rport_with_a_value_is_not_overwritten() -> None:
    request = request_with_via("SIP/2.0/UDP 192.0.2.1:5060;rport=1234")
    stamp_top_via(request, "192.0.2.1", 33333)
    assert request.top_via.rport == 1234


def test_ipv6_sent_by_compares_as_an_address() -> None:
    request = request_with_via("SIP/2.0/UDP [0:0::1]:5060")
    stamp_top_via(request, "::1", 5060)
    assert request.top_via.received is None


async def test_handler_sees_the_stamped_via(make_layer: LayerFactory, peers: Any) -> None:
    _, recorder, listener = await make_layer()
    peer = peers()
    await peer.send(
        sip_request(via="SIP/2.0/UDP pbx.example.com;rport"), ("127.0.0.1", listener.port)
    )
    await recorder.wait_for(1)
    message, _ = recorder.received[0]
    assert message.top_via.received == "127.0.0.1"
    assert message.top_via.rport == peer.port


# ---------------------------------------------------------------------------
# Response routing (RFC 3261 §18.2.2, RFC 3581 §4)


async def test_udp_response_goes_to_received_and_rport(
    make_layer: LayerFactory, peers: Any
) -> None:
    _, _, listener = await make_layer()
    sender, elsewhere = peers(), peers()
    # Via names another port; rport asks for the source port instead.
    await sender.send(
        sip_request(via=sender.via(port=elsewhere.port)), ("127.0.0.1", listener.port)
    )
    got = await sender.recv()
    assert got is not None
    assert got[1] == ("127.0.0.1", listener.port)  # from the socket it arrived on
    assert await elsewhere.recv(0.2) is None


async def test_udp_response_without_rport_goes_to_sent_by_port(
    make_layer: LayerFactory, peers: Any
) -> None:
    _, _, listener = await make_layer()
    sender, listening = peers(), peers()
    via = sender.via(rport=False, port=listening.port)
    await sender.send(sip_request(via=via), ("127.0.0.1", listener.port))
    response = await listening.response()
    assert response is not None and response.status == 200
    assert await sender.recv(0.2) is None


async def test_udp_response_without_port_goes_to_5060(make_layer: LayerFactory, peers: Any) -> None:
    _, _, listener = await make_layer()
    for _ in range(20):
        address = random_loopback()
        try:
            at_5060 = peers(address, 5060)
            break
        except OSError:
            continue
    else:
        pytest.skip("no loopback address with port 5060 free")
    sender = peers(address)
    await sender.send(sip_request(via=f"SIP/2.0/UDP {address}"), ("127.0.0.1", listener.port))
    response = await at_5060.response()
    assert response is not None and response.status == 200


async def test_udp_response_goes_to_maddr(make_layer: LayerFactory, peers: Any) -> None:
    _, _, listener = await make_layer()
    sender = peers()
    target = peers(random_loopback())
    via = f"SIP/2.0/UDP 192.0.2.1:{target.port};maddr={target.host}"
    await sender.send(sip_request(via=via), ("127.0.0.1", listener.port))
    response = await target.response()
    assert response is not None and response.status == 200
    assert await sender.recv(0.2) is None


async def test_send_response_without_source_routes_by_via(
    make_layer: LayerFactory, peers: Any
) -> None:
    layer, _, _ = await make_layer(answer=False)
    target = peers()
    request = request_with_via(f"SIP/2.0/UDP 192.0.2.1:9;received=127.0.0.1;rport={target.port}")
    layer.send_response(build_response(request, 486))
    response = await target.response()
    assert response is not None and response.status == 486


async def test_tcp_response_opens_a_new_connection_when_the_old_one_closed(
    make_layer: LayerFactory,
) -> None:
    layer, recorder, listener = await make_layer(answer=False)
    arrived: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        arrived.put_nowait(await reader.read(65536))
        writer.close()

    peer_server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    peer_port = peer_server.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(sip_request(via=f"SIP/2.0/TCP 127.0.0.1:{peer_port}"))
        await recorder.wait_for(1)
        writer.close()
        await wait_until(lambda: layer.connection_count == 0)
        request, source = recorder.received[0]
        assert isinstance(request, Request)
        layer.send_response(build_response(request, 200), source)
        data = await asyncio.wait_for(arrived.get(), TIMEOUT)
        assert data.startswith(b"SIP/2.0 200 OK\r\n")
    finally:
        peer_server.close()


# ---------------------------------------------------------------------------
# TCP framing and keep-alives (RFC 3261 §18.3, RFC 5626 §4.4.1)


async def test_two_messages_in_one_segment(make_layer: LayerFactory) -> None:
    _, recorder, listener = await make_layer()
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    via = "SIP/2.0/TCP 127.0.0.1:5999"
    writer.write(sip_request(via=via, call_id="one") + sip_request(via=via, call_id="two"))
    responses = await read_messages(reader, 2)
    writer.close()
    assert [m.call_id for m in responses] == ["one", "two"]
    assert [m.call_id for m, _ in recorder.received] == ["one", "two"]


async def test_one_message_in_many_segments(make_layer: LayerFactory) -> None:
    _, recorder, listener = await make_layer()
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = sip_request(via="SIP/2.0/TCP 127.0.0.1:5999", body=b"v=0\r\n")
    for i in range(0, len(data), 17):
        writer.write(data[i : i + 17])
        await writer.drain()
        await asyncio.sleep(0.001)
    (response,) = await read_messages(reader, 1)
    writer.close()
    assert isinstance(response, Response) and response.status == 200
    assert len(recorder.received) == 1
    assert recorder.received[0][0].body == b"v=0\r\n"


async def test_keepalive_ping_gets_a_pong(make_layer: LayerFactory) -> None:
    layer, recorder, listener = await make_layer()
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(b"\r\n\r\n")
    assert await asyncio.wait_for(reader.readexactly(2), TIMEOUT) == b"\r\n"
    writer.write(b"\r\n\r\n\r\n\r\n")
    assert await asyncio.wait_for(reader.readexactly(4), TIMEOUT) == b"\r\n\r\n"
    writer.close()
    assert layer.stats.keepalives == 3
    assert recorder.received == []


async def test_udp_crlf_keepalive_is_ignored(make_layer: LayerFactory, peers: Any) -> None:
    layer, _, listener = await make_layer()
    peer = peers()
    await peer.send(b"\r\n\r\n", ("127.0.0.1", listener.port))
    assert await peer.recv(0.2) is None
    assert layer.stats.keepalives == 1 and layer.stats.dropped == 0


# ---------------------------------------------------------------------------
# Malformed input: answered when possible, else dropped; never fatal


async def assert_still_serving(listener: Listener, peers: Any) -> None:
    peer = peers()
    await peer.send(sip_request(via=peer.via()), (listener.host, listener.port))
    response = await peer.response()
    assert response is not None and response.status == 200


async def test_udp_garbage_is_dropped_and_counted(make_layer: LayerFactory, peers: Any) -> None:
    layer, recorder, listener = await make_layer()
    peer = peers()
    for junk in (b"\x00\xff\xfe garbage", b"INVITE\r\n\r\n", bytes(range(256)) * 4, b"\r\n\r\nX"):
        await peer.send(junk, ("127.0.0.1", listener.port))
    await wait_until(lambda: layer.stats.dropped_malformed == 4)
    assert await peer.recv(0.2) is None
    assert recorder.received == []
    await assert_still_serving(listener, peers)


async def test_malformed_request_with_readable_via_is_answered(
    make_layer: LayerFactory, peers: Any
) -> None:
    layer, recorder, listener = await make_layer()
    peer = peers()
    bad = sip_request(via=peer.via()).replace(b"OPTIONS sip:", b"OPTIONS  sip:", 1)
    await peer.send(bad, ("127.0.0.1", listener.port))
    response = await peer.response()
    assert response is not None
    assert (response.status, response.reason) == (400, "Bad request line")
    assert response.to.tag  # stateless To tag (RFC 3261 §8.2.7)
    assert recorder.received == []
    assert layer.stats.rejected == 1


async def test_unknown_version_is_answered_505(make_layer: LayerFactory, peers: Any) -> None:
    _, _, listener = await make_layer()
    peer = peers()
    await peer.send(sip_request(via=peer.via(), version="SIP/3.0"), ("127.0.0.1", listener.port))
    response = await peer.response()
    assert response is not None and response.status == 505


async def test_oversize_request_is_answered_513(make_layer: LayerFactory, peers: Any) -> None:
    settings = SIPSettings(max_message_size=1024)
    _, recorder, listener = await make_layer(settings=settings)
    peer = peers()
    await peer.send(sip_request(via=peer.via(), body=b"x" * 2000), ("127.0.0.1", listener.port))
    response = await peer.response()
    assert response is not None and response.status == 513
    assert recorder.received == []


async def test_malformed_ack_and_responses_are_never_answered(
    make_layer: LayerFactory, peers: Any
) -> None:
    layer, _, listener = await make_layer()
    peer = peers()
    bad_ack = sip_request("ACK", via=peer.via()).replace(b"ACK sip:", b"ACK  sip:", 1)
    bad_response = (
        f"SIP/2.0 99999 Wrapped\r\nVia: {peer.via()};branch=z9hG4bKx\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    await peer.send(bad_ack, ("127.0.0.1", listener.port))
    await peer.send(bad_response, ("127.0.0.1", listener.port))
    await wait_until(lambda: layer.stats.dropped_malformed == 2)
    assert await peer.recv(0.2) is None
    assert layer.stats.sent == 0


async def test_request_with_unreadable_via_is_dropped(make_layer: LayerFactory, peers: Any) -> None:
    layer, recorder, listener = await make_layer()
    peer = peers()
    await peer.send(sip_request(via="SIP/2.0/UDP"), ("127.0.0.1", listener.port))
    await wait_until(lambda: layer.stats.dropped_malformed == 1)
    assert recorder.received == [] and layer.stats.sent == 0


async def test_a_failing_handler_does_not_stop_the_receiver(
    make_layer: LayerFactory, peers: Any
) -> None:
    layer, recorder, listener = await make_layer()
    recorder.fail_next = True
    peer = peers()
    await peer.send(sip_request(via=peer.via()), ("127.0.0.1", listener.port))
    await wait_until(lambda: layer.stats.dropped_handler_error == 1)
    await assert_still_serving(listener, peers)


async def test_tcp_unframeable_request_is_answered_then_closed(make_layer: LayerFactory) -> None:
    layer, recorder, listener = await make_layer()
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    good = sip_request(via="SIP/2.0/TCP 127.0.0.1:5999", call_id="good")
    no_length = sip_request(via="SIP/2.0/TCP 127.0.0.1:5999", call_id="bad").replace(
        b"Content-Length: 0\r\n", b""
    )
    writer.write(good)
    await recorder.wait_for(1)
    writer.write(no_length)
    data = await assert_closed_by_server(reader)
    parser = StreamParser()
    messages = parser.feed(data)
    assert [(m.call_id, m.status) for m in messages if isinstance(m, Response)] == [
        ("good", 200),
        ("bad", 400),
    ]
    assert layer.stats.rejected == 1
    writer.close()


async def test_tcp_garbage_closes_the_connection(make_layer: LayerFactory) -> None:
    layer, recorder, listener = await make_layer(settings=SIPSettings(max_message_size=2048))
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(b"\x16\x03\x01" + bytes(range(256)) * 12)  # a TLS hello, say
    assert await assert_closed_by_server(reader) == b""
    await wait_until(lambda: layer.stats.dropped_malformed == 1)
    writer.close()
    assert recorder.received == []


async def test_idle_tcp_connection_is_closed(make_layer: LayerFactory) -> None:
    layer, _, listener = await make_layer(settings=SIPSettings(tcp_idle_timeout=0.2))
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    started = time.monotonic()
    # Keep-alives are activity: the connection survives them.
    for i in range(4):
        if i:
            await asyncio.sleep(0.1)  # half the idle timeout
        writer.write(b"\r\n\r\n")
        assert await asyncio.wait_for(reader.readexactly(2), TIMEOUT) == b"\r\n"
    quiet = time.monotonic()
    assert layer.connection_count == 1
    await assert_closed_by_server(reader)
    assert time.monotonic() - quiet >= 0.15
    assert time.monotonic() - started < 1.5 + TIMEOUT
    writer.close()
    await wait_until(lambda: layer.connection_count == 0)


async def test_connections_past_the_limit_are_refused(make_layer: LayerFactory) -> None:
    layer, _, listener = await make_layer(max_connections=1)
    reader1, writer1 = await asyncio.open_connection("127.0.0.1", listener.port)
    await wait_until(lambda: layer.connection_count == 1)
    reader2, writer2 = await asyncio.open_connection("127.0.0.1", listener.port)
    await assert_closed_by_server(reader2)
    assert layer.stats.dropped_connection_limit == 1
    writer1.write(sip_request(via="SIP/2.0/TCP 127.0.0.1:5999"))
    (response,) = await read_messages(reader1, 1)
    assert isinstance(response, Response) and response.status == 200
    writer1.close()
    writer2.close()


# ---------------------------------------------------------------------------
# Client side: sending requests (RFC 3261 §18.1.1)


async def test_udp_send_leaves_from_the_listening_socket(
    make_layer: LayerFactory, peers: Any
) -> None:
    layer, _, listener = await make_layer()
    target = peers()
    request = request_with_via(f"SIP/2.0/UDP 127.0.0.1:{listener.port}")
    await layer.send(request, "UDP", target.host, target.port)
    got = await target.recv()
    assert got is not None
    assert got[1] == ("127.0.0.1", listener.port)
    assert got[0] == request.to_bytes()


async def test_tcp_send_reuses_the_connection(make_layer: LayerFactory) -> None:
    layer, recorder, _ = await make_layer(answer=False)
    connections: list[asyncio.StreamWriter] = []
    received: asyncio.Queue[Message] = asyncio.Queue()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        parser = StreamParser()
        while data := await reader.read(65536):
            for message in parser.feed(data):
                received.put_nowait(message)
                assert isinstance(message, Request)
                writer.write(build_response(message, 200, to_tag="far").to_bytes())

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        for n in range(3):
            request = request_with_via(f"SIP/2.0/TCP 127.0.0.1:5999;n={n}")
            await layer.send(request, "TCP", "127.0.0.1", port)
            await asyncio.wait_for(received.get(), TIMEOUT)
        assert len(connections) == 1
        await recorder.wait_for(3)
        sources = {source[:3] for _, source in recorder.received}
        assert sources == {("TCP", "127.0.0.1", port)}
        assert all(isinstance(m, Response) and m.status == 200 for m, _ in recorder.received)
        # The peer closes; the next send opens a fresh connection.
        connections[0].close()
        await wait_until(lambda: layer.connection_count == 0)
        await layer.send(request_with_via("SIP/2.0/TCP 127.0.0.1:5999"), "TCP", "127.0.0.1", port)
        await asyncio.wait_for(received.get(), TIMEOUT)
        assert len(connections) == 2
    finally:
        for writer in connections:
            writer.close()
        server.close()


async def test_tcp_send_to_a_closed_port_raises(make_layer: LayerFactory) -> None:
    layer, _, _ = await make_layer()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(OSError):
            await layer.send(request_with_via("SIP/2.0/TCP 127.0.0.1:1"), "TCP", "127.0.0.1", port)


# ---------------------------------------------------------------------------
# Pure helpers


def test_salvage_reads_a_request_the_parser_refused() -> None:
    settings = SIPSettings()
    data = sip_request(via="SIP/2.0/UDP 192.0.2.1").replace(b"OPTIONS sip:", b"OPTIONS  sip:")
    request = salvage_request(data, settings)
    assert request is not None and request.method == "OPTIONS"
    assert request.top_via.host == "192.0.2.1"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x01\x02",
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\r\n",
        b"OPTIONS sip:a@b SIP/2.0\r\nFrom: <sip:x@y>\r\n\r\n",  # no Via
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/7.0/UDP h\r\n\r\n",  # Via unreadable
        b"<html> hello there\r\n\r\n",
    ],
)
def test_salvage_refuses_what_cannot_be_answered(data: bytes) -> None:
    assert salvage_request(data, SIPSettings()) is None


def test_stateless_tag_is_stable_per_request() -> None:
    one = request_with_via("SIP/2.0/UDP 192.0.2.1")
    again = parse_datagram(one.to_bytes())
    other = request_with_via("SIP/2.0/UDP 192.0.2.1")
    assert isinstance(again, Request)
    assert stateless_tag(one) == stateless_tag(again)
    assert stateless_tag(one) != stateless_tag(other)


def test_stats_sum_the_drop_reasons() -> None:
    layer = TransportLayer()
    layer.stats.dropped_malformed = 2
    layer.stats.dropped_send_error = 1
    assert layer.stats.dropped == 3
    assert layer.stats.as_dict()["dropped"] == 3


def test_rport_flag_serialises_without_a_value() -> None:
    via = Via("UDP", "192.0.2.1", 5060, {"branch": "z9hG4bKa"}).with_params(rport=None)
    assert str(via) == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa;rport"


# ---------------------------------------------------------------------------
# uvloop (what the CLI runs on)


def test_round_trip_on_the_cli_event_loop() -> None:
    factory = event_loop_factory()

    async def scenario() -> tuple[int, int, str]:
        recorder = Recorder()
        layer = TransportLayer(recorder)
        recorder.layer = layer
        listener = await layer.listen("127.0.0.1", 0)
        try:
            # uvloop has no sock_sendto: a blocking client in a thread.
            udp = await asyncio.to_thread(options_over_udp, ("127.0.0.1", listener.port))
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            writer.write(sip_request(via="SIP/2.0/TCP 127.0.0.1:5999"))
            (tcp,) = await read_messages(reader, 1)
            writer.close()
            assert udp is not None and isinstance(tcp, Response)
            return udp.status, tcp.status, type(asyncio.get_running_loop()).__module__
        finally:
            await layer.close()

    with asyncio.Runner(loop_factory=factory) as runner:
        udp_status, tcp_status, loop_module = runner.run(scenario())
    assert (udp_status, tcp_status) == (200, 200)
    try:
        import uvloop  # noqa: F401
    except ImportError:
        assert loop_module.startswith("asyncio")
    else:
        assert loop_module.startswith("uvloop")
