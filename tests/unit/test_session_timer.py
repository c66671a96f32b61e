"""Session-Expires and Min-SE as a proxy reads and enforces them (RFC 4028)."""

from __future__ import annotations

import pytest

from sip.errors import ParseError
from sip.message import Request
from sip.parser import parse_datagram
from sip.session_timer import (
    MIN_SE_FLOOR,
    SessionExpires,
    TooSmall,
    apply_minimum,
    min_se,
    session_expires,
)


def invite(*headers: str) -> Request:
    lines = [
        "INVITE sip:+14155550123@gw.example SIP/2.0",
        "Via: SIP/2.0/UDP pbx.example;branch=z9hG4bK-st1",
        "Max-Forwards: 70",
        "From: <sip:pbx@pbx.example>;tag=a",
        "To: <sip:+14155550123@gw.example>",
        "Call-ID: st-1",
        "CSeq: 1 INVITE",
        *headers,
        "Content-Length: 0",
    ]
    message = parse_datagram(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Session-Expires: 1800", SessionExpires(1800)),
        ("Session-Expires: 1800;refresher=uac", SessionExpires(1800, "uac")),
        ("Session-Expires: 90 ; refresher = UAS", SessionExpires(90, "uas")),
        ("x: 4000;refresher=uas", SessionExpires(4000, "uas")),  # compact form (§4)
        ("Session-Expires: 600;other=1", SessionExpires(600)),  # generic-param ignored
    ],
)
def test_session_expires_is_read(header: str, expected: SessionExpires) -> None:
    assert session_expires(invite(header)) == expected


def test_no_session_expires() -> None:
    assert session_expires(invite()) is None
    assert min_se(invite()) is None


@pytest.mark.parametrize(
    "header",
    [
        "Session-Expires: ",
        "Session-Expires: -5",
        "Session-Expires: 0",
        "Session-Expires: 1e3",
        "Session-Expires: 99999999999",
        "Session-Expires: 1800;refresher=both",
        "Session-Expires: 1800;refresher",
        "Session-Expires: 1800;;",
        "Session-Expires: ١٨٠٠",  # Arabic-Indic digits are not DIGIT
    ],
)
def test_a_malformed_session_expires_is_a_parse_error(header: str) -> None:
    with pytest.raises(ParseError):
        session_expires(invite(header))


def test_two_session_expires_are_a_parse_error() -> None:
    with pytest.raises(ParseError):
        session_expires(invite("Session-Expires: 1800", "x: 900"))


def test_min_se_is_read() -> None:
    assert min_se(invite("Min-SE: 120")) == 120
    with pytest.raises(ParseError):
        min_se(invite("Min-SE: soon"))


def test_a_request_at_or_above_the_minimum_passes_untouched() -> None:
    request = invite("Session-Expires: 1800;refresher=uac", "Supported: timer")
    before = request.to_bytes()
    assert apply_minimum(request, MIN_SE_FLOOR) is None
    assert request.to_bytes() == before


def test_a_request_without_session_expires_passes_untouched() -> None:
    request = invite("Supported: timer")
    before = request.to_bytes()
    assert apply_minimum(request, 1800) is None
    assert request.to_bytes() == before


def test_a_uac_that_supports_timers_is_asked_for_a_longer_interval() -> None:
    """RFC 4028 §8.1: 422 with the proxy's Min-SE."""
    request = invite("Session-Expires: 60", "Supported: 100rel, timer")
    assert apply_minimum(request, MIN_SE_FLOOR) == TooSmall(MIN_SE_FLOOR)


def test_a_uac_without_timer_support_is_raised_to_the_minimum() -> None:
    """It could not retry after a 422: the proxy raises Session-Expires and
    Min-SE itself, keeping the refresher."""
    request = invite("Session-Expires: 60;refresher=uac", "Min-SE: 30")
    assert apply_minimum(request, 120) is None
    assert session_expires(request) == SessionExpires(120, "uac")
    assert min_se(request) == 120
    wire = request.to_bytes().decode()
    assert "Session-Expires: 120;refresher=uac\r\n" in wire
    assert "Min-SE: 120\r\n" in wire


def test_a_higher_min_se_is_never_lowered() -> None:
    request = invite("Session-Expires: 60", "Min-SE: 600")
    assert apply_minimum(request, 120) is None
    assert min_se(request) == 600
