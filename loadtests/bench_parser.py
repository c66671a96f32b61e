"""Parser benchmark (issue 2, deliverable 8).

Measures, on one core, the work a stateful proxy does for every message it
relays: parse the datagram, read the top Via, Call-ID, CSeq and From tag,
push a Via of its own, serialise.  For a typical ~800-byte INVITE and its
200 OK.  Prints messages per second (median of several runs).

    python loadtests/bench_parser.py [--seconds 1.0] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from sip.headers import Via
from sip.parser import parse_datagram

INVITE = (
    b"INVITE sip:+14155550123@trunk.example.net SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK-524287-1---6a5c8f0e2b1d4f3a;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"Contact: <sip:alice@203.0.113.10:5060;transport=udp>\r\n"
    b"To: <sip:+14155550123@trunk.example.net>\r\n"
    b'From: "Alice Example" <sip:alice@trunk.example.net>;tag=9fxced76sl\r\n'
    b"Call-ID: 3848276298220188511@203.0.113.10\r\n"
    b"CSeq: 2 INVITE\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, OPTIONS, INFO, UPDATE\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Supported: replaces, timer\r\n"
    b"User-Agent: Asterisk PBX 20.5.0\r\n"
    b"Content-Length: 229\r\n"
    b"\r\n"
    b"v=0\r\n"
    b"o=- 1700000000 1700000000 IN IP4 203.0.113.10\r\n"
    b"s=Asterisk\r\n"
    b"c=IN IP4 203.0.113.10\r\n"
    b"t=0 0\r\n"
    b"m=audio 17362 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\n"
    b"a=sendrecv\r\n"
)

OK = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKgw.0b1c2d3e4f;rport=5060\r\n"
    b"Via: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK-524287-1---6a5c8f0e2b1d4f3a;rport=5060;"
    b"received=203.0.113.10\r\n"
    b"Record-Route: <sip:192.0.2.1;lr>\r\n"
    b"To: <sip:+14155550123@trunk.example.net>;tag=as1f2e3d4c\r\n"
    b'From: "Alice Example" <sip:alice@trunk.example.net>;tag=9fxced76sl\r\n'
    b"Call-ID: 3848276298220188511@203.0.113.10\r\n"
    b"CSeq: 2 INVITE\r\n"
    b"Contact: <sip:+14155550123@198.51.100.7:5060>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

OUR_VIA = Via("UDP", "192.0.2.1", 5060, {"branch": "z9hG4bKgw.0b1c2d3e4f", "rport": None})


def round_trip(data: bytes) -> bytes:
    msg = parse_datagram(data)
    via = msg.top_via
    _ = via.branch, msg.call_id, msg.cseq.number, msg.from_.tag
    msg.push_via(OUR_VIA)
    return msg.to_bytes()


def measure(data: bytes, seconds: float) -> float:
    """Round trips per second over about ``seconds``."""
    n = 0
    batch = 1000
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            round_trip(data)
        n += batch
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one run")
    parser.add_argument("--runs", type=int, default=5, help="runs per message (median reported)")
    args = parser.parse_args()
    round_trip(INVITE)  # warm caches
    for name, data in (("INVITE", INVITE), ("200 OK", OK)):
        rates = [measure(data, args.seconds) for _ in range(args.runs)]
        print(
            f"{name:7} {len(data):4d} bytes: median {statistics.median(rates):9,.0f}/s "
            f"(min {min(rates):,.0f}, max {max(rates):,.0f}, {args.runs} runs of {args.seconds} s)"
        )


if __name__ == "__main__":
    main()
