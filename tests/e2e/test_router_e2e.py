"""The call router over real sockets, with hand-written SIP peers.

SIPp covers the call flows a PBX and a carrier usually produce
(tests/e2e/test_calls_e2e.py).  This module drives the edges SIPp cannot express
easily, with plain UDP sockets playing the PBX and the carrier:

* a loop (the carrier URI is the gateway itself) answered 482;
* re-INVITE, UPDATE, INFO and OPTIONS inside a dialog following the route
  set, our Route removed, Max-Forwards decremented;
* Max-Forwards before authentication, inbound calls that cannot be
  delivered, identical answers for unknown users and wrong passwords;
* the metrics of a call and a registration; a call on Redis admission.

How each call ending frees its channel is tests/e2e/test_release_paths_e2e.py.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from sip.digest import authorize
from sip.message import Response
from tests.support.environment import missing
from tests.support.harness import GatewayHome, free_port, random_loopback_block, start_gateway
from tests.support.peers import (
    ACCOUNT,
    NUMBER,
    REDIS_URL,
    REGISTERED_NUMBER,
    T1,
    UNASSIGNED_NUMBER,
    Peer,
    Setup,
    answer,
    answers,
    carrier_invite,
    from_pbx,
    ip_profile_home,
    scrape,
    trunk,
)


@pytest.fixture
def setup(gateway_home: GatewayHome) -> Iterator[Setup]:
    with trunk(gateway_home) as built:
        yield built


def test_a_loop_through_the_gateway_is_refused_with_482(gateway_home: GatewayHome) -> None:
    net = random_loopback_block()
    pbx = Peer(net.pbx(1), free_port(net.pbx(1)))
    ip_profile_home(gateway_home, (pbx.host, pbx.port))
    port = free_port(net.gateway)
    # The carrier is the gateway itself: every outbound call comes back.
    args = ["--database", gateway_home.database_url, "--sip-listen", f"{net.gateway}:{port}"]
    args += ["--carrier", f"sip:{net.gateway}:{port}"]
    served = start_gateway(
        gateway_home.directory, host=net.gateway, args=args, env=gateway_home.env()
    )
    gateway_home.started.append(served)
    try:
        setup = Setup(served, (net.gateway, port), pbx, pbx)
        pbx.send(setup.invite("loop-1"), setup.sip)
        final = pbx.expect(lambda m: isinstance(m, Response) and m.status >= 200)
        assert isinstance(final, Response)
        assert final.status == 482, f"{final.status} {final.reason}"
        setup.wait_channels(0)
    finally:
        pbx.close()


def test_in_dialog_requests_follow_the_route_set(setup: Setup) -> None:
    pbx, carrier = setup.pbx, setup.carrier
    pbx.send(setup.invite("dialog-1"), setup.sip)
    invite = carrier.request("INVITE")
    assert invite.max_forwards == 69
    record_route = invite.headers.get("record-route")
    assert record_route == f"<sip:{setup.sip[0]}:{setup.sip[1]};lr>"
    carrier.send(answer(invite, 200, contact=carrier.contact), setup.sip)
    ok = pbx.response(200, "INVITE")
    assert ok.headers.get("record-route") == record_route
    assert setup.channels() == 1
    to = ok.headers.get("to")

    def in_dialog(method: str, cseq: int) -> str:
        return from_pbx(setup, method, "dialog-1", to, cseq)

    pbx.send(in_dialog("ACK", 1), setup.sip)
    ack = carrier.request("ACK")
    assert "route" not in ack.headers, "our Route is removed (RFC 3261 §16.4)"
    assert ack.uri_text == f"sip:peer@{carrier.host}:{carrier.port}"
    for cseq, method in enumerate(("INVITE", "UPDATE", "INFO", "OPTIONS"), start=2):
        pbx.send(in_dialog(method, cseq), setup.sip)
        forwarded = carrier.request(method)
        assert forwarded.max_forwards == 69
        assert "route" not in forwarded.headers
        assert forwarded.to.tag == "callee"
        carrier.send(answer(forwarded, 200, contact=carrier.contact), setup.sip)
        pbx.response(200, method)
        if method == "INVITE":  # the ACK of the re-INVITE's 2xx
            pbx.send(in_dialog("ACK", cseq), setup.sip)
            carrier.request("ACK")
    assert setup.channels() == 1, "re-INVITE takes no channel"
    # A call outlasts its transactions (64*T1): once they have all ended,
    # the router holds the call and nothing else.
    deadline = time.monotonic() + 64 * T1 + 5
    while setup.gateway.healthz()["transactions"]:
        assert time.monotonic() < deadline, setup.gateway.healthz()
        time.sleep(0.1)
    health = setup.gateway.healthz()
    assert (health["calls"], health["tracked"]) == (1, 0), health
    # The carrier hangs up, along the route set it recorded.
    carrier.send(
        f"BYE sip:peer@{pbx.host}:{pbx.port} SIP/2.0\r\n"
        f"Via: {carrier.via}\r\n"
        f"Route: {record_route}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: {to}\r\n"
        f"To: <sip:pbx@{pbx.host}>;tag=caller\r\n"
        "Call-ID: dialog-1\r\n"
        "CSeq: 1 BYE\r\n"
        "Content-Length: 0\r\n\r\n",
        setup.sip,
    )
    bye = pbx.request("BYE")
    pbx.send(answer(bye, 200), setup.sip)
    carrier.response(200, "BYE")
    setup.wait_channels(0)
    # Every transaction ends (64*T1 at most) and leaves nothing behind.
    deadline = time.monotonic() + 64 * T1 + 5
    while True:
        health = setup.gateway.healthz()
        if (health["calls"], health["transactions"], health["tracked"]) == (0, 0, 0):
            break
        assert time.monotonic() < deadline, f"left behind: {health}"
        time.sleep(0.1)


def test_max_forwards_is_checked_before_authentication(setup: Setup) -> None:
    """RFC 3261 §16.3: Max-Forwards (step 3) before Proxy-Authorization
    (step 6); a stranger's INVITE with Max-Forwards 0 gets 483, not 407."""
    stranger = Peer(setup.pbx.host, free_port(setup.pbx.host))
    try:
        data = setup.invite("mf-0", max_forwards=0).replace(
            f"{setup.pbx.host}:{setup.pbx.port}", f"{stranger.host}:{stranger.port}"
        )
        stranger.send(data, setup.sip)
        final = stranger.expect(lambda m: isinstance(m, Response) and m.status >= 200)
        assert isinstance(final, Response) and final.status == 483
    finally:
        stranger.close()


@pytest.mark.parametrize(
    ("number", "status"),
    [(UNASSIGNED_NUMBER, 404), (REGISTERED_NUMBER, 480), ("+19999999999", 404)],
    ids=["unassigned", "not-registered", "unknown"],
)
def test_inbound_call_that_cannot_be_delivered(setup: Setup, number: str, status: int) -> None:
    setup.carrier.send(carrier_invite(setup, number, f"in-{status}-{number}"), setup.sip)
    final = setup.carrier.expect(lambda m: isinstance(m, Response) and m.status >= 200)
    assert isinstance(final, Response)
    assert final.status == status, f"{final.status} {final.reason}"
    assert setup.channels() == 0


def test_unknown_username_gets_the_same_answer_as_a_wrong_password(setup: Setup) -> None:
    """RFC 3261 §22 / DESIGN.md: answers never reveal whether a username
    exists.  Both get a fresh 401 challenge of the same shape."""
    peer = Peer(setup.pbx.host, free_port(setup.pbx.host))
    host, port = setup.sip
    uri = f"sip:{host}:{port}"

    def register(cseq: int, authorization: str = "") -> str:
        return (
            f"REGISTER {uri} SIP/2.0\r\n"
            f"Via: {peer.via}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:someone@{host}>;tag=r1\r\n"
            f"To: <sip:someone@{host}>\r\n"
            "Call-ID: reg-probe\r\n"
            f"CSeq: {cseq} REGISTER\r\n"
            f"Contact: {peer.contact}\r\n"
            f"{authorization}"
            "Content-Length: 0\r\n\r\n"
        )

    def answer_to(username: str, password: str, cseq: int) -> Response:
        peer.send(register(cseq), setup.sip)
        challenge = peer.response(401, "REGISTER").www_authenticate[0]
        credentials = authorize(
            challenge, username=username, password=password, method="REGISTER", uri=uri,
            cnonce=uuid.uuid4().hex[:8],
        )  # fmt: skip
        peer.send(register(cseq + 1, f"Authorization: {credentials}\r\n"), setup.sip)
        return peer.expect(lambda m: isinstance(m, Response) and m.cseq.number == cseq + 1)  # type: ignore[return-value]

    try:
        unknown = answer_to("nobody-here", "whatever", 1)
        wrong = answer_to(setup.reg["sip_username"], "wrong password", 3)
        right = answer_to(setup.reg["sip_username"], setup.reg["password"], 5)
    finally:
        peer.close()
    assert (unknown.status, unknown.reason) == (wrong.status, wrong.reason) == (401, "Unauthorized")
    assert [n for n, _ in unknown.headers.items()] == [n for n, _ in wrong.headers.items()]
    shape = [
        (c.scheme, c.realm, c.algorithm, c.qop_options, c.stale) for c in unknown.www_authenticate
    ]
    assert shape == [
        (c.scheme, c.realm, c.algorithm, c.qop_options, c.stale) for c in wrong.www_authenticate
    ]
    assert right.status == 200  # and the right password does register


def test_metrics_follow_a_call_and_a_registration(setup: Setup) -> None:
    pbx, carrier = setup.pbx, setup.carrier
    channels = ("sipgw_channels_in_use", (("account", ACCOUNT), ("profile", "pbx")))
    before = scrape(setup)
    assert before[channels] == 0
    assert before[("sipgw_channel_limit", (("account", ACCOUNT), ("profile", "pbx")))] == 300
    assert before[("sipgw_registrations", (("account", ACCOUNT), ("profile", "reg")))] == 0
    # A call: INVITE, 200, ACK, BYE.
    pbx.send(setup.invite("metrics-1"), setup.sip)
    invite = carrier.request("INVITE")
    carrier.send(answer(invite, 180), setup.sip)
    pbx.response(180, "INVITE")
    carrier.send(answer(invite, 200, contact=carrier.contact), setup.sip)
    ok = pbx.response(200, "INVITE")
    during = scrape(setup)
    assert during[channels] == 1
    pbx_labels = (("account", ACCOUNT), ("profile", "pbx"))
    admitted = ("sipgw_admissions_total", (*pbx_labels, ("result", "admitted")))
    assert during[admitted] == 1
    assert during[("sipgw_call_setup_seconds_count", ())] == 1
    host, port = setup.sip
    pbx.send(from_pbx(setup, "BYE", "metrics-1", ok.headers.get("to"), 2), setup.sip)
    bye = carrier.request("BYE")
    carrier.send(answer(bye, 200), setup.sip)
    pbx.response(200, "BYE")
    setup.wait_channels(0)
    # A wrong password, then the right one, for the registration profile.
    peer = Peer(setup.pbx.host, free_port(setup.pbx.host))
    uri = f"sip:{host}:{port}"
    try:
        for cseq, password in ((1, "wrong"), (3, setup.reg["password"])):
            register = (
                f"REGISTER {uri} SIP/2.0\r\nVia: {{}}\r\nMax-Forwards: 70\r\n"
                f"From: <sip:r@{host}>;tag=m\r\nTo: <sip:r@{host}>\r\nCall-ID: metrics-reg\r\n"
                f"CSeq: {{}} REGISTER\r\nContact: {peer.contact}\r\n{{}}Content-Length: 0\r\n\r\n"
            )
            peer.send(register.format(peer.via, cseq, ""), setup.sip)
            challenge = peer.response(401, "REGISTER").www_authenticate[0]
            credentials = authorize(
                challenge, username=setup.reg["sip_username"], password=password,
                method="REGISTER", uri=uri, cnonce="c0ffee",
            )  # fmt: skip
            authorization = f"Authorization: {credentials}\r\n"
            peer.send(register.format(peer.via, cseq + 1, authorization), setup.sip)
            peer.expect(answers(cseq + 1))
    finally:
        peer.close()
    after = scrape(setup)
    assert after[channels] == 0
    assert after[admitted] == 1
    assert after[("sipgw_auth_failures_total", ())] >= 1
    assert after[("sipgw_registrations", (("account", ACCOUNT), ("profile", "reg")))] == 1
    assert after[("sipgw_sip_requests_received_total", (("method", "INVITE"),))] >= 1
    assert after[("sipgw_sip_requests_received_total", (("method", "BYE"),))] >= 1
    assert after[("sipgw_sip_responses_sent_total", (("code", "180"),))] >= 1
    # No Call-ID, number or address ever becomes a label value.
    labels = {value for _, pairs in after for _, value in pairs}
    assert not any("metrics-1" in v or NUMBER in v or host in v for v in labels)


def test_a_call_with_the_redis_admission_backend(gateway_home: GatewayHome) -> None:
    """admission.backend = "redis": the channel is counted in Redis (seen by
    /healthz and /metrics through the backend) and freed there."""
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        missing(f"Redis is not reachable at {REDIS_URL}")
    prefix = f"sipgw-test-{uuid.uuid4().hex[:12]}:"
    config = (
        f'[admission]\nbackend = "redis"\nredis_url = "{REDIS_URL}"\n'
        f'key_prefix = "{prefix}"\nlease_seconds = 30.0'
    )
    try:
        with trunk(gateway_home, config) as setup:
            pbx, carrier = setup.pbx, setup.carrier
            pbx.send(setup.invite("redis-1"), setup.sip)
            invite = carrier.request("INVITE")
            carrier.send(answer(invite, 200, contact=carrier.contact), setup.sip)
            ok = pbx.response(200, "INVITE")
            assert setup.channels() == 1
            assert client.keys(prefix + "*"), "the channel lives in Redis"
            pbx.send(from_pbx(setup, "BYE", "redis-1", ok.headers.get("to"), 2), setup.sip)
            bye = carrier.request("BYE")
            carrier.send(answer(bye, 200), setup.sip)
            pbx.response(200, "BYE")
            setup.wait_channels(0)
    finally:
        for key in client.scan_iter(prefix + "*"):
            client.delete(key)
        client.close()
