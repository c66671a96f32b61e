"""The call's life as data (gateway.proxy.call): properties of the
transition table that keep channels from leaking, and what the router does
with an event the table has no row for (logged, counted, the call ended).

The call paths themselves are driven through the router's entry points in
``test_router.py``; here the table is read as data, and the bug path (which
no peer can reach) is forced by firing an event by hand.
"""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

from admission import AdmissionResult, MemoryAdmission
from gateway.config.settings import CarrierSettings
from gateway.proxy.call import (
    ENDED,
    LIVE,
    ROWS,
    TRANSITIONS,
    Call,
    CallEffect,
    CallEvent,
    CallState,
)
from gateway.proxy.directory import Directory, ProfileEntry
from gateway.proxy.registrar import LocationService
from gateway.proxy.router import CallRouter, ReleaseReason
from sip.digest import DigestRealm
from sip.message import Request
from sip.parser import parse_datagram
from sip.settings import SIPSettings
from sip.transaction import TransactionLayer
from sip.transport import Source, stamp_top_via
from sip.uri import parse_uri
from tests.support.fake_io import FakeIO, complete
from tests.support.peers import answer

S, E, F = CallState, CallEvent, CallEffect

#: States in which the call holds a channel (admission granted, not ended).
HOLDING = frozenset({S.TRYING, S.EARLY, S.CANCELLING, S.ACCEPTED, S.CONFIRMED})
UNANSWERED = frozenset({S.TRYING, S.EARLY, S.CANCELLING})
ANSWERED = frozenset({S.ACCEPTED, S.CONFIRMED})


# -- the table as data ---------------------------------------------------------------
def test_every_live_state_can_be_aborted() -> None:
    """A profile deletion, a shutdown and the bug path end a call through
    its ABORT row, so every state a call can be held in has one."""
    for state in LIVE:
        assert (state, E.ABORT) in TRANSITIONS, state


def test_a_channel_is_released_exactly_once_on_every_path() -> None:
    """Leaving the states that hold a channel always releases it; nothing
    else does (no row of an admitting or ended state frees a channel,
    except the ADMITTED of a call cancelled meanwhile)."""
    for (state, event), row in TRANSITIONS.items():
        releases = F.RELEASE in row.effects
        leaves = row.target is not None and row.target not in HOLDING
        if state in HOLDING and leaves:
            assert releases, (state, event)
        elif (state, event) == (S.ADMITTING_CANCELLED, E.ADMITTED):
            assert releases and row.target is S.TERMINATED
        else:
            assert not releases, (state, event)


def test_a_call_finishes_once() -> None:
    """The call's end (meter, record, timers) comes with the rows from a
    live state into an ended one, and only with them; an ended call never
    comes back."""
    for (state, event), row in TRANSITIONS.items():
        assert row.finishes == (state in LIVE and row.target in ENDED), (state, event)
        if state in ENDED:
            assert row.target in (None, S.TERMINATED), (state, event)


def test_every_release_has_a_reason() -> None:
    """A release row names its reason, except END and ABORT, whose reason
    comes with the event (maximum duration, credit, deletion, shutdown)."""
    for (state, event), row in TRANSITIONS.items():
        if F.RELEASE in row.effects and event not in (E.END, E.ABORT):
            assert isinstance(row.reason, ReleaseReason), (state, event)


def test_what_peers_can_cause_has_a_row_wherever_it_can_arrive() -> None:
    """Peer-caused events are never bugs: a CANCEL and a session refresh
    (a 2xx to an UPDATE) may come in any state; ACK and BYE in any state
    the router still holds the call in; the INVITE's responses and
    failures once it was forwarded, except what the client transaction
    never passes up after a 2xx (1xx, 300-699, Timer B: RFC 6026 §7.2)."""
    for state in CallState:
        assert (state, E.CANCEL) in TRANSITIONS, state
        assert (state, E.SESSION_REFRESH) in TRANSITIONS, state
    for state in LIVE:
        assert (state, E.ACK) in TRANSITIONS, state
        assert (state, E.BYE) in TRANSITIONS, state
    for state in UNANSWERED | ENDED:
        for event in (E.RESP_1XX, E.RESP_2XX, E.RESP_300_699, E.TIMEOUT, E.TRANSPORT_ERROR):
            assert (state, event) in TRANSITIONS, (state, event)
    for state in ANSWERED:
        assert (state, E.RESP_2XX) in TRANSITIONS, state


def test_timers_left_running_after_the_answer_are_harmless() -> None:
    """Timer C and the CANCEL timeout are not cancelled by a 2xx (a 2xx
    may cross the CANCEL, RFC 3261 §9.1); when they fire, nothing happens.
    The no-ACK timer fires harmlessly once the ACK came."""
    for state in ANSWERED:
        assert TRANSITIONS[state, E.TIMER_C].target is None
        assert TRANSITIONS[state, E.CANCEL_TIMEOUT].target is None
    assert TRANSITIONS[S.CONFIRMED, E.NO_ACK].target is None
    assert TRANSITIONS[S.ACCEPTED, E.NO_ACK].target is S.TERMINATED


def test_a_2xx_after_the_call_ended_charges_nothing() -> None:
    """A late 2xx (after a BYE in the early dialog, Timer C or a deletion)
    is relayed but does not start the meter of a call that is over."""
    for state in ENDED:
        assert F.ANSWER not in TRANSITIONS[state, E.RESP_2XX].effects
    for state in UNANSWERED:
        assert TRANSITIONS[state, E.RESP_2XX].effects == (F.ANSWER,)


def test_the_rows_per_state_are_the_table() -> None:
    assert {(s, e) for s, rows in ROWS.items() for e in rows} == set(TRANSITIONS)


def test_every_effect_is_carried_out_by_the_router() -> None:
    """Each effect is the method of its name, but the final answers: one
    method with the status in the effect's name."""
    effects = Gateway().router._effects
    assert set(effects) == set(CallEffect)
    for effect, method in effects.items():
        assert callable(method), effect
        if not effect.name.startswith("REPLY_"):
            assert getattr(method, "__name__", None) == f"_{effect.name.lower()}", effect


# -- the bug path: an event with no row ----------------------------------------------
GATEWAY = ("192.0.2.1", 5060)
PBX = Source("UDP", "198.51.100.7", 5070)
CARRIER = Source("UDP", "203.0.113.20", 5060)
DIALLED = "+442079460000"


class Observed:
    def __init__(self) -> None:
        self.releases: list[str] = []

    def admission(self, profile: ProfileEntry, result: str) -> None:
        pass

    def auth_failure(self) -> None:
        pass

    def call_setup_time(self, seconds: float) -> None:
        pass

    def channel_released(self, profile: ProfileEntry, reason: ReleaseReason) -> None:
        self.releases.append(str(reason))


class WaitingAdmission:
    """Memory admission seen only through its coroutines, as a networked
    backend (Redis) is: the router must wait for its answer in a task."""

    def __init__(self) -> None:
        self.memory = MemoryAdmission()

    async def acquire(self, profile_id: int, call_id: str, limit: int) -> AdmissionResult:
        return await self.memory.acquire(profile_id, call_id, limit)

    async def release(self, call_id: str) -> bool:
        return await self.memory.release(call_id)

    async def in_use(self, profile_id: int) -> int:
        return await self.memory.in_use(profile_id)

    async def counts(self) -> dict[int, int]:
        return await self.memory.counts()

    async def close(self) -> None:
        await self.memory.close()


class Gateway:
    """A router on a manual clock with one IP profile, "pbx", and a carrier."""

    def __init__(self, admission: MemoryAdmission | WaitingAdmission | None = None) -> None:
        self.layer = TransactionLayer(SIPSettings())
        self.io = FakeIO(self.layer)
        self.admission = admission if admission is not None else MemoryAdmission()
        self.observed = Observed()
        profile = ProfileEntry(
            id=1, account_id=1, name="pbx", auth_mode="ip", sip_username="ip-1", ha1={},
            ip=PBX.host, port=PBX.port, channel_limit=300, account="acme", credit=Decimal(10),
        )  # fmt: skip
        self.router = CallRouter(
            layer=self.layer,
            io=self.io,
            directory=Directory([profile], {}, version=1, rates={"": Decimal(0)}),
            admission=self.admission,
            registrar=LocationService(),
            digest=DigestRealm("sip.example.net", b"k" * 32),
            carrier=CarrierSettings(
                uri=parse_uri(f"sip:{CARRIER.host}:{CARRIER.port}"),
                transport="UDP",
                sources=((CARRIER.host, None),),
            ),
            own_addresses=[GATEWAY],
            advertised=GATEWAY,
            observer=self.observed,
        )
        self.io.router = self.router

    def invite(self, call_id: str) -> str:
        return (
            f"INVITE sip:{DIALLED}@{GATEWAY[0]}:{GATEWAY[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {PBX.host}:{PBX.port};branch=z9hG4bK{call_id};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:pbx@{PBX.host}>;tag=caller\r\n"
            f"To: <sip:{DIALLED}@{GATEWAY[0]}>\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 1 INVITE\r\n"
            f"Contact: <sip:pbx@{PBX.host}:{PBX.port}>\r\n"
            "Content-Length: 0\r\n\r\n"
        )

    def forwarded(self, call_id: str) -> Request:
        return self.io.last("INVITE", to=CARRIER, call_id=call_id)

    def channels(self) -> dict[int, int]:
        return complete(self.admission.counts())

    def call(self, call_id: str) -> Call:
        return self.router.calls[call_id]


def state(call: Call) -> CallState:
    """The call's state now (a function, so that a type checker does not
    keep what it saw before an event)."""
    return call.state


def _state_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR and r.getMessage().startswith("call state error")
    ]


def test_an_unknown_transition_is_logged_counted_and_ends_an_answered_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw = Gateway()
    gw.io.deliver(gw.invite("bug-up"), PBX)
    invite = gw.forwarded("bug-up")
    gw.io.deliver(answer(invite, 200, contact=f"<sip:peer@{CARRIER.host}>"), CARRIER)
    call = gw.call("bug-up")
    assert state(call) is S.ACCEPTED and gw.channels() == {1: 1}

    # A 1xx after the 2xx never reaches the router (RFC 6026 §7.2): no row.
    with caplog.at_level(logging.ERROR, logger="gateway.proxy.router"):
        gw.router._fire(call, E.RESP_1XX)
        gw.io.run_ready()

    (error,) = _state_errors(caplog)
    assert "call_id=bug-up state=ACCEPTED event=RESP_1XX" in error.getMessage()
    assert gw.router.stats.call_state_errors == 1
    # Ended as a deletion would end it: BYE both sides, the channel back.
    assert state(call) is S.TERMINATED
    assert gw.io.requests("BYE", to=CARRIER, call_id="bug-up")
    assert gw.io.requests("BYE", to=PBX, call_id="bug-up")
    assert gw.observed.releases == ["error"]
    assert gw.channels() == {} and "bug-up" not in gw.router.calls


def test_an_unknown_transition_of_a_ringing_call_cancels_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw = Gateway()
    gw.io.deliver(gw.invite("bug-ringing"), PBX)
    gw.io.deliver(answer(gw.forwarded("bug-ringing"), 180), CARRIER)
    call = gw.call("bug-ringing")
    assert state(call) is S.EARLY
    with caplog.at_level(logging.ERROR, logger="gateway.proxy.router"):
        gw.router._fire(call, E.NO_ACK)  # armed only by a 2xx
        gw.io.run_ready()
    assert len(_state_errors(caplog)) == 1
    assert gw.io.requests("CANCEL", to=CARRIER, call_id="bug-ringing")
    assert gw.io.statuses(to=PBX, call_id="bug-ringing") == [100, 180, 487]
    assert gw.observed.releases == ["error"] and gw.channels() == {}


def test_an_unknown_transition_while_admitting_gives_the_channel_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Admission that waits (Redis) may still be acquiring the channel: the
    call is marked cancelled, and admission gives the channel back when it
    answers."""
    gw = Gateway(WaitingAdmission())
    # Fed by hand, not with FakeIO.deliver: the admission it queues must
    # not run yet.
    request = parse_datagram(gw.invite("bug-admitting").encode())
    request.source = (PBX.transport, PBX.host, PBX.port)
    assert isinstance(request, Request)
    stamp_top_via(request, PBX.host, PBX.port)
    request.validate()
    gw.router.on_message(request, PBX, reliable=False)  # admission is queued, not run
    call = gw.call("bug-admitting")
    assert state(call) is S.ADMITTING
    with caplog.at_level(logging.ERROR, logger="gateway.proxy.router"):
        gw.router._fire(call, E.RESP_2XX)  # nothing was forwarded yet
    assert len(_state_errors(caplog)) == 1 and state(call) is S.ADMITTING_CANCELLED
    gw.io.run_ready()  # admission answers: 487, and the channel is given back
    assert state(call) is S.TERMINATED
    assert gw.io.statuses(to=PBX, call_id="bug-admitting")[-1] == 487
    assert not gw.io.requests("INVITE", to=CARRIER, call_id="bug-admitting")
    assert gw.observed.releases == ["cancel"] and gw.channels() == {}


def test_an_unknown_transition_of_an_ended_call_only_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw = Gateway()
    gw.io.deliver(gw.invite("bug-ended"), PBX)
    call = gw.call("bug-ended")
    gw.io.deliver(answer(gw.forwarded("bug-ended"), 486), CARRIER)
    assert state(call) is S.TERMINATED
    sent = len(gw.io.sent)
    with caplog.at_level(logging.ERROR, logger="gateway.proxy.router"):
        gw.router._fire(call, E.NO_ACK)
    assert len(_state_errors(caplog)) == 1 and gw.router.stats.call_state_errors == 1
    assert len(gw.io.sent) == sent and gw.observed.releases == ["rejected"]
