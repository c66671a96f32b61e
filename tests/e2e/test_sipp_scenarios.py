"""The SIPp scenarios of ``loadtests/sipp/``, proven against each other.

Each PBX scenario is played against its carrier partner directly, with no
gateway in between, so that a scenario mistake shows here rather than as a
puzzling gateway failure in ``tests/e2e/test_calls_e2e.py``.  Where the gateway
itself would answer (a registrar's digest challenge, a proxy's 407, a 503 for
a full profile), a stand-in scenario plays it.  Each test checks both ends'
statistics and, from SIPp's message trace, the protocol details the
scenarios exist to get right: where in-dialog requests go, which branch an
ACK or a CANCEL carries, what a 487 echoes.

What cannot be proven here: SIPp's ``verifyauth`` reads ``Authorization``
only, so the INVITE's ``Proxy-Authorization`` is checked for form, not
recomputed; the gateway verifies it in the end-to-end tests.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import LoopbackBlock, random_loopback_block
from tests.support.sipp import SCENARIO_DIR, Sipp, SippLauncher, SippResult, TracedMessage

pytestmark = pytest.mark.sipp

NUMBER = "+441134960000"
#: A short call: long enough for the ACK to land before the BYE.
CALL_MS = 200
#: SIPp's own deadline per run; these calls take well under a second.
TIMEOUT = 20.0
USER, PASSWORD = "p0123456789", "Secret0Password0Here"


@pytest.fixture
def net() -> LoopbackBlock:
    return random_loopback_block()


def assert_ok(result: SippResult, calls: int) -> None:
    assert result.ok, result.explain()
    assert (result.successful, result.failed) == (calls, 0), result.explain()


def only(messages: list[TracedMessage], first_line_start: str) -> list[TracedMessage]:
    return [m for m in messages if m.first_line.startswith(first_line_start)]


# ---------------------------------------------------------------------------
# Outbound calls: the PBX calls, the carrier answers


def test_outbound_call_the_pbx_hangs_up(sipp: SippLauncher, net: LoopbackBlock) -> None:
    carrier = sipp.start(Sipp(scenario="carrier_uas.xml", local_ip=net.carrier, calls=3))
    pbx = sipp.run(
        Sipp(
            scenario="pbx_uac.xml",
            local_ip=net.pbx(1),
            remote=carrier.local,
            service=NUMBER,
            calls=3,
            rate=10,
            duration_ms=CALL_MS,
            timeout=TIMEOUT,
            trace_messages=True,
        )
    )
    assert_ok(pbx, 3)
    assert (pbx.counter("answered"), pbx.counter("refused")) == (3, 0)
    far = carrier.wait()
    assert_ok(far, 3)
    assert far.counter("answered") == 3

    # In-dialog requests go to the 200's Contact ([next_url], RFC 3261 12.2.1.1).
    contact = f"sip:carrier@{carrier.local[0]}:{carrier.local[1]};transport=UDP"
    sent = pbx.messages()
    assert len(only(sent, "INVITE sip:" + NUMBER)) == 3
    assert len(only(sent, f"ACK {contact} ")) == 3
    assert len(only(sent, f"BYE {contact} ")) == 3


def test_outbound_call_the_carrier_hangs_up(sipp: SippLauncher, net: LoopbackBlock) -> None:
    carrier = sipp.start(
        Sipp(
            scenario="carrier_uas_hangup.xml",
            local_ip=net.carrier,
            calls=2,
            duration_ms=CALL_MS,
            trace_messages=True,
        )
    )
    pbx = sipp.run(
        Sipp(
            scenario="pbx_uac_carrier_hangup.xml",
            local_ip=net.pbx(1),
            remote=carrier.local,
            service=NUMBER,
            calls=2,
            rate=10,
            timeout=TIMEOUT,
        )
    )
    assert_ok(pbx, 2)
    assert (pbx.counter("answered"), pbx.counter("hung_up_by_carrier")) == (2, 2)
    far = carrier.wait()
    assert_ok(far, 2)
    assert far.counter("hung_up") == 2

    # The carrier's BYE goes to the PBX's Contact, From and To swapped.
    byes = only(far.messages(), "BYE ")
    assert len(byes) == 2
    for bye in byes:
        assert bye.first_line == f"BYE sip:pbx@{net.pbx(1)}:{pbx_port(pbx)};transport=UDP SIP/2.0"
        assert ";tag=carrier-" in (bye.header("From") or "")
        assert ";tag=pbx-" in (bye.header("To") or "")


def pbx_port(result: SippResult) -> int:
    return int(result.command[result.command.index("-p") + 1])


def test_refused_call_is_acked_and_counted(sipp: SippLauncher, net: LoopbackBlock) -> None:
    """The channel-limit branch of pbx_uac.xml: the 503 is ACKed on the
    INVITE's branch and counted as refused, and the call is a success for
    SIPp (a load test tells answered from refused by the counters)."""
    gateway = sipp.start(Sipp(scenario="standin_channels_full.xml", local_ip=net.gateway, calls=3))
    pbx = sipp.run(
        Sipp(
            scenario="pbx_uac.xml",
            local_ip=net.pbx(1),
            remote=gateway.local,
            service=NUMBER,
            calls=3,
            rate=10,
            timeout=TIMEOUT,
            trace_messages=True,
        )
    )
    assert_ok(pbx, 3)
    assert (pbx.counter("answered"), pbx.counter("refused")) == (0, 3)
    assert pbx.count("503") == 3
    assert_ok(gateway.wait(), 3)
    assert gateway.result().counter("refused") == 3
    assert_acks_reuse_the_invite_branch(pbx.messages(), 3)


def assert_acks_reuse_the_invite_branch(messages: list[TracedMessage], calls: int) -> None:
    """RFC 3261 17.1.1.3: the ACK of a non-2xx answer is part of the INVITE
    transaction: same branch, same Request-URI, the answer's To tag."""
    invites = {m.header("Call-ID"): m for m in messages if m.method == "INVITE"}
    acks = [m for m in messages if m.method == "ACK"]
    assert len(acks) == calls
    for ack in acks:
        invite = invites[ack.header("Call-ID")]
        assert ack.branch == invite.branch
        assert ack.first_line.split()[1] == invite.first_line.split()[1]
        assert ";tag=" in (ack.header("To") or "")


def test_busy(sipp: SippLauncher, net: LoopbackBlock) -> None:
    carrier = sipp.start(Sipp(scenario="carrier_uas_busy.xml", local_ip=net.carrier, calls=1))
    pbx = sipp.run(
        Sipp(
            scenario="pbx_uac_busy.xml",
            local_ip=net.pbx(1),
            remote=carrier.local,
            service=NUMBER,
            calls=1,
            timeout=TIMEOUT,
            trace_messages=True,
        )
    )
    assert_ok(pbx, 1)
    assert pbx.counter("busy") == 1
    far = carrier.wait()
    assert_ok(far, 1)
    assert far.counter("busy") == 1
    assert_acks_reuse_the_invite_branch(pbx.messages(), 1)


def test_cancel_while_ringing(sipp: SippLauncher, net: LoopbackBlock) -> None:
    carrier = sipp.start(
        Sipp(
            scenario="carrier_uas_ringing.xml",
            local_ip=net.carrier,
            calls=1,
            trace_messages=True,
        )
    )
    pbx = sipp.run(
        Sipp(
            scenario="pbx_uac_cancel.xml",
            local_ip=net.pbx(1),
            remote=carrier.local,
            service=NUMBER,
            calls=1,
            duration_ms=100,  # rings 100 ms, then the PBX cancels
            timeout=TIMEOUT,
            trace_messages=True,
        )
    )
    assert_ok(pbx, 1)
    assert pbx.counter("cancelled") == 1
    far = carrier.wait()
    assert_ok(far, 1)
    assert far.counter("cancelled") == 1

    sent = pbx.messages()
    (invite,) = [m for m in sent if m.method == "INVITE"]
    (cancel,) = [m for m in sent if m.method == "CANCEL"]
    # RFC 3261 9.1: the CANCEL matches the INVITE it cancels.
    assert cancel.branch == invite.branch
    assert cancel.first_line.split()[1] == invite.first_line.split()[1]
    assert cancel.header("CSeq") == "1 CANCEL"
    assert_acks_reuse_the_invite_branch(sent, 1)
    (terminated,) = [m for m in far.messages() if m.status == 487]
    assert terminated.header("CSeq") == "1 INVITE"


def test_carrier_487_echoes_every_via_of_the_invite(
    sipp: SippLauncher, net: LoopbackBlock, tmp_path: Path
) -> None:
    """Through the gateway the carrier's INVITE has two Vias (the gateway's,
    then the PBX's, with the gateway's Record-Route between them) and its
    CANCEL one: the 487 must carry the INVITE's two, or the gateway cannot
    relay it.  A PBX that writes that layout itself stands in for the
    gateway."""
    scenario = (SCENARIO_DIR / "pbx_uac_cancel.xml").read_text()
    own_via = "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport\n"
    assert scenario.count(own_via) == 1
    record_route = "Record-Route: <sip:192.0.2.7:5060;lr>\n"
    downstream = "Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK-downstream;received=192.0.2.7\n"
    two_vias = tmp_path / "pbx_uac_cancel_two_vias.xml"
    indent = "      "
    two_vias.write_text(
        scenario.replace(own_via, own_via + indent + record_route + indent + downstream)
    )

    carrier = sipp.start(Sipp(scenario="carrier_uas_ringing.xml", local_ip=net.carrier, calls=1))
    pbx = sipp.run(
        Sipp(
            scenario=str(two_vias),
            local_ip=net.pbx(1),
            remote=carrier.local,
            service=NUMBER,
            calls=1,
            timeout=TIMEOUT,
            trace_messages=True,
        )
    )
    assert_ok(pbx, 1)
    assert_ok(carrier.wait(), 1)
    (terminated,) = [m for m in pbx.messages() if m.status == 487]
    vias = terminated.headers("Via")
    assert len(vias) == 2, terminated.text
    assert vias[1] == downstream.split(": ", 1)[1].strip()


# ---------------------------------------------------------------------------
# Inbound calls: the carrier calls, the PBX answers


def test_inbound_call_answered_by_the_pbx(sipp: SippLauncher, net: LoopbackBlock) -> None:
    pbx = sipp.start(Sipp(scenario="pbx_uas.xml", local_ip=net.pbx(1), calls=2))
    carrier = sipp.run(
        Sipp(
            scenario="carrier_uac.xml",
            local_ip=net.carrier,
            remote=pbx.local,
            service=NUMBER,
            calls=2,
            rate=10,
            duration_ms=CALL_MS,
            timeout=TIMEOUT,
            trace_messages=True,
        )
    )
    assert_ok(carrier, 2)
    assert carrier.counter("answered") == 2
    answered = pbx.wait()
    assert_ok(answered, 2)
    assert answered.counter("inbound_answered") == 2
    contact = f"sip:pbx@{pbx.local[0]}:{pbx.local[1]};transport=UDP"
    assert len(only(carrier.messages(), f"BYE {contact} ")) == 2


# ---------------------------------------------------------------------------
# Digest: registration and the INVITE challenge


def test_register_with_digest(sipp: SippLauncher, net: LoopbackBlock) -> None:
    registrar = sipp.start(
        Sipp(
            scenario="standin_registrar.xml",
            local_ip=net.gateway,
            calls=1,
            keys={"user": USER, "password": PASSWORD},
        )
    )
    pbx = sipp.run(
        Sipp(
            scenario="pbx_register.xml",
            local_ip=net.pbx(0),
            remote=registrar.local,
            service=USER,
            auth_user=USER,
            auth_password=PASSWORD,
            calls=1,
            timeout=TIMEOUT,
            trace_messages=True,
        )
    )
    assert_ok(pbx, 1)
    assert pbx.counter("registered") == 1
    accepted = registrar.wait()
    assert_ok(accepted, 1)
    assert (accepted.counter("accepted"), accepted.counter("refused")) == (1, 0)
    first, second = [m for m in pbx.messages() if m.method == "REGISTER"]
    assert first.header("Call-ID") == second.header("Call-ID")  # RFC 3261 10.2
    assert (first.header("CSeq"), second.header("CSeq")) == ("1 REGISTER", "2 REGISTER")
    authorization = second.header("Authorization") or ""
    assert f'username="{USER}"' in authorization
    assert f'uri="sip:{registrar.local[0]}:{registrar.local[1]}"' in authorization


def test_register_with_a_wrong_password_is_refused(sipp: SippLauncher, net: LoopbackBlock) -> None:
    """The stand-in really checks the digest (so the test above can fail)."""
    registrar = sipp.start(
        Sipp(
            scenario="standin_registrar.xml",
            local_ip=net.gateway,
            calls=1,
            keys={"user": USER, "password": PASSWORD},
        )
    )
    pbx = sipp.run(
        Sipp(
            scenario="pbx_register.xml",
            local_ip=net.pbx(0),
            remote=registrar.local,
            service=USER,
            auth_user=USER,
            auth_password=PASSWORD + "x",
            calls=1,
            timeout=TIMEOUT,
        )
    )
    assert (pbx.returncode, pbx.failed, pbx.counter("registered")) == (1, 1, 0), pbx.explain()
    refused = registrar.wait()
    assert (refused.counter("accepted"), refused.counter("refused")) == (0, 1)


def test_register_then_answer_on_the_same_socket(sipp: SippLauncher, net: LoopbackBlock) -> None:
    """pbx_register_and_answer.xml registers; pbx_uas.xml, its out-of-call
    scenario, answers the inbound call on the socket that registered; the
    registration call ends once that call is over."""
    registrar = sipp.start(
        Sipp(
            scenario="standin_registrar.xml",
            local_ip=net.gateway,
            calls=1,
            keys={"user": USER, "password": PASSWORD},
        )
    )
    pbx = sipp.start(
        Sipp(
            scenario="pbx_register_and_answer.xml",
            out_of_call_scenario="pbx_uas.xml",
            local_ip=net.pbx(0),
            remote=registrar.local,
            service=USER,
            auth_user=USER,
            auth_password=PASSWORD,
            calls=1,
            timeout=TIMEOUT,
        )
    )
    assert_ok(registrar.wait(), 1)  # registered
    carrier = sipp.run(
        Sipp(
            scenario="carrier_uac.xml",
            local_ip=net.carrier,
            remote=pbx.local,  # the address the REGISTER came from
            service=NUMBER,
            calls=1,
            duration_ms=CALL_MS,
            timeout=TIMEOUT,
        )
    )
    assert_ok(carrier, 1)
    assert carrier.counter("answered") == 1
    registered = pbx.wait()
    assert_ok(registered, 1)
    assert registered.counter("registered") == 1
    assert registered.counter("inbound_answered") == 1
    assert registered.stat("AutoAnswered") == 1  # the INVITE went out of call


def test_register_and_answer_does_not_succeed_without_a_call(
    sipp: SippLauncher, net: LoopbackBlock
) -> None:
    """Registered but never called, the PBX does not count as a success:
    its wait ends in failure (the scenario's own bound, 30 s, stops SIPp
    with status 97; SIPp's -timeout, shorter here, ends it first with 255)."""
    registrar = sipp.start(
        Sipp(
            scenario="standin_registrar.xml",
            local_ip=net.gateway,
            calls=1,
            keys={"user": USER, "password": PASSWORD},
        )
    )
    pbx = sipp.run(
        Sipp(
            scenario="pbx_register_and_answer.xml",
            out_of_call_scenario="pbx_uas.xml",
            local_ip=net.pbx(0),
            remote=registrar.local,
            service=USER,
            auth_user=USER,
            auth_password=PASSWORD,
            calls=1,
            timeout=2,
        )
    )
    assert pbx.returncode == 255, pbx.explain()
    assert pbx.successful == 0
    assert pbx.counter("registered") == 1
    assert_ok(registrar.wait(), 1)


def test_outbound_call_with_proxy_authentication(sipp: SippLauncher, net: LoopbackBlock) -> None:
    gateway = sipp.start(Sipp(scenario="standin_proxy_auth.xml", local_ip=net.gateway, calls=1))
    host, port = gateway.local
    pbx = sipp.run(
        Sipp(
            scenario="pbx_uac_auth.xml",
            local_ip=net.pbx(0),
            remote=gateway.local,
            service=NUMBER,
            auth_user=USER,
            auth_password=PASSWORD,
            auth_uri=f"{NUMBER}@{host}:{port}",
            calls=1,
            duration_ms=CALL_MS,
            timeout=TIMEOUT,
            trace_messages=True,
        )
    )
    assert_ok(pbx, 1)
    assert (pbx.counter("challenged"), pbx.counter("answered")) == (1, 1)
    far = gateway.wait()
    assert_ok(far, 1)
    assert (far.counter("challenged"), far.counter("answered")) == (1, 1)

    sent = [m for m in pbx.messages() if m.direction == "sent"]
    first, second = [m for m in sent if m.method == "INVITE"]
    assert (first.header("CSeq"), second.header("CSeq")) == ("1 INVITE", "2 INVITE")
    assert first.branch != second.branch  # a new transaction (RFC 3261 8.1.3.5)
    assert first.header("Proxy-Authorization") is None
    credentials = second.header("Proxy-Authorization") or ""
    assert f'username="{USER}"' in credentials
    # The digest uri is the Request-URI (RFC 2617 3.2.2.5), thanks to -auth_uri.
    assert f'uri="{second.first_line.split()[1]}"' in credentials
    ack_407 = next(m for m in sent if m.method == "ACK")
    assert (ack_407.branch, ack_407.header("CSeq")) == (first.branch, "1 ACK")
    assert [m.header("CSeq") for m in sent if m.method in ("ACK", "BYE")][1:] == [
        "2 ACK",
        "3 BYE",
    ]


# ---------------------------------------------------------------------------
# The load test's shape


def test_400_concurrent_calls(sipp: SippLauncher, net: LoopbackBlock) -> None:
    """The end-to-end channel-limit test offers 400 overlapping calls at
    once (-r 400 -rp 1000 -l 400 -m 400); played straight at the carrier,
    all 400 are answered and hung up, and a carrier started without -m
    stops cleanly on SIGUSR1 with its statistics written."""
    carrier = sipp.start(Sipp(scenario="carrier_uas.xml", local_ip=net.carrier))
    pbx = sipp.run(
        Sipp(
            scenario="pbx_uac.xml",
            local_ip=net.pbx(2),
            remote=carrier.local,
            service=NUMBER,
            calls=400,
            rate=400,
            rate_period_ms=1000,
            limit=400,
            duration_ms=2000,
            timeout=TIMEOUT,
        )
    )
    assert_ok(pbx, 400)
    assert (pbx.counter("answered"), pbx.counter("refused")) == (400, 0)
    far = carrier.stop()
    assert_ok(far, 400)
    assert far.stat("IncomingCall") == 400


# ---------------------------------------------------------------------------
# The harness itself


def test_a_port_taken_before_sipp_binds_it_is_replaced(
    sipp: SippLauncher, net: LoopbackBlock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another suite may take the port found free before SIPp binds it:
    the launcher starts SIPp again on another one, for waiting roles
    (``start``) and for roles run to the end (``run``) alike."""
    import tests.support.sipp
    from tests.support.harness import free_port as real_free_port

    found: Iterator[int] = iter([])

    def first_taken(host: str) -> int:
        return next(found, None) or real_free_port(host)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind((net.carrier, 0))
        found = iter([squatter.getsockname()[1]])
        monkeypatch.setattr(tests.support.sipp, "free_port", first_taken)
        carrier = sipp.start(Sipp(scenario="carrier_uas.xml", local_ip=net.carrier, calls=1))
        assert carrier.local[1] != squatter.getsockname()[1]

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter_2:
            squatter_2.bind((net.pbx(1), 0))
            found = iter([squatter_2.getsockname()[1]])
            pbx = sipp.run(
                Sipp(
                    scenario="pbx_uac.xml",
                    local_ip=net.pbx(1),
                    remote=carrier.local,
                    service=NUMBER,
                    calls=1,
                    duration_ms=CALL_MS,
                    timeout=TIMEOUT,
                )
            )
    assert_ok(pbx, 1)
    assert_ok(carrier.wait(), 1)
    # Each role was started twice: once on the taken port, once again.
    assert [p.spec.scenario for p in sipp.processes] == ["carrier_uas.xml"] * 2 + [
        "pbx_uac.xml"
    ] * 2
    assert "Unable to bind" in sipp.processes[0].result().errors()
