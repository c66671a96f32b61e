"""The rate table: what an outbound call costs per minute, by destination.

A rate is a destination prefix (E.164 digits without the "+", as ITU-T
E.164 §6 numbers start with the country code) and a price per minute of
talk; the longest prefix matching the called number wins, and the empty
prefix, if set, prices every other destination.  Without a matching rate
a destination has no price (:func:`rate_for` returns None): what the call
path does then is its own rule.

Writes bump the directory version: running gateways hold the table in
memory and reload it with the profiles.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from gateway.manage.errors import ConflictError, NotFoundError, ValidationError
from gateway.manage.paging import DEFAULT_LIMIT, Page, check_page
from gateway.manage.profiles import parse_amount
from gateway.store.database import Store
from gateway.store.models import PREFIX_MAX_LENGTH, Rate

__all__ = [
    "RateView",
    "delete_rate",
    "list_rates",
    "normalise_prefix",
    "rate_document",
    "rate_for",
    "set_rate",
]

# E.164 §6: a country code never starts with 0, so neither does a prefix
# that can ever match; the empty prefix is the default rate.
_PREFIX = re.compile(rf"(?:[1-9][0-9]{{0,{PREFIX_MAX_LENGTH - 1}}})?\Z")
# A called number: at most 15 digits, after an optional "+" and the visual
# separators of RFC 3966 §5.1.1.
_DESTINATION = re.compile(rf"[0-9]{{1,{PREFIX_MAX_LENGTH}}}\Z")
_VISUAL_SEPARATORS = str.maketrans("", "", "-.() \t\u00a0")
#: Upserts retried when a concurrent writer inserted the same prefix
#: between our look-up and our insert (PostgreSQL; SQLite serialises).
_UPSERT_ATTEMPTS = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class RateView:
    prefix: str  # "" is the default rate
    price_per_minute: Decimal
    created_at: datetime


def normalise_prefix(text: str) -> str:
    """A rate prefix as stored: digits only.  One leading "+" is accepted
    and dropped (people write "+44"); "" is the default rate."""
    if not isinstance(text, str):
        raise ValidationError(f"rate prefix must be digits, got {text!r}")
    prefix = text.strip().removeprefix("+")
    if not _PREFIX.match(prefix):
        raise ValidationError(
            f"rate prefix must be up to {PREFIX_MAX_LENGTH} digits starting with the country"
            f" code (not 0), or empty for the default rate; got {text!r}"
        )
    return prefix


def _destination(number: str) -> str:
    digits = number.strip().translate(_VISUAL_SEPARATORS) if isinstance(number, str) else ""
    digits = digits.removeprefix("+")
    if not _DESTINATION.match(digits):
        raise ValidationError(f"not a telephone number: {number!r} (1 to 15 digits, '+' allowed)")
    return digits


def _view(rate: Rate) -> RateView:
    return RateView(
        prefix=rate.prefix, price_per_minute=rate.price_per_minute, created_at=rate.created_at
    )


async def set_rate(store: Store, prefix: str, price_per_minute: Decimal | int | str) -> RateView:
    """Set the price per minute for calls to numbers starting with
    ``prefix`` (zero or more, to 4 decimal places); a prefix that has a
    rate already gets the new price."""
    digits = normalise_prefix(prefix)
    price = parse_amount(price_per_minute, "price per minute")
    if price < 0:
        raise ValidationError(f"price per minute must be zero or more, got {price_per_minute}")
    for attempt in range(_UPSERT_ATTEMPTS):
        try:
            async with store.write() as session:
                rate = await session.scalar(select(Rate).where(Rate.prefix == digits))
                if rate is None:
                    rate = Rate(prefix=digits, price_per_minute=price)
                    session.add(rate)
                else:
                    rate.price_per_minute = price
                await session.flush()
                return _view(rate)
        except IntegrityError:
            if attempt == _UPSERT_ATTEMPTS - 1:
                raise ConflictError(f"rate for prefix {digits!r} changed concurrently") from None
    raise AssertionError("unreachable")  # pragma: no cover


async def delete_rate(store: Store, prefix: str) -> RateView:
    """Remove the rate of ``prefix``; returns what it was."""
    digits = normalise_prefix(prefix)
    async with store.write() as session:
        rate = await session.scalar(select(Rate).where(Rate.prefix == digits))
        if rate is None:
            raise NotFoundError(f"no rate for prefix {_shown(digits)}")
        view = _view(rate)
        await session.execute(delete(Rate).where(Rate.id == rate.id))
        return view


async def list_rates(
    store: Store, *, offset: int = 0, limit: int = DEFAULT_LIMIT
) -> Page[RateView]:
    """The rate table ordered by prefix (the default rate first)."""
    offset, limit = check_page(offset, limit)
    async with store.read() as session:
        total = await session.scalar(select(func.count(Rate.id)))
        query = select(Rate).order_by(Rate.prefix).offset(offset).limit(limit)
        items = [_view(rate) for rate in await session.scalars(query)]
    return Page(items, int(total or 0), offset, limit)


async def rate_for(store: Store, number: str) -> RateView | None:
    """The rate of a call to ``number`` (E.164, with or without "+"): the
    longest matching prefix, else the default rate, else None."""
    digits = _destination(number)
    candidates = [digits[:length] for length in range(len(digits) + 1)]
    async with store.read() as session:
        query = (
            select(Rate)
            .where(Rate.prefix.in_(candidates))
            .order_by(func.length(Rate.prefix).desc())
            .limit(1)
        )
        rate = await session.scalar(query)
    return None if rate is None else _view(rate)


def _shown(prefix: str) -> str:
    return repr(prefix) if prefix else "'' (the default rate)"


def rate_document(view: RateView) -> dict[str, Any]:
    """A rate as JSON-ready data; the price a string, exact."""
    return {
        "prefix": view.prefix,
        "price_per_minute": str(view.price_per_minute),
        "created_at": view.created_at.isoformat(),
    }
