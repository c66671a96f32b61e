"""The store: the management database, opened, migrated and used the same
way by ``sipgw serve`` and by the CLI.

Opening a :class:`Store` runs Alembic's ``upgrade head`` programmatically
(no ``alembic.ini``), under a lock, so that a gateway and a CLI command
started at the same moment on a fresh database do not both create it:
``BEGIN IMMEDIATE`` on SQLite, a transaction-scoped advisory lock on
PostgreSQL (whose DDL is transactional, so a failed migration leaves
nothing behind).

Transactions come in two kinds:

* :meth:`Store.read` — a consistent snapshot (REPEATABLE READ on
  PostgreSQL; one SQLite read transaction), so that the directory loaded in
  several queries matches the version read with it;
* :meth:`Store.write` — a change to the directory: it takes SQLite's write
  lock up front (a deferred transaction that reads and then writes can fail
  at once with "database is locked" instead of waiting) and increments
  ``directory_version`` in the same transaction before committing, which is
  how running gateways notice.

The store also holds the Fernet key that encrypts the retrievable SIP
passwords, and the digest realm the HA1 values are computed for (HA1 binds
username, realm and password: RFC 7616 §3.4.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import Connection, event, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from gateway.config.settings import (
    DEFAULT_REALM,
    SECRET_KEY_ENV,
    GatewaySettings,
    StoreSettings,
    parse_database_url,
)
from gateway.store.models import DirectoryVersion

__all__ = [
    "MIGRATIONS_DIR",
    "SecretKeyError",
    "Store",
    "StoreError",
    "alembic_config",
    "load_secret_key",
    "open_store",
]

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: How long a SQLite connection waits for another process's write lock
#: before giving up (the CLI and the gateway share the file; writes are
#: short, so a few seconds of waiting means something is stuck).
SQLITE_BUSY_TIMEOUT = 10.0
#: Pause between attempts at what SQLite refuses at once instead of waiting.
SQLITE_RETRY_INTERVAL = 0.05
#: Arbitrary constant identifying the migration lock among PostgreSQL
#: advisory locks ("sipgw" in ASCII).
MIGRATION_LOCK_ID = 0x7369706777
#: Option on a connection that makes SQLite begin with BEGIN IMMEDIATE.
_WRITE_OPTION = "sipgw_write"
#: The PostgreSQL NOTIFY channel of directory changes.
DIRECTORY_CHANNEL = "sipgw_directory"


class StoreError(Exception):
    """A store problem phrased for the operator (one line)."""


class SecretKeyError(StoreError):
    """The key for the retrievable passwords is missing, unreadable or wrong."""


# ---------------------------------------------------------------------------
# The secret key


def _check_key(key: bytes, origin: str) -> bytes:
    try:
        Fernet(key)
    except (ValueError, TypeError):
        raise SecretKeyError(
            f"{origin} is not a Fernet key (32 bytes in URL-safe base64, 44 characters)"
        ) from None
    return key


def load_secret_key(settings: StoreSettings, environ: Mapping[str, str] | None = None) -> bytes:
    """The Fernet key: ``$SIPGW_SECRET_KEY`` if set, else the key file, which
    is created (mode 0600, in a directory created 0700 if needed) when it does
    not exist.

    Creation writes a temporary file and hard-links it into place, so two
    processes starting together end up with one key, never a half-written one.
    """
    env = os.environ if environ is None else environ
    value = env.get(SECRET_KEY_ENV, "").strip()
    if value:
        return _check_key(value.encode("ascii", "replace"), SECRET_KEY_ENV)
    path = settings.secret_key_file
    try:
        return _check_key(path.read_bytes().strip(), f"secret key file {path}")
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SecretKeyError(f"cannot read secret key file {path}: {exc.strerror}") from None
    key = Fernet.generate_key()
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key + b"\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:  # another process won the race: use its key
            return _check_key(path.read_bytes().strip(), f"secret key file {path}")
    except OSError as exc:
        raise SecretKeyError(f"cannot create secret key file {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
    return key


# ---------------------------------------------------------------------------
# Alembic


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic configuration without ``alembic.ini``: the migrations of
    this package, and either a live connection (what :meth:`Store.open`
    passes) or a URL (for a developer's ``command.revision(...)``)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _quiet_alembic() -> None:
    """Alembic announces its dialect and every step at INFO on each start;
    that is noise for an operator (and breaks the one-line error promise
    when start-up fails later).  Its messages go to DEBUG unless someone
    configured the ``alembic`` logger explicitly."""
    alembic_logger = logging.getLogger("alembic")
    if alembic_logger.level == logging.NOTSET:
        alembic_logger.setLevel(
            logging.DEBUG if logger.isEnabledFor(logging.DEBUG) else logging.WARNING
        )


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Held until the transaction ends: a second process waits here, then
        # finds the schema at head and does nothing.
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
    command.upgrade(alembic_config(connection), "head")


# ---------------------------------------------------------------------------
# Engines


def _sqlite_pragmas(engine: AsyncEngine) -> None:
    """Real transactions on SQLite: the driver's own transaction handling is
    switched off and BEGIN is emitted by us (the SQLAlchemy-documented recipe
    for pysqlite/aiosqlite), so that DDL is transactional and writers can
    take the lock up front.  Foreign keys are off by default in SQLite."""

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection: Connection) -> None:
        writing = connection.get_execution_options().get(_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")


async def _write_ahead_log(engine: AsyncEngine) -> None:
    """Switch a SQLite database to WAL, so that the gateway's reads and the
    CLI's writes do not block each other.  The mode is stored in the file;
    switching needs a moment of exclusive access, and SQLite answers "locked"
    at once (without waiting) when processes open a new file together, so it
    is retried, for at most :data:`SQLITE_BUSY_TIMEOUT`.  It runs on the raw
    driver connection: the mode cannot change inside a transaction."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SQLITE_BUSY_TIMEOUT
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        while True:
            try:
                cursor = await driver.execute("PRAGMA journal_mode = WAL")
                await cursor.close()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or loop.time() > deadline:
                    raise
            await asyncio.sleep(SQLITE_RETRY_INTERVAL)


def _create_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite"):
        database = Path(parsed.database or "")
        database.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT})
        _sqlite_pragmas(engine)
        return engine
    # pre-ping: a gateway outlives database restarts; a dead pooled
    # connection is replaced instead of failing the next poll.
    return create_async_engine(url, pool_pre_ping=True)


def _describe(exc: BaseException) -> str:
    """The first line of a driver error, without SQLAlchemy's background link."""
    origin = getattr(exc, "orig", None) or exc
    message = str(origin).strip().splitlines()
    return message[0] if message else type(origin).__name__


class Store:
    """An open database plus what the service layer needs beside it."""

    def __init__(
        self, engine: AsyncEngine, *, secret_key: bytes | None = None, realm: str = DEFAULT_REALM
    ) -> None:
        self.engine = engine
        self.realm = realm
        self._cipher = None if secret_key is None else Fernet(secret_key)
        if engine.dialect.name == "postgresql":
            reader = engine.execution_options(isolation_level="REPEATABLE READ")
        else:
            reader = engine
        self._read_sessions = async_sessionmaker(reader, expire_on_commit=False)
        self._write_sessions = async_sessionmaker(
            engine.execution_options(**{_WRITE_OPTION: True}), expire_on_commit=False
        )

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        secret_key: bytes | None = None,
        realm: str = DEFAULT_REALM,
        migrate: bool = True,
    ) -> Store:
        """Connect to ``url`` (creating a SQLite file's directory) and bring the
        schema to the newest revision.  Failures are :class:`StoreError`."""
        url = parse_database_url(url, "database")
        shown = make_url(url).render_as_string(hide_password=True)
        try:
            engine = _create_engine(url)
        except OSError as exc:
            raise StoreError(f"cannot open database {shown}: {exc.strerror or exc}") from None
        store = cls(engine, secret_key=secret_key, realm=realm)
        if migrate:
            _quiet_alembic()
            try:
                if store.dialect == "sqlite":
                    await _write_ahead_log(engine)
                async with engine.connect() as connection:
                    locked = await connection.execution_options(**{_WRITE_OPTION: True})
                    async with locked.begin():
                        await locked.run_sync(_upgrade)
            except Exception as exc:
                await engine.dispose()
                raise StoreError(f"cannot open database {shown}: {_describe(exc)}") from exc
        return store

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """The database URL, password included (for a second connection)."""
        return self.engine.url.render_as_string(hide_password=False)

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    # -- transactions ----------------------------------------------------------
    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session on one consistent snapshot; nothing is committed."""
        async with self._read_sessions() as session, session.begin():
            yield session

    @contextlib.asynccontextmanager
    async def write(self, *, bump: bool = True) -> AsyncIterator[AsyncSession]:
        """A session whose changes commit together with a directory version
        bump, or roll back entirely if the block raises.  ``bump=False`` is
        for writes the running gateways need not reload for (call records,
        API tokens)."""
        async with self._write_sessions() as session, session.begin():
            yield session
            if bump:
                await session.flush()
                await session.execute(
                    update(DirectoryVersion)
                    .where(DirectoryVersion.id == 1)
                    .values(version=DirectoryVersion.version + 1)
                )
                if self.dialect == "postgresql":
                    # Delivered to every listening gateway when (and only if)
                    # the transaction commits (PostgreSQL NOTIFY).
                    await session.execute(
                        text("SELECT pg_notify(:channel, '')"), {"channel": DIRECTORY_CHANNEL}
                    )

    async def version(self) -> int:
        """The directory version: what the gateway polls."""
        async with self._read_sessions() as session, session.begin():
            value = await session.scalar(
                select(DirectoryVersion.version).where(DirectoryVersion.id == 1)
            )
        if value is None:
            raise StoreError("the directory_version row is missing")
        return int(value)

    # -- retrievable passwords ------------------------------------------------
    @property
    def has_secret_key(self) -> bool:
        return self._cipher is not None

    def _fernet(self) -> Fernet:
        if self._cipher is None:
            raise SecretKeyError(f"no secret key: set {SECRET_KEY_ENV} or store.secret_key_file")
        return self._cipher

    def encrypt(self, password: str) -> str:
        """The Fernet token (authenticated encryption) of ``password``."""
        return self._fernet().encrypt(password.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        """The password back; :class:`SecretKeyError` if this key did not
        encrypt it (the key was replaced or the value tampered with)."""
        try:
            return self._fernet().decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise SecretKeyError(
                "a stored password cannot be decrypted with this secret key (was the key replaced?)"
            ) from None


async def open_store(
    settings: GatewaySettings, *, environ: Mapping[str, str] | None = None
) -> Store:
    """The store as ``settings`` configure it: database, secret key (created
    on first use) and the SIP realm."""
    key = load_secret_key(settings.store, environ)
    return await Store.open(settings.store.database, secret_key=key, realm=settings.sip.realm)
