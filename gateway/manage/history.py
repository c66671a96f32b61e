"""A profile's call history: the call records (CDRs), as pages and as CSV.

The records are written by the gateways when calls end; this module only
reads them, scoped like every profile operation (``account``).  Periods are
half-open, ``[since, until)`` on the time a call started, in aware UTC
datetimes, so that consecutive periods never count a call twice.

The CSV report (RFC 4180) is what an operator downloads before deleting a
profile (deletion erases the history).  It is produced as a stream: rows
are read in chunks of :data:`CSV_CHUNK`, each in its own short read, so a
history of millions of calls never sits in memory, and a slow download
never holds a database transaction open.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, true

from gateway.manage.errors import ValidationError
from gateway.manage.paging import DEFAULT_LIMIT, Page, check_page
from gateway.manage.profiles import ProfileView, get_profile
from gateway.store.database import Store
from gateway.store.models import CallRecord

__all__ = [
    "CSV_CHUNK",
    "CSV_COLUMNS",
    "CallRecordView",
    "call_history",
    "history_csv",
    "parse_time",
    "record_document",
]

#: Rows read per query while streaming the CSV report.
CSV_CHUNK = 500
CSV_COLUMNS = (
    "call_id",
    "direction",
    "caller",
    "callee",
    "started_at",
    "answered_at",
    "ended_at",
    "duration_seconds",
    "final_status",
    "cost",
)
_MILLISECONDS = Decimal("0.001")
# Caller and callee come from SIP headers, i.e. from whoever sent the call.
# A spreadsheet would run a cell starting with one of these as a formula
# (CSV injection), so such a cell is prefixed with "'" -- unless it is a
# plain number like +441134960000.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?[0-9]+\Z")


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRecordView:
    """One call through the trunk, as its profile's history shows it."""

    call_id: str
    direction: str  # "outbound" or "inbound"
    caller: str
    callee: str
    started_at: datetime
    answered_at: datetime | None  # None: never answered
    ended_at: datetime
    duration_ms: int  # answered to ended
    final_status: int  # the INVITE's final SIP status code
    cost: Decimal

    @property
    def duration_seconds(self) -> Decimal:
        """The talk time in seconds, to the millisecond."""
        return (Decimal(self.duration_ms) / 1000).quantize(_MILLISECONDS)


def _view(record: CallRecord) -> CallRecordView:
    return CallRecordView(
        call_id=record.call_id,
        direction=record.direction,
        caller=record.caller,
        callee=record.callee,
        started_at=record.started_at,
        answered_at=record.answered_at,
        ended_at=record.ended_at,
        duration_ms=record.duration_ms,
        final_status=record.final_status,
        cost=record.cost,
    )


def _aware(value: datetime | None, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValidationError(
            f"{what} must be a date and time with a time zone, e.g."
            f" 2024-06-01T00:00:00+00:00; got {value!r}"
        )
    return value


def parse_time(text: str, what: str) -> datetime:
    """A point in time as front ends receive it: ISO 8601, a date
    (``2024-06-01``, midnight) or a date and time, with ``Z`` or an offset;
    without one it is UTC.  ``what`` names it in the message."""
    try:
        value = datetime.fromisoformat(text.strip())
    except (AttributeError, ValueError):
        raise ValidationError(
            f"{what} must be an ISO 8601 date or time, e.g. 2024-06-01 or"
            f" 2024-06-01T09:30:00+01:00; got {text!r}"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _period(since: datetime | None, until: datetime | None) -> ColumnElement[bool]:
    since, until = _aware(since, "since"), _aware(until, "until")
    if since is not None and until is not None and since > until:
        raise ValidationError(f"since ({since.isoformat()}) is after until ({until.isoformat()})")
    condition: ColumnElement[bool] = true()
    if since is not None:
        condition = and_(condition, CallRecord.started_at >= since)
    if until is not None:
        condition = and_(condition, CallRecord.started_at < until)
    return condition


async def _profile(store: Store, profile: str, account: str | None) -> ProfileView:
    return await get_profile(store, profile, account=account, reveal=False)


async def call_history(
    store: Store,
    profile: str,
    *,
    account: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    offset: int = 0,
    limit: int = DEFAULT_LIMIT,
) -> Page[CallRecordView]:
    """Profile ``profile``'s calls that started in ``[since, until)`` (either
    end open when None), newest first, one page at a time."""
    offset, limit = check_page(offset, limit)
    period = _period(since, until)
    view = await _profile(store, profile, account)
    condition = and_(CallRecord.profile_id == view.id, period)
    async with store.read() as session:
        total = await session.scalar(select(func.count(CallRecord.id)).where(condition))
        query = (
            select(CallRecord)
            .where(condition)
            .order_by(CallRecord.started_at.desc(), CallRecord.id.desc())
            .offset(offset)
            .limit(limit)
        )
        items = [_view(record) for record in await session.scalars(query)]
    return Page(items, int(total or 0), offset, limit)


def _cell(value: str) -> str:
    if value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.match(value):
        return "'" + value
    return value


def _csv_line(values: list[str]) -> str:
    buffer = io.StringIO()
    # csv's defaults are RFC 4180's: CRLF, quotes doubled, fields with a
    # comma, quote or line break quoted.
    csv.writer(buffer).writerow(values)
    return buffer.getvalue()


def _csv_values(record: CallRecordView) -> list[str]:
    return [
        _cell(record.call_id),
        record.direction,
        _cell(record.caller),
        _cell(record.callee),
        record.started_at.isoformat(),
        record.answered_at.isoformat() if record.answered_at is not None else "",
        record.ended_at.isoformat(),
        str(record.duration_seconds),
        str(record.final_status),
        str(record.cost),
    ]


async def history_csv(
    store: Store,
    profile: str,
    *,
    account: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> AsyncGenerator[str, None]:
    """The CSV report of ``profile``'s calls in ``[since, until)``: a header
    line (:data:`CSV_COLUMNS`), then one line per call in the order they
    started.

    Validation and the profile look-up happen on the first step, before any
    line: a front end takes that first line before it commits to an answer,
    so a bad request still gets a proper error.  Later chunks continue
    after the last row sent (keyset pagination on ``(started_at, id)``), so
    records written meanwhile never shift or repeat a row.
    """
    period = _period(since, until)
    view = await _profile(store, profile, account)
    yield _csv_line(list(CSV_COLUMNS))
    after: tuple[datetime, int] | None = None
    while True:
        condition = and_(CallRecord.profile_id == view.id, period)
        if after is not None:
            started, last_id = after
            condition = and_(
                condition,
                or_(
                    CallRecord.started_at > started,
                    and_(CallRecord.started_at == started, CallRecord.id > last_id),
                ),
            )
        query = (
            select(CallRecord)
            .where(condition)
            .order_by(CallRecord.started_at, CallRecord.id)
            .limit(CSV_CHUNK)
        )
        async with store.read() as session:
            chunk = list(await session.scalars(query))
        for record in chunk:
            yield _csv_line(_csv_values(_view(record)))
        if len(chunk) < CSV_CHUNK:
            return
        after = (chunk[-1].started_at, chunk[-1].id)


def record_document(record: CallRecordView) -> dict[str, Any]:
    """A call record as JSON-ready data (times ISO 8601, money a string)."""
    return {
        "call_id": record.call_id,
        "direction": record.direction,
        "caller": record.caller,
        "callee": record.callee,
        "started_at": record.started_at.isoformat(),
        "answered_at": record.answered_at.isoformat() if record.answered_at else None,
        "ended_at": record.ended_at.isoformat(),
        "duration_seconds": str(record.duration_seconds),
        "final_status": record.final_status,
        "cost": str(record.cost),
    }
