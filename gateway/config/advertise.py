"""The address the gateway gives out, as opposed to the one it binds.

A listener on ``0.0.0.0`` or ``::`` serves every local address, but no peer
can send to a wildcard, and behind NAT the bound address is not the one
peers reach either.  Two places give an address out: the Via sent-by and
Record-Route of every proxied request (RFC 3261 §16.6 steps 4 and 8), and
the profile documents that tell a PBX administrator where to register and
send calls.  Both come from here, so that they always agree:
``sip.advertise`` when it is set; else the listeners themselves, a wildcard
one standing for this host's address (:func:`this_host`).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Protocol

from gateway.config.settings import WILDCARD_HOSTS, HostPort, SIPServerSettings

__all__ = ["advertised_address", "gateway_addresses", "is_wildcard", "needs_advertise", "this_host"]

#: Given out when this host's name does not resolve: a PBX cannot use it,
#: but a profile document still shows, and the start-up warning still says,
#: what to set (``sip.advertise``).
UNRESOLVED_HOST = "127.0.0.1"


class Bound(Protocol):
    """A listen address: a configured :class:`~gateway.config.settings.HostPort`
    or a bound :class:`sip.transport.Listener` (its port 0 made real)."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


def is_wildcard(host: str) -> bool:
    return host in WILDCARD_HOSTS


def this_host() -> str:
    """The address this host's name resolves to: on Debian often
    127.0.1.1 (``/etc/hosts``), which is why :func:`needs_advertise`
    exists."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return UNRESOLVED_HOST


def needs_advertise(sip: SIPServerSettings, listeners: Sequence[Bound]) -> bool:
    """Whether the gateway can only guess its address: no ``sip.advertise``
    and every listener a wildcard."""
    return sip.advertise is None and all(is_wildcard(bound.host) for bound in listeners)


def advertised_address(
    sip: SIPServerSettings, listeners: Sequence[Bound], local_host: Callable[[], str] = this_host
) -> HostPort:
    """The one address of Via sent-by and Record-Route: ``sip.advertise``
    (its port, else the first listener's), else the first listener with a
    concrete host, else ``local_host()`` with the first listener's port."""
    first = listeners[0]
    if sip.advertise is not None:
        port = first.port if sip.advertise.port is None else sip.advertise.port
        return HostPort(sip.advertise.host, port)
    for bound in listeners:
        if not is_wildcard(bound.host):
            return HostPort(bound.host, bound.port)
    return HostPort(local_host(), first.port)


def gateway_addresses(
    sip: SIPServerSettings, listeners: Sequence[Bound], local_host: Callable[[], str] = this_host
) -> list[str]:
    """Where a PBX registers and sends calls, one ``HOST:PORT`` per
    listener (each serves UDP and TCP), without repeats.

    With ``sip.advertise``, every listener is reached at the advertised
    host on its own port; an advertised port replaces the first listener's
    port (a NAT port forward), wherever that port is listened on.  Without
    it, a concrete listener is given as it is and a wildcard one as
    ``local_host()`` (asked once), the host :func:`advertised_address`
    falls back to.
    """
    advertise = sip.advertise
    first_port = listeners[0].port if listeners else 0
    resolved: str | None = None
    addresses: list[str] = []
    for bound in listeners:
        if advertise is not None:
            port = bound.port
            if advertise.port is not None and bound.port == first_port:
                port = advertise.port
            address = HostPort(advertise.host, port)
        elif is_wildcard(bound.host):
            resolved = local_host() if resolved is None else resolved
            address = HostPort(resolved, bound.port)
        else:
            address = HostPort(bound.host, bound.port)
        text = str(address)
        if text not in addresses:
            addresses.append(text)
    return addresses
