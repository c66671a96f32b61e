"""Whole calls through the gateway in one process, without sockets or SIPp
(issue 12, deliverable 6): a quick measure of the CPU a call costs, for
iterating on the hot path between runs of ``../shared/bench``.

The gateway is wired as ``gateway.web.app`` wires it — UDP transport layer,
:class:`SIPService`, transaction layer, :class:`CallRouter` with in-memory
admission, the credit meter, Prometheus metrics — but its UDP socket is a
fake datagram transport (:meth:`sip.transport.TransportLayer.attach_datagram`)
and the call records go to a counting sink instead of the database.  The
PBX and the carrier are played in this process: each datagram the gateway
sends is answered the way the bench's SIPp scenarios answer it
(``../shared/bench/scenarios``: 100, 180, 200, ACK, BYE, 200; with
``--mode auth`` the first INVITE gets a 407 and is sent again with
credentials).  Only the gateway's own work is timed: the CPU
(``time.process_time``) spent from a datagram's arrival until the event
loop is idle again, summed over every datagram; the peers' work is not.

    .venv/bin/python loadtests/bench_calls.py [--mode ip|auth] [--calls 2000] [--runs 5]

Prints, per run and as the median of the runs: µs of gateway CPU per call
and per SIP message received.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import re
import statistics
import time
from collections import deque
from decimal import Decimal
from typing import Any

from admission import MemoryAdmission
from gateway.billing.cdr import CallRecordEntry
from gateway.billing.credit import CreditMeter
from gateway.config.settings import CarrierSettings
from gateway.proxy.directory import Directory, ProfileEntry
from gateway.proxy.registrar import LocationService
from gateway.proxy.router import CallRouter
from gateway.proxy.service import SIPService
from gateway.web.metrics import Metrics
from sip.auth import parse_challenge
from sip.digest import DigestRealm, authorize, choose_challenge, ha1
from sip.transaction import TransactionLayer
from sip.transport import TransportLayer
from sip.uri import parse_uri

GATEWAY = ("127.0.0.10", 5060)
PBX_IP = ("127.0.0.21", 5061)  # the IP-authenticated profile's address
PBX_AUTH = ("127.0.0.22", 5062)  # the digest profile's PBX
CARRIER = ("127.0.0.30", 5090)
REALM = "trunk.test"
USER, PASSWORD = "pbx1", "secret1"
DIALLED = "+14155550123"

SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.21\r\ns=-\r\nc=IN IP4 127.0.0.21\r\nt=0 0\r\n"
    "m=audio 17362 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n"
)


class Records:
    """The call-record writer's place: counts what it is given."""

    def __init__(self) -> None:
        self.count = 0

    def submit(self, entry: CallRecordEntry) -> None:
        self.count += 1


class Wire:
    """The fake UDP socket of the gateway: what it sends, by destination."""

    def __init__(self) -> None:
        self.outbox: dict[tuple[str, int], deque[bytes]] = {}

    # asyncio.DatagramTransport, as far as the transport layer uses it
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return GATEWAY if name == "sockname" else default

    def is_closing(self) -> bool:
        return False

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.outbox.setdefault((addr[0], addr[1]), deque()).append(data)

    def close(self) -> None:
        pass

    def take(self, to: tuple[str, int]) -> list[bytes]:
        box = self.outbox.get(to)
        if not box:
            return []
        out = list(box)
        box.clear()
        return out


def directory() -> Directory:
    ip = ProfileEntry(
        id=1, account_id=1, name="ip", auth_mode="ip", sip_username="ip-1", ha1={},
        ip=PBX_IP[0], port=PBX_IP[1], channel_limit=300, account="bench",
        credit=Decimal(10**9),
    )  # fmt: skip
    digest = ProfileEntry(
        id=2, account_id=1, name="digest", auth_mode="registration", sip_username=USER,
        ha1={alg: ha1(USER, REALM, PASSWORD, alg) for alg in ("MD5", "SHA-256")},
        ip=None, port=None, channel_limit=300, account="bench", credit=Decimal(10**9),
    )  # fmt: skip
    return Directory([ip, digest], {}, version=1, rates={"": Decimal("0.01")})


def header(data: bytes, name: bytes) -> bytes:
    match = re.search(rb"^" + name + rb":\s*(.*?)\r$", data, re.MULTILINE | re.IGNORECASE)
    assert match is not None, (name, data[:200])
    return match.group(1)


def invite(n: int, pbx: tuple[str, int], cseq: int = 1, authorization: str = "") -> bytes:
    host, port = pbx
    auth = f"Proxy-Authorization: {authorization}\r\n" if authorization else ""
    return (
        f"INVITE sip:{DIALLED}@{GATEWAY[0]}:{GATEWAY[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-{n}-{cseq};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:pbx@{host}:{port}>;tag=f{n}\r\n"
        f"To: <sip:{DIALLED}@{GATEWAY[0]}:{GATEWAY[1]}>\r\n"
        f"Call-ID: bench-{n}@{host}\r\n"
        f"CSeq: {cseq} INVITE\r\n"
        f"Contact: <sip:pbx@{host}:{port}>\r\n"
        f"{auth}"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n{SDP}"
    ).encode()


def in_dialog(
    method: str, n: int, pbx: tuple[str, int], *, cseq: int, to: bytes, route: bytes, branch: str
) -> bytes:
    """ACK or BYE of the PBX, along the route set the 200 gave (RFC 3261 §12.2)."""
    host, port = pbx
    routes = f"Route: {route.decode()}\r\n" if route else ""
    return (
        f"{method} sip:{DIALLED}@{CARRIER[0]}:{CARRIER[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-{n}-{branch};rport\r\n"
        f"{routes}"
        "Max-Forwards: 70\r\n"
        f"From: <sip:pbx@{host}:{port}>;tag=f{n}\r\n"
        f"To: {to.decode()}\r\n"
        f"Call-ID: bench-{n}@{host}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def response_to(request: bytes, status: int, reason: str, *, tag: str, body: str = "") -> bytes:
    """The carrier's answer to what the gateway sent it (its Vias, From,
    To with the carrier's tag, Call-ID, CSeq; Record-Route copied)."""
    head, _, _ = request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")[1:]
    keep = [
        line
        for line in lines
        if line[:4].lower() in (b"via:", b"from", b"call", b"cseq", b"reco")
        and not line.lower().startswith(b"max-")
    ]
    to = header(request, b"To")
    if b";tag=" not in to:
        to += f";tag={tag}".encode()
    extra = f"Contact: <sip:{DIALLED}@{CARRIER[0]}:{CARRIER[1]}>\r\n" if status < 300 else ""
    if body:
        extra += "Content-Type: application/sdp\r\n"
    return (
        f"SIP/2.0 {status} {reason}\r\n".encode()
        + b"\r\n".join(keep)
        + b"\r\nTo: "
        + to
        + f"\r\n{extra}Content-Length: {len(body)}\r\n\r\n{body}".encode()
    )


class Bench:
    """One gateway, its two peers, and the CPU the gateway spends."""

    def __init__(self) -> None:
        self.layer = TransactionLayer()
        self.transport = TransportLayer()
        self.wire = Wire()
        self.endpoint = self.transport.attach_datagram(self.wire)  # type: ignore[arg-type]
        self.records = Records()
        router_box: list[CallRouter] = []
        self.metrics = Metrics(
            lambda: router_box[0].directory, dict, transport=lambda: self.transport.stats
        )
        self.service = SIPService(self.transport, self.layer, self.metrics)
        self.transport.handler = self.service
        self.admission = MemoryAdmission()
        self.router = CallRouter(
            layer=self.layer,
            io=self.service,
            directory=directory(),
            admission=self.admission,
            registrar=LocationService(),
            digest=DigestRealm(REALM, b"k" * 32),
            carrier=CarrierSettings(
                uri=parse_uri(f"sip:{CARRIER[0]}:{CARRIER[1]}"),
                transport="UDP",
                sources=((CARRIER[0], None),),
            ),
            own_addresses=[GATEWAY],
            advertised=GATEWAY,
            observer=self.metrics,
            meter=CreditMeter(),
            records=self.records,
        )
        router_box.append(self.router)
        self.service.router = self.router
        self.router.apply_directory(self.router.directory)
        self.cpu = 0.0
        self.received = 0

    async def arrive(self, data: bytes, source: tuple[str, int]) -> None:
        """One datagram to the gateway; timed until the loop is idle."""
        start = time.process_time()
        self.endpoint.datagram_received(data, source)
        for _ in range(4):  # the tasks it spawned (sends, admission)
            await asyncio.sleep(0)
        self.cpu += time.process_time() - start
        self.received += 1

    def sent(self, to: tuple[str, int]) -> list[bytes]:
        return self.wire.take(to)

    async def call(self, n: int, pbx: tuple[str, int], auth: bool) -> None:
        cseq = 1
        first = invite(n, pbx, cseq)
        await self.arrive(first, pbx)
        if auth:
            (challenge_bytes,) = [d for d in self.sent(pbx) if d.startswith(b"SIP/2.0 407")]
            # ACK of the 407 (the INVITE's own transaction, RFC 3261 §17.1.1.3)
            to = header(challenge_bytes, b"To")
            ack = in_dialog("ACK", n, pbx, cseq=cseq, to=to, route=b"", branch=str(cseq))
            await self.arrive(ack, pbx)
            # The first challenge (MD5, as SIPp answers it).
            challenge = choose_challenge(
                [parse_challenge(header(challenge_bytes, b"Proxy-Authenticate").decode())]
            )
            assert challenge is not None
            uri = f"sip:{DIALLED}@{GATEWAY[0]}:{GATEWAY[1]}"
            credentials = authorize(
                challenge, username=USER, password=PASSWORD, method="INVITE", uri=uri,
                cnonce=f"c{n}",
            )  # fmt: skip
            cseq = 2
            await self.arrive(invite(n, pbx, cseq, str(credentials)), pbx)
        (forwarded,) = [d for d in self.sent(CARRIER) if d.startswith(b"INVITE")]
        for status, reason, body in ((100, "Trying", ""), (180, "Ringing", ""), (200, "OK", SDP)):
            answer = response_to(forwarded, status, reason, tag=f"c{n}", body=body)
            await self.arrive(answer, CARRIER)
        answers = self.sent(pbx)
        (ok,) = [d for d in answers if d.startswith(b"SIP/2.0 200")]
        to, route = (
            header(ok, b"To"),
            b", ".join(
                m.group(1) for m in re.finditer(rb"^Record-Route:\s*(.*?)\r$", ok, re.MULTILINE)
            ),
        )
        ack = in_dialog("ACK", n, pbx, cseq=cseq, to=to, route=route, branch="ack")
        await self.arrive(ack, pbx)
        bye = in_dialog("BYE", n, pbx, cseq=cseq + 1, to=to, route=route, branch="bye")
        await self.arrive(bye, pbx)
        (relayed,) = [d for d in self.sent(CARRIER) if d.startswith(b"BYE")]
        await self.arrive(response_to(relayed, 200, "OK", tag=f"c{n}"), CARRIER)
        (bye_ok,) = [d for d in self.sent(pbx) if d.startswith(b"SIP/2.0 200")]
        assert b"BYE" in header(bye_ok, b"CSeq")
        self.sent(CARRIER)  # the ACK of the 200, forwarded


async def run(mode: str, calls: int) -> tuple[float, float]:
    bench = Bench()
    pbx = PBX_AUTH if mode == "auth" else PBX_IP
    for n in range(calls):
        await bench.call(n, pbx, auth=mode == "auth")
    assert bench.records.count == calls, (bench.records.count, calls)
    assert not any((await bench.admission.counts()).values()), "a channel left in use"
    per_call = bench.cpu / calls * 1e6
    per_message = bench.cpu / bench.received * 1e6
    await bench.service.close()
    return per_call, per_message


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("ip", "auth"), default="ip")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    per_call, per_message = [], []
    for i in range(args.runs):
        gc.collect()  # the previous run's garbage is not this run's cost
        call_us, message_us = asyncio.run(run(args.mode, args.calls))
        per_call.append(call_us)
        per_message.append(message_us)
        print(f"run {i + 1}: {call_us:8.1f} µs/call  {message_us:6.1f} µs/message received")
    print(
        f"{args.mode}: median {statistics.median(per_call):.1f} µs of gateway CPU per call, "
        f"{statistics.median(per_message):.1f} µs per message received "
        f"(min {min(per_call):.1f} µs per call; {args.calls} calls x {args.runs} runs)"
    )


if __name__ == "__main__":
    main()
