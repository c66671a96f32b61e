"""Every way a call ends gives back exactly one channel (issue 4, point 2).

Each test places one call through a served gateway with hand-written UDP
peers (tests/support/peers.py), ends it one way, and checks, through ``/metrics``:
one admission, one release with the reason of that ending, and 0 channels
in use afterwards (``/healthz`` reads the admission controller).  Session
timers (RFC 4028) get their own tests: a refreshed call stays, an
unrefreshed one is dropped without a BYE, a refresh answered without
Session-Expires turns the timer off, and a too-short interval gets 422.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator

import pytest

from sip.message import Message, Response
from tests.support.harness import GatewayHome
from tests.support.peers import (
    ACCOUNT,
    T1,
    TIMERS,
    UNASSIGNED_NUMBER,
    Peer,
    Setup,
    answer,
    answered_call,
    answers,
    carrier_invite,
    from_carrier,
    from_pbx,
    pbx_hangs_up,
    scrape,
    trunk,
)

PROFILE = (("account", ACCOUNT), ("profile", "pbx"))


@pytest.fixture
def setup(gateway_home: GatewayHome) -> Iterator[Setup]:
    with trunk(gateway_home) as built:
        yield built


def profile_counter(setup: Setup, name: str, label: str) -> dict[str, float]:
    """A counter of profile "pbx", as {label value: count}."""
    return {
        dict(labels)[label]: value
        for (sample, labels), value in scrape(setup).items()
        if sample == name and dict(labels).get("profile") == "pbx" and value
    }


def assert_one_release(setup: Setup, reason: str) -> None:
    """Channels back to 0; one call admitted and one channel released, for ``reason``."""
    setup.wait_channels(0)
    assert profile_counter(setup, "sipgw_admissions_total", "result") == {"admitted": 1}
    assert profile_counter(setup, "sipgw_channel_releases_total", "reason") == {reason: 1}
    assert scrape(setup)[("sipgw_channels_in_use", PROFILE)] == 0


# -- the endings ------------------------------------------------------------------
def test_bye_from_the_pbx(setup: Setup) -> None:
    to = answered_call(setup, "end-bye-pbx")
    assert setup.channels() == 1
    pbx_hangs_up(setup, "end-bye-pbx", to)
    assert_one_release(setup, "bye")


def test_bye_from_the_carrier(setup: Setup) -> None:
    to = answered_call(setup, "end-bye-carrier")
    assert setup.channels() == 1
    setup.carrier.send(from_carrier(setup, "BYE", "end-bye-carrier", to, 1), setup.sip)
    bye = setup.pbx.request("BYE")
    setup.pbx.send(answer(bye, 200), setup.sip)
    setup.carrier.response(200, "BYE")
    assert_one_release(setup, "bye")


def test_cancel_while_ringing(setup: Setup) -> None:
    pbx, carrier = setup.pbx, setup.carrier
    invite_text = setup.invite("end-cancel")
    pbx.send(invite_text, setup.sip)
    invite = carrier.request("INVITE")
    carrier.send(answer(invite, 180), setup.sip)
    pbx.response(180, "INVITE")
    assert setup.channels() == 1
    # RFC 3261 §9.1: the CANCEL repeats the INVITE's Request-URI, Via, Call-ID,
    # From, To and CSeq number.
    head = invite_text.split("\r\n")
    cancel = [head[0].replace("INVITE", "CANCEL", 1)]
    cancel += [line for line in head[1:] if line.split(":")[0] in ("Via", "From", "To", "Call-ID")]
    cancel += ["Max-Forwards: 70", "CSeq: 1 CANCEL", "Content-Length: 0"]
    pbx.send("\r\n".join(cancel) + "\r\n\r\n", setup.sip)
    pbx.response(200, "CANCEL")
    downstream = carrier.request("CANCEL")
    carrier.send(answer(downstream, 200), setup.sip)
    carrier.send(answer(invite, 487), setup.sip)
    pbx.response(487, "INVITE")
    assert_one_release(setup, "cancel")


def test_busy_carrier(setup: Setup) -> None:
    setup.pbx.send(setup.invite("end-busy"), setup.sip)
    invite = setup.carrier.request("INVITE")
    assert setup.channels() == 1
    setup.carrier.send(answer(invite, 486), setup.sip)
    setup.pbx.response(486, "INVITE")
    assert_one_release(setup, "rejected")


def _refused(message: Message, call_id: str) -> bool:
    return isinstance(message, Response) and message.call_id == call_id and message.status == 404


def test_inbound_call_declined_by_the_pbx(gateway_home: GatewayHome, setup: Setup) -> None:
    """A final non-2xx from the PBX side (an inbound call it declines)."""
    gateway_home.cli("number", "assign", UNASSIGNED_NUMBER, "--profile", "pbx")
    # The running gateway picks the assignment up within a second or so:
    # until then the carrier's INVITE is refused 404.
    for attempt in range(30):
        call_id = f"end-in-{attempt}"
        setup.carrier.send(carrier_invite(setup, UNASSIGNED_NUMBER, call_id), setup.sip)
        refused = functools.partial(_refused, call_id=call_id)
        try:
            setup.carrier.expect(refused, timeout=1.0)
        except AssertionError:
            break  # not refused: on its way to the PBX
        time.sleep(0.2)
    else:
        pytest.fail("the number assignment never reached the gateway")
    invite = setup.pbx.request("INVITE")
    assert setup.channels() == 1
    setup.pbx.send(answer(invite, 603), setup.sip)
    setup.carrier.response(603, "INVITE")
    assert_one_release(setup, "rejected")


def test_a_2xx_never_acknowledged(setup: Setup) -> None:
    setup.pbx.send(setup.invite("end-no-ack"), setup.sip)
    invite = setup.carrier.request("INVITE")
    setup.carrier.send(answer(invite, 200, contact=setup.carrier.contact), setup.sip)
    setup.pbx.response(200, "INVITE")
    assert setup.channels() == 1
    # No ACK: after 64*T1 the channel comes back (RFC 3261 §13.3.1.4).
    setup.wait_channels(0, timeout=64 * T1 + 5)
    assert_one_release(setup, "no_ack")


def test_a_carrier_that_never_answers(setup: Setup) -> None:
    setup.pbx.send(setup.invite("end-silent"), setup.sip)
    setup.carrier.request("INVITE")  # and never a response (Timer B, RFC 3261 §17.1.1.2)
    assert setup.channels() == 1
    setup.pbx.response(408, "INVITE", timeout=64 * T1 + 5)
    assert_one_release(setup, "timeout")


def test_a_carrier_that_rings_forever(gateway_home: GatewayHome) -> None:
    """Timer C (RFC 3261 §16.6 step 11): ringing too long is cancelled
    downstream and answered 408 upstream."""
    with trunk(gateway_home, f"{TIMERS}\ntimer_c = 1.0") as setup:
        setup.pbx.send(setup.invite("end-timer-c"), setup.sip)
        invite = setup.carrier.request("INVITE")
        setup.carrier.send(answer(invite, 180), setup.sip)
        setup.pbx.response(180, "INVITE")
        assert setup.channels() == 1
        cancel = setup.carrier.request("CANCEL", timeout=5)
        setup.carrier.send(answer(cancel, 200), setup.sip)
        setup.carrier.send(answer(invite, 487), setup.sip)
        setup.pbx.response(408, "INVITE")
        assert_one_release(setup, "timeout")


def test_maximum_call_duration_ends_the_call_on_both_sides(gateway_home: GatewayHome) -> None:
    """A call whose end is never seen is cut: BYE to both sides with a
    Reason (RFC 3326), and its channel comes back."""
    # [calls] follows the [sip] keys in the generated config.
    with trunk(gateway_home, f"{TIMERS}\n[calls]\nmax_call_duration = 1.0") as setup:
        pbx, carrier = setup.pbx, setup.carrier
        answered_call(setup, "long-1")
        assert setup.channels() == 1
        to_carrier = carrier.request("BYE", timeout=5)
        to_pbx = pbx.request("BYE", timeout=5)
        for bye, peer in ((to_carrier, carrier), (to_pbx, pbx)):
            assert bye.call_id == "long-1"
            assert "Maximum call duration" in (bye.headers.get("reason") or "")
            peer.send(answer(bye, 200), setup.sip)
        # Each side sees the other's dialog identifiers the right way round.
        assert (to_carrier.from_.tag, to_carrier.to.tag) == ("caller", "callee")
        assert (to_pbx.from_.tag, to_pbx.to.tag) == ("callee", "caller")
        assert to_carrier.cseq.number == 2  # above the caller's INVITE (1)
        assert to_carrier.uri_text == f"sip:peer@{carrier.host}:{carrier.port}"
        assert to_pbx.uri_text == f"sip:peer@{pbx.host}:{pbx.port}"
        assert_one_release(setup, "max_duration")


# -- session timers (RFC 4028) ------------------------------------------------------
INTERVAL = 3  # seconds: the session interval the peers agree on in these tests
TIMER = (f"Session-Expires: {INTERVAL};refresher=uac", "Supported: timer")
TIMER_OK = (f"Session-Expires: {INTERVAL};refresher=uac", "Require: timer")


def assert_no_bye(peer: Peer, seconds: float) -> None:
    """``peer`` receives no BYE for ``seconds`` (a proxy must not send one
    when a session expires, RFC 4028 §8.3)."""
    with pytest.raises(AssertionError, match="waited in vain"):
        peer.request("BYE", timeout=seconds)


def test_session_timers(gateway_home: GatewayHome) -> None:
    """Two calls negotiate a 3 s session interval.  Both are refreshed with
    UPDATE; the refresh of call B is answered without Session-Expires (the
    timer is off, §8.2).  Call A is then no longer refreshed: its channel
    comes back one interval after its last refresh, with no BYE, and its
    dialog is gone (481).  Call B stays up until its BYE."""
    # The RFC minimum is 90 s; 1 s here so that the test takes seconds.
    with trunk(gateway_home, f"{TIMERS}\n[calls]\nmin_session_expires = 1") as setup:
        pbx, carrier = setup.pbx, setup.carrier
        to_a = answered_call(setup, "timer-a", invite_extra=TIMER, ok_extra=TIMER_OK)
        to_b = answered_call(setup, "timer-b", invite_extra=TIMER, ok_extra=TIMER_OK)
        assert setup.channels() == 2
        # Refresh A every second for twice the interval: it stays up.
        started = time.monotonic()
        cseq = 2
        while time.monotonic() - started < 2 * INTERVAL:
            time.sleep(1.0)
            pbx.send(from_pbx(setup, "UPDATE", "timer-a", to_a, cseq, extra=TIMER), setup.sip)
            update = carrier.request("UPDATE")
            assert update.headers.get("session-expires") == f"{INTERVAL};refresher=uac"
            carrier.send(answer(update, 200, extra=TIMER_OK), setup.sip)
            pbx.expect(answers(cseq))
            cseq += 1
            if cseq == 3:
                # B's one refresh is answered without Session-Expires.
                pbx.send(from_pbx(setup, "UPDATE", "timer-b", to_b, 2, extra=TIMER), setup.sip)
                carrier.send(answer(carrier.request("UPDATE"), 200), setup.sip)
                pbx.expect(answers(2))
            assert setup.channels() == 2, "refreshed sessions keep their channels"
        last_refresh = time.monotonic()
        # No more refreshes for A: its channel comes back after the interval,
        # and nobody gets a BYE from the gateway.
        assert_no_bye(carrier, INTERVAL - 1.0)
        setup.wait_channels(1, timeout=INTERVAL + 5)
        assert time.monotonic() - last_refresh >= INTERVAL - 0.5
        assert_no_bye(pbx, 0.5)
        releases = profile_counter(setup, "sipgw_channel_releases_total", "reason")
        assert releases == {"session_expired": 1}
        # The dialog is forgotten: A's late BYE gets 481 from the gateway.
        pbx.send(from_pbx(setup, "BYE", "timer-a", to_a, cseq), setup.sip)
        assert pbx.response(481, "BYE").call_id == "timer-a"
        # B has no session timer any more: still up after more than an interval.
        time.sleep(1.0)
        assert setup.channels() == 1
        pbx_hangs_up(setup, "timer-b", to_b, cseq=3)
        setup.wait_channels(0)
        releases = profile_counter(setup, "sipgw_channel_releases_total", "reason")
        assert releases == {"session_expired": 1, "bye": 1}


def test_a_session_interval_below_our_minimum(setup: Setup) -> None:
    """RFC 4028 §8.1 with the default minimum (90 s): a UAC that supports
    timers gets 422 with Min-SE, and no channel is taken; one that does not
    has its request raised to the minimum."""
    pbx, carrier = setup.pbx, setup.carrier
    pbx.send(setup.invite("short-1", extra=("Session-Expires: 60", "Supported: timer")), setup.sip)
    refused = pbx.response(422, "INVITE")
    assert refused.headers.get("min-se") == "90"
    assert profile_counter(setup, "sipgw_admissions_total", "result") == {}
    pbx.send(setup.invite("short-2", extra=("Session-Expires: 60;refresher=uas",)), setup.sip)
    invite = carrier.request("INVITE")
    assert invite.headers.get("session-expires") == "90;refresher=uas"
    assert invite.headers.get("min-se") == "90"
    carrier.send(answer(invite, 486), setup.sip)
    pbx.response(486, "INVITE")
    assert_one_release(setup, "rejected")
    pbx.send(setup.invite("short-3", extra=("Session-Expires: soon",)), setup.sip)
    assert pbx.response(400, "INVITE").reason.startswith("Bad Session-Expires")
