"""Directory change notifications between processes (PostgreSQL LISTEN/NOTIFY).

Every write that bumps ``directory_version`` on PostgreSQL also sends
``NOTIFY sipgw_directory`` in its transaction (:meth:`gateway.store.database.Store.write`),
so the notification arrives exactly when the change is visible.  Each
gateway node listens on one dedicated connection and wakes its directory
watcher, which reloads at once instead of at the next poll.  The poll stays
as the safety net: a notification lost while the connection was down is
made up for by waking the watcher on every (re)connection.

SQLite has no notifications: one node, and the CLI's changes reach it by
polling (``store.directory_poll_interval``); the REST API runs inside the
gateway and wakes the watcher itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg
from sqlalchemy.engine import make_url

from gateway.store.database import DIRECTORY_CHANNEL

__all__ = ["listen_for_changes"]

logger = logging.getLogger(__name__)

#: Seconds between reconnection attempts while PostgreSQL is away.
RETRY_MIN = 0.5
RETRY_MAX = 10.0
CONNECT_TIMEOUT = 5.0


def _dsn(url: str) -> str:
    """An asyncpg DSN from a ``postgresql+asyncpg://`` SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _setter(event: asyncio.Event) -> Callable[..., None]:
    def set_event(*_args: object) -> None:
        event.set()

    return set_event


async def listen_for_changes(url: str, wake: asyncio.Event) -> None:
    """Set ``wake`` on every directory notification of the database at
    ``url`` (PostgreSQL), and on every (re)connection.  Runs until
    cancelled; connection failures are logged (once per outage) and retried."""
    dsn = _dsn(url)
    delay = RETRY_MIN
    failing = False
    while True:
        connection: asyncpg.Connection | None = None
        try:
            connection = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
            lost = asyncio.Event()
            connection.add_termination_listener(_setter(lost))
            await connection.add_listener(DIRECTORY_CHANNEL, _setter(wake))
            if failing:
                logger.info("directory notifications: listening again")
            failing = False
            delay = RETRY_MIN
            wake.set()  # catch up with whatever changed while we were not listening
            while not lost.is_set():
                # A notification-only connection never sends anything itself,
                # so a dead peer is only noticed by asking now and then.
                try:
                    await asyncio.wait_for(lost.wait(), RETRY_MAX)
                except TimeoutError:
                    await connection.execute("SELECT 1", timeout=CONNECT_TIMEOUT)
            raise ConnectionError("connection closed")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            level = logging.DEBUG if failing else logging.WARNING
            logger.log(level, "directory notifications unavailable, retrying: %s", exc)
            failing = True
        finally:
            if connection is not None and not connection.is_closed():
                connection.terminate()
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX)
