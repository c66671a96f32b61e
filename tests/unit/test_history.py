"""A profile's call history (``gateway/manage/history.py``), on SQLite and PostgreSQL.

The records are inserted directly, as the gateway's CDR writer stores
them; the history is read back as pages and as the CSV report, which is
parsed with the csv module to check RFC 4180 quoting.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from gateway.manage import history, profiles
from gateway.manage.errors import NotFoundError, ValidationError
from gateway.manage.history import CSV_COLUMNS, call_history, history_csv, parse_time
from gateway.store.database import Store
from gateway.store.models import CallRecord
from tests.unit import test_store as shared

# The store fixtures of tests/unit/test_store.py (SQLite and PostgreSQL), shared.
postgres_url = shared.postgres_url
database_url = shared.database_url
secret_key = shared.secret_key
store = shared.store

T0 = datetime(2024, 6, 1, 9, 0, tzinfo=UTC)


async def insert_records(
    store: Store, profile_id: int, starts: Sequence[datetime], **fields: object
) -> list[str]:
    """One answered outbound call per start time (30.5 s, cost 0.0123),
    ``fields`` overriding; returns their Call-IDs in the order given."""
    call_ids = []
    async with store.write(bump=False) as session:
        for started in starts:
            call_id = f"{uuid.uuid4().hex}@pbx"
            values: dict[str, object] = {
                "record_key": uuid.uuid4().hex,
                "profile_id": profile_id,
                "call_id": call_id,
                "direction": "outbound",
                "caller": "+441134960000",
                "callee": "+14155550123",
                "started_at": started,
                "answered_at": started + timedelta(seconds=2),
                "ended_at": started + timedelta(seconds=32.5),
                "duration_ms": 30_500,
                "final_status": 200,
                "cost": Decimal("0.0123"),
            }
            values.update(fields)
            session.add(CallRecord(**values))
            call_ids.append(str(values["call_id"]))
    return call_ids


async def two_profiles(store: Store) -> tuple[profiles.ProfileView, profiles.ProfileView]:
    """acme/sales and other/sales: the same name in two accounts."""
    await profiles.create_account(store, name="acme", email="ops@acme.example")
    await profiles.create_account(store, name="other", email="ops@other.example")
    acme = await profiles.create_profile(store, account="acme", name="sales", auth="registration")
    other = await profiles.create_profile(store, account="other", name="sales", auth="registration")
    return acme, other


async def read_csv(store: Store, profile: str, **arguments: object) -> list[list[str]]:
    text = "".join([line async for line in history_csv(store, profile, **arguments)])  # type: ignore[arg-type]
    assert text.endswith("\r\n")  # RFC 4180 §2: CRLF line breaks
    return list(csv.reader(io.StringIO(text, newline="")))


# ---------------------------------------------------------------------------
# Pages


async def test_history_pages_newest_first_and_scoped(store: Store) -> None:
    acme, other = await two_profiles(store)
    starts = [T0 + timedelta(minutes=i) for i in range(7)]
    ids = await insert_records(store, acme.id, starts)
    await insert_records(store, other.id, [T0], caller="+12125550100")

    first = await call_history(store, "sales", account="acme", limit=3)
    assert (first.total, first.offset, first.limit, first.next_offset) == (7, 0, 3, 3)
    assert [r.call_id for r in first.items] == ids[::-1][:3]
    rest = await call_history(store, "sales", account="acme", offset=3, limit=10)
    assert [r.call_id for r in rest.items] == ids[::-1][3:]
    assert rest.next_offset is None
    record = rest.items[-1]
    assert (record.direction, record.final_status, record.duration_ms) == ("outbound", 200, 30_500)
    assert record.duration_seconds == Decimal("30.500")
    assert record.cost == Decimal("0.0123")
    assert record.started_at == T0 and record.started_at.tzinfo is not None
    assert record.answered_at == T0 + timedelta(seconds=2)

    theirs = await call_history(store, "sales", account="other")
    assert [r.caller for r in theirs.items] == ["+12125550100"]
    # Two accounts have a "sales": the account must be named.
    with pytest.raises(ValidationError, match="several accounts"):
        await call_history(store, "sales")
    with pytest.raises(NotFoundError, match="no profile named 'hr' in account 'acme'"):
        await call_history(store, "hr", account="acme")
    with pytest.raises(NotFoundError):
        await call_history(store, "sales", account="nobody")


async def test_period_is_half_open(store: Store) -> None:
    acme, _ = await two_profiles(store)
    starts = [T0 + timedelta(hours=h) for h in range(5)]  # 09:00 .. 13:00
    ids = await insert_records(store, acme.id, starts)
    window = await call_history(
        store,
        "sales",
        account="acme",
        since=T0 + timedelta(hours=1),
        until=T0 + timedelta(hours=3),
    )
    # [10:00, 12:00): the call at 12:00 belongs to the next period.
    assert [r.call_id for r in window.items] == [ids[2], ids[1]]
    # The same instant in another zone is the same instant.
    paris = timezone(timedelta(hours=2))
    same = await call_history(
        store,
        "sales",
        account="acme",
        since=(T0 + timedelta(hours=1)).astimezone(paris),
        until=(T0 + timedelta(hours=3)).astimezone(paris),
    )
    assert [r.call_id for r in same.items] == [ids[2], ids[1]]
    since_only = await call_history(store, "sales", account="acme", since=T0 + timedelta(hours=4))
    assert [r.call_id for r in since_only.items] == [ids[4]]
    until_only = await call_history(store, "sales", account="acme", until=T0 + timedelta(hours=1))
    assert [r.call_id for r in until_only.items] == [ids[0]]
    empty = await call_history(store, "sales", account="acme", since=T0, until=T0)
    assert (empty.items, empty.total) == ([], 0)


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"since": T0 + timedelta(seconds=1), "until": T0}, "is after until"),
        ({"since": datetime(2024, 6, 1)}, "since must be a date and time with a time zone"),
        ({"until": datetime(2024, 6, 1)}, "until must be a date and time with a time zone"),
        ({"offset": -1}, "offset must be 0 or more"),
        ({"limit": 0}, "limit must be 1 to 1000"),
        ({"limit": 1001}, "limit must be 1 to 1000"),
    ],
)
async def test_history_validation(store: Store, arguments: dict[str, object], problem: str) -> None:
    await two_profiles(store)
    with pytest.raises(ValidationError) as info:
        await call_history(store, "sales", account="acme", **arguments)  # type: ignore[arg-type]
    assert problem in str(info.value)


def test_parse_time() -> None:
    assert parse_time("2024-06-01", "since") == datetime(2024, 6, 1, tzinfo=UTC)
    assert parse_time("2024-06-01T09:30:00Z", "since") == datetime(2024, 6, 1, 9, 30, tzinfo=UTC)
    assert parse_time("2024-06-01T10:30:00+01:00", "x") == datetime(2024, 6, 1, 9, 30, tzinfo=UTC)
    for bad in ("2024-13-01", "yesterday", ""):
        with pytest.raises(ValidationError, match="--since must be an ISO 8601"):
            parse_time(bad, "--since")


# ---------------------------------------------------------------------------
# The CSV report


async def test_csv_report_content_and_quoting(store: Store) -> None:
    acme, other = await two_profiles(store)
    answered = await insert_records(store, acme.id, [T0 + timedelta(minutes=1)])
    unanswered = await insert_records(
        store,
        acme.id,
        [T0],
        direction="inbound",
        caller='"Sales, Leeds" <sip:+441134960000@pbx>',  # a comma and quotes
        callee="line\nbreak",
        answered_at=None,
        ended_at=T0 + timedelta(seconds=5),
        duration_ms=0,
        final_status=486,
        cost=Decimal(0),
    )
    await insert_records(store, other.id, [T0])
    rows = await read_csv(store, "sales", account="acme")
    assert rows[0] == list(CSV_COLUMNS)
    assert len(rows) == 3  # header + acme's two calls; other's stays out
    # In the order the calls started (unlike the newest-first pages).
    busy = dict(zip(CSV_COLUMNS, rows[1], strict=True))
    assert busy == {
        "call_id": unanswered[0],
        "direction": "inbound",
        "caller": '"Sales, Leeds" <sip:+441134960000@pbx>',
        "callee": "line\nbreak",
        "started_at": "2024-06-01T09:00:00+00:00",
        "answered_at": "",
        "ended_at": "2024-06-01T09:00:05+00:00",
        "duration_seconds": "0.000",
        "final_status": "486",
        "cost": "0.0000",
    }
    talk = dict(zip(CSV_COLUMNS, rows[2], strict=True))
    assert talk["call_id"] == answered[0]
    assert talk["caller"] == "+441134960000"  # a number stays a number
    assert (talk["duration_seconds"], talk["cost"]) == ("30.500", "0.0123")
    assert talk["answered_at"] == "2024-06-01T09:01:02+00:00"


async def test_csv_neutralises_formulas(store: Store) -> None:
    """Caller and callee come from SIP; a spreadsheet must not run them."""
    acme, _ = await two_profiles(store)
    await insert_records(store, acme.id, [T0], caller="=HYPERLINK(1)", callee="@SUM(A1)")
    await insert_records(store, acme.id, [T0 + timedelta(seconds=1)], caller="+-1+2")
    rows = await read_csv(store, "sales", account="acme")
    first = dict(zip(CSV_COLUMNS, rows[1], strict=True))
    assert (first["caller"], first["callee"]) == ("'=HYPERLINK(1)", "'@SUM(A1)")
    assert dict(zip(CSV_COLUMNS, rows[2], strict=True))["caller"] == "'+-1+2"


async def test_csv_streams_every_record_across_chunks(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More records than one chunk, several starting at the same instant:
    each comes once, in order (keyset pagination on started_at, id)."""
    monkeypatch.setattr(history, "CSV_CHUNK", 4)
    acme, _ = await two_profiles(store)
    starts = [T0 + timedelta(seconds=i // 3) for i in range(14)]  # triples share a start
    ids = await insert_records(store, acme.id, starts)
    rows = await read_csv(store, "sales", account="acme")
    assert [row[0] for row in rows[1:]] == ids
    window = await read_csv(
        store, "sales", account="acme", since=T0 + timedelta(seconds=1), until=T0 + timedelta(2)
    )
    assert [row[0] for row in window[1:]] == ids[3:]


async def test_csv_errors_come_before_the_first_line(store: Store) -> None:
    await two_profiles(store)
    lines = history_csv(store, "nope", account="acme")
    with pytest.raises(NotFoundError, match="no profile named 'nope'"):
        await anext(lines)
    lines = history_csv(store, "sales", account="acme", since=T0, until=T0 - timedelta(days=1))
    with pytest.raises(ValidationError, match="is after until"):
        await anext(lines)
    empty = await read_csv(store, "sales", account="acme")
    assert empty == [list(CSV_COLUMNS)]
