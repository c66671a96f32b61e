"""Profile operations of the service layer (``gateway/manage/profiles.py``) with
their promised consequences, on SQLite and PostgreSQL: accounts and
deposits, rename, credit moves (concurrent ones included), numbers,
deletion, pagination, and the credentials e-mail of a new profile (sent to
a real SMTP server, aiosmtpd)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from gateway.config.settings import settings_from_mapping
from gateway.manage import profiles
from gateway.manage.errors import (
    CallsUpError,
    ConflictError,
    InsufficientFundsError,
    NotFoundError,
    ValidationError,
)
from gateway.manage.mailer import SMTPMailer
from gateway.manage.nodes import GatewayQueryError
from gateway.manage.profiles import ProfileView
from gateway.store.database import Store
from gateway.store.models import MAX_BALANCE, CallRecord
from gateway.web.directory import load_directory
from tests.support.harness import free_port, random_loopback
from tests.unit import test_mailer as mail
from tests.unit import test_store as shared
from tests.unit.test_history import T0, insert_records

# The store fixtures of tests/unit/test_store.py (SQLite and PostgreSQL), shared.
postgres_url = shared.postgres_url
database_url = shared.database_url
secret_key = shared.secret_key
store = shared.store
# A real SMTP server (tests/unit/test_mailer.py).
smtp_server = mail.smtp_server

REALM = shared.REALM
GATEWAY = ["203.0.113.10:5060"]


async def settled(_view: ProfileView, _version: int) -> None:
    """No gateway runs: nothing to wait for."""


async def no_calls(_view: ProfileView) -> int:
    return 0


def calls(count: int) -> tuple[list[ProfileView], profiles.ActiveCalls]:
    """An ``active_calls`` that answers ``count``, and the views it was asked about."""
    asked: list[ProfileView] = []

    async def active(view: ProfileView) -> int:
        asked.append(view)
        return count

    return asked, active


async def acme(store: Store, balance: str = "100") -> None:
    await profiles.create_account(store, name="acme", email="ops@acme.example", balance=balance)


async def balance_of(store: Store, account: str = "acme") -> Decimal:
    return (await profiles.get_account(store, account)).balance


async def credit_of(store: Store, profile: str, account: str = "acme") -> Decimal:
    return (await profiles.get_profile(store, profile, account=account)).credit


# ---------------------------------------------------------------------------
# Accounts and deposits


async def test_list_accounts_in_pages(store: Store) -> None:
    for name in ("delta", "alpha", "charlie", "bravo", "echo"):
        await profiles.create_account(store, name=name, email=f"{name}@x.example")
    first = await profiles.list_accounts(store, limit=2)
    assert [a.name for a in first.items] == ["alpha", "bravo"]
    assert (first.total, first.offset, first.limit, first.next_offset) == (5, 0, 2, 2)
    last = await profiles.list_accounts(store, offset=4, limit=2)
    assert [a.name for a in last.items] == ["echo"] and last.next_offset is None
    beyond = await profiles.list_accounts(store, offset=10)
    assert (beyond.items, beyond.total, beyond.next_offset) == ([], 5, None)
    every = await profiles.list_accounts(store)
    assert len(every.items) == 5 and every.limit == 100


@pytest.mark.parametrize(
    ("offset", "limit", "problem"),
    [
        (-1, 10, "offset must be 0 or more, got -1"),
        (0, 0, "limit must be 1 to 1000, got 0"),
        (0, 1001, "limit must be 1 to 1000, got 1001"),
        (0, True, "limit must be a whole number"),
        ("5", 10, "offset must be a whole number"),
    ],
)
async def test_page_bounds(store: Store, offset: object, limit: object, problem: str) -> None:
    await acme(store)
    listings: list[Awaitable[object]] = [
        profiles.list_accounts(store, offset=offset, limit=limit),  # type: ignore[arg-type]
        profiles.list_profiles(store, offset=offset, limit=limit),  # type: ignore[arg-type]
        profiles.list_numbers(store, account="acme", offset=offset, limit=limit),  # type: ignore[arg-type]
    ]
    for listing in listings:
        with pytest.raises(ValidationError) as info:
            await listing
        assert problem in str(info.value)


async def test_deposit(store: Store) -> None:
    await acme(store, balance="10")
    version = await store.version()
    after = await profiles.deposit(store, "acme", "15.25")
    assert after.balance == Decimal("25.2500") and after.name == "acme"
    assert await balance_of(store) == Decimal("25.25")
    await asyncio.gather(*(profiles.deposit(store, "acme", "0.0001") for _ in range(20)))
    assert await balance_of(store) == Decimal("25.2520")
    # The balance is not on the SIP path: running gateways need not reload.
    assert await store.version() == version
    with pytest.raises(NotFoundError, match="no account named 'nope'"):
        await profiles.deposit(store, "nope", "1")
    room = MAX_BALANCE - Decimal("25.2520")
    with pytest.raises(ConflictError, match="would exceed"):
        await profiles.deposit(store, "acme", room + Decimal("0.0001"))
    assert (await profiles.deposit(store, "acme", room)).balance == MAX_BALANCE


@pytest.mark.parametrize(
    ("amount", "problem"),
    [
        ("0", "deposit must be more than zero"),
        ("-5", "deposit must be more than zero"),
        ("1.00001", "more than 4 decimal places"),
        ("lots", "deposit must be an amount"),
        ("NaN", "deposit must be an amount"),
        ("Infinity", "deposit must be an amount"),
        (0.1, "deposit must be an amount"),
        ("1e10", "deposit must be at most"),
    ],
)
async def test_deposit_validation(store: Store, amount: object, problem: str) -> None:
    await acme(store, balance="10")
    with pytest.raises(ValidationError) as info:
        await profiles.deposit(store, "acme", amount)  # type: ignore[arg-type]
    assert problem in str(info.value)
    assert await balance_of(store) == Decimal(10)


# ---------------------------------------------------------------------------
# Rename


async def test_rename(store: Store) -> None:
    await acme(store)
    await profiles.create_account(store, name="other", email="o@other.example")
    sales = await profiles.create_profile(store, account="acme", name="sales", auth="registration")
    await profiles.create_profile(store, account="acme", name="hr", auth="registration")
    await profiles.create_profile(store, account="other", name="support", auth="registration")
    version = await store.version()
    renamed = await profiles.rename_profile(store, "sales", "Sales Leeds")
    assert (renamed.id, renamed.name) == (sales.id, "Sales Leeds")
    assert renamed.password == sales.password  # nothing else changes
    assert renamed.sip_username == sales.sip_username
    assert await store.version() > version, "running gateways must see it at once"
    with pytest.raises(NotFoundError):
        await profiles.get_profile(store, "sales")
    # Unique per account only: another account may have the name.
    with pytest.raises(ConflictError, match="already has a profile named 'hr'"):
        await profiles.rename_profile(store, "Sales Leeds", "hr")
    moved = await profiles.rename_profile(store, "support", "hr", account="other")
    assert (moved.account, moved.name) == ("other", "hr")
    with pytest.raises(ValidationError, match="several accounts"):
        await profiles.rename_profile(store, "hr", "x")
    # Scoped: acme's profile is not found through another account.
    with pytest.raises(NotFoundError, match="no profile named 'Sales Leeds' in account 'other'"):
        await profiles.rename_profile(store, "Sales Leeds", "x", account="other")
    same = await profiles.rename_profile(store, "hr", "hr", account="acme")
    assert same.name == "hr"
    for bad in ("", "  ", "x" * 65, "tab\there", "Sales, Leeds", "a/b"):
        with pytest.raises(ValidationError, match="new profile name"):
            await profiles.rename_profile(store, "hr", bad, account="acme")
    # Surrounding spaces are trimmed, in the new name and in the one looked up.
    padded = await profiles.rename_profile(store, " hr ", " HR desk ", account="acme")
    assert padded.name == "HR desk"
    assert (await profiles.rename_profile(store, "HR desk", "hr", account="acme")).name == "hr"
    listed = await profiles.list_profiles(store)
    assert [(p.account, p.name) for p in listed.items] == [
        ("acme", "Sales Leeds"),
        ("acme", "hr"),
        ("other", "hr"),
    ]


# ---------------------------------------------------------------------------
# Credit


async def test_allocate_and_withdraw_credit(store: Store) -> None:
    await acme(store, balance="100")
    await profiles.create_profile(
        store, account="acme", name="pbx", auth="ip", ip="192.0.2.1", port=5060
    )
    version = await store.version()
    view, account = await profiles.allocate_credit(store, "pbx", "30.5")
    assert (view.credit, account.balance) == (Decimal("30.5"), Decimal("69.5"))
    assert await store.version() > version, "running gateways see the new credit"
    view, account = await profiles.allocate_credit(store, "pbx", Decimal("-0.5"), account="acme")
    assert (view.credit, account.balance) == (Decimal(30), Decimal(70))
    document = profiles.profile_document(view, gateway_addresses=GATEWAY)
    assert document["credit"] == "30.0000"
    # All of it, both ways: exactly zero is allowed, below is not.
    view, account = await profiles.allocate_credit(store, "pbx", "70")
    assert (view.credit, account.balance) == (Decimal(100), Decimal(0))
    with pytest.raises(InsufficientFundsError, match=r"account 'acme' has a balance of 0\.0000"):
        await profiles.allocate_credit(store, "pbx", "0.0001")
    view, account = await profiles.allocate_credit(store, "pbx", "-100")
    assert (view.credit, account.balance) == (Decimal(0), Decimal(100))
    version = await store.version()
    with pytest.raises(InsufficientFundsError, match=r"profile 'pbx' has a credit of 0\.0000"):
        await profiles.allocate_credit(store, "pbx", "-0.0001")
    with pytest.raises(InsufficientFundsError, match=r"account 'acme' has a balance of 100"):
        await profiles.allocate_credit(store, "pbx", "100.0001")
    # Refused moves change nothing, not even the directory version (the
    # running gateways have nothing to reload).
    assert (await balance_of(store), await credit_of(store, "pbx")) == (Decimal(100), Decimal(0))
    assert await store.version() == version


@pytest.mark.parametrize(
    ("amount", "error", "problem"),
    [
        ("0", ValidationError, "must not be zero"),
        ("0.00001", ValidationError, "more than 4 decimal places"),
        ("ten", ValidationError, "credit amount must be an amount"),
        ("1e11", ValidationError, "at most"),
    ],
)
async def test_credit_validation(
    store: Store, amount: str, error: type[Exception], problem: str
) -> None:
    await acme(store)
    await profiles.create_profile(store, account="acme", name="s", auth="registration")
    with pytest.raises(error) as info:
        await profiles.allocate_credit(store, "s", amount)
    assert problem in str(info.value)


async def test_credit_scoping(store: Store) -> None:
    await acme(store)
    await profiles.create_account(store, name="other", email="o@other.example", balance="5")
    await profiles.create_profile(store, account="acme", name="s", auth="registration")
    with pytest.raises(NotFoundError, match="no profile named 's' in account 'other'"):
        await profiles.allocate_credit(store, "s", "1", account="other")
    with pytest.raises(NotFoundError, match="no profile named 'x'"):
        await profiles.allocate_credit(store, "x", "1")
    # The money comes from the profile's own account, never another's.
    await profiles.allocate_credit(store, "s", "1")
    assert (await balance_of(store), await balance_of(store, "other")) == (Decimal(99), Decimal(5))


async def test_concurrent_credit_moves_never_go_negative(
    store: Store, database_url: str, secret_key: bytes
) -> None:
    """50 moves at once from 10 connections pools (as from several API
    workers and CLI runs): each succeeds or is refused whole; the sums stay
    exact and neither side ever goes below zero."""
    await acme(store, balance="100")
    await profiles.create_profile(store, account="acme", name="s", auth="registration")
    stores = [await Store.open(database_url, secret_key=secret_key, realm=REALM) for _ in range(10)]
    try:
        pool = itertools.cycle(stores)

        async def move(amount: str) -> bool:
            try:
                await profiles.allocate_credit(next(pool), "s", amount)
            except InsufficientFundsError:
                return False
            return True

        # 50 x +10 against 100: exactly ten get through.
        done = await asyncio.gather(*(move("10") for _ in range(50)))
        assert (done.count(True), done.count(False)) == (10, 40)
        assert (await balance_of(store), await credit_of(store, "s")) == (Decimal(0), Decimal(100))

        # Both ways at once, from a credit of 100 and a balance of 0.
        amounts = ["10", "-10"] * 25
        done = await asyncio.gather(*(move(a) for a in amounts))
        added = sum(ok for ok, a in zip(done, amounts, strict=True) if a == "10")
        withdrawn = sum(ok for ok, a in zip(done, amounts, strict=True) if a == "-10")
        balance, credit = await balance_of(store), await credit_of(store, "s")
        assert balance + credit == Decimal(100)
        assert credit == Decimal(100 + 10 * (added - withdrawn))
        assert balance >= 0 and credit >= 0

        # 50 x -10: exactly what is there comes back.
        expected = int(credit / 10)
        done = await asyncio.gather(*(move("-10") for _ in range(50)))
        assert done.count(True) == expected
        assert (await balance_of(store), await credit_of(store, "s")) == (Decimal(100), Decimal(0))
    finally:
        for opened in stores:
            await opened.close()


# ---------------------------------------------------------------------------
# Numbers and incoming calls


async def test_unassign_and_list_numbers(store: Store) -> None:
    await acme(store)
    await profiles.create_account(store, name="other", email="o@other.example")
    await profiles.create_profile(store, account="acme", name="reg", auth="registration")
    await profiles.create_profile(
        store, account="acme", name="pbx", auth="ip", ip="2001:db8::7", port=5070
    )
    await profiles.create_profile(store, account="other", name="pbx", auth="registration")
    numbers = [f"+4411349600{i:02d}" for i in range(6)]
    await profiles.add_numbers(store, account="acme", numbers=numbers)
    await profiles.add_numbers(store, account="other", numbers=["+14155550100"])
    await profiles.assign_number(store, numbers[0], profile="reg")
    await profiles.assign_number(store, numbers[1], profile="pbx")
    await profiles.assign_number(store, numbers[2], profile="pbx", account="acme")

    reg = await profiles.get_profile(store, "reg")
    document = profiles.profile_document(reg, gateway_addresses=GATEWAY)
    assert document["incoming"] == {"numbers": [numbers[0]], "delivered_to": "registered PBX"}
    pbx = await profiles.get_profile(store, "pbx", account="acme")
    document = profiles.profile_document(pbx, gateway_addresses=GATEWAY)
    assert document["incoming"] == {
        "numbers": numbers[1:3],
        "delivered_to": "[2001:db8::7]:5070",
    }

    listed = await profiles.list_numbers(store, account="acme")
    assert [(n.e164, n.profile) for n in listed.items] == [
        (numbers[0], "reg"),
        (numbers[1], "pbx"),
        (numbers[2], "pbx"),
        *((n, None) for n in numbers[3:]),
    ]
    page = await profiles.list_numbers(store, account="acme", offset=2, limit=3)
    assert [n.e164 for n in page.items] == numbers[2:5]
    assert (page.total, page.next_offset) == (6, 5)
    only = await profiles.list_numbers(store, account="acme", profile="pbx")
    assert [n.e164 for n in only.items] == numbers[1:3] and only.total == 2
    with pytest.raises(NotFoundError, match="no profile named 'nope' in account 'acme'"):
        await profiles.list_numbers(store, account="acme", profile="nope")
    with pytest.raises(NotFoundError, match="no account named 'nope'"):
        await profiles.list_numbers(store, account="nope")

    version = await store.version()
    back = await profiles.unassign_number(store, "+44 113 496 0001")
    assert (back.e164, back.account, back.profile) == (numbers[1], "acme", None)
    assert await store.version() > version, "running gateways stop delivering it"
    again = await profiles.unassign_number(store, numbers[1], account="acme")
    assert again.profile is None  # in the pool already: stays there
    assert (await profiles.get_profile(store, "pbx", account="acme")).numbers == (numbers[2],)
    # Scoped by account: another account's number is not found at all.
    with pytest.raises(NotFoundError, match=r"no number \+14155550100 in account 'acme'"):
        await profiles.unassign_number(store, "+14155550100", account="acme")
    with pytest.raises(NotFoundError, match=r"no number \+14155550100 in account 'acme'"):
        await profiles.assign_number(store, "+14155550100", profile="pbx", account="acme")
    with pytest.raises(NotFoundError, match=r"no number \+441134960099"):
        await profiles.unassign_number(store, "+441134960099")
    with pytest.raises(ValidationError, match=r"not an E\.164 number"):
        await profiles.unassign_number(store, "12")


async def test_profile_list_pages(store: Store) -> None:
    await acme(store)
    await profiles.create_account(store, name="other", email="o@other.example")
    for name in ("c", "a", "b"):
        await profiles.create_profile(store, account="acme", name=name, auth="registration")
    await profiles.create_profile(store, account="other", name="a", auth="registration")
    page = await profiles.list_profiles(store, offset=1, limit=2)
    assert [(p.account, p.name) for p in page.items] == [("acme", "b"), ("acme", "c")]
    assert (page.total, page.next_offset) == (4, 3)
    mine = await profiles.list_profiles(store, account="acme", limit=2)
    assert [p.name for p in mine.items] == ["a", "b"] and mine.total == 3
    assert all(p.credit == Decimal(0) for p in mine.items)


# ---------------------------------------------------------------------------
# Deletion


async def test_delete_gives_everything_back(store: Store) -> None:
    await acme(store, balance="100")
    doomed = await profiles.create_profile(
        store, account="acme", name="pbx", auth="ip", ip="192.0.2.1", port=5060
    )
    kept = await profiles.create_profile(store, account="acme", name="kept", auth="registration")
    numbers = ["+441134960000", "+441134960001", "+441134960002"]
    await profiles.add_numbers(store, account="acme", numbers=numbers)
    await profiles.assign_number(store, numbers[0], profile="pbx")
    await profiles.assign_number(store, numbers[1], profile="pbx")
    await profiles.assign_number(store, numbers[2], profile="kept")
    await profiles.allocate_credit(store, "pbx", "42.4242")
    await profiles.allocate_credit(store, "kept", "7")
    await insert_records(store, doomed.id, [T0, T0, T0])
    kept_calls = await insert_records(store, kept.id, [T0, T0])

    version = await store.version()
    asked, active = calls(0)
    report = await profiles.delete_profile(
        store, "pbx", confirm="pbx", active_calls=active, settle=settled
    )
    assert [v.id for v in asked] == [doomed.id]
    assert report == profiles.DeletionReport(
        name="pbx",
        account="acme",
        charged=Decimal(0),
        credit_returned=Decimal("42.4242"),
        numbers_released=numbers[:2],
        records_erased=3,
        calls_up=0,
        balance=Decimal(93),
    )
    assert await store.version() > version, "gateways drop its registrations and calls"
    # The balance got the credit back; the numbers are in the pool.
    assert await balance_of(store) == Decimal(93)
    pool = await profiles.list_numbers(store, account="acme")
    assert [(n.e164, n.profile) for n in pool.items] == [
        (numbers[0], None),
        (numbers[1], None),
        (numbers[2], "kept"),
    ]
    with pytest.raises(NotFoundError):
        await profiles.get_profile(store, "pbx")
    # The other profile keeps its credit, numbers and history.
    survivor = await profiles.get_profile(store, "kept")
    assert (survivor.credit, survivor.numbers) == (Decimal(7), (numbers[2],))
    async with store.read() as session:
        left = (await session.scalars(select(CallRecord.call_id).order_by(CallRecord.id))).all()
        erased = await session.scalar(
            select(func.count(CallRecord.id)).where(CallRecord.profile_id == doomed.id)
        )
    assert list(left) == kept_calls and erased == 0
    # The IP:port is free again, and the name.
    again = await profiles.create_profile(
        store, account="acme", name="pbx", auth="ip", ip="192.0.2.1", port=5060
    )
    assert again.credit == Decimal(0) and again.numbers == ()


async def test_delete_needs_confirmation_and_refuses_with_calls_up(store: Store) -> None:
    await acme(store, balance="10")
    await profiles.create_account(store, name="other", email="o@other.example")
    await profiles.create_profile(store, account="acme", name="sales", auth="registration")
    await profiles.create_profile(store, account="other", name="sales", auth="registration")
    await profiles.allocate_credit(store, "sales", "4", account="acme")
    version = await store.version()
    for wrong in ("Sales", "sales ", "", "other"):
        with pytest.raises(ValidationError, match="confirmation does not match"):
            await profiles.delete_profile(
                store, "sales", account="acme", confirm=wrong, active_calls=no_calls, settle=settled
            )
    with pytest.raises(ValidationError, match="several accounts"):
        await profiles.delete_profile(
            store, "sales", confirm="sales", active_calls=no_calls, settle=settled
        )
    with pytest.raises(NotFoundError, match="no profile named 'sales' in account 'nobody'"):
        await profiles.delete_profile(
            store, "sales", account="nobody", confirm="sales", active_calls=no_calls, settle=settled
        )
    _, two_up = calls(2)
    with pytest.raises(CallsUpError, match="has 2 calls up: set end_calls") as info:
        await profiles.delete_profile(
            store, "sales", account="acme", confirm="sales", active_calls=two_up, settle=settled
        )
    assert isinstance(info.value, ConflictError)
    assert await store.version() == version, "nothing was written"
    assert await credit_of(store, "sales") == Decimal(4)
    report = await profiles.delete_profile(
        store,
        "sales",
        account="acme",
        confirm="sales",
        end_calls=True,
        active_calls=two_up,
        settle=settled,
    )
    assert report.calls_up == 2
    assert (report.credit_returned, report.balance) == (Decimal(4), Decimal(10))
    assert [p.account for p in (await profiles.list_profiles(store)).items] == ["other"]


async def test_delete_charges_the_calls_it_ends_before_giving_the_credit_back(
    store: Store,
) -> None:
    """Issue 10 (2): the profile is closed first; while the gateways end
    its calls, they are charged to it (a real call-record writer here), and
    only what is left goes back to the account; the report says what."""
    from gateway.billing.cdr import CallRecordEntry, CallRecordWriter, new_record_key

    await acme(store, balance="100")
    doomed = await profiles.create_profile(store, account="acme", name="s", auth="registration")
    await profiles.allocate_credit(store, "s", "10")
    seen: list[int] = []

    async def gateways_end_the_call(view: ProfileView, version: int) -> None:
        # What a running gateway sees at this version: the profile is gone
        # from its directory (its calls end), and no credit moves meanwhile.
        assert version == await store.version()
        directory = await load_directory(store)
        assert directory.version == version and directory.profile(view.id) is None
        with pytest.raises(ConflictError, match="is being deleted"):
            await profiles.allocate_credit(store, "s", "-1")
        ended = T0 + timedelta(minutes=3)
        writer = CallRecordWriter(store, spool_path=None, on_commit=None)
        writer.submit(
            CallRecordEntry(
                record_key=new_record_key(),
                profile_id=view.id,
                call_id="ended-by-deletion@pbx",
                direction="outbound",
                caller="+441134960000",
                callee="+14155550123",
                started_at=T0,
                answered_at=T0 + timedelta(seconds=5),
                ended_at=ended,
                duration_ms=175_000,
                final_status=200,
                cost=Decimal("1.2500"),
            )
        )
        await writer.close(5.0)
        seen.append(view.id)

    _, one_up = calls(1)
    report = await profiles.delete_profile(
        store, "s", confirm="s", end_calls=True, active_calls=one_up, settle=gateways_end_the_call
    )
    assert seen == [doomed.id]
    assert (report.charged, report.credit_returned) == (Decimal("1.2500"), Decimal("8.7500"))
    assert report.balance == Decimal("98.7500") and report.records_erased == 1
    assert profiles.deletion_document(report)["charged"] == "1.2500"
    assert (await profiles.get_account(store, "acme")).balance == Decimal("98.7500")


async def test_a_deletion_the_gateways_do_not_confirm_leaves_the_money_and_can_go_on(
    store: Store,
) -> None:
    await acme(store, balance="100")
    await profiles.create_profile(store, account="acme", name="s", auth="registration")
    await profiles.allocate_credit(store, "s", "10")

    async def busy(view: ProfileView, _version: int) -> None:
        raise GatewayQueryError("not confirmed")

    with pytest.raises(GatewayQueryError):
        await profiles.delete_profile(store, "s", confirm="s", active_calls=no_calls, settle=busy)
    # Nothing given back, the profile closed to calls, and asking again ends it.
    assert await credit_of(store, "s") == Decimal(10)
    assert (await load_directory(store)).profile(
        (await profiles.get_profile(store, "s")).id
    ) is None
    report = await profiles.delete_profile(
        store, "s", confirm="s", active_calls=no_calls, settle=settled
    )
    assert (report.charged, report.credit_returned, report.balance) == (
        Decimal(0),
        Decimal(10),
        Decimal(100),
    )


async def test_delete_needs_no_secret_key(store: Store, database_url: str) -> None:
    await acme(store)
    await profiles.create_profile(store, account="acme", name="s", auth="registration")
    async with await Store.open(database_url, realm=REALM) as keyless:
        report = await profiles.delete_profile(
            keyless, "s", confirm="s", active_calls=no_calls, settle=settled
        )
    assert report.name == "s"


async def test_delete_races_with_a_credit_move(
    store: Store, database_url: str, secret_key: bytes
) -> None:
    """A deletion and credit moves at once: whatever the order, no money is
    made or lost."""
    await acme(store, balance="100")
    await profiles.create_profile(store, account="acme", name="s", auth="registration")
    await profiles.allocate_credit(store, "s", "50")
    others = [await Store.open(database_url, secret_key=secret_key, realm=REALM) for _ in range(4)]
    try:

        async def move(target: Store, amount: str) -> None:
            try:
                await profiles.allocate_credit(target, "s", amount)
            except (NotFoundError, ConflictError):  # InsufficientFunds; being deleted
                pass

        await asyncio.gather(
            *(move(o, a) for o, a in zip(others, ["10", "-10", "5", "-20"], strict=True)),
            profiles.delete_profile(store, "s", confirm="s", active_calls=no_calls, settle=settled),
        )
    finally:
        for opened in others:
            await opened.close()
    assert await balance_of(store) == Decimal(100)
    with pytest.raises(NotFoundError):
        await profiles.get_profile(store, "s")


# ---------------------------------------------------------------------------
# Creation with the credentials e-mail


async def test_registration_profile_credentials_are_emailed(
    store: Store, smtp_server: mail.StartServer
) -> None:
    await profiles.create_account(store, name="acme", email=mail.ACCOUNT_EMAIL)
    server = smtp_server()
    mailer = SMTPMailer(mail.smtp_settings(server.host, server.port))
    view, notice = await profiles.create_profile_and_notify(
        store, mailer, gateway_addresses=GATEWAY, account="acme", name="sales", auth="registration"
    )
    assert notice == profiles.Notice(emailed=True, recipient=mail.ACCOUNT_EMAIL)
    envelope, message = server.mailbox.only_message()
    assert envelope.mail_from == mail.SENDER and envelope.rcpt_tos == [mail.ACCOUNT_EMAIL]
    body = mail.body_of(message)
    assert view.password is not None
    assert f"Password:       {view.password}" in body.splitlines()
    assert f"SIP username:   {view.sip_username}" in body.splitlines()
    assert f"  {GATEWAY[0]} (UDP, TCP)" in body.splitlines()

    # An IP profile has no secret to send.
    pbx, notice = await profiles.create_profile_and_notify(
        store,
        mailer,
        gateway_addresses=GATEWAY,
        account="acme",
        name="pbx",
        auth="ip",
        ip="192.0.2.1",
        port=5060,
    )
    assert notice == profiles.Notice(emailed=False) and pbx.auth_mode == "ip"
    assert len(server.mailbox.envelopes) == 1


async def test_no_email_when_off_and_a_failed_one_keeps_the_profile(store: Store) -> None:
    await acme(store)
    off = SMTPMailer(settings_from_mapping({}).smtp)
    for mailer in (None, off):
        name = "a" if mailer is None else "b"
        view, notice = await profiles.create_profile_and_notify(
            store, mailer, gateway_addresses=GATEWAY, account="acme", name=name, auth="registration"
        )
        assert notice == profiles.Notice(emailed=False)  # nothing tried, nothing failed
        assert view.password is not None
    host = random_loopback()
    closed = SMTPMailer(mail.smtp_settings(host, free_port(host)))  # nothing listens there
    view, notice = await profiles.create_profile_and_notify(
        store, closed, gateway_addresses=GATEWAY, account="acme", name="c", auth="registration"
    )
    assert (notice.emailed, notice.recipient) == (False, "ops@acme.example")
    assert notice.error is not None and "connection refused" in notice.error
    assert (await profiles.get_profile(store, "c")).password == view.password
    # Creation's own refusals come first: no profile, no e-mail.
    with pytest.raises(ConflictError):
        await profiles.create_profile_and_notify(
            store, closed, gateway_addresses=GATEWAY, account="acme", name="c", auth="registration"
        )
