"""RFC 4475 torture tests against the parser (issue 2, deliverable 4).

Every ``valid`` message parses, validates and yields the fields the RFC
describes; every ``invalid`` one is rejected with :class:`ParseError` (and
the status the RFC asks for); nothing else is ever raised; an unchanged
message serialises to its exact bytes.
"""

from __future__ import annotations

from typing import Any

import pytest

from sip.errors import ParseError
from sip.message import Message, Request, Response
from sip.parser import StreamParser, parse_datagram
from tests.support.corpus import TortureCase, load_cases, require_corpus

CASES = load_cases()
VALID = [c for c in CASES if c.expectation == "valid"]
INVALID = [c for c in CASES if c.expectation == "invalid"]


def parse_and_validate(data: bytes) -> Message:
    msg = parse_datagram(data)
    msg.validate()
    return msg


# What each valid message must yield, read off the messages and RFC 4475 §3.
EXPECTED: dict[str, dict[str, Any]] = {
    "wsinv": {
        "method": "INVITE",
        "uri_user": "vivekg",
        "call_id": "wsinv.ndaksdj@192.0.2.1",
        "cseq": (9, "INVITE"),
        "from_tag": "98asjd8",
        "from_display": 'J Rosenberg \\"',
        "to_tag": "1918181833n",
        "vias": [
            ("UDP", "192.0.2.2", "390skdjuw"),
            ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
            ("UDP", "192.168.255.111", "z9hG4bK30239"),
        ],
        "max_forwards": 68,
        "body_len": 150,
        "contacts": ["sip:jdrosen@example.com"],
    },
    "intmeth": {
        "method": "!interesting-Method0123456789_*+`.%indeed'~",
        "uri_user": "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*",
        "call_id": "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{",
        "cseq": (139122385, "!interesting-Method0123456789_*+`.%indeed'~"),
        "from_tag": "_token~1'+`*%!-.",
        "from_display": "token1~` token2'+_ token3*%!.-",
        "max_forwards": 255,
        "body_len": 0,
    },
    "esc01": {
        "method": "INVITE",
        "uri_user": "sips:user@example.com",  # a plain user name after unescaping
        "from_tag": "938",
        "from_user": "I have spaces",
        "to_user": "user",
        "contacts": ["sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31"],
        "body_len": 150,
    },
    "escnull": {
        "method": "REGISTER",
        "to_user": "null-\x00-null",  # unescaping does not truncate
        "contacts": ["sip:%00@host5.example.com", "sip:%00%00@host5.example.com"],
    },
    "esc02": {
        "method": "RE%47IST%45R",  # not REGISTER
        "cseq": (29344, "RE%47IST%45R"),
        "contacts": ["sip:alias1@host1.example.com", "sip:alias3@host3.example.com"],
        "unknown_header": ("C%6Fntact", "<sip:alias2@host2.example.com>"),
    },
    "lwsdisp": {"method": "OPTIONS", "from_display": "caller", "from_tag": "323"},
    "longreq": {"method": "INVITE", "n_vias": 34, "body_len": 150, "to_port": 6000},
    "dblreq": {"method": "REGISTER", "body_len": 0, "raw_len": 300},
    "semiuri": {
        "method": "OPTIONS",
        "uri_user": "user;par=u@example.net",
        "uri_params": {},
        "accept": [
            "application/sdp",
            "application/pkcs7-mime",
            "multipart/mixed",
            "multipart/signed",
            "message/sip",
            "message/sipfrag",
        ],
    },
    "transports": {
        "method": "OPTIONS",
        "via_transports": ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"],
    },
    "mpart01": {"method": "MESSAGE", "body_len": 553, "content_type": "multipart/mixed"},
    "unreason": {
        "status": 200,
        "reason": "= 2**3 * 5**2 но сто девяносто девять - простое",
        "body_len": 154,
    },
    "noreason": {"status": 100, "reason": ""},
    "badbranch": {
        "method": "OPTIONS",
        "vias": [("UDP", "192.0.2.1", "z9hG4bK")],
        "rfc3261_branch": False,
    },
    "unkscm": {"method": "OPTIONS", "uri_scheme": "nobodyknowsthisscheme"},
    "novelsc": {"method": "OPTIONS", "uri_scheme": "soap.beep"},
    "unksm2": {
        "method": "REGISTER",
        "to_scheme": "isbn",
        "from_scheme": "http",
        "contacts": ["name:John_Smith"],
    },
    "bext01": {
        "method": "OPTIONS",
        "require": ["nothingsupportsthis", "nothingsupportsthiseither"],
        "proxy_require": ["noproxiessupportthis", "nordoanyproxiessupportthis"],
    },
    "invut": {"method": "INVITE", "content_type": "application/unknownformat", "body_len": 40},
    "regaut01": {"method": "REGISTER", "authorization_scheme": "nooneknowsthisscheme"},
    "bcast": {
        "status": 200,
        "vias": [
            ("UDP", "192.0.2.198", "z9hG4bK1324923"),
            ("UDP", "255.255.255.255", "z9hG4bK1saber23"),
        ],
    },
    "zeromf": {"method": "OPTIONS", "max_forwards": 0},
    "cparam01": {
        "method": "REGISTER",
        "contacts": ["sip:+19725552222@gw1.example.net"],
        "contact_params": {"unknownparam": None},
        "contact_uri_params": {},
    },
    "cparam02": {
        "method": "REGISTER",
        "contacts": ["sip:+19725552222@gw1.example.net;unknownparam"],
        "contact_params": {},
        "contact_uri_params": {"unknownparam": None},
    },
    "regescrt": {
        "method": "REGISTER",
        "contact_uri_headers": {"Route": "%3Csip:sip.example.com%3E"},
    },
    "sdp01": {
        "method": "INVITE",
        "content_type": "application/sdp",
        "body_len": 150,
        "accept": ["text/nobodyKnowsThis"],
    },
    "inv2543": {
        "method": "INVITE",
        "from_tag": None,
        "max_forwards": None,
        "content_length": None,
        "vias": [("UDP", "iftgw.example.com", None)],
        "body_len": 105,
        "from_uri_params": {"user": "phone"},
    },
}


def check(msg: Message, expected: dict[str, Any]) -> None:
    for key, want in expected.items():
        if key == "method":
            assert isinstance(msg, Request) and msg.method == want
        elif key == "status":
            assert isinstance(msg, Response) and msg.status == want
        elif key == "reason":
            assert isinstance(msg, Response) and msg.reason == want
        elif key == "uri_user":
            assert isinstance(msg, Request) and msg.uri.user_unescaped() == want
        elif key == "uri_params":
            assert isinstance(msg, Request) and msg.uri.params == want
        elif key == "uri_scheme":
            assert isinstance(msg, Request) and msg.uri.scheme == want
        elif key == "call_id":
            assert msg.call_id == want
        elif key == "cseq":
            assert (msg.cseq.number, msg.cseq.method) == want
        elif key == "from_tag":
            assert msg.from_.tag == want
        elif key == "from_display":
            assert msg.from_.display_name == want
        elif key == "from_user":
            assert msg.from_.uri.user_unescaped() == want
        elif key == "from_scheme":
            assert msg.from_.uri.scheme == want
        elif key == "from_uri_params":
            assert msg.from_.uri.params == want
        elif key == "to_tag":
            assert msg.to.tag == want
        elif key == "to_user":
            assert msg.to.uri.user_unescaped() == want
        elif key == "to_port":
            assert msg.to.uri.port == want
        elif key == "to_scheme":
            assert msg.to.uri.scheme == want
        elif key == "vias":
            assert [(v.transport, v.host, v.branch) for v in msg.vias] == want
        elif key == "n_vias":
            assert len(msg.vias) == want
        elif key == "via_transports":
            assert [v.transport for v in msg.vias] == want
        elif key == "rfc3261_branch":
            assert msg.top_via.rfc3261_branch is want
        elif key == "max_forwards":
            assert msg.max_forwards == want
        elif key == "content_length":
            assert msg.content_length == want
        elif key == "body_len":
            assert len(msg.body) == want
        elif key == "raw_len":
            assert len(msg.to_bytes()) == want
        elif key == "contacts":
            assert [c.uri_text for c in msg.contacts] == want
            for c in msg.contacts:
                assert c.uri.scheme  # every contact URI parses
        elif key == "contact_params":
            assert msg.contacts[0].params == want
        elif key == "contact_uri_params":
            assert msg.contacts[0].uri.params == want
        elif key == "contact_uri_headers":
            assert msg.contacts[0].uri.headers == want
        elif key == "content_type":
            assert msg.content_type == want
        elif key == "accept":
            assert msg.headers.values("Accept") == want
        elif key == "require":
            assert msg.option_tags("Require") == want
        elif key == "proxy_require":
            assert msg.option_tags("Proxy-Require") == want
        elif key == "unknown_header":
            name, value = want
            assert msg.headers.get(name) == value
        elif key == "authorization_scheme":
            assert [c.scheme.lower() for c in msg.authorization] == [want]
        else:  # pragma: no cover - a typo in EXPECTED
            raise AssertionError(f"unknown expectation {key}")


def test_corpus_is_complete() -> None:
    require_corpus()
    assert len(VALID) == 27
    assert len(INVALID) == 22
    assert {c.name for c in VALID} == set(EXPECTED)


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.name)
def test_valid_message_parses_with_its_fields(case: TortureCase) -> None:
    msg = parse_and_validate(case.data)
    check(msg, EXPECTED[case.name])
    # Unchanged, it serialises to exactly the bytes it came from (RFC 3261 §16.6).
    out = msg.to_bytes()
    assert case.data.startswith(out)
    if case.name != "dblreq":
        assert out == case.data


# Invalid requests are answered with this status; responses are discarded.
INVALID_STATUS = {"badvers": 505}


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.name)
def test_invalid_message_is_rejected(case: TortureCase) -> None:
    with pytest.raises(ParseError) as info:
        parse_and_validate(case.data)
    assert info.value.status == INVALID_STATUS.get(case.name, 400)
    assert info.value.reason
    assert info.value.reason.isprintable()


def test_dblreq_second_request_is_not_processed() -> None:
    """RFC 4475 §3.1.1.8: one datagram, the trailing INVITE is discarded."""
    (case,) = [c for c in VALID if c.name == "dblreq"] or [pytest.skip("corpus missing")]
    msg = parse_datagram(case.data)
    assert isinstance(msg, Request) and msg.method == "REGISTER"
    assert b"INVITE" not in msg.to_bytes()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_every_message_over_a_stream(case: TortureCase) -> None:
    """Fed to the TCP framer byte by byte, a message frames exactly as the
    datagram parser cuts it, and nothing but ParseError is ever raised."""
    parser = StreamParser()
    messages: list[Message] = []
    error: ParseError | None = None
    try:
        for i in range(len(case.data)):
            messages.extend(parser.feed(case.data[i : i + 1]))
    except ParseError as exc:
        error = exc
    try:
        reference: Message | None = parse_datagram(case.data)
    except ParseError:
        reference = None
    if reference is None or reference.content_length is None:
        # Unframeable on a stream (no Content-Length, RFC 3261 §18.3) or
        # already invalid as a datagram: at most an error, never a message
        # that differs from the datagram's.
        assert not messages or error is not None or case.name == "clerr"
        return
    assert messages, f"no message framed ({error})"
    assert messages[0].to_bytes() == reference.to_bytes()
    if case.name == "dblreq":
        # Over TCP the second request is a real one (conformance README).
        assert len(messages) >= 2 and isinstance(messages[1], Request)
        assert messages[1].method == "INVITE"
