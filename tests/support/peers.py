"""SIP peers on plain UDP sockets for end-to-end tests of the router.

SIPp covers the call flows a PBX and a carrier usually produce; these peers
let a test write each message itself and see each one the gateway sends
(retransmissions included), for the edges SIPp cannot express easily.
:func:`trunk` starts a gateway with an IP PBX, a registration profile and
a carrier on fresh loopback addresses.
"""

from __future__ import annotations

import contextlib
import socket
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from gateway.manage import profiles, rates
from gateway.store.database import Store
from sip.message import Message, Request, Response
from sip.parser import parse_datagram
from tests.support.harness import GatewayHome, ServedGateway, free_port, random_loopback_block

ACCOUNT = "acme"  # the account of every profile :func:`trunk` creates

NUMBER = "+14155550123"
REDIS_URL = "redis://127.0.0.1:6379/0"
WAIT = 3.0  # seconds a peer waits for one message
T1 = 0.05  # Timer B/H = 64*T1 = 3.2 s


@dataclass
class Peer:
    """A SIP peer on one UDP socket: sends what a test writes, and hands
    back what it receives (retransmissions included, in order)."""

    host: str
    port: int
    sock: socket.socket = field(init=False)
    seen: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((self.host, self.port))

    def close(self) -> None:
        self.sock.close()

    def send(self, data: str | bytes, to: tuple[str, int]) -> None:
        self.sock.sendto(data.encode() if isinstance(data, str) else data, to)

    def expect(self, match: Callable[[Message], bool], timeout: float = WAIT) -> Message:
        """The next received message ``match`` accepts; others are kept in ``seen``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.host}:{self.port} waited in vain; saw {self.seen}")
            self.sock.settimeout(remaining)
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            message = parse_datagram(data)
            if match(message):
                return message
            self.seen.append(message)

    def request(self, method: str, timeout: float = WAIT) -> Request:
        msg = self.expect(lambda m: isinstance(m, Request) and m.method == method, timeout)
        assert isinstance(msg, Request)
        return msg

    def response(self, status: int, method: str, timeout: float = WAIT) -> Response:
        msg = self.expect(
            lambda m: isinstance(m, Response) and m.status == status and m.cseq.method == method,
            timeout,
        )
        assert isinstance(msg, Response)
        return msg

    @property
    def via(self) -> str:
        return f"SIP/2.0/UDP {self.host}:{self.port};branch=z9hG4bK{uuid.uuid4().hex};rport"

    @property
    def contact(self) -> str:
        return f"<sip:peer@{self.host}:{self.port}>"


def answer(
    request: Request,
    status: int,
    *,
    to_tag: str = "callee",
    contact: str = "",
    extra: Sequence[str] = (),
) -> str:
    """A UAS's response, echoing what RFC 3261 §8.2.6 and §12.1.1 say;
    ``extra``: more header lines."""
    lines = [f"SIP/2.0 {status} X"]
    lines += [f"Via: {v}" for v in request.headers.get_all("via")]
    lines += [f"Record-Route: {v}" for v in request.headers.get_all("record-route")]
    to = request.headers.get("to") or ""
    if ";tag=" not in to:
        to += f";tag={to_tag}"
    lines += [
        f"From: {request.headers.get('from')}",
        f"To: {to}",
        f"Call-ID: {request.call_id}",
        f"CSeq: {request.headers.get('cseq')}",
    ]
    if contact:
        lines.append(f"Contact: {contact}")
    lines += [*extra, "Content-Length: 0"]
    return "\r\n".join(lines) + "\r\n\r\n"


def _lines(headers: Sequence[str]) -> str:
    return "".join(f"{header}\r\n" for header in headers)


@dataclass
class Setup:
    gateway: ServedGateway
    sip: tuple[str, int]
    pbx: Peer
    carrier: Peer
    reg: dict[str, str] = field(default_factory=dict)

    def channels(self) -> int:
        return int(self.gateway.healthz()["channels"][ACCOUNT]["pbx"])

    def wait_channels(self, expected: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.channels() != expected:
            assert time.monotonic() < deadline, f"channels: {self.channels()} != {expected}"
            time.sleep(0.05)

    def invite(self, call_id: str, *, max_forwards: int = 70, extra: Sequence[str] = ()) -> str:
        """The PBX's INVITE to the carrier (``extra``: more header lines)."""
        host, port = self.sip
        return (
            f"INVITE sip:{NUMBER}@{host}:{port} SIP/2.0\r\n"
            f"Via: {self.pbx.via}\r\n"
            f"Max-Forwards: {max_forwards}\r\n"
            f"From: <sip:pbx@{self.pbx.host}>;tag=caller\r\n"
            f"To: <sip:{NUMBER}@{host}>\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 1 INVITE\r\n"
            f"Contact: {self.pbx.contact}\r\n"
            f"{_lines(extra)}Content-Length: 0\r\n\r\n"
        )


REGISTERED_NUMBER = "+441134960001"  # assigned to the registration profile "reg"
UNASSIGNED_NUMBER = "+441134960002"  # in the account's pool, assigned to nobody


def ip_profile_home(home: GatewayHome, pbx: tuple[str, int]) -> dict[str, str]:
    """An account with an IP profile "pbx" and a registration profile "reg"
    (returned: its username and password), numbers as named above, a free
    default rate and credit on both profiles.  Made in-process through the
    service layer (the CLI's own tests drive the commands)."""

    async def build(store: Store) -> dict[str, str]:
        await profiles.create_account(
            store, name=ACCOUNT, email="ops@acme.example", balance="10000"
        )
        await profiles.create_profile(
            store, account=ACCOUNT, name="pbx", auth="ip", ip=pbx[0], port=pbx[1]
        )
        reg = await profiles.create_profile(store, account=ACCOUNT, name="reg", auth="registration")
        await profiles.add_numbers(
            store, account=ACCOUNT, numbers=[REGISTERED_NUMBER, UNASSIGNED_NUMBER]
        )
        await profiles.assign_number(store, REGISTERED_NUMBER, profile="reg")
        await rates.set_rate(store, "", "0")
        for name in ("pbx", "reg"):
            await profiles.allocate_credit(store, name, "1000", account=ACCOUNT)
        assert reg.password is not None
        return {"sip_username": reg.sip_username, "password": reg.password}

    return home.with_store(build)


TIMERS = f"t1 = {T1}\nt2 = {T1 * 8}\nt4 = {T1 * 10}"


@contextlib.contextmanager
def trunk(home: GatewayHome, sip_config: str = TIMERS) -> Iterator[Setup]:
    """A gateway with an IP PBX, a registration profile and a carrier, on
    fresh loopback addresses; ``sip_config`` goes into the config's [sip]
    table (whole tables may follow it)."""
    net = random_loopback_block()
    pbx = Peer(net.pbx(1), free_port(net.pbx(1)))
    carrier = Peer(net.carrier, free_port(net.carrier))
    try:
        reg = ip_profile_home(home, (pbx.host, pbx.port))
        gateway = home.serve(
            host=net.gateway,
            carrier=(carrier.host, carrier.port),
            carrier_sources=[carrier.host],
            sip_config=sip_config,
            log_level="debug",
        )
        yield Setup(gateway, gateway.sip, pbx, carrier, reg)
    finally:
        pbx.close()
        carrier.close()


def from_pbx(
    setup: Setup,
    method: str,
    call_id: str,
    to: str | None,
    cseq: int,
    *,
    extra: Sequence[str] = (),
) -> str:
    """An in-dialog request of the PBX towards the carrier's Contact, with
    the gateway's Record-Route as its Route (RFC 3261 §12.2.1.1)."""
    pbx, carrier = setup.pbx, setup.carrier
    host, port = setup.sip
    return (
        f"{method} sip:peer@{carrier.host}:{carrier.port} SIP/2.0\r\n"
        f"Via: {pbx.via}\r\n"
        f"Route: <sip:{host}:{port};lr>\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:pbx@{pbx.host}>;tag=caller\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Contact: {pbx.contact}\r\n"
        f"{_lines(extra)}Content-Length: 0\r\n\r\n"
    )


def from_carrier(
    setup: Setup,
    method: str,
    call_id: str,
    callee: str | None,
    cseq: int,
    *,
    extra: Sequence[str] = (),
) -> str:
    """An in-dialog request of the carrier (its From: ``callee``, the To of
    its 2xx) towards the PBX's Contact, along the gateway's Record-Route."""
    pbx, carrier = setup.pbx, setup.carrier
    host, port = setup.sip
    return (
        f"{method} sip:peer@{pbx.host}:{pbx.port} SIP/2.0\r\n"
        f"Via: {carrier.via}\r\n"
        f"Route: <sip:{host}:{port};lr>\r\n"
        "Max-Forwards: 70\r\n"
        f"From: {callee}\r\n"
        f"To: <sip:pbx@{pbx.host}>;tag=caller\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Contact: {carrier.contact}\r\n"
        f"{_lines(extra)}Content-Length: 0\r\n\r\n"
    )


def carrier_invite(setup: Setup, number: str, call_id: str) -> str:
    host, port = setup.sip
    carrier = setup.carrier
    return (
        f"INVITE sip:{number}@{host}:{port} SIP/2.0\r\n"
        f"Via: {carrier.via}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:+12125550100@{carrier.host}>;tag=carrier\r\n"
        f"To: <sip:{number}@{host}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: {carrier.contact}\r\n"
        "Content-Length: 0\r\n\r\n"
    )


def scrape(setup: Setup) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``GET /metrics``, as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(setup.gateway.http_url + "/metrics", timeout=5) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def answers(cseq: int) -> Callable[[Message], bool]:
    """Matches the response to the request with this CSeq number."""
    return lambda m: isinstance(m, Response) and m.cseq.number == cseq


def answered_call(
    setup: Setup,
    call_id: str,
    *,
    invite_extra: tuple[str, ...] = (),
    ok_extra: tuple[str, ...] = (),
) -> str:
    """An outbound call, answered and acknowledged; returns the To of the
    200 (the callee's side of the dialog)."""
    pbx, carrier = setup.pbx, setup.carrier
    pbx.send(setup.invite(call_id, extra=invite_extra), setup.sip)
    invite = carrier.request("INVITE")
    carrier.send(answer(invite, 200, contact=carrier.contact, extra=ok_extra), setup.sip)
    ok = pbx.expect(lambda m: isinstance(m, Response) and m.call_id == call_id and m.status == 200)
    to = ok.headers.get("to")
    assert to is not None
    pbx.send(from_pbx(setup, "ACK", call_id, to, 1), setup.sip)
    carrier.expect(lambda m: isinstance(m, Request) and m.method == "ACK" and m.call_id == call_id)
    return to


def gateway_ends_call(setup: Setup, call_id: str) -> None:
    """The gateway ends ``call_id`` itself (credit, deletion...): both sides
    get its BYE and answer it."""
    for peer in (setup.carrier, setup.pbx):
        bye = peer.expect(
            lambda m: isinstance(m, Request) and m.method == "BYE" and m.call_id == call_id,
            timeout=10.0,
        )
        assert isinstance(bye, Request)
        peer.send(answer(bye, 200), setup.sip)


def pbx_hangs_up(setup: Setup, call_id: str, to: str, cseq: int = 2) -> None:
    setup.pbx.send(from_pbx(setup, "BYE", call_id, to, cseq), setup.sip)
    bye = setup.carrier.request("BYE")
    setup.carrier.send(answer(bye, 200), setup.sip)
    setup.pbx.expect(answers(cseq))
