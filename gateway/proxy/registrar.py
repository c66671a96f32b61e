"""The registrar's location service (RFC 3261 §10.3): who is reachable where.

A PBX that authenticates with its profile's credentials sends REGISTER; this
module turns it into *bindings* — contact URI, expiry, preference, and the
address the REGISTER really came from — and answers which contacts an
inbound call to the profile should try.

It runs after authentication: the caller has already checked the digest and
mapped the request to a profile, so here a profile is only an integer id
(the address-of-record of §10.3 step 5 is the profile).  Steps 1–4 (domain,
``Require``, authentication, authorisation) are the caller's; steps 5–8 are
:meth:`LocationService.register`.

Sans-I/O, in the style of ``sip/``: no sockets, no event loop, no clock.
Every entry point takes ``now`` (seconds, on whatever monotonic clock the
asyncio layer uses) and the asyncio layer calls :meth:`LocationService.expire`
when :meth:`LocationService.next_expiry` comes due.  Bounded: at most
``max_bindings`` per profile, so the whole table holds at most profiles ×
``max_bindings`` bindings.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeAlias

from sip.errors import SIPError
from sip.headers import Address
from sip.message import Request, Response, build_response
from sip.uri import URI, equivalent

__all__ = [
    "DEFAULT_EXPIRES",
    "DEFAULT_MAX_BINDINGS",
    "DEFAULT_MAX_EXPIRES",
    "DEFAULT_MIN_EXPIRES",
    "DEFAULT_Q",
    "MAX_CONTACT_LENGTH",
    "Binding",
    "LocationService",
    "RegisterOutcome",
    "RegistrarPolicy",
    "Source",
    "build_register_response",
]

# A PBX re-registers well before its binding expires, so the minimum sets the
# most REGISTER traffic one binding can cause: one per minute.  Shorter
# intervals are answered 423 (RFC 3261 §10.2.8, §10.3 step 7).
DEFAULT_MIN_EXPIRES = 60
# How long a PBX that vanished without unregistering keeps receiving inbound
# call attempts.  One hour is also the interval RFC 3261 §10.3 step 7 caps the
# 423 rule at, and what most PBXs ask for.
DEFAULT_MAX_EXPIRES = 3600
# §10.3 step 7: with neither an ``expires`` parameter nor an ``Expires``
# header the registrar picks the interval; a PBX that does not say gets the
# longest we grant.
DEFAULT_EXPIRES = 3600
# A PBX registers one contact, or a few (one per transport, an HA pair).  Ten
# leaves room for that and caps the fan-out of one inbound call.
DEFAULT_MAX_BINDINGS = 10
# §10.3 step 7: a registrar may answer 423 only for intervals below one hour.
ONE_HOUR = 3600
# A contact without ``q`` is not less preferred than one that has it; RFC 3261
# §20.10 leaves the default open and 1.0 (the top of the 0..1 range) keeps
# such contacts first, as a PBX that never heard of q expects.
DEFAULT_Q = 1.0
# A binding is stored for up to an hour; a PBX contact (URI with transport,
# +sip.instance, reg-id) is a few hundred bytes.  2 KiB per contact bounds what
# one profile can make us hold at max_bindings × 2 KiB.
MAX_CONTACT_LENGTH = 2048
# The expiry heap keeps superseded entries until they surface; it is rebuilt
# when they outnumber the live bindings this many times over (plus a floor so
# a small table is never rebuilt on every refresh).
_HEAP_SLACK = 2
_HEAP_FLOOR = 64

Source: TypeAlias = tuple[str, str, int]
"""(transport, host, port) a request arrived from, as ``Message.source`` holds it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrarPolicy:
    """The registrar's limits, injected (DESIGN.md: no module-level settings)."""

    min_expires: int = DEFAULT_MIN_EXPIRES
    max_expires: int = DEFAULT_MAX_EXPIRES
    default_expires: int = DEFAULT_EXPIRES
    max_bindings: int = DEFAULT_MAX_BINDINGS

    def __post_init__(self) -> None:
        if not 1 <= self.min_expires <= ONE_HOUR:
            # §10.3 step 7 allows 423 only below one hour; a minimum above it
            # could never be enforced as the RFC describes.
            raise ValueError(f"min_expires must be within 1..{ONE_HOUR}")
        if not self.min_expires <= self.default_expires <= self.max_expires:
            raise ValueError("need min_expires <= default_expires <= max_expires")
        if self.max_bindings < 1:
            raise ValueError("max_bindings must be at least 1")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Binding:
    """One contact of one profile, valid until ``expires_at``.

    ``contact`` is the Contact value as received (URI, contact parameters,
    display name).  ``source`` is where the REGISTER came from: for a PBX
    behind NAT the contact holds its private address and only ``source``
    reaches it (the received/rport idea of RFC 3581 applied to requests we
    send to the PBX).  ``call_id`` and ``cseq`` are kept to order refreshes
    (§10.3 step 7).  Equality is identity: a binding is a record, and two
    records are the same only if they are the same record.
    """

    profile_id: int
    contact: Address
    expires_at: float
    q: float
    call_id: str
    cseq: int
    source: Source
    updated_at: float

    @property
    def uri(self) -> URI:
        """The contact URI exactly as registered (headers and all)."""
        return self.contact.uri

    @property
    def target_uri(self) -> URI:
        """The URI to put in the Request-URI of a call to this contact.

        RFC 3261 §19.1.1 Table 1 allows ``headers`` (and forbids ``method``)
        in a registered contact but allows neither in a Request-URI.  An
        escaped header such as ``?Route=...`` (RFC 4475 §3.3.14) is stored and
        echoed back to the PBX, never turned into a header of a request.
        """
        uri = self.contact.uri
        if not uri.headers and "method" not in uri.params:
            return uri
        params = {k: v for k, v in uri.params.items() if k != "method"}
        return uri.replace(headers={}, params=params)

    def remaining(self, now: float) -> int:
        """Whole seconds left, rounded up (§10.3 step 8 ``expires`` value)."""
        return max(0, math.ceil(self.expires_at - now))

    def is_live(self, now: float) -> bool:
        return self.expires_at > now


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterOutcome:
    """What a REGISTER led to, ready for :func:`build_register_response`.

    ``bindings`` are the profile's bindings after a successful request (the
    Contact list of the 200 OK, §10.3 step 8), empty for a refusal.
    ``headers`` are extra response headers (``Min-Expires`` with a 423).
    ``now`` is the time the outcome was decided at; the ``expires`` values of
    the response count from it.
    """

    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    bindings: tuple[Binding, ...] = ()
    now: float

    def __post_init__(self) -> None:
        if not 200 <= self.status <= 699:
            raise ValueError("a REGISTER outcome is a final response")
        if self.bindings and self.status != 200:
            raise ValueError("only a 200 OK lists bindings")

    @property
    def ok(self) -> bool:
        return self.status == 200


class _RefusedError(SIPError):
    """A REGISTER that must fail as a whole; carries its answer (h11 style)."""

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(reason, status=status)
        self.headers = headers


class LocationService:
    """Bindings of every profile, with their expiry (RFC 3261 §10.3).

    A REGISTER either applies in full or not at all (§10.3 step 7: "committed
    if and only if all binding updates and additions succeed"): the new state
    of the profile is built aside and swapped in at the end.
    """

    __slots__ = ("_bindings", "_heap", "_policy", "_seq", "_total")

    def __init__(self, policy: RegistrarPolicy | None = None) -> None:
        self._policy = policy if policy is not None else RegistrarPolicy()
        # profile_id -> its bindings; a profile with none has no entry.
        self._bindings: dict[int, list[Binding]] = {}
        self._total = 0
        # (expires_at, sequence, binding).  An entry whose binding was since
        # refreshed or removed is stale and skipped when it surfaces.
        self._heap: list[tuple[float, int, Binding]] = []
        self._seq = 0

    @property
    def policy(self) -> RegistrarPolicy:
        return self._policy

    # -- REGISTER (§10.3 steps 5-8) ---------------------------------------------
    def register(
        self, profile_id: int, request: Request, source: Source, now: float
    ) -> RegisterOutcome:
        """Apply an authenticated REGISTER for ``profile_id``.

        Never raises on what the request contains: a malformed Contact,
        Expires, Call-ID or CSeq becomes a ``400`` outcome with the parser's
        reason.  Statuses: ``200`` (bindings listed), ``400`` (malformed;
        ``Contact: *`` without ``Expires: 0``; a contact twice; a non-SIP
        contact), ``403`` (more than ``max_bindings``), ``423`` with
        ``Min-Expires`` (interval too brief), ``500`` (an out-of-order
        refresh: same Call-ID, CSeq not higher).
        """
        if request.method != "REGISTER":
            raise ValueError(f"not a REGISTER: {request.method}")
        self._drop_expired(profile_id, now)
        current = self._bindings.get(profile_id, [])
        try:
            updated = self._apply(profile_id, request, source, now, current)
        except _RefusedError as refusal:
            return RegisterOutcome(
                status=refusal.status, reason=refusal.reason, headers=refusal.headers, now=now
            )
        except SIPError as error:  # ParseError from a header read on demand
            return RegisterOutcome(status=error.status, reason=error.reason, now=now)
        if updated is not current:
            self._commit(profile_id, current, updated)
        return RegisterOutcome(status=200, bindings=tuple(_ordered(updated)), now=now)

    def _apply(
        self,
        profile_id: int,
        request: Request,
        source: Source,
        now: float,
        current: list[Binding],
    ) -> list[Binding]:
        """The profile's bindings after ``request``; ``current`` itself if it
        is a query.  Raises :class:`_RefusedError` or ``ParseError``, changing
        nothing."""
        policy = self._policy
        contacts = request.contacts  # ParseError for * mixed with contacts (§10.3 step 6)
        if not contacts:
            # §10.3 step 6 "skips to the last step": a REGISTER without
            # Contact asks for the current bindings (§10.2.3).
            return current
        call_id = request.call_id
        cseq = request.cseq.number
        header_expires = request.expires

        if contacts[0].star:
            # §10.3 step 6: "*" is valid only alone and with Expires: 0.
            if header_expires != 0:
                raise _RefusedError(400, "Contact * requires Expires: 0")
            for binding in current:
                _check_order(binding, call_id, cseq)
            return []

        if len(contacts) > policy.max_bindings:
            raise _RefusedError(403, _too_many(policy.max_bindings))
        updated = list(current)
        seen: list[URI] = []
        for contact in contacts:
            if len(str(contact)) > MAX_CONTACT_LENGTH:
                raise _RefusedError(400, "Contact too long")
            uri = contact.uri
            if not uri.is_sip:
                # Only a SIP or SIPS contact can receive the calls a binding is for.
                raise _RefusedError(400, "Contact must be a SIP or SIPS URI")
            if any(equivalent(uri, other) for other in seen):
                raise _RefusedError(400, "Duplicate Contact")
            seen.append(uri)

            # §10.3 step 7: the contact's expires parameter, else the
            # Expires header, else the registrar's default.
            expires = contact.expires
            if expires is None:
                expires = header_expires if header_expires is not None else policy.default_expires
            if 0 < expires < policy.min_expires and expires < ONE_HOUR:
                # §10.3 step 7, §20.23: 423 carries the minimum we accept.
                raise _RefusedError(
                    423, "Interval Too Brief", (("Min-Expires", str(policy.min_expires)),)
                )
            expires = min(expires, policy.max_expires)  # §10.3 step 7: the registrar may shorten
            q = contact.q
            index = next((i for i, b in enumerate(updated) if equivalent(b.uri, uri)), None)
            if index is not None:
                # §10.3 step 7: same Call-ID and a CSeq not higher aborts the
                # whole update (a late or replayed REGISTER); a different
                # Call-ID (the PBX restarted) replaces the binding.
                _check_order(updated[index], call_id, cseq)
            if expires == 0:
                if index is not None:
                    del updated[index]
                continue  # removing a binding that does not exist is a no-op
            binding = Binding(
                profile_id=profile_id,
                contact=contact,
                expires_at=now + expires,
                q=q if q is not None else DEFAULT_Q,
                call_id=call_id,
                cseq=cseq,
                source=source,
                updated_at=now,
            )
            if index is None:
                updated.append(binding)
            else:
                updated[index] = binding
        if len(updated) > policy.max_bindings:
            raise _RefusedError(403, _too_many(policy.max_bindings))
        return updated

    def _commit(self, profile_id: int, old: list[Binding], new: list[Binding]) -> None:
        if new:
            self._bindings[profile_id] = new
        else:
            self._bindings.pop(profile_id, None)
        self._total += len(new) - len(old)
        kept = {id(b) for b in old}
        for binding in new:
            if id(binding) not in kept:
                self._push(binding)
        self._compact()

    # -- reading ------------------------------------------------------------------
    def targets(self, profile_id: int, now: float) -> list[Binding]:
        """Live bindings of ``profile_id``: highest q first, then the most
        recently registered (RFC 3261 §16.6: a proxy may try targets by decreasing q)."""
        return _ordered(b for b in self._bindings.get(profile_id, ()) if b.is_live(now))

    def count(self, profile_id: int, now: float) -> int:
        """Live bindings of one profile (the "registered" gauge)."""
        return sum(1 for b in self._bindings.get(profile_id, ()) if b.is_live(now))

    def counts(self, now: float) -> dict[int, int]:
        """Live bindings per profile, for profiles that have any (metrics)."""
        out: dict[int, int] = {}
        for profile_id, bindings in self._bindings.items():
            live = sum(1 for b in bindings if b.is_live(now))
            if live:
                out[profile_id] = live
        return out

    def profile_ids(self) -> list[int]:
        """Profiles that hold bindings (live or not yet swept)."""
        return list(self._bindings)

    def __len__(self) -> int:
        """Bindings stored, live or expired but not yet collected."""
        return self._total

    # -- expiry and removal -------------------------------------------------------
    def next_expiry(self) -> float | None:
        """When the earliest binding expires, for the asyncio layer's timer;
        ``None`` when there is none.  Ask again after every ``register``."""
        heap = self._heap
        while heap and not self._is_stored(heap[0][2]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def expire(self, now: float) -> list[Binding]:
        """Remove and return every binding expired at ``now``, earliest first.

        A REGISTER for a profile drops that profile's expired bindings before
        comparing (they no longer exist, §10.3), so those are not returned here.
        """
        heap = self._heap
        expired: list[Binding] = []
        while heap and heap[0][0] <= now:
            binding = heapq.heappop(heap)[2]
            if self._is_stored(binding):
                self._remove(binding)
                expired.append(binding)
        return expired

    def remove_profile(self, profile_id: int) -> list[Binding]:
        """Forget a deleted profile's bindings; returns what was removed."""
        removed = self._bindings.pop(profile_id, [])
        self._total -= len(removed)
        self._compact()
        return removed

    # -- internals ----------------------------------------------------------------
    def _drop_expired(self, profile_id: int, now: float) -> None:
        """An expired binding no longer exists (§10.3); forget it before a
        REGISTER compares against the profile's bindings."""
        bindings = self._bindings.get(profile_id)
        if bindings and any(not b.is_live(now) for b in bindings):
            for binding in [b for b in bindings if not b.is_live(now)]:
                self._remove(binding)

    def _is_stored(self, binding: Binding) -> bool:
        return any(b is binding for b in self._bindings.get(binding.profile_id, ()))

    def _remove(self, binding: Binding) -> None:
        bindings = self._bindings[binding.profile_id]
        bindings[:] = [b for b in bindings if b is not binding]
        if not bindings:
            del self._bindings[binding.profile_id]
        self._total -= 1

    def _push(self, binding: Binding) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (binding.expires_at, self._seq, binding))

    def _compact(self) -> None:
        """Drop stale heap entries once they dominate, so refreshes cannot
        grow the heap without bound."""
        if len(self._heap) <= _HEAP_SLACK * self._total + _HEAP_FLOOR:
            return
        self._heap = [entry for entry in self._heap if self._is_stored(entry[2])]
        heapq.heapify(self._heap)


def _check_order(binding: Binding, call_id: str, cseq: int) -> None:
    """§10.3 step 7: for the same Call-ID only a higher CSeq may change a
    binding; otherwise "the update MUST be aborted and the request fails"."""
    if binding.call_id == call_id and cseq <= binding.cseq:
        raise _RefusedError(500, f"Out of order REGISTER: CSeq {cseq} not above {binding.cseq}")


def _too_many(limit: int) -> str:
    return f"Too many contacts: at most {limit} per profile"


def _ordered(bindings: Iterable[Binding]) -> list[Binding]:
    return sorted(bindings, key=lambda b: (-b.q, -b.updated_at))


def build_register_response(
    request: Request, outcome: RegisterOutcome, to_tag: str, *, date: str | None = None
) -> Response:
    """The response to a REGISTER (RFC 3261 §10.3 step 8).

    A 200 OK lists every current binding in its own Contact header, each with
    ``;expires=`` set to the seconds it has left, which tells the PBX the
    interval we granted (it may be shorter than asked).  ``date`` is an
    optional RFC 1123 ``Date`` value: the core keeps no wall clock, and some
    PBXs set theirs from it (§10.3 step 8 "MAY").
    """
    extra = list(outcome.headers)
    for binding in outcome.bindings:
        remaining = binding.remaining(outcome.now)
        extra.append(("Contact", str(binding.contact.with_params(expires=str(remaining)))))
    if date is not None:
        extra.append(("Date", date))
    return build_response(request, outcome.status, outcome.reason, to_tag=to_tag, extra=extra)
