"""A call's life as data: its states, the events that move it, and the
transition table the router walks (the h11 ``_state.py`` and
:mod:`sip.transaction` style: each row an edge, an unknown pair a bug).

The states follow Kamailio's dialog states (``dlg_hash.h``: unconfirmed,
early, confirmed-not-acked, confirmed, deleted), with the admission and
the ending a trunk gateway adds around them.  In short (the rows below are
the whole story)::

    ADMITTING ──ADMITTED──▶ TRYING ──1xx──▶ EARLY
      │ CANCEL, BYE, abort            TRYING, EARLY ──CANCEL──▶ CANCELLING
      ▼                               TRYING, EARLY, CANCELLING:
    ADMITTING_CANCELLED                 ──2xx──▶ ACCEPTED ──ACK──▶ CONFIRMED
      │ ADMITTED (487)                  ──BYE──▶ ENDED_EARLY ──final──▶ TERMINATED
      ▼                                 ──300-699, Timer B, Timer C, failure,
    TERMINATED ◀──REFUSED──(either)       no answer to CANCEL, abort──▶ TERMINATED
                                      ACCEPTED, CONFIRMED:
                                        ──BYE, no ACK (ACCEPTED only), session
                                          expired, end, abort──▶ TERMINATED

A call enters ENDED_EARLY or TERMINATED once: then its channel is free, its
meter stopped, its record written and its timers cancelled (the router's
``_finish``).  What may still arrive for it (late responses, a CANCEL, the
INVITE transaction's failure) has its rows; a timer of an ended call has
none, because ending cancels them all.

An event a state has no row for is a bug in the router, not in a peer
(every peer-caused event has a row in every state it can reach): the
router logs it at error, counts it, and ends the call as a profile deletion
would, so that no channel leaks.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, NamedTuple

from gateway.billing.cdr import CallRecordEntry, new_record_key
from gateway.proxy.directory import ProfileEntry
from sip.message import Request
from sip.transaction import ClientTransaction, ServerTransaction
from sip.uri import URI

__all__ = [
    "ENDED",
    "LIVE",
    "ROWS",
    "TRANSITIONS",
    "Call",
    "CallEffect",
    "CallEvent",
    "CallState",
    "Hop",
    "ReleaseReason",
    "Transition",
]


class ReleaseReason(StrEnum):
    """Why a call gave its channel back (a bounded metric label)."""

    BYE = "bye"  # either side hung up
    CANCEL = "cancel"  # the caller gave up before an answer (RFC 3261 §9)
    REJECTED = "rejected"  # a final non-2xx answer (busy, declined, ...)
    NO_ACK = "no_ack"  # a 2xx never acknowledged (RFC 3261 §13.3.1.4)
    TIMEOUT = "timeout"  # no final answer: Timer B or Timer C (408)
    UNREACHABLE = "unreachable"  # the next hop could not be reached (503)
    SESSION_EXPIRED = "session_expired"  # no session refresh (RFC 4028 §8.3)
    MAX_DURATION = "max_duration"  # the configured maximum call duration
    PROFILE_DELETED = "profile_deleted"  # its profile was deleted with calls up
    CREDIT_EXHAUSTED = "credit_exhausted"  # the profile's credit ran out (BYE both sides)
    SHUTDOWN = "shutdown"  # the gateway stopped (BYE both sides)
    ERROR = "error"  # the gateway could not forward the INVITE (500), or a call state bug


class Hop(NamedTuple):
    """Where a message goes next: transport and address."""

    transport: str
    host: str
    port: int


class CallState(enum.Enum):
    """Where a call is in its life (Kamailio's dialog states, and the
    admission and ending a trunk gateway adds)."""

    # The initial INVITE is taken in and its admission (rate, credit,
    # channel) is running; nothing has gone downstream yet.
    ADMITTING = "admitting"
    # A CANCEL (or an abort) came while admitting: once admission answers,
    # the INVITE is answered 487 and any channel it got given back.
    ADMITTING_CANCELLED = "admitting, cancelled"
    # Kamailio's "unconfirmed": the INVITE is forwarded (RFC 3261 §16.6),
    # nothing but 100 Trying came back.
    TRYING = "trying"
    # A provisional response (101-199) was relayed: the early dialog
    # (RFC 3261 §12.1, §13.2.2.1).
    EARLY = "early"
    # The caller CANCELled and the gateway CANCELled downstream (RFC 3261
    # §9.1, §16.10); waiting for the INVITE's 487 (or a 2xx crossing it).
    CANCELLING = "cancelling"
    # Kamailio's "confirmed, not acknowledged", RFC 6026's Accepted: a 2xx
    # was relayed, its ACK not yet seen (RFC 3261 §13.3.1.4).
    ACCEPTED = "accepted"
    # The ACK of the 2xx went through: the dialog is confirmed.
    CONFIRMED = "confirmed"
    # A BYE ended an early dialog (RFC 3261 §15): the call is over (channel
    # free, record written) but its INVITE still awaits the final answer
    # the callee owes it (487, §15.1.2), which is relayed.
    ENDED_EARLY = "ended early"
    # Kamailio's "deleted": over, and the INVITE has had its final answer.
    TERMINATED = "terminated"


#: States in which a call is over (it entered one of them once).
ENDED = frozenset({CallState.ENDED_EARLY, CallState.TERMINATED})
#: States of a call the router still holds in ``calls`` (not ended).
LIVE = frozenset(CallState) - ENDED


class CallEvent(enum.Enum):
    """What happens to a call, named after its cause."""

    # Admission (the router's own, RFC 3261 §16.3 done).
    ADMITTED = "admitted"  # a channel (and credit) was granted
    REFUSED = "refused"  # no rate, no credit, channel limit, Call-ID in use
    FORWARD_FAILED = "forward failed"  # the INVITE could not be sent (500)
    # From the caller's side.
    CANCEL = "CANCEL"  # RFC 3261 §9.2, §16.10
    ACK = "ACK"  # the ACK of a 2xx (RFC 3261 §13.2.2.4)
    BYE = "BYE"  # from either side (RFC 3261 §15)
    # The INVITE's responses from downstream (RFC 3261 §16.7; 100 is not
    # an event: it is never forwarded, step 5) and its client transaction's
    # failures (RFC 3261 §17.1.1.2 Timer B, §17.1.4 transport errors).
    RESP_1XX = "1xx"
    RESP_2XX = "2xx"
    RESP_300_699 = "300-699"
    TIMEOUT = "Timer B"
    TRANSPORT_ERROR = "transport error"
    # The router's timers.
    TIMER_C = "Timer C"  # RFC 3261 §16.6 step 11, §16.7 step 2
    CANCEL_TIMEOUT = "no answer to CANCEL"  # 64*T1 after a CANCEL sent downstream
    NO_ACK = "no ACK"  # 64*T1 after the 2xx (RFC 3261 §13.3.1.4)
    SESSION_REFRESH = "session refresh"  # a 2xx to a re-INVITE or UPDATE (RFC 4028 §8.2)
    SESSION_EXPIRED = "session expired"  # RFC 4028 §8.3, §10
    # The gateway ends the call: an answered one (maximum duration, credit
    # exhausted), or one in any state (profile deleted, shutdown).
    END = "end"
    ABORT = "abort"


class CallEffect(enum.Enum):
    """What a transition does besides changing the state, in row order.
    (Relaying a response, forwarding an ACK or a BYE, and refusing at
    admission are done by the router around the event, in every state.)"""

    FORWARD_INVITE = "forward INVITE"  # RFC 3261 §16.6, arming Timer C (step 11)
    RESET_TIMER_C = "reset Timer C"  # RFC 3261 §16.7 step 2: a provisional other than 100
    # The first 2xx: start charging, learn the dialog, time the ACK, the
    # session and the maximum duration.
    ANSWER = "answer"
    LEARN_CONTACT = "learn contact"  # a repeated 2xx: the carrier's Contact, if still unknown
    REFRESH_SESSION = "refresh session"  # re-arm the session timer (RFC 4028 §8.2)
    CANCEL_DOWNSTREAM = "CANCEL downstream"  # RFC 3261 §16.10, §9.1
    ARM_CANCEL_TIMEOUT = "arm CANCEL timeout"
    REPLY_408 = "408 upstream"  # RFC 3261 §16.7 step 6 / §16.8: the proxy's own final answer
    REPLY_487 = "487 upstream"  # RFC 3261 §9.2: the cancelled INVITE's answer
    REPLY_500 = "500 upstream"
    REPLY_503 = "503 upstream"  # the next hop failed (RFC 3261 §16.7 step 6, §16.9)
    BYE_BOTH_SIDES = "BYE both sides"  # RFC 3261 §15.1.1, with Reason (RFC 3326)
    RELEASE = "release channel"


@dataclass(frozen=True, slots=True)
class Transition:
    """One row: the state to go to (None: stay), the effects in order, the
    release reason (None: the one the event came with), and whether the
    call ends with it (it enters an ended state from a live one: its
    meter stops and its record is written, after the effects)."""

    target: CallState | None
    effects: tuple[CallEffect, ...] = ()
    reason: ReleaseReason | None = None
    finishes: bool = False


_S = CallState
_E = CallEvent
_F = CallEffect
_R = ReleaseReason

#: A legal event that changes nothing (one shared row).
_STAY = Transition(None)
# How the gateway ends a call itself: an unanswered one is cancelled
# downstream and answered 487 upstream (RFC 3261 §9.1, §9.2); an answered
# one gets a BYE on both sides (RFC 3261 §15.1.1).
_ABORT_UNANSWERED = (_F.CANCEL_DOWNSTREAM, _F.REPLY_487, _F.RELEASE)
_ABORT_ANSWERED = (_F.BYE_BOTH_SIDES, _F.RELEASE)


_Row = tuple[CallState | None, tuple[CallEffect, ...], ReleaseReason | None]


def _row(
    target: CallState | None, *effects: CallEffect, reason: ReleaseReason | None = None
) -> _Row:
    """A row before its source state is known (see :func:`_table`)."""
    return (target, effects, reason)


_ROWS: dict[CallState, dict[CallEvent, _Row]] = {
    _S.ADMITTING: {
        _E.ADMITTED: _row(_S.TRYING, _F.FORWARD_INVITE),
        _E.REFUSED: _row(_S.TERMINATED),  # answered by the refusal; no channel was taken
        # RFC 3261 §9.2: the INVITE is answered 487 once admission is over
        # (nothing went downstream to cancel yet).
        _E.CANCEL: _row(_S.ADMITTING_CANCELLED),
        # A BYE for a dialog that cannot exist yet: the call ends as if
        # cancelled, so that the channel admission is acquiring is given back.
        _E.BYE: _row(_S.ADMITTING_CANCELLED),
        _E.ABORT: _row(_S.ADMITTING_CANCELLED),
        _E.ACK: _row(None),  # forwarded along the call (RFC 3261 §16.11), nothing else
        _E.SESSION_REFRESH: _row(None),
    },
    _S.ADMITTING_CANCELLED: {
        _E.ADMITTED: _row(_S.TERMINATED, _F.REPLY_487, _F.RELEASE, reason=_R.CANCEL),
        _E.REFUSED: _row(_S.TERMINATED),
        _E.CANCEL: _row(None),
        _E.BYE: _row(None),
        _E.ABORT: _row(None),
        _E.ACK: _row(None),
        _E.SESSION_REFRESH: _row(None),
    },
    _S.TRYING: {
        _E.RESP_1XX: _row(_S.EARLY, _F.RESET_TIMER_C),
        _E.RESP_2XX: _row(_S.ACCEPTED, _F.ANSWER),
        _E.RESP_300_699: _row(_S.TERMINATED, _F.RELEASE, reason=_R.REJECTED),
        _E.TIMEOUT: _row(_S.TERMINATED, _F.REPLY_408, _F.RELEASE, reason=_R.TIMEOUT),
        _E.TRANSPORT_ERROR: _row(_S.TERMINATED, _F.REPLY_503, _F.RELEASE, reason=_R.UNREACHABLE),
        _E.FORWARD_FAILED: _row(_S.TERMINATED, _F.REPLY_500, _F.RELEASE, reason=_R.ERROR),
        _E.CANCEL: _row(_S.CANCELLING, _F.CANCEL_DOWNSTREAM, _F.ARM_CANCEL_TIMEOUT),
        # RFC 3261 §16.8: Timer C fired, the branch is cancelled and the
        # caller gets the proxy's 408.
        _E.TIMER_C: _row(
            _S.TERMINATED, _F.CANCEL_DOWNSTREAM, _F.REPLY_408, _F.RELEASE, reason=_R.TIMEOUT
        ),
        _E.BYE: _row(_S.ENDED_EARLY, _F.RELEASE, reason=_R.BYE),  # RFC 3261 §15
        _E.ACK: _row(None),
        _E.ABORT: _row(_S.TERMINATED, *_ABORT_UNANSWERED),
        _E.SESSION_REFRESH: _row(None),  # an UPDATE in the early dialog (RFC 3311)
    },
    _S.EARLY: {
        _E.RESP_1XX: _row(None, _F.RESET_TIMER_C),
        _E.RESP_2XX: _row(_S.ACCEPTED, _F.ANSWER),
        _E.RESP_300_699: _row(_S.TERMINATED, _F.RELEASE, reason=_R.REJECTED),
        _E.TIMEOUT: _row(_S.TERMINATED, _F.REPLY_408, _F.RELEASE, reason=_R.TIMEOUT),
        _E.TRANSPORT_ERROR: _row(_S.TERMINATED, _F.REPLY_503, _F.RELEASE, reason=_R.UNREACHABLE),
        _E.CANCEL: _row(_S.CANCELLING, _F.CANCEL_DOWNSTREAM, _F.ARM_CANCEL_TIMEOUT),
        _E.TIMER_C: _row(
            _S.TERMINATED, _F.CANCEL_DOWNSTREAM, _F.REPLY_408, _F.RELEASE, reason=_R.TIMEOUT
        ),
        _E.BYE: _row(_S.ENDED_EARLY, _F.RELEASE, reason=_R.BYE),
        _E.ACK: _row(None),
        _E.ABORT: _row(_S.TERMINATED, *_ABORT_UNANSWERED),
        _E.SESSION_REFRESH: _row(None),
    },
    _S.CANCELLING: {
        _E.RESP_1XX: _row(None, _F.RESET_TIMER_C),
        # RFC 3261 §9.1, §16.10: a 2xx crossing the CANCEL wins; the call
        # is up and the caller hangs up with BYE if it still wants to.
        _E.RESP_2XX: _row(_S.ACCEPTED, _F.ANSWER),
        _E.RESP_300_699: _row(_S.TERMINATED, _F.RELEASE, reason=_R.CANCEL),  # the 487
        _E.TIMEOUT: _row(_S.TERMINATED, _F.REPLY_408, _F.RELEASE, reason=_R.TIMEOUT),
        _E.TRANSPORT_ERROR: _row(_S.TERMINATED, _F.REPLY_503, _F.RELEASE, reason=_R.UNREACHABLE),
        # Another CANCEL (a new transaction, not a retransmission): sent on.
        _E.CANCEL: _row(None, _F.CANCEL_DOWNSTREAM, _F.ARM_CANCEL_TIMEOUT),
        # The far end never answered the CANCEL: the caller gets its 487.
        _E.CANCEL_TIMEOUT: _row(_S.TERMINATED, _F.REPLY_487, _F.RELEASE, reason=_R.CANCEL),
        _E.TIMER_C: _row(
            _S.TERMINATED, _F.CANCEL_DOWNSTREAM, _F.REPLY_408, _F.RELEASE, reason=_R.TIMEOUT
        ),
        _E.BYE: _row(_S.ENDED_EARLY, _F.RELEASE, reason=_R.BYE),
        _E.ACK: _row(None),
        _E.ABORT: _row(_S.TERMINATED, *_ABORT_UNANSWERED),
        _E.SESSION_REFRESH: _row(None),
    },
    _S.ACCEPTED: {
        # RFC 6026 §7.2: 2xx retransmissions pass the client transaction
        # and are relayed; the first one's Contact may have been missing.
        _E.RESP_2XX: _row(None, _F.LEARN_CONTACT),
        _E.ACK: _row(_S.CONFIRMED),  # RFC 3261 §13.2.2.4, forwarded (§16.11)
        _E.BYE: _row(_S.TERMINATED, _F.RELEASE, reason=_R.BYE),
        # RFC 3261 §13.3.1.4: a UAS gives up on the ACK after 64*T1.
        _E.NO_ACK: _row(_S.TERMINATED, _F.RELEASE, reason=_R.NO_ACK),
        _E.CANCEL: _row(None),  # RFC 3261 §9.2: too late, the final answer is out
        _E.TIMER_C: _row(None),  # §16.7 step 2: a final answer ends Timer C's watch
        _E.CANCEL_TIMEOUT: _row(None),  # the 2xx crossed the CANCEL
        _E.SESSION_REFRESH: _row(None, _F.REFRESH_SESSION),
        # RFC 4028 §8.3: a proxy frees what it holds and sends no BYE.
        _E.SESSION_EXPIRED: _row(_S.TERMINATED, _F.RELEASE, reason=_R.SESSION_EXPIRED),
        _E.END: _row(_S.TERMINATED, *_ABORT_ANSWERED),
        _E.ABORT: _row(_S.TERMINATED, *_ABORT_ANSWERED),
    },
    _S.CONFIRMED: {
        _E.RESP_2XX: _row(None, _F.LEARN_CONTACT),
        _E.ACK: _row(None),  # a retransmitted ACK, forwarded again
        _E.BYE: _row(_S.TERMINATED, _F.RELEASE, reason=_R.BYE),
        _E.NO_ACK: _row(None),
        _E.CANCEL: _row(None),
        _E.TIMER_C: _row(None),
        _E.CANCEL_TIMEOUT: _row(None),
        _E.SESSION_REFRESH: _row(None, _F.REFRESH_SESSION),
        _E.SESSION_EXPIRED: _row(_S.TERMINATED, _F.RELEASE, reason=_R.SESSION_EXPIRED),
        _E.END: _row(_S.TERMINATED, *_ABORT_ANSWERED),
        _E.ABORT: _row(_S.TERMINATED, *_ABORT_ANSWERED),
    },
    _S.ENDED_EARLY: {
        # The INVITE's answers are still relayed (by the router); the first
        # final one completes it (RFC 3261 §15.1.2).  A 2xx here starts no
        # charging: the call is over.
        _E.RESP_1XX: _row(None),
        _E.RESP_2XX: _row(_S.TERMINATED),
        _E.RESP_300_699: _row(_S.TERMINATED),
        _E.TIMEOUT: _row(_S.TERMINATED, _F.REPLY_408),
        _E.TRANSPORT_ERROR: _row(_S.TERMINATED, _F.REPLY_503),
        _E.CANCEL: _row(None, _F.CANCEL_DOWNSTREAM),
        # The callee never ended the INVITE: Timer C still runs (§16.8).
        _E.TIMER_C: _row(_S.TERMINATED, _F.CANCEL_DOWNSTREAM, _F.REPLY_408),
        _E.SESSION_REFRESH: _row(None),
    },
    _S.TERMINATED: {
        # Late answers are relayed (a 2xx statelessly, RFC 3261 §16.7 step
        # 9); the INVITE server transaction drops what it cannot send.
        _E.RESP_1XX: _row(None),
        _E.RESP_2XX: _row(None),
        _E.RESP_300_699: _row(None),
        _E.TIMEOUT: _row(None),
        _E.TRANSPORT_ERROR: _row(None),
        _E.CANCEL: _row(None),  # RFC 3261 §9.2: 200 to the CANCEL, nothing else
        _E.SESSION_REFRESH: _row(None),
    },
}


def _table() -> dict[CallState, dict[CallEvent, Transition]]:
    """The rows as :class:`Transition` objects, ``finishes`` worked out
    from each row's source state; a stay without effects shares one object."""
    table: dict[CallState, dict[CallEvent, Transition]] = {}
    for state, rows in _ROWS.items():
        table[state] = {}
        for event, (target, effects, reason) in rows.items():
            finishes = target in ENDED and state not in ENDED
            if target is None and not effects:
                transition = _STAY
            else:
                transition = Transition(target, effects, reason, finishes)
            table[state][event] = transition
    return table


#: The rows leaving each state, keyed by event: what the router looks up
#: per event (two dict lookups, no key tuple built per event).
ROWS: Mapping[CallState, Mapping[CallEvent, Transition]] = _table()

#: The table, one row per (state, event): what :mod:`sip.transaction`'s
#: ``TRANSITIONS`` is for a transaction.
TRANSITIONS: Mapping[tuple[CallState, CallEvent], Transition] = {
    (state, event): transition for state, rows in ROWS.items() for event, transition in rows.items()
}


@dataclass(slots=True, eq=False)
class Call:
    """One call the router took in: from its admission on it holds (or is
    getting) a channel of ``profile``, until it ends."""

    call_id: str
    profile: ProfileEntry
    direction: str  # "outbound" (PBX → carrier) or "inbound" (carrier → PBX)
    server_tx: ServerTransaction
    pbx: Hop  # how the PBX is reached (the flow it uses; RFC 3581 for NAT)
    state: CallState = CallState.ADMITTING
    invite: Request | None = None  # the INVITE as we forwarded it
    invite_hop: Hop | None = None  # where it goes (known from its admission on)
    carrier_side: Hop | None = None  # the carrier's address in this call
    carrier_contact: URI | None = None  # the carrier's remote target (Contact)
    client_tx: ClientTransaction | None = None  # the forwarded INVITE's
    target: URI | None = None  # the Request-URI the INVITE is forwarded with
    started: float = 0.0  # when the INVITE arrived (call setup time)
    # INVITE in → first ringing, answer or final answer (a measurement, not
    # a state: the first answer may come after the call has ended).
    setup_time: float | None = None
    # The dialog as each side knows it, for the BYEs the gateway itself
    # sends (RFC 3261 §12.2.1.1, §15.1.1): From/To with tags as the caller
    # sent them, each side's remote target and highest CSeq seen.
    caller_from: str = ""
    callee_to: str = ""
    caller_contact: URI | None = None
    callee_contact: URI | None = None
    caller_cseq: int = 0
    callee_cseq: int = 0
    # The call record (CDR): wall-clock times, the price of an outbound
    # call's destination, the INVITE's final status (0 until one was sent
    # upstream or relayed).
    record_key: str = field(default_factory=new_record_key)
    caller: str = ""
    callee: str = ""
    started_at: datetime | None = None
    answered_mono: float | None = None  # monotonic time of the answer
    answered_at: datetime | None = None
    price: Decimal | None = None  # per minute; outbound calls only
    final_status: int = 0
    timers: list[Any] = field(default_factory=list)
    timer_c: Any = None  # RFC 3261 §16.8: how long it may ring (reset by each 1xx)
    session_timer: Any = None  # RFC 4028: when the session expires unless refreshed

    def record(
        self, *, ended_at: datetime, duration_ms: int, status: int, cost: Decimal
    ) -> CallRecordEntry:
        """The call's record for the writer (raises ``ValueError`` on a
        field the record cannot hold).  Only for a call that started."""
        assert self.started_at is not None
        return CallRecordEntry(
            record_key=self.record_key,
            profile_id=self.profile.id,
            call_id=self.call_id,
            direction=self.direction,
            caller=self.caller,
            callee=self.callee,
            started_at=self.started_at,
            answered_at=self.answered_at,
            ended_at=ended_at,
            duration_ms=duration_ms,
            final_status=status,
            cost=cost,
        )
