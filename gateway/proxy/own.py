"""The gateway as it names itself in SIP: the address it advertises, the
Via and Record-Route it adds to what it forwards, and which URIs and Vias
are its own (RFC 3261 §16.4, §16.6 steps 4 and 8, §16.11).

A forwarded request's branch is unique to this process and this request
(§8.1.1.7: the magic cookie, then the instance's random part and a
counter); the ACK of a 2xx gets a stateless branch instead, the same for
every retransmission (§16.11).
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterable

from sip.headers import Address, Via
from sip.message import Request
from sip.proxy import make_branch
from sip.uri import URI, host_port

__all__ = ["OwnAddress"]


class OwnAddress:
    """The advertised ``(host, port)`` and every address that reaches this
    gateway (its listeners, as configured and as bound)."""

    __slots__ = ("_instance", "_own", "_unique", "advertised", "host_port")

    def __init__(
        self, advertised: tuple[str, int], own_addresses: Iterable[tuple[str, int]]
    ) -> None:
        self.advertised = advertised
        host, port = advertised
        #: ``host:port`` as it goes into a Warning, a Via or a URI.
        self.host_port = host_port(host, port)
        self._own = {(h.lower().strip("[]"), p) for h, p in own_addresses}
        self._own.add((host.lower().strip("[]"), port))
        self._instance = secrets.token_hex(3)
        self._unique = itertools.count()

    def record_route(self) -> Address:
        """The Record-Route of a forwarded INVITE (§16.6 step 4: loose
        routing, so in-dialog requests come back through us)."""
        return Address.build(f"sip:{self.host_port};lr")

    def via(self, request: Request, transport: str) -> Via:
        """The Via of a request we forward or send (§16.6 step 8)."""
        unique = f"{self._instance}{next(self._unique):x}"
        host, port = self.advertised
        return Via(transport, host, port, {"branch": make_branch(request, unique), "rport": None})

    def ack_via(self, ack: Request, transport: str) -> Via:
        """The Via of a forwarded 2xx ACK: a branch derived from the
        upstream one, so each retransmission carries the same (§16.11)."""
        branch = make_branch(ack, "a" + (ack.top_via.branch or "")[-12:])
        host, port = self.advertised
        return Via(transport, host, port, {"branch": branch, "rport": None})

    def is_own_uri(self, uri: URI) -> bool:
        """Whether ``uri`` names this gateway (a Route to pop, §16.4)."""
        return (uri.host.lower().strip("[]"), uri.port_or_default) in self._own

    def is_own_via(self, via: Via) -> bool:
        """Whether ``via`` is one of ours: a request carrying it loops (§16.3)."""
        return (via.host.lower().strip("[]"), via.port or 5060) in self._own
