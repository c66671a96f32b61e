"""Directory notifications over a real PostgreSQL connection (LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gateway.manage import profiles
from gateway.store.database import Store
from gateway.store.notify import listen_for_changes
from tests.unit.test_store import REALM, postgres_url  # noqa: F401 - the fixture

WAIT = 10.0  # generous bound for a notification to arrive


async def test_a_committed_change_wakes_every_listener_and_a_rolled_back_one_does_not(
    postgres_url: str,  # noqa: F811 - the imported fixture
) -> None:
    wakes = [asyncio.Event(), asyncio.Event()]
    async with await Store.open(postgres_url, realm=REALM) as writer:
        tasks = [asyncio.create_task(listen_for_changes(writer.url, wake)) for wake in wakes]
        try:
            # Each listener wakes once when it connects (to catch up).
            for wake in wakes:
                await asyncio.wait_for(wake.wait(), WAIT)
                wake.clear()
            # A change that rolls back notifies nobody.
            with contextlib.suppress(RuntimeError):
                async with writer.write():
                    raise RuntimeError("changed my mind")
            await asyncio.sleep(0.5)
            assert not any(wake.is_set() for wake in wakes)
            # A committed change reaches every listener.
            await profiles.create_account(writer, name="acme-notify", email="ops@acme.example")
            for wake in wakes:
                await asyncio.wait_for(wake.wait(), WAIT)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with pytest.raises(asyncio.CancelledError):
                    await task


async def test_an_unreachable_database_is_retried_until_cancelled() -> None:
    wake = asyncio.Event()
    task = asyncio.create_task(
        listen_for_changes("postgresql+asyncpg://nobody@127.0.0.1:1/none", wake)
    )
    await asyncio.sleep(1.0)
    assert not task.done() and not wake.is_set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
