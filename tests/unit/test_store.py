"""The store and the management service, on SQLite and on PostgreSQL.

Every test taking the ``store`` fixture runs twice: on a SQLite file in a
temporary directory and on a real PostgreSQL server, in a database created
for this test session and dropped after it (tables emptied before each
test).  Without a reachable PostgreSQL the PostgreSQL half is skipped, or
fails when ``CI`` is set: CI must test what production runs.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
import string
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from cryptography.fernet import Fernet
from sqlalchemy import Connection, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.config.settings import SECRET_KEY_ENV, StoreSettings
from gateway.manage import profiles
from gateway.manage.profiles import ConflictError, NotFoundError, ValidationError
from gateway.store.database import (
    SecretKeyError,
    Store,
    StoreError,
    alembic_config,
    load_secret_key,
)
from gateway.store.models import MAX_CHANNELS, Account, Base, Number, Profile
from sip.auth import Credentials
from sip.digest import DigestRealm, Verified, authorize, ha1
from tests.support.environment import missing

POSTGRES_ADMIN_URL = os.environ.get(
    "SIPGW_TEST_POSTGRES", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
#: A PostgreSQL that does not answer within this is treated as absent.
POSTGRES_CONNECT_TIMEOUT = 5.0
REALM = "sipgw.test"
#: Every table but directory_version, for emptying a shared database.
ALL_TABLES = "api_tokens, call_records, rates, numbers, profiles, accounts"


# ---------------------------------------------------------------------------
# Fixtures (also imported by tests/unit/test_directory.py)


async def _admin(statement: str) -> None:
    engine = create_async_engine(
        POSTGRES_ADMIN_URL,
        isolation_level="AUTOCOMMIT",
        connect_args={"timeout": POSTGRES_CONNECT_TIMEOUT},
    )
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of its own on the PostgreSQL server, for this session."""
    name = f"sipgw_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        missing(f"PostgreSQL at {POSTGRES_ADMIN_URL} is not usable: {exc}")
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def secret_key() -> bytes:
    return Fernet.generate_key()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database URL of each kind."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/store/gateway.sqlite3"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def store(database_url: str, secret_key: bytes) -> AsyncIterator[Store]:
    opened = await Store.open(database_url, secret_key=secret_key, realm=REALM)
    if opened.dialect == "postgresql":  # the session's database is shared: empty it
        async with opened.engine.begin() as connection:
            await connection.execute(text(f"TRUNCATE {ALL_TABLES} RESTART IDENTITY"))
    try:
        yield opened
    finally:
        await opened.close()


# ---------------------------------------------------------------------------
# Schema and migrations


def _differences(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_migration_builds_the_schema_of_the_models(store: Store) -> None:
    async with store.engine.connect() as connection:
        assert await connection.run_sync(_differences) == []
        head = await connection.scalar(text("SELECT version_num FROM alembic_version"))
    assert head == "0003_nodes_and_closing"


def _to_revision(connection: Connection, revision: str) -> None:
    if revision.startswith("-"):
        command.downgrade(alembic_config(connection), revision[1:])
    else:
        command.upgrade(alembic_config(connection), revision)


async def test_an_existing_0001_database_is_upgraded_and_can_go_back(tmp_path: Path) -> None:
    """A gateway's data from the first schema survives 0002: profiles get
    a credit of 0; the downgrade removes what 0002 added."""
    url = f"sqlite+aiosqlite:///{tmp_path}/old.sqlite3"
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(_to_revision, "0001_initial")
        await connection.execute(
            text(
                "INSERT INTO accounts (id, name, email, balance, created_at)"
                " VALUES (1, 'acme', 'ops@acme.example', 50000, '2024-06-01 00:00:00')"
            )
        )
        await connection.execute(
            text(
                "INSERT INTO profiles (id, account_id, name, auth_mode, sip_username,"
                " ip_address, udp_port, channel_limit, created_at) VALUES"
                " (1, 1, 'pbx', 'ip', 'p0000000001', '192.0.2.1', 5060, 300,"
                " '2024-06-01 00:00:00')"
            )
        )
    await engine.dispose()
    async with await Store.open(url, realm=REALM) as store:
        async with store.read() as session:
            profile = await session.scalar(select(Profile))
            assert profile is not None and profile.credit == Decimal(0)
            account = await session.scalar(select(Account))
            assert account is not None and account.balance == Decimal(5)
        async with store.engine.connect() as connection:
            assert await connection.run_sync(_differences) == []
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(_to_revision, "-0001_initial")
        columns = await connection.execute(text("PRAGMA table_info(profiles)"))
        assert "credit" not in {row[1] for row in columns}
        tables = await connection.execute(text("SELECT name FROM sqlite_master"))
        assert "call_records" not in {row[0] for row in tables}
    await engine.dispose()


async def test_opening_again_does_not_migrate_again(store: Store, database_url: str) -> None:
    await profiles.create_account(store, name="acme", email="ops@acme.example")
    async with await Store.open(database_url, realm=REALM) as again:
        assert (await profiles.get_account(again, "acme")).email == "ops@acme.example"


async def test_concurrent_first_opens_of_a_sqlite_file(tmp_path: Path) -> None:
    """A gateway and a CLI command started together on a fresh database: the
    migration lock lets one create the schema; the other finds it."""
    url = f"sqlite+aiosqlite:///{tmp_path}/new/race.sqlite3"
    stores = await asyncio.gather(*(Store.open(url) for _ in range(8)))
    try:
        assert {await s.version() for s in stores} == {0}
        async with stores[0].engine.connect() as connection:
            # WAL: the gateway's reads and the CLI's writes do not block each other.
            assert await connection.scalar(text("PRAGMA journal_mode")) == "wal"
    finally:
        for opened in stores:
            await opened.close()


async def test_sqlite_relative_path_and_parent_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with await Store.open("sqlite+aiosqlite:///var/deep/gw.sqlite3"):
        pass
    assert (tmp_path / "var" / "deep" / "gw.sqlite3").is_file()


async def test_unreachable_database_is_a_one_line_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        await Store.open("postgresql+asyncpg://postgres:hunter2@127.0.0.1:1/none")
    message = str(info.value)
    assert message.startswith("cannot open database postgresql+asyncpg://postgres:***@127.0.0.1:1")
    assert "hunter2" not in message
    assert "\n" not in message
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError):  # the parent "directory" is a file
        await Store.open(f"sqlite+aiosqlite:///{blocker}/gw.sqlite3")


async def test_schema_refuses_what_the_service_refuses(store: Store) -> None:
    """The constraints hold even for a writer that skips the service layer."""
    acme = await profiles.create_account(store, name="acme", email="ops@acme.example")
    await profiles.create_account(store, name="other", email="ops@other.example")
    pbx = await profiles.create_profile(
        store, account="other", name="pbx", auth="ip", ip="192.0.2.1", port=5060
    )

    def ip_profile(**changes: object) -> Profile:
        values: dict[str, object] = {
            "account_id": acme.id,
            "name": "x",
            "auth_mode": "ip",
            "sip_username": "p" + uuid.uuid4().hex[:10],
            "ip_address": "192.0.2.2",
            "udp_port": 5060,
            "channel_limit": 10,
        }
        values.update(changes)
        return Profile(**values)

    bad_rows = [
        ip_profile(channel_limit=MAX_CHANNELS + 1),
        ip_profile(channel_limit=0),
        ip_profile(ip_address="192.0.2.1"),  # the IP:port of "pbx"
        ip_profile(udp_port=0),
        ip_profile(auth_mode="magic"),
        ip_profile(ip_address=None),  # an ip profile without its address
        ip_profile(auth_mode="registration"),  # registration without credentials
    ]
    for row in bad_rows:
        with pytest.raises(IntegrityError):
            async with store.write() as session:
                session.add(row)
    with pytest.raises(IntegrityError):  # acme's number on other's profile
        async with store.write() as session:
            session.add(Number(e164="+441134960000", account_id=acme.id, profile_id=pbx.id))
    with pytest.raises(IntegrityError):
        async with store.write() as session:
            session.add(Number(e164="441134960000", account_id=acme.id))
    with pytest.raises(IntegrityError):
        async with store.write() as session:
            session.add(Account(name="neg", email="a@b.example", balance=Decimal(-1)))
    assert [p.name for p in (await profiles.list_profiles(store)).items] == ["pbx"]


# ---------------------------------------------------------------------------
# Accounts


async def test_account_balance_is_exact(store: Store) -> None:
    for name, amount in [("a", "0.0001"), ("b", "1234567890.9999"), ("c", "25.5")]:
        await profiles.create_account(store, name=name, email=f"{name}@x.example", balance=amount)
        stored = (await profiles.get_account(store, name)).balance
        assert stored == Decimal(amount)
        assert str(stored) == str(Decimal(amount).quantize(Decimal("0.0001")))


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"name": "", "email": "a@b.example"}, "account name"),
        ({"name": "a/b", "email": "a@b.example"}, "account name"),
        ({"name": "x" * 65, "email": "a@b.example"}, "account name"),
        ({"name": "tab\there", "email": "a@b.example"}, "account name"),
        ({"name": "ok", "email": "nobody"}, "e-mail"),
        ({"name": "ok", "email": "a b@c.example"}, "e-mail"),
        ({"name": "ok", "email": "a@b.example", "balance": "-1"}, "zero or more"),
        ({"name": "ok", "email": "a@b.example", "balance": "0.00001"}, "decimal places"),
        ({"name": "ok", "email": "a@b.example", "balance": "ten"}, "amount"),
        ({"name": "ok", "email": "a@b.example", "balance": "NaN"}, "zero or more"),
        ({"name": "ok", "email": "a@b.example", "balance": "1e12"}, "at most"),
    ],
)
async def test_account_validation(store: Store, fields: dict[str, str], problem: str) -> None:
    with pytest.raises(ValidationError) as info:
        await profiles.create_account(store, **fields)
    assert problem in str(info.value)


async def test_account_names_are_unique(store: Store) -> None:
    await profiles.create_account(store, name="acme", email="a@acme.example")
    with pytest.raises(ConflictError, match="already exists"):
        await profiles.create_account(store, name="acme", email="b@acme.example")
    with pytest.raises(NotFoundError, match="no account named 'nope'"):
        await profiles.get_account(store, "nope")


# ---------------------------------------------------------------------------
# Profiles


async def test_registration_profile_credentials(store: Store, secret_key: bytes) -> None:
    await profiles.create_account(store, name="acme", email="ops@acme.example")
    created = await profiles.create_profile(
        store, account="acme", name="sales", auth="registration"
    )
    assert created.auth_mode == "registration"
    assert re.fullmatch(r"p[a-z0-9]{10}", created.sip_username)
    password = created.password
    assert password is not None and len(password) == profiles.PASSWORD_LENGTH
    assert set(password) <= set(string.ascii_letters + string.digits)
    assert created.realm == REALM
    assert created.channel_limit == MAX_CHANNELS
    assert (created.ip, created.port) == (None, None)

    async with store.read() as session:
        row = await session.scalar(select(Profile).where(Profile.id == created.id))
    assert row is not None
    # HA1 = H(username:realm:password), RFC 7616 §3.4.2, for both algorithms.
    assert row.ha1_md5 == ha1(created.sip_username, REALM, password, "MD5")
    assert row.ha1_sha256 == ha1(created.sip_username, REALM, password, "SHA-256")
    assert row.realm == REALM
    # Encrypted at rest, and the plain text appears nowhere in the row.
    assert row.password_encrypted is not None
    assert password not in row.password_encrypted
    assert Fernet(secret_key).decrypt(row.password_encrypted.encode()).decode() == password
    shown = await profiles.get_profile(store, "sales")
    assert shown.password == password
    assert shown.sip_username == created.sip_username

    # The stored HA1 verifies what a PBX answering a challenge sends.
    digest = DigestRealm(REALM, b"k" * 32)
    for index in range(len(profiles.DIGEST_ALGORITHMS)):
        challenge = digest.challenge(now=100.0)[index]  # a fresh nonce each time
        credentials: Credentials = authorize(
            challenge,
            username=created.sip_username,
            password=password,
            method="REGISTER",
            uri="sip:gw.example",
            cnonce="c0ffee",
        )
        algorithm = challenge.algorithm or "MD5"
        stored = row.ha1_md5 if algorithm.startswith("MD5") else row.ha1_sha256
        verdict = digest.verify(credentials, method="REGISTER", ha1=stored, now=101.0)
        assert isinstance(verdict, Verified), (algorithm, verdict)


async def test_passwords_are_random_and_distinct(store: Store) -> None:
    await profiles.create_account(store, name="acme", email="ops@acme.example")
    made = [
        await profiles.create_profile(store, account="acme", name=f"p{i}", auth="registration")
        for i in range(5)
    ]
    assert len({m.password for m in made}) == 5
    assert len({m.sip_username for m in made}) == 5
    for m in made:
        assert m.password is not None
        assert any(c.islower() for c in m.password)
        assert any(c.isupper() for c in m.password)
        assert any(c.isdigit() for c in m.password)


async def test_wrong_or_missing_secret_key(store: Store, database_url: str) -> None:
    await profiles.create_account(store, name="acme", email="ops@acme.example")
    await profiles.create_profile(store, account="acme", name="sales", auth="registration")
    other_key = Fernet.generate_key()
    async with await Store.open(database_url, secret_key=other_key, realm=REALM) as wrong:
        with pytest.raises(SecretKeyError, match="cannot be decrypted"):
            await profiles.get_profile(wrong, "sales")
    async with await Store.open(database_url, realm=REALM) as keyless:
        assert (await profiles.get_profile(keyless, "sales")).password is None
        before = await keyless.version()
        with pytest.raises(SecretKeyError, match="no secret key"):
            await profiles.create_profile(keyless, account="acme", name="x", auth="registration")
        assert await keyless.version() == before  # nothing was written
        ip = await profiles.create_profile(
            keyless, account="acme", name="x", auth="ip", ip="192.0.2.7", port=5060
        )
        assert ip.password is None


async def test_ip_profile(store: Store) -> None:
    await profiles.create_account(store, name="acme", email="ops@acme.example")
    pbx = await profiles.create_profile(
        store, account="acme", name="pbx", auth="ip", ip="::ffff:192.0.2.10", port=5062, channels=12
    )
    assert (pbx.ip, pbx.port, pbx.channel_limit) == ("192.0.2.10", 5062, 12)
    assert pbx.password is None and pbx.realm is None
    v6 = await profiles.create_profile(
        store, account="acme", name="v6", auth="ip", ip="2001:DB8:0:0::1", port=5060
    )
    assert v6.ip == "2001:db8::1"
    # Same IP, another port: another PBX on the same host.
    await profiles.create_profile(
        store, account="acme", name="pbx-b", auth="ip", ip="192.0.2.10", port=5064
    )
    await profiles.create_account(store, name="other", email="ops@other.example")
    # Its own account is told which profile has the address; another
    # account only that it is taken (profile names are their account's).
    with pytest.raises(ConflictError, match=r"192\.0\.2\.10:5062 is already used by profile 'pbx'"):
        await profiles.create_profile(
            store, account="acme", name="twin", auth="ip", ip="192.0.2.10", port=5062
        )
    with pytest.raises(ConflictError) as taken:
        await profiles.create_profile(
            store, account="other", name="thief", auth="ip", ip="192.0.2.10", port=5062
        )
    assert str(taken.value) == "192.0.2.10:5062 is already used"
    with pytest.raises(ConflictError, match=r"\[2001:db8::1\]:5060"):
        await profiles.create_profile(
            store, account="other", name="thief", auth="ip", ip="2001:db8::0:1", port=5060
        )


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"auth": "ip", "ip": "192.0.2.1"}, "needs the PBX's address: ip and port"),
        ({"auth": "ip", "port": 5060}, "needs the PBX's address: ip and port"),
        ({"auth": "ip", "ip": "pbx.example", "port": 5060}, "not an IP address"),
        ({"auth": "ip", "ip": "0.0.0.0", "port": 5060}, "cannot be the source"),
        ({"auth": "ip", "ip": "224.0.0.1", "port": 5060}, "cannot be the source"),
        ({"auth": "ip", "ip": "192.0.2.1", "port": 0}, "port must be 1 to 65535"),
        ({"auth": "ip", "ip": "192.0.2.1", "port": 65536}, "port must be 1 to 65535"),
        ({"auth": "registration", "ip": "192.0.2.1"}, "ip profiles only"),
        ({"auth": "digest"}, "auth must be"),
        ({"auth": "registration", "channels": 0}, "channel_limit must be 1 to 300"),
        ({"auth": "registration", "channels": MAX_CHANNELS + 1}, "channel_limit must be 1 to 300"),
        ({"auth": "registration", "channels": True}, "channel_limit must be 1 to 300"),
        ({"auth": "registration", "name": ""}, "profile name"),
    ],
)
async def test_profile_validation(store: Store, fields: dict[str, object], problem: str) -> None:
    await profiles.create_account(store, name="acme", email="ops@acme.example")
    arguments: dict[str, object] = {"account": "acme", "name": "p"}
    arguments.update(fields)
    with pytest.raises(ValidationError) as info:
        await profiles.create_profile(store, **arguments)  # type: ignore[arg-type]
    assert problem in str(info.value)
    assert (await profiles.list_profiles(store)).items == []


async def test_channel_limit_bounds_accepted(store: Store) -> None:
    await profiles.create_account(store, name="acme", email="ops@acme.example")
    low = await profiles.create_profile(
        store, account="acme", name="low", auth="registration", channels=1
    )
    high = await profiles.create_profile(
        store, account="acme", name="high", auth="registration", channels=MAX_CHANNELS
    )
    assert (low.channel_limit, high.channel_limit) == (1, MAX_CHANNELS)


async def test_profile_names_are_unique_within_an_account(store: Store) -> None:
    await profiles.create_account(store, name="acme", email="ops@acme.example")
    await profiles.create_account(store, name="other", email="ops@other.example")
    await profiles.create_profile(store, account="acme", name="sales", auth="registration")
    with pytest.raises(ConflictError, match="already has a profile named 'sales'"):
        await profiles.create_profile(store, account="acme", name="sales", auth="registration")
    twin = await profiles.create_profile(store, account="other", name="sales", auth="registration")
    with pytest.raises(ValidationError, match=r"several accounts \('acme', 'other'\)"):
        await profiles.get_profile(store, "sales")
    assert (await profiles.get_profile(store, "sales", account="other")).id == twin.id
    with pytest.raises(NotFoundError, match="no profile named 'hr' in account 'acme'"):
        await profiles.get_profile(store, "hr", account="acme")
    with pytest.raises(NotFoundError, match="no account named 'nope'"):
        await profiles.create_profile(store, account="nope", name="x", auth="registration")
    listed = (await profiles.list_profiles(store)).items
    assert [(p.account, p.name) for p in listed] == [("acme", "sales"), ("other", "sales")]
    other = (await profiles.list_profiles(store, account="other")).items
    assert [p.account for p in other] == ["other"]
    with pytest.raises(NotFoundError):
        await profiles.list_profiles(store, account="nope")


# ---------------------------------------------------------------------------
# Numbers


async def test_numbers_are_normalised_and_unique(store: Store) -> None:
    await profiles.create_account(store, name="acme", email="ops@acme.example")
    await profiles.create_account(store, name="other", email="ops@other.example")
    added = await profiles.add_numbers(
        store, account="acme", numbers=["+44 (113) 496-0000", "+44.113.496.0001"]
    )
    assert added == ["+441134960000", "+441134960001"]
    with pytest.raises(ConflictError, match=r"\+441134960001 already exists"):
        await profiles.add_numbers(store, account="other", numbers=["+441134960001"])
    with pytest.raises(ValidationError, match="listed twice"):
        await profiles.add_numbers(store, account="acme", numbers=["+4930123456", "+49 30 123456"])
    # All or nothing: the good number before a taken one is not added.
    with pytest.raises(ConflictError):
        await profiles.add_numbers(
            store, account="acme", numbers=["+441134960002", "+441134960000"]
        )
    with pytest.raises(NotFoundError):
        await profiles.add_numbers(store, account="nope", numbers=["+441134960003"])
    async with store.read() as session:
        stored = (await session.scalars(select(Number.e164).order_by(Number.e164))).all()
    assert stored == ["+441134960000", "+441134960001"]


@pytest.mark.parametrize(
    "number",
    ["441134960000", "+0441134960000", "+1234567", "+1234567890123456", "+44 113 abc", "", "+"],
)
def test_bad_numbers(number: str) -> None:
    with pytest.raises(ValidationError, match=r"not an E\.164 number"):
        profiles.normalise_e164(number)


@pytest.mark.parametrize(
    ("number", "expected"),
    [("+12345678", "+12345678"), ("+123456789012345", "+123456789012345"), (" +1 (2)3 ", None)],
)
def test_number_lengths(number: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(ValidationError):
            profiles.normalise_e164(number)
    else:
        assert profiles.normalise_e164(number) == expected


async def test_number_assignment_rules(store: Store) -> None:
    await profiles.create_account(store, name="acme", email="ops@acme.example")
    await profiles.create_account(store, name="other", email="ops@other.example")
    await profiles.create_profile(store, account="acme", name="sales", auth="registration")
    await profiles.create_profile(
        store, account="acme", name="pbx", auth="ip", ip="192.0.2.1", port=5060
    )
    await profiles.create_profile(store, account="other", name="hr", auth="registration")
    await profiles.add_numbers(store, account="acme", numbers=["+441134960000"])

    assigned = await profiles.assign_number(store, "+44 113 496 0000", profile="sales")
    assert (assigned.e164, assigned.account, assigned.profile) == ("+441134960000", "acme", "sales")
    # Again to the same profile: nothing changes, no error.
    assert (
        await profiles.assign_number(store, "+441134960000", profile="sales")
    ).profile == "sales"
    # A profile of another account is never found for this number.
    with pytest.raises(NotFoundError, match="no profile named 'hr' in account 'acme'"):
        await profiles.assign_number(store, "+441134960000", profile="hr")
    with pytest.raises(ConflictError, match="assigned to profile 'sales'; set move"):
        await profiles.assign_number(store, "+441134960000", profile="pbx")
    moved = await profiles.assign_number(store, "+441134960000", profile="pbx", move=True)
    assert moved.profile == "pbx"
    with pytest.raises(NotFoundError, match=r"no number \+441134960009"):
        await profiles.assign_number(store, "+441134960009", profile="pbx")
    shown = {p.name: p.numbers for p in (await profiles.list_profiles(store, account="acme")).items}
    assert shown == {"pbx": ("+441134960000",), "sales": ()}


# ---------------------------------------------------------------------------
# The directory version


async def test_every_change_bumps_the_version_seen_by_another_store(
    store: Store, database_url: str
) -> None:
    async with await Store.open(database_url, realm=REALM) as observer:
        start = await observer.version()
        await profiles.create_account(store, name="acme", email="ops@acme.example")
        assert await observer.version() == start + 1
        await profiles.create_profile(store, account="acme", name="s", auth="registration")
        await profiles.add_numbers(store, account="acme", numbers=["+441134960000"])
        await profiles.assign_number(store, "+441134960000", profile="s")
        assert await observer.version() == start + 4
        # Refused changes and reads leave it alone.
        with pytest.raises(ConflictError):
            await profiles.create_account(store, name="acme", email="x@y.example")
        await profiles.list_profiles(store)
        assert await observer.version() == start + 4


async def test_a_failed_write_rolls_back_with_its_bump(store: Store) -> None:
    start = await store.version()
    with pytest.raises(RuntimeError):
        async with store.write() as session:
            session.add(Account(name="ghost", email="g@x.example", balance=Decimal(0)))
            await session.flush()
            raise RuntimeError("abort")
    assert await store.version() == start
    with pytest.raises(NotFoundError):
        await profiles.get_account(store, "ghost")


async def test_version_row_missing_is_a_store_error(store: Store) -> None:
    async with store.engine.begin() as connection:
        await connection.execute(text("DELETE FROM directory_version"))
    try:
        with pytest.raises(StoreError, match="directory_version"):
            await store.version()
    finally:
        async with store.engine.begin() as connection:
            await connection.execute(text("INSERT INTO directory_version VALUES (1, 0)"))


async def test_version_increments_atomically_under_concurrent_writers(store: Store) -> None:
    start = await store.version()
    await asyncio.gather(
        *(profiles.create_account(store, name=f"a{i}", email=f"a{i}@x.example") for i in range(10))
    )
    assert await store.version() == start + 10


# ---------------------------------------------------------------------------
# The secret key


def test_secret_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    settings = StoreSettings(secret_key_file=tmp_path / "keys" / "secret.key")
    key = load_secret_key(settings, environ={})
    Fernet(key)
    path = tmp_path / "keys" / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_secret_key(settings, environ={}) == key
    assert [p.name for p in path.parent.iterdir()] == ["secret.key"]  # no temporary left


def test_secret_key_from_the_environment_wins(tmp_path: Path) -> None:
    settings = StoreSettings(secret_key_file=tmp_path / "secret.key")
    key = Fernet.generate_key()
    assert load_secret_key(settings, environ={SECRET_KEY_ENV: key.decode()}) == key
    assert not (tmp_path / "secret.key").exists()


def test_bad_secret_keys(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    path.write_text("not a key\n")
    with pytest.raises(SecretKeyError, match="is not a Fernet key"):
        load_secret_key(StoreSettings(secret_key_file=path), environ={})
    with pytest.raises(SecretKeyError, match=f"{SECRET_KEY_ENV} is not a Fernet key"):
        load_secret_key(StoreSettings(secret_key_file=path), environ={SECRET_KEY_ENV: "short"})
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(SecretKeyError, match=r"cannot read secret key file .*Not a directory"):
        load_secret_key(StoreSettings(secret_key_file=blocker / "secret.key"), environ={})
    # /proc refuses new directories even to root.
    with pytest.raises(SecretKeyError, match="cannot create secret key file"):
        load_secret_key(StoreSettings(secret_key_file=Path("/proc/sipgw/secret.key")), environ={})


def test_concurrent_key_creation_agrees(tmp_path: Path) -> None:
    """Many processes' worth of first uses at once end with one key."""
    import concurrent.futures

    settings = StoreSettings(secret_key_file=tmp_path / "k" / "secret.key")
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        keys = list(pool.map(lambda _: load_secret_key(settings, environ={}), range(16)))
    assert len(set(keys)) == 1
    assert keys[0] == (tmp_path / "k" / "secret.key").read_bytes().strip()


async def test_store_rows_are_plain_after_update(store: Store) -> None:
    """Direct updates through ``write`` are changes too (the version moves)."""
    await profiles.create_account(store, name="acme", email="ops@acme.example")
    before = await store.version()
    async with store.write() as session:
        await session.execute(update(Account).values(email="new@acme.example"))
    assert await store.version() == before + 1
    assert (await profiles.get_account(store, "acme")).email == "new@acme.example"
