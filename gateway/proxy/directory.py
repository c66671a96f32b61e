"""The profile directory: the in-memory view the SIP hot path reads.

DESIGN.md: the hot path never waits on the database.
:func:`gateway.web.directory.load_directory` reads every profile and
assigned number once into an immutable :class:`Directory`; the router holds
a reference to it and swaps in a new one when
:func:`gateway.web.directory.watch_directory` sees the store's
``directory_version`` move (a change made by the CLI, the API, another
node).  Swapping one reference is atomic for the event loop, so a request
is always handled against one consistent snapshot.  This module reads no
store: the call path never does (the reading is wiring, in ``gateway.web``).

Lookups:

* :meth:`Directory.by_username` — digest username → registration profile
  (RFC 3261 §22; usernames compare exactly, RFC 7616 §3.4.4);
* :meth:`Directory.by_source` — the IP-authenticated profile a request comes
  from.  Over UDP the source IP *and* port must match the profile's: the
  PBX sends from its configured port.  Over TCP (and TLS, later) the source
  port is ephemeral (RFC 3261 §18.1.1: a client opens connections from any
  port), so only the IP can be matched; when several IP profiles share that
  IP the lookup is ambiguous and returns None — the request is then
  treated as unidentified (challenged), never given to a guessed profile;
* :meth:`Directory.by_number` — the profile an inbound call to a number is
  delivered to; ``+441134960000``, ``441134960000`` and ``+44 113 496 0000``
  all find it (carriers differ on the leading ``+``).
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal

from gateway.config.settings import canonical_ip

__all__ = ["Directory", "ProfileEntry"]

#: RFC 3966 §5.1.1 visual separators, plus spaces, and the leading "+".
_NUMBER_NOISE = str.maketrans("", "", "+-.() \t\u00a0")
_STREAM_TRANSPORTS = frozenset({"TCP", "TLS", "WS", "WSS", "SCTP"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileEntry:
    """What the SIP side knows of a profile.

    ``auth_mode`` is the value of the store's ``AuthMode``
    (``"registration"`` or ``"ip"``).  ``ha1`` maps a digest algorithm
    (``"MD5"``, ``"SHA-256"``) to the stored H(username:realm:password)
    (RFC 7616 §3.4.2); empty for IP profiles.  ``ip``/``port`` are set for
    IP profiles only.
    """

    id: int
    account_id: int
    name: str
    auth_mode: str
    sip_username: str
    ha1: Mapping[str, str]
    ip: str | None
    port: int | None
    channel_limit: int
    account: str = ""  # the owning account's name (profile names are unique per account)
    credit: Decimal = Decimal(0)  # as committed in the database at this snapshot


def _number_key(number: str) -> str:
    return number.translate(_NUMBER_NOISE)


class Directory:
    """An immutable snapshot of the profiles and their numbers.

    ``numbers`` maps E.164 numbers (``+`` and digits) to profile ids; numbers
    of profiles not in ``profiles`` are ignored.  ``version`` is the store's
    ``directory_version`` this snapshot was read at.
    """

    __slots__ = ("_by_id", "_by_ip", "_by_number", "_by_udp", "_by_username", "rates", "version")

    def __init__(
        self,
        profiles: Iterable[ProfileEntry] = (),
        numbers: Mapping[str, int] | None = None,
        *,
        version: int = 0,
        rates: Mapping[str, Decimal] | None = None,
    ) -> None:
        self.version = version
        #: Outbound prices: destination prefix (digits) -> price per minute.
        self.rates: Mapping[str, Decimal] = types.MappingProxyType(dict(rates or {}))
        self._by_id: dict[int, ProfileEntry] = {}
        self._by_username: dict[str, ProfileEntry] = {}
        self._by_udp: dict[tuple[str, int], ProfileEntry] = {}
        by_ip: dict[str, list[ProfileEntry]] = {}
        for entry in profiles:
            self._by_id[entry.id] = entry
            if entry.auth_mode == "registration":
                self._by_username[entry.sip_username] = entry
            elif entry.ip is not None and entry.port is not None:
                self._by_udp[(entry.ip, entry.port)] = entry
                by_ip.setdefault(entry.ip, []).append(entry)
        # Only an IP held by exactly one profile identifies over TCP.
        self._by_ip = {ip: entries[0] for ip, entries in by_ip.items() if len(entries) == 1}
        self._by_number: dict[str, ProfileEntry] = {}
        for number, profile_id in (numbers or {}).items():
            assigned = self._by_id.get(profile_id)
            if assigned is not None:
                self._by_number[_number_key(number)] = assigned

    def __len__(self) -> int:
        return len(self._by_id)

    def profiles(self) -> Iterator[ProfileEntry]:
        """Every profile (for metrics labels, health output)."""
        return iter(self._by_id.values())

    def profile(self, profile_id: int) -> ProfileEntry | None:
        return self._by_id.get(profile_id)

    def by_username(self, username: str) -> ProfileEntry | None:
        """The registration profile whose digest username this is."""
        return self._by_username.get(username)

    def by_source(self, transport: str, ip: str, port: int) -> ProfileEntry | None:
        """The IP-authenticated profile a request from ``ip``:``port`` over
        ``transport`` belongs to, or None (see the module docstring for TCP)."""
        kind = transport.upper()
        if kind == "UDP":
            entry = self._by_udp.get((ip, port))
            if entry is not None:
                return entry
            canonical = canonical_ip(ip)
            if canonical is None or canonical == ip:
                return None
            return self._by_udp.get((canonical, port))
        if kind in _STREAM_TRANSPORTS:
            found = self._by_ip.get(ip)
            if found is not None:
                return found
            canonical = canonical_ip(ip)
            return None if canonical is None else self._by_ip.get(canonical)
        return None

    def by_number(self, number: str) -> ProfileEntry | None:
        """The profile ``number`` is delivered to, with or without the ``+``."""
        return self._by_number.get(_number_key(number))
