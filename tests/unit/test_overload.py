"""Local overload control (issue 12, point 3): the controller as data, and
what the router answers while it sheds.

The controller (:mod:`sip.overload`) is fed occupancies by hand; through
the router (the fake network of ``test_router``) it is driven the same
way, so every assertion is about behaviour, never about timing.  Over real
sockets under a real flood: tests/e2e/test_overload_e2e.py.
"""

from __future__ import annotations

import pytest

from sip.message import Request
from sip.overload import (
    OVERLOAD_RETRY_AFTER,
    OverloadControl,
    OverloadSettings,
    ShedClass,
    shed_class,
)
from sip.parser import parse_datagram
from tests.support.peers import answer
from tests.unit.test_router import (
    CARRIER,
    CARRIER_CONTACT,
    GATEWAY,
    PBX,
    PBX_ID,
    PBX_NUMBER,
    REALM,
    REG_PBX,
    REG_USERNAME,
    Gateway,
    cancel_of,
    carrier_invite,
    from_carrier,
    from_pbx,
    pbx_invite,
)


def request(text: str) -> Request:
    message = parse_datagram(text.encode())
    assert isinstance(message, Request)
    return message


def register(call_id: str, cseq: int = 1, extra: str = "") -> str:
    host, port = GATEWAY
    return (
        f"REGISTER sip:{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {REG_PBX.host}:{REG_PBX.port};branch=z9hG4bKreg{call_id}{cseq}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{REG_USERNAME}@{REALM}>;tag=r1\r\n"
        f"To: <sip:{REG_USERNAME}@{REALM}>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:{REG_USERNAME}@{REG_PBX.host}:{REG_PBX.port}>\r\n"
        f"{extra}Content-Length: 0\r\n\r\n"
    )


CREDENTIALS = f'Proxy-Authorization: Digest username="{REG_USERNAME}", realm="{REALM}"'


# == the controller ==============================================================
def test_what_is_new_work_and_what_is_never_shed() -> None:
    assert shed_class(request(pbx_invite("c"))) is ShedClass.INVITE
    assert shed_class(request(register("r"))) is ShedClass.REGISTER
    answered = pbx_invite("c", cseq=2, extra=(CREDENTIALS,))
    assert shed_class(request(answered)) is ShedClass.CHALLENGE_ANSWER
    signed_register = register("r", 2, 'Authorization: Digest username="x"\r\n')
    assert shed_class(request(signed_register)) is ShedClass.CHALLENGE_ANSWER
    to = "<sip:x@192.0.2.1>;tag=callee"
    for method in ("INVITE", "BYE", "ACK", "UPDATE", "INFO"):
        assert shed_class(request(from_pbx(method, "c", to, 2))) is None, method
    assert shed_class(request(cancel_of(pbx_invite("c")))) is None
    options = pbx_invite("o").replace("INVITE", "OPTIONS")
    assert shed_class(request(options)) is None


def test_nothing_is_shed_below_the_target() -> None:
    control = OverloadControl()
    for occupancy in (0.0, 0.2, 0.5, 0.85, 0.9):
        control.measure(occupancy)
        assert control.accept == 1.0 and not control.shedding
    assert all(control.admits(kind) for kind in ShedClass for _ in range(100))
    assert set(control.shed.values()) == {0}


def test_saturation_halves_the_ratio_down_to_the_floor() -> None:
    control = OverloadControl(OverloadSettings(floor=0.05, sustain=1))
    ratios = []
    for _ in range(6):
        control.measure(1.0)
        ratios.append(control.accept)
    assert ratios == [0.5, 0.25, 0.125, 0.0625, 0.05, 0.05]
    assert control.shedding and control.occupancy == 1.0


def test_a_pause_shorter_than_sustain_periods_sheds_nothing() -> None:
    """A garbage collection or a reload keeps the loop busy for a moment:
    what arrives meanwhile waits, nothing is refused.  Shedding starts at
    the third period in a row at the target (the default), and once it has
    started, every period moves the ratio."""
    control = OverloadControl()
    assert control.settings.sustain == 3
    for _ in range(5):
        control.measure(1.0)
        control.measure(1.0)
        control.measure(0.2)
    assert control.accept == 1.0
    control.measure(1.0)
    control.measure(0.95)
    assert control.accept == 1.0
    control.measure(0.99)
    assert control.accept == 0.5
    control.measure(0.6)  # below the target: the ratio grows at once
    assert control.accept == pytest.approx(0.75)


def test_a_disabled_control_only_measures() -> None:
    control = OverloadControl(OverloadSettings(enabled=False, sustain=1))
    control.measure(1.0)
    control.measure(1.0)
    assert control.occupancy == 1.0 and control.accept == 1.0
    assert control.admits(ShedClass.REGISTER)


def test_above_the_target_the_ratio_follows_target_over_occupancy() -> None:
    """RFC 7339's occupancy throttle: the ratio is scaled by target/ρ each
    period, so it settles where the occupancy meets the target, and rises
    back to 1 as the load falls."""
    control = OverloadControl(OverloadSettings(target=0.8, sustain=1))
    control.measure(0.95)
    assert control.accept == pytest.approx(0.8 / 0.95)
    # Modelled load: the occupancy is the offered load (3x the capacity)
    # times the share taken; it settles at the target within a few periods.
    for _ in range(12):
        control.measure(min(1.0, 3.0 * control.accept))
    assert 3.0 * control.accept == pytest.approx(0.8, rel=0.01)
    # The load goes away: nothing is shed any more.
    control.measure(0.3)
    control.measure(0.3)
    assert control.accept == 1.0


def test_the_ratio_is_exact_and_registrations_go_first() -> None:
    """At an acceptance of ½: every second INVITE, every fourth REGISTER
    (½²), and about seven in ten answers to a challenge (½^½)."""
    control = OverloadControl(OverloadSettings(sustain=1))
    control.measure(1.0)
    assert control.accept == 0.5
    taken = {kind: sum(control.admits(kind) for _ in range(400)) for kind in ShedClass}
    assert taken[ShedClass.INVITE] == 200
    assert taken[ShedClass.REGISTER] == 100
    assert taken[ShedClass.CHALLENGE_ANSWER] in range(282, 284)
    assert control.shed == {kind: 400 - taken[kind] for kind in ShedClass}


def test_occupancy_is_clamped_and_the_settings_checked() -> None:
    control = OverloadControl(OverloadSettings(sustain=1))
    control.measure(7.5)  # a period longer than measured: still "saturated"
    assert control.occupancy == 1.0 and control.accept == 0.5
    control.measure(-1.0)
    assert control.occupancy == 0.0 and control.accept == 1.0
    assert OverloadSettings().retry_after == OVERLOAD_RETRY_AFTER
    for bad in (
        {"target": 0}, {"target": 1.5}, {"period": 0}, {"floor": 2}, {"retry_after": -1},
        {"sustain": 0},
    ):  # fmt: skip
        with pytest.raises(ValueError):
            OverloadSettings(**bad)


# == through the router ==========================================================
def overloaded(gw: Gateway, floor: float = 0.0) -> OverloadControl:
    """The gateway's layer with a controller driven down to ``floor`` (0:
    shed all new work; the ratio then only tends to 0)."""
    control = OverloadControl(OverloadSettings(floor=floor, retry_after=3))
    gw.layer.overload = control
    for _ in range(40):
        control.measure(1.0)
    assert control.accept == pytest.approx(floor, abs=1e-9)
    return control


def test_new_calls_are_refused_503_with_retry_after_before_any_work() -> None:
    gw = Gateway()
    control = overloaded(gw)
    transactions = len(gw.layer)
    invite = pbx_invite("shed")
    gw.deliver(invite, PBX)
    (refusal,) = gw.io.responses(503, to=PBX, call_id="shed")
    assert gw.io.statuses(to=PBX, call_id="shed") == [503], "no 100 Trying: stateless"
    assert refusal.headers.get("retry-after") == "3"
    assert (
        refusal.headers.get("warning") == f'399 {GATEWAY[0]}:{GATEWAY[1]} "Overloaded, retry later"'
    )
    assert refusal.to.tag, "a To tag, so that the PBX's ACK matches nothing"
    assert len(gw.layer) == transactions, "no transaction was created"
    assert gw.observed.admissions == [] and gw.channels() == {}
    assert gw.io.requests(to=CARRIER) == []
    # The PBX retransmits (it never saw the 503): refused again, the same way.
    gw.deliver(invite, PBX)
    assert gw.io.statuses(to=PBX, call_id="shed") == [503, 503]
    # Its ACK of the 503 is an ACK for nothing: dropped, never answered.
    gw.deliver(from_pbx("ACK", "shed", refusal.headers.get("to") or "", 1), PBX)
    assert gw.io.statuses(to=PBX, call_id="shed") == [503, 503]
    # Inbound calls from the carrier and registrations are new work too.
    gw.deliver(carrier_invite("shed-in"), CARRIER)
    assert gw.io.statuses(to=CARRIER, call_id="shed-in") == [503]
    gw.deliver(register("shed-reg"), REG_PBX)
    assert gw.io.statuses(to=REG_PBX, call_id="shed-reg", method="REGISTER") == [503]
    assert control.shed == {
        ShedClass.INVITE: 3,
        ShedClass.REGISTER: 1,
        ShedClass.CHALLENGE_ANSWER: 0,
    }
    assert len(gw.router.calls) == 0
    gw.assert_idle()


def test_the_calls_already_admitted_are_never_shed() -> None:
    gw = Gateway()
    call = gw.answered_call("up")
    ringing_text, ringing = gw.ringing_call("ringing")
    trying_text, trying = gw.pbx_calls("trying")
    assert gw.channels() == {PBX_ID: 3}
    overloaded(gw)

    # The retransmitted INVITE of a call admitted before: absorbed by its
    # transaction (its 100 Trying again), not refused.
    gw.deliver(trying_text, PBX)
    again = gw.io.responses(to=PBX, call_id="trying", retransmissions=True)
    assert [r.status for r in again] == [100, 100]
    # A re-INVITE, in-dialog requests both ways, and their answers.
    gw.deliver(from_pbx("INVITE", "up", call.to, 2), PBX)
    reinvite = gw.io.last("INVITE", to=CARRIER, call_id="up")
    gw.deliver(answer(reinvite, 200, contact=CARRIER_CONTACT), CARRIER)
    assert len(gw.io.responses(200, to=PBX, call_id="up", method="INVITE")) == 2
    gw.deliver(from_pbx("ACK", "up", call.to, 2), PBX)
    assert len(gw.io.requests("ACK", to=CARRIER, call_id="up")) == 2
    gw.deliver(from_carrier("INFO", "up", call.to, 1), CARRIER)
    info = gw.io.last("INFO", to=PBX, call_id="up")
    gw.deliver(answer(info, 200), PBX)
    assert gw.io.statuses(to=CARRIER, call_id="up", method="INFO") == [200]
    # The answer of the trying call, the CANCEL of the ringing one.
    gw.deliver(answer(trying, 200, contact=CARRIER_CONTACT), CARRIER)
    assert gw.io.statuses(to=PBX, call_id="trying", method="INVITE")[-1] == 200
    gw.deliver(cancel_of(ringing_text), PBX)
    assert gw.io.statuses(to=PBX, call_id="ringing", method="CANCEL") == [200]
    gw.carrier_cancelled(ringing)
    assert gw.io.statuses(to=PBX, call_id="ringing", method="INVITE")[-1] == 487
    # A PBX probing its trunk is answered as usual.
    gw.deliver(pbx_invite("probe").replace("INVITE", "OPTIONS"), PBX)
    assert gw.io.statuses(to=PBX, call_id="probe", method="OPTIONS") == [200]
    # The BYEs, and every channel comes back.
    gw.deliver(from_pbx("BYE", "up", call.to, 3), PBX)
    gw.deliver(answer(gw.io.last("BYE", to=CARRIER, call_id="up"), 200), CARRIER)
    assert gw.io.statuses(to=PBX, call_id="up", method="BYE") == [200]
    (trying_ok,) = gw.io.responses(200, to=PBX, call_id="trying", method="INVITE")
    gw.deliver(from_pbx("BYE", "trying", trying_ok.headers.get("to") or "", 2), PBX)
    assert gw.io.requests("BYE", to=CARRIER, call_id="trying")
    assert gw.io.responses(503) == [], "nothing of an admitted call was refused"
    assert gw.channels() == {}


def test_the_shed_calls_come_back_when_the_load_falls() -> None:
    gw = Gateway()
    control = overloaded(gw, floor=0.25)
    for n in range(8):  # at the floor, one in four is still taken (probing)
        gw.deliver(pbx_invite(f"probe-{n}"), PBX)
    first = [gw.io.statuses(to=PBX, call_id=f"probe-{n}")[0] for n in range(8)]
    assert first == [503, 503, 503, 100, 503, 503, 503, 100]
    control.measure(0.1)
    assert control.accept == 1.0
    gw.deliver(pbx_invite("later"), PBX)
    assert gw.io.requests("INVITE", to=CARRIER, call_id="later") != []
    assert gw.channels() == {PBX_ID: 3}
    gw.shutdown()
    gw.assert_idle()


def test_inbound_calls_shed_and_taken_in_turn() -> None:
    """At ½, every second new call is taken, whichever side it comes from."""
    gw = Gateway()
    control = OverloadControl(OverloadSettings(sustain=1))
    gw.layer.overload = control
    control.measure(1.0)
    for n in range(4):
        gw.deliver(carrier_invite(f"in-{n}", number=PBX_NUMBER), CARRIER)
    statuses = [gw.io.statuses(to=CARRIER, call_id=f"in-{n}")[0] for n in range(4)]
    assert statuses == [503, 100, 503, 100]
    assert gw.channels() == {PBX_ID: 2}
    gw.shutdown()
    gw.assert_idle()
