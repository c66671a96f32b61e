"""Proxy core primitives (RFC 3261 §16), sans-I/O.

Pure functions on messages: checking a request before forwarding (§16.3),
building the forwarded copy (§16.6: Request-URI, Max-Forwards,
Record-Route, loose routing, Via), relaying a response (§16.7) and building
a CANCEL (§9.1).  Who is calling, where to send and whether a channel is
free are the gateway's business (``gateway.proxy.router``); this module knows only
SIP.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

from sip.errors import SIPError
from sip.headers import MAGIC_COOKIE, Address, Field, Via
from sip.message import Request, Response
from sip.uri import URI

__all__ = [
    "BRANCH_PREFIX",
    "DEFAULT_MAX_FORWARDS",
    "ProxyError",
    "build_cancel",
    "check_request",
    "forward_request",
    "is_loop",
    "loop_key",
    "make_branch",
    "own_address_matcher",
    "pop_own_routes",
    "relay_response",
]

# RFC 3261 §8.1.1.6: a proxy adding Max-Forwards to a request without one uses 70.
DEFAULT_MAX_FORWARDS = 70
# Our branches: the RFC 3261 cookie, a tag that marks them as ours, the loop
# key (§16.6 step 8) and a unique part, separated by dots.
BRANCH_PREFIX = MAGIC_COOKIE + "sgw"
_LOOP_KEY_LENGTH = 16  # hex digits of the loop hash carried in our branches


class ProxyError(SIPError):
    """A request a proxy must refuse; ``status`` is the answer (483, 482, …)."""


def loop_key(request: Request) -> str:
    """The hash of what identifies a request for loop detection.

    RFC 3261 §16.6 step 8 lists the fields a proxy may hash into its branch
    so that §16.3 step 4 can tell a loop (the same request back again) from
    a spiral (the request back with a different Request-URI).  The topmost
    Via is left out: in a loop it is another hop's, so including it would
    hide every loop.
    """
    parts = [
        request.uri_text,
        request.from_.tag or "",
        request.to.tag or "",
        request.call_id,
        str(request.cseq.number),
        ",".join(request.headers.get_all("proxy-require")),
    ]
    digest = hashlib.blake2b("\n".join(parts).encode("utf-8", "surrogateescape"), digest_size=8)
    return digest.hexdigest()[:_LOOP_KEY_LENGTH]


def make_branch(request: Request, unique: str) -> str:
    """A branch for the copy of ``request`` we forward: unique per client
    transaction (§8.1.1.7) and carrying the loop key (§16.6 step 8)."""
    return f"{BRANCH_PREFIX}.{loop_key(request)}.{unique}"


def is_loop(request: Request, is_own_via: Callable[[Via], bool]) -> bool:
    """RFC 3261 §16.3 step 4: one of our Vias carries this request's loop key."""
    key = None
    for via in request.vias:
        branch = via.branch
        if branch is None or not branch.startswith(BRANCH_PREFIX) or not is_own_via(via):
            continue
        if key is None:
            key = loop_key(request)
        parts = branch.split(".")
        if len(parts) >= 3 and parts[1] == key:
            return True
    return False


def check_request(request: Request, is_own_via: Callable[[Via], bool]) -> None:
    """RFC 3261 §16.3 steps 3 and 4 for a request we are about to forward:
    raise :class:`ProxyError` 483 when Max-Forwards is exhausted, 482 on a
    loop."""
    if request.max_forwards == 0:
        raise ProxyError("Too Many Hops", status=483)
    if is_loop(request, is_own_via):
        raise ProxyError("Loop Detected", status=482)


def pop_own_routes(request: Request, is_own: Callable[[URI], bool]) -> bool:
    """Remove the Route values that name us from the top (RFC 3261 §16.4).

    Returns True if any was removed: the request was loose-routed to us.
    A Route field holding several values is rewritten with the rest.
    """
    removed = False
    while True:
        field = request.headers.first("route")
        if field is None:
            return removed
        routes = request.address_values(field, "Route")
        keep: list[Address] = []
        for i, route in enumerate(routes):
            if not is_own(route.uri):
                keep = routes[i:]
                break
            removed = True
        if keep:
            if len(keep) != len(routes):
                request.headers.replace_field(field, ", ".join(str(r) for r in keep), keep)
            return removed
        request.headers.remove_field(field)


def forward_request(
    request: Request,
    *,
    via: Via,
    target: URI | None = None,
    record_route: Address | None = None,
) -> Request:
    """The copy of ``request`` to forward (RFC 3261 §16.6).

    ``target`` replaces the Request-URI (step 2; None keeps it, as for a
    loose-routed in-dialog request); Max-Forwards is decremented or set to
    70 (step 3); ``record_route`` is put on top of the Record-Route set
    (step 4); ``via`` is pushed (step 8).  The original is not changed.
    """
    out = request.copy()
    if target is not None:
        out.uri = target
    max_forwards = request.max_forwards
    out.headers.set(
        "max-forwards", str(DEFAULT_MAX_FORWARDS if max_forwards is None else max_forwards - 1)
    )
    if record_route is not None:
        out.headers.insert_field(0, _field("record-route", record_route))
    out.push_via(via)
    return out


def relay_response(response: Response) -> Response:
    """The response to send upstream: our Via removed (RFC 3261 §16.7 step 3).

    The response is changed in place and returned.  A response whose top
    Via is not followed by another one cannot be relayed: ProxyError.
    """
    response.pop_via()
    if response.headers.first("via") is None:
        raise ProxyError("Response without a Via to relay to", status=400)
    return response


def build_cancel(invite: Request) -> Request:
    """A CANCEL for an INVITE we forwarded (RFC 3261 §9.1): same
    Request-URI, Call-ID, To, From, CSeq number and top Via (the branch
    ties it to the INVITE's transaction), the INVITE's Route set."""
    cancel = Request("CANCEL", invite.uri_text)
    headers = cancel.headers
    headers.insert_field(0, _field_text("via", str(invite.top_via)))
    for name in ("route", "from", "to", "call-id"):
        for value in invite.headers.get_all(name):
            headers.add(name, value)
    headers.add("cseq", f"{invite.cseq.number} CANCEL")
    headers.add("max-forwards", str(DEFAULT_MAX_FORWARDS))
    headers.add("content-length", "0")
    return cancel


def own_address_matcher(addresses: Iterable[tuple[str, int]]) -> Callable[[str, int | None], bool]:
    """A test for "this host:port is us"; a missing port means 5060."""
    known = {(host.lower().strip("[]"), port) for host, port in addresses}

    def is_own(host: str, port: int | None) -> bool:
        return (host.lower().strip("[]"), port or 5060) in known

    return is_own


def _field(key: str, address: Address) -> Field:
    f = Field.new(key, str(address))
    f.parsed = [address]
    return f


def _field_text(key: str, value: str) -> Field:
    return Field.new(key, value)
