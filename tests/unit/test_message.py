"""Messages: structured header access, changes, serialising, responses."""

from __future__ import annotations

import pytest

from sip.errors import ParseError
from sip.headers import Address, Via, canonical_name
from sip.message import Request, Response, build_response
from sip.parser import parse_datagram
from tests.support.messages import INVITE, RESPONSE


def invite() -> Request:
    msg = parse_datagram(INVITE)
    assert isinstance(msg, Request)
    return msg


def test_structured_fields() -> None:
    req = invite()
    req.validate()
    assert req.method == "INVITE" and req.uri.user == "+14155550123"
    via = req.top_via
    assert (via.transport, via.host, via.port, via.branch) == (
        "UDP",
        "203.0.113.10",
        5060,
        "z9hG4bK776asdhds",
    )
    assert via.has_rport and via.rport is None and via.rfc3261_branch
    assert req.call_id == "a84b4c76e66710@pc33.example.com"
    assert (req.cseq.number, req.cseq.method) == (314159, "INVITE")
    assert req.from_.tag == "1928301774" and req.from_.display_name == "Alice"
    assert req.to.tag is None
    assert req.max_forwards == 70 and req.content_length == 4 and req.body == b"v=0\n"
    assert req.content_type == "application/sdp"
    assert [r.uri.host for r in req.routes] == ["proxy1.example.net", "proxy2.example.net"]
    assert req.contacts[0].uri.port == 5060


def test_header_names_case_insensitive_and_compact() -> None:
    data = (
        INVITE.replace(b"Call-ID:", b"i:").replace(b"Content-Type:", b"c:").replace(b"To:", b"tO :")
    )
    req = parse_datagram(data)
    assert req.call_id == "a84b4c76e66710@pc33.example.com"
    assert req.headers.get("CALL-ID") == req.headers.get("i")
    assert req.content_type == "application/sdp"
    assert req.to.uri.user == "+14155550123"
    assert req.to_bytes() == data
    assert (
        canonical_name("call-id") == "Call-ID"
        and canonical_name("www-authenticate") == "WWW-Authenticate"
    )
    assert canonical_name("max-forwards") == "Max-Forwards"


def test_line_folding_is_unfolded_but_kept_on_the_wire() -> None:
    data = INVITE.replace(b"Subject", b"").replace(
        b"Max-Forwards: 70\r\n", b"Subject: a long\r\n  subject\r\n\tline\r\nMax-Forwards: 70\r\n"
    )
    req = parse_datagram(data)
    assert req.headers.get("subject") == "a long subject line"
    assert req.to_bytes() == data


def test_repeated_and_comma_separated_headers_keep_order() -> None:
    data = INVITE.replace(
        b"Max-Forwards: 70\r\n",
        b"Allow: INVITE, ACK\r\nX-Custom: one\r\nAllow: BYE\r\nX-Custom: two\r\n"
        b"Max-Forwards: 70\r\n",
    )
    req = parse_datagram(data)
    assert req.headers.values("Allow") == ["INVITE", "ACK", "BYE"]
    assert req.headers.get_all("x-custom") == ["one", "two"]
    assert req.headers.count("allow") == 2
    names = [name for name, _ in req.headers.items()]
    assert names.index("Allow") < names.index("X-Custom")


def test_unmodified_message_is_byte_exact_and_changes_are_canonical() -> None:
    req = invite()
    assert req.to_bytes() == INVITE
    req.push_via(Via("UDP", "192.0.2.1", 5060, {"branch": "z9hG4bKgw1"}))
    out = req.to_bytes()
    assert out.startswith(
        b"INVITE sip:+14155550123@trunk.example.net SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKgw1\r\n"
    )
    # Everything else is untouched, byte for byte.
    assert out.endswith(INVITE.split(b"\r\n", 1)[1])
    again = parse_datagram(out)
    assert [v.branch for v in again.vias] == ["z9hG4bKgw1", "z9hG4bK776asdhds"]


def test_pop_via_from_a_comma_separated_field() -> None:
    resp = parse_datagram(RESPONSE)
    assert isinstance(resp, Response)
    top = resp.pop_via()
    assert top.branch == "z9hG4bKproxy1"
    assert [v.branch for v in resp.vias] == ["z9hG4bK776asdhds"]
    out = parse_datagram(resp.to_bytes())
    assert [v.received for v in out.vias] == ["203.0.113.10"]
    assert out.headers.count("via") == 1


def test_replace_top_via_adds_received_and_rport() -> None:
    req = invite()
    via = req.top_via
    req.replace_top_via(via.with_params(received="198.51.100.9", rport="40123"))
    again = parse_datagram(req.to_bytes())
    assert again.top_via.received == "198.51.100.9" and again.top_via.rport == 40123


def test_set_body_updates_content_length() -> None:
    req = invite()
    req.set_body(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n", "application/sdp")
    again = parse_datagram(req.to_bytes())
    assert again.content_length == len(again.body) == len(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n")


def test_header_editing() -> None:
    req = invite()
    req.headers.set("Max-Forwards", "69")
    req.headers.add("Record-Route", "<sip:192.0.2.1;lr>", first=True)
    assert req.headers.remove("Contact") == 1
    again = parse_datagram(req.to_bytes())
    assert again.max_forwards == 69
    assert again.record_routes[0].uri.has_param("lr")
    assert "Contact" not in again.headers
    assert again.headers.count("max-forwards") == 1


def test_copy_is_independent() -> None:
    req = invite()
    fwd = req.copy()
    fwd.headers.set("Max-Forwards", "69")
    assert req.max_forwards == 70 and fwd.max_forwards == 69
    assert req.to_bytes() == INVITE


def test_build_response_copies_headers_and_adds_to_tag() -> None:
    req = invite()
    resp = build_response(req, 486, to_tag="xyz", extra=[("Retry-After", "30")])
    assert resp.reason == "Busy Here"
    data = resp.to_bytes()
    assert data.startswith(b"SIP/2.0 486 Busy Here\r\n")
    parsed = parse_datagram(data)
    parsed.validate()
    assert parsed.to.tag == "xyz"
    assert parsed.from_.tag == "1928301774"
    assert parsed.call_id == req.call_id and parsed.cseq == req.cseq
    assert [v.branch for v in parsed.vias] == [v.branch for v in req.vias]
    assert parsed.headers.get("retry-after") == "30"
    assert parsed.content_length == 0
    # A 100 Trying carries no To tag (RFC 3261 §8.2.6.1).
    assert parse_datagram(build_response(req, 100, to_tag="xyz").to_bytes()).to.tag is None


def test_build_response_to_a_request_with_a_broken_to() -> None:
    data = INVITE.replace(
        b"To: <sip:+14155550123@trunk.example.net>", b'To: "unterminated <sip:x@y>'
    )
    req = parse_datagram(data)
    assert isinstance(req, Request)
    with pytest.raises(ParseError):
        req.validate()
    resp = build_response(req, 400, "Bad To\r\nInjected: header", to_tag="t")
    out = resp.to_bytes()
    assert out.startswith(b"SIP/2.0 400 Bad To??Injected: header\r\n")
    assert b'To: "unterminated <sip:x@y>\r\n' in out


def test_new_request_serialises_canonically() -> None:
    req = Request("OPTIONS", "sip:carrier.example.net")
    req.push_via(Via("TCP", "192.0.2.1", 5060, {"branch": "z9hG4bKabc", "rport": None}))
    req.headers.add(
        "From", str(Address.build("sip:gw@192.0.2.1", display_name='Gate "way"', tag="1"))
    )
    req.headers.add("To", "<sip:carrier.example.net>")
    req.headers.add("Call-ID", "c1@192.0.2.1")
    req.headers.add("CSeq", "1 OPTIONS")
    req.headers.add("Max-Forwards", "70")
    req.headers.add("Content-Length", "0")
    data = req.to_bytes()
    assert data.startswith(
        b"OPTIONS sip:carrier.example.net SIP/2.0\r\n"
        b"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKabc;rport\r\n"
    )
    again = parse_datagram(data)
    again.validate()
    assert again.from_.display_name == 'Gate "way"' and again.from_.tag == "1"


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (b"Max-Forwards: 70", b"Max-Forwards: 256", "Bad Max-Forwards"),
        (b"Max-Forwards: 70", b"Max-Forwards: -1", "Bad Max-Forwards"),
        (b"CSeq: 314159 INVITE", b"CSeq: 2147483648 INVITE", "CSeq number too large"),
        (b"CSeq: 314159 INVITE", b"CSeq: 1 BYE", "CSeq method does not match request method"),
        (b"Call-ID: a84b4c76e66710@pc33.example.com\r\n", b"", "Missing Call-ID"),
        (
            b"Via: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK776asdhds;rport\r\n",
            b"",
            "Missing Via",
        ),
        (
            b"Via: SIP/2.0/UDP 203.0.113.10:5060",
            b"Via: SIP/2.0/UDP 203.0.113.10:99999",
            "Bad Via port",
        ),
        (b"Via: SIP/2.0/UDP", b"Via: SIP/3.0/UDP", "Version Not Supported"),
        (
            b"Contact: <sip:alice@203.0.113.10:5060>",
            b"Contact: *, <sip:a@b>",
            "Contact * mixed with other contacts",
        ),
        (
            b"Contact: <sip:alice@203.0.113.10:5060>",
            b"Contact: <sip:alice@203.0.113.10:5060>;expires=4294967296",
            "Bad Contact expires",
        ),
        (
            b"Route: <sip:proxy1.example.net;lr>",
            b"Route: <sip:proxy1 example.net;lr>",
            "Bad URI in Route",
        ),
    ],
)
def test_validate_rejects(old: bytes, new: bytes, reason: str) -> None:
    data = INVITE.replace(old, new)
    assert data != INVITE
    with pytest.raises(ParseError) as info:
        parse_datagram(data).validate()
    assert info.value.reason == reason


def test_expires_bounds() -> None:
    data = INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nExpires: 4294967295\r\n")
    assert parse_datagram(data).expires == 2**32 - 1
    data = INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nExpires: 4294967296\r\n")
    with pytest.raises(ParseError):
        parse_datagram(data).validate()


def test_response_fields() -> None:
    resp = parse_datagram(RESPONSE)
    assert isinstance(resp, Response)
    resp.validate()
    assert (resp.status, resp.reason, resp.is_provisional) == (180, "Ringing", True)
    assert resp.to.tag == "a6c85cf"
    assert len(resp.vias) == 2
