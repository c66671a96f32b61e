"""The rate table (``gateway/manage/rates.py``), on SQLite and PostgreSQL: upsert,
longest-prefix match, the default rate, validation, pagination."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from gateway.manage.errors import NotFoundError, ValidationError
from gateway.manage.rates import delete_rate, list_rates, rate_document, rate_for, set_rate
from gateway.store.database import Store
from tests.unit import test_store as shared

# The store fixtures of tests/unit/test_store.py (SQLite and PostgreSQL), shared.
postgres_url = shared.postgres_url
database_url = shared.database_url
secret_key = shared.secret_key
store = shared.store


async def price(store: Store, number: str) -> Decimal | None:
    rate = await rate_for(store, number)
    return None if rate is None else rate.price_per_minute


async def test_longest_prefix_wins(store: Store) -> None:
    assert await price(store, "+441134960000") is None  # no table, no price
    await set_rate(store, "44", "0.0200")
    await set_rate(store, "4411", "0.0150")
    await set_rate(store, "+447", "0.1000")  # "+" accepted, stored as digits
    await set_rate(store, "1", "0.0100")
    assert await price(store, "+441134960000") == Decimal("0.015")
    assert await price(store, "441134960000") == Decimal("0.015")  # with or without "+"
    assert await price(store, "+44 7700 900123") == Decimal("0.1")
    assert await price(store, "+442079460000") == Decimal("0.02")
    assert await price(store, "+14155550123") == Decimal("0.01")
    assert await price(store, "+33142685300") is None
    await set_rate(store, "", "0.5")  # the default rate
    assert await price(store, "+33142685300") == Decimal("0.5")
    assert await price(store, "+441134960000") == Decimal("0.015")
    # A prefix as long as the whole number matches it.
    await set_rate(store, "441134960000", "0")
    assert await price(store, "+441134960000") == Decimal(0)
    assert await price(store, "+4411349600001") == Decimal(0)
    matched = await rate_for(store, "+441134960000")
    assert matched is not None and matched.prefix == "441134960000"


async def test_set_updates_and_delete_removes(store: Store) -> None:
    version = await store.version()
    first = await set_rate(store, "44", "0.02")
    assert (first.prefix, first.price_per_minute) == ("44", Decimal("0.0200"))
    assert await store.version() == version + 1, "running gateways reload the table"
    again = await set_rate(store, "44", "0.0125")
    assert again.price_per_minute == Decimal("0.0125")
    assert again.created_at == first.created_at  # the same rate, a new price
    assert rate_document(again) == {
        "prefix": "44",
        "price_per_minute": "0.0125",
        "created_at": first.created_at.isoformat(),
    }
    assert (await list_rates(store)).total == 1
    removed = await delete_rate(store, "+44")
    assert removed.price_per_minute == Decimal("0.0125")
    assert await price(store, "+441134960000") is None
    assert await store.version() == version + 3
    with pytest.raises(NotFoundError, match="no rate for prefix '44'"):
        await delete_rate(store, "44")
    with pytest.raises(NotFoundError, match="the default rate"):
        await delete_rate(store, "")


async def test_concurrent_sets_of_one_prefix(store: Store) -> None:
    await asyncio.gather(*(set_rate(store, "49", f"0.0{i}") for i in range(1, 10)))
    page = await list_rates(store)
    assert [r.prefix for r in page.items] == ["49"]


async def test_list_in_pages(store: Store) -> None:
    for prefix in ("44", "", "1", "4420", "33"):
        await set_rate(store, prefix, "0.01")
    page = await list_rates(store, limit=3)
    assert [r.prefix for r in page.items] == ["", "1", "33"]
    assert (page.total, page.next_offset) == (5, 3)
    rest = await list_rates(store, offset=3, limit=3)
    assert [r.prefix for r in rest.items] == ["44", "4420"] and rest.next_offset is None
    with pytest.raises(ValidationError, match="limit must be 1 to 1000"):
        await list_rates(store, limit=0)


@pytest.mark.parametrize(
    ("prefix", "price_per_minute", "problem"),
    [
        ("044", "0.01", "rate prefix must be up to 15 digits"),
        ("4x", "0.01", "rate prefix must be up to 15 digits"),
        ("1234567890123456", "0.01", "rate prefix must be up to 15 digits"),
        ("++44", "0.01", "rate prefix must be up to 15 digits"),
        ("44", "-0.01", "price per minute must be zero or more"),
        ("44", "0.00001", "more than 4 decimal places"),
        ("44", "cheap", "price per minute must be an amount"),
        ("44", "1e11", "price per minute must be at most"),
    ],
)
async def test_set_validation(
    store: Store, prefix: str, price_per_minute: str, problem: str
) -> None:
    with pytest.raises(ValidationError) as info:
        await set_rate(store, prefix, price_per_minute)
    assert problem in str(info.value)
    assert (await list_rates(store)).total == 0


@pytest.mark.parametrize("number", ["", "+", "+44 abc", "1234567890123456", "sip:alice"])
async def test_rate_for_needs_a_number(store: Store, number: str) -> None:
    with pytest.raises(ValidationError, match="not a telephone number"):
        await rate_for(store, number)
