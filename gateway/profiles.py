"""The management service: accounts, SIP profiles and numbers.

Every management front end (the CLI now, the REST API and the console
later) calls these functions and nothing else, so that the rules live in
one place: names unique within an account, one profile per IP:port, at
most :data:`~gateway.models.MAX_CHANNELS` channels, E.164 numbers assigned
within their account, generated credentials stored as HA1 (RFC 7616
§3.4.2) plus an encrypted copy the operator can retrieve.

Failures are :class:`ProfileError` subclasses with a one-line message and
the answer each front end gives (exit status, HTTP status): the h11 habit
of errors carrying their answer.  The schema enforces the same rules; a
constraint violated by a concurrent writer between our check and our
commit is reported as a :class:`ConflictError` too.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import string
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.models import (
    BALANCE_SCALE,
    EMAIL_MAX_LENGTH,
    MAX_BALANCE,
    MAX_CHANNELS,
    NAME_MAX_LENGTH,
    Account,
    AuthMode,
    Number,
    Profile,
)
from gateway.store import Store
from sip.digest import ha1

__all__ = [
    "DIGEST_ALGORITHMS",
    "MAX_NUMBERS_PER_REQUEST",
    "PASSWORD_LENGTH",
    "AccountView",
    "ConflictError",
    "NotFoundError",
    "NumberView",
    "ProfileError",
    "ProfileView",
    "ValidationError",
    "add_numbers",
    "assign_number",
    "create_account",
    "create_profile",
    "get_account",
    "get_profile",
    "list_profiles",
    "normalise_e164",
    "normalise_ip",
    "profile_document",
    "set_channel_limit",
]

#: The digest algorithms a PBX may answer with (RFC 7616 §3.3; RFC 8760 for
#: SHA-256 in SIP): one stored HA1 per algorithm.
DIGEST_ALGORITHMS = ("MD5", "SHA-256")
#: 20 characters from 62 give 119 bits: beyond guessing, and short enough to
#: type into a PBX's web form.  Letters and digits only, because PBX
#: configuration files treat quotes, ``;``, ``#`` and spaces specially.
PASSWORD_LENGTH = 20
_PASSWORD_CLASSES = (string.ascii_lowercase, string.ascii_uppercase, string.digits)
_PASSWORD_ALPHABET = "".join(_PASSWORD_CLASSES)
#: Generated SIP usernames: "p" and 10 lowercase letters or digits (36**10,
#: about 3.7e15): lowercase, because some PBXs lowercase what they are given.
USERNAME_PREFIX = "p"
USERNAME_RANDOM_LENGTH = 10
_USERNAME_ALPHABET = string.ascii_lowercase + string.digits
#: Retries when a generated username is taken; with 3.7e15 possibilities a
#: second try is already improbable, a fifth means something is broken.
USERNAME_ATTEMPTS = 5
#: Numbers added in one call: one transaction stays short, and a mistyped
#: range cannot flood the pool.
MAX_NUMBERS_PER_REQUEST = 1000

# Names: printable, no control characters, no surrounding whitespace.
_NAME = re.compile(rf"[^\x00-\x1f\x7f]{{1,{NAME_MAX_LENGTH}}}\Z")
# A deliberately loose e-mail check (RFC 5322 is looser still): one "@",
# something on each side, a dot in the domain, no spaces.
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+\Z")
# ITU-T E.164 §6: a country code (never starting with 0) and at most 15
# digits in all; fewer than 8 is not a number a trunk can deliver.
_E164 = re.compile(r"\+[1-9][0-9]{7,14}\Z")
# RFC 3966 §5.1.1 visual separators, plus the spaces people type.
_VISUAL_SEPARATORS = str.maketrans("", "", "-.() \t\u00a0")


class ProfileError(Exception):
    """A request the service refuses; ``str()`` is one line for the operator.

    ``exit_status`` is what the CLI exits with, ``http_status`` what the
    REST API will answer.
    """

    exit_status: ClassVar[int] = 1
    http_status: ClassVar[int] = 400


class ValidationError(ProfileError):
    """Bad input: a malformed value, a missing or contradictory option."""

    exit_status = 2
    http_status = 422


class NotFoundError(ProfileError):
    """An account, profile or number that does not exist."""

    exit_status = 1
    http_status = 404


class ConflictError(ProfileError):
    """Something that would break a uniqueness rule (name, IP:port, number)."""

    exit_status = 1
    http_status = 409


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountView:
    id: int
    name: str
    email: str
    balance: Decimal
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileView:
    """A profile as an operator sees it.  ``password`` is the retrievable
    SIP password (registration profiles, when the store has the key);
    ``realm`` is the realm the gateway challenges with."""

    id: int
    account: str
    account_id: int
    name: str
    auth_mode: AuthMode
    sip_username: str
    password: str | None
    realm: str | None
    ip: str | None
    port: int | None
    channel_limit: int
    numbers: tuple[str, ...]
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class NumberView:
    e164: str
    account: str
    profile: str | None


# ---------------------------------------------------------------------------
# Validation


def _name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value) or value != value.strip():
        raise ValidationError(
            f"{what} must be 1-{NAME_MAX_LENGTH} characters without control characters"
            f" or surrounding spaces, got {value!r}"
        )
    return value


def _email(value: str) -> str:
    if not isinstance(value, str) or len(value) > EMAIL_MAX_LENGTH or not _EMAIL.match(value):
        raise ValidationError(f"not an e-mail address: {value!r}")
    return value


def _balance(value: Decimal | int | str) -> Decimal:
    try:
        amount = Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise ValidationError(f"balance must be an amount like 25.00, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ValidationError(f"balance must be zero or more, got {value}")
    if amount > MAX_BALANCE:
        raise ValidationError(f"balance must be at most {MAX_BALANCE}, got {value}")
    quantized = amount.quantize(Decimal(1).scaleb(-BALANCE_SCALE))
    if amount != quantized:
        raise ValidationError(f"balance has more than {BALANCE_SCALE} decimal places: {value}")
    return quantized  # shown as stored: 25.5 is 25.5000


def _channels(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CHANNELS:
        raise ValidationError(f"channels must be 1 to {MAX_CHANNELS}, got {value!r}")
    return value


def normalise_ip(text: str) -> str:
    """The canonical text of a PBX's IP address (IPv4-mapped IPv6 becomes
    IPv4, so one PBX has one spelling); a wildcard, multicast or broadcast
    address can never be a packet's source and is refused."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValidationError(f"not an IP address: {text!r}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if (
        address.is_unspecified
        or address.is_multicast
        or address == ipaddress.IPv4Address("255.255.255.255")
    ):
        raise ValidationError(f"{address} cannot be the source address of a PBX")
    return str(address)


def _port(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValidationError(f"port must be 1 to 65535, got {value!r}")
    return value


def normalise_e164(text: str) -> str:
    """``+`` and 8..15 digits, visual separators removed: ``+44 (113) 496-0000``
    becomes ``+441134960000``."""
    compact = text.strip().translate(_VISUAL_SEPARATORS) if isinstance(text, str) else ""
    if not _E164.match(compact):
        raise ValidationError(
            f"not an E.164 number: {text!r} (expected '+', the country code and"
            " 8 to 15 digits in all, e.g. +441134960000)"
        )
    return compact


# ---------------------------------------------------------------------------
# Credentials


def _generate_username() -> str:
    return USERNAME_PREFIX + "".join(
        secrets.choice(_USERNAME_ALPHABET) for _ in range(USERNAME_RANDOM_LENGTH)
    )


def _generate_password() -> str:
    """Random letters and digits with at least one of each class, since some
    PBX forms insist on it (the class characters are placed at random)."""
    chars = [secrets.choice(c) for c in _PASSWORD_CLASSES]
    chars += [
        secrets.choice(_PASSWORD_ALPHABET) for _ in range(PASSWORD_LENGTH - len(_PASSWORD_CLASSES))
    ]
    secrets.SystemRandom().shuffle(chars)
    return "".join(chars)


def _ha1s(username: str, realm: str, password: str) -> dict[str, str]:
    return {algorithm: ha1(username, realm, password, algorithm) for algorithm in DIGEST_ALGORITHMS}


# ---------------------------------------------------------------------------
# Lookups inside a session


async def _account(session: AsyncSession, name: str) -> Account:
    account = await session.scalar(select(Account).where(Account.name == name))
    if account is None:
        raise NotFoundError(f"no account named {name!r}")
    return account


async def _find_profile(
    session: AsyncSession, name: str, account: str | None
) -> tuple[Profile, Account]:
    query = select(Profile, Account).join(Account, Profile.account_id == Account.id)
    query = query.where(Profile.name == name)
    if account is not None:
        query = query.where(Account.name == account)
    rows = [(p, a) for p, a in await session.execute(query.order_by(Account.name))]
    if not rows:
        where = f" in account {account!r}" if account is not None else ""
        raise NotFoundError(f"no profile named {name!r}{where}")
    if len(rows) > 1:
        accounts = ", ".join(repr(a.name) for _, a in rows)
        raise ValidationError(
            f"profile {name!r} exists in several accounts ({accounts}): name one with --account"
        )
    return rows[0]


def _conflict(exc: IntegrityError) -> ConflictError:
    """Translate a constraint violation that a concurrent change slipped past
    our checks into the same kind of message the checks give."""
    text = str(exc.orig).lower()
    known = (
        (("uq_accounts_name", "accounts.name"), "an account with this name already exists"),
        (
            ("uq_profiles_account_id_name", "profiles.account_id, profiles.name"),
            "a profile with this name already exists in the account",
        ),
        (
            ("uq_profiles_ip_address_udp_port", "profiles.ip_address, profiles.udp_port"),
            "another profile already uses this IP address and port",
        ),
        (("uq_numbers_e164", "numbers.e164"), "a number already exists"),
    )
    for needles, message in known:
        if any(n in text for n in needles):
            return ConflictError(message)
    first = str(exc.orig).strip().splitlines()
    return ConflictError("conflicting change: " + (first[0] if first else "constraint violated"))


async def _profile_view(
    store: Store, session: AsyncSession, rows: Sequence[tuple[Profile, Account]]
) -> list[ProfileView]:
    ids = [p.id for p, _ in rows]
    numbers: dict[int, list[str]] = defaultdict(list)
    if ids:
        query = (
            select(Number.profile_id, Number.e164)
            .where(Number.profile_id.in_(ids))
            .order_by(Number.e164)
        )
        for profile_id, e164 in await session.execute(query):
            if profile_id is not None:
                numbers[profile_id].append(e164)
    views = []
    for profile, account in rows:
        password = None
        if profile.password_encrypted is not None and store.has_secret_key:
            password = store.decrypt(profile.password_encrypted)
        registration = profile.auth_mode == AuthMode.REGISTRATION
        views.append(
            ProfileView(
                id=profile.id,
                account=account.name,
                account_id=account.id,
                name=profile.name,
                auth_mode=AuthMode(profile.auth_mode),
                sip_username=profile.sip_username,
                password=password,
                realm=store.realm if registration else None,
                ip=profile.ip_address,
                port=profile.udp_port,
                channel_limit=profile.channel_limit,
                numbers=tuple(numbers.get(profile.id, ())),
                created_at=profile.created_at,
            )
        )
    return views


def _account_view(account: Account) -> AccountView:
    return AccountView(
        id=account.id,
        name=account.name,
        email=account.email,
        balance=account.balance,
        created_at=account.created_at,
    )


# ---------------------------------------------------------------------------
# Accounts


async def create_account(
    store: Store, *, name: str, email: str, balance: Decimal | int | str = 0
) -> AccountView:
    """A new account with an opening balance (default nothing)."""
    account = Account(
        name=_name(name, "account name"), email=_email(email), balance=_balance(balance)
    )
    try:
        async with store.write() as session:
            if await session.scalar(select(Account.id).where(Account.name == name)) is not None:
                raise ConflictError(f"account {name!r} already exists")
            session.add(account)
            await session.flush()
            return _account_view(account)
    except IntegrityError as exc:
        raise _conflict(exc) from None


async def get_account(store: Store, name: str) -> AccountView:
    async with store.read() as session:
        return _account_view(await _account(session, name))


# ---------------------------------------------------------------------------
# Profiles


async def create_profile(
    store: Store,
    *,
    account: str,
    name: str,
    auth: AuthMode | str,
    ip: str | None = None,
    port: int | None = None,
    channels: int = MAX_CHANNELS,
) -> ProfileView:
    """A new profile of ``account``.

    ``registration``: a SIP username and password are generated; the
    password is stored encrypted plus as HA1 for MD5 and SHA-256 in the
    store's realm, and returned in the result (``password``), to be handed to
    the PBX administrator.  ``ip``: ``ip`` and ``port`` identify the PBX; no
    other profile may use the same pair.
    """
    _name(name, "profile name")
    try:
        mode = AuthMode(auth)
    except ValueError:
        raise ValidationError(f"auth must be 'registration' or 'ip', got {auth!r}") from None
    limit = _channels(channels)
    password: str | None = None
    if mode is AuthMode.IP:
        if ip is None or port is None:
            raise ValidationError("an ip profile needs --ip and --port")
        address, udp_port = normalise_ip(ip), _port(port)
    else:
        if ip is not None or port is not None:
            raise ValidationError("--ip and --port apply to ip profiles only")
        address, udp_port = None, None
        password = _generate_password()
        if not store.has_secret_key:
            store.encrypt(password)  # raises SecretKeyError, before anything is written
    try:
        async with store.write() as session:
            owner = await _account(session, account)
            taken = await session.scalar(
                select(Profile.id).where(Profile.account_id == owner.id, Profile.name == name)
            )
            if taken is not None:
                raise ConflictError(f"account {account!r} already has a profile named {name!r}")
            if address is not None:
                holder = await session.scalar(
                    select(Profile.name).where(
                        Profile.ip_address == address, Profile.udp_port == udp_port
                    )
                )
                if holder is not None:
                    shown = f"[{address}]:{udp_port}" if ":" in address else f"{address}:{udp_port}"
                    raise ConflictError(f"{shown} is already used by profile {holder!r}")
            username = await _free_username(session)
            profile = Profile(
                account_id=owner.id,
                name=name,
                auth_mode=mode.value,
                sip_username=username,
                ip_address=address,
                udp_port=udp_port,
                channel_limit=limit,
            )
            if password is not None:
                hashes = _ha1s(username, store.realm, password)
                profile.password_encrypted = store.encrypt(password)
                profile.realm = store.realm
                profile.ha1_md5 = hashes["MD5"]
                profile.ha1_sha256 = hashes["SHA-256"]
            session.add(profile)
            await session.flush()
            (view,) = await _profile_view(store, session, [(profile, owner)])
            return view
    except IntegrityError as exc:
        raise _conflict(exc) from None


async def _free_username(session: AsyncSession) -> str:
    for _ in range(USERNAME_ATTEMPTS):
        candidate = _generate_username()
        taken = await session.scalar(select(Profile.id).where(Profile.sip_username == candidate))
        if taken is None:
            return candidate
    raise ConflictError("could not generate an unused SIP username; try again")


async def get_profile(store: Store, name: str, *, account: str | None = None) -> ProfileView:
    """One profile by name; ``account`` is needed when several accounts have
    a profile of that name."""
    async with store.read() as session:
        row = await _find_profile(session, name, account)
        (view,) = await _profile_view(store, session, [row])
        return view


async def set_channel_limit(
    store: Store, name: str, limit: int, *, account: str | None = None
) -> ProfileView:
    """Change how many concurrent calls profile ``name`` may hold (1 to
    :data:`~gateway.models.MAX_CHANNELS`); ``account`` is needed when several
    accounts have a profile of that name, as for :func:`get_profile`.

    Running gateways apply it at their next directory poll, calls up
    included: calls already up are never cut, and a limit below the current
    use refuses new calls (503) until enough of them have ended.
    """
    channels = _channels(limit)
    async with store.write() as session:  # bumps directory_version with the change
        profile, owner = await _find_profile(session, name, account)
        profile.channel_limit = channels
        await session.flush()
        (view,) = await _profile_view(store, session, [(profile, owner)])
        return view


async def list_profiles(store: Store, *, account: str | None = None) -> list[ProfileView]:
    """Every profile (of ``account``), ordered by account and name."""
    async with store.read() as session:
        query = select(Profile, Account).join(Account, Profile.account_id == Account.id)
        if account is not None:
            owner = await _account(session, account)
            query = query.where(Profile.account_id == owner.id)
        ordered = query.order_by(Account.name, Profile.name)
        rows = [(p, a) for p, a in await session.execute(ordered)]
        return await _profile_view(store, session, rows)


# ---------------------------------------------------------------------------
# Numbers


async def add_numbers(store: Store, *, account: str, numbers: Iterable[str]) -> list[str]:
    """Put numbers into ``account``'s pool, all or none; returns them in
    normalised E.164 form.  A number that exists anywhere is a conflict."""
    wanted: list[str] = []
    for raw in numbers:
        number = normalise_e164(raw)
        if number in wanted:
            raise ValidationError(f"{number} is listed twice")
        wanted.append(number)
        if len(wanted) > MAX_NUMBERS_PER_REQUEST:
            raise ValidationError(f"at most {MAX_NUMBERS_PER_REQUEST} numbers at once")
    if not wanted:
        raise ValidationError("no numbers given")
    try:
        async with store.write() as session:
            owner = await _account(session, account)
            existing = (
                await session.scalars(select(Number.e164).where(Number.e164.in_(wanted)))
            ).all()
            if existing:
                raise ConflictError(f"number {sorted(existing)[0]} already exists")
            session.add_all(Number(e164=n, account_id=owner.id) for n in wanted)
            await session.flush()
    except IntegrityError as exc:
        raise _conflict(exc) from None
    return wanted


async def assign_number(
    store: Store, number: str, *, profile: str, move: bool = False
) -> NumberView:
    """Deliver ``number`` to ``profile``, a profile of the number's own account.

    Assigning a number to the profile that has it already changes nothing.
    A number assigned to another profile is moved only with ``move=True``,
    so that a typo cannot silently take a live number from a PBX.
    """
    e164 = normalise_e164(number)
    _name(profile, "profile name")
    try:
        async with store.write() as session:
            query = (
                select(Number, Account)
                .join(Account, Number.account_id == Account.id)
                .where(Number.e164 == e164)
            )
            row = (await session.execute(query)).first()
            if row is None:
                raise NotFoundError(f"no number {e164} (add it with 'sipgw number add')")
            entry, owner = row
            target = await session.scalar(
                select(Profile).where(Profile.account_id == owner.id, Profile.name == profile)
            )
            if target is None:
                raise NotFoundError(
                    f"no profile named {profile!r} in account {owner.name!r}, which owns {e164}"
                )
            if entry.profile_id is not None and entry.profile_id != target.id and not move:
                current = await session.scalar(
                    select(Profile.name).where(Profile.id == entry.profile_id)
                )
                raise ConflictError(
                    f"{e164} is assigned to profile {current!r}; use --move to reassign it"
                )
            entry.profile_id = target.id
            await session.flush()
            return NumberView(e164=e164, account=owner.name, profile=target.name)
    except IntegrityError as exc:
        raise _conflict(exc) from None


# ---------------------------------------------------------------------------
# Presentation shared by the front ends


def profile_document(view: ProfileView, *, gateway_addresses: Sequence[str]) -> dict[str, Any]:
    """What a PBX administrator needs, as JSON-ready data: the credentials or
    the trusted address, the realm, where to send SIP (``gateway_addresses``,
    from the gateway's settings) and the numbers delivered."""
    return {
        "id": view.id,
        "name": view.name,
        "account": view.account,
        "auth": view.auth_mode.value,
        "sip_username": view.sip_username,
        "password": view.password,
        "realm": view.realm,
        "gateway_addresses": list(gateway_addresses),
        "transports": ["udp", "tcp"],
        "ip": view.ip,
        "port": view.port,
        "channel_limit": view.channel_limit,
        "numbers": list(view.numbers),
        "created_at": view.created_at.isoformat(),
    }
