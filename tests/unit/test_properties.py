"""Property tests of the parser (hypothesis).

1. Round trip: a message built from random valid parts serialises, parses
   back to the same fields, and re-serialises to the same bytes.
2. Robustness: random mutations of real messages (the RFC 4475 corpus and
   typical trunk traffic) never make the parser, the validator or any
   structured accessor raise anything but :class:`ParseError`.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sip.errors import ParseError
from sip.headers import Address, Via
from sip.message import Message, Request, Response
from sip.parser import StreamParser, parse_datagram
from tests.support.corpus import load_cases
from tests.support.messages import INVITE, RESPONSE

TOKEN_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
tokens = st.text(TOKEN_ALPHABET, min_size=1, max_size=12)
words = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)
hosts = st.one_of(
    st.lists(words, min_size=1, max_size=3)
    .map(".".join)
    .filter(lambda h: h[0].isalnum() and h[-1].isalnum()),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.just("[2001:db8::1]"),
)
ports = st.one_of(st.none(), st.integers(1, 65535))
users = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()&=+$,;?/", min_size=1, max_size=12)
display_names = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\r\n"),
    min_size=1,
    max_size=20,
)
field_values = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30
)


@st.composite
def sip_uris(draw: Any) -> Any:
    user = draw(st.one_of(st.none(), users))
    host = draw(hosts)
    port = draw(ports)
    params = draw(st.dictionaries(words, st.one_of(st.none(), words), max_size=3))
    text = "sip:" + (f"{user}@" if user else "") + host + (f":{port}" if port else "")
    return text + "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


@st.composite
def requests(draw: Any) -> tuple[Request, dict[str, Any]]:
    method = draw(st.one_of(st.sampled_from(["INVITE", "REGISTER", "OPTIONS", "BYE"]), tokens))
    ruri = draw(sip_uris())
    req = Request(method, ruri)
    vias = draw(
        st.lists(
            st.builds(
                lambda t, h, p, b: Via(t, h, p, {"branch": "z9hG4bK" + b}),
                st.sampled_from(["UDP", "TCP", "TLS"]),
                hosts,
                ports,
                tokens,
            ),
            min_size=1,
            max_size=4,
        )
    )
    for via in reversed(vias):
        req.push_via(via)
    from_display = draw(st.one_of(st.none(), display_names))
    from_tag = draw(tokens)
    req.headers.add(
        "From", str(Address.build(draw(sip_uris()), display_name=from_display, tag=from_tag))
    )
    req.headers.add("To", str(Address.build(draw(sip_uris()))))
    call_id = draw(st.text(TOKEN_ALPHABET + '@:()<>/[]?{}"', min_size=1, max_size=30))
    req.headers.add("Call-ID", call_id)
    cseq = draw(st.integers(0, 2**31 - 1))
    req.headers.add("CSeq", f"{cseq} {method}")
    max_forwards = draw(st.integers(0, 255))
    req.headers.add("Max-Forwards", str(max_forwards))
    extra = draw(st.lists(st.tuples(tokens.map(lambda t: "X-" + t), field_values), max_size=5))
    for name, value in extra:
        req.headers.add(name, value)
    body = draw(st.binary(max_size=200))
    req.set_body(body, "application/octet-stream" if body else None)
    expected = {
        "method": method,
        "ruri": ruri,
        "branches": [v.branch for v in vias],
        "from_display": from_display,
        "from_tag": from_tag,
        "call_id": call_id,
        "cseq": cseq,
        "max_forwards": max_forwards,
        "extra": extra,
        "body": body,
    }
    return req, expected


@settings(max_examples=300, deadline=None)
@given(requests())
def test_serialise_parse_round_trip(built: tuple[Request, dict[str, Any]]) -> None:
    req, expected = built
    data = req.to_bytes()
    parsed = parse_datagram(data)
    assert isinstance(parsed, Request)
    parsed.validate()
    assert parsed.method == expected["method"]
    assert parsed.uri_text == expected["ruri"]
    assert [v.branch for v in parsed.vias] == expected["branches"]
    assert parsed.from_.display_name == expected["from_display"]
    assert parsed.from_.tag == expected["from_tag"]
    assert parsed.call_id == expected["call_id"]
    assert parsed.cseq.number == expected["cseq"]
    assert parsed.max_forwards == expected["max_forwards"]
    for name, value in expected["extra"]:
        assert value in parsed.headers.get_all(name)
    assert parsed.body == expected["body"]
    # Re-serialising the parsed message gives the same bytes.
    assert parsed.to_bytes() == data
    # And over a stream, in arbitrary pieces, the same message comes out.
    stream = StreamParser()
    out: list[Message] = []
    for i in range(0, len(data), 13):
        out.extend(stream.feed(data[i : i + 13]))
    assert len(out) == 1 and out[0].to_bytes() == data


SEEDS = [INVITE, RESPONSE] + [c.data for c in load_cases()]


def exercise(msg: Message) -> None:
    """Read everything a proxy might read."""
    msg.validate()
    for via in msg.vias:
        str(via)
        _ = via.branch, via.rport, via.received, via.rfc3261_branch
    for address in (msg.from_, msg.to, *msg.contacts, *msg.routes, *msg.record_routes):
        if not address.star:
            _ = address.uri, address.tag, address.display_name, address.expires, address.q
    _ = msg.call_id, msg.cseq, msg.max_forwards, msg.content_length, msg.content_type
    _ = msg.expires, msg.min_expires, msg.option_tags("require"), msg.headers.values("accept")
    _ = msg.authorization, msg.proxy_authorization, msg.www_authenticate, msg.proxy_authenticate
    if isinstance(msg, Request):
        _ = msg.uri.user_unescaped()
    else:
        assert isinstance(msg, Response)
    msg.push_via(Via("UDP", "192.0.2.1", 5060, {"branch": "z9hG4bKx"}))
    parse_datagram(msg.to_bytes())


DELIMITERS = b'=:;, <>"/@'
HOSTILE_VALUES = [
    b"",
    b"a",
    b"0",
    b"-1",
    b"00000000000000000000000000007",
    b"99999999999999999999999",
    b"65536",
    b"4294967296",
    b"2147483648",
    b"1.5",
    b'"',
    b"x y",
    b"%",
    b"%zz",
    b"[::1",
    b"[]",
    b"\xff\xfe",
    b"\x00",
    b"*",
    b"sip:",
    b"<",
    b"z9hG4bK",
    b"SIP/2.0/UDP",
    b";",
    b",",
    b"tag",
    b"=",
]


@st.composite
def mutated(draw: Any) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        op = draw(
            st.sampled_from(
                ["flip", "insert", "delete", "duplicate", "truncate", "special", "value", "value"]
            )
        )
        pos = draw(st.integers(0, len(data) - 1))
        if op == "value":
            # Replace the value after a delimiter (a parameter, a header
            # value, a port, a number) with something hostile.
            starts = [i + 1 for i, b in enumerate(data) if b in DELIMITERS]
            if starts:
                start = draw(st.sampled_from(starts))
                end = start
                while end < len(data) and data[end] not in DELIMITERS and data[end] not in b"\r\n":
                    end += 1
                data[start:end] = draw(st.sampled_from(HOSTILE_VALUES))
        elif op == "flip":
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "duplicate":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[pos:]
        else:
            data[pos:pos] = draw(
                st.sampled_from(
                    [
                        b",",
                        b";",
                        b'"',
                        b"<",
                        b">",
                        b"\\",
                        b"%",
                        b"\r\n",
                        b"\r\n ",
                        b":",
                        b"=",
                        b"@",
                        b"[",
                        b"]",
                        b"\x00",
                        b"\xff",
                        b" ",
                    ]
                )
            )
    return bytes(data)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutations_raise_only_parse_errors(data: bytes) -> None:
    try:
        msg = parse_datagram(data)
    except ParseError:
        return
    try:
        exercise(msg)
    except ParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(mutated(), st.integers(1, 64))
def test_stream_mutations_raise_only_parse_errors(data: bytes, chunk: int) -> None:
    parser = StreamParser()
    try:
        for i in range(0, len(data), chunk):
            for msg in parser.feed(data[i : i + chunk]):
                try:
                    exercise(msg)
                except ParseError:
                    pass
    except ParseError:
        return


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_parse_errors(data: bytes) -> None:
    try:
        exercise(parse_datagram(data))
    except ParseError:
        pass


def value_mutants(seed: bytes) -> list[bytes]:
    """Every message obtained by replacing one delimited value of ``seed``
    with one hostile value: exhaustive where random mutation is thin."""
    out: list[bytes] = []
    for start in (i + 1 for i, b in enumerate(seed) if b in DELIMITERS):
        end = start
        while end < len(seed) and seed[end] not in DELIMITERS and seed[end] not in b"\r\n":
            end += 1
        out.extend(seed[:start] + value + seed[end:] for value in HOSTILE_VALUES)
    return out


def test_every_value_mutation_raises_only_parse_errors() -> None:
    checked = 0
    for seed in SEEDS:
        for data in value_mutants(seed):
            try:
                exercise(parse_datagram(data))
            except ParseError:
                pass
            checked += 1
    assert checked > 10_000
