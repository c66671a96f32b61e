"""The call router: the transaction user of the gateway's stateful proxy.

Every request is tied to a profile, to the carrier, or refused (identify,
:mod:`gateway.proxy.identify`), an initial INVITE takes a channel of its
profile (admit), goes to the carrier or to the profile's PBX (route), and
its channel is freed however the call ends.  A call's life is a table
(:mod:`gateway.proxy.call`): each request, response, failure and timer of a
call is an event, and :meth:`CallRouter._fire` looks up the row of the
call's state and carries out its effects; an event with no row is a bug,
logged, counted, and the call ended so that no channel leaks.  Every call
ends in one place (``_finish``), which logs its one ``call ended`` line at
info and hands its record to the writer (docs/logging.md).  When a
profile's credit runs out is timed by :class:`gateway.billing.guard.CreditGuard`.
Registrations go to the registrar.  The SIP mechanics are in
:mod:`sip.proxy` and :mod:`sip.transaction`; the I/O (sockets, timers,
tasks) comes through the :class:`CallIO` port that ``gateway.web.app``
provides, so the router never touches a socket itself.

Trust (RFC 3261 §22, §26):

* the carrier's configured source addresses are trusted for inbound calls
  and for in-dialog requests;
* an IP-authenticated profile is recognised by the UDP source IP *and*
  port (over TCP by the IP alone: source ports are ephemeral);
* when both could claim a request, the most specific address wins (see
  :func:`gateway.proxy.identify.by_address`): a PBX may share the carrier's host;
* everyone else must answer a digest challenge: ``401`` for REGISTER,
  ``407`` for other requests.  An unknown username gets the same answer as
  a wrong password;
* in-dialog requests (To tag present) are routed along the route set of a
  call the gateway admitted (loose routing, §16.4) and are not challenged
  again; one for a call we do not know is answered ``481``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from admission import (
    AdmissionController,
    AdmissionResult,
    Admitted,
    ImmediateAdmission,
    RejectReason,
)
from gateway.billing.cdr import CallRecordEntry
from gateway.billing.credit import CreditMeter, CreditShare, elapsed_ms, longest_prefix_rate
from gateway.billing.guard import CreditGuard
from gateway.config.settings import CarrierSettings
from gateway.proxy.call import ROWS, Call, CallEffect, CallEvent, CallState, Hop, ReleaseReason
from gateway.proxy.dialog import byes_of, from_caller, next_hop
from gateway.proxy.directory import Directory, ProfileEntry
from gateway.proxy.identify import Caller, FromCarrier, Refused, by_address, by_digest
from gateway.proxy.own import OwnAddress
from gateway.proxy.registrar import LocationService, build_register_response
from sip.digest import DigestRealm
from sip.errors import ParseError, SIPError
from sip.message import Message, Request, Response, build_response
from sip.proxy import (
    ProxyError,
    build_cancel,
    check_request,
    forward_request,
    pop_own_routes,
    relay_response,
)
from sip.session_timer import (
    MIN_SE_FLOOR,
    SESSION_REFRESH_METHODS,
    TooSmall,
    apply_minimum,
    session_expires,
)
from sip.transaction import (
    Action,
    ClientTransaction,
    DeliverRequest,
    DeliverResponse,
    InviteClientTransaction,
    Overload,
    ServerTransaction,
    StrayAck,
    Terminated,
    Timeout,
    TransactionError,
    TransactionLayer,
    Transmit,
    TransportFailure,
)
from sip.transport import stateless_tag
from sip.uri import URI, host_port, parse_uri

__all__ = [
    "Call",
    "CallIO",
    "CallRouter",
    "CallState",
    "CarrierSettings",
    "Hop",
    "ReleaseReason",
    "RouterObserver",
    "RouterStats",
]

logger = logging.getLogger(__name__)

#: Methods the gateway handles (OPTIONS answer, RFC 3261 §11.2).
ALLOWED_METHODS = (
    "INVITE",
    "ACK",
    "CANCEL",
    "BYE",
    "OPTIONS",
    "REGISTER",
    "UPDATE",
    "INFO",
    "PRACK",
)
#: Methods that only exist inside a dialog.
DIALOG_METHODS = frozenset({"BYE", "UPDATE", "INFO", "PRACK"})
#: The reason phrase of our 503 when the next hop cannot be reached.
_UNREACHABLE = "Next hop unreachable"
#: Request-URI schemes we can route (RFC 3261 §8.2.2.1, §16.3 step 2; RFC 3966).
SUPPORTED_URI_SCHEMES = frozenset({"sip", "sips", "tel"})
#: Body types we accept (RFC 3261 §11.2: Accept in the OPTIONS answer).
ACCEPTED_BODIES = ("application/sdp",)
#: Option tags we support (none yet; RFC 3261 §8.2.2.3, §16.3 step 5).
SUPPORTED_OPTION_TAGS: frozenset[str] = frozenset()
#: Calls whose end the gateway never sees are cut after this (seconds).
DEFAULT_MAX_CALL_DURATION = 4 * 3600.0
#: Warning text of a 503 for a full profile (RFC 3261 §20.43, code 399: miscellaneous).
CHANNEL_LIMIT_TEXT = "Channel limit reached"
#: Warning text of a 503 that sheds load (sip.overload; RFC 3261 §20.43).
OVERLOADED_TEXT = "Overloaded, retry later"
#: Warning texts of outbound calls refused for money reasons.
NO_CREDIT_TEXT = "No credit left"
NO_RATE_TEXT = "No rate for this destination"
#: IP-authenticated peers do not register (and must not hijack a
#: registration profile's bindings by their address).
IP_PEERS_DO_NOT_REGISTER = Refused(403, "IP-authenticated peers do not register")
#: The Reason text of the BYEs that end a call the router lost track of.
STATE_ERROR_TEXT = "Call state error"
#: Channel releases that get a line at debug (the others speak for themselves).
_RELEASE_NOTES = {
    ReleaseReason.NO_ACK: "2xx never acknowledged, channel freed",
    ReleaseReason.SESSION_EXPIRED: "session expired without a refresh, channel freed",
}


class RouterObserver(Protocol):
    """What the router reports as it happens (``gateway.web.metrics.Metrics``).
    A profile is given as its directory entry: counted by its stable id,
    whatever it is called when the metrics are read."""

    def admission(self, profile: ProfileEntry, result: str) -> None: ...

    def auth_failure(self) -> None: ...

    def call_setup_time(self, seconds: float) -> None: ...

    def channel_released(self, profile: ProfileEntry, reason: ReleaseReason) -> None: ...


class RecordSink(Protocol):
    """Where finished calls' records go (``gateway.billing.cdr.CallRecordWriter``)."""

    def submit(self, entry: CallRecordEntry) -> None: ...


class _Unobserved:
    def admission(self, profile: ProfileEntry, result: str) -> None:
        pass

    def auth_failure(self) -> None:
        pass

    def call_setup_time(self, seconds: float) -> None:
        pass

    def channel_released(self, profile: ProfileEntry, reason: ReleaseReason) -> None:
        pass


class CallIO(Protocol):
    """What the router needs from the asyncio layer."""

    def now(self) -> float: ...

    def send_response(self, response: Response, source: object, data: bytes | None = None) -> None:
        """Route a response per RFC 3261 §18.2.2 (``source``: the request's;
        ``data``: its bytes if already serialised, as a Transmit has them)."""

    def send_request(
        self,
        message: Message,
        hop: Hop,
        transaction: ClientTransaction | None,
        data: bytes | None = None,
    ) -> None:
        """Send a request (``data``: its bytes if already serialised); a
        failure is reported to the transaction layer."""

    def call_at(self, when: float, callback: Callable[[], None]) -> Any:
        """Arm a timer; the result has ``cancel()``."""

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine in the background (its errors are logged)."""


@dataclass(slots=True)
class RouterStats:
    """What the router counts in plain ints, for a collector to read at
    scrape time (as ``sip.transport.TransportStats``).  What the observer
    reports (admissions, releases, authentication failures) is not
    counted again here."""

    #: Events a call's state had no row for (each a bug, logged at error;
    #: the call was ended).
    call_state_errors: int = 0


@dataclass(slots=True, eq=False)
class _Relay:
    """A forwarded request: the server transaction its responses go back on."""

    server_tx: ServerTransaction
    call: Call | None
    initial_invite: bool


#: What an effect of the call table gets: the call, the response of the
#: event (if any), the text the event came with (a BYE's Reason, a 500's
#: phrase) and the release reason (the row's, else the event's).
_Effect = Callable[[Call, Response | None, str, str | None], None]


class CallRouter:
    """Identify → admit → route, and free the channel on every ending."""

    def __init__(
        self,
        *,
        layer: TransactionLayer,
        io: CallIO,
        directory: Directory,
        admission: AdmissionController,
        registrar: LocationService,
        digest: DigestRealm,
        carrier: CarrierSettings,
        own_addresses: Iterable[tuple[str, int]],
        advertised: tuple[str, int],
        observer: RouterObserver | None = None,
        max_call_duration: float = DEFAULT_MAX_CALL_DURATION,
        min_session_expires: int = MIN_SE_FLOOR,
        meter: CreditMeter | None = None,
        records: RecordSink | None = None,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.layer = layer
        self.io = io
        self.directory = directory
        self.admission = admission
        #: The same backend when it answers at once (in memory), else None.
        self._immediate = admission if isinstance(admission, ImmediateAdmission) else None
        self.registrar = registrar
        self.digest = digest
        self.carrier = carrier
        self.own = OwnAddress(advertised, own_addresses)
        self._overloaded_warning = f'399 {self.own.host_port} "{OVERLOADED_TEXT}"'
        self.stats = RouterStats()
        self.observer: RouterObserver = observer if observer is not None else _Unobserved()
        self.max_call_duration = max_call_duration
        self.min_session_expires = min_session_expires
        # Without a meter outbound calls are not charged (unit tests).
        self.credit = CreditGuard(meter, io, self._credit_exhausted)
        self.records = records
        self.wall_clock = wall_clock
        self.calls: dict[str, Call] = {}
        self._relays: dict[ClientTransaction, _Relay] = {}
        self._by_server_tx: dict[ServerTransaction, Call] = {}
        # Each effect of the call table is carried out by the method of its
        # name (CallEffect.CANCEL_DOWNSTREAM: _cancel_downstream), but the
        # final answers (REPLY_408: _reply_final with 408).
        self._effects: dict[CallEffect, _Effect] = {
            effect: (
                functools.partial(self._reply_final, status=int(effect.name[6:]))
                if effect.name.startswith("REPLY_")
                else getattr(self, f"_{effect.name.lower()}")
            )
            for effect in CallEffect
        }

    @property
    def carrier(self) -> CarrierSettings:
        """The carrier: where outbound calls go, whom inbound calls come from."""
        return self._carrier

    @carrier.setter
    def carrier(self, carrier: CarrierSettings) -> None:
        self._carrier = carrier
        hop = carrier.next_hop()
        self._carrier_hop = None if hop is None else Hop(*hop)

    @property
    def tracked(self) -> int:
        """Entries the router holds for live transactions: 0 when idle, so
        a number that only grows is a leak an operator can see."""
        return len(self._relays) + len(self._by_server_tx)

    # -- entry points --------------------------------------------------------
    def apply_directory(self, new: Directory) -> None:
        """A new profile directory: renamed or re-limited profiles apply to
        their live calls at once; a deleted profile loses its registrations
        and its calls are ended (BYE both sides, or CANCEL and 487 while
        ringing), which frees their channels."""
        self.directory = new
        charging = self.credit.charging
        if charging:
            for profile in new.profiles():
                self.credit.set_credit(profile.id, profile.credit, new.version)
        gone: set[int] = set()
        for call in list(self.calls.values()):
            entry = new.profile(call.profile.id)
            if entry is not None:
                call.profile = entry
            else:
                gone.add(call.profile.id)
                self._abort_call(call, "Profile deleted", ReleaseReason.PROFILE_DELETED)
        for profile_id in self.registrar.profile_ids():
            if new.profile(profile_id) is None:
                gone.add(profile_id)
                self.registrar.remove_profile(profile_id)
        if gone:
            logger.info("profiles %s deleted: their calls and registrations are gone", sorted(gone))
        if charging:
            for profile_id in gone:
                self.credit.forget(profile_id)
            # A credit change moves the moment live calls must end.
            for profile_id in {call.profile.id for call in self.calls.values()}:
                self.credit.recheck(profile_id)

    def end_all_calls(self, why: str = "Gateway shutting down") -> int:
        """End every call (graceful shutdown): their channels are freed and
        their records written.  Returns how many there were."""
        calls = list(self.calls.values())
        for call in calls:
            self._abort_call(call, why, ReleaseReason.SHUTDOWN)
        return len(calls)

    def _abort_call(self, call: Call, why: str, reason: ReleaseReason) -> None:
        """End a call whatever its state: answered calls get BYE on both
        sides; unanswered ones are cancelled downstream and answered 487."""
        self._fire(call, CallEvent.ABORT, why=why, reason=reason)

    def on_message(self, message: Message, source: Any, *, reliable: bool) -> None:
        """A validated message from the transport."""
        actions = self.layer.receive(message, source, self.io.now(), reliable=reliable)
        self.run(actions)

    def run(self, actions: list[Action]) -> None:
        """Carry out what the transaction layer asks."""
        for action in actions:
            if isinstance(action, Transmit):
                tx = action.transaction
                # The bytes the transaction serialised once (DESIGN.md).
                if isinstance(tx, ServerTransaction):
                    assert isinstance(action.message, Response)
                    self.io.send_response(action.message, action.destination, action.data)
                else:
                    assert isinstance(action.destination, Hop)
                    assert isinstance(tx, ClientTransaction)
                    self.io.send_request(action.message, action.destination, tx, action.data)
            elif isinstance(action, DeliverRequest):
                self._on_request(action.transaction, action.request)
            elif isinstance(action, DeliverResponse):
                self._on_response(action.transaction, action.response)
            elif isinstance(action, StrayAck):
                self._on_ack(action.request, action.source)
            elif isinstance(action, Timeout | TransportFailure):
                self._on_failure(action.transaction, isinstance(action, Timeout))
            elif isinstance(action, Terminated):
                self._on_terminated(action.transaction)
            elif isinstance(action, Overload):
                # Stateless (no transaction was created): a retransmission
                # is refused again the same way.
                response = self._reply(
                    action.request,
                    503,
                    extra=[
                        ("Retry-After", str(action.retry_after)),
                        ("Warning", self._overloaded_warning),
                    ],
                )
                if logger.isEnabledFor(logging.DEBUG):
                    _debug_response("out", response)
                self.io.send_response(response, action.source)
            # A StrayResponse is dropped (RFC 6026 §7.3, RFC 3261 §16.7 as updated).

    # -- credit across the nodes of a cluster (gateway.cluster.credit_share) -----------------
    def credit_shares(self, clock_offset: float) -> dict[int, CreditShare]:
        """What this node's calls spend (:meth:`CreditGuard.credit_shares`)."""
        return self.credit.credit_shares(clock_offset)

    def apply_remote_credit(
        self, profile_id: int, share: CreditShare | None, clock_offset: float
    ) -> None:
        """What the other nodes' calls of a profile spend
        (:meth:`CreditGuard.apply_remote_credit`)."""
        self.credit.apply_remote_credit(profile_id, share, clock_offset)

    # -- the call's life (gateway.proxy.call) ------------------------------------------
    def _fire(
        self,
        call: Call,
        event: CallEvent,
        response: Response | None = None,
        *,
        why: str = "",
        reason: str | None = None,
    ) -> None:
        """The event happened to the call: the row of its state says where
        it goes and what is done (one dict lookup per state and event)."""
        transition = ROWS[call.state].get(event)
        if transition is None:
            self._state_error(call, event)
            return
        if transition.target is not None:
            call.state = transition.target
        if transition.reason is not None:
            reason = transition.reason
        for effect in transition.effects:
            self._effects[effect](call, response, why, reason)
        if transition.target is CallState.TERMINATED and call.timer_c is not None:
            # Timer C watches the branch until the INVITE is over, which may
            # be after the call ended early (RFC 3261 §16.8).
            call.timer_c.cancel()
            call.timer_c = None
        if transition.finishes:
            assert reason is not None, f"{call.state} entered without a reason"
            self._finish(call, reason)

    def _state_error(self, call: Call, event: CallEvent) -> None:
        """An event the table has no row for: a bug of the router (every
        event a peer can cause has its rows).  It is logged and counted,
        and the call is ended as a profile deletion would end it, so that
        its channel is freed whatever state it was left in."""
        self.stats.call_state_errors += 1
        logger.error(
            "call state error call_id=%s state=%s event=%s: no transition, the call is ended",
            _log_value(call.call_id),
            call.state.name,
            event.name,
        )
        if ROWS[call.state].get(CallEvent.ABORT) is not None:
            self._fire(call, CallEvent.ABORT, why=STATE_ERROR_TEXT, reason=ReleaseReason.ERROR)

    # -- requests ------------------------------------------------------------
    def _on_request(self, tx: ServerTransaction, request: Request) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            _debug_request(request)
        try:
            self._dispatch(tx, request)
        except SIPError as error:
            self._respond(tx, request, error.status, error.reason)

    def _dispatch(self, tx: ServerTransaction, request: Request) -> None:
        method = request.method
        if request.uri.scheme not in SUPPORTED_URI_SCHEMES:
            self._respond(tx, request, 416)  # RFC 3261 §16.3 step 2, RFC 4475 §3.3.2
            return
        unsupported = self._unsupported(request.option_tags("proxy-require"))
        if unsupported and method != "CANCEL":
            self._respond(tx, request, 420, extra=[("Unsupported", ", ".join(unsupported))])
            return
        if method == "CANCEL":
            self._on_cancel(tx, request)
        elif request.to.tag is not None:
            self._in_dialog(tx, request)
        elif method == "INVITE":
            self._initial_invite(tx, request)
        elif method in DIALOG_METHODS:
            # A request that only exists inside a dialog, without a To tag
            # (RFC 3261 §12.2.2, §15.1.2).
            self._respond(tx, request, 481)
        elif method == "REGISTER":
            self._register(tx, request)
        elif method == "OPTIONS" and not request.headers.fields("route"):
            # A PBX probing its trunk: answered here, whatever the
            # Request-URI (RFC 3261 §11; RFC 4475 §3.3.11 allows 200 even
            # at Max-Forwards 0).
            self._local_options(tx, request)
        elif request.max_forwards == 0:
            self._respond(tx, request, 483)
        else:
            # RFC 3261 §8.2.1: what we do not implement out of a dialog.
            self._respond(tx, request, 501, extra=[("Allow", ", ".join(ALLOWED_METHODS))])

    def _unsupported(self, tags: list[str]) -> list[str]:
        return list(dict.fromkeys(t for t in tags if t not in SUPPORTED_OPTION_TAGS))

    def _local_options(self, tx: ServerTransaction, request: Request) -> None:
        unsupported = self._unsupported(request.option_tags("require"))
        if unsupported:
            self._respond(tx, request, 420, extra=[("Unsupported", ", ".join(unsupported))])
            return
        self._respond(
            tx,
            request,
            200,
            extra=[
                ("Allow", ", ".join(ALLOWED_METHODS)),
                ("Accept", ", ".join(ACCEPTED_BODIES)),
                ("Supported", ", ".join(sorted(SUPPORTED_OPTION_TAGS))),
            ],
        )

    # -- who is calling (gateway.proxy.identify) ------------------------------------
    def _caller(self, request: Request) -> Caller:
        """Who sent an out-of-dialog request: known by its address, else by
        its digest credentials, else refused with a challenge."""
        source = request.source
        assert source is not None
        known = by_address(self.carrier, self.directory, source)
        if known is not None:
            return known
        return by_digest(self.digest, self.directory, request, self.io.now())

    def _turn_away(self, tx: ServerTransaction, request: Request, refused: Refused) -> None:
        """Answer a request whose sender is not trusted."""
        if refused.bad_credentials:
            self.observer.auth_failure()
        extra = list(refused.headers) if refused.headers else None
        self._respond(tx, request, refused.status, refused.reason, extra=extra)

    # -- registrations (RFC 3261 §10.3) -----------------------------------------
    def _register(self, tx: ServerTransaction, request: Request) -> None:
        source = request.source
        assert source is not None
        if by_address(self.carrier, self.directory, source) is not None:
            self._turn_away(tx, request, IP_PEERS_DO_NOT_REGISTER)
            return
        if request.to.uri.scheme not in ("sip", "sips"):
            self._respond(tx, request, 400, "Address-of-record must be a SIP URI")
            return
        caller = by_digest(self.digest, self.directory, request, self.io.now())
        if isinstance(caller, Refused):
            self._turn_away(tx, request, caller)
            return
        unsupported = self._unsupported(request.option_tags("require"))
        if unsupported:
            self._respond(tx, request, 420, extra=[("Unsupported", ", ".join(unsupported))])
            return
        outcome = self.registrar.register(caller.profile.id, request, source, self.io.now())
        response = build_register_response(request, outcome, stateless_tag(request))
        self._send(tx, response)

    # -- initial INVITE ------------------------------------------------------
    def _initial_invite(self, tx: ServerTransaction, request: Request) -> None:
        if request.call_id in self.calls:
            # RFC 3261 §8.2.2.2: a second INVITE for a call in progress.
            self._respond(tx, request, 482, "Merged Request")
            return
        # RFC 3261 §16.3: Max-Forwards (step 3) and loops (step 4) are
        # checked before Proxy-Authorization (step 6).
        check_request(request, self.own.is_own_via)
        caller = self._caller(request)
        if isinstance(caller, Refused):
            self._turn_away(tx, request, caller)
        elif isinstance(caller, FromCarrier):
            self._inbound(tx, request)
        else:
            self._outbound(tx, request, caller.profile)

    def _outbound(self, tx: ServerTransaction, request: Request, profile: ProfileEntry) -> None:
        carrier_hop = self._carrier_hop
        if carrier_hop is None or self.carrier.uri is None:
            self._respond(tx, request, 503, "No carrier configured")
            return
        target = self.carrier.uri.replace(user=request.uri.user)
        source = request.source
        assert source is not None
        pbx = Hop(source[0], source[1], source[2])
        self._admit_and_forward(
            tx,
            request,
            profile=profile,
            direction="outbound",
            pbx=pbx,
            target=target,
            hop=carrier_hop,
        )

    def _inbound(self, tx: ServerTransaction, request: Request) -> None:
        number = request.uri.user or ""
        profile = self.directory.by_number(number)
        if profile is None:
            self._respond(tx, request, 404, "Number not assigned")
            return
        if profile.auth_mode == "ip":
            assert profile.ip is not None and profile.port is not None
            hop = Hop("UDP", profile.ip, profile.port)
            host = f"[{profile.ip}]" if ":" in profile.ip else profile.ip
            target = parse_uri(f"sip:{number}@{host}:{profile.port}")
        else:
            bindings = self.registrar.targets(profile.id, self.io.now())
            if not bindings:
                self._respond(tx, request, 480, "No registered PBX")
                return
            binding = bindings[0]
            transport, host, port = binding.source
            hop = Hop(transport, host, port)
            target = binding.target_uri
        self._admit_and_forward(
            tx, request, profile=profile, direction="inbound", pbx=hop, target=target, hop=hop
        )

    def _admit_and_forward(
        self,
        tx: ServerTransaction,
        request: Request,
        *,
        profile: ProfileEntry,
        direction: str,
        pbx: Hop,
        target: URI,
        hop: Hop,
    ) -> None:
        if self._session_interval_refused(tx, request):
            return
        call = Call(request.call_id, profile, direction, tx, pbx, started=self.io.now())
        call.target = target
        call.invite_hop = hop
        call.started_at = self.wall_clock()
        call.caller = request.from_.uri.user or str(request.from_.uri)
        call.callee = request.uri.user or str(request.uri)
        source = request.source
        assert source is not None
        call.carrier_side = hop if direction == "outbound" else Hop(*source[:3])
        call.caller_from = request.headers.get("from") or ""
        call.caller_contact = _contact_uri(request)
        call.caller_cseq = request.cseq.number
        if direction == "inbound":
            call.carrier_contact = _contact_uri(request)
        # Registered before the (possibly asynchronous) admission, so that a
        # merged INVITE or a CANCEL arriving meanwhile finds it.
        self.calls[call.call_id] = call
        self._by_server_tx[tx] = call
        if not self._priced(call):
            return
        immediate = self._immediate
        if immediate is not None:
            # In-process admission answers at once: no task per call.
            profile = call.profile
            self._admitted(
                call, immediate.acquire_now(profile.id, call.call_id, profile.channel_limit)
            )
        else:
            self.io.spawn(self._admit(call))

    def _priced(self, call: Call) -> bool:
        """Credit is checked before a channel is taken (issue 5): an
        outbound call needs a rate for its destination (else 403) and
        credit left (else 402)."""
        if call.direction == "outbound" and self.credit.charging:
            call.price = longest_prefix_rate(self.directory.rates, call.callee)
            if call.price is None:
                self._refuse(call, "no_rate", 403, NO_RATE_TEXT)
                return False
            if not self.credit.has_credit(call.profile.id):
                self._refuse(call, "no_credit", 402, NO_CREDIT_TEXT)
                return False
        return True

    async def _admit(self, call: Call) -> None:
        """Admission that waits (Redis)."""
        profile = call.profile
        self._admitted(
            call, await self.admission.acquire(profile.id, call.call_id, profile.channel_limit)
        )

    def _admitted(self, call: Call, result: AdmissionResult) -> None:
        if not isinstance(result, Admitted):
            if result.reason is not RejectReason.CHANNEL_LIMIT:
                # The Call-ID already holds a channel for another profile
                # (a hairpin through the gateway): RFC 3261 §8.2.2.2.
                self._refuse(call, result.reason.value, 482, reason="Merged Request")
                return
            self._refuse(call, result.reason.value, 503, CHANNEL_LIMIT_TEXT)
            return
        self.observer.admission(call.profile, "admitted")
        self._fire(call, CallEvent.ADMITTED)

    def _refuse(
        self,
        call: Call,
        result: str,
        status: int,
        text: str | None = None,
        *,
        reason: str | None = None,
    ) -> None:
        """An initial INVITE not admitted: answered here, counted, recorded;
        it never held a channel."""
        self.observer.admission(call.profile, result)
        self._observe_setup(call)
        extra = None
        if text is not None:
            extra = [
                ("Warning", f'399 {self.own.host_port} "{text}"'),
                ("Reason", f'SIP;cause={status};text="{text}"'),
            ]
        self._respond(call.server_tx, call.server_tx.request, status, reason, extra=extra)
        self._fire(call, CallEvent.REFUSED, reason=result)

    # -- CANCEL (RFC 3261 §9.2, §16.10) -------------------------------------------
    def _on_cancel(self, tx: ServerTransaction, cancel: Request) -> None:
        invite_tx = self.layer.cancelled_transaction(cancel)
        if invite_tx is None:
            self._respond(tx, cancel, 481)
            return
        self._respond(tx, cancel, 200)
        call = self._by_server_tx.get(invite_tx)
        if call is not None:
            self._fire(call, CallEvent.CANCEL)

    # -- responses -------------------------------------------------------------
    def _on_response(self, tx: ClientTransaction, response: Response) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            _debug_response("in", response)
        relay = self._relays.get(tx)
        if relay is None:
            return
        status = response.status
        if status == 100:
            return  # RFC 3261 §16.7 step 5: a 100 Trying is not forwarded
        try:
            relay_response(response)
        except (ProxyError, ParseError):
            return
        call = relay.call
        if call is not None:
            if relay.initial_invite:
                self._observe_setup(call)
                if status < 200:
                    self._fire(call, CallEvent.RESP_1XX, response)
                else:
                    call.final_status = status
                    event = CallEvent.RESP_2XX if status < 300 else CallEvent.RESP_300_699
                    self._fire(call, event, response)
            elif 200 <= status < 300 and response.cseq.method in SESSION_REFRESH_METHODS:
                self._fire(call, CallEvent.SESSION_REFRESH, response)
        self._send(relay.server_tx, response)

    def _observe_setup(self, call: Call) -> None:
        """Call setup time: INVITE in → first ringing, answer or final out."""
        if call.setup_time is None:
            call.setup_time = self.io.now() - call.started
            self.observer.call_setup_time(call.setup_time)

    def _on_failure(self, tx: Any, timeout: bool) -> None:
        if not isinstance(tx, ClientTransaction):
            return  # Timer H on a server transaction: the upstream ACK never came
        relay = self._relays.get(tx)
        if relay is None:
            return
        call = relay.call
        if relay.initial_invite and call is not None:
            self._fire(call, CallEvent.TIMEOUT if timeout else CallEvent.TRANSPORT_ERROR)
            return
        status = 408 if timeout else 503
        reason = "Request Timeout" if timeout else _UNREACHABLE
        self._respond(relay.server_tx, relay.server_tx.request, status, reason)

    def _on_terminated(self, tx: Any) -> None:
        if isinstance(tx, ClientTransaction):
            self._relays.pop(tx, None)
        elif isinstance(tx, ServerTransaction):
            # Only a live INVITE server transaction can be CANCELled
            # (RFC 3261 §9.2), so its call entry goes with it.
            self._by_server_tx.pop(tx, None)

    # -- session timers (RFC 4028) ------------------------------------------------
    def _session_interval_refused(self, tx: ServerTransaction, request: Request) -> bool:
        """Apply our minimum session interval to a session refresh request
        (RFC 4028 §8.1); True when the request was answered here (400 for a
        malformed Session-Expires or Min-SE, 422 asking for a longer one)."""
        try:
            verdict = apply_minimum(request, self.min_session_expires)
        except ParseError as error:
            self._respond(tx, request, 400, error.reason)
            return True
        if isinstance(verdict, TooSmall):
            self._respond(tx, request, 422, extra=[("Min-SE", str(verdict.min_se))])
            return True
        return False

    # -- in-dialog requests (RFC 3261 §12.2, §16.4) ---------------------------------
    def _in_dialog(self, tx: ServerTransaction, request: Request) -> None:
        call = self.calls.get(request.call_id)
        if call is None:
            self._respond(tx, request, 481)
            return
        if request.max_forwards == 0:
            self._respond(tx, request, 483)
            return
        if request.method in SESSION_REFRESH_METHODS and self._session_interval_refused(
            tx, request
        ):
            return
        if from_caller(request, call, self.carrier):
            call.caller_cseq = max(call.caller_cseq, request.cseq.number)
        else:
            call.callee_cseq = max(call.callee_cseq, request.cseq.number)
        pop_own_routes(request, self.own.is_own_uri)
        hop = next_hop(request, call, self.carrier, self.own)
        forwarded = forward_request(request, via=self.own.via(request, hop.transport))
        if request.method == "BYE":
            self._fire(call, CallEvent.BYE)  # RFC 3261 §15.1.2; forwarded all the same
        try:
            client_tx, actions = self.layer.send_request(
                forwarded, hop, self.io.now(), reliable=hop.transport == "TCP"
            )
        except TransactionError as error:
            self._respond(tx, request, 500, error.reason)
            return
        self._relays[client_tx] = _Relay(tx, call, initial_invite=False)
        self.run(actions)

    def _on_ack(self, ack: Request, source: Any) -> None:
        """The ACK of a 2xx: its own transaction-less request, forwarded
        statelessly along the route set (RFC 3261 §16.11, §13.2.2.4)."""
        if logger.isEnabledFor(logging.DEBUG):
            _debug_request(ack)
        try:
            call = self.calls.get(ack.call_id)
            if call is None:
                return  # the ACK of a stateless answer, or of a call long gone
            ack.validate()  # the transaction layer leaves stray ACKs to us
        except ParseError:
            return  # an ACK is never answered (RFC 3261 §17)
        self._fire(call, CallEvent.ACK)
        if ack.max_forwards == 0:
            return
        pop_own_routes(ack, self.own.is_own_uri)
        hop = next_hop(ack, call, self.carrier, self.own)
        self.io.send_request(
            forward_request(ack, via=self.own.ack_via(ack, hop.transport)), hop, None
        )

    # -- the effects of the call table (CallEffect) ---------------------------------------
    def _forward_invite(
        self, call: Call, response: Response | None, why: str, reason: str | None
    ) -> None:
        """Forward the admitted INVITE (RFC 3261 §16.6) and arm Timer C
        (step 11: a call may ring only so long)."""
        request = call.server_tx.request
        hop, target = call.invite_hop, call.target
        assert hop is not None and target is not None
        forwarded = forward_request(
            request,
            via=self.own.via(request, hop.transport),
            target=target,
            record_route=self.own.record_route(),
        )
        call.invite = forwarded
        try:
            client_tx, actions = self.layer.send_request(
                forwarded, hop, self.io.now(), reliable=hop.transport == "TCP"
            )
        except TransactionError as error:
            self._fire(call, CallEvent.FORWARD_FAILED, why=error.reason)
            return
        call.client_tx = client_tx
        self._relays[client_tx] = _Relay(call.server_tx, call, initial_invite=True)
        self._reset_timer_c(call, response, why, reason)
        self.run(actions)

    def _reset_timer_c(
        self, call: Call, response: Response | None, why: str, reason: str | None
    ) -> None:
        """(Re)arm Timer C: when the INVITE is forwarded (RFC 3261 §16.6
        step 11) and at each provisional answer but 100 (§16.7 step 2)."""
        if call.timer_c is not None:
            call.timer_c.cancel()
        call.timer_c = self.io.call_at(
            self.io.now() + self.layer.settings.timer_c,
            lambda: self._fire(call, CallEvent.TIMER_C),
        )

    def _answer(self, call: Call, response: Response | None, why: str, reason: str | None) -> None:
        """The callee answered (the first 2xx): an outbound call starts
        spending credit at its destination's price (every call of its
        profile may now have to end sooner: they share the credit), the
        dialog's far side is learnt for the BYEs the gateway may send, and
        the ACK (RFC 3261 §13.3.1.4: a UAS gives up after 64*T1), the
        session (RFC 4028) and the maximum duration are timed."""
        assert response is not None
        now = self.io.now()
        call.answered_mono = now
        call.answered_at = self.wall_clock()
        if call.price is not None:
            self.credit.call_answered(call.profile.id, call.record_key, call.price)
        self._learn_contact(call, response, why, reason)
        call.callee_to = response.headers.get("to") or ""
        call.callee_contact = _contact_uri(response)
        call.timers.append(
            self.io.call_at(
                self.io.now() + self.layer.settings.timer_h,
                lambda: self._fire(call, CallEvent.NO_ACK),
            )
        )
        self._refresh_session(call, response, why, reason)
        call.timers.append(
            self.io.call_at(
                self.io.now() + self.max_call_duration,
                lambda: self._fire(
                    call,
                    CallEvent.END,
                    why="Maximum call duration",
                    reason=ReleaseReason.MAX_DURATION,
                ),
            )
        )

    def _learn_contact(
        self, call: Call, response: Response | None, why: str, reason: str | None
    ) -> None:
        """An outbound call's remote target on the carrier side: the 2xx's
        Contact (RFC 3261 §12.1.2), from the first 2xx that has one."""
        assert response is not None
        if call.direction == "outbound" and call.carrier_contact is None:
            call.carrier_contact = _contact_uri(response)

    def _refresh_session(
        self, call: Call, response: Response | None, why: str, reason: str | None
    ) -> None:
        """A 2xx to the INVITE or to a refresh (re-INVITE, UPDATE) states the
        session interval; no Session-Expires means no session timer (RFC
        4028 §8.2, §7.2).  The maximum call duration applies either way."""
        assert response is not None
        try:
            expires = session_expires(response)
        except ParseError:
            return  # a malformed answer changes nothing
        if call.session_timer is not None:
            call.session_timer.cancel()
            call.session_timer = None
        if expires is None:
            return
        # Never sooner than our minimum, whatever a peer states: a session
        # we drop is a call we stop counting.  When it runs out, a proxy
        # frees what it holds but must not send BYE (RFC 4028 §8.3); the
        # user agents send it (§10), and any later request of the dialog
        # gets 481.
        interval = max(expires.interval, self.min_session_expires)
        call.session_timer = self.io.call_at(
            self.io.now() + interval, lambda: self._fire(call, CallEvent.SESSION_EXPIRED)
        )

    def _cancel_downstream(
        self, call: Call, response: Response | None, why: str, reason: str | None
    ) -> None:
        """CANCEL the forwarded INVITE (RFC 3261 §16.10, §9.1)."""
        if call.invite is None or call.invite_hop is None:
            return
        cancel = build_cancel(call.invite)
        try:
            _, actions = self.layer.send_request(
                cancel, call.invite_hop, self.io.now(), reliable=call.invite_hop.transport == "TCP"
            )
        except TransactionError:
            return
        self.run(actions)
        invite_tx = call.client_tx
        if isinstance(invite_tx, InviteClientTransaction):
            # §9.1: no final answer 64*T1 after the CANCEL, the INVITE's
            # client transaction is destroyed (it has no timer of its own
            # past a 1xx).  Not a call timer: the call may be over already.
            self.io.call_at(
                self.io.now() + self.layer.settings.timer_b,
                lambda: self.run(self.layer.abandon(invite_tx, self.io.now())),
            )

    def _arm_cancel_timeout(
        self, call: Call, response: Response | None, why: str, reason: str | None
    ) -> None:
        """If the far end never answers the CANCEL, end the call ourselves
        after Timer B's 64*T1 (RFC 3261 §9.1)."""
        call.timers.append(
            self.io.call_at(
                self.io.now() + self.layer.settings.timer_b,
                lambda: self._fire(call, CallEvent.CANCEL_TIMEOUT),
            )
        )

    def _reply_final(
        self, call: Call, response: Response | None, why: str, reason: str | None, status: int
    ) -> None:
        """The proxy's own final answer upstream (REPLY_408 ... REPLY_503:
        RFC 3261 §16.7 step 6, §16.8, §9.2); a 500 carries the event's text,
        a 503 says the next hop failed."""
        phrase = why if status == 500 else _UNREACHABLE if status == 503 else None
        self._respond(call.server_tx, call.server_tx.request, status, phrase)

    def _bye_both_sides(
        self, call: Call, response: Response | None, why: str, reason: str | None
    ) -> None:
        """End an answered call ourselves: BYE to both sides (RFC 3261
        §15.1.1, with a Reason, RFC 3326)."""
        logger.debug("call %s: %s, sending BYE to both sides", call.call_id, why)
        assert call.invite_hop is not None
        for bye, hop in byes_of(call, why, self.own):
            try:
                _, actions = self.layer.send_request(
                    bye, hop, self.io.now(), reliable=hop.transport == "TCP"
                )
            except TransactionError:
                continue
            self.run(actions)

    def _release(self, call: Call, response: Response | None, why: str, reason: str | None) -> None:
        """Free the call's channel (each call reaches one row with this)."""
        assert isinstance(reason, ReleaseReason)
        note = _RELEASE_NOTES.get(reason)
        if note is not None:
            logger.debug("call %s: %s", call.call_id, note)
        self.observer.channel_released(call.profile, reason)
        immediate = self._immediate
        if immediate is not None:
            immediate.release_now(call.call_id)
        else:
            self.io.spawn(self._release_channel(call.call_id))

    async def _release_channel(self, call_id: str) -> None:
        await self.admission.release(call_id)

    # -- the end of a call: its cost and its record -------------------------------------
    def _finish(self, call: Call, reason: str) -> None:
        """The call is over (``reason``: a :class:`ReleaseReason`, or the
        admission result of a call refused before it held a channel): its
        meter stops, its record is written, its timers are cancelled and
        the router forgets it.  Once per call: the table's rows into an
        ended state from a live one."""
        cost = Decimal(0)
        if call.answered_mono is not None and call.price is not None:
            cost = self.credit.call_ended(call.profile.id, call.record_key)
        self._record(call, cost, reason)
        for timer in call.timers:
            timer.cancel()
        call.timers.clear()
        if call.session_timer is not None:
            call.session_timer.cancel()
            call.session_timer = None
        if self.calls.get(call.call_id) is call:
            del self.calls[call.call_id]

    def _credit_exhausted(self, profile_id: int) -> None:
        """The profile's credit is spent (the guard's callback): every
        charged call of the profile ends, BYE to both sides; the cost is
        debited when the records are written."""
        charged = [
            call
            for call in self.calls.values()
            if call.profile.id == profile_id and call.answered_mono is not None and call.price
        ]
        for call in charged:
            self._fire(
                call, CallEvent.END, why="Credit exhausted", reason=ReleaseReason.CREDIT_EXHAUSTED
            )
        if charged:
            # One line for the profile (an operator tops it up), beside each
            # call's own "call ended ... reason=credit_exhausted".
            profile = charged[0].profile
            logger.info(
                "credit exhausted account=%s profile=%s calls_ended=%d",
                _log_value(profile.account),
                _log_value(profile.name),
                len(charged),
            )

    def _record(self, call: Call, cost: Decimal, reason: str) -> None:
        """The call's end: its line in the log and its record to the
        writer.  One line per record: what an operator greps for is what
        the history downloads."""
        duration = 0
        if call.answered_mono is not None:
            duration = elapsed_ms(call.answered_mono, self.io.now())
        status = call.final_status or (200 if call.answered_mono is not None else 500)
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "call ended call_id=%s account=%s profile=%s direction=%s status=%d"
                " duration=%d.%03ds reason=%s",
                _log_value(call.call_id),
                _log_value(call.profile.account),
                _log_value(call.profile.name),
                call.direction,
                status,
                duration // 1000,
                duration % 1000,
                _log_value(reason),
            )
        if self.records is None or call.started_at is None:
            return
        try:
            entry = call.record(
                ended_at=self.wall_clock(), duration_ms=duration, status=status, cost=cost
            )
        except ValueError as error:  # never lose the call over a bad field
            logger.error("call %s: no record: %s", call.call_id, error)
            return
        self.records.submit(entry)

    # -- helpers -------------------------------------------------------------------
    def _reply(
        self,
        request: Request,
        status: int,
        reason: str | None = None,
        *,
        extra: list[tuple[str, str]] | None = None,
    ) -> Response:
        """A response of ours, with a stable To tag (RFC 3261 §8.2.6.2)."""
        return build_response(request, status, reason, to_tag=stateless_tag(request), extra=extra)

    def _respond(
        self,
        tx: ServerTransaction,
        request: Request,
        status: int,
        reason: str | None = None,
        *,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        self._send(tx, self._reply(request, status, reason, extra=extra))

    def _send(self, tx: ServerTransaction, response: Response) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            _debug_response("out", response)
        if response.status >= 200:
            call = self._by_server_tx.get(tx)
            if call is not None and call.server_tx is tx and not call.final_status:
                call.final_status = response.status
        try:
            actions = self.layer.send_response(tx, response, self.io.now())
        except TransactionError:
            # The server transaction is gone or past its final answer: a
            # late 2xx is still forwarded, statelessly (RFC 3261 §16.7 step 9).
            if response.is_success:
                self.io.send_response(response, tx.destination)
            return
        self.run(actions)


def _contact_uri(message: Message) -> URI | None:
    """The first Contact URI of a message, if it has a usable one."""
    try:
        contacts = message.contacts
        return contacts[0].uri if contacts and not contacts[0].star else None
    except ParseError:
        return None


# -- the log (docs/logging.md) ------------------------------------------------------
def _log_value(text: str) -> str:
    """A value of a ``key=value`` log line: as it is when it is a plain
    word, else in double quotes with ``"`` and ``\\`` escaped and control
    characters as ``\\uXXXX``, so that a line splits back into its fields
    and no value (a Call-ID, a profile name) can forge a line."""
    if text and all(c.isprintable() and c not in _NEEDS_QUOTES for c in text):
        return text
    escaped = "".join(_escaped(c) for c in text)
    return f'"{escaped}"'


#: Printable characters that still make a log value quoted.
_NEEDS_QUOTES = frozenset(' "=\\')


def _escaped(c: str) -> str:
    if c in '"\\':
        return "\\" + c
    if c.isprintable():
        return c
    return f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}"


def _source(message: Message) -> tuple[str, str]:
    """The transport and ``host:port`` a message came from."""
    if message.source is None:
        return "-", "-"
    transport, host, port = message.source[:3]
    return transport, host_port(host, port)


def _debug_request(request: Request) -> None:
    """One line per request handed to the router (retransmissions are
    absorbed by their transactions first)."""
    transport, source = _source(request)
    logger.debug(
        "request in method=%s call_id=%s transport=%s source=%s",
        _log_value(request.method),
        _log_value(request.call_id),
        transport,
        source,
    )


def _debug_response(way: str, response: Response) -> None:
    """One line per response: ``in`` from downstream, ``out`` towards the
    request's sender (relayed or our own)."""
    try:
        method = response.cseq.method
    except ParseError:
        method = "-"
    if way == "in":
        transport, source = _source(response)
        logger.debug(
            "response in status=%d method=%s call_id=%s transport=%s source=%s",
            response.status,
            _log_value(method),
            _log_value(response.call_id),
            transport,
            source,
        )
    else:
        logger.debug(
            "response out status=%d method=%s call_id=%s",
            response.status,
            _log_value(method),
            _log_value(response.call_id),
        )
