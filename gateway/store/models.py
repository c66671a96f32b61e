"""The management data model: accounts, SIP profiles, numbers (SQLAlchemy 2.x).

A business *account* owns *profiles* (one per PBX or department) and a pool
of *numbers*; a number is delivered to at most one profile of the same
account.  The schema itself enforces what must never be false, whatever
writes to it (the service layer in :mod:`gateway.manage.profiles` checks first, to
give a clear message):

* a profile name is unique within its account, a SIP username everywhere;
* two profiles never claim the same IP address and UDP port;
* a channel limit is 1..:data:`MAX_CHANNELS`;
* a number belongs to one account and, if assigned, to a profile *of that
  account* (a composite foreign key on ``(profile_id, account_id)``).

``directory_version`` is a single row that every change bumps in the same
transaction, so a running gateway sees a change made by another process (the
CLI, another node) by reading one integer.

There are no ORM relationships: every query joins explicitly, which is what
async sessions need anyway (no lazy loading) and keeps the composite key
free of overlapping relationship rules.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    Numeric,
    String,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

__all__ = [
    "BALANCE_SCALE",
    "E164_MAX_LENGTH",
    "E164_MIN_LENGTH",
    "EMAIL_MAX_LENGTH",
    "MAX_BALANCE",
    "MAX_CHANNELS",
    "NAME_MAX_LENGTH",
    "NAMING_CONVENTION",
    "SIP_USERNAME_MAX_LENGTH",
    "Account",
    "ApiToken",
    "AuthMode",
    "Base",
    "CallRecord",
    "Direction",
    "DirectoryVersion",
    "GatewayNode",
    "Money",
    "Number",
    "Profile",
    "Rate",
    "TokenRole",
    "UTCDateTime",
    "utcnow",
]

#: The product's promise: a profile holds at most 300 concurrent calls.  An
#: operator may set a lower limit, never a higher one.  The gateway's one
#: definition (the CLI, the service layer and the API schema import it);
#: ``admission`` clamps to its own ``MAX_CHANNELS``, being below every
#: gateway layer and importing none of them (``tests/unit/test_admission.py``
#: holds it at 300 too).
MAX_CHANNELS = 300
#: Account and profile names: long enough for "Accounts Payable Leeds
#: office", short enough for a table column and a metrics label.
NAME_MAX_LENGTH = 64
#: RFC 5321 §4.5.3.1.3: a path is at most 256 octets including the angle
#: brackets, so an address is at most 254.
EMAIL_MAX_LENGTH = 254
#: ITU-T E.164 §6: at most 15 digits, plus the leading "+".
E164_MAX_LENGTH = 16
#: Fewer than 8 digits is not a number a trunk can deliver.
E164_MIN_LENGTH = 9
#: Generated usernames are short ("p" + 10 characters); the column leaves room
#: for operator-chosen ones later.
SIP_USERNAME_MAX_LENGTH = 64
#: Digest realms are at most 128 characters (``gateway.config.settings``).
REALM_MAX_LENGTH = 128
#: Money is kept to 1/10,000 of the currency unit: per-second rating of a
#: per-minute price needs more than cents.
BALANCE_SCALE = 4
#: Fourteen significant digits: ten before the point, comfortably more money
#: than one account will ever hold, and exact in every engine.
BALANCE_PRECISION = 14
MAX_BALANCE = Decimal(10) ** (BALANCE_PRECISION - BALANCE_SCALE) - Decimal(1).scaleb(-BALANCE_SCALE)
#: Longest stored Fernet token: a 20-character password encrypts to about
#: 120 characters; room for longer passwords set by an operator later.
PASSWORD_TOKEN_MAX_LENGTH = 512
#: Hex digests: MD5 is 32, SHA-256 64 characters (RFC 7616 §3.4.2).
HA1_MD5_LENGTH = 32
HA1_SHA256_LENGTH = 64
#: Textual IPv6 is at most 45 characters (IPv4-embedded form).
IP_MAX_LENGTH = 45

#: Deterministic constraint names, so that migrations can name what they
#: create and later alter it on both SQLite and PostgreSQL.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (what every timestamp stores)."""
    return datetime.now(UTC)


class AuthMode(StrEnum):
    """How a profile's PBX proves who it is."""

    REGISTRATION = "registration"  # digest username + password (RFC 3261 §22)
    IP = "ip"  # the PBX's source IP address and UDP port


class Direction(StrEnum):
    """Which way a call went through the trunk."""

    OUTBOUND = "outbound"  # PBX → carrier: charged to the profile's credit
    INBOUND = "inbound"  # carrier → PBX, to one of the profile's numbers


class TokenRole(StrEnum):
    """Who an API token speaks for."""

    OPERATOR = "operator"  # every account
    ACCOUNT = "account"  # an account manager: that account only


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every engine.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones and would hand
    back naive datetimes, so values are stored as naive UTC there and made
    aware again on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Money(TypeDecorator[Decimal]):
    """An exact amount of money (:class:`~decimal.Decimal`, 4 decimal places).

    PostgreSQL stores ``NUMERIC(14, 4)``.  SQLite has no exact decimal type:
    its NUMERIC affinity turns 0.1 into a binary float, and arithmetic in SQL
    (charging a call) would drift.  There it is stored as an integer count of
    1/10,000 units, which is exact and still adds up in SQL.
    """

    impl = Numeric(BALANCE_PRECISION, BALANCE_SCALE, asdecimal=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(BALANCE_PRECISION, BALANCE_SCALE, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        quantized = Decimal(value).quantize(Decimal(1).scaleb(-BALANCE_SCALE))
        if quantized != value:
            raise ValueError(f"{value} has more than {BALANCE_SCALE} decimal places")
        if dialect.name == "sqlite":
            return int(quantized.scaleb(BALANCE_SCALE))
        return quantized

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(int(value)).scaleb(-BALANCE_SCALE)
        return Decimal(value).quantize(Decimal(1).scaleb(-BALANCE_SCALE))


class Base(DeclarativeBase):
    """Declarative base carrying the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Account(Base):
    """A business: a credit balance, an e-mail address for credentials, and
    the owner of profiles and numbers."""

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH), unique=True)
    email: Mapped[str] = mapped_column(String(EMAIL_MAX_LENGTH))
    balance: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (CheckConstraint("balance >= 0", name="balance"),)


class Profile(Base):
    """A SIP profile: how its PBX authenticates and how many calls it may hold.

    Every profile gets a generated ``sip_username`` (the digest username of a
    registration profile; an identifier for an IP profile).  A registration
    profile stores its password encrypted (retrievable by the operator) and
    the two HA1 values digest verification uses (RFC 7616 §3.4.2), computed
    for ``realm``; an IP profile stores the address and UDP port it is
    recognised by.
    """

    __tablename__ = "profiles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH))
    auth_mode: Mapped[str] = mapped_column(String(16))
    sip_username: Mapped[str] = mapped_column(String(SIP_USERNAME_MAX_LENGTH), unique=True)
    password_encrypted: Mapped[str | None] = mapped_column(String(PASSWORD_TOKEN_MAX_LENGTH))
    realm: Mapped[str | None] = mapped_column(String(REALM_MAX_LENGTH))
    ha1_md5: Mapped[str | None] = mapped_column(String(HA1_MD5_LENGTH))
    ha1_sha256: Mapped[str | None] = mapped_column(String(HA1_SHA256_LENGTH))
    ip_address: Mapped[str | None] = mapped_column(String(IP_MAX_LENGTH))
    udp_port: Mapped[int | None] = mapped_column(Integer)
    channel_limit: Mapped[int] = mapped_column(Integer, default=MAX_CHANNELS)
    credit: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: Set when its deletion began: the gateways end its calls and drop it
    #: from their directories, their call records are still charged to it,
    #: and only then is it deleted (:func:`gateway.manage.profiles.delete_profile`).
    closing_since: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("account_id", "name"),
        CheckConstraint("credit >= 0", name="credit"),
        # NULLs are distinct in a UNIQUE constraint (SQLite and PostgreSQL),
        # so registration profiles, which have neither, never collide.
        UniqueConstraint("ip_address", "udp_port"),
        # The target of the numbers' composite foreign key.
        UniqueConstraint("id", "account_id"),
        CheckConstraint("auth_mode IN ('registration', 'ip')", name="auth_mode"),
        CheckConstraint(f"channel_limit BETWEEN 1 AND {MAX_CHANNELS}", name="channel_limit"),
        CheckConstraint("udp_port IS NULL OR udp_port BETWEEN 1 AND 65535", name="udp_port"),
        CheckConstraint(
            "(auth_mode = 'ip' AND ip_address IS NOT NULL AND udp_port IS NOT NULL"
            " AND password_encrypted IS NULL AND ha1_md5 IS NULL AND ha1_sha256 IS NULL)"
            " OR (auth_mode = 'registration' AND ip_address IS NULL AND udp_port IS NULL"
            " AND password_encrypted IS NOT NULL AND realm IS NOT NULL"
            " AND ha1_md5 IS NOT NULL AND ha1_sha256 IS NOT NULL)",
            name="credentials",
        ),
    )


class Number(Base):
    """A telephone number (DID) in E.164 form, ``+`` and 8..15 digits.

    It sits in its account's pool (``profile_id`` NULL) or is delivered to one
    profile of the same account; the composite foreign key makes a number of
    one account on another account's profile impossible.  With ``profile_id``
    NULL the composite key is not checked (MATCH SIMPLE, both engines).
    """

    __tablename__ = "numbers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    e164: Mapped[str] = mapped_column(String(E164_MAX_LENGTH), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    profile_id: Mapped[int | None] = mapped_column(Integer, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        ForeignKeyConstraint(
            ["profile_id", "account_id"],
            ["profiles.id", "profiles.account_id"],
            name="fk_numbers_profile_id_account_id_profiles",
        ),
        CheckConstraint(
            f"e164 LIKE '+%' AND length(e164) BETWEEN {E164_MIN_LENGTH} AND {E164_MAX_LENGTH}",
            name="e164",
        ),
    )


class DirectoryVersion(Base):
    """One row (``id`` 1): a counter every change to profiles, credentials or
    numbers increments in the same transaction.  A gateway polls it (one
    primary-key read) and reloads its in-memory directory when it moved."""

    __tablename__ = "directory_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)


#: A node id: host name, process id and a random part (``gateway.manage.nodes``).
NODE_ID_MAX_LENGTH = 128
#: A node's advertised SIP addresses as JSON (``["203.0.113.5:5060", ...]``).
NODE_ADDRESSES_MAX_LENGTH = 2048


class GatewayNode(Base):
    """A gateway running now, as it announced itself: where PBXs reach it
    (``sip_addresses``, a JSON list of ``HOST:PORT``, each serving
    ``transports``) and where local tools reach its HTTP listener.

    Only a running gateway knows those for sure (its listeners bound, its
    command line and ``sip.advertise`` applied), so each node writes its row
    at start, refreshes ``seen_at`` while it runs and deletes the row when it
    stops; a row not refreshed for :data:`gateway.manage.nodes.NODE_TTL` is a node
    that died without saying so."""

    __tablename__ = "gateway_nodes"

    node_id: Mapped[str] = mapped_column(String(NODE_ID_MAX_LENGTH), primary_key=True)
    sip_addresses: Mapped[str] = mapped_column(String(NODE_ADDRESSES_MAX_LENGTH))
    transports: Mapped[str] = mapped_column(String(64))
    http_address: Mapped[str | None] = mapped_column(String(IP_MAX_LENGTH + 8))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


#: A Call-ID is unbounded in RFC 3261; longer ones are cut in call records.
CALL_ID_MAX_LENGTH = 255
#: Caller and callee as the Request-URI user and From user: numbers, mostly.
PARTY_MAX_LENGTH = 128
#: Rate prefixes are E.164 digits without the "+", at most 15.
PREFIX_MAX_LENGTH = 15


class CallRecord(Base):
    """One call through the trunk, written when it ended (a CDR).

    ``record_key`` is unique and chosen by the gateway node that handled
    the call, so a batch written again after a lost commit adds nothing
    twice (and charges nothing twice).  Records go with their profile
    (``ON DELETE CASCADE``): deleting a profile erases its history.
    """

    __tablename__ = "call_records"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    record_key: Mapped[str] = mapped_column(String(32), unique=True)
    profile_id: Mapped[int] = mapped_column(
        ForeignKey("profiles.id", ondelete="CASCADE"), index=True
    )
    call_id: Mapped[str] = mapped_column(String(CALL_ID_MAX_LENGTH))
    direction: Mapped[str] = mapped_column(String(8))
    caller: Mapped[str] = mapped_column(String(PARTY_MAX_LENGTH))
    callee: Mapped[str] = mapped_column(String(PARTY_MAX_LENGTH))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime] = mapped_column(UTCDateTime())
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)  # answered → ended
    final_status: Mapped[int] = mapped_column(Integer)  # the INVITE's final SIP code
    cost: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0))

    __table_args__ = (
        CheckConstraint("direction IN ('outbound', 'inbound')", name="direction"),
        CheckConstraint("duration_ms >= 0", name="duration_ms"),
        CheckConstraint("cost >= 0", name="cost"),
        CheckConstraint("final_status BETWEEN 100 AND 699", name="final_status"),
    )


class Rate(Base):
    """The price of outbound calls to numbers starting with ``prefix``
    (E.164 digits, no "+"), per minute of talk; the longest prefix wins.
    The empty prefix, if present, prices every other destination."""

    __tablename__ = "rates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prefix: Mapped[str] = mapped_column(String(PREFIX_MAX_LENGTH), unique=True)
    price_per_minute: Mapped[Decimal] = mapped_column(Money())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (CheckConstraint("price_per_minute >= 0", name="price_per_minute"),)


class ApiToken(Base):
    """A bearer token of the REST API.  Only its SHA-256 is stored: the
    token itself is shown once, when it is created."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH), unique=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        CheckConstraint(
            "(role = 'operator' AND account_id IS NULL)"
            " OR (role = 'account' AND account_id IS NOT NULL)",
            name="role",
        ),
    )
