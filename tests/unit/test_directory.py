"""The in-memory profile directory: lookups, loading, and the watcher that
notices changes made through another store (the CLI's, another node's)."""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from gateway.manage import profiles
from gateway.proxy.directory import Directory, ProfileEntry
from gateway.store.database import Store
from gateway.web.directory import load_directory, watch_directory
from sip.digest import ha1
from tests.unit import test_store as shared
from tests.unit.test_store import REALM

# The store fixtures of tests/unit/test_store.py (SQLite and PostgreSQL), shared.
postgres_url = shared.postgres_url
database_url = shared.database_url
secret_key = shared.secret_key
store = shared.store

#: Generous bound for a watcher polling every WATCH_INTERVAL to react.
WATCH_TIMEOUT = 10.0
WATCH_INTERVAL = 0.05


def entry(
    profile_id: int,
    *,
    auth_mode: str = "ip",
    ip: str | None = None,
    port: int | None = None,
    username: str | None = None,
) -> ProfileEntry:
    return ProfileEntry(
        id=profile_id,
        account_id=1,
        name=f"profile{profile_id}",
        auth_mode=auth_mode,
        sip_username=username or f"p{profile_id:010d}",
        ha1=types.MappingProxyType({"MD5": "0" * 32} if auth_mode == "registration" else {}),
        ip=ip,
        port=port,
        channel_limit=300,
    )


@pytest.fixture
def directory() -> Directory:
    return Directory(
        [
            entry(1, auth_mode="registration", username="palice00001"),
            entry(2, ip="192.0.2.10", port=5060),
            entry(3, ip="192.0.2.20", port=5060),
            entry(4, ip="192.0.2.20", port=5070),  # shares its IP with 3
            entry(5, ip="2001:db8::5", port=5060),
        ],
        {"+441134960000": 1, "+441134960001": 2, "+441134960099": 99},
        version=7,
    )


# ---------------------------------------------------------------------------
# Lookups


def test_by_username(directory: Directory) -> None:
    found = directory.by_username("palice00001")
    assert found is not None and found.id == 1
    assert directory.by_username("PALICE00001") is None  # RFC 7616: exact match
    assert directory.by_username("p0000000002") is None  # an IP profile's username
    assert directory.by_username("") is None


def test_by_source_udp_needs_ip_and_port(directory: Directory) -> None:
    found = directory.by_source("UDP", "192.0.2.10", 5060)
    assert found is not None and found.id == 2
    assert directory.by_source("udp", "192.0.2.10", 5060) == found
    assert directory.by_source("UDP", "192.0.2.10", 5061) is None
    assert directory.by_source("UDP", "192.0.2.11", 5060) is None
    three, four = (
        directory.by_source("UDP", "192.0.2.20", 5060),
        directory.by_source("UDP", "192.0.2.20", 5070),
    )
    assert three is not None and four is not None and (three.id, four.id) == (3, 4)


def test_by_source_normalises_addresses(directory: Directory) -> None:
    mapped = directory.by_source("UDP", "::ffff:192.0.2.10", 5060)
    assert mapped is not None and mapped.id == 2
    v6 = directory.by_source("UDP", "2001:DB8:0::5", 5060)
    assert v6 is not None and v6.id == 5
    assert directory.by_source("UDP", "not-an-ip", 5060) is None


def test_by_source_tcp_matches_the_ip_only_when_unambiguous(directory: Directory) -> None:
    found = directory.by_source("TCP", "192.0.2.10", 49152)  # an ephemeral port
    assert found is not None and found.id == 2
    tls = directory.by_source("tls", "::ffff:192.0.2.10", 1)
    assert tls is not None and tls.id == 2
    # Two profiles share 192.0.2.20: over TCP nobody can tell which one.
    assert directory.by_source("TCP", "192.0.2.20", 5060) is None
    assert directory.by_source("TCP", "192.0.2.99", 5060) is None
    assert directory.by_source("SCTP-ish", "192.0.2.10", 5060) is None


def test_by_number_with_or_without_plus(directory: Directory) -> None:
    for spelling in ("+441134960000", "441134960000", "+44 113 496-0000", "(44) 113.496.0000"):
        found = directory.by_number(spelling)
        assert found is not None and found.id == 1, spelling
    found = directory.by_number("441134960001")
    assert found is not None and found.id == 2
    assert directory.by_number("+441134960002") is None  # not in the directory
    assert directory.by_number("+441134960099") is None  # assigned to an unknown profile
    assert directory.by_number("") is None


def test_profile_by_id_and_iteration(directory: Directory) -> None:
    assert len(directory) == 5
    assert directory.version == 7
    assert sorted(e.id for e in directory.profiles()) == [1, 2, 3, 4, 5]
    one = directory.profile(1)
    assert one is not None and one.name == "profile1"
    assert directory.profile(42) is None
    empty = Directory()
    assert len(empty) == 0 and empty.version == 0 and empty.by_number("+441134960000") is None


def test_entries_are_immutable(directory: Directory) -> None:
    found = directory.profile(1)
    assert found is not None
    with pytest.raises(AttributeError):
        found.channel_limit = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        found.ha1["MD5"] = "x"  # type: ignore[index]


# ---------------------------------------------------------------------------
# Loading from the store


async def populate(store: Store) -> tuple[profiles.ProfileView, profiles.ProfileView]:
    await profiles.create_account(store, name="acme", email="ops@acme.example")
    sales = await profiles.create_profile(
        store, account="acme", name="sales", auth="registration", channels=30
    )
    pbx = await profiles.create_profile(
        store, account="acme", name="pbx", auth="ip", ip="192.0.2.10", port=5080
    )
    await profiles.add_numbers(
        store, account="acme", numbers=["+441134960000", "+441134960001", "+441134960002"]
    )
    await profiles.assign_number(store, "+441134960000", profile="sales")
    await profiles.assign_number(store, "+441134960001", profile="pbx")
    return sales, pbx


async def test_load_directory(store: Store) -> None:
    sales, pbx = await populate(store)
    directory = await load_directory(store)
    assert directory.version == await store.version()
    assert len(directory) == 2
    found = directory.by_username(sales.sip_username)
    assert found is not None
    assert (found.id, found.name, found.auth_mode, found.channel_limit) == (
        sales.id,
        "sales",
        "registration",
        30,
    )
    assert sales.password is not None
    assert dict(found.ha1) == {
        "MD5": ha1(sales.sip_username, REALM, sales.password, "MD5"),
        "SHA-256": ha1(sales.sip_username, REALM, sales.password, "SHA-256"),
    }
    by_ip = directory.by_source("UDP", "192.0.2.10", 5080)
    assert by_ip is not None and by_ip.id == pbx.id and dict(by_ip.ha1) == {}
    assert directory.by_username(pbx.sip_username) is None
    assert directory.by_number("+441134960000") == found
    assert directory.by_number("441134960001") == by_ip
    assert directory.by_number("+441134960002") is None  # in the pool, not assigned


async def test_a_changed_realm_recomputes_ha1_from_the_password(
    store: Store, database_url: str, secret_key: bytes
) -> None:
    sales, _ = await populate(store)
    assert sales.password is not None
    async with await Store.open(database_url, secret_key=secret_key, realm="new.realm") as moved:
        found = (await load_directory(moved)).by_username(sales.sip_username)
    assert found is not None
    assert found.ha1["SHA-256"] == ha1(sales.sip_username, "new.realm", sales.password, "SHA-256")
    assert found.ha1["MD5"] == ha1(sales.sip_username, "new.realm", sales.password, "MD5")


async def test_a_changed_realm_without_the_key_is_reported(
    store: Store, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    sales, _ = await populate(store)
    async with await Store.open(database_url, realm="new.realm") as keyless:
        with caplog.at_level(logging.WARNING, logger="gateway.web.directory"):
            found = (await load_directory(keyless)).by_username(sales.sip_username)
    assert found is not None
    assert sales.password is not None
    assert found.ha1["MD5"] == ha1(sales.sip_username, REALM, sales.password, "MD5")  # kept
    assert "cannot authenticate" in caplog.text


# ---------------------------------------------------------------------------
# The watcher


@pytest.fixture
async def watched(
    store: Store,
) -> AsyncIterator[tuple[asyncio.Queue[Directory], Directory]]:
    """A watcher on ``store`` that queues every directory it applies."""
    initial = await load_directory(store)
    applied: asyncio.Queue[Directory] = asyncio.Queue()
    task = asyncio.create_task(
        watch_directory(store, applied.put_nowait, WATCH_INTERVAL, current=initial.version)
    )
    try:
        yield applied, initial
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_watcher_applies_a_change_made_through_another_store(
    watched: tuple[asyncio.Queue[Directory], Directory],
    database_url: str,
    secret_key: bytes,
) -> None:
    applied, initial = watched
    assert len(initial) == 0
    async with await Store.open(database_url, secret_key=secret_key, realm=REALM) as cli:
        await profiles.create_account(cli, name="acme", email="ops@acme.example")
        created = await profiles.create_profile(cli, account="acme", name="s", auth="registration")
        # Two changes may arrive as one reload or two; wait for the profile.
        deadline = asyncio.get_running_loop().time() + WATCH_TIMEOUT
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            directory = await asyncio.wait_for(applied.get(), max(remaining, 0.001))
            if directory.by_username(created.sip_username) is not None:
                break
        assert directory.version == await cli.version()
    # Nothing changes: nothing more is applied.
    await asyncio.sleep(WATCH_INTERVAL * 5)
    assert applied.empty()


async def test_watcher_survives_a_database_error(
    store: Store,
    watched: tuple[asyncio.Queue[Directory], Directory],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The version table disappears for a while (a real database error on
    every poll); the watcher logs once, keeps polling, and applies the
    change once the table is back."""
    applied, _ = watched
    with caplog.at_level(logging.DEBUG, logger="gateway.web.directory"):
        async with store.engine.begin() as connection:
            await connection.execute(text("ALTER TABLE directory_version RENAME TO dv_away"))
        await asyncio.sleep(WATCH_INTERVAL * 6)  # several failing polls
        async with store.engine.begin() as connection:
            await connection.execute(text("ALTER TABLE dv_away RENAME TO directory_version"))
        await profiles.create_account(store, name="acme", email="ops@acme.example")
        directory = await asyncio.wait_for(applied.get(), WATCH_TIMEOUT)
    assert directory.version == await store.version()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "not refreshed" in warnings[0].getMessage()
    assert any("answers again" in r.getMessage() for r in caplog.records)


async def test_watcher_retries_when_apply_fails(store: Store) -> None:
    calls: list[int] = []

    def apply(directory: Directory) -> None:
        calls.append(directory.version)
        if len(calls) == 1:
            raise RuntimeError("router not ready")

    task = asyncio.create_task(watch_directory(store, apply, WATCH_INTERVAL))
    try:
        async with asyncio.timeout(WATCH_TIMEOUT):
            while len(calls) < 2:
                await asyncio.sleep(WATCH_INTERVAL)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert calls[0] == calls[1] == await store.version()  # the same version, applied again


async def test_waking_the_watcher_reloads_at_once(store: Store) -> None:
    """With an hour between polls, a change is still applied as soon as the
    watcher is woken (what the REST API does after each change)."""
    applied: asyncio.Queue[Directory] = asyncio.Queue()
    wake = asyncio.Event()
    initial = await load_directory(store)
    task = asyncio.create_task(
        watch_directory(store, applied.put_nowait, 3600.0, current=initial.version, wake=wake)
    )
    try:
        await asyncio.sleep(0.1)  # the first check has run: it now waits an hour
        await profiles.create_account(store, name="acme", email="ops@acme.example")
        assert applied.empty()
        wake.set()
        directory = await asyncio.wait_for(applied.get(), WATCH_TIMEOUT)
        assert directory.version > initial.version
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
