"""SIP transactions (RFC 3261 §17, as corrected by RFC 6026), sans-I/O.

A transaction is one request and the responses to it.  This module holds
the four state machines of RFC 3261 §17 (INVITE and non-INVITE, client and
server), the matching rules that tell which transaction a message belongs to
(§17.1.3, §17.2.3), and :class:`TransactionLayer`, the table of live
transactions that the transport feeds.

Nothing here touches a socket, the event loop or the clock.  Every entry
point takes ``now`` (seconds, any monotonic origin) and returns a list of
actions: messages to transmit, messages and events for the transaction user
(TU: the proxy core or a UA core), and the end of transactions.  The caller
re-arms one timer on :meth:`TransactionLayer.next_deadline` and calls
:meth:`TransactionLayer.timers` when it expires (the aioquic pattern).  Tests
drive everything with an explicit clock.

The machines are tables: ``(state, input) -> Transition(target, effects)``.
Inputs carry the RFC's names (``TIMER_A`` ... ``TIMER_M``, ``RESP_2XX``,
``TRANSPORT_ERROR`` ...).  A pair that the network can produce but that has
no meaning is listed as an explicit ignore; a pair missing from the table
is a mistake of the TU (say, a provisional response after a final one) and
raises :class:`TransactionError` instead of doing something by accident.

Timers live in the state they belong to: each state lists its timers
(:attr:`Transaction.TIMERS`), entering a state starts the ones not yet
running and cancels the others, and a timer whose value is zero (D, I, J, K
over a reliable transport) fires at once, so those transactions end in the
same call rather than on a later tick.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from sip.errors import SIPError
from sip.headers import Field, Headers
from sip.message import Message, Request, Response, build_response
from sip.overload import OVERLOAD_RETRY_AFTER, OverloadControl, shed_class
from sip.settings import SIPSettings

__all__ = [
    "IGNORE",
    "MAX_TRANSACTIONS",
    "OVERLOAD_RETRY_AFTER",
    "Action",
    "ClientTransaction",
    "DeliverRequest",
    "DeliverResponse",
    "Effect",
    "Input",
    "InviteClientTransaction",
    "InviteServerTransaction",
    "NonInviteClientTransaction",
    "NonInviteServerTransaction",
    "Overload",
    "ServerTransaction",
    "State",
    "StrayAck",
    "StrayResponse",
    "Terminated",
    "Timeout",
    "TimerValues",
    "Transaction",
    "TransactionError",
    "TransactionLayer",
    "Transition",
    "Transmit",
    "TransportFailure",
    "build_ack",
    "client_key",
    "server_key",
]

# A stateful proxy keeps about four transactions alive per call attempt for
# up to 64*T1 = 32 s after they complete (INVITE client Timer D/M, INVITE
# server Timer L, the BYE's Timer J/K): 100 000 live transactions sustain
# roughly 750 call attempts per second, beyond what one Python worker
# forwards, while bounding memory to a few hundred MB (a transaction holds
# its request and last response, a few KiB).  Past the bound new requests are
# refused with 503 instead of growing without limit (RFC 3261 §21.5.4).
MAX_TRANSACTIONS = 100_000

# The timer heap keeps entries of timers that were re-armed or whose
# transaction ended (lazy deletion).  It is rebuilt when stale entries
# outnumber live ones by this factor, plus a floor so that small tables
# never bother.
_HEAP_STALE_FACTOR = 2
_HEAP_STALE_FLOOR = 1024

# Max-Forwards of a generated ACK when the INVITE had none (RFC 3261 §8.1.1.6).
_DEFAULT_MAX_FORWARDS = "70"


class TransactionError(SIPError):
    """The TU asked a transaction for something it cannot do.

    Examples: a response on a transaction that has ended, a provisional
    response after the final one, an ACK as a client transaction.  It is a
    bug in the caller, not in the peer; the status hint is 500.
    """

    status = 500


# ---------------------------------------------------------------------------
# States, inputs, effects, transitions


class State(enum.Enum):
    """Transaction states, named as in RFC 3261 §17 and RFC 6026 §7."""

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    ACCEPTED = "Accepted"  # RFC 6026: after a 2xx to an INVITE
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    TERMINATED = "Terminated"


class Input(enum.Enum):
    """What can happen to a transaction, named as the RFC figures name it."""

    # From the network, to a client transaction (§17.1.1.2, §17.1.2.2).
    RESP_1XX = "1xx"
    RESP_2XX = "2xx"
    RESP_300_699 = "300-699"
    # From the network, to a server transaction (§17.2.1, §17.2.2): a
    # retransmission of the request that created it, or the ACK of an INVITE.
    REQUEST = "request retransmission"
    ACK = "ACK"
    # From the TU, to a server transaction ("1xx from TU" ... in Figure 7).
    TU_1XX = "1xx from TU"
    TU_2XX = "2xx from TU"
    TU_300_699 = "300-699 from TU"
    # From the TU, to an INVITE client transaction: no final response came
    # 64*T1 after the TU's CANCEL, so it is considered cancelled and
    # destroyed (§9.1).  Only Proceeding needs it (Calling ends by Timer B).
    TU_ABANDON = "abandoned by TU"
    # From the transport: a message of this transaction could not be sent.
    TRANSPORT_ERROR = "Transport Err."
    # Timers (RFC 3261 Table 4; L and M from RFC 6026 §8.7, §8.4).
    TIMER_A = "Timer A"
    TIMER_B = "Timer B"
    TIMER_D = "Timer D"
    TIMER_E = "Timer E"
    TIMER_F = "Timer F"
    TIMER_G = "Timer G"
    TIMER_H = "Timer H"
    TIMER_I = "Timer I"
    TIMER_J = "Timer J"
    TIMER_K = "Timer K"
    TIMER_L = "Timer L"
    TIMER_M = "Timer M"


# Timers that retransmit (and back off); every other timer ends a state.
_RETRANSMIT_TIMERS = frozenset({Input.TIMER_A, Input.TIMER_E, Input.TIMER_G})
_NETWORK_INPUTS_CLIENT = (Input.RESP_1XX, Input.RESP_2XX, Input.RESP_300_699, Input.TRANSPORT_ERROR)
_NETWORK_INPUTS_SERVER = (Input.REQUEST, Input.ACK, Input.TRANSPORT_ERROR)


class Effect(enum.Enum):
    """What a transition does besides changing state (the text after the
    slash in the RFC figures)."""

    RETRANSMIT_REQUEST = "request sent"  # client: resend the request
    DOUBLE = "reset timer to twice its value"  # Timer A (§17.1.1.2), bounded by Timer B only
    DOUBLE_UP_TO_T2 = "reset timer to min(2*value, T2)"  # Timer E (Trying), Timer G
    RESET_TO_T2 = "reset timer to T2"  # Timer E in Proceeding (§17.1.2.2)
    SEND_ACK = "ACK sent"  # INVITE client, non-2xx final (§17.1.1.3)
    DELIVER_RESPONSE = "resp. to TU"
    DELIVER_REQUEST = "ACK to TU"  # INVITE server in Accepted (RFC 6026 §7.1)
    SEND_RESPONSE = "send response"  # server: the TU's response
    RESEND_RESPONSE = "send last response"  # server: retransmit the latest response
    TIMEOUT = "timeout, inform TU"
    TRANSPORT_FAILURE = "Transport Err., inform TU"


@dataclass(frozen=True, slots=True)
class Transition:
    """One row of a machine: the state to go to (``None``: stay) and the
    effects, applied in order before the state changes."""

    target: State | None
    effects: tuple[Effect, ...] = ()


# An input that is legal in a state and does nothing (e.g. a retransmitted
# ACK in Confirmed, which is exactly what that state is for).
IGNORE = Transition(None)

_S = State
_I = Input
_E = Effect


def _stay(*effects: Effect) -> Transition:
    return Transition(None, effects)


def _to(target: State, *effects: Effect) -> Transition:
    return Transition(target, effects)


def _with_terminated(
    table: dict[tuple[State, Input], Transition], inputs: tuple[Input, ...]
) -> Mapping[tuple[State, Input], Transition]:
    """Add explicit ignores for network inputs reaching a Terminated transaction
    (it is removed from the table at once, but a caller holding it may still
    report a transport error)."""
    for event in inputs:
        table.setdefault((State.TERMINATED, event), IGNORE)
    return table


# ---------------------------------------------------------------------------
# Actions (what the caller must do)


@dataclass(frozen=True, slots=True, kw_only=True)
class Transmit:
    """Send ``data`` (the wire form of ``message``) to ``destination``.

    For a server transaction the destination is the request's source; the
    transport applies RFC 3261 §18.2.2 / RFC 3581 response routing.  The
    bytes are serialised once per message and the same action object is
    reused for every retransmission.  ``transaction`` lets the transport
    report a failure with :meth:`TransactionLayer.transport_error`.
    """

    message: Message
    data: bytes
    destination: object
    transaction: Transaction


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliverRequest:
    """A new request for the TU, with the server transaction to answer on.

    Also used for an ACK that matches an INVITE server transaction in the
    Accepted state (the ACK of a 2xx from an RFC 2543 client, RFC 6026 §7.1).
    """

    transaction: ServerTransaction
    request: Request


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliverResponse:
    """A response for the TU: provisional, final, and every 2xx to an INVITE
    (including retransmissions, which the TU must ACK; RFC 6026 §7.2)."""

    transaction: ClientTransaction
    response: Response


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeout:
    """Timer B, F or H fired: no final response (client) or no ACK (server)."""

    transaction: Transaction


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportFailure:
    """The transport could not send a message of this transaction
    (RFC 3261 §17.1.4, §17.2.4)."""

    transaction: Transaction


@dataclass(frozen=True, slots=True, kw_only=True)
class Terminated:
    """The transaction ended and left the table; the TU drops its state."""

    transaction: Transaction


@dataclass(frozen=True, slots=True, kw_only=True)
class StrayResponse:
    """A response matching no client transaction, passed to the core
    (RFC 3261 §17.1.3).  Since the client Accepted state catches 2xx
    retransmissions, RFC 6026 (§7.3) has a proxy drop these rather than
    forward them statelessly as RFC 3261 §16.7 step 2 said."""

    response: Response
    source: object


@dataclass(frozen=True, slots=True, kw_only=True)
class StrayAck:
    """An ACK matching no server transaction: the ACK of a 2xx, which is its
    own transaction-less request (RFC 3261 §17.2.3, §13.2.2.4)."""

    request: Request
    source: object


@dataclass(frozen=True, slots=True, kw_only=True)
class Overload:
    """The table is full, or the overload control sheds the request
    (:mod:`sip.overload`): answer ``request`` statelessly with 503 and this
    Retry-After (RFC 3261 §21.5.4) instead of creating a transaction."""

    request: Request
    source: object
    retry_after: int


Action = (
    Transmit
    | DeliverRequest
    | DeliverResponse
    | Timeout
    | TransportFailure
    | Terminated
    | StrayResponse
    | StrayAck
    | Overload
)


# ---------------------------------------------------------------------------
# Timer values


class TimerValues:
    """Timer durations for one (settings, transport reliability) pair.

    Computed once by the layer and shared by every transaction of that kind,
    so arming a timer is a dict lookup.  ``None`` means the timer is not used
    on this transport (the retransmission timers A, E, G over TCP); ``0``
    means it fires at once (D, I, J, K over TCP; RFC 3261 Table 4).
    """

    __slots__ = ("durations", "reliable", "t2")

    def __init__(self, settings: SIPSettings, *, reliable: bool) -> None:
        t1 = settings.t1
        self.reliable = reliable
        self.t2 = settings.t2
        retransmit = None if reliable else t1
        self.durations: dict[Input, float | None] = {
            Input.TIMER_A: retransmit,  # §17.1.1.2: only over unreliable transports
            Input.TIMER_B: settings.timer_b,
            Input.TIMER_D: 0.0 if reliable else settings.timer_d,
            Input.TIMER_E: retransmit,  # §17.1.2.2
            Input.TIMER_F: settings.timer_f,
            Input.TIMER_G: retransmit,  # §17.2.1
            Input.TIMER_H: settings.timer_h,
            Input.TIMER_I: 0.0 if reliable else settings.timer_i,
            Input.TIMER_J: 0.0 if reliable else settings.timer_j,
            Input.TIMER_K: 0.0 if reliable else settings.timer_k,
            Input.TIMER_L: settings.timer_l,  # RFC 6026 §8.7: same on any transport
            Input.TIMER_M: settings.timer_m,  # RFC 6026 §8.4
        }


# ---------------------------------------------------------------------------
# The machines


class Transaction:
    """What the four machines share: state, the table walk, and two timer
    slots (at most one retransmission timer and one ending timer are ever
    running at once, which is cheaper than a per-transaction timer map).

    A machine works on its own (its methods return actions like the
    layer's), but once it lives in a :class:`TransactionLayer`, feed it
    through the layer: only the layer reschedules its timer and removes it
    from the table when it ends.  ``destination`` is where the request went
    (client) or where it came from (server); ``reliable`` is fixed at
    creation and decides the retransmission and zero-length timers.
    """

    __slots__ = (
        "_heap_at",
        "_heap_seq",
        "_interval",
        "_retransmit_at",
        "_retransmit_timer",
        "_timeout_at",
        "_timeout_timer",
        "_timers",
        "destination",
        "key",
        "reliable",
        "request",
        "state",
    )

    TRANSITIONS: ClassVar[Mapping[tuple[State, Input], Transition]]
    TIMERS: ClassVar[Mapping[State, tuple[Input, ...]]]

    def __init__(
        self,
        key: Hashable,
        request: Request,
        destination: object,
        state: State,
        timers: TimerValues,
    ) -> None:
        self.key = key
        self.request = request
        self.destination = destination
        self.state = state
        self.reliable = timers.reliable
        self._timers = timers
        self._retransmit_timer: Input | None = None
        self._retransmit_at: float | None = None
        self._interval = 0.0
        self._timeout_timer: Input | None = None
        self._timeout_at: float | None = None
        # Bookkeeping of TransactionLayer's timer heap.
        self._heap_seq = -1
        self._heap_at = 0.0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.request.method} {self.state.value} key={self.key!r}>"

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    def next_deadline(self) -> float | None:
        """When :meth:`timers` next has something to do, or None."""
        r = self._retransmit_at
        t = self._timeout_at
        if r is None:
            return t
        if t is None or r < t:
            return r
        return t

    def timers(self, now: float) -> list[Action]:
        """Fire every timer due at ``now``."""
        out: list[Action] = []
        self._fire(now, out)
        return out

    def transport_error(self, now: float) -> list[Action]:
        """The transport failed to send a message of this transaction."""
        out: list[Action] = []
        self._handle(Input.TRANSPORT_ERROR, now, None, out)
        return out

    # -- the table walk ----------------------------------------------------
    def _fire(self, now: float, out: list[Action]) -> None:
        while True:
            t = self._timeout_at
            r = self._retransmit_at
            # A due ending timer goes first even if a retransmission is also
            # overdue (a late tick): every one of them ends the transaction,
            # so a retransmission just before would be wasted.
            if t is not None and t <= now:
                self._timeout_at = None
                timer = self._timeout_timer
                self._timeout_timer = None
            elif r is not None and r <= now:
                # The timer stays named: the transition re-arms it (DOUBLE ...).
                self._retransmit_at = None
                timer = self._retransmit_timer
            else:
                return
            assert timer is not None
            self._handle(timer, now, None, out)

    def _handle(self, event: Input, now: float, message: Message | None, out: list[Action]) -> None:
        transition = self.TRANSITIONS.get((self.state, event))
        if transition is None:
            raise TransactionError(
                f"{event.value} not allowed in state {self.state.value} of {type(self).__name__}"
            )
        for effect in transition.effects:
            self._effect(effect, now, message, out)
        target = transition.target
        if target is not None and target is not self.state:
            self._enter(target, now, out)

    def _enter(self, state: State, now: float, out: list[Action]) -> None:
        self.state = state
        if state is State.TERMINATED:
            self._retransmit_timer = self._timeout_timer = None
            self._retransmit_at = self._timeout_at = None
            out.append(Terminated(transaction=self))
            return
        keep = self.TIMERS[state]
        if self._retransmit_timer is not None and self._retransmit_timer not in keep:
            self._retransmit_timer = None
            self._retransmit_at = None
        if self._timeout_timer is not None and self._timeout_timer not in keep:
            self._timeout_timer = None
            self._timeout_at = None
        immediate: Input | None = None
        durations = self._timers.durations
        for timer in keep:
            if timer is self._retransmit_timer or timer is self._timeout_timer:
                continue  # already running (Timer E and F from Trying to Proceeding)
            duration = durations[timer]
            if duration is None:
                continue
            if duration <= 0.0:
                immediate = timer
            elif timer in _RETRANSMIT_TIMERS:
                self._retransmit_timer = timer
                self._interval = duration
                self._retransmit_at = now + duration
            else:
                self._timeout_timer = timer
                self._timeout_at = now + duration
        if immediate is not None:
            # A zero timer (reliable transport) ends the state now.
            self._handle(immediate, now, None, out)

    def _effect(
        self, effect: Effect, now: float, message: Message | None, out: list[Action]
    ) -> None:
        if effect is Effect.DOUBLE:
            self._interval *= 2
            self._retransmit_at = now + self._interval
        elif effect is Effect.DOUBLE_UP_TO_T2:
            interval = self._interval * 2
            t2 = self._timers.t2
            self._interval = interval if interval < t2 else t2
            self._retransmit_at = now + self._interval
        elif effect is Effect.RESET_TO_T2:
            self._interval = self._timers.t2
            self._retransmit_at = now + self._interval
        elif effect is Effect.TIMEOUT:
            out.append(Timeout(transaction=self))
        elif effect is Effect.TRANSPORT_FAILURE:
            out.append(TransportFailure(transaction=self))
        else:  # pragma: no cover - the tables only name effects their class has
            raise AssertionError(f"{effect} not implemented by {type(self).__name__}")


def _response_input(status: int) -> Input:
    if status < 200:
        return Input.RESP_1XX
    if status < 300:
        return Input.RESP_2XX
    return Input.RESP_300_699


def _tu_input(status: int) -> Input:
    if status < 200:
        return Input.TU_1XX
    if status < 300:
        return Input.TU_2XX
    return Input.TU_300_699


class ClientTransaction(Transaction):
    """Sends a request and collects its responses (RFC 3261 §17.1)."""

    __slots__ = ("_transmit",)

    def __init__(
        self,
        key: Hashable,
        request: Request,
        destination: object,
        state: State,
        timers: TimerValues,
    ) -> None:
        super().__init__(key, request, destination, state, timers)
        self._transmit = Transmit(
            message=request, data=request.to_bytes(), destination=destination, transaction=self
        )

    def _start(self, now: float) -> list[Action]:
        """Send the request and start the timers of the first state."""
        out: list[Action] = [self._transmit]
        self._enter(self.state, now, out)
        return out

    def receive_response(self, response: Response, now: float) -> list[Action]:
        """A response matching this transaction (§17.1.3) arrived."""
        out: list[Action] = []
        self._handle(_response_input(response.status), now, response, out)
        return out

    def _effect(
        self, effect: Effect, now: float, message: Message | None, out: list[Action]
    ) -> None:
        if effect is Effect.DELIVER_RESPONSE:
            assert isinstance(message, Response)
            out.append(DeliverResponse(transaction=self, response=message))
        elif effect is Effect.RETRANSMIT_REQUEST:
            out.append(self._transmit)
        else:
            super()._effect(effect, now, message, out)


class InviteClientTransaction(ClientTransaction):
    """RFC 3261 §17.1.1 with the Accepted state of RFC 6026 §7.2.

    Timer A retransmits the INVITE (unreliable transports only) at T1, 3*T1,
    7*T1 ... until a response or Timer B (64*T1).  A non-2xx final response
    is acknowledged here, and its retransmissions get the same ACK during
    Timer D.  2xx responses go to the TU, which sends their ACK; in Accepted
    the transaction passes 2xx retransmissions (and 2xx from other forks) up
    until Timer M, so they are not mistaken for strays.  Timer B only runs in
    Calling: once a provisional response arrived, ending the call is the
    TU's business (a proxy's Timer C, §16.8), and so is giving the
    transaction up when its CANCEL gets no final answer
    (:meth:`TransactionLayer.abandon`, §9.1).
    """

    __slots__ = ("_ack",)

    TRANSITIONS: ClassVar[Mapping[tuple[State, Input], Transition]] = _with_terminated(
        {
            # Calling (§17.1.1.2)
            (_S.CALLING, _I.TIMER_A): _stay(_E.RETRANSMIT_REQUEST, _E.DOUBLE),
            (_S.CALLING, _I.TIMER_B): _to(_S.TERMINATED, _E.TIMEOUT),
            (_S.CALLING, _I.TRANSPORT_ERROR): _to(_S.TERMINATED, _E.TRANSPORT_FAILURE),
            (_S.CALLING, _I.RESP_1XX): _to(_S.PROCEEDING, _E.DELIVER_RESPONSE),
            (_S.CALLING, _I.RESP_2XX): _to(_S.ACCEPTED, _E.DELIVER_RESPONSE),
            (_S.CALLING, _I.RESP_300_699): _to(_S.COMPLETED, _E.SEND_ACK, _E.DELIVER_RESPONSE),
            # Proceeding: nothing is sent, so a transport error cannot be ours.
            (_S.PROCEEDING, _I.RESP_1XX): _stay(_E.DELIVER_RESPONSE),
            (_S.PROCEEDING, _I.RESP_2XX): _to(_S.ACCEPTED, _E.DELIVER_RESPONSE),
            (_S.PROCEEDING, _I.RESP_300_699): _to(_S.COMPLETED, _E.SEND_ACK, _E.DELIVER_RESPONSE),
            (_S.PROCEEDING, _I.TRANSPORT_ERROR): IGNORE,
            # §9.1: no final response 64*T1 after the CANCEL.  Elsewhere the
            # transaction ends by its own timers (B in Calling, D, M).
            (_S.PROCEEDING, _I.TU_ABANDON): _to(_S.TERMINATED),
            (_S.CALLING, _I.TU_ABANDON): IGNORE,
            (_S.COMPLETED, _I.TU_ABANDON): IGNORE,
            (_S.ACCEPTED, _I.TU_ABANDON): IGNORE,
            (_S.TERMINATED, _I.TU_ABANDON): IGNORE,
            # Completed: retransmitted non-2xx finals are ACKed again, not
            # passed up (§17.1.1.2).  A 2xx here comes from another branch of
            # a forking proxy (§16.7 step 5 forwards every 2xx); the TU must
            # still ACK it and hang up, so it goes up.
            (_S.COMPLETED, _I.RESP_1XX): IGNORE,
            (_S.COMPLETED, _I.RESP_2XX): _stay(_E.DELIVER_RESPONSE),
            (_S.COMPLETED, _I.RESP_300_699): _stay(_E.SEND_ACK),
            (_S.COMPLETED, _I.TIMER_D): _to(_S.TERMINATED),
            (_S.COMPLETED, _I.TRANSPORT_ERROR): _to(_S.TERMINATED, _E.TRANSPORT_FAILURE),
            # Accepted (RFC 6026 §7.2): every 2xx to the TU.
            (_S.ACCEPTED, _I.RESP_1XX): IGNORE,
            (_S.ACCEPTED, _I.RESP_2XX): _stay(_E.DELIVER_RESPONSE),
            (_S.ACCEPTED, _I.RESP_300_699): IGNORE,
            (_S.ACCEPTED, _I.TIMER_M): _to(_S.TERMINATED),
            (_S.ACCEPTED, _I.TRANSPORT_ERROR): IGNORE,  # the TU sends the ACK of a 2xx
        },
        _NETWORK_INPUTS_CLIENT,
    )
    TIMERS: ClassVar[Mapping[State, tuple[Input, ...]]] = {
        _S.CALLING: (_I.TIMER_A, _I.TIMER_B),
        _S.PROCEEDING: (),
        _S.COMPLETED: (_I.TIMER_D,),
        _S.ACCEPTED: (_I.TIMER_M,),
    }

    def __init__(
        self, key: Hashable, request: Request, destination: object, timers: TimerValues
    ) -> None:
        super().__init__(key, request, destination, State.CALLING, timers)
        self._ack: Transmit | None = None

    def _effect(
        self, effect: Effect, now: float, message: Message | None, out: list[Action]
    ) -> None:
        if effect is Effect.SEND_ACK:
            ack = self._ack
            if ack is None:
                assert isinstance(message, Response)
                request = build_ack(self.request, message)
                # §17.1.1.3: the ACK goes where the INVITE went.
                ack = self._ack = Transmit(
                    message=request,
                    data=request.to_bytes(),
                    destination=self.destination,
                    transaction=self,
                )
            out.append(ack)
        else:
            super()._effect(effect, now, message, out)


class NonInviteClientTransaction(ClientTransaction):
    """RFC 3261 §17.1.2: Timer E retransmits (unreliable transports only),
    doubling up to T2, every T2 once a provisional response arrived; Timer F
    (64*T1) times out; Timer K (T4, 0 over TCP) absorbs retransmitted
    responses in Completed."""

    __slots__ = ()

    TRANSITIONS: ClassVar[Mapping[tuple[State, Input], Transition]] = _with_terminated(
        {
            # Trying (§17.1.2.2)
            (_S.TRYING, _I.TIMER_E): _stay(_E.RETRANSMIT_REQUEST, _E.DOUBLE_UP_TO_T2),
            (_S.TRYING, _I.TIMER_F): _to(_S.TERMINATED, _E.TIMEOUT),
            (_S.TRYING, _I.TRANSPORT_ERROR): _to(_S.TERMINATED, _E.TRANSPORT_FAILURE),
            (_S.TRYING, _I.RESP_1XX): _to(_S.PROCEEDING, _E.DELIVER_RESPONSE),
            (_S.TRYING, _I.RESP_2XX): _to(_S.COMPLETED, _E.DELIVER_RESPONSE),
            (_S.TRYING, _I.RESP_300_699): _to(_S.COMPLETED, _E.DELIVER_RESPONSE),
            # Proceeding
            (_S.PROCEEDING, _I.TIMER_E): _stay(_E.RETRANSMIT_REQUEST, _E.RESET_TO_T2),
            (_S.PROCEEDING, _I.TIMER_F): _to(_S.TERMINATED, _E.TIMEOUT),
            (_S.PROCEEDING, _I.TRANSPORT_ERROR): _to(_S.TERMINATED, _E.TRANSPORT_FAILURE),
            (_S.PROCEEDING, _I.RESP_1XX): _stay(_E.DELIVER_RESPONSE),
            (_S.PROCEEDING, _I.RESP_2XX): _to(_S.COMPLETED, _E.DELIVER_RESPONSE),
            (_S.PROCEEDING, _I.RESP_300_699): _to(_S.COMPLETED, _E.DELIVER_RESPONSE),
            # Completed: "any retransmissions of the final response ... are
            # absorbed"; nothing is sent any more.
            (_S.COMPLETED, _I.RESP_1XX): IGNORE,
            (_S.COMPLETED, _I.RESP_2XX): IGNORE,
            (_S.COMPLETED, _I.RESP_300_699): IGNORE,
            (_S.COMPLETED, _I.TIMER_K): _to(_S.TERMINATED),
            (_S.COMPLETED, _I.TRANSPORT_ERROR): IGNORE,
        },
        _NETWORK_INPUTS_CLIENT,
    )
    TIMERS: ClassVar[Mapping[State, tuple[Input, ...]]] = {
        _S.TRYING: (_I.TIMER_E, _I.TIMER_F),
        _S.PROCEEDING: (_I.TIMER_E, _I.TIMER_F),  # keep running (§17.1.2.2)
        _S.COMPLETED: (_I.TIMER_K,),
    }

    def __init__(
        self, key: Hashable, request: Request, destination: object, timers: TimerValues
    ) -> None:
        super().__init__(key, request, destination, State.TRYING, timers)


class ServerTransaction(Transaction):
    """Receives a request and sends the TU's responses (RFC 3261 §17.2).

    ``destination`` is the request's source, as the transport gave it.
    """

    __slots__ = ("_final_to_tag", "_last", "rfc2543")

    def __init__(
        self,
        key: Hashable,
        request: Request,
        source: object,
        state: State,
        timers: TimerValues,
        *,
        rfc2543: bool = False,
    ) -> None:
        super().__init__(key, request, source, state, timers)
        self._last: Transmit | None = None
        # Matched by the RFC 2543 rules (§17.2.3): an ACK must then carry the
        # To tag of our final response.
        self.rfc2543 = rfc2543
        self._final_to_tag: str | None = None

    @property
    def last_response(self) -> Response | None:
        """The latest response sent, which a retransmitted request gets again."""
        last = self._last
        if last is None:
            return None
        assert isinstance(last.message, Response)
        return last.message

    def _start(self, now: float) -> list[Action]:
        return [DeliverRequest(transaction=self, request=self.request)]

    def receive_request(self, request: Request, now: float) -> list[Action]:
        """A request matching this transaction (§17.2.3): a retransmission,
        or the ACK of an INVITE."""
        out: list[Action] = []
        event = Input.ACK if request.method == "ACK" else Input.REQUEST
        self._handle(event, now, request, out)
        return out

    def send_response(self, response: Response, now: float) -> list[Action]:
        """The TU answers.  Raises :class:`TransactionError` if the state
        does not allow this response."""
        out: list[Action] = []
        self._handle(_tu_input(response.status), now, response, out)
        return out

    def acknowledges(self, ack: Request) -> bool:
        """RFC 2543 matching of an ACK (§17.2.3): its To tag must equal the
        To tag of the final response this transaction sent."""
        tag = self._final_to_tag
        return tag is not None and ack.to.tag == tag

    def _effect(
        self, effect: Effect, now: float, message: Message | None, out: list[Action]
    ) -> None:
        if effect is Effect.SEND_RESPONSE:
            assert isinstance(message, Response)
            last = self._last = Transmit(
                message=message,
                data=message.to_bytes(),
                destination=self.destination,
                transaction=self,
            )
            if self.rfc2543 and message.status >= 200:
                self._final_to_tag = message.to.tag
            out.append(last)
        elif effect is Effect.RESEND_RESPONSE:
            if self._last is not None:
                out.append(self._last)
        elif effect is Effect.DELIVER_REQUEST:
            assert isinstance(message, Request)
            out.append(DeliverRequest(transaction=self, request=message))
        else:
            super()._effect(effect, now, message, out)


class InviteServerTransaction(ServerTransaction):
    """RFC 3261 §17.2.1 with the Accepted state of RFC 6026 §7.1.

    ``100 Trying`` is sent as soon as the transaction exists, before the
    INVITE is delivered, so the TU must not send one of its own.  The RFC
    asks for it only if the TU will not answer within 200 ms, and allows
    sending it at once (§17.2.1); doing so stops the client's Timer A
    sooner, saves a timer per INVITE, and a proxy that asks a database or
    another node for a route rarely answers within 200 ms anyway.

    A non-2xx final response is retransmitted by Timer G (doubling up to T2,
    unreliable transports only) until the ACK arrives (Completed to
    Confirmed) or Timer H (64*T1) gives up and tells the TU.  Confirmed
    absorbs retransmitted ACKs for Timer I (T4, 0 over TCP).  After a 2xx
    (Accepted), the TU retransmits the 2xx itself and the transaction only
    absorbs INVITE retransmissions, passes ACKs to the TU, and lives for
    Timer L (64*T1).
    """

    __slots__ = ()

    TRANSITIONS: ClassVar[Mapping[tuple[State, Input], Transition]] = _with_terminated(
        {
            # Proceeding
            (_S.PROCEEDING, _I.REQUEST): _stay(_E.RESEND_RESPONSE),
            (_S.PROCEEDING, _I.ACK): IGNORE,  # nothing final to acknowledge yet
            (_S.PROCEEDING, _I.TU_1XX): _stay(_E.SEND_RESPONSE),
            (_S.PROCEEDING, _I.TU_2XX): _to(_S.ACCEPTED, _E.SEND_RESPONSE),
            (_S.PROCEEDING, _I.TU_300_699): _to(_S.COMPLETED, _E.SEND_RESPONSE),
            (_S.PROCEEDING, _I.TRANSPORT_ERROR): _to(_S.TERMINATED, _E.TRANSPORT_FAILURE),
            # Completed
            (_S.COMPLETED, _I.REQUEST): _stay(_E.RESEND_RESPONSE),
            (_S.COMPLETED, _I.ACK): _to(_S.CONFIRMED),
            (_S.COMPLETED, _I.TIMER_G): _stay(_E.RESEND_RESPONSE, _E.DOUBLE_UP_TO_T2),
            (_S.COMPLETED, _I.TIMER_H): _to(_S.TERMINATED, _E.TIMEOUT),
            (_S.COMPLETED, _I.TRANSPORT_ERROR): _to(_S.TERMINATED, _E.TRANSPORT_FAILURE),
            # A second final response is discarded, as §17.2.2 says for
            # non-INVITE; a provisional one after a final is a TU bug.
            (_S.COMPLETED, _I.TU_2XX): IGNORE,
            (_S.COMPLETED, _I.TU_300_699): IGNORE,
            # Confirmed: absorb ACK (and INVITE) retransmissions.
            (_S.CONFIRMED, _I.REQUEST): IGNORE,
            (_S.CONFIRMED, _I.ACK): IGNORE,
            (_S.CONFIRMED, _I.TIMER_I): _to(_S.TERMINATED),
            (_S.CONFIRMED, _I.TRANSPORT_ERROR): IGNORE,
            (_S.CONFIRMED, _I.TU_2XX): IGNORE,
            (_S.CONFIRMED, _I.TU_300_699): IGNORE,
            # Accepted (RFC 6026 §7.1): the TU retransmits its 2xx through us.
            (_S.ACCEPTED, _I.REQUEST): IGNORE,
            (_S.ACCEPTED, _I.ACK): _stay(_E.DELIVER_REQUEST),
            (_S.ACCEPTED, _I.TU_2XX): _stay(_E.SEND_RESPONSE),
            (_S.ACCEPTED, _I.TIMER_L): _to(_S.TERMINATED),
            (_S.ACCEPTED, _I.TRANSPORT_ERROR): _stay(_E.TRANSPORT_FAILURE),
        },
        _NETWORK_INPUTS_SERVER,
    )
    TIMERS: ClassVar[Mapping[State, tuple[Input, ...]]] = {
        _S.PROCEEDING: (),
        _S.COMPLETED: (_I.TIMER_G, _I.TIMER_H),
        _S.CONFIRMED: (_I.TIMER_I,),
        _S.ACCEPTED: (_I.TIMER_L,),
    }

    def __init__(
        self,
        key: Hashable,
        request: Request,
        source: object,
        timers: TimerValues,
        *,
        rfc2543: bool = False,
    ) -> None:
        super().__init__(key, request, source, State.PROCEEDING, timers, rfc2543=rfc2543)

    def _start(self, now: float) -> list[Action]:
        request = self.request
        # §8.2.6.1: a Timestamp in the request is copied into the 100.
        timestamp = request.headers.get("timestamp")
        trying = build_response(
            request, 100, extra=[("Timestamp", timestamp)] if timestamp is not None else None
        )
        out: list[Action] = []
        self._handle(Input.TU_1XX, now, trying, out)
        out.append(DeliverRequest(transaction=self, request=request))
        return out


class NonInviteServerTransaction(ServerTransaction):
    """RFC 3261 §17.2.2: retransmitted requests get the latest response again
    (nothing before the first one); Timer J (64*T1, 0 over TCP) keeps the
    final response around for them."""

    __slots__ = ()

    TRANSITIONS: ClassVar[Mapping[tuple[State, Input], Transition]] = _with_terminated(
        {
            # Trying: "any further request retransmissions are discarded".
            (_S.TRYING, _I.REQUEST): IGNORE,
            (_S.TRYING, _I.TU_1XX): _to(_S.PROCEEDING, _E.SEND_RESPONSE),
            (_S.TRYING, _I.TU_2XX): _to(_S.COMPLETED, _E.SEND_RESPONSE),
            (_S.TRYING, _I.TU_300_699): _to(_S.COMPLETED, _E.SEND_RESPONSE),
            (_S.TRYING, _I.TRANSPORT_ERROR): _to(_S.TERMINATED, _E.TRANSPORT_FAILURE),
            # Proceeding
            (_S.PROCEEDING, _I.REQUEST): _stay(_E.RESEND_RESPONSE),
            (_S.PROCEEDING, _I.TU_1XX): _stay(_E.SEND_RESPONSE),
            (_S.PROCEEDING, _I.TU_2XX): _to(_S.COMPLETED, _E.SEND_RESPONSE),
            (_S.PROCEEDING, _I.TU_300_699): _to(_S.COMPLETED, _E.SEND_RESPONSE),
            (_S.PROCEEDING, _I.TRANSPORT_ERROR): _to(_S.TERMINATED, _E.TRANSPORT_FAILURE),
            # Completed: "any other final responses passed by the TU ... MUST
            # be discarded".
            (_S.COMPLETED, _I.REQUEST): _stay(_E.RESEND_RESPONSE),
            (_S.COMPLETED, _I.TU_2XX): IGNORE,
            (_S.COMPLETED, _I.TU_300_699): IGNORE,
            (_S.COMPLETED, _I.TIMER_J): _to(_S.TERMINATED),
            (_S.COMPLETED, _I.TRANSPORT_ERROR): _to(_S.TERMINATED, _E.TRANSPORT_FAILURE),
        },
        (Input.REQUEST, Input.TRANSPORT_ERROR),  # an ACK never matches a non-INVITE
    )
    TIMERS: ClassVar[Mapping[State, tuple[Input, ...]]] = {
        _S.TRYING: (),
        _S.PROCEEDING: (),
        _S.COMPLETED: (_I.TIMER_J,),
    }

    def __init__(
        self,
        key: Hashable,
        request: Request,
        source: object,
        timers: TimerValues,
        *,
        rfc2543: bool = False,
    ) -> None:
        super().__init__(key, request, source, State.TRYING, timers, rfc2543=rfc2543)


# ---------------------------------------------------------------------------
# ACK for non-2xx (RFC 3261 §17.1.1.3)

# Header fields of the INVITE that the ACK carries as they are.
_ACK_COPIED = frozenset({"from", "call-id", "route", "max-forwards"})


def build_ack(invite: Request, response: Response) -> Request:
    """The ACK of a non-2xx final response, built by the client transaction.

    RFC 3261 §17.1.1.3: same Request-URI, Call-ID, From and CSeq number as
    the INVITE, CSeq method ACK, the To of the response (with its tag), a
    single Via equal to the INVITE's top Via (so the ACK matches the server
    transaction), and the INVITE's Route header fields.  Max-Forwards is
    copied (70 if absent) because every request carries one (§8.1.1.6).
    """
    fields: list[Field] = []
    have_max_forwards = False
    via_done = False
    for f in invite.headers:
        key = f.key
        if key == "via":
            if not via_done:
                via = invite.top_via
                g = Field.new("via", str(via))
                g.parsed = [via]
                fields.append(g)
                via_done = True
        elif key == "to":
            fields.append(response.headers.fields("to")[0])
        elif key == "cseq":
            fields.append(Field.new("cseq", f"{invite.cseq.number} ACK"))
        elif key in _ACK_COPIED:
            fields.append(f)
            if key == "max-forwards":
                have_max_forwards = True
    if not have_max_forwards:
        fields.insert(1, Field.new("max-forwards", _DEFAULT_MAX_FORWARDS))
    fields.append(Field.new("content-length", "0"))
    return Request("ACK", invite.uri_text, Headers(fields))


# ---------------------------------------------------------------------------
# Matching (RFC 3261 §17.1.3, §17.2.3)

_INVITE_OR_ACK = frozenset({"INVITE", "ACK"})
_RFC2543 = "rfc2543"  # first element of RFC 2543 keys; no RFC 3261 branch equals it


def _server_key(request: Request, method: str) -> tuple[Hashable, bool]:
    """Key of ``request`` as if its method were ``method``; and whether the
    RFC 2543 rules were used."""
    via = request.top_via
    branch = via.branch
    # The address the request came from (set by the transport) is part of
    # the key too: a retransmission comes from where the original came
    # from, and a request from elsewhere that reuses a branch (by accident,
    # as the RFC 4475 messages do, or to hijack a transaction) is not one.
    origin = request.source
    if via.rfc3261_branch:
        # §17.2.3: branch, sent-by and method; ACK matches its INVITE, so
        # INVITE/ACK keys carry no method (pjsip's create_tsx_key_3261).  The
        # branch is compared as received: every stack echoes it verbatim.
        if method in _INVITE_OR_ACK:
            return (branch, via.host.lower(), via.port, origin), False
        return (branch, via.host.lower(), via.port, method, origin), False
    # RFC 2543 fallback (§17.2.3 last paragraphs; also a bare cookie, RFC
    # 4475 §3.2.1): Request-URI, From tag, Call-ID, CSeq number, top Via,
    # and the To tag except for INVITE/ACK, whose ACK carries the tag of our
    # response while the INVITE carried none; that tag is checked against
    # the transaction instead (ServerTransaction.acknowledges).
    if method == "ACK":
        method = "INVITE"
    to_tag = None if method == "INVITE" else request.to.tag
    return (
        _RFC2543,
        request.uri_text,
        request.from_.tag,
        request.call_id,
        request.cseq.number,
        via.transport,
        via.host.lower(),
        via.port,
        branch,
        method,
        to_tag,
        origin,
    ), True


def server_key(request: Request) -> Hashable:
    """The server transaction ``request`` belongs to (RFC 3261 §17.2.3).

    With an RFC 3261 branch: branch + top-Via sent-by + method (+ the
    source address the transport recorded, see :func:`_server_key`), an ACK
    having the key of its INVITE and a CANCEL its own.  Without one (RFC
    2543 peers, or the bare cookie ``z9hG4bK`` of RFC 4475 §3.2.1): the
    Request-URI, From tag, Call-ID, CSeq number, top Via and (for methods
    other than INVITE/ACK) the To tag.  Raises
    :class:`sip.errors.ParseError` if those headers cannot be read.
    """
    return _server_key(request, request.method)[0]


def client_key(response: Response) -> Hashable:
    """The client transaction ``response`` belongs to (RFC 3261 §17.1.3):
    top-Via branch + CSeq method, the method dropped for INVITE (whose
    responses are the only ones an INVITE transaction gets).  A CANCEL shares
    its INVITE's branch, so its key keeps the method."""
    branch = response.top_via.branch
    method = response.cseq.method
    if method == "INVITE":
        return branch
    return (branch, method)


def _request_client_key(request: Request) -> Hashable:
    branch = request.top_via.branch
    if request.method == "INVITE":
        return branch
    return (branch, request.method)


# ---------------------------------------------------------------------------
# The layer


class TransactionLayer:
    """The live transactions and the one timer that serves them all.

    The transport calls :meth:`receive` for every parsed message (it
    validates what it delivers), :meth:`transport_error` when a
    :class:`Transmit` fails, and
    :meth:`timers` when :meth:`next_deadline` passes.  The TU calls
    :meth:`send_request` and :meth:`send_response`.  Transactions leave the
    table the moment they end (a :class:`Terminated` action says so).
    """

    __slots__ = (
        "_clients",
        "_heap",
        "_max",
        "_reliable",
        "_retry_after",
        "_seq",
        "_servers",
        "_unreliable",
        "overload",
        "settings",
    )

    def __init__(
        self,
        settings: SIPSettings | None = None,
        *,
        max_transactions: int = MAX_TRANSACTIONS,
        retry_after: int = OVERLOAD_RETRY_AFTER,
        overload: OverloadControl | None = None,
    ) -> None:
        if max_transactions <= 0:
            raise ValueError("max_transactions must be positive")
        self.settings = settings if settings is not None else SIPSettings()
        self._unreliable = TimerValues(self.settings, reliable=False)
        self._reliable = TimerValues(self.settings, reliable=True)
        self._max = max_transactions
        self._retry_after = retry_after
        #: Sheds new work past the server's capacity (None: only the bound).
        self.overload = overload
        self._servers: dict[Hashable, ServerTransaction] = {}
        self._clients: dict[Hashable, ClientTransaction] = {}
        # (deadline, sequence, transaction); an entry is live only while its
        # sequence equals the transaction's _heap_seq.
        self._heap: list[tuple[float, int, Transaction]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        """Number of live transactions (for metrics and the bound)."""
        return len(self._servers) + len(self._clients)

    @property
    def server_count(self) -> int:
        return len(self._servers)

    @property
    def client_count(self) -> int:
        return len(self._clients)

    # -- from the transport --------------------------------------------------
    def receive(
        self, message: Message, source: object, now: float, *, reliable: bool = False
    ) -> list[Action]:
        """A message from the network.

        A request goes to its server transaction, or creates one (delivered
        to the TU with :class:`DeliverRequest`); an ACK that matches nothing
        is a :class:`StrayAck`; past the bound, or shed by the overload
        control, a new request becomes :class:`Overload`.  A response goes
        to its client transaction, or becomes a :class:`StrayResponse`.
        ``reliable`` (the request came over TCP) is fixed for the server
        transaction it creates.

        A request is validated (:meth:`Message.validate`) only once it is
        known to be new: a retransmission is matched and absorbed on the
        headers matching reads, and a shed request is answered before the
        work (DESIGN.md: match before validating).  A :class:`StrayAck` is
        not validated: the TU validates the one it forwards.  Raises
        :class:`sip.errors.ParseError` if the message is malformed; no
        transaction was created then.
        """
        if isinstance(message, Request):
            return self._receive_request(message, source, now, reliable)
        assert isinstance(message, Response)
        message.validate()
        tx = self._clients.get(client_key(message))
        if tx is None:
            return [StrayResponse(response=message, source=source)]
        out = tx.receive_response(message, now)
        self._settle(tx)
        return out

    def _receive_request(
        self, request: Request, source: object, now: float, reliable: bool
    ) -> list[Action]:
        method = request.method
        key, rfc2543 = _server_key(request, method)
        tx = self._servers.get(key)
        if tx is not None:
            if rfc2543 and method == "ACK" and not tx.acknowledges(request):
                return [StrayAck(request=request, source=source)]
            out = tx.receive_request(request, now)
            self._settle(tx)
            return out
        if method == "ACK":
            # Not validated here: most are ACKs of stateless answers (a 503
            # that shed load), which the TU drops on the Call-ID alone.
            return [StrayAck(request=request, source=source)]
        overload = self.overload
        if len(self._servers) + len(self._clients) >= self._max:
            if overload is not None:
                overload.table_full += 1
            return [Overload(request=request, source=source, retry_after=self._retry_after)]
        if overload is not None:
            kind = shed_class(request)
            if kind is not None and not overload.admits(kind):
                return [Overload(request=request, source=source, retry_after=overload.retry_after)]
        request.validate()
        timers = self._reliable if reliable else self._unreliable
        new: ServerTransaction
        if method == "INVITE":
            new = InviteServerTransaction(key, request, source, timers, rfc2543=rfc2543)
        else:
            new = NonInviteServerTransaction(key, request, source, timers, rfc2543=rfc2543)
        self._servers[key] = new
        out = new._start(now)
        self._settle(new)
        return out

    def transport_error(self, transaction: Transaction, now: float) -> list[Action]:
        """A :class:`Transmit` of ``transaction`` failed (RFC 3261 §17.1.4,
        §17.2.4)."""
        out = transaction.transport_error(now)
        self._settle(transaction)
        return out

    def timers(self, now: float) -> list[Action]:
        """Fire every timer due at ``now``."""
        out: list[Action] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, seq, tx = heapq.heappop(heap)
            if tx._heap_seq != seq:
                continue  # re-armed or ended since
            tx._heap_seq = -1
            tx._fire(now, out)
            self._settle(tx)
        return out

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`timers` has work, or None."""
        heap = self._heap
        while heap:
            deadline, seq, tx = heap[0]
            if tx._heap_seq == seq:
                return deadline
            heapq.heappop(heap)
        return None

    # -- from the TU ---------------------------------------------------------
    def send_request(
        self, request: Request, destination: object, now: float, reliable: bool = False
    ) -> tuple[ClientTransaction, list[Action]]:
        """Start a client transaction for ``request`` towards ``destination``
        (opaque: whatever the transport understands).

        The request must carry an RFC 3261 branch in its top Via, unique to
        this transaction (§8.1.1.7; a CANCEL reuses its INVITE's branch,
        §9.1).  ACK is not a transaction: the ACK of a 2xx is sent by the TU
        straight to the transport.  Client transactions are not refused at
        the bound: each follows a request the layer already admitted, and
        refusing it would strand that server transaction.
        """
        method = request.method
        if method == "ACK":
            raise TransactionError("ACK is not sent in a client transaction")
        if not request.top_via.rfc3261_branch:
            raise TransactionError("a client transaction needs an RFC 3261 branch")
        key = _request_client_key(request)
        if key in self._clients:
            raise TransactionError("branch already used by a live client transaction")
        timers = self._reliable if reliable else self._unreliable
        tx: ClientTransaction
        if method == "INVITE":
            tx = InviteClientTransaction(key, request, destination, timers)
        else:
            tx = NonInviteClientTransaction(key, request, destination, timers)
        self._clients[key] = tx
        out = tx._start(now)
        self._settle(tx)
        return tx, out

    def send_response(
        self, transaction: ServerTransaction | Hashable, response: Response, now: float
    ) -> list[Action]:
        """Send the TU's ``response`` on a server transaction (or its key).

        Raises :class:`TransactionError` if the transaction has ended or the
        state does not allow the response; a proxy then forwards a late 2xx
        statelessly (RFC 3261 §16.7 step 9).
        """
        if isinstance(transaction, ServerTransaction):
            tx = transaction
        else:
            found = self._servers.get(transaction)
            if found is None:
                raise TransactionError("no such server transaction")
            tx = found
        out = tx.send_response(response, now)
        self._settle(tx)
        return out

    def abandon(self, transaction: InviteClientTransaction, now: float) -> list[Action]:
        """The TU gives up an INVITE it CANCELled (RFC 3261 §9.1: no final
        response within 64*T1 of the CANCEL).  A transaction still in
        Proceeding ends (:class:`Terminated`); in any other state it is
        left to its own timers."""
        out: list[Action] = []
        transaction._handle(Input.TU_ABANDON, now, None, out)
        self._settle(transaction)
        return out

    def cancelled_transaction(self, cancel: Request) -> InviteServerTransaction | None:
        """The INVITE server transaction a CANCEL refers to (RFC 3261 §9.2:
        the key of the CANCEL computed as if its method were INVITE)."""
        tx = self._servers.get(_server_key(cancel, "INVITE")[0])
        return tx if isinstance(tx, InviteServerTransaction) else None

    def server_transaction(self, request: Request) -> ServerTransaction | None:
        """The live server transaction ``request`` belongs to, if any."""
        return self._servers.get(server_key(request))

    # -- bookkeeping -----------------------------------------------------------
    def _settle(self, tx: Transaction) -> None:
        """After any input: drop an ended transaction, or (re)schedule its
        next deadline on the heap."""
        if tx.state is State.TERMINATED:
            tx._heap_seq = -1
            table: dict[Hashable, ServerTransaction] | dict[Hashable, ClientTransaction]
            table = self._servers if isinstance(tx, ServerTransaction) else self._clients
            if table.get(tx.key) is tx:
                del table[tx.key]
            return
        deadline = tx.next_deadline()
        if deadline is None:
            tx._heap_seq = -1
            return
        if tx._heap_seq >= 0 and tx._heap_at == deadline:
            return
        seq = next(self._seq)
        tx._heap_seq = seq
        tx._heap_at = deadline
        heap = self._heap
        heapq.heappush(heap, (deadline, seq, tx))
        live = len(self._servers) + len(self._clients)
        if len(heap) > _HEAP_STALE_FACTOR * live + _HEAP_STALE_FLOOR:
            self._compact()

    def _compact(self) -> None:
        live = [entry for entry in self._heap if entry[2]._heap_seq == entry[1]]
        heapq.heapify(live)
        self._heap = live
