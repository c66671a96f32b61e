"""RFC 4475 torture messages against the running ``sipgw serve`` over UDP.

The procedure of ``shared/conformance/README.md``: each file's bytes go
unchanged as one datagram from a socket at port 5060 of a loopback address
(the messages carry no ``rport``, so RFC 3261 §18.2.2 answers go to the
source address at Via port 5060); the reply is judged against INDEX.tsv; and
after every message a fresh well-formed OPTIONS must still get 200.

Waiting for silence without sleeping: right after the torture message the
same socket sends a probe OPTIONS (with ``rport``).  The gateway handles
datagrams one at a time, in order, and answers synchronously, so any reply
to the torture message that comes to us arrives before the probe's 200.
"""

from __future__ import annotations

import socket
import time
import uuid

import pytest

from sip.errors import ParseError
from sip.message import Response
from sip.parser import parse_datagram
from tests.support.corpus import TortureCase, load_cases, require_corpus
from tests.support.harness import (
    REPLY_TIMEOUT,
    ServedGateway,
    bind_udp_5060,
    options_over_udp,
    sip_request,
)

# README: a valid request must not get 400, "the two exceptions are named in
# their reason (badbranch, unksm2)".
MAY_GET_400 = frozenset({"badbranch", "unksm2"})
# README: "reason marks the cases where the RFC also allows lenient
# acceptance (escruri, baddate, badaspec, baddn)".
MAY_BE_ACCEPTED = frozenset({"escruri", "baddate", "badaspec", "baddn"})
# README: "Some top Vias say TCP/TLS/SCTP; a strict server may try to answer
# those over TCP, so treat 'no reply' as acceptable for them."
RELIABLE = ("TCP", "TLS", "SCTP")

CASES = load_cases()
PARAMS = [pytest.param(case, id=case.name) for case in CASES] or [
    pytest.param(None, id="corpus-missing")
]


def top_via_transport(data: bytes) -> str | None:
    try:
        return parse_datagram(data).top_via.transport
    except ParseError:
        return None


def send_and_collect(sock: socket.socket, gateway: ServedGateway, data: bytes) -> list[bytes]:
    """Send ``data``, then a probe; return what arrived before the probe's answer."""
    host = sock.getsockname()[0]
    probe_id = f"probe-{uuid.uuid4().hex}"
    sock.sendto(data, gateway.sip)
    sock.sendto(sip_request(via=f"SIP/2.0/UDP {host}:5060;rport", call_id=probe_id), gateway.sip)
    replies: list[bytes] = []
    deadline = time.monotonic() + REPLY_TIMEOUT
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"the probe OPTIONS got no answer; gateway log:\n{gateway.log()}"
        sock.settimeout(remaining)
        try:
            reply, _ = sock.recvfrom(65535)
        except TimeoutError:
            continue
        if probe_id.encode() in reply:
            return replies
        replies.append(reply)


def judge(case: TortureCase, replies: list[bytes]) -> None:
    """The rules of README "How a test should use it", step 3."""
    is_response = case.data.lstrip(b"\r\n").startswith(b"SIP/")
    if is_response:
        # Responses match no transaction: dropped silently (valid or not).
        assert replies == [], f"a response was answered: {replies[0][:60]!r}"
        return
    # An INVITE is first answered 100 Trying by its transaction (RFC 3261
    # §17.2.1); what is judged is the final answer, and there is one at most.
    replies = [r for r in replies if not r.startswith(b"SIP/2.0 1")]
    assert len(replies) <= 1, f"several answers: {[r[:40] for r in replies]}"
    if not replies:
        if case.expectation == "invalid":
            return
        transport = top_via_transport(case.data)
        assert transport in RELIABLE, "a valid request got no answer"
        return
    response = parse_datagram(replies[0])
    assert isinstance(response, Response)
    status = response.status
    label = f"{status} {response.reason}"
    if case.expectation == "invalid":
        if 200 <= status < 300:
            assert case.name in MAY_BE_ACCEPTED, f"invalid message accepted: {label}"
        else:
            assert status >= 400, f"invalid message not rejected: {label}"
    else:
        assert status >= 200, f"no final answer: {label}"
        if status == 400:
            assert case.name in MAY_GET_400, f"valid message refused: {label}"
    if case.name == "dblreq":
        # RFC 4475 §3.1.1.8: the REGISTER is processed, the trailing INVITE is not.
        assert response.cseq.method == "REGISTER"


def test_index_names_the_exceptions_it_is_judged_by() -> None:
    require_corpus()
    names = {case.name: case for case in CASES}
    assert len(names) == 49
    assert all(names[n].expectation == "valid" for n in MAY_GET_400)
    assert all(names[n].expectation == "invalid" for n in MAY_BE_ACCEPTED)
    assert all("lenient" in names[n].reason for n in MAY_BE_ACCEPTED)


@pytest.mark.parametrize("case", PARAMS)
def test_torture_message(case: TortureCase | None, request: pytest.FixtureRequest) -> None:
    if case is None:
        require_corpus()  # fails under CI, skips elsewhere
        pytest.fail("INDEX.tsv lists no messages")
    gateway: ServedGateway = request.getfixturevalue("module_gateway")
    with bind_udp_5060() as sock:
        replies = send_and_collect(sock, gateway, case.data)
    judge(case, replies)
    # README step 4: the server must still answer a fresh OPTIONS.
    response = options_over_udp(gateway.sip)
    assert response is not None, f"gateway stopped answering; log:\n{gateway.log()}"
    assert response.status == 200
    gateway.assert_alive()


# The judge itself must be able to fail: synthetic outcomes.


def _case(name: str, expectation: str, data: bytes) -> TortureCase:
    return TortureCase(f"{name}.sip", "0", expectation, "", data)


_REQUEST = sip_request(via="SIP/2.0/UDP 192.0.2.1")
_RESPONSE = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1\r\nContent-Length: 0\r\n\r\n"


def _reply(status: int) -> bytes:
    return (
        f"SIP/2.0 {status} X\r\nVia: SIP/2.0/UDP 192.0.2.1\r\nCall-ID: c\r\n"
        "CSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("case", "replies"),
    [
        pytest.param(_case("x", "valid", _REQUEST), [_reply(400)], id="valid-got-400"),
        pytest.param(_case("x", "valid", _REQUEST), [], id="valid-udp-unanswered"),
        pytest.param(_case("x", "valid", _REQUEST), [_reply(100)], id="valid-provisional-only"),
        pytest.param(_case("x", "invalid", _REQUEST), [_reply(200)], id="invalid-accepted"),
        pytest.param(_case("x", "invalid", _REQUEST), [_reply(302)], id="invalid-redirected"),
        pytest.param(_case("x", "valid", _RESPONSE), [_reply(400)], id="response-answered"),
        pytest.param(_case("x", "valid", _REQUEST), [_reply(200)] * 2, id="answered-twice"),
    ],
)
def test_judge_rejects(case: TortureCase, replies: list[bytes]) -> None:
    with pytest.raises(AssertionError):
        judge(case, replies)


@pytest.mark.parametrize(
    ("case", "replies"),
    [
        pytest.param(_case("x", "valid", _REQUEST), [_reply(501)], id="valid-501"),
        pytest.param(_case("badbranch", "valid", _REQUEST), [_reply(400)], id="badbranch-400"),
        pytest.param(_case("x", "invalid", _REQUEST), [], id="invalid-dropped"),
        pytest.param(_case("escruri", "invalid", _REQUEST), [_reply(200)], id="lenient-200"),
        pytest.param(_case("x", "valid", _RESPONSE), [], id="response-dropped"),
        pytest.param(
            _case("x", "valid", _REQUEST.replace(b"/UDP", b"/TCP", 1)), [], id="tcp-via-silent"
        ),
    ],
)
def test_judge_accepts(case: TortureCase, replies: list[bytes]) -> None:
    judge(case, replies)
