"""The management service: accounts, SIP profiles, their credit and numbers.

Every management front end (the CLI and the REST API)
calls these functions and nothing else, so that the rules live in one
place: names unique within an account, one profile per IP:port, at most
:data:`~gateway.store.models.MAX_CHANNELS` channels, E.164 numbers assigned
within their account, money that is never negative and moves atomically,
generated credentials stored as HA1 (RFC 7616 §3.4.2) plus an encrypted
copy the operator can retrieve, and a deletion that gives everything back.

Scoping: functions naming a profile take ``account``; a front end acting
for an account manager always passes that manager's account
(:func:`gateway.manage.tokens.visible_account`), so nothing of another account is
ever found.

Failures are :class:`~gateway.manage.errors.ProfileError` subclasses with a
one-line message and the answer each front end gives (exit status, HTTP
status): the h11 habit of errors carrying their answer.  The schema
enforces the same rules; a constraint violated by a concurrent writer
between our check and our commit is reported as a
:class:`~gateway.manage.errors.ConflictError` too.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import string
import unicodedata
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.config.settings import DEFAULT_SMTP_FROM
from gateway.manage.errors import (
    CallsUpError,
    ConflictError,
    InsufficientFundsError,
    NotFoundError,
    ProfileError,
    ValidationError,
)
from gateway.manage.mailer import Mailer, MailError, SMTPMailer, credentials_message
from gateway.manage.paging import DEFAULT_LIMIT, Page, check_page
from gateway.store.database import Store
from gateway.store.models import (
    BALANCE_SCALE,
    E164_MAX_LENGTH,
    E164_MIN_LENGTH,
    EMAIL_MAX_LENGTH,
    MAX_BALANCE,
    MAX_CHANNELS,
    NAME_MAX_LENGTH,
    Account,
    AuthMode,
    CallRecord,
    Number,
    Profile,
    utcnow,
)
from sip.digest import ha1
from sip.uri import host_port

__all__ = [
    "DIGEST_ALGORITHMS",
    "E164_PATTERN",
    "MAX_NUMBERS_PER_REQUEST",
    "PASSWORD_LENGTH",
    "REGISTERED_PBX",
    "AccountView",
    "ActiveCalls",
    "CallsUpError",
    "ConflictError",
    "DeletionReport",
    "InsufficientFundsError",
    "NotFoundError",
    "Notice",
    "NumberView",
    "Page",
    "ProfileError",
    "ProfileView",
    "Settle",
    "ValidationError",
    "account_document",
    "add_numbers",
    "allocate_credit",
    "assign_number",
    "create_account",
    "create_profile",
    "create_profile_and_notify",
    "delete_profile",
    "deletion_document",
    "delivered_to",
    "deposit",
    "get_account",
    "get_profile",
    "list_accounts",
    "list_numbers",
    "list_profiles",
    "normalise_e164",
    "normalise_ip",
    "number_document",
    "page_document",
    "parse_amount",
    "profile_document",
    "rename_profile",
    "set_channel_limit",
    "unassign_number",
    "update_profile",
]

#: The digest algorithms a PBX may answer with (RFC 7616 §3.3; RFC 8760 for
#: SHA-256 in SIP): one stored HA1 per algorithm, and the challenges the
#: running gateway sends, in this order (``gateway.web.app``: MD5 first).
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
#: Where inbound calls to a registration profile's numbers go: the contact
#: its PBX registered (RFC 3261 §10.3), whatever address that is today.
REGISTERED_PBX = "registered PBX"
_MONEY_QUANTUM = Decimal(1).scaleb(-BALANCE_SCALE)
#: What each SIP listener serves, when the documents are not told otherwise.
GATEWAY_TRANSPORTS = ("udp", "tcp")

#: Besides letters (of any alphabet: "Łódź", "Zażółć") and digits, the
#: characters a name may hold.  No "/" (a name is a segment of API paths and
#: part of the history report's file name), no control characters (they
#: reach logs, CSV and metrics labels), no other punctuation.
NAME_PUNCTUATION = frozenset(" -_.'")
# A deliberately loose e-mail check (RFC 5322 is looser still): one "@",
# something on each side, a dot in the domain, no spaces.
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+\Z")
#: ITU-T E.164 §6: "+", a country code (never starting with 0), and 8 to 15
#: digits in all (the lengths of the ``numbers.e164`` column); the API's
#: schema says the same (``gateway.web.api.openapi``).
E164_PATTERN = rf"\+[1-9][0-9]{{{E164_MIN_LENGTH - 2},{E164_MAX_LENGTH - 2}}}"
_E164 = re.compile(E164_PATTERN + r"\Z")
# RFC 3966 §5.1.1 visual separators, plus the spaces people type.
_VISUAL_SEPARATORS = str.maketrans("", "", "-.() \t\u00a0")


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
    ``realm`` is the realm the gateway challenges with; ``credit`` is the
    prepaid money its outbound calls are charged against."""

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
    credit: Decimal
    numbers: tuple[str, ...]
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class NumberView:
    e164: str
    account: str
    profile: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Notice:
    """What became of the credentials e-mail of a new profile.

    ``emailed`` is True once the mail server accepted it (for ``recipient``);
    ``error`` is the one-line reason it was not sent, None when nothing was
    tried (an IP profile, or e-mail switched off) or it was sent.
    """

    emailed: bool
    recipient: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeletionReport:
    """What a profile deletion did: what the calls it ended (and any
    others not yet charged) cost, the credit then given back to ``account``
    (whose balance is now ``balance``), the numbers back in its pool, how
    many call records were erased, and how many calls were up when it was
    asked."""

    name: str
    account: str
    charged: Decimal
    credit_returned: Decimal
    numbers_released: list[str]
    records_erased: int
    calls_up: int
    balance: Decimal


#: How a front end tells :func:`delete_profile` how many calls a profile has
#: up right now (the gateways know; the database does not).
ActiveCalls = Callable[[ProfileView], Awaitable[int]]
#: How a front end waits until the running gateways have applied directory
#: version ``int`` (the profile closing), ended the profile's calls and
#: written their call records, charged (:func:`gateway.manage.nodes.wait_until_settled`).
Settle = Callable[[ProfileView, int], Awaitable[None]]


# ---------------------------------------------------------------------------
# Validation


def _looked_up(name: str) -> str:
    """A name as given to find an account or profile: in NFC (one spelling
    of "ł" whatever the keyboard sent) and trimmed, as names are stored."""
    return unicodedata.normalize("NFC", name).strip() if isinstance(name, str) else name


def _name(value: str, what: str, field: str) -> str:
    """A new account or profile name: trimmed, in NFC, 1 to
    :data:`~gateway.store.models.NAME_MAX_LENGTH` letters, digits, inner spaces
    and ``-_.'``."""
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be text, got {value!r}", field=field)
    name = _looked_up(value)
    if not 1 <= len(name) <= NAME_MAX_LENGTH:
        raise ValidationError(
            f"{what} must be 1 to {NAME_MAX_LENGTH} characters, got {value!r}", field=field
        )
    for char in name:
        if not (char.isalpha() or char in string.digits or char in NAME_PUNCTUATION):
            raise ValidationError(
                f"{what} may hold letters, digits, spaces and - _ . ' only,"
                f" not {char!r}: {value!r}",
                field=field,
            )
    return name


def _email(value: str) -> str:
    if not isinstance(value, str) or len(value) > EMAIL_MAX_LENGTH or not _EMAIL.match(value):
        raise ValidationError(f"not an e-mail address: {value!r}", field="email")
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


def parse_amount(value: Decimal | int | str, what: str) -> Decimal:
    """An exact amount of money, signed: at most :data:`~gateway.store.models.BALANCE_SCALE`
    decimal places, at most :data:`~gateway.store.models.MAX_BALANCE` either way.
    ``what`` names it in the message (``"deposit"``, ``"price per minute"``)."""
    if isinstance(value, bool | float):
        # A float is already inexact (0.1 is 0.1000000000000000055...).
        raise ValidationError(f"{what} must be an amount like 25.00, got {value!r}")
    try:
        amount = Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise ValidationError(f"{what} must be an amount like 25.00, got {value!r}") from None
    if not amount.is_finite():
        raise ValidationError(f"{what} must be an amount like 25.00, got {value!r}")
    if abs(amount) > MAX_BALANCE:
        raise ValidationError(f"{what} must be at most {MAX_BALANCE}, got {value}")
    quantized = amount.quantize(_MONEY_QUANTUM)
    if amount != quantized:
        raise ValidationError(f"{what} has more than {BALANCE_SCALE} decimal places: {value}")
    return quantized


def _channels(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CHANNELS:
        raise ValidationError(
            f"channel_limit must be 1 to {MAX_CHANNELS}, got {value!r}", field="channel_limit"
        )
    return value


def normalise_ip(text: str) -> str:
    """The canonical text of a PBX's IP address (IPv4-mapped IPv6 becomes
    IPv4, so one PBX has one spelling); a wildcard, multicast or broadcast
    address can never be a packet's source and is refused."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValidationError(f"not an IP address: {text!r}", field="ip") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if (
        address.is_unspecified
        or address.is_multicast
        or address == ipaddress.IPv4Address("255.255.255.255")
    ):
        raise ValidationError(f"{address} cannot be the source address of a PBX", field="ip")
    return str(address)


def _port(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValidationError(f"port must be 1 to 65535, got {value!r}", field="port")
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
    name = _looked_up(name)
    account = await session.scalar(select(Account).where(Account.name == name))
    if account is None:
        raise NotFoundError(f"no account named {name!r}")
    return account


async def _find_profile(
    session: AsyncSession, name: str, account: str | None
) -> tuple[Profile, Account]:
    name = _looked_up(name)
    query = select(Profile, Account).join(Account, Profile.account_id == Account.id)
    query = query.where(Profile.name == name)
    if account is not None:
        query = query.where(Account.name == _looked_up(account))
    rows = [(p, a) for p, a in await session.execute(query.order_by(Account.name))]
    if not rows:
        raise NotFoundError(f"no profile named {name!r}{_in_account(account)}")
    if len(rows) > 1:
        accounts = ", ".join(repr(a.name) for _, a in rows)
        raise ValidationError(
            f"profile {name!r} exists in several accounts ({accounts}): name its account",
            field="account",
        )
    return rows[0]


def _in_account(account: str | None) -> str:
    return f" in account {account!r}" if account is not None else ""


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


async def _rows_changed(session: AsyncSession, statement: Any) -> int:
    """Run an UPDATE or DELETE (the ORM's copies in the session are left
    alone: callers refresh what they show) and return how many rows it hit."""
    result = await session.execute(statement.execution_options(synchronize_session=False))
    return cast(CursorResult[Any], result).rowcount


async def _profile_view(
    store: Store,
    session: AsyncSession,
    rows: Sequence[tuple[Profile, Account]],
    *,
    reveal: bool = True,
) -> list[ProfileView]:
    """Views of ``rows``; with ``reveal`` the retrievable password is
    decrypted (if the store has the key)."""
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
        if reveal and profile.password_encrypted is not None and store.has_secret_key:
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
                credit=profile.credit.quantize(_MONEY_QUANTUM),
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
    name = _name(name, "account name", "name")
    account = Account(name=name, email=_email(email), balance=_balance(balance))
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


async def list_accounts(
    store: Store, *, offset: int = 0, limit: int = DEFAULT_LIMIT
) -> Page[AccountView]:
    """Every account, ordered by name, one page at a time."""
    offset, limit = check_page(offset, limit)
    async with store.read() as session:
        total = await session.scalar(select(func.count(Account.id)))
        query = select(Account).order_by(Account.name).offset(offset).limit(limit)
        items = [_account_view(a) for a in await session.scalars(query)]
    return Page(items, int(total or 0), offset, limit)


async def deposit(store: Store, account: str, amount: Decimal | int | str) -> AccountView:
    """Add ``amount`` (more than zero) to ``account``'s balance: money paid
    in, recorded by an operator.

    One conditional UPDATE, so concurrent deposits add up exactly and the
    balance never passes :data:`~gateway.store.models.MAX_BALANCE`.  Running
    gateways need not reload for it (the balance is not on the SIP path
    until it is moved to a profile).
    """
    value = parse_amount(amount, "deposit")
    if value <= 0:
        raise ValidationError(f"deposit must be more than zero, got {amount}")
    async with store.write(bump=False) as session:
        owner = await _account(session, account)
        added = await _rows_changed(
            session,
            update(Account)
            .where(Account.id == owner.id, Account.balance <= MAX_BALANCE - value)
            .values(balance=Account.balance + value),
        )
        if not added:
            raise ConflictError(
                f"account {account!r} cannot take {value}: its balance would exceed {MAX_BALANCE}"
            )
        await session.refresh(owner)
        return _account_view(owner)


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
    """A new profile of ``account``, with no credit.

    ``registration``: a SIP username and password are generated; the
    password is stored encrypted plus as HA1 for MD5 and SHA-256 in the
    store's realm, and returned in the result (``password``), to be handed to
    the PBX administrator.  ``ip``: ``ip`` and ``port`` identify the PBX; no
    other profile may use the same pair.
    """
    name = _name(name, "profile name", "name")
    try:
        mode = AuthMode(auth)
    except ValueError:
        raise ValidationError(
            f"auth must be 'registration' or 'ip', got {auth!r}", field="auth"
        ) from None
    limit = _channels(channels)
    password: str | None = None
    if mode is AuthMode.IP:
        if ip is None or port is None:
            missing = "ip" if ip is None else "port"
            raise ValidationError(
                "an ip profile needs the PBX's address: ip and port", field=missing
            )
        address, udp_port = normalise_ip(ip), _port(port)
    else:
        if ip is not None or port is not None:
            given = "ip" if ip is not None else "port"
            raise ValidationError(
                "ip and port are for ip profiles only: a registration profile's PBX"
                " is found by its registration",
                field=given,
            )
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
                holder = (
                    await session.execute(
                        select(Profile.name, Profile.account_id).where(
                            Profile.ip_address == address, Profile.udp_port == udp_port
                        )
                    )
                ).first()
                if holder is not None:
                    shown = host_port(address, udp_port)
                    # Another account's profile is not named: its names are
                    # its own business (ConflictError says no more).
                    whose = f" by profile {holder.name!r}" if holder.account_id == owner.id else ""
                    raise ConflictError(f"{shown} is already used{whose}", field="ip")
            username = await _free_username(session)
            profile = Profile(
                account_id=owner.id,
                name=name,
                auth_mode=mode.value,
                sip_username=username,
                ip_address=address,
                udp_port=udp_port,
                channel_limit=limit,
                credit=Decimal(0),
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


async def create_profile_and_notify(
    store: Store,
    mailer: Mailer | None,
    *,
    gateway_addresses: Sequence[str],
    transports: Sequence[str] = GATEWAY_TRANSPORTS,
    account: str,
    name: str,
    auth: AuthMode | str,
    ip: str | None = None,
    port: int | None = None,
    channels: int = MAX_CHANNELS,
    sender: str | None = None,
) -> tuple[ProfileView, Notice]:
    """:func:`create_profile`, then e-mail a registration profile's
    credentials to the account's address (docs/email.md).

    Nothing is sent for an IP profile (there is no secret to hand over) or
    when ``mailer`` is None or a disabled :class:`~gateway.manage.mailer.SMTPMailer`
    (``smtp.host`` empty); the :class:`Notice` then reports no failure
    either.  A failed send is reported in the notice and never undoes the
    profile: its credentials stay retrievable (:func:`get_profile`).
    ``sender`` defaults to the mailer's ``smtp.from_address``.
    """
    view = await create_profile(
        store, account=account, name=name, auth=auth, ip=ip, port=port, channels=channels
    )
    if view.auth_mode is not AuthMode.REGISTRATION:
        return view, Notice(emailed=False)
    if mailer is None or (isinstance(mailer, SMTPMailer) and not mailer.enabled):
        return view, Notice(emailed=False)
    if sender is None:
        sender = mailer.settings.from_address if isinstance(mailer, SMTPMailer) else None
    owner = await get_account(store, view.account)
    message = credentials_message(
        sender=sender or DEFAULT_SMTP_FROM,
        to=owner.email,
        account=owner.name,
        document=profile_document(view, gateway_addresses=gateway_addresses, transports=transports),
    )
    try:
        await mailer.send(message)
    except MailError as exc:
        return view, Notice(emailed=False, recipient=owner.email, error=str(exc))
    return view, Notice(emailed=True, recipient=owner.email)


async def _free_username(session: AsyncSession) -> str:
    for _ in range(USERNAME_ATTEMPTS):
        candidate = _generate_username()
        taken = await session.scalar(select(Profile.id).where(Profile.sip_username == candidate))
        if taken is None:
            return candidate
    raise ConflictError("could not generate an unused SIP username; try again")


async def get_profile(
    store: Store, name: str, *, account: str | None = None, reveal: bool = True
) -> ProfileView:
    """One profile by name; ``account`` is needed when several accounts have
    a profile of that name.  ``reveal=False`` leaves the password out (and
    needs no secret key), for callers that only need the profile."""
    async with store.read() as session:
        row = await _find_profile(session, name, account)
        (view,) = await _profile_view(store, session, [row], reveal=reveal)
        return view


async def update_profile(
    store: Store,
    name: str,
    *,
    new_name: str | None = None,
    channel_limit: int | None = None,
    account: str | None = None,
) -> ProfileView:
    """Rename profile ``name`` (of ``account``) and/or change its channel
    limit, in one transaction: a change refused (the new name taken, a
    limit out of range) leaves the profile exactly as it was.

    ``new_name`` must be unique in the account; ``channel_limit`` is 1 to
    :data:`~gateway.store.models.MAX_CHANNELS`.  Both apply to the next call with
    no restart, and to what is already up: calls and registrations stay,
    metrics and health show the new name, and a limit below the current use
    refuses new calls (503) until enough of them have ended.  ``account`` is
    needed when several accounts have a profile of that name, as for
    :func:`get_profile`.
    """
    if new_name is None and channel_limit is None:
        raise ValidationError("nothing to change: give a new name and/or a channel limit")
    if new_name is not None:
        new_name = _name(new_name, "new profile name", "name")
    channels = None if channel_limit is None else _channels(channel_limit)
    try:
        async with store.write() as session:  # bumps directory_version with the change
            profile, owner = await _find_profile(session, name, account)
            if new_name is not None and new_name != profile.name:
                taken = await session.scalar(
                    select(Profile.id).where(
                        Profile.account_id == owner.id, Profile.name == new_name
                    )
                )
                if taken is not None:
                    raise ConflictError(
                        f"account {owner.name!r} already has a profile named {new_name!r}"
                    )
                profile.name = new_name
            if channels is not None:
                profile.channel_limit = channels
            await session.flush()
            (view,) = await _profile_view(store, session, [(profile, owner)])
            return view
    except IntegrityError as exc:
        raise _conflict(exc) from None


async def rename_profile(
    store: Store, name: str, new_name: str, *, account: str | None = None
) -> ProfileView:
    """Give profile ``name`` a new name, unique in its account (see
    :func:`update_profile`)."""
    return await update_profile(store, name, new_name=new_name, account=account)


async def set_channel_limit(
    store: Store, name: str, limit: int, *, account: str | None = None
) -> ProfileView:
    """Change how many concurrent calls profile ``name`` may hold (see
    :func:`update_profile`)."""
    return await update_profile(store, name, channel_limit=limit, account=account)


async def list_profiles(
    store: Store, *, account: str | None = None, offset: int = 0, limit: int = DEFAULT_LIMIT
) -> Page[ProfileView]:
    """Every profile (of ``account``), ordered by account and name, one page
    at a time."""
    offset, limit = check_page(offset, limit)
    async with store.read() as session:
        query = select(Profile, Account).join(Account, Profile.account_id == Account.id)
        count = select(func.count(Profile.id))
        if account is not None:
            owner = await _account(session, account)
            query = query.where(Profile.account_id == owner.id)
            count = count.where(Profile.account_id == owner.id)
        total = await session.scalar(count)
        ordered = query.order_by(Account.name, Profile.name).offset(offset).limit(limit)
        rows = [(p, a) for p, a in await session.execute(ordered)]
        items = await _profile_view(store, session, rows)
    return Page(items, int(total or 0), offset, limit)


async def allocate_credit(
    store: Store, name: str, amount: Decimal | int | str, *, account: str | None = None
) -> tuple[ProfileView, AccountView]:
    """Move money between the account's balance and profile ``name``'s
    credit: ``amount`` > 0 from the balance to the profile, < 0 back.

    One transaction of conditional UPDATEs (``... WHERE balance >= x``): the
    database checks and moves in one step, so concurrent moves (and calls
    charged meanwhile) can never make either side negative; a move that
    would is refused whole with :class:`InsufficientFundsError`.
    """
    value = parse_amount(amount, "credit amount")
    if value == 0:
        raise ValidationError(
            "credit amount must not be zero: more than zero moves money to the profile,"
            " less than zero back to the account"
        )
    moved = abs(value)
    async with store.write() as session:  # running gateways see the new credit
        profile, owner = await _find_profile(session, name, account)
        if profile.closing_since is not None:
            # Its calls are being charged; what is left goes to the account.
            raise ConflictError(f"profile {profile.name!r} is being deleted")
        # Always the account's row first, then the profile's (delete_profile
        # too): concurrent moves wait for each other instead of deadlocking.
        if value > 0:
            if not await _rows_changed(
                session,
                update(Account)
                .where(Account.id == owner.id, Account.balance >= moved)
                .values(balance=Account.balance - moved),
            ):
                balance = await session.scalar(
                    select(Account.balance).where(Account.id == owner.id)
                )
                raise InsufficientFundsError(
                    f"account {owner.name!r} has a balance of {balance}:"
                    f" cannot move {moved} to profile {profile.name!r}"
                )
            if not await _rows_changed(
                session,
                update(Profile)
                .where(Profile.id == profile.id, Profile.credit <= MAX_BALANCE - moved)
                .values(credit=Profile.credit + moved),
            ):
                await _still_there(session, profile, account)
                raise ConflictError(
                    f"profile {profile.name!r} cannot take {moved}:"
                    f" its credit would exceed {MAX_BALANCE}"
                )
        else:
            if not await _rows_changed(
                session,
                update(Account)
                .where(Account.id == owner.id, Account.balance <= MAX_BALANCE - moved)
                .values(balance=Account.balance + moved),
            ):
                raise ConflictError(
                    f"account {owner.name!r} cannot take back {moved}:"
                    f" its balance would exceed {MAX_BALANCE}"
                )
            if not await _rows_changed(
                session,
                update(Profile)
                .where(Profile.id == profile.id, Profile.credit >= moved)
                .values(credit=Profile.credit - moved),
            ):
                await _still_there(session, profile, account)
                credit = await session.scalar(
                    select(Profile.credit).where(Profile.id == profile.id)
                )
                raise InsufficientFundsError(
                    f"profile {profile.name!r} has a credit of {credit}: cannot withdraw {moved}"
                )
        await session.refresh(owner)
        await session.refresh(profile)
        (view,) = await _profile_view(store, session, [(profile, owner)])
        return view, _account_view(owner)


async def _still_there(session: AsyncSession, profile: Profile, account: str | None) -> None:
    """NotFoundError if ``profile`` was deleted since it was looked up."""
    if await session.scalar(select(Profile.id).where(Profile.id == profile.id)) is None:
        raise NotFoundError(f"no profile named {profile.name!r}{_in_account(account)}")


async def delete_profile(
    store: Store,
    name: str,
    *,
    account: str | None = None,
    confirm: str,
    end_calls: bool = False,
    active_calls: ActiveCalls,
    settle: Settle,
) -> DeletionReport:
    """Delete profile ``name`` and give back what it held.

    ``confirm`` must repeat the name exactly: deleting erases the call
    history, so a front end offers the history report first
    (:func:`gateway.manage.history.history_csv`) and asks.  ``active_calls`` says
    how many calls the profile has up (the gateways know, not the
    database); with any up, the deletion is refused with
    :class:`CallsUpError` unless ``end_calls``.

    Money first, in two steps.  The profile is marked closing (a directory
    change): every running gateway drops it, ending its calls (BYE both
    sides, or CANCEL while ringing), and writes their call records, each
    charging its cost to the profile as any call does.  ``settle`` waits
    for that to be done everywhere (it raises if the gateways do not
    confirm in time: the profile stays closed to calls, and asking again
    continues).  Then, in one transaction, the credit left goes back to the
    account's balance, its numbers back to the account's pool (unassigned),
    its call records are erased, and the profile is deleted.  The report
    says what the calls cost (``charged``) and what came back.
    """
    if not isinstance(confirm, str) or confirm != name:
        raise ValidationError(
            f"confirmation does not match: repeat the profile name {name!r} exactly to delete it",
            field="confirm",
        )
    # No password needed (nor the key that decrypts it) to delete.
    view = await get_profile(store, name, account=account, reveal=False)
    calls = await active_calls(view)
    if calls > 0 and not end_calls:
        them = "it" if calls == 1 else "them"
        raise CallsUpError(
            f"profile {view.name!r} has {calls} call{'' if calls == 1 else 's'} up:"
            f" set end_calls to end {them} and delete the profile",
            field="end_calls",
        )
    async with store.write() as session:  # the bump makes the gateways drop it
        current = (
            await session.execute(
                select(Profile.name, Profile.credit, Profile.closing_since)
                .where(Profile.id == view.id)
                .with_for_update()
            )
        ).first()
        if current is None or current.name != view.name:
            raise NotFoundError(f"no profile named {name!r}{_in_account(account)}")
        credit_before: Decimal = current.credit
        if current.closing_since is None:
            await _rows_changed(
                session, update(Profile).where(Profile.id == view.id).values(closing_since=utcnow())
            )
    await settle(view, await store.version())
    async with store.write() as session:
        # The account's row, then the profile's, locked in the order
        # allocate_credit takes them (SQLite's write lock covers both).
        balance = await session.scalar(
            select(Account.balance).where(Account.id == view.account_id).with_for_update()
        )
        remaining = (
            await session.execute(
                select(Profile.name, Profile.credit).where(Profile.id == view.id).with_for_update()
            )
        ).first()
        if balance is None or remaining is None or remaining.name != view.name:
            raise NotFoundError(f"no profile named {name!r}{_in_account(account)}")
        credit: Decimal = remaining.credit
        if balance + credit > MAX_BALANCE:
            raise ConflictError(
                f"account {view.account!r} cannot take back {credit}:"
                f" its balance would exceed {MAX_BALANCE}"
            )
        released = list(
            await session.scalars(
                select(Number.e164).where(Number.profile_id == view.id).order_by(Number.e164)
            )
        )
        await _rows_changed(
            session, update(Number).where(Number.profile_id == view.id).values(profile_id=None)
        )
        erased = await _rows_changed(
            session, delete(CallRecord).where(CallRecord.profile_id == view.id)
        )
        await _rows_changed(
            session,
            update(Account)
            .where(Account.id == view.account_id)
            .values(balance=Account.balance + credit),
        )
        await _rows_changed(session, delete(Profile).where(Profile.id == view.id))
    return DeletionReport(
        name=view.name,
        account=view.account,
        # Credit moves are refused while closing: what left was charged.
        charged=max(credit_before - credit, Decimal(0)).quantize(_MONEY_QUANTUM),
        credit_returned=credit,
        numbers_released=released,
        records_erased=erased,
        calls_up=calls,
        balance=balance + credit,
    )


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


async def _find_number(
    session: AsyncSession, e164: str, account: str | None
) -> tuple[Number, Account]:
    query = (
        select(Number, Account)
        .join(Account, Number.account_id == Account.id)
        .where(Number.e164 == e164)
    )
    if account is not None:  # another account's number is not there at all
        query = query.where(Account.name == account)
    row = (await session.execute(query)).first()
    if row is None:
        raise NotFoundError(f"no number {e164}{_in_account(account)}", field="number")
    return row[0], row[1]


async def assign_number(
    store: Store, number: str, *, profile: str, move: bool = False, account: str | None = None
) -> NumberView:
    """Deliver ``number`` to ``profile``, a profile of the number's own account
    (of ``account``, when given: the number must belong to it).

    Assigning a number to the profile that has it already changes nothing.
    A number assigned to another profile is moved only with ``move=True``,
    so that a typo cannot silently take a live number from a PBX.
    """
    e164 = normalise_e164(number)
    profile = _looked_up(profile)
    try:
        async with store.write() as session:
            entry, owner = await _find_number(session, e164, account)
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
                    f"{e164} is assigned to profile {current!r}; set move to reassign it",
                    field="move",
                )
            entry.profile_id = target.id
            await session.flush()
            return NumberView(e164=e164, account=owner.name, profile=target.name)
    except IntegrityError as exc:
        raise _conflict(exc) from None


async def unassign_number(store: Store, number: str, *, account: str | None = None) -> NumberView:
    """Take ``number`` from the profile it is delivered to, back into its
    account's pool (of ``account``, when given).  Inbound calls to it are
    then refused until it is assigned again.  A number in the pool already
    stays there."""
    e164 = normalise_e164(number)
    async with store.write() as session:
        entry, owner = await _find_number(session, e164, account)
        entry.profile_id = None
        await session.flush()
        return NumberView(e164=e164, account=owner.name, profile=None)


async def list_numbers(
    store: Store,
    *,
    account: str,
    profile: str | None = None,
    offset: int = 0,
    limit: int = DEFAULT_LIMIT,
) -> Page[NumberView]:
    """``account``'s numbers (only those delivered to ``profile``, if
    given), ordered by number, one page at a time; ``profile`` is None on a
    number in the pool."""
    offset, limit = check_page(offset, limit)
    async with store.read() as session:
        owner = await _account(session, account)
        condition = Number.account_id == owner.id
        if profile is not None:
            profile = _looked_up(profile)
            profile_id = await session.scalar(
                select(Profile.id).where(Profile.account_id == owner.id, Profile.name == profile)
            )
            if profile_id is None:
                raise NotFoundError(f"no profile named {profile!r} in account {account!r}")
            condition = condition & (Number.profile_id == profile_id)
        total = await session.scalar(select(func.count(Number.id)).where(condition))
        query = (
            select(Number.e164, Profile.name)
            .outerjoin(Profile, Number.profile_id == Profile.id)
            .where(condition)
            .order_by(Number.e164)
            .offset(offset)
            .limit(limit)
        )
        items = [
            NumberView(e164=e164, account=owner.name, profile=name)
            for e164, name in await session.execute(query)
        ]
    return Page(items, int(total or 0), offset, limit)


# ---------------------------------------------------------------------------
# Presentation shared by the front ends


def delivered_to(view: ProfileView) -> str:
    """Where inbound calls to the profile's numbers go: the registered PBX,
    or an IP profile's IP:port."""
    if view.auth_mode is AuthMode.REGISTRATION or view.ip is None:
        return REGISTERED_PBX
    return host_port(view.ip, view.port)


def profile_document(
    view: ProfileView,
    *,
    gateway_addresses: Sequence[str],
    transports: Sequence[str] = GATEWAY_TRANSPORTS,
) -> dict[str, Any]:
    """What a PBX administrator needs, as JSON-ready data: the credentials or
    the trusted address, the realm, where to send SIP (``gateway_addresses``
    and ``transports``: what the running gateways advertise,
    :mod:`gateway.manage.nodes`; empty when none runs), the credit, and the
    incoming calls: the numbers delivered and where to (the registered PBX,
    or the IP:port, :func:`delivered_to`)."""
    return {
        "id": view.id,
        "name": view.name,
        "account": view.account,
        "auth": view.auth_mode.value,
        "sip_username": view.sip_username,
        "password": view.password,
        "realm": view.realm,
        "gateway_addresses": list(gateway_addresses),
        "transports": list(transports),
        "ip": view.ip,
        "port": view.port,
        "channel_limit": view.channel_limit,
        "credit": str(view.credit),  # a string keeps the exact decimal
        "numbers": list(view.numbers),
        "incoming": {"numbers": list(view.numbers), "delivered_to": delivered_to(view)},
        "created_at": view.created_at.isoformat(),
    }


def account_document(view: AccountView) -> dict[str, Any]:
    """An account as JSON-ready data; ``balance`` a string, exact."""
    return {
        "id": view.id,
        "name": view.name,
        "email": view.email,
        "balance": str(view.balance),
        "created_at": view.created_at.isoformat(),
    }


def number_document(view: NumberView) -> dict[str, Any]:
    return {"number": view.e164, "account": view.account, "profile": view.profile}


def deletion_document(report: DeletionReport) -> dict[str, Any]:
    return {
        "name": report.name,
        "account": report.account,
        "charged": str(report.charged),
        "credit_returned": str(report.credit_returned),
        "numbers_released": list(report.numbers_released),
        "records_erased": report.records_erased,
        "calls_up": report.calls_up,
        "balance": str(report.balance),
    }


def page_document(page: Page[Any], documents: list[dict[str, Any]]) -> dict[str, Any]:
    """A page of a list as JSON-ready data: ``documents`` (the items, each
    already a document) and where the page sits in the whole list."""
    return {
        "items": documents,
        "total": page.total,
        "offset": page.offset,
        "limit": page.limit,
        "next_offset": page.next_offset,
    }
