"""The call record writer (gateway/billing/cdr.py) against real databases: every
database test runs on a SQLite file and on PostgreSQL.

The outage tests make the database really unavailable in the middle of a
run: PostgreSQL through a TCP proxy that is cut and restored (the shared
server keeps running for the other suites), SQLite by another connection
holding the write lock (BEGIN EXCLUSIVE) with a short busy timeout, so the
writer's transactions fail instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import delete, select
from sqlalchemy.engine import make_url

from gateway.billing.cdr import CallRecordEntry, CallRecordWriter, new_record_key
from gateway.store import database as store_module
from gateway.store.database import Store
from gateway.store.models import CALL_ID_MAX_LENGTH, PARTY_MAX_LENGTH, Account, CallRecord, Profile
from tests.support.tcp_proxy import TcpProxy
from tests.unit import test_store as shared
from tests.unit.test_store import REALM

# The store fixtures of tests/unit/test_store.py (SQLite and PostgreSQL), shared.
postgres_url = shared.postgres_url
database_url = shared.database_url
secret_key = shared.secret_key
store = shared.store

D = Decimal
#: Bound on anything a test waits for (a loaded CI machine is slow).
WAIT_TIMEOUT = 20.0
POLL = 0.01
#: How long the database stays away in the outage tests.
OUTAGE = 2.0
#: SQLite's busy timeout for the writer's store in the outage tests: a held
#: lock fails its transactions quickly instead of being waited out.
SQLITE_SHORT_BUSY_TIMEOUT = 0.2


# ---------------------------------------------------------------------------
# Helpers


def record(
    profile_id: int,
    cost: str = "0",
    *,
    key: str | None = None,
    direction: str = "outbound",
    answered: bool = True,
) -> CallRecordEntry:
    ended = datetime.now(UTC)
    return CallRecordEntry(
        record_key=key or new_record_key(),
        profile_id=profile_id,
        call_id=f"{uuid.uuid4()}@pbx.example",
        direction=direction,
        caller="+441134960000",
        callee="+442079460000",
        started_at=ended - timedelta(seconds=30),
        answered_at=ended - timedelta(seconds=25) if answered else None,
        ended_at=ended,
        duration_ms=25_000 if answered else 0,
        final_status=200 if answered else 486,
        cost=D(cost),
    )


async def make_profiles(store: Store, *credits: str) -> list[int]:
    """An account with one IP profile per credit given; their ids.  Written
    directly (not through gateway.manage.profiles): the writer only needs rows."""
    async with store.write() as session:
        account = Account(name="acme", email="ops@acme.example")
        session.add(account)
        await session.flush()
        rows = [
            Profile(
                account_id=account.id,
                name=f"pbx{index}",
                auth_mode="ip",
                sip_username=f"p{uuid.uuid4().hex[:10]}",
                ip_address=f"192.0.2.{index + 1}",
                udp_port=5060,
                credit=D(credit),
            )
            for index, credit in enumerate(credits)
        ]
        session.add_all(rows)
        await session.flush()
        return [row.id for row in rows]


async def credits(store: Store) -> dict[int, Decimal]:
    async with store.read() as session:
        return {
            row.id: row.credit for row in await session.execute(select(Profile.id, Profile.credit))
        }


async def stored_keys(store: Store) -> list[str]:
    async with store.read() as session:
        return list(await session.scalars(select(CallRecord.record_key)))


async def until(predicate: Callable[[], bool], what: str, timeout: float = WAIT_TIMEOUT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(POLL)


@dataclass
class Commits:
    """What on_commit reported."""

    calls: list[tuple[list[str], int]] = field(default_factory=list)

    def __call__(self, entries: list[CallRecordEntry], version: int) -> None:
        self.calls.append(([e.record_key for e in entries], version))

    @property
    def keys(self) -> list[str]:
        return [key for keys, _ in self.calls for key in keys]


@contextlib.asynccontextmanager
async def running(
    writer: CallRecordWriter, close_timeout: float = WAIT_TIMEOUT
) -> AsyncIterator[asyncio.Task[None]]:
    """The writer's loop as a task; closed (flushed) and awaited on exit."""
    task = asyncio.create_task(writer.run())
    try:
        yield task
    finally:
        await writer.close(close_timeout)
        async with asyncio.timeout(WAIT_TIMEOUT):
            await task


# ---------------------------------------------------------------------------
# The record itself (no database)


def test_a_record_is_cut_and_cleaned_for_the_database() -> None:
    entry = CallRecordEntry(
        record_key="0" * 32,
        profile_id=1,
        call_id="x" * 1000,
        direction="inbound",
        caller="+44\x00113" + "9" * 500,
        callee="\udcff" + "1" * 300,  # a lone surrogate (lenient decoding)
        started_at=datetime(2026, 1, 1, 12, tzinfo=UTC),
        answered_at=None,
        ended_at=datetime(2026, 1, 1, 13, tzinfo=timezone(timedelta(hours=1))),
        duration_ms=0,
        final_status=487,
        cost=D("0"),
    )
    assert len(entry.call_id) == CALL_ID_MAX_LENGTH
    assert len(entry.caller) == len(entry.callee) == PARTY_MAX_LENGTH
    assert "\x00" not in entry.caller
    entry.callee.encode("utf-8")  # encodable now
    assert entry.cost == D("0.0000")
    assert CallRecordEntry.from_json(entry.to_json()) == entry


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"record_key": "ABC"}, "record_key"),
        ({"record_key": "G" * 32}, "record_key"),
        ({"profile_id": 0}, "profile_id"),
        ({"direction": "sideways"}, "direction"),
        ({"started_at": datetime(2026, 1, 1)}, "timezone-aware"),
        ({"answered_at": datetime(2026, 1, 1)}, "timezone-aware"),
        ({"duration_ms": -1}, "duration_ms"),
        ({"duration_ms": 2**31}, "duration_ms"),
        ({"final_status": 99}, "final_status"),
        ({"final_status": 700}, "final_status"),
        ({"cost": D("0.00001")}, "decimal places"),
        ({"cost": D("-1")}, "cost"),
        ({"cost": D("NaN")}, "cost"),
        ({"cost": D("1e12")}, "cost"),
    ],
)
def test_a_record_the_database_would_refuse_is_refused_at_once(
    change: dict[str, object], message: str
) -> None:
    fields = {
        "record_key": new_record_key(),
        "profile_id": 1,
        "call_id": "a@b",
        "direction": "outbound",
        "caller": "1",
        "callee": "2",
        "started_at": datetime.now(UTC),
        "answered_at": None,
        "ended_at": datetime.now(UTC),
        "duration_ms": 0,
        "final_status": 404,
        "cost": D(0),
    }
    fields.update(change)
    with pytest.raises(ValueError, match=message):
        CallRecordEntry(**fields)  # type: ignore[arg-type]


def test_a_spool_line_that_is_not_a_record_is_refused() -> None:
    line = record(1, "0.5000").to_json()
    for broken in (line[:-10], "{}", '{"record_key": 5}', "null"):
        with pytest.raises(ValueError):
            CallRecordEntry.from_json(broken)


# ---------------------------------------------------------------------------
# Writing


async def test_many_submits_are_written_in_few_transactions(store: Store, tmp_path: Path) -> None:
    (pbx,) = await make_profiles(store, "100")
    commits = Commits()
    writer = CallRecordWriter(
        store, spool_path=tmp_path / "spool", batch_size=500, on_commit=commits
    )
    entries = [record(pbx, "0.0100") for _ in range(1_200)]
    for entry in entries:
        writer.submit(entry)
    assert writer.pending == 1_200
    async with running(writer):
        await until(lambda: writer.pending == 0, "the queue to drain")
    assert [len(keys) for keys, _ in commits.calls] == [500, 500, 200]
    assert commits.keys == [e.record_key for e in entries]  # in order
    keys = await stored_keys(store)
    assert sorted(keys) == sorted(e.record_key for e in entries)
    assert (await credits(store))[pbx] == D("88.0000")  # 100 - 1,200 x 0.01
    assert writer.written == 1_200
    assert writer.failures == writer.discarded == writer.spooled == 0
    assert not (tmp_path / "spool").exists()


async def test_records_arriving_together_share_a_transaction(store: Store, tmp_path: Path) -> None:
    (pbx,) = await make_profiles(store, "0")
    commits = Commits()
    writer = CallRecordWriter(
        store, spool_path=None, batch_size=500, flush_interval=0.5, on_commit=commits
    )
    async with running(writer):
        for _ in range(30):
            writer.submit(record(pbx, answered=False))
            await asyncio.sleep(0)
        await until(lambda: writer.written == 30, "30 records written")
    # They trickled in over far less than the flush interval: one batch.
    assert [len(keys) for keys, _ in commits.calls] == [30]


async def test_a_record_written_twice_is_stored_and_charged_once(
    store: Store, tmp_path: Path
) -> None:
    (pbx,) = await make_profiles(store, "10")
    commits = Commits()
    writer = CallRecordWriter(store, spool_path=None, on_commit=commits)
    once = record(pbx, "1.0000")
    writer.submit(once)
    writer.submit(once)  # twice in one batch
    async with running(writer):
        await until(lambda: writer.pending == 0, "the first batch")
        writer.submit(once)  # again, as after a commit whose outcome was unknown
        writer.submit(record(pbx, "2.0000"))
        await until(lambda: writer.pending == 0, "the second batch")
    assert len(await stored_keys(store)) == 2
    assert (await credits(store))[pbx] == D("7.0000")
    # The record found already written is still reported committed.
    assert commits.keys == [once.record_key, once.record_key, commits.keys[2]]


async def test_debits_never_take_the_credit_below_zero(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    rich, poor, empty = await make_profiles(store, "10", "1.5000", "0")
    writer = CallRecordWriter(store, spool_path=None, on_commit=None)
    for entry in (
        record(rich, "3.0000"),
        record(poor, "1.0000"),
        record(poor, "1.0000"),  # together 2.00 against 1.50
        record(empty, "0.0001"),
        record(empty, "0"),
    ):
        writer.submit(entry)
    with caplog.at_level(logging.WARNING, logger="gateway.billing.cdr"):
        async with running(writer):
            await until(lambda: writer.pending == 0, "the batch")
    assert await credits(store) == {rich: D("7.0000"), poor: D("0.0000"), empty: D("0.0000")}
    assert len(await stored_keys(store)) == 5  # every record kept, at its full cost
    async with store.read() as session:
        costs = sorted(await session.scalars(select(CallRecord.cost)))
    assert costs == [D("0"), D("0.0001"), D("1.0000"), D("1.0000"), D("3.0000")]
    clamped = [r.getMessage() for r in caplog.records if "credit set to 0" in r.getMessage()]
    assert len(clamped) == 2
    assert f"profile {poor}: call records cost 2.0000, its credit 1.5000" in clamped[0] + clamped[1]


async def test_records_of_a_deleted_profile_are_discarded(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    kept, gone = await make_profiles(store, "10", "10")
    async with store.write() as session:
        await session.execute(delete(Profile).where(Profile.id == gone))
    commits = Commits()
    writer = CallRecordWriter(store, spool_path=None, on_commit=commits)
    mine = record(kept, "1.0000")
    writer.submit(record(gone, "1.0000"))
    writer.submit(mine)
    writer.submit(record(gone, "0"))
    with caplog.at_level(logging.INFO, logger="gateway.billing.cdr"):
        async with running(writer):
            await until(lambda: writer.pending == 0, "the batch")
    assert await stored_keys(store) == [mine.record_key]
    assert commits.keys == [mine.record_key]
    assert (writer.written, writer.discarded) == (1, 2)
    assert await credits(store) == {kept: D("9.0000")}
    assert any(
        f"2 call records discarded: their profiles are gone (ids {gone})" in r.getMessage()
        for r in caplog.records
    )


async def test_on_commit_reports_the_version_that_holds_the_debit(store: Store) -> None:
    (pbx,) = await make_profiles(store, "10")
    commits = Commits()
    writer = CallRecordWriter(store, spool_path=None, on_commit=commits)
    before = await store.version()
    async with running(writer):
        writer.submit(record(pbx, "1.0000"))
        await until(lambda: len(commits.calls) == 1, "the first commit")
        # A debit bumps the version, so that every node reloads the credit.
        assert commits.calls[0][1] == before + 1 == await store.version()
        writer.submit(record(pbx, "0", answered=False))
        await until(lambda: len(commits.calls) == 2, "the second commit")
        # Nothing debited: no bump, the current version is reported.
        assert commits.calls[1][1] == before + 1 == await store.version()
        async with store.write():  # someone else changes the directory
            pass
        writer.submit(record(pbx, "0.5000"))
        await until(lambda: len(commits.calls) == 3, "the third commit")
        assert commits.calls[2][1] == before + 3 == await store.version()


async def test_a_failing_commit_callback_does_not_rewrite_the_batch(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    (pbx,) = await make_profiles(store, "10")

    def broken(entries: list[CallRecordEntry], version: int) -> None:
        raise RuntimeError("callback bug")

    writer = CallRecordWriter(store, spool_path=None, on_commit=broken)
    writer.submit(record(pbx, "1.0000"))
    with caplog.at_level(logging.ERROR, logger="gateway.billing.cdr"):
        async with running(writer):
            await until(lambda: writer.pending == 0, "the batch")
    assert writer.written == 1
    assert writer.failures == 0
    assert "the commit callback failed" in caplog.text
    assert (await credits(store))[pbx] == D("9.0000")


async def test_close_flushes_everything_without_waiting_for_the_interval(
    store: Store, tmp_path: Path
) -> None:
    (pbx,) = await make_profiles(store, "10")
    writer = CallRecordWriter(
        store, spool_path=tmp_path / "spool", flush_interval=3600, on_commit=None
    )
    task = asyncio.create_task(writer.run())
    entries = [record(pbx, "0.1000") for _ in range(10)]
    await asyncio.sleep(0.05)  # the loop is waiting for more
    for entry in entries:
        writer.submit(entry)
    await writer.close(WAIT_TIMEOUT)
    async with asyncio.timeout(WAIT_TIMEOUT):
        await task
    assert sorted(await stored_keys(store)) == sorted(e.record_key for e in entries)
    assert (await credits(store))[pbx] == D("9.0000")
    assert writer.pending == 0
    assert not (tmp_path / "spool").exists()


async def test_close_without_a_running_loop_flushes_too(store: Store) -> None:
    (pbx,) = await make_profiles(store, "10")
    writer = CallRecordWriter(store, spool_path=None, batch_size=3, on_commit=None)
    entries = [record(pbx, "0.1000") for _ in range(10)]
    for entry in entries:
        writer.submit(entry)
    await writer.close(WAIT_TIMEOUT)
    assert len(await stored_keys(store)) == 10
    assert writer.written == 10


# ---------------------------------------------------------------------------
# The database going away


@dataclass
class Outage:
    """A second store on the test's database that can be made unreachable."""

    store: Store
    cut: Callable[[], Awaitable[None]]
    restore: Callable[[], Awaitable[None]]


@pytest.fixture
async def outage(
    store: Store, database_url: str, secret_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Outage]:
    if store.dialect == "postgresql":
        url = make_url(database_url)
        async with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
            proxied = url.set(host=proxy.host, port=proxy.port).render_as_string(
                hide_password=False
            )
            away = await Store.open(proxied, secret_key=secret_key, realm=REALM)
            try:
                yield Outage(away, proxy.cut, proxy.restore)
            finally:
                await proxy.restore()
                await away.close()
        return
    monkeypatch.setattr(store_module, "SQLITE_BUSY_TIMEOUT", SQLITE_SHORT_BUSY_TIMEOUT)
    away = await Store.open(database_url, secret_key=secret_key, realm=REALM)
    path = make_url(database_url).database
    assert path is not None
    holder: list[sqlite3.Connection] = []

    def lock() -> None:
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        connection.execute("BEGIN EXCLUSIVE")  # waits for the writer's transaction to end
        holder.append(connection)

    def unlock() -> None:
        while holder:
            connection = holder.pop()
            connection.rollback()
            connection.close()

    async def cut() -> None:
        await asyncio.to_thread(lock)

    async def restore() -> None:
        await asyncio.to_thread(unlock)

    try:
        yield Outage(away, cut, restore)
    finally:
        unlock()
        await away.close()


async def test_no_record_is_lost_when_the_database_goes_away_mid_run(
    store: Store, outage: Outage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Records are submitted continuously; the database disappears for
    about two seconds and comes back; every record ends up stored exactly
    once and the credits are debited exactly."""
    first, second = await make_profiles(store, "1000", "1000")
    commits = Commits()
    writer = CallRecordWriter(
        outage.store,
        spool_path=tmp_path / "spool",
        batch_size=50,
        flush_interval=0.05,
        on_commit=commits,
    )
    rng = random.Random(3)
    submitted: list[CallRecordEntry] = []
    during_outage = 0
    away = False
    stop = asyncio.Event()

    async def produce() -> None:
        nonlocal during_outage
        for profile_id in itertools.cycle((first, second)):
            if stop.is_set():
                return
            entry = record(profile_id, f"{rng.randint(0, 5_000) / 10_000:.4f}")
            writer.submit(entry)
            submitted.append(entry)
            during_outage += away
            await asyncio.sleep(0.005)

    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.DEBUG, logger="gateway.billing.cdr"):
        async with running(writer):
            producer = asyncio.create_task(produce())
            await until(lambda: writer.written >= 50, "records flowing before the outage")
            await outage.cut()
            away, cut_at = True, loop.time()
            failures_before = writer.failures
            await until(lambda: writer.failures > failures_before, "a failed attempt")
            await asyncio.sleep(max(0.0, cut_at + OUTAGE - loop.time()))
            written_during = writer.written
            await outage.restore()
            away = False
            await until(lambda: writer.written > written_during + 50, "records flowing again")
            stop.set()
            await producer
            await until(lambda: writer.pending == 0, "the queue to drain")

    assert during_outage > 50  # submitting went on while the database was away
    keys = await stored_keys(store)
    assert len(keys) == len(submitted)
    assert set(keys) == {e.record_key for e in submitted}
    spent = {first: D(0), second: D(0)}
    for entry in submitted:
        spent[entry.profile_id] += entry.cost
    assert await credits(store) == {first: D(1000) - spent[first], second: D(1000) - spent[second]}
    assert writer.written == len(submitted)
    assert writer.failures >= 1
    assert writer.discarded == writer.spooled == writer.pending == 0
    assert not (tmp_path / "spool").exists()
    # Every record reported committed once at least, in order of submission.
    assert list(dict.fromkeys(commits.keys)) == [e.record_key for e in submitted]
    # The outage is logged once at warning, the retries at debug, the return at info.
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    warnings = [m for level, m in messages if level == logging.WARNING]
    assert len(warnings) == 1 and "call records not written" in warnings[0], warnings
    assert any(level == logging.INFO and "the store answers again" in m for level, m in messages)


async def test_close_spools_what_the_absent_database_did_not_take(
    store: Store, outage: Outage, tmp_path: Path
) -> None:
    """Shut down while the database is away: the records go to the spool
    file, and the next run writes them (and only then deletes the file)."""
    (pbx,) = await make_profiles(store, "100")
    spool = tmp_path / "cdr" / "spool.jsonl"
    await outage.cut()
    writer = CallRecordWriter(outage.store, spool_path=spool, on_commit=None)
    entries = [record(pbx, "1.0000") for _ in range(20)]
    async with running(writer, close_timeout=0.5):
        for entry in entries:
            writer.submit(entry)
        await until(lambda: writer.failures > 0, "a failed attempt")
    assert writer.spooled == 20
    assert writer.pending == 0
    late = record(pbx, "1.0000")
    writer.submit(late)  # a call that ended after close: straight to the spool
    entries.append(late)
    assert writer.spooled == 21
    lines = spool.read_text().splitlines()
    assert [CallRecordEntry.from_json(line) for line in lines] == entries

    # The next start reads them back, but the database is still away: they
    # are spooled again, once each (the file replaced, not appended to).
    again = CallRecordWriter(outage.store, spool_path=spool, on_commit=None)
    assert await again.load_spool() == 21
    assert await again.load_spool() == 0  # read once
    await again.close(0.3)
    assert spool.read_text().splitlines() == lines

    await outage.restore()
    commits = Commits()
    final = CallRecordWriter(outage.store, spool_path=spool, on_commit=commits)
    final.submit(fresh := record(pbx, "1.0000"))
    assert await final.load_spool() == 21
    async with running(final):
        await until(lambda: final.pending == 0, "the spooled records")
    assert commits.keys == [e.record_key for e in entries] + [fresh.record_key]  # spool first
    assert not spool.exists()  # everything it held is in the database
    assert sorted(await stored_keys(store)) == sorted(e.record_key for e in [*entries, fresh])
    assert (await credits(store))[pbx] == D("78.0000")  # 100 - 22 x 1.00


async def test_an_unreadable_spool_line_is_kept_aside(store: Store, tmp_path: Path) -> None:
    (pbx,) = await make_profiles(store, "10")
    spool = tmp_path / "spool.jsonl"
    good = record(pbx, "1.0000")
    spool.write_text(good.to_json() + "\n" + good.to_json()[:40] + "\n")  # a torn last line
    writer = CallRecordWriter(store, spool_path=spool, on_commit=None)
    assert await writer.load_spool() == 1
    await writer.close(WAIT_TIMEOUT)
    assert await stored_keys(store) == [good.record_key]
    assert not spool.exists()
    assert (tmp_path / "spool.jsonl.rejected").read_text() == good.to_json()[:40] + "\n"


async def test_a_spool_left_by_an_earlier_run_is_appended_to_until_loaded(
    store: Store, outage: Outage, tmp_path: Path
) -> None:
    (pbx,) = await make_profiles(store, "10")
    spool = tmp_path / "spool.jsonl"
    earlier = record(pbx, "1.0000")
    spool.write_text(earlier.to_json() + "\n")
    await outage.cut()
    writer = CallRecordWriter(outage.store, spool_path=spool, on_commit=None)
    now = record(pbx, "1.0000")
    writer.submit(now)
    await writer.close(0.3)  # load_spool was never called: the earlier line stays
    assert [CallRecordEntry.from_json(x) for x in spool.read_text().splitlines()] == [earlier, now]
    await outage.restore()
