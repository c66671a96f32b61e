"""gateway.proxy.own: the gateway's own address in what it sends, and
which URIs and Vias are its own (RFC 3261 §16.3, §16.4, §16.6, §16.11)."""

from __future__ import annotations

from gateway.proxy.own import OwnAddress
from sip.message import Request
from sip.parser import parse_datagram
from sip.uri import parse_uri
from tests.support.messages import INVITE


def invite() -> Request:
    message = parse_datagram(INVITE)
    assert isinstance(message, Request)
    return message


def test_host_port_and_record_route_bracket_ipv6() -> None:
    assert OwnAddress(("192.0.2.1", 5060), []).host_port == "192.0.2.1:5060"
    own = OwnAddress(("2001:db8::1", 5070), [])
    assert own.host_port == "[2001:db8::1]:5070"
    assert str(own.record_route()) == "<sip:[2001:db8::1]:5070;lr>"


def test_own_uris_and_vias_with_default_ports() -> None:
    own = OwnAddress(("GW.example.net", 5060), [("127.0.0.10", 5080), ("::1", 5061)])
    assert own.is_own_uri(parse_uri("sip:gw.example.net;lr"))  # case, port 5060 implied
    assert own.is_own_uri(parse_uri("sip:127.0.0.10:5080;lr"))
    assert not own.is_own_uri(parse_uri("sip:127.0.0.10;lr"))  # 5060 is not ours there
    assert own.is_own_uri(parse_uri("sips:[::1];lr"))  # sips implies 5061
    assert not own.is_own_uri(parse_uri("sip:[::1];lr"))
    request = invite()
    assert not own.is_own_via(request.top_via)
    request.push_via(own.via(request, "UDP"))
    assert own.is_own_via(request.top_via)


def test_each_forwarded_request_gets_its_own_branch_an_ack_a_stable_one() -> None:
    own = OwnAddress(("192.0.2.1", 5060), [])
    request = invite()
    first, second = own.via(request, "UDP"), own.via(request, "TCP")
    assert first.branch != second.branch
    assert all(via.branch and via.branch.startswith("z9hG4bK") for via in (first, second))
    assert (second.transport, second.host, second.port) == ("TCP", "192.0.2.1", 5060)
    assert "rport" in first.params
    ack = invite()
    ack.method = "ACK"
    assert own.ack_via(ack, "UDP").branch == own.ack_via(ack, "UDP").branch
    assert (
        OwnAddress(("192.0.2.1", 5060), []).ack_via(ack, "UDP").branch
        == own.ack_via(ack, "UDP").branch
    )  # derived from the upstream branch, not from this process
