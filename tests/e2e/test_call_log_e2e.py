"""A call leaves one line in the log at ``info`` (issue 10, point 7).

A gateway runs at the default log level (``info``) with the IP profile
"pbx" of :func:`tests.support.peers.ip_profile_home` (channel limit 1 here), SIPp
playing the PBX and the carrier.  Every call the gateway took in (one with
a call record) must leave exactly one ``call ended`` line, with its
Call-ID, account, profile, direction, final status, duration and release
reason, and no other line at ``info`` may name its Call-ID.  At ``debug``
each request adds its method, Call-ID and source, and each response its
status (docs/logging.md)::

    .10  the gateway   --carrier sip:.30:PORT, [carrier] sources = [.30]
    .21  the PBX       IP profile "pbx", exactly .21:PORT
    .30  the carrier
"""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.manage import profiles
from sip.message import Request, Response
from tests.e2e.test_calls_e2e import CALL_TIMEOUT, assert_ok, first, wait_for
from tests.support.harness import (
    GatewayHome,
    LoopbackBlock,
    ServedGateway,
    free_port,
    random_loopback_block,
    sip_request,
    udp_exchange,
)
from tests.support.peers import (
    ACCOUNT,
    T1,
    Setup,
    answer,
    answered_call,
    from_carrier,
    gateway_ends_call,
    ip_profile_home,
    trunk,
)
from tests.support.sipp import Sipp, SippLauncher, SippResult, sipp_binary

pytestmark = pytest.mark.sipp

OUTBOUND_NUMBER = "+441134960999"
#: One INFO line of ``gateway.proxy.router`` saying a call ended.
ENDED = re.compile(
    r"^\S+ \S+ INFO gateway\.proxy\.router: call ended (?P<fields>.*)$", re.MULTILINE
)
#: ``key=value`` or ``key="quoted value"``.
FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
KEYS = ["call_id", "account", "profile", "direction", "status", "duration", "reason"]


@dataclass
class Logged:
    """The gateway at ``info``, its PBX and its carrier."""

    gateway: ServedGateway
    net: LoopbackBlock
    pbx: tuple[str, int]
    carrier_port: int

    def carrier(self, scenario: str, **options: Any) -> Sipp:
        return Sipp(
            scenario=scenario,
            local_ip=self.net.carrier,
            local_port=self.carrier_port,
            trace_messages=True,
            **options,
        )

    def caller(self, scenario: str, **options: Any) -> Sipp:
        return Sipp(
            scenario=scenario,
            local_ip=self.pbx[0],
            local_port=self.pbx[1],
            remote=self.gateway.sip,
            service=OUTBOUND_NUMBER,
            timeout=CALL_TIMEOUT,
            trace_messages=True,
            **options,
        )

    def ended(self) -> list[dict[str, str]]:
        """Every ``call ended`` line, as its fields (in order, quotes kept)."""
        return [dict(FIELD.findall(m["fields"])) for m in ENDED.finditer(self.gateway.log())]

    def wait_ended(self, count: int) -> list[dict[str, str]]:
        wait_for(
            lambda: len(self.ended()) >= count,
            f"fewer than {count} 'call ended' lines:\n{self.gateway.log()}",
        )
        return self.ended()

    def info_lines(self, call_id: str) -> list[str]:
        return [
            line for line in self.gateway.log().splitlines() if " INFO " in line and call_id in line
        ]


@pytest.fixture
def logged(gateway_home: GatewayHome) -> Iterator[Logged]:
    sipp_binary()  # skip (or fail under CI) before any set-up
    net = random_loopback_block()
    pbx = (net.pbx(1), free_port(net.pbx(1)))
    carrier_port = free_port(net.carrier)
    ip_profile_home(gateway_home, pbx)
    gateway_home.with_store(
        lambda store: profiles.set_channel_limit(store, "pbx", 1, account=ACCOUNT)
    )
    gateway = gateway_home.serve(
        host=net.gateway,
        carrier=(net.carrier, carrier_port),
        carrier_sources=[net.carrier],
        log_level="info",
    )
    yield Logged(gateway, net, pbx, carrier_port)


def ended_lines(log: str, call_id: str) -> list[dict[str, str]]:
    lines = [dict(FIELD.findall(m["fields"])) for m in ENDED.finditer(log)]
    return [line for line in lines if line["call_id"] == call_id]


def call_ids(result: SippResult) -> list[str]:
    """The Call-IDs of the INVITEs a SIPp UAC sent, in order."""
    return list(
        dict.fromkeys(
            m.header("Call-ID") or ""
            for m in result.messages()
            if m.direction == "sent" and m.method == "INVITE"
        )
    )


def seconds(duration: str) -> float:
    assert re.fullmatch(r"\d+\.\d{3}s", duration), duration
    return float(duration[:-1])


def test_an_answered_call_leaves_one_line(logged: Logged, sipp: SippLauncher) -> None:
    carrier = sipp.start(logged.carrier("carrier_uas.xml", calls=1))
    placed = sipp.run(logged.caller("pbx_uac.xml", calls=1, duration_ms=1000))
    assert_ok(placed)
    assert placed.counter("answered") == 1
    assert_ok(carrier.wait())
    (call_id,) = call_ids(placed)

    (line,) = logged.wait_ended(1)
    assert list(line) == KEYS, line
    assert {k: v for k, v in line.items() if k != "duration"} == {
        "call_id": call_id,
        "account": ACCOUNT,
        "profile": "pbx",
        "direction": "outbound",
        "status": "200",
        "reason": "bye",
    }
    # From the answer to the BYE: the -d 1000 pause, plus the ACK's way.
    assert 1.0 <= seconds(line["duration"]) < 3.0, line
    (info,) = logged.info_lines(call_id)  # the one line, nothing else at info
    assert "call ended" in info
    logged.gateway.assert_idle()
    assert len(logged.ended()) == 1


def test_cancelled_and_refused_calls_leave_one_line_each(
    logged: Logged, sipp: SippLauncher
) -> None:
    """A call cancelled while ringing (487), and two calls at once on a
    profile limited to one channel: the first answered, the second refused
    at admission with 503 (it leaves a call record, so it leaves a line)."""
    carrier = sipp.start(logged.carrier("carrier_uas_ringing.xml", calls=1))
    cancelled = sipp.run(logged.caller("pbx_uac_cancel.xml", calls=1, duration_ms=300))
    assert_ok(cancelled)
    assert cancelled.counter("cancelled") == 1
    assert_ok(carrier.wait())
    (cancelled_id,) = call_ids(cancelled)
    (line,) = logged.wait_ended(1)
    assert line == {
        "call_id": cancelled_id,
        "account": ACCOUNT,
        "profile": "pbx",
        "direction": "outbound",
        "status": "487",
        "duration": "0.000s",
        "reason": "cancel",
    }
    assert len(logged.info_lines(cancelled_id)) == 1

    carrier = sipp.start(logged.carrier("carrier_uas.xml", calls=1))
    pair = sipp.run(
        logged.caller("pbx_uac.xml", calls=2, rate=10, limit=2, duration_ms=1000)
    )  # the second INVITE 100 ms after the first, while it is up
    assert_ok(pair, 2)
    assert (pair.counter("answered"), pair.counter("refused")) == (1, 1), pair.explain()
    assert_ok(carrier.wait())
    refused_id = first(pair.messages(), "received", "SIP/2.0 503").header("Call-ID") or ""
    (answered_id,) = set(call_ids(pair)) - {refused_id}
    lines = {line["call_id"]: line for line in logged.wait_ended(3)[1:]}
    assert set(lines) == {answered_id, refused_id}, lines
    assert (lines[answered_id]["status"], lines[answered_id]["reason"]) == ("200", "bye")
    assert lines[refused_id] == {
        "call_id": refused_id,
        "account": ACCOUNT,
        "profile": "pbx",
        "direction": "outbound",
        "status": "503",
        "duration": "0.000s",
        "reason": "channel_limit",
    }
    for call_id in (answered_id, refused_id):
        assert len(logged.info_lines(call_id)) == 1
    logged.gateway.assert_idle()
    assert len(logged.ended()) == 3


def test_requests_and_responses_are_logged_at_debug(gateway_home: GatewayHome) -> None:
    """At ``debug`` a request says its method, Call-ID and source, and the
    answer its status (at ``info`` they are absent: see the tests above)."""
    net = random_loopback_block()
    gateway = gateway_home.serve(host=net.gateway, log_level="debug")
    call_id = f"probe-{uuid.uuid4().hex[:8]}"
    peer = net.pbx(3)
    port = free_port(peer)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((peer, port))
        data = sip_request(via=f"SIP/2.0/UDP {peer}:{port};rport", call_id=call_id)
        reply = udp_exchange(data, gateway.sip, sock=sock)
    assert reply is not None and reply.status == 200
    wait_for(lambda: "response out" in gateway.log(), f"no response line:\n{gateway.log()}")
    log = gateway.log()
    assert (
        f"DEBUG gateway.proxy.router: request in method=OPTIONS call_id={call_id}"
        f" transport=UDP source={peer}:{port}"
    ) in log, log
    assert (
        f"DEBUG gateway.proxy.router: response out status=200 method=OPTIONS call_id={call_id}"
        in log
    ), log


# -- every ending, with the hand-written peers of tests/support/peers.py ---------------------
def assert_one_line(setup: Setup, call_id: str, status: int, reason: str) -> dict[str, str]:
    """Exactly one ``call ended`` line for ``call_id``, saying ``status``
    and ``reason`` (written when the call ends: waited for a little)."""
    wait_for(
        lambda: ended_lines(setup.gateway.log(), call_id) != [],
        f"no 'call ended' line for {call_id}:\n{setup.gateway.log()}",
    )
    (line,) = ended_lines(setup.gateway.log(), call_id)
    assert (line["status"], line["reason"]) == (str(status), reason), line
    assert (line["account"], line["profile"], line["direction"]) == (ACCOUNT, "pbx", "outbound")
    return line


def test_every_ending_leaves_one_line(gateway_home: GatewayHome) -> None:
    """The carrier hangs up, the carrier is busy, the credit runs out, the
    profile is deleted with a call up: one line each, with its reason."""
    with trunk(gateway_home) as setup:
        pbx, carrier = setup.pbx, setup.carrier
        to = answered_call(setup, "log-bye-carrier")
        carrier.send(from_carrier(setup, "BYE", "log-bye-carrier", to, 1), setup.sip)
        pbx.send(answer(pbx.request("BYE"), 200), setup.sip)
        carrier.response(200, "BYE")
        assert_one_line(setup, "log-bye-carrier", 200, "bye")

        pbx.send(setup.invite("log-busy"), setup.sip)
        carrier.send(answer(carrier.request("INVITE"), 486), setup.sip)
        pbx.response(486, "INVITE")
        assert_one_line(setup, "log-busy", 486, "rejected")

        # One second of credit: 1.00 left at 60.00 per minute.
        gateway_home.cli("rate", "set", "", "60")
        gateway_home.cli("profile", "credit", "pbx", "--account", ACCOUNT, "--withdraw", "999")
        answered_call(setup, "log-credit")
        gateway_ends_call(setup, "log-credit")
        line = assert_one_line(setup, "log-credit", 200, "credit_exhausted")
        assert 0.5 < seconds(line["duration"]) < 2.0, line  # cut 0.2 s early

        gateway_home.cli("rate", "set", "", "0")
        gateway_home.cli("profile", "credit", "pbx", "--account", ACCOUNT, "--add", "5")
        answered_call(setup, "log-deleted")
        served = ["--config", str(setup.gateway.config_path)]
        gateway_home.cli(
            "profile", "delete", "pbx", "--confirm", "pbx", "--end-calls",
            "--account", ACCOUNT, *served,
        )  # fmt: skip
        gateway_ends_call(setup, "log-deleted")
        assert_one_line(setup, "log-deleted", 200, "profile_deleted")
        assert len(ENDED.findall(setup.gateway.log())) == 4


def test_a_timeout_and_a_shutdown_leave_one_line_each(gateway_home: GatewayHome) -> None:
    """A carrier that never answers (Timer B: 408), then the gateway
    stopped with a call up (BYE both sides)."""
    with trunk(gateway_home) as setup:
        pbx, carrier = setup.pbx, setup.carrier
        answered_call(setup, "log-shutdown")  # stays up until the gateway stops
        pbx.send(setup.invite("log-silent"), setup.sip)
        carrier.expect(lambda m: isinstance(m, Request) and m.call_id == "log-silent")
        pbx.expect(
            lambda m: isinstance(m, Response) and m.call_id == "log-silent" and m.status == 408,
            timeout=64 * T1 + 5,
        )
        assert_one_line(setup, "log-silent", 408, "timeout")
        assert setup.gateway.stop() == 0
        line = assert_one_line(setup, "log-shutdown", 200, "shutdown")
        assert seconds(line["duration"]) > 64 * T1
        assert len(ENDED.findall(setup.gateway.log())) == 2
