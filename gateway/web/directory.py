"""The profile directory read from the store and kept current.

The call path reads only its in-memory :class:`~gateway.proxy.directory.Directory`,
never the store (DESIGN.md); reading the store into one, and noticing when
it moved, is wiring between the two layers, so it lives here.
:func:`load_directory` reads every profile, assigned number and rate in one
snapshot; :func:`watch_directory` polls the store's ``directory_version``
(woken at once by a change made in this process or notified by another
one) and hands each new snapshot to the router.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import types
from collections.abc import Callable

from sqlalchemy import select

from gateway.proxy.directory import Directory, ProfileEntry
from gateway.store.database import Store
from gateway.store.models import Account, AuthMode, DirectoryVersion, Number, Profile, Rate
from sip.digest import ha1

__all__ = ["LOAD_TIMEOUT", "load_directory", "watch_directory"]

logger = logging.getLogger(__name__)

#: Longest a poll plus reload may take before it is abandoned and retried
#: on the next tick: a hung database connection must not freeze the watcher
#: forever (the gateway keeps serving from the snapshot it has).
LOAD_TIMEOUT = 30.0


async def load_directory(store: Store) -> Directory:
    """Read every profile and assigned number in one snapshot.

    HA1 values bind the realm (RFC 7616 §3.4.2).  A profile whose HA1 was
    computed for another realm than the store's (the operator changed
    ``sip.realm``) gets its HA1 recomputed here from the retrievable
    password, in memory, so that its PBX keeps registering; without the
    secret key it is left as it is and a warning says why it will fail.
    """
    async with store.read() as session:
        version = await session.scalar(
            select(DirectoryVersion.version).where(DirectoryVersion.id == 1)
        )
        rows = (
            await session.execute(
                select(Profile, Account.name)
                .join(Account, Profile.account_id == Account.id)
                # A profile being deleted is gone for the SIP path: its
                # calls end and its registrations go (profiles.delete_profile).
                .where(Profile.closing_since.is_(None))
                .order_by(Profile.id)
            )
        ).all()
        numbers = await session.execute(
            select(Number.e164, Number.profile_id).where(Number.profile_id.is_not(None))
        )
        assigned = {e164: profile_id for e164, profile_id in numbers if profile_id is not None}
        rates = dict((await session.execute(select(Rate.prefix, Rate.price_per_minute))).all())
    entries = [_entry(store, profile, account) for profile, account in rows]
    return Directory(entries, assigned, version=int(version or 0), rates=rates)


def _entry(store: Store, profile: Profile, account: str) -> ProfileEntry:
    hashes: dict[str, str] = {}
    if profile.auth_mode == AuthMode.REGISTRATION:
        if profile.ha1_md5 is not None:
            hashes["MD5"] = profile.ha1_md5
        if profile.ha1_sha256 is not None:
            hashes["SHA-256"] = profile.ha1_sha256
        if profile.realm != store.realm:
            if store.has_secret_key and profile.password_encrypted is not None:
                password = store.decrypt(profile.password_encrypted)
                hashes = {a: ha1(profile.sip_username, store.realm, password, a) for a in hashes}
            else:
                logger.warning(
                    "profile %s: its HA1 is for realm %r, not %r, and there is no secret key"
                    " to recompute it; its PBX cannot authenticate",
                    profile.name,
                    profile.realm,
                    store.realm,
                )
    return ProfileEntry(
        id=profile.id,
        account_id=profile.account_id,
        name=profile.name,
        auth_mode=profile.auth_mode,
        sip_username=profile.sip_username,
        ha1=types.MappingProxyType(hashes),
        ip=profile.ip_address,
        port=profile.udp_port,
        channel_limit=profile.channel_limit,
        account=account,
        credit=profile.credit,
    )


async def watch_directory(
    store: Store,
    apply: Callable[[Directory], None],
    interval: float,
    *,
    current: int | None = None,
    wake: asyncio.Event | None = None,
) -> None:
    """Poll ``directory_version`` every ``interval`` seconds; when it differs
    from the version last applied, load the directory and ``apply`` it.
    Setting ``wake`` checks at once (a change made in this process, or a
    notification from another one) instead of at the next tick.

    ``current`` is the version the caller already holds (None: load on the
    first tick).  Each tick does one primary-key read and at most one
    reload, bounded by :data:`LOAD_TIMEOUT`.  A database error is logged (once
    per outage, at warning; repeats at debug) and retried on the next tick,
    as is an ``apply`` that raises.  Runs until cancelled.
    """
    applied = current
    failing = False
    while True:
        try:
            async with asyncio.timeout(LOAD_TIMEOUT):
                version = await store.version()
                if version != applied:
                    directory = await load_directory(store)
                    apply(directory)
                    applied = directory.version
                    logger.info(
                        "profile directory reloaded: %d profiles (version %d)",
                        len(directory),
                        directory.version,
                    )
            if failing:
                logger.info("profile directory: the store answers again")
                failing = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            level = logging.DEBUG if failing else logging.WARNING
            logger.log(level, "profile directory not refreshed, retrying: %s", exc)
            failing = True
        if wake is None:
            await asyncio.sleep(interval)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), interval)
            wake.clear()
