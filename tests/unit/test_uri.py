"""URIs: SIP, SIPS, TEL and opaque schemes (RFC 3261 §19.1, RFC 3966)."""

from __future__ import annotations

import pytest

from sip.errors import ParseError
from sip.uri import equivalent, parse_uri


def test_sip_uri_fields() -> None:
    uri = parse_uri("sip:alice:secret@Example.COM:5070;transport=tcp;lr?Subject=hi&Priority=urgent")
    assert uri.scheme == "sip"
    assert (uri.user, uri.password, uri.host, uri.port) == ("alice", "secret", "Example.COM", 5070)
    assert uri.params == {"transport": "tcp", "lr": None}
    assert uri.headers == {"Subject": "hi", "Priority": "urgent"}
    assert uri.host_key == "example.com"
    assert uri.is_sip and uri.has_param("LR") and uri.param("Transport") == "tcp"


def test_sips_ipv6_and_ipv4_hosts() -> None:
    v6 = parse_uri("sips:[2001:db8::10]:5061")
    assert (v6.scheme, v6.host, v6.port, v6.user) == ("sips", "[2001:db8::10]", 5061, None)
    v4 = parse_uri("sip:192.0.2.4")
    assert (v4.host, v4.port) == ("192.0.2.4", None)


def test_escaped_user_is_unescaped_on_demand() -> None:
    uri = parse_uri("sip:sips%3Auser%40example.com@example.net")
    assert uri.user == "sips%3Auser%40example.com"
    assert uri.user_unescaped() == "sips:user@example.com"
    assert str(uri) == "sip:sips%3Auser%40example.com@example.net"


def test_tel_uri() -> None:
    uri = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert (uri.scheme, uri.user, uri.params) == (
        "tel",
        "+1-201-555-0123",
        {"phone-context": "example.com"},
    )
    assert parse_uri("tel:7042;phone-context=example.com").user == "7042"
    with pytest.raises(ParseError):
        parse_uri("tel:+")


def test_other_schemes_are_opaque() -> None:
    uri = parse_uri("soap.beep://192.0.2.103:3002")
    assert (uri.scheme, uri.opaque, uri.is_sip) == ("soap.beep", "//192.0.2.103:3002", False)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sip:",
        "<sip:user@example.com>",
        "sip:user@example.com; lr",
        "sip:user@exa mple.com",
        "sip:user@example.com:99999",
        "sip:user@example.com:port",
        "sip:us%zzer@example.com",
        "sip:user@example.com;;lr",
        "sip:user@example.com?noequals",
        "sip:user@-example.com",
        "1sip:user@example.com",
        "mailto:with space",
    ],
)
def test_malformed_uris_raise_parse_error(text: str) -> None:
    with pytest.raises(ParseError):
        parse_uri(text)


def test_replace_serialises_canonically() -> None:
    uri = parse_uri("sip:Bob@Example.com;transport=udp")
    moved = uri.replace(host="192.0.2.7", port=5080, params={"lr": None})
    assert str(moved) == "sip:Bob@192.0.2.7:5080;lr"
    assert str(uri) == "sip:Bob@Example.com;transport=udp"


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        # RFC 3261 §19.1.4 examples
        ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp", True),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5", True),
        ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;newparam=5", True),
        (
            "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
            "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
            True,
        ),
        (
            "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
            "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
            True,
        ),
        ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP", False),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060", False),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp", False),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp", False),
        ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting", False),
        ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4", False),
        ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off", False),
        ("sip:alice@example.com", "sips:alice@example.com", False),
        ("tel:+1-201-555-0123", "tel:+12015550123", True),
    ],
)
def test_uri_equivalence(a: str, b: str, same: bool) -> None:
    assert equivalent(parse_uri(a), parse_uri(b)) is same
    assert equivalent(parse_uri(b), parse_uri(a)) is same


def test_port_or_default_is_the_schemes_default_when_absent() -> None:
    """RFC 3261 §19.1.2: 5060 for sip, 5061 for sips; an explicit port wins."""
    assert parse_uri("sip:gw.example.net").port_or_default == 5060
    assert parse_uri("sips:gw.example.net").port_or_default == 5061
    assert parse_uri("sips:gw.example.net:5070").port_or_default == 5070
