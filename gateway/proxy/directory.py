"""The profile directory: the in-memory view the SIP hot path reads.

DESIGN.md: the hot path never waits on the database.  :func:`load_directory`
reads every profile and assigned number once into an immutable
:class:`Directory`; the router holds a reference to it and swaps in a new
one when :func:`watch_directory` sees the store's ``directory_version``
move (a change made by the CLI, the API, another node).  Swapping one
reference is atomic for the event loop, so a request is always handled
against one consistent snapshot.

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

import asyncio
import contextlib
import logging
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import select

from gateway.config.settings import canonical_ip
from gateway.store.database import Store
from gateway.store.models import Account, AuthMode, DirectoryVersion, Number, Profile, Rate
from sip.digest import ha1

__all__ = [
    "LOAD_TIMEOUT",
    "Directory",
    "ProfileEntry",
    "load_directory",
    "watch_directory",
]

logger = logging.getLogger(__name__)

#: Longest a poll plus reload may take before it is abandoned and retried
#: on the next tick: a hung database connection must not freeze the watcher
#: forever (the gateway keeps serving from the snapshot it has).
LOAD_TIMEOUT = 30.0
#: RFC 3966 §5.1.1 visual separators, plus spaces, and the leading "+".
_NUMBER_NOISE = str.maketrans("", "", "+-.() \t\u00a0")
_STREAM_TRANSPORTS = frozenset({"TCP", "TLS", "WS", "WSS", "SCTP"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileEntry:
    """What the SIP side knows of a profile.

    ``ha1`` maps a digest algorithm (``"MD5"``, ``"SHA-256"``) to the stored
    H(username:realm:password) (RFC 7616 §3.4.2); empty for IP profiles.
    ``ip``/``port`` are set for IP profiles only.
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
            if entry.auth_mode == AuthMode.REGISTRATION:
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


async def load_directory(store: Store) -> Directory:
    """Read every profile and assigned number in one snapshot.

    HA1 values bind the realm (RFC 7616 §3.4.2).  A profile whose HA1 was
    computed for another realm than the store's (the operator changed
    ``sip.realm``) gets its HA1 recomputed here from the retrievable
    password, in memory, so that its PBX keeps registering; without the
    secret key it is left as it is and a warning says why it will fail.
    """
    async with store.read() as session:
        version = await session.scalar(
            select(DirectoryVersion.version).where(DirectoryVersion.id == 1)
        )
        rows = (
            await session.execute(
                select(Profile, Account.name)
                .join(Account, Profile.account_id == Account.id)
                # A profile being deleted is gone for the SIP path: its
                # calls end and its registrations go (profiles.delete_profile).
                .where(Profile.closing_since.is_(None))
                .order_by(Profile.id)
            )
        ).all()
        numbers = await session.execute(
            select(Number.e164, Number.profile_id).where(Number.profile_id.is_not(None))
        )
        assigned = {e164: profile_id for e164, profile_id in numbers if profile_id is not None}
        rates = dict((await session.execute(select(Rate.prefix, Rate.price_per_minute))).all())
    entries = [_entry(store, profile, account) for profile, account in rows]
    return Directory(entries, assigned, version=int(version or 0), rates=rates)


def _entry(store: Store, profile: Profile, account: str) -> ProfileEntry:
    hashes: dict[str, str] = {}
    if profile.auth_mode == AuthMode.REGISTRATION:
        if profile.ha1_md5 is not None:
            hashes["MD5"] = profile.ha1_md5
        if profile.ha1_sha256 is not None:
            hashes["SHA-256"] = profile.ha1_sha256
        if profile.realm != store.realm:
            if store.has_secret_key and profile.password_encrypted is not None:
                password = store.decrypt(profile.password_encrypted)
                hashes = {a: ha1(profile.sip_username, store.realm, password, a) for a in hashes}
            else:
                logger.warning(
                    "profile %s: its HA1 is for realm %r, not %r, and there is no secret key"
                    " to recompute it; its PBX cannot authenticate",
                    profile.name,
                    profile.realm,
                    store.realm,
                )
    return ProfileEntry(
        id=profile.id,
        account_id=profile.account_id,
        name=profile.name,
        auth_mode=profile.auth_mode,
        sip_username=profile.sip_username,
        ha1=types.MappingProxyType(hashes),
        ip=profile.ip_address,
        port=profile.udp_port,
        channel_limit=profile.channel_limit,
        account=account,
        credit=profile.credit,
    )


async def watch_directory(
    store: Store,
    apply: Callable[[Directory], None],
    interval: float,
    *,
    current: int | None = None,
    wake: asyncio.Event | None = None,
) -> None:
    """Poll ``directory_version`` every ``interval`` seconds; when it differs
    from the version last applied, load the directory and ``apply`` it.
    Setting ``wake`` checks at once (a change made in this process, or a
    notification from another one) instead of at the next tick.

    ``current`` is the version the caller already holds (None: load on the
    first tick).  Each tick does one primary-key read and at most one
    reload, bounded by :data:`LOAD_TIMEOUT`.  A database error is logged (once
    per outage, at warning; repeats at debug) and retried on the next tick,
    as is an ``apply`` that raises.  Runs until cancelled.
    """
    applied = current
    failing = False
    while True:
        try:
            async with asyncio.timeout(LOAD_TIMEOUT):
                version = await store.version()
                if version != applied:
                    directory = await load_directory(store)
                    apply(directory)
                    applied = directory.version
                    logger.info(
                        "profile directory reloaded: %d profiles (version %d)",
                        len(directory),
                        directory.version,
                    )
            if failing:
                logger.info("profile directory: the store answers again")
                failing = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            level = logging.DEBUG if failing else logging.WARNING
            logger.log(level, "profile directory not refreshed, retrying: %s", exc)
            failing = True
        if wake is None:
            await asyncio.sleep(interval)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), interval)
            wake.clear()
