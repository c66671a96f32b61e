"""Call records (CDRs): the entry a finished call leaves, and the background
writer that puts them in the database without ever losing one.

The hot path never waits on the database: the call router hands a
:class:`CallRecordEntry` to :meth:`CallRecordWriter.submit`, which only
appends it to a queue in memory.  :meth:`CallRecordWriter.run` writes the
queue in batches, one transaction per batch, and charges each outbound
call's cost to its profile's credit in the same transaction, so that a
record and its debit exist together or not at all.

Never losing a record:

* a batch that fails (database away, connection dropped, locked, too slow)
  stays at the head of the queue, in order, and is tried again after a
  pause that doubles from :data:`BACKOFF_INITIAL` to :data:`BACKOFF_MAX`;
* a batch written again after a commit whose outcome was unknown adds
  nothing twice: ``record_key`` is unique and the insert skips keys already
  there (``ON CONFLICT DO NOTHING``), and only rows really inserted are
  charged;
* at shutdown :meth:`CallRecordWriter.close` keeps trying until its
  deadline, then appends what is left to a spool file (JSON lines, fsync'd),
  which :meth:`CallRecordWriter.load_spool` puts back in the queue at the
  next start.  The spool file is deleted only once every record read from
  it is in the database.

A record whose profile no longer exists is discarded: deleting a profile
erases its history by design (``ON DELETE CASCADE`` on the table).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from sqlalchemy import case, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.store.database import Store
from gateway.store.models import (
    BALANCE_SCALE,
    CALL_ID_MAX_LENGTH,
    MAX_BALANCE,
    PARTY_MAX_LENGTH,
    Base,
    Direction,
    Money,
)

__all__ = [
    "ATTEMPT_TIMEOUT",
    "BACKOFF_INITIAL",
    "BACKOFF_MAX",
    "CallRecordEntry",
    "CallRecordWriter",
    "new_record_key",
]

logger = logging.getLogger(__name__)

#: First pause after a failed batch; it doubles on each further failure.
BACKOFF_INITIAL = 0.2
#: Longest pause between attempts while the database is away: short enough
#: that records flow again within seconds of its return.
BACKOFF_MAX = 5.0
#: One attempt at one batch.  Longer than SQLite's busy timeout
#: (``gateway.store.database.SQLITE_BUSY_TIMEOUT``, 10 s) so that waiting for another
#: process's lock is not mistaken for an outage; short enough that a
#: connection lost without a reset (a silent network) is given up on.
ATTEMPT_TIMEOUT = 30.0
#: Rows per INSERT statement: 12 parameters a row stays well below the
#: 32,767 bind parameters of asyncpg and of SQLite (3.32+).
INSERT_ROWS = 1000
#: ``integer`` columns (duration_ms) hold at most 2**31 - 1: 24.8 days.
INTEGER_MAX = 2**31 - 1

_RECORD_KEY = re.compile(r"[0-9a-f]{32}")
_MONEY_STEP = Decimal(1).scaleb(-BALANCE_SCALE)
_DIRECTIONS = frozenset(d.value for d in Direction)

_records = Base.metadata.tables["call_records"]
_profiles = Base.metadata.tables["profiles"]
_directory_version = Base.metadata.tables["directory_version"]


def new_record_key() -> str:
    """A fresh record key: 128 random bits as 32 hex digits, unique across
    nodes without coordination."""
    return secrets.token_hex(16)


def _party(text: str, limit: int) -> str:
    """Text a database column accepts: valid UTF-8 (lone surrogates from a
    lenient decoder replaced), no NUL (PostgreSQL refuses it in text), at
    most ``limit`` characters."""
    clean = text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
    return clean[:limit]


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value


# ---------------------------------------------------------------------------
# The record


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRecordEntry:
    """One call attempt, as the router saw it end.

    Validated and normalised on construction (a record the database would
    refuse must never reach the writer's queue, where it would block every
    record behind it): ``call_id`` is cut to
    :data:`~gateway.store.models.CALL_ID_MAX_LENGTH`, ``caller`` and ``callee`` to
    :data:`~gateway.store.models.PARTY_MAX_LENGTH`; timestamps must be
    timezone-aware; ``cost`` has at most 4 decimal places.
    """

    record_key: str
    profile_id: int
    call_id: str
    direction: str
    caller: str
    callee: str
    started_at: datetime
    answered_at: datetime | None
    ended_at: datetime
    duration_ms: int
    final_status: int
    cost: Decimal

    def __post_init__(self) -> None:
        if not _RECORD_KEY.fullmatch(self.record_key):
            raise ValueError(f"record_key must be 32 lowercase hex digits, got {self.record_key!r}")
        if not 1 <= self.profile_id <= INTEGER_MAX:
            raise ValueError(f"profile_id {self.profile_id} out of range")
        if self.direction not in _DIRECTIONS:
            raise ValueError(f"direction must be 'outbound' or 'inbound', got {self.direction!r}")
        object.__setattr__(self, "direction", str(self.direction))  # a Direction → its value
        object.__setattr__(self, "call_id", _party(self.call_id, CALL_ID_MAX_LENGTH))
        object.__setattr__(self, "caller", _party(self.caller, PARTY_MAX_LENGTH))
        object.__setattr__(self, "callee", _party(self.callee, PARTY_MAX_LENGTH))
        _aware(self.started_at, "started_at")
        _aware(self.ended_at, "ended_at")
        if self.answered_at is not None:
            _aware(self.answered_at, "answered_at")
        if not 0 <= self.duration_ms <= INTEGER_MAX:
            raise ValueError(f"duration_ms {self.duration_ms} out of range")
        if not 100 <= self.final_status <= 699:
            raise ValueError(f"final_status {self.final_status} is not a SIP final status")
        cost = Decimal(self.cost)
        if not cost.is_finite() or not 0 <= cost <= MAX_BALANCE:
            raise ValueError(f"cost {self.cost} out of range")
        quantized = cost.quantize(_MONEY_STEP)
        if quantized != cost:
            raise ValueError(f"cost {self.cost} has more than {BALANCE_SCALE} decimal places")
        object.__setattr__(self, "cost", quantized)

    def row(self) -> dict[str, Any]:
        """The ``call_records`` row (without its id)."""
        return {
            "record_key": self.record_key,
            "profile_id": self.profile_id,
            "call_id": self.call_id,
            "direction": self.direction,
            "caller": self.caller,
            "callee": self.callee,
            "started_at": self.started_at,
            "answered_at": self.answered_at,
            "ended_at": self.ended_at,
            "duration_ms": self.duration_ms,
            "final_status": self.final_status,
            "cost": self.cost,
        }

    def to_json(self) -> str:
        """One spool line: ISO 8601 timestamps, the cost as a string (exact)."""
        document = self.row()
        for name in ("started_at", "answered_at", "ended_at"):
            value = document[name]
            document[name] = None if value is None else value.isoformat()
        document["cost"] = str(self.cost)
        return json.dumps(document, ensure_ascii=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> CallRecordEntry:
        """The entry back from :meth:`to_json`; ValueError if it is not one."""
        try:
            document = json.loads(line)
            answered = document["answered_at"]
            return cls(
                record_key=document["record_key"],
                profile_id=int(document["profile_id"]),
                call_id=document["call_id"],
                direction=document["direction"],
                caller=document["caller"],
                callee=document["callee"],
                started_at=datetime.fromisoformat(document["started_at"]),
                answered_at=None if answered is None else datetime.fromisoformat(answered),
                ended_at=datetime.fromisoformat(document["ended_at"]),
                duration_ms=int(document["duration_ms"]),
                final_status=int(document["final_status"]),
                cost=Decimal(document["cost"]),
            )
        except (KeyError, TypeError, AttributeError, InvalidOperation) as exc:
            raise ValueError(f"not a call record: {exc!r}") from None


# ---------------------------------------------------------------------------
# The writer


@dataclass(frozen=True, slots=True)
class _Committed:
    kept: list[CallRecordEntry]  # in the database now (inserted or found there)
    inserted: int
    discarded: list[CallRecordEntry]  # their profile is gone
    version: int


def _describe(exc: BaseException) -> str:
    """The first line of a driver error (without SQLAlchemy's background
    link), or the exception's type when it has no message (a timeout)."""
    origin = getattr(exc, "orig", None) or exc
    lines = str(origin).strip().splitlines()
    return lines[0] if lines else type(origin).__name__


def _fsync_directory(path: Path) -> None:
    """Make a created or renamed file's directory entry durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CallRecordWriter:
    """The background writer of call records (see the module docstring).

    Counters for operators: ``written`` (records confirmed in the database,
    including ones a retried batch found already there), ``discarded``
    (profile gone), ``pending`` (waiting in memory), ``failures`` (failed
    attempts), ``spooled`` (records put in the spool file).
    """

    def __init__(
        self,
        store: Store,
        *,
        spool_path: Path | None,
        batch_size: int = 500,
        flush_interval: float = 0.5,
        on_commit: Callable[[list[CallRecordEntry], int], None] | None,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._store = store
        self._spool_path = spool_path
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._insert_statement: Any = None  # built for the store's dialect at first use
        self._on_commit = on_commit
        self._attempt_timeout = attempt_timeout
        self._queue: deque[CallRecordEntry] = deque()
        self._in_flight: list[CallRecordEntry] = []
        self._wakeup = asyncio.Event()  # the queue became worth looking at
        self._closing = asyncio.Event()
        self._closed = False
        self._runner: asyncio.Task[None] | None = None
        self._backoff = BACKOFF_INITIAL
        self._failing = False
        #: Keys read back from the spool file and not yet in the database;
        #: None when the file is not ours to delete.
        self._spooled_keys: set[str] | None = None
        self.written = 0
        self.discarded = 0
        self.failures = 0
        self.spooled = 0

    @property
    def pending(self) -> int:
        """Records not yet in the database (nor in the spool file)."""
        return len(self._queue) + len(self._in_flight)

    def pending_by_profile(self) -> Counter[int]:
        """:attr:`pending` per profile id: a profile being deleted waits
        for its records to be written, and charged, first."""
        return Counter(entry.profile_id for entry in (*self._in_flight, *self._queue))

    # -- the hot path -----------------------------------------------------------
    def submit(self, entry: CallRecordEntry) -> None:
        """Queue a record; never blocks, never raises, never drops.  After
        :meth:`close` a record goes straight to the spool file (a call that
        ended during shutdown)."""
        try:
            if self._closed:
                self._spool([entry])
                return
            self._queue.append(entry)
            size = len(self._queue)
            if size == 1 or size >= self._batch_size:
                self._wakeup.set()
        except Exception:  # pragma: no cover - appending to a deque does not fail
            logger.exception("call record %s not queued: %s", entry.record_key, entry.to_json())

    # -- the background loop ----------------------------------------------------
    async def run(self) -> None:
        """Write the queue in batches until :meth:`close` (or cancellation).
        A record waits at most ``flush_interval`` for others to share its
        transaction, unless ``batch_size`` of them are ready sooner.

        Cancelling the task puts the batch in progress back in the queue;
        :meth:`close` is what flushes (and spools) it, so call it in any
        case at shutdown."""
        if self._runner is not None:
            raise RuntimeError("the call record writer is already running")
        self._runner = asyncio.current_task()
        try:
            while not self._closing.is_set():
                if not self._queue:
                    await self._wait(None)
                    continue
                if len(self._queue) < self._batch_size:
                    await self._gather()
                    if self._closing.is_set():
                        break
                if not await self._flush_once(self._attempt_timeout):
                    await self._pause(self._next_backoff())
        finally:
            self._runner = None

    async def _wait(self, timeout: float | None) -> None:
        """Until a submit wakes the loop, close is called, or ``timeout``."""
        self._wakeup.clear()
        waiters = {
            asyncio.ensure_future(self._wakeup.wait()),
            asyncio.ensure_future(self._closing.wait()),
        }
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _gather(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._flush_interval
        while len(self._queue) < self._batch_size and not self._closing.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await self._wait(remaining)

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` between attempts; close cuts it short."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), delay)

    def _next_backoff(self) -> float:
        delay = self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        return delay

    async def _flush_once(self, timeout: float) -> bool:
        """One attempt at the batch at the head of the queue; True if it
        committed.  On failure the batch goes back to the head, in order."""
        batch = [self._queue.popleft() for _ in range(min(self._batch_size, len(self._queue)))]
        self._in_flight = batch
        try:
            async with asyncio.timeout(timeout):
                outcome = await self._write(batch)
        except BaseException as exc:
            self._in_flight = []
            self._queue.extendleft(reversed(batch))
            if not isinstance(exc, Exception):
                raise  # cancelled: the batch is back in the queue
            self._failed(exc)
            return False
        self._in_flight = []
        self._succeeded(outcome)
        return True

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        level = logging.DEBUG if self._failing else logging.WARNING
        logger.log(
            level,
            "call records not written (%d waiting), retrying: %s",
            self.pending,
            _describe(exc),
        )
        self._failing = True

    def _succeeded(self, outcome: _Committed) -> None:
        self._backoff = BACKOFF_INITIAL
        if self._failing:
            logger.info("call records: the store answers again (%d waiting)", self.pending)
            self._failing = False
        self.written += len(outcome.kept)
        if outcome.discarded:
            self.discarded += len(outcome.discarded)
            logger.info(
                "%d call records discarded: their profiles are gone (ids %s)",
                len(outcome.discarded),
                ", ".join(str(i) for i in sorted({e.profile_id for e in outcome.discarded})),
            )
        self._forget_spooled(outcome.kept, outcome.discarded)
        if outcome.kept and self._on_commit is not None:
            try:
                self._on_commit(outcome.kept, outcome.version)
            except Exception:
                logger.exception("call records: the commit callback failed")

    # -- one transaction --------------------------------------------------------
    async def _write(self, batch: Sequence[CallRecordEntry]) -> _Committed:
        """Write ``batch`` in one transaction: keep the records whose profile
        exists, insert those not written yet, debit what the inserted ones
        cost, and bump the directory version if anything was debited (so
        every node reloads the credit).  Store.write's own bump does not say
        which version it produced, so the bump is done here, with
        ``bump=False``, and read back with RETURNING."""
        unique: dict[str, CallRecordEntry] = {}
        for entry in batch:
            unique.setdefault(entry.record_key, entry)  # the same record twice in one batch
        entries = list(unique.values())
        async with self._store.write(bump=False) as session:
            credits = await self._lock_profiles(session, {e.profile_id for e in entries})
            kept = [e for e in entries if e.profile_id in credits]
            discarded = [e for e in entries if e.profile_id not in credits]
            inserted: set[str] = set()
            for start in range(0, len(kept), INSERT_ROWS):
                inserted.update(await self._insert(session, kept[start : start + INSERT_ROWS]))
            debits: dict[int, Decimal] = {}
            for entry in kept:
                if entry.record_key in inserted and entry.cost > 0:
                    debits[entry.profile_id] = debits.get(entry.profile_id, Decimal(0)) + entry.cost
            for profile_id in sorted(debits):
                await self._debit(session, profile_id, credits[profile_id], debits[profile_id])
            if debits:
                version = await session.scalar(
                    update(_directory_version)
                    .where(_directory_version.c.id == 1)
                    .values(version=_directory_version.c.version + 1)
                    .returning(_directory_version.c.version)
                )
            else:
                version = await session.scalar(
                    select(_directory_version.c.version).where(_directory_version.c.id == 1)
                )
            if version is None:
                raise RuntimeError("the directory_version row is missing")
        return _Committed(kept, len(inserted), discarded, int(version))

    @staticmethod
    async def _lock_profiles(session: AsyncSession, ids: Iterable[int]) -> dict[int, Decimal]:
        """The credit of those of ``ids`` that still exist, their rows locked
        until commit (PostgreSQL; SQLite's BEGIN IMMEDIATE already holds the
        whole database), in id order so that concurrent writers cannot
        deadlock.  A profile deleted meanwhile waits for this transaction."""
        result = await session.execute(
            select(_profiles.c.id, _profiles.c.credit)
            .where(_profiles.c.id.in_(sorted(ids)))
            .order_by(_profiles.c.id)
            .with_for_update()
        )
        return {int(row.id): row.credit for row in result}

    async def _insert(self, session: AsyncSession, entries: Sequence[CallRecordEntry]) -> set[str]:
        """Insert ``entries``, skipping record keys already in the table;
        the keys really inserted."""
        rows = [e.row() for e in entries]
        # One statement for any number of rows, given the rows as parameters
        # (SQLAlchemy's "insertmanyvalues"): it is compiled once and cached,
        # where .values(rows) built and compiled a new statement per batch.
        statement = self._insert_statement
        if statement is None:
            key = _records.c.record_key
            dialect = postgresql if self._store.dialect == "postgresql" else sqlite
            statement = self._insert_statement = (
                dialect.insert(_records).on_conflict_do_nothing(index_elements=[key]).returning(key)
            )
        result = await session.execute(statement, rows)
        return set(result.scalars())

    @staticmethod
    async def _debit(
        session: AsyncSession, profile_id: int, credit: Decimal, amount: Decimal
    ) -> None:
        """Take ``amount`` from the profile's credit, never below zero (the
        CHECK would refuse the whole batch).  A call outliving its credit by
        a started second gets here."""
        if amount > credit:
            logger.warning(
                "profile %d: call records cost %s, its credit %s; credit set to 0",
                profile_id,
                amount,
                credit,
            )
        await session.execute(
            update(_profiles)
            .where(_profiles.c.id == profile_id)
            .values(
                credit=case(
                    (_profiles.c.credit > amount, _profiles.c.credit - amount),
                    else_=literal(Decimal(0), Money()),
                )
            )
        )

    # -- shutdown and the spool -------------------------------------------------
    async def close(self, timeout: float) -> None:
        """Stop the loop and write everything still queued, trying until
        ``timeout`` seconds from now; what is still not written then goes to
        the spool file (or, without one, to the log at error level)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        self._closing.set()
        runner = self._runner
        if runner is not None and runner is not asyncio.current_task():
            # Let the loop finish the attempt in progress, then stop it.
            await asyncio.wait({runner}, timeout=max(deadline - loop.time(), 0.0))
            if not runner.done():
                runner.cancel()
                await asyncio.wait({runner})
        backoff = BACKOFF_INITIAL
        while self.pending:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if await self._flush_once(min(self._attempt_timeout, remaining)):
                backoff = BACKOFF_INITIAL
                continue
            await asyncio.sleep(min(backoff, max(deadline - loop.time(), 0.0)))
            backoff = min(backoff * 2, BACKOFF_MAX)
        self._closed = True
        if self._queue:
            left = list(self._queue)
            self._queue.clear()
            self._spool(left)

    def _spool(self, entries: list[CallRecordEntry]) -> None:
        """Put ``entries`` in the spool file, durably.  If this writer read
        the file back (:meth:`load_spool`), everything the file held that is
        not in the database yet is among ``entries`` (it was queued), so the
        file is replaced; otherwise it is appended to."""
        lines = "".join(e.to_json() + "\n" for e in entries)
        path = self._spool_path
        if path is None:
            logger.error("%d call records not written and no spool file set:", len(entries))
            for entry in entries:
                logger.error("unwritten call record: %s", entry.to_json())
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if self._spooled_keys is not None:
                temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
                with temporary.open("w", encoding="ascii") as f:
                    f.write(lines)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(temporary, path)
                self._spooled_keys = None
            else:
                with path.open("a", encoding="ascii") as f:
                    f.write(lines)
                    f.flush()
                    os.fsync(f.fileno())
            _fsync_directory(path.parent)
        except OSError as exc:
            logger.error("cannot write the call record spool %s: %s", path, exc)
            for entry in entries:
                logger.error("unwritten call record: %s", entry.to_json())
            return
        self.spooled += len(entries)
        logger.warning("%d call records spooled to %s", len(entries), path)

    async def load_spool(self) -> int:
        """Queue the records a previous run left in the spool file, ahead of
        any submitted since; the file is deleted once they are all in the
        database (a crash before that finds them there again; a record
        written twice is skipped by its key).  Lines that are not records
        (a torn last line) are moved to ``<spool>.rejected`` and logged.
        Returns the number of records queued."""
        path = self._spool_path
        if path is None or self._spooled_keys is not None:
            return 0
        try:
            text = path.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            return 0
        entries: list[CallRecordEntry] = []
        rejected: list[str] = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                entries.append(CallRecordEntry.from_json(line))
            except ValueError as exc:
                logger.error("call record spool %s: unreadable line kept aside: %s", path, exc)
                rejected.append(line)
        if rejected:
            aside = path.with_name(path.name + ".rejected")
            with aside.open("a", encoding="ascii", errors="replace") as f:
                f.write("".join(line + "\n" for line in rejected))
                f.flush()
                os.fsync(f.fileno())
        self._queue.extendleft(reversed(entries))
        self._spooled_keys = {e.record_key for e in entries}
        if entries:
            self._wakeup.set()
            logger.info("%d call records read back from the spool %s", len(entries), path)
        else:
            self._forget_spooled([], [])
        return len(entries)

    def _forget_spooled(
        self, kept: Iterable[CallRecordEntry], discarded: Iterable[CallRecordEntry]
    ) -> None:
        """Records from the spool reached the database (or were discarded);
        when none is left, the spool file has done its job."""
        keys = self._spooled_keys
        if keys is None:
            return
        for entry in (*kept, *discarded):
            keys.discard(entry.record_key)
        if keys:
            return
        self._spooled_keys = None
        path = self._spool_path
        assert path is not None
        try:
            path.unlink(missing_ok=True)
            _fsync_directory(path.parent)
        except OSError as exc:
            logger.warning("cannot remove the call record spool %s: %s", path, exc)
