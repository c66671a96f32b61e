"""Framing and bounds: datagrams and streams (RFC 3261 §7, §18.3)."""

from __future__ import annotations

import pytest

from sip.errors import ParseError
from sip.message import Request, Response
from sip.parser import FramingError, StreamParser, parse_datagram
from sip.settings import SIPSettings
from tests.support.messages import INVITE, RESPONSE


def test_leading_crlfs_are_ignored() -> None:
    msg = parse_datagram(b"\r\n\r\n" + INVITE)
    assert isinstance(msg, Request) and msg.to_bytes() == INVITE


def test_datagram_without_content_length_takes_the_rest() -> None:
    data = INVITE.replace(b"Content-Length: 4\r\n", b"")
    msg = parse_datagram(data)
    assert msg.body == b"v=0\n" and msg.content_length is None


def test_datagram_bytes_beyond_content_length_are_discarded() -> None:
    msg = parse_datagram(INVITE + b"garbage")
    assert msg.body == b"v=0\n" and msg.to_bytes() == INVITE


def test_content_length_beyond_the_datagram_is_an_error() -> None:
    with pytest.raises(ParseError, match="Content-Length larger than message"):
        parse_datagram(INVITE[:-1])


@pytest.mark.parametrize(
    ("data", "reason", "status"),
    [
        (b"", "Missing end of headers", 400),
        (b"INVITE sip:a@b SIP/2.0\r\nVia: x\r\n", "Missing end of headers", 400),
        (b"INVITE  sip:a@b SIP/2.0\r\n\r\n", "Bad request line", 400),
        (b"INVITE sip:a@b SIP/2.0 \r\n\r\n", "Bad request line", 400),
        (b"INV\x01TE sip:a@b SIP/2.0\r\n\r\n", "Bad request line", 400),
        (b"INVITE sip:a@b SIP/3.0\r\n\r\n", "Version Not Supported", 505),
        (b"INVITE sip:a@b HTTP/1.1\r\n\r\n", "Bad request line", 400),
        (b"SIP/2.0 2000 OK\r\n\r\n", "Bad status code", 400),
        (b"SIP/2.0 099 Weird\r\n\r\n", "Bad status code", 400),
        (b"SIP/1.0 200 OK\r\n\r\n", "Version Not Supported", 505),
        (b"INVITE sip:a@b SIP/2.0\r\nNo colon here\r\n\r\n", "Bad header line", 400),
        (b"INVITE sip:a@b SIP/2.0\r\nBad Name: x\r\n\r\n", "Bad header name", 400),
        (
            b"INVITE sip:a@b SIP/2.0\r\n folded: first\r\n\r\n",
            "Continuation line without a header",
            400,
        ),
        (
            b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 1\r\nl: 1\r\n\r\nx",
            "Duplicate Content-Length",
            400,
        ),
        (b"INVITE sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n", "Bad Content-Length", 400),
        (
            b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 99999999999\r\n\r\n",
            "Bad Content-Length",
            400,
        ),
    ],
)
def test_framing_errors(data: bytes, reason: str, status: int) -> None:
    with pytest.raises(ParseError) as info:
        parse_datagram(data)
    assert (info.value.reason, info.value.status) == (reason, status)


def test_bounds_on_size_headers_and_lines() -> None:
    small = SIPSettings(max_message_size=len(INVITE) - 1)
    with pytest.raises(ParseError) as info:
        parse_datagram(INVITE, small)
    assert info.value.status == 513
    many = INVITE.replace(b"Max-Forwards: 70\r\n", b"X-A: 1\r\n" * 300 + b"Max-Forwards: 70\r\n")
    with pytest.raises(ParseError, match="Too many headers"):
        parse_datagram(many)
    long_line = INVITE.replace(
        b"Max-Forwards: 70\r\n", b"X-Long: " + b"a" * 9000 + b"\r\nMax-Forwards: 70\r\n"
    )
    with pytest.raises(ParseError, match="Header line too long"):
        parse_datagram(long_line)
    parse_datagram(long_line, SIPSettings(max_line_length=10_000))


def test_stream_two_messages_in_one_segment() -> None:
    parser = StreamParser()
    messages = parser.feed(INVITE + RESPONSE)
    assert [type(m) for m in messages] == [Request, Response]
    assert messages[0].to_bytes() == INVITE and messages[1].to_bytes() == RESPONSE
    assert parser.buffered == 0


def test_stream_one_message_in_many_segments() -> None:
    parser = StreamParser()
    out = []
    for i in range(0, len(INVITE), 7):
        out.extend(parser.feed(INVITE[i : i + 7]))
    assert len(out) == 1 and out[0].to_bytes() == INVITE and out[0].body == b"v=0\n"


def test_stream_keepalives_are_counted_and_skipped() -> None:
    parser = StreamParser()
    assert parser.feed(b"\r\n\r\n") == []
    assert parser.keepalives == 1
    messages = parser.feed(b"\r\n\r\n" + INVITE)
    assert parser.keepalives == 2 and len(messages) == 1
    for piece in (b"\r", b"\n", b"\r", b"\n"):  # one ping split over four segments
        assert parser.feed(piece) == []
    assert parser.keepalives == 3


def test_stream_requires_content_length() -> None:
    with pytest.raises(ParseError, match="Missing Content-Length"):
        StreamParser().feed(INVITE.replace(b"Content-Length: 4\r\n", b""))


def test_stream_buffer_is_bounded() -> None:
    parser = StreamParser(SIPSettings(max_message_size=1000))
    with pytest.raises(ParseError) as info:
        parser.feed(b"INVITE sip:a@b SIP/2.0\r\nX: " + b"a" * 2000)
    assert info.value.status == 513
    parser = StreamParser(SIPSettings(max_message_size=1000))
    with pytest.raises(ParseError):
        parser.feed(INVITE.replace(b"Content-Length: 4", b"Content-Length: 5000"))


def test_stream_error_keeps_the_messages_framed_before_it() -> None:
    parser = StreamParser()
    with pytest.raises(FramingError) as info:
        parser.feed(INVITE + b"GARBAGE WITHOUT VERSION\r\nVia: x\r\n\r\n")
    assert [m.to_bytes() for m in info.value.framed] == [INVITE]
    assert info.value.status == 400
    assert parser.unparsed.startswith(b"GARBAGE")
