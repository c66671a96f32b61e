"""Proxy core primitives (RFC 3261 §16): forwarding, loops, routes, CANCEL."""

from __future__ import annotations

import pytest

from sip.headers import Address, Via
from sip.message import Request, Response
from sip.parser import parse_datagram
from sip.proxy import (
    DEFAULT_MAX_FORWARDS,
    ProxyError,
    build_cancel,
    check_request,
    forward_request,
    is_loop,
    make_branch,
    own_address_matcher,
    pop_own_routes,
    relay_response,
)
from sip.uri import URI, parse_uri
from tests.support.messages import INVITE, RESPONSE

US = ("192.0.2.1", 5060)
own = own_address_matcher([US])


def is_own_uri(uri: URI) -> bool:
    return own(uri.host, uri.port)


def is_own_via(via: Via) -> bool:
    return own(via.host, via.port)


def invite(data: bytes = INVITE) -> Request:
    msg = parse_datagram(data)
    assert isinstance(msg, Request)
    return msg


def our_via(request: Request, unique: str = "1") -> Via:
    return Via("UDP", *US, {"branch": make_branch(request, unique), "rport": None})


def test_forward_request_sets_uri_max_forwards_record_route_and_via() -> None:
    req = invite()
    out = forward_request(
        req,
        via=our_via(req),
        target=parse_uri("sip:+14155550123@198.51.100.7:5060"),
        record_route=Address.build("sip:192.0.2.1:5060;lr"),
    )
    again = parse_datagram(out.to_bytes())
    assert isinstance(again, Request)
    again.validate()
    assert again.uri_text == "sip:+14155550123@198.51.100.7:5060"
    assert again.max_forwards == 69
    assert [r.uri_text for r in again.record_routes] == ["sip:192.0.2.1:5060;lr"]
    assert again.top_via.host == "192.0.2.1" and len(again.vias) == 2
    assert again.body == req.body
    # The original is untouched (RFC 3261 §16.6 step 1: work on a copy).
    assert req.to_bytes() == INVITE


def test_forward_request_adds_max_forwards_when_missing() -> None:
    req = invite(INVITE.replace(b"Max-Forwards: 70\r\n", b""))
    out = parse_datagram(forward_request(req, via=our_via(req)).to_bytes())
    assert out.max_forwards == DEFAULT_MAX_FORWARDS


def test_max_forwards_zero_is_483() -> None:
    req = invite(INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards: 0"))
    with pytest.raises(ProxyError) as info:
        check_request(req, is_own_via)
    assert info.value.status == 483


def test_loop_is_detected_and_spiral_is_not() -> None:
    req = invite()
    forwarded = forward_request(req, via=our_via(req))
    # The same request comes back to us through another hop: a loop.
    back = parse_datagram(forwarded.to_bytes())
    assert isinstance(back, Request)
    back.push_via(Via("UDP", "198.51.100.9", 5060, {"branch": "z9hG4bKother"}))
    assert is_loop(back, is_own_via)
    with pytest.raises(ProxyError) as info:
        check_request(back, is_own_via)
    assert info.value.status == 482
    # It comes back with another Request-URI: a spiral, allowed.
    back.uri = parse_uri("sip:alice@192.0.2.99")
    assert not is_loop(back, is_own_via)
    # A Via of someone else's with our branch shape is not ours.
    assert not is_loop(req, is_own_via)


def test_pop_own_routes_loose_routing() -> None:
    data = INVITE.replace(
        b"Route: <sip:proxy1.example.net;lr>, <sip:proxy2.example.net;lr>",
        b"Route: <sip:192.0.2.1:5060;lr>, <sip:proxy2.example.net;lr>",
    )
    req = invite(data)
    assert pop_own_routes(req, is_own_uri)
    assert [r.uri.host for r in parse_datagram(req.to_bytes()).routes] == ["proxy2.example.net"]
    # Not ours: nothing removed.
    assert not pop_own_routes(req, is_own_uri)
    # A Route field of ours alone goes entirely.
    only = invite(data.replace(b", <sip:proxy2.example.net;lr>", b""))
    assert pop_own_routes(only, is_own_uri)
    assert "route" not in parse_datagram(only.to_bytes()).headers


def test_build_cancel_matches_the_invite() -> None:
    req = invite()
    forwarded = forward_request(req, via=our_via(req))
    cancel = parse_datagram(build_cancel(forwarded).to_bytes())
    assert isinstance(cancel, Request)
    cancel.validate()
    assert cancel.method == "CANCEL" and cancel.uri_text == forwarded.uri_text
    assert [str(v) for v in cancel.vias] == [str(forwarded.top_via)]
    assert (cancel.cseq.number, cancel.cseq.method) == (forwarded.cseq.number, "CANCEL")
    assert cancel.call_id == forwarded.call_id
    assert cancel.from_.tag == forwarded.from_.tag
    assert [r.uri_text for r in cancel.routes] == [r.uri_text for r in forwarded.routes]


def test_relay_response_pops_our_via() -> None:
    resp = parse_datagram(RESPONSE)
    assert isinstance(resp, Response)
    out = parse_datagram(relay_response(resp).to_bytes())
    assert [v.branch for v in out.vias] == ["z9hG4bK776asdhds"]
    with pytest.raises(ProxyError):
        relay_response(parse_datagram(out.to_bytes()))  # type: ignore[arg-type]
