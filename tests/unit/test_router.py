"""The call router without sockets (issue 11, point 4).

The router is driven through its public entry points only: the
constructor's keyword arguments, ``on_message`` (through the fake
transport), ``apply_directory``, ``end_all_calls``, the size of ``calls``
and ``tracked``.  Outcomes are read from what the fake I/O saw sent
(:mod:`tests.support.fake_io`), the in-memory admission controller's
counts, the records a fake sink received and the releases a fake observer
was told about.  Time is a manual clock: Timer B, Timer C, 64*T1, session
intervals, four hours of call, all take microseconds.

The same behaviours over real sockets: tests/e2e/test_release_paths_e2e.py,
test_router_e2e.py, test_calls_e2e.py, test_credit_e2e.py.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from admission import MemoryAdmission
from gateway.billing.cdr import CallRecordEntry
from gateway.billing.credit import CreditMeter
from gateway.proxy.directory import Directory, ProfileEntry
from gateway.proxy.registrar import LocationService
from gateway.proxy.router import CallRouter, CarrierSettings
from sip.digest import DigestRealm, authorize, ha1
from sip.message import Request, Response
from sip.settings import SIPSettings
from sip.transaction import TransactionLayer
from sip.transport import Source
from sip.uri import parse_uri
from tests.support.fake_io import FakeIO, complete
from tests.support.peers import answer

# -- the network: one address per actor ----------------------------------------
GATEWAY = ("192.0.2.1", 5060)
PBX = Source("UDP", "198.51.100.7", 5070)  # IP profile "pbx"
SALES = Source("UDP", "198.51.100.8", 5070)  # IP profile "sales"
STRANGER = Source("UDP", "198.51.100.7", 5999)  # the PBX's IP, another port
REG_PBX = Source("UDP", "198.51.100.9", 5060)  # registration profile "reg"'s PBX
CARRIER = Source("UDP", "203.0.113.20", 5060)
CARRIER_OTHER_PORT = Source("UDP", "203.0.113.20", 5099)

PBX_CONTACT = f"<sip:pbx@{PBX.host}:{PBX.port}>"
CARRIER_CONTACT = f"<sip:peer@{CARRIER.host}:{CARRIER.port}>"
RECORD_ROUTE = f"<sip:{GATEWAY[0]}:{GATEWAY[1]};lr>"

DIALLED = "+442079460000"  # what PBXs call out to
PBX_NUMBER = "+14155550100"  # assigned to "pbx"
UNASSIGNED = "+14155550199"  # assigned to nobody
CALLER_ID = "+12125550100"  # the carrier's caller on inbound calls

REALM = "sip.example.net"
REG_USERNAME = "reg-7f3a"
REG_PASSWORD = "correct horse"

SETTINGS = SIPSettings()  # the defaults: T1 0.5 s, Timer C 180 s
SIXTY_FOUR_T1 = 64 * SETTINGS.t1  # Timer B, Timer H (RFC 3261 §17)
#: Every transaction has ended after this: a request never answered
#: downstream times out (64*T1), and its answer upstream lives 64*T1 more.
SETTLE = 2 * SIXTY_FOUR_T1 + SETTINGS.t4

PBX_ID, SALES_ID, REG_ID = 1, 2, 3


def carrier_settings(host: str, port: int) -> CarrierSettings:
    """The carrier at ``host``:``port``, trusted from any port of its host.
    The one place that knows how the router's carrier settings are built."""
    return CarrierSettings(
        uri=parse_uri(f"sip:{host}:{port}"), transport="UDP", sources=((host, None),)
    )


def ip_profile(
    profile_id: int, name: str, source: Source, *, limit: int = 300, credit: str = "1000"
) -> ProfileEntry:
    return ProfileEntry(
        id=profile_id,
        account_id=1,
        name=name,
        auth_mode="ip",
        sip_username=f"ip-{profile_id}",
        ha1={},
        ip=source.host,
        port=source.port,
        channel_limit=limit,
        account="acme",
        credit=Decimal(credit),
    )


REG = ProfileEntry(
    id=REG_ID,
    account_id=1,
    name="reg",
    auth_mode="registration",
    sip_username=REG_USERNAME,
    ha1={"MD5": ha1(REG_USERNAME, REALM, REG_PASSWORD, "MD5")},
    ip=None,
    port=None,
    channel_limit=300,
    account="acme",
    credit=Decimal(1000),
)


def directory(
    *profiles: ProfileEntry, version: int = 1, rates: dict[str, Decimal] | None = None
) -> Directory:
    """Profiles (default: "pbx", "sales", "reg"), "pbx"'s number, a free
    rate for every destination unless ``rates`` says otherwise."""
    if not profiles:
        profiles = (ip_profile(PBX_ID, "pbx", PBX), ip_profile(SALES_ID, "sales", SALES), REG)
    listed = {p.id for p in profiles}
    numbers = {PBX_NUMBER: PBX_ID} if PBX_ID in listed else {}
    return Directory(
        profiles, numbers, version=version, rates={"": Decimal(0)} if rates is None else rates
    )


# -- fakes of the router's other ports -----------------------------------------
@dataclass
class Observed:
    """A RouterObserver that remembers (profile name, result or reason)."""

    admissions: list[tuple[str, str]] = field(default_factory=list)
    releases: list[tuple[str, str]] = field(default_factory=list)
    auth_failures: int = 0
    setup_times: list[float] = field(default_factory=list)

    def admission(self, profile: ProfileEntry, result: str) -> None:
        self.admissions.append((profile.name, str(result)))

    def auth_failure(self) -> None:
        self.auth_failures += 1

    def call_setup_time(self, seconds: float) -> None:
        self.setup_times.append(seconds)

    def channel_released(self, profile: ProfileEntry, reason: Any) -> None:
        self.releases.append((profile.name, str(reason)))


@dataclass
class Records:
    """A RecordSink: the call records, in the order the calls ended."""

    entries: list[CallRecordEntry] = field(default_factory=list)

    def submit(self, entry: CallRecordEntry) -> None:
        self.entries.append(entry)

    def of(self, call_id: str) -> CallRecordEntry:
        (entry,) = [e for e in self.entries if e.call_id == call_id]
        return entry


# -- SIP messages, as the peers write them --------------------------------------
_branches = itertools.count(1)


def _via(source: Source) -> str:
    return f"SIP/2.0/UDP {source.host}:{source.port};branch=z9hG4bKpeer{next(_branches)};rport"


def _lines(headers: Iterable[str]) -> str:
    return "".join(f"{header}\r\n" for header in headers)


def pbx_invite(
    call_id: str,
    *,
    source: Source = PBX,
    number: str = DIALLED,
    cseq: int = 1,
    extra: Sequence[str] = (),
) -> str:
    """A PBX's INVITE to the gateway for ``number``."""
    host, port = GATEWAY
    return (
        f"INVITE sip:{number}@{host}:{port} SIP/2.0\r\n"
        f"Via: {_via(source)}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:pbx@{source.host}>;tag=caller\r\n"
        f"To: <sip:{number}@{host}>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} INVITE\r\n"
        f"Contact: <sip:pbx@{source.host}:{source.port}>\r\n"
        f"{_lines(extra)}Content-Length: 0\r\n\r\n"
    )


def carrier_invite(call_id: str, number: str = PBX_NUMBER, source: Source = CARRIER) -> str:
    host, port = GATEWAY
    return (
        f"INVITE sip:{number}@{host}:{port} SIP/2.0\r\n"
        f"Via: {_via(source)}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{CALLER_ID}@{CARRIER.host}>;tag=carrier\r\n"
        f"To: <sip:{number}@{host}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: {CARRIER_CONTACT}\r\n"
        "Content-Length: 0\r\n\r\n"
    )


def cancel_of(invite: str) -> str:
    """The CANCEL of an INVITE as its sender wrote it (RFC 3261 §9.1: same
    Request-URI, top Via, Call-ID, From, To and CSeq number)."""
    head = invite.split("\r\n")
    lines = [head[0].replace("INVITE", "CANCEL", 1)]
    lines += [line for line in head[1:] if line.split(":")[0] in ("Via", "From", "To", "Call-ID")]
    cseq = next(line for line in head if line.startswith("CSeq:")).split()[1]
    lines += ["Max-Forwards: 70", f"CSeq: {cseq} CANCEL", "Content-Length: 0"]
    return "\r\n".join(lines) + "\r\n\r\n"


def in_dialog(
    method: str,
    *,
    source: Source,
    target: str,
    from_: str,
    to: str,
    call_id: str,
    cseq: int,
    extra: Sequence[str] = (),
) -> str:
    """An in-dialog request to the remote target ``target``, along the
    gateway's Record-Route (RFC 3261 §12.2.1.1)."""
    return (
        f"{method} {target.strip('<>')} SIP/2.0\r\n"
        f"Via: {_via(source)}\r\n"
        f"Route: {RECORD_ROUTE}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: {from_}\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Contact: <sip:x@{source.host}:{source.port}>\r\n"
        f"{_lines(extra)}Content-Length: 0\r\n\r\n"
    )


PBX_AS_CALLER = f"<sip:pbx@{PBX.host}>;tag=caller"


def from_pbx(method: str, call_id: str, to: str, cseq: int, extra: Sequence[str] = ()) -> str:
    """The calling PBX's request in an outbound call (``to``: the 2xx's To)."""
    return in_dialog(
        method, source=PBX, target=CARRIER_CONTACT, from_=PBX_AS_CALLER, to=to,
        call_id=call_id, cseq=cseq, extra=extra,
    )  # fmt: skip


def from_carrier(method: str, call_id: str, callee: str, cseq: int) -> str:
    """The called carrier's request in an outbound call (``callee``: its To)."""
    return in_dialog(
        method, source=CARRIER, target=PBX_CONTACT, from_=callee, to=PBX_AS_CALLER,
        call_id=call_id, cseq=cseq,
    )  # fmt: skip


# -- the gateway under test --------------------------------------------------------
@dataclass
class Dialog:
    call_id: str
    invite: Request  # as the carrier received it
    to: str  # the To of the 2xx: the callee's side of the dialog


class Gateway:
    """A CallRouter wired as ``gateway.web.app``'s router and calls contexts wire it, with fakes
    for the network, the clock, the records and the metrics."""

    def __init__(self, initial: Directory | None = None, **options: Any) -> None:
        self.layer = TransactionLayer(SETTINGS)
        self.io = FakeIO(self.layer)
        self.admission = MemoryAdmission()
        self.observed = Observed()
        self.records = Records()
        initial = initial if initial is not None else directory()
        self.router = CallRouter(
            layer=self.layer,
            io=self.io,
            directory=initial,
            admission=self.admission,
            registrar=LocationService(),
            digest=DigestRealm(REALM, b"k" * 32, algorithms=("MD5", "SHA-256")),
            carrier=carrier_settings(CARRIER.host, CARRIER.port),
            own_addresses=[GATEWAY],
            advertised=GATEWAY,
            observer=self.observed,
            meter=CreditMeter(),
            records=self.records,
            wall_clock=self.io.wall_clock,
            **options,
        )
        self.io.router = self.router
        self.router.apply_directory(initial)  # the meter's first snapshot (router context)

    def deliver(self, data: str, source: Source) -> None:
        self.io.deliver(data, source)

    def reload(self, new: Directory) -> None:
        """A directory reload (watch_directory's ``apply``)."""
        self.router.apply_directory(new)
        self.io.run_ready()

    def shutdown(self) -> int:
        """What the calls context does on the way out: end every call."""
        ended = self.router.end_all_calls()
        self.io.run_ready()
        return ended

    def channels(self) -> dict[int, int]:
        """Channels in use per profile id, as the admission controller counts them."""
        return complete(self.admission.counts())

    def pbx_calls(
        self, call_id: str, *, source: Source = PBX, **kwargs: Any
    ) -> tuple[str, Request]:
        """A PBX's INVITE: what it sent, and the INVITE the carrier got."""
        text = pbx_invite(call_id, source=source, **kwargs)
        self.deliver(text, source)
        return text, self.io.last("INVITE", to=CARRIER, call_id=call_id)

    def answered_call(
        self, call_id: str, *, invite_extra: Sequence[str] = (), ok_extra: Sequence[str] = ()
    ) -> Dialog:
        """An outbound call of "pbx", answered by the carrier and acknowledged."""
        _, invite = self.pbx_calls(call_id, extra=invite_extra)
        self.deliver(answer(invite, 200, contact=CARRIER_CONTACT, extra=ok_extra), CARRIER)
        (ok,) = self.io.responses(200, to=PBX, call_id=call_id, method="INVITE")
        to = ok.headers.get("to")
        assert to is not None
        self.deliver(from_pbx("ACK", call_id, to, 1), PBX)
        (ack,) = self.io.requests("ACK", to=CARRIER, call_id=call_id)
        assert "route" not in ack.headers, "our Route is removed (RFC 3261 §16.4)"
        return Dialog(call_id, invite, to)

    def ringing_call(self, call_id: str) -> tuple[str, Request]:
        text, invite = self.pbx_calls(call_id)
        self.deliver(answer(invite, 180), CARRIER)
        return text, invite

    def carrier_cancelled(self, invite: Request) -> None:
        """The carrier answers the gateway's CANCEL 200 and its INVITE 487."""
        cancel = self.io.last("CANCEL", to=CARRIER, call_id=invite.call_id)
        self.deliver(answer(cancel, 200), CARRIER)
        self.deliver(answer(invite, 487), CARRIER)

    def byes(self, call_id: str, pbx: Source = PBX) -> dict[str, Request]:
        """The BYEs the gateway itself sent for ``call_id``, by side."""
        sides = {"carrier": CARRIER, "pbx": pbx}
        found = {
            side: self.io.requests("BYE", to=to, call_id=call_id) for side, to in sides.items()
        }
        return {side: requests[0] for side, requests in found.items() if requests}

    def answer_byes(self, call_id: str, pbx: Source = PBX) -> None:
        """Both sides answer the gateway's BYEs, as good peers do."""
        for side, bye in self.byes(call_id, pbx).items():
            self.deliver(answer(bye, 200), CARRIER if side == "carrier" else pbx)

    def assert_idle(self) -> None:
        """Once every transaction has run out: no call, no channel, and the
        router holds nothing for transactions (a growing number is a leak)."""
        self.io.advance(SETTLE)
        assert len(self.router.calls) == 0
        assert self.channels() == {}
        assert self.router.tracked == 0
        assert len(self.layer) == 0


def sent_at(gw: Gateway, message: Request) -> float:
    (at,) = [sent.at for sent in gw.io.sent if sent.message is message]
    return at


# == every way a call ends frees its channel ======================================
def test_bye_from_the_pbx() -> None:
    gw = Gateway()
    call = gw.answered_call("bye-pbx")
    assert gw.channels() == {PBX_ID: 1}
    assert len(gw.router.calls) == 1
    gw.io.advance(12.5)
    gw.deliver(from_pbx("BYE", "bye-pbx", call.to, 2), PBX)
    bye = gw.io.last("BYE", to=CARRIER, call_id="bye-pbx")
    assert bye.uri_text == CARRIER_CONTACT.strip("<>"), "to the carrier's remote target"
    assert "route" not in bye.headers
    assert bye.max_forwards == 69
    assert gw.channels() == {}, "the channel is freed when the BYE passes"
    gw.deliver(answer(bye, 200), CARRIER)
    assert gw.io.statuses(to=PBX, call_id="bye-pbx", method="BYE") == [200]
    assert gw.observed.admissions == [("pbx", "admitted")]
    assert gw.observed.releases == [("pbx", "bye")]
    record = gw.records.of("bye-pbx")
    assert (record.direction, record.final_status, record.duration_ms) == ("outbound", 200, 12500)
    assert (record.caller, record.callee, record.profile_id) == ("pbx", DIALLED, PBX_ID)
    assert record.answered_at is not None
    gw.assert_idle()


def test_bye_from_the_carrier() -> None:
    gw = Gateway()
    call = gw.answered_call("bye-carrier")
    gw.deliver(from_carrier("BYE", "bye-carrier", call.to, 1), CARRIER)
    bye = gw.io.last("BYE", to=PBX, call_id="bye-carrier")
    assert bye.uri_text == PBX_CONTACT.strip("<>")
    assert "route" not in bye.headers
    assert gw.channels() == {}
    gw.deliver(answer(bye, 200), PBX)
    assert gw.io.statuses(to=CARRIER, call_id="bye-carrier", method="BYE") == [200]
    assert gw.observed.releases == [("pbx", "bye")]
    assert gw.records.of("bye-carrier").final_status == 200
    gw.assert_idle()


def test_cancel_while_ringing() -> None:
    gw = Gateway()
    text, invite = gw.ringing_call("cancel")
    assert gw.io.statuses(to=PBX, call_id="cancel") == [100, 180]
    assert gw.channels() == {PBX_ID: 1}
    gw.deliver(cancel_of(text), PBX)
    assert gw.io.statuses(to=PBX, call_id="cancel", method="CANCEL") == [200]
    downstream = gw.io.last("CANCEL", to=CARRIER, call_id="cancel")
    assert downstream.top_via.branch == invite.top_via.branch, "RFC 3261 §9.1"
    gw.deliver(answer(downstream, 200), CARRIER)
    gw.deliver(answer(invite, 487), CARRIER)
    assert gw.io.statuses(to=PBX, call_id="cancel") == [100, 180, 487]
    assert len(gw.io.requests("ACK", to=CARRIER, call_id="cancel")) == 1, "the 487 is ACKed"
    assert gw.channels() == {}
    assert gw.observed.releases == [("pbx", "cancel")]
    record = gw.records.of("cancel")
    assert (record.final_status, record.duration_ms, record.answered_at) == (487, 0, None)
    gw.assert_idle()


def test_a_cancel_the_carrier_never_answers_is_answered_487_after_timer_b() -> None:
    """The far end ignores the CANCEL: the gateway ends the call itself
    one Timer B later (64*T1), 487 upstream."""
    gw = Gateway()
    text, _ = gw.ringing_call("cancel-ignored")
    gw.deliver(cancel_of(text), PBX)
    gw.io.advance(SIXTY_FOUR_T1 - 0.01)
    assert gw.io.statuses(to=PBX, call_id="cancel-ignored") == [100, 180]
    assert gw.channels() == {PBX_ID: 1}
    gw.io.advance(0.02)
    assert gw.io.statuses(to=PBX, call_id="cancel-ignored") == [100, 180, 487]
    assert gw.channels() == {}
    assert gw.observed.releases == [("pbx", "cancel")]
    assert gw.records.of("cancel-ignored").final_status == 487


def test_a_cancel_the_carrier_never_answers_leaves_nothing_behind() -> None:
    """RFC 3261 §9.1: 64*T1 after the CANCEL with no final answer, the
    caller has its 487 and the INVITE's client transaction (which has no
    timer of its own past a 1xx) and its relay are gone."""
    gw = Gateway()
    text, _ = gw.ringing_call("cancel-ignored")
    gw.deliver(cancel_of(text), PBX)
    gw.io.advance(SIXTY_FOUR_T1 + 0.01)
    assert gw.channels() == {}
    assert gw.io.statuses(to=PBX, call_id="cancel-ignored")[-1] == 487
    assert gw.layer.client_count == 0  # the 487 still waits for its ACK
    gw.assert_idle()


def test_a_final_non_2xx_from_the_carrier() -> None:
    gw = Gateway()
    _, invite = gw.pbx_calls("busy")
    assert gw.channels() == {PBX_ID: 1}
    gw.deliver(answer(invite, 486), CARRIER)
    assert gw.io.statuses(to=PBX, call_id="busy") == [100, 486]
    assert gw.channels() == {}
    assert gw.observed.releases == [("pbx", "rejected")]
    assert gw.records.of("busy").final_status == 486
    gw.assert_idle()


def test_a_final_non_2xx_from_the_pbx_on_an_inbound_call() -> None:
    gw = Gateway()
    gw.deliver(carrier_invite("declined"), CARRIER)
    invite = gw.io.last("INVITE", to=PBX, call_id="declined")
    assert gw.channels() == {PBX_ID: 1}
    gw.deliver(answer(invite, 603), PBX)
    assert gw.io.statuses(to=CARRIER, call_id="declined") == [100, 603]
    assert gw.channels() == {}
    assert gw.observed.releases == [("pbx", "rejected")]
    record = gw.records.of("declined")
    assert (record.direction, record.final_status) == ("inbound", 603)
    gw.assert_idle()


def test_a_2xx_never_acknowledged_frees_the_channel_after_64_t1() -> None:
    gw = Gateway()
    _, invite = gw.pbx_calls("no-ack")
    gw.deliver(answer(invite, 200, contact=CARRIER_CONTACT), CARRIER)
    assert gw.io.statuses(to=PBX, call_id="no-ack") == [100, 200]
    gw.io.advance(SIXTY_FOUR_T1 - 0.01)
    assert gw.channels() == {PBX_ID: 1}
    gw.io.advance(0.02)  # RFC 3261 §13.3.1.4: the UAS gives up after 64*T1
    assert gw.channels() == {}
    assert gw.observed.releases == [("pbx", "no_ack")]
    assert gw.io.requests("BYE") == [], "the gateway sends no BYE for it"
    assert gw.records.of("no-ack").final_status == 200
    gw.assert_idle()


def test_timer_b_a_carrier_that_never_answers_gets_408() -> None:
    gw = Gateway()
    gw.pbx_calls("silent")
    gw.io.advance(SIXTY_FOUR_T1 - 0.01)
    assert len(gw.io.requests("INVITE", to=CARRIER, retransmissions=True)) > 1, "Timer A"
    assert gw.io.statuses(to=PBX, call_id="silent") == [100]
    assert gw.channels() == {PBX_ID: 1}
    gw.io.advance(0.02)
    assert gw.io.statuses(to=PBX, call_id="silent") == [100, 408]
    assert gw.channels() == {}
    assert gw.observed.releases == [("pbx", "timeout")]
    assert gw.records.of("silent").final_status == 408
    gw.assert_idle()


def test_timer_c_a_carrier_that_rings_forever_is_cancelled_and_answered_408() -> None:
    gw = Gateway()
    _, invite = gw.ringing_call("rings")
    gw.io.advance(SETTINGS.timer_c - 0.01)
    assert gw.io.requests("CANCEL", to=CARRIER) == []
    assert gw.channels() == {PBX_ID: 1}
    gw.io.advance(0.02)  # RFC 3261 §16.6 step 11
    cancel = gw.io.last("CANCEL", to=CARRIER, call_id="rings")
    assert cancel.top_via.branch == invite.top_via.branch
    assert gw.io.statuses(to=PBX, call_id="rings") == [100, 180, 408]
    assert gw.channels() == {}
    # The carrier's own ending of the INVITE is not relayed a second time.
    gw.deliver(answer(cancel, 200), CARRIER)
    gw.deliver(answer(invite, 487), CARRIER)
    assert gw.io.statuses(to=PBX, call_id="rings") == [100, 180, 408]
    assert gw.observed.releases == [("pbx", "timeout")]
    assert gw.records.of("rings").final_status == 408
    gw.assert_idle()


def test_timer_c_restarts_at_each_provisional_answer() -> None:
    """RFC 3261 §16.7 step 2: a provisional answer other than 100 resets
    Timer C; a 100 does not."""
    gw = Gateway()
    _, invite = gw.ringing_call("rings-long")
    gw.io.advance(SETTINGS.timer_c - 10)
    gw.deliver(answer(invite, 100), CARRIER)
    gw.deliver(answer(invite, 183), CARRIER)  # Timer C starts again now
    gw.io.advance(20)  # past the first Timer C
    assert gw.io.requests("CANCEL", to=CARRIER) == []
    assert gw.channels() == {PBX_ID: 1}
    gw.io.advance(SETTINGS.timer_c - 20 - 0.01)
    assert gw.io.requests("CANCEL", to=CARRIER) == []
    gw.io.advance(0.02)
    gw.io.last("CANCEL", to=CARRIER, call_id="rings-long")
    assert gw.io.statuses(to=PBX, call_id="rings-long") == [100, 180, 183, 408]
    assert gw.channels() == {}
    gw.carrier_cancelled(invite)
    gw.assert_idle()


def test_timer_c_with_a_carrier_that_ignores_the_cancel_leaves_nothing_behind() -> None:
    gw = Gateway()
    gw.ringing_call("rings-deaf")
    gw.io.advance(SETTINGS.timer_c + 0.01)
    assert gw.io.statuses(to=PBX, call_id="rings-deaf") == [100, 180, 408]
    gw.io.advance(SIXTY_FOUR_T1)  # §9.1: the INVITE client transaction goes
    assert gw.router.tracked == 0 and gw.layer.client_count == 0
    gw.assert_idle()


def test_a_next_hop_that_cannot_be_reached_gets_503() -> None:
    gw = Gateway()
    gw.io.unreachable.add((CARRIER.host, CARRIER.port))
    gw.deliver(pbx_invite("unreachable"), PBX)
    assert gw.io.statuses(to=PBX, call_id="unreachable") == [100, 503]
    (refused,) = gw.io.responses(503, to=PBX, call_id="unreachable")
    assert refused.reason == "Next hop unreachable"
    assert gw.channels() == {}
    assert gw.observed.releases == [("pbx", "unreachable")]
    assert gw.records.of("unreachable").final_status == 503
    gw.assert_idle()


SESSION = ("Session-Expires: 120;refresher=uac", "Supported: timer")
SESSION_OK = ("Session-Expires: 120;refresher=uac", "Require: timer")


def test_a_session_not_refreshed_gives_its_channel_back_without_a_bye() -> None:
    """RFC 4028: a refresh restarts the interval; one interval after the
    last refresh the channel is freed, no BYE is sent (§8.3: the phones
    do), and the dialog is forgotten (481)."""
    gw = Gateway()
    call = gw.answered_call("session", invite_extra=SESSION, ok_extra=SESSION_OK)
    gw.io.advance(100)
    gw.deliver(from_pbx("UPDATE", "session", call.to, 2, extra=SESSION), PBX)
    update = gw.io.last("UPDATE", to=CARRIER, call_id="session")
    gw.deliver(answer(update, 200, extra=SESSION_OK), CARRIER)
    assert gw.io.statuses(to=PBX, call_id="session", method="UPDATE") == [200]
    gw.io.advance(119.9)  # past the first interval: the refresh moved it
    assert gw.channels() == {PBX_ID: 1}
    gw.io.advance(0.2)
    assert gw.channels() == {}
    assert gw.observed.releases == [("pbx", "session_expired")]
    assert gw.io.requests("BYE") == []
    gw.deliver(from_pbx("BYE", "session", call.to, 3), PBX)
    assert gw.io.statuses(to=PBX, call_id="session", method="BYE") == [481]
    assert gw.records.of("session").duration_ms == 220_000
    gw.assert_idle()


def test_a_refresh_answered_without_session_expires_turns_the_timer_off() -> None:
    gw = Gateway()
    call = gw.answered_call("no-timer", invite_extra=SESSION, ok_extra=SESSION_OK)
    gw.deliver(from_pbx("UPDATE", "no-timer", call.to, 2, extra=SESSION), PBX)
    gw.deliver(answer(gw.io.last("UPDATE", to=CARRIER, call_id="no-timer"), 200), CARRIER)
    gw.io.advance(10 * 120)
    assert gw.channels() == {PBX_ID: 1}, "RFC 4028 §8.2: no Session-Expires, no timer"
    gw.deliver(from_pbx("BYE", "no-timer", call.to, 3), PBX)
    gw.deliver(answer(gw.io.last("BYE", to=CARRIER, call_id="no-timer"), 200), CARRIER)
    assert gw.observed.releases == [("pbx", "bye")]
    gw.assert_idle()


def test_a_session_interval_below_the_minimum_gets_422() -> None:
    gw = Gateway()
    gw.deliver(pbx_invite("short", extra=("Session-Expires: 60", "Supported: timer")), PBX)
    (refused,) = gw.io.responses(422, to=PBX, call_id="short")
    assert refused.headers.get("min-se") == "90"
    assert gw.io.requests("INVITE", to=CARRIER) == []
    assert gw.observed.admissions == []
    gw.assert_idle()


def test_the_maximum_call_duration_sends_bye_to_both_sides() -> None:
    gw = Gateway(max_call_duration=3600.0)
    call = gw.answered_call("long")
    gw.io.advance(3600.0 - 0.01)
    assert gw.byes("long") == {}
    gw.io.advance(0.02)
    byes = gw.byes("long")
    assert set(byes) == {"carrier", "pbx"}
    for bye in byes.values():
        assert 'text="Maximum call duration"' in (bye.headers.get("reason") or "")
    # Each side sees its dialog the right way round (RFC 3261 §12.2.1.1).
    assert (byes["carrier"].from_.tag, byes["carrier"].to.tag) == ("caller", "callee")
    assert (byes["pbx"].from_.tag, byes["pbx"].to.tag) == ("callee", "caller")
    assert byes["carrier"].cseq.number == 2, "above the caller's INVITE"
    assert byes["carrier"].uri_text == CARRIER_CONTACT.strip("<>")
    assert byes["pbx"].uri_text == PBX_CONTACT.strip("<>")
    assert gw.channels() == {}
    gw.answer_byes("long")
    assert gw.io.responses(method="BYE") == [], "answers to our own BYEs go nowhere"
    assert gw.observed.releases == [("pbx", "max_duration")]
    assert gw.records.of(call.call_id).duration_ms == 3_600_000
    gw.assert_idle()


def test_a_profile_deleted_with_a_call_up() -> None:
    gw = Gateway()
    gw.answered_call("deleted")
    gw.reload(directory(ip_profile(SALES_ID, "sales", SALES), REG, version=2))
    byes = gw.byes("deleted")
    assert set(byes) == {"carrier", "pbx"}
    assert all('text="Profile deleted"' in (b.headers.get("reason") or "") for b in byes.values())
    assert gw.channels() == {}
    assert gw.observed.releases == [("pbx", "profile_deleted")]
    gw.answer_byes("deleted")
    assert gw.records.of("deleted").final_status == 200
    gw.assert_idle()


def test_shutdown_ends_every_call() -> None:
    """end_all_calls: BYE both sides of an answered call, CANCEL and 487
    for a ringing one."""
    gw = Gateway()
    gw.answered_call("up")
    _, ringing = gw.ringing_call("ringing")
    assert gw.channels() == {PBX_ID: 2}
    assert gw.shutdown() == 2
    assert set(gw.byes("up")) == {"carrier", "pbx"}
    cancel = gw.io.last("CANCEL", to=CARRIER, call_id="ringing")
    assert cancel.top_via.branch == ringing.top_via.branch
    assert gw.io.statuses(to=PBX, call_id="ringing") == [100, 180, 487]
    assert gw.channels() == {}
    assert len(gw.router.calls) == 0
    assert gw.observed.releases == [("pbx", "shutdown"), ("pbx", "shutdown")]
    assert (gw.records.of("up").final_status, gw.records.of("ringing").final_status) == (200, 487)
    gw.answer_byes("up")
    gw.carrier_cancelled(ringing)
    assert gw.io.statuses(to=PBX, call_id="ringing") == [100, 180, 487], "one final answer"
    gw.assert_idle()


PRICE = {"": Decimal("0.6000")}  # 0.60 per minute: 0.01 per started second


def test_credit_exhausted_ends_the_call_before_it_is_overdrawn() -> None:
    """3 s of credit: BYE to both sides a little before the fourth second
    starts, and the record costs exactly the credit there was."""
    gw = Gateway(directory(ip_profile(PBX_ID, "pbx", PBX, credit="0.03"), rates=PRICE))
    answered = gw.io.now()
    gw.answered_call("credit")
    gw.io.advance(2.7)
    assert gw.byes("credit") == {}
    gw.io.advance(0.3)
    byes = gw.byes("credit")
    assert set(byes) == {"carrier", "pbx"}
    assert 2.7 < sent_at(gw, byes["carrier"]) - answered < 3.0
    assert 'text="Credit exhausted"' in (byes["pbx"].headers.get("reason") or "")
    assert gw.channels() == {}
    assert gw.observed.releases == [("pbx", "credit_exhausted")]
    assert gw.records.of("credit").cost == Decimal("0.0300")
    gw.answer_byes("credit")
    gw.assert_idle()


def test_two_calls_sharing_a_profiles_credit_are_both_cut_in_time() -> None:
    """0.05 of credit, two calls at 0.01 per second, the second answered
    1.5 s after the first: together they spend it by the start of the
    first call's fourth second, so both end just before it (alone, the
    first would have had five seconds), and the two records add up to
    the credit, never more."""
    gw = Gateway(directory(ip_profile(PBX_ID, "pbx", PBX, credit="0.05"), rates=PRICE))
    first = gw.io.now()
    gw.answered_call("share-a")
    gw.io.advance(1.5)
    gw.answered_call("share-b")
    assert gw.channels() == {PBX_ID: 2}
    gw.io.advance(2.7 - 1.5)
    assert gw.io.requests("BYE") == []
    gw.io.advance(0.3)
    for call_id in ("share-a", "share-b"):
        byes = gw.byes(call_id)
        assert set(byes) == {"carrier", "pbx"}, call_id
        assert 2.7 < sent_at(gw, byes["carrier"]) - first < 3.0
    assert gw.channels() == {}
    assert gw.observed.releases == [("pbx", "credit_exhausted")] * 2
    costs = (gw.records.of("share-a").cost, gw.records.of("share-b").cost)
    assert costs == (Decimal("0.0300"), Decimal("0.0200"))
    assert sum(costs) == Decimal("0.05")
    for call_id in ("share-a", "share-b"):
        gw.answer_byes(call_id)
    gw.assert_idle()


# == CANCEL crossing a 200 (RFC 3261 §9.2, §16.10) =================================
def test_a_cancel_crossing_the_200_leaves_the_call_up() -> None:
    """The CANCEL goes downstream while the carrier's 200 is on its way up:
    the 200 wins, it is relayed, the call holds its channel until the
    PBX's BYE (§9.1: the UAC then hangs up), and nobody gets a 487."""
    gw = Gateway()
    text, invite = gw.ringing_call("crossing")
    gw.deliver(cancel_of(text), PBX)
    downstream = gw.io.last("CANCEL", to=CARRIER, call_id="crossing")
    gw.deliver(answer(invite, 200, contact=CARRIER_CONTACT), CARRIER)
    gw.deliver(answer(downstream, 200), CARRIER)
    assert gw.io.statuses(to=PBX, call_id="crossing") == [100, 180, 200]
    assert gw.channels() == {PBX_ID: 1}
    (ok,) = gw.io.responses(200, to=PBX, call_id="crossing", method="INVITE")
    to = ok.headers.get("to")
    assert to is not None
    gw.deliver(from_pbx("ACK", "crossing", to, 1), PBX)
    gw.io.advance(SIXTY_FOUR_T1 + 1)  # the CANCEL's own deadline (Timer B) passes harmlessly
    assert gw.channels() == {PBX_ID: 1}
    gw.deliver(from_pbx("BYE", "crossing", to, 2), PBX)
    gw.deliver(answer(gw.io.last("BYE", to=CARRIER, call_id="crossing"), 200), CARRIER)
    assert gw.io.statuses(to=PBX, call_id="crossing") == [100, 180, 200]
    assert gw.observed.releases == [("pbx", "bye")]
    assert gw.records.of("crossing").final_status == 200
    gw.assert_idle()


def test_a_cancel_after_the_200_is_answered_but_changes_nothing() -> None:
    gw = Gateway()
    text, invite = gw.ringing_call("late-cancel")
    gw.deliver(answer(invite, 200, contact=CARRIER_CONTACT), CARRIER)
    gw.deliver(cancel_of(text), PBX)
    assert gw.io.statuses(to=PBX, call_id="late-cancel", method="CANCEL") == [200]
    assert gw.io.requests("CANCEL", to=CARRIER) == [], "nothing left to cancel downstream"
    assert gw.io.statuses(to=PBX, call_id="late-cancel") == [100, 180, 200]
    assert gw.channels() == {PBX_ID: 1}
    gw.shutdown()
    gw.answer_byes("late-cancel")
    gw.assert_idle()


# == in-dialog routing (RFC 3261 §12.2, §16.4) ======================================
def test_in_dialog_requests_both_ways_on_an_outbound_call() -> None:
    gw = Gateway()
    call = gw.answered_call("dialog")
    assert call.invite.headers.get("record-route") == RECORD_ROUTE
    assert call.invite.uri_text == f"sip:{DIALLED}@{CARRIER.host}:{CARRIER.port}"
    (ok,) = gw.io.responses(200, to=PBX, call_id="dialog", method="INVITE")
    assert ok.headers.get("record-route") == RECORD_ROUTE
    # PBX → carrier: a re-INVITE along the route set, our Route removed.
    gw.deliver(from_pbx("INVITE", "dialog", call.to, 2), PBX)
    reinvite = gw.io.last("INVITE", to=CARRIER, call_id="dialog")
    assert reinvite is not call.invite
    assert reinvite.uri_text == CARRIER_CONTACT.strip("<>")
    assert "route" not in reinvite.headers
    assert (reinvite.max_forwards, reinvite.to.tag) == (69, "callee")
    gw.deliver(answer(reinvite, 200, contact=CARRIER_CONTACT), CARRIER)
    assert gw.io.statuses(to=PBX, call_id="dialog") == [100, 200, 100, 200]
    gw.deliver(from_pbx("ACK", "dialog", call.to, 2), PBX)
    assert len(gw.io.requests("ACK", to=CARRIER, call_id="dialog")) == 2
    assert gw.channels() == {PBX_ID: 1}, "a re-INVITE takes no channel"
    # Carrier → PBX: an INFO to the PBX's flow, in the carrier's CSeq space.
    gw.deliver(from_carrier("INFO", "dialog", call.to, 1), CARRIER)
    info = gw.io.last("INFO", to=PBX, call_id="dialog")
    assert info.uri_text == PBX_CONTACT.strip("<>")
    assert "route" not in info.headers
    gw.deliver(answer(info, 200), PBX)
    assert gw.io.statuses(to=CARRIER, call_id="dialog", method="INFO") == [200]
    # Once the transactions are over the router holds the call and nothing else.
    gw.io.advance(SETTLE)
    assert (len(gw.router.calls), gw.router.tracked) == (1, 0)
    gw.deliver(from_carrier("BYE", "dialog", call.to, 2), CARRIER)
    gw.deliver(answer(gw.io.last("BYE", to=PBX, call_id="dialog"), 200), PBX)
    assert gw.observed.releases == [("pbx", "bye")]
    gw.assert_idle()


def test_an_inbound_call_reaches_the_ip_pbx_and_its_dialog_routes_both_ways() -> None:
    gw = Gateway()
    gw.deliver(carrier_invite("inbound"), CARRIER)
    invite = gw.io.last("INVITE", to=PBX, call_id="inbound")
    assert invite.uri_text == f"sip:{PBX_NUMBER}@{PBX.host}:{PBX.port}"
    assert invite.headers.get("record-route") == RECORD_ROUTE
    assert gw.channels() == {PBX_ID: 1}
    gw.deliver(answer(invite, 200, to_tag="pbx", contact=PBX_CONTACT), PBX)
    (ok,) = gw.io.responses(200, to=CARRIER, call_id="inbound", method="INVITE")
    pbx_side = ok.headers.get("to")
    assert pbx_side is not None
    carrier_side = f"<sip:{CALLER_ID}@{CARRIER.host}>;tag=carrier"
    # Carrier → PBX: the ACK, to the PBX's Contact.
    ack = in_dialog(
        "ACK", source=CARRIER, target=PBX_CONTACT, from_=carrier_side, to=pbx_side,
        call_id="inbound", cseq=1,
    )  # fmt: skip
    gw.deliver(ack, CARRIER)
    (forwarded_ack,) = gw.io.requests("ACK", to=PBX, call_id="inbound")
    assert forwarded_ack.uri_text == PBX_CONTACT.strip("<>")
    # PBX → carrier: the PBX hangs up, to the carrier's Contact.
    bye = in_dialog(
        "BYE", source=PBX, target=CARRIER_CONTACT, from_=pbx_side, to=carrier_side,
        call_id="inbound", cseq=1,
    )  # fmt: skip
    gw.deliver(bye, PBX)
    forwarded_bye = gw.io.last("BYE", to=CARRIER, call_id="inbound")
    assert forwarded_bye.uri_text == CARRIER_CONTACT.strip("<>")
    assert "route" not in forwarded_bye.headers
    gw.deliver(answer(forwarded_bye, 200), CARRIER)
    assert gw.io.statuses(to=PBX, call_id="inbound", method="BYE") == [200]
    assert gw.observed.releases == [("pbx", "bye")]
    record = gw.records.of("inbound")
    assert (record.direction, record.caller, record.callee) == ("inbound", CALLER_ID, PBX_NUMBER)
    gw.assert_idle()


def test_an_in_dialog_request_for_an_unknown_call_gets_481() -> None:
    gw = Gateway()
    gw.deliver(from_pbx("BYE", "nobody", "<sip:x@example.net>;tag=t", 2), PBX)
    assert gw.io.statuses(to=PBX, call_id="nobody", method="BYE") == [481]
    assert gw.io.requests("BYE", to=CARRIER) == []
    gw.assert_idle()


# == directory reloads =============================================================
def test_a_reload_ends_only_the_deleted_profiles_calls() -> None:
    gw = Gateway()
    gw.answered_call("pbx-up")
    _, ringing = gw.ringing_call("pbx-ringing")
    _, sales_invite = gw.pbx_calls("sales-up", source=SALES)
    gw.deliver(answer(sales_invite, 200, contact=CARRIER_CONTACT), CARRIER)
    assert gw.channels() == {PBX_ID: 2, SALES_ID: 1}
    gw.reload(directory(ip_profile(SALES_ID, "sales", SALES), REG, version=2))
    assert set(gw.byes("pbx-up")) == {"carrier", "pbx"}
    assert gw.io.last("CANCEL", to=CARRIER, call_id="pbx-ringing").top_via.branch == (
        ringing.top_via.branch
    )
    assert gw.io.statuses(to=PBX, call_id="pbx-ringing") == [100, 180, 487]
    assert gw.channels() == {SALES_ID: 1}, "the other profile's call stays up"
    assert len(gw.router.calls) == 1
    assert gw.byes("sales-up") == {}
    assert sorted(gw.observed.releases) == [("pbx", "profile_deleted")] * 2
    # A late INVITE from the deleted profile's PBX is a stranger's now.
    gw.deliver(pbx_invite("after"), PBX)
    assert gw.io.statuses(to=PBX, call_id="after") == [100, 407]
    gw.shutdown()
    assert gw.observed.releases[-1] == ("sales", "shutdown")
    gw.answer_byes("pbx-up")
    assert set(gw.byes("sales-up", SALES)) == {"carrier", "pbx"}
    gw.answer_byes("sales-up", SALES)
    gw.carrier_cancelled(ringing)
    gw.assert_idle()


def test_a_renamed_profile_keeps_its_live_call() -> None:
    """A rename (and a lower channel limit) applies to the live call at
    once: it keeps its channel, is released under the new name, and the
    new limit refuses the next call."""
    gw = Gateway()
    call = gw.answered_call("renamed")
    renamed = dataclasses.replace(
        ip_profile(PBX_ID, "pbx", PBX), name="front-desk", channel_limit=1
    )
    gw.reload(directory(renamed, REG, version=2))
    assert gw.io.requests("BYE") == []
    assert gw.channels() == {PBX_ID: 1}
    gw.deliver(pbx_invite("second"), PBX)
    assert gw.io.statuses(to=PBX, call_id="second") == [100, 503]
    gw.deliver(from_pbx("BYE", "renamed", call.to, 2), PBX)
    assert gw.channels() == {}
    assert gw.observed.admissions == [("pbx", "admitted"), ("front-desk", "channel_limit")]
    assert gw.observed.releases == [("front-desk", "bye")]
    gw.deliver(answer(gw.io.last("BYE", to=CARRIER, call_id="renamed"), 200), CARRIER)
    gw.assert_idle()


# == who is calling =================================================================
def test_an_ip_profile_is_known_by_its_udp_ip_and_port() -> None:
    gw = Gateway()
    gw.pbx_calls("by-address")
    assert gw.observed.admissions == [("pbx", "admitted")]
    # The same IP from another port is a stranger: challenged, not routed.
    gw.deliver(pbx_invite("other-port", source=STRANGER), STRANGER)
    assert gw.io.statuses(to=STRANGER, call_id="other-port") == [100, 407]
    assert gw.io.requests(to=CARRIER, call_id="other-port") == []
    assert gw.channels() == {PBX_ID: 1}
    gw.shutdown()
    gw.assert_idle()


def test_the_carrier_is_trusted_from_any_port_of_its_host() -> None:
    gw = Gateway()
    gw.deliver(carrier_invite("carrier-port", source=CARRIER_OTHER_PORT), CARRIER_OTHER_PORT)
    assert gw.io.requests("INVITE", to=PBX, call_id="carrier-port") != []
    assert gw.io.responses(407) == []
    assert gw.observed.admissions == [("pbx", "admitted")]
    gw.shutdown()
    gw.assert_idle()


def test_an_unknown_source_must_answer_a_digest_challenge() -> None:
    gw = Gateway()
    request_uri = f"sip:{DIALLED}@{GATEWAY[0]}:{GATEWAY[1]}"
    gw.deliver(pbx_invite("digest", source=REG_PBX), REG_PBX)
    (challenge,) = gw.io.responses(407, to=REG_PBX, call_id="digest")
    challenges = challenge.proxy_authenticate
    assert [c.realm for c in challenges] == [REALM, REALM]
    assert gw.io.requests(to=CARRIER) == []
    assert gw.observed.admissions == []

    def credentials(password: str) -> str:
        answered = authorize(
            challenges[0], username=REG_USERNAME, password=password, method="INVITE",
            uri=request_uri, cnonce="0a4f113b",
        )  # fmt: skip
        return f"Proxy-Authorization: {answered}"

    wrong = pbx_invite("digest-wrong", source=REG_PBX, extra=(credentials("wrong"),))
    gw.deliver(wrong, REG_PBX)
    assert gw.io.statuses(to=REG_PBX, call_id="digest-wrong") == [100, 407]
    assert gw.observed.auth_failures == 1
    right = pbx_invite("digest", source=REG_PBX, cseq=2, extra=(credentials(REG_PASSWORD),))
    gw.deliver(right, REG_PBX)
    assert gw.io.requests("INVITE", to=CARRIER, call_id="digest") != []
    assert gw.observed.admissions == [("reg", "admitted")]
    assert gw.channels() == {REG_ID: 1}
    gw.shutdown()
    gw.assert_idle()


# == refusals: answered, counted, recorded, no channel taken ========================
def refused(gw: Gateway, call_id: str, status: int) -> Response:
    (response,) = gw.io.responses(status, to=PBX, call_id=call_id)
    assert gw.io.statuses(to=PBX, call_id=call_id) == [100, status]
    assert gw.io.requests(to=CARRIER) == []
    assert gw.channels() == {}
    assert gw.observed.releases == []
    record = gw.records.of(call_id)
    assert (record.final_status, record.cost, record.duration_ms) == (status, Decimal(0), 0)
    return response


def test_no_credit_is_refused_402() -> None:
    gw = Gateway(directory(ip_profile(PBX_ID, "pbx", PBX, credit="0"), rates=PRICE))
    gw.deliver(pbx_invite("no-credit"), PBX)
    response = refused(gw, "no-credit", 402)
    assert 'No credit left"' in (response.headers.get("warning") or "")
    assert gw.observed.admissions == [("pbx", "no_credit")]
    gw.assert_idle()


def test_no_rate_for_the_destination_is_refused_403() -> None:
    rates = {"1999": Decimal("0.5000")}  # another destination only
    gw = Gateway(directory(ip_profile(PBX_ID, "pbx", PBX), rates=rates))
    gw.deliver(pbx_invite("no-rate"), PBX)
    response = refused(gw, "no-rate", 403)
    assert 'No rate for this destination"' in (response.headers.get("warning") or "")
    assert gw.observed.admissions == [("pbx", "no_rate")]
    gw.assert_idle()


def test_the_channel_limit_refuses_503() -> None:
    gw = Gateway(directory(ip_profile(PBX_ID, "pbx", PBX, limit=2)))
    gw.pbx_calls("first")
    gw.pbx_calls("second")
    gw.deliver(pbx_invite("third"), PBX)
    (response,) = gw.io.responses(503, to=PBX, call_id="third")
    assert 'Channel limit reached"' in (response.headers.get("warning") or "")
    assert gw.io.requests(to=CARRIER, call_id="third") == []
    assert gw.channels() == {PBX_ID: 2}, "the calls up keep theirs"
    assert gw.observed.admissions == [("pbx", "admitted")] * 2 + [("pbx", "channel_limit")]
    assert gw.records.of("third").final_status == 503
    gw.shutdown()
    gw.assert_idle()


def test_an_inbound_call_to_an_unassigned_number_is_refused_404() -> None:
    gw = Gateway()
    gw.deliver(carrier_invite("unassigned", number=UNASSIGNED), CARRIER)
    assert gw.io.statuses(to=CARRIER, call_id="unassigned") == [100, 404]
    (response,) = gw.io.responses(404, to=CARRIER, call_id="unassigned")
    assert response.reason == "Number not assigned"
    assert gw.io.requests(to=PBX) == []
    assert gw.observed.admissions == []
    gw.assert_idle()


@pytest.mark.parametrize("when", [0.0, 42.0])
def test_the_fake_clock_fires_timers_in_time_order(when: float) -> None:
    """The harness itself: timers armed out of order fire in time order,
    each at its own time, and a cancelled one never fires."""
    io = FakeIO(TransactionLayer(SETTINGS))
    start = io.now()
    fired: list[tuple[str, float]] = []
    io.call_at(start + when + 2, lambda: fired.append(("late", io.now())))
    io.call_at(start + when + 1, lambda: fired.append(("early", io.now())))
    io.call_at(start + when + 1.5, lambda: fired.append(("cancelled", io.now()))).cancel()
    io.advance(when + 1.9)
    assert fired == [("early", start + when + 1)]
    io.advance(0.1)
    assert fired == [("early", start + when + 1), ("late", start + when + 2)]
    assert io.pending_timers() == []


def test_an_early_bye_the_callee_never_ends_its_invite_for_leaves_nothing_behind() -> None:
    """The caller hangs up with BYE in the early dialog (RFC 3261 §15): the
    channel goes at once.  If the callee then never sends the INVITE's
    final answer, Timer C still watches the branch (§16.8): CANCEL, the
    caller's 408, and the client transaction given up (§9.1)."""
    gw = Gateway()
    gw.ringing_call("early-bye")
    (ringing,) = gw.io.responses(180, to=PBX, call_id="early-bye")
    to = ringing.headers.get("to")
    assert to is not None
    gw.deliver(from_pbx("BYE", "early-bye", to, 2), PBX)
    assert gw.channels() == {}
    assert gw.observed.releases == [("pbx", "bye")]
    bye = gw.io.last("BYE", to=CARRIER, call_id="early-bye")
    gw.deliver(answer(bye, 200), CARRIER)
    gw.io.advance(SETTINGS.timer_c + 0.01)
    assert gw.io.requests("CANCEL", to=CARRIER)
    assert gw.io.statuses(to=PBX, call_id="early-bye")[-1] == 408
    gw.io.advance(SIXTY_FOUR_T1)
    assert gw.observed.releases == [("pbx", "bye")]  # released once
    gw.assert_idle()
