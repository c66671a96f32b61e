"""Redis admission: one channel count shared by several gateway nodes.

Every node of a cluster talks to the same Redis, so a profile's limit holds
across the cluster, not per node.  Three kinds of key, under a configurable
prefix (``sipgw:`` by default; tests use a unique one each):

- ``<prefix>p:<profile_id>`` — a sorted set of the Call-IDs holding a channel
  of that profile, each scored by its lease expiry (milliseconds, Redis
  server time).  A member whose score has passed holds nothing.
- ``<prefix>c:<call_id>`` — the profile a Call-ID holds a channel of, with
  the same time to live as its lease, so ``release(call_id)`` needs only the
  Call-ID (the router knows no more when a call ends).
- ``<prefix>profiles`` — the ids of profiles that may hold channels, so
  :meth:`RedisAdmission.counts` needs no ``SCAN``; pruned when found empty.

Atomicity (DESIGN.md: acquiring a channel is one atomic step) comes from Lua:
``acquire`` is one script that drops expired members, answers a Call-ID that
already holds a channel, compares the live count with the limit and adds the
call, with no other client able to run in between.  ``release`` is one script
too.  Scripts read ``redis.call('TIME')``, so the nodes' clocks never matter.

Leases are why a crashed node cannot leak channels: every call this node
admitted is renewed every ``lease_seconds / 3`` by a background task; a node
that dies stops renewing and its channels expire within ``lease_seconds``.

Needs a standalone Redis ≥ 5 (or one whose keys of a prefix share a slot):
the release script derives the profile's key from the stored profile id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, Final

import redis.asyncio as aioredis

from admission.types import (
    AdmissionResult,
    Admitted,
    Rejected,
    RejectReason,
    clamp_limit,
)

__all__ = ["DEFAULT_LEASE_SECONDS", "MAX_LEASE_SECONDS", "RedisAdmission"]

log = logging.getLogger(__name__)

#: A crashed node's channels come back within the lease: a minute is short
#: enough that a profile is not locked out for long after a crash, long enough
#: that a Redis hiccup of a few seconds costs no live call (three renewals
#: fit in one lease).
DEFAULT_LEASE_SECONDS: Final = 60.0
#: A longer lease would leave a crashed node's channels blocked for more than
#: a minute and a half — customers calling into a "full" profile that is in
#: fact empty.  Refused rather than clamped: it is a configuration mistake.
MAX_LEASE_SECONDS: Final = 90.0
#: Renewal runs this many times per lease, so a lease survives two failed
#: renewal rounds (a brief Redis outage) before it lapses.
RENEWALS_PER_LEASE: Final = 3
#: Calls renewed by one script invocation: keeps each script well under a
#: millisecond, so a renewal round never stalls other nodes' acquires
#: (Redis runs one script at a time).
RENEW_BATCH: Final = 500
#: Profiles counted by one script invocation in :meth:`RedisAdmission.counts`,
#: for the same reason.
COUNT_BATCH: Final = 500
#: Connections one controller opens at most.  A burst of concurrent acquires
#: queues for a connection rather than opening one socket per call (a SIP
#: flood would otherwise open thousands of sockets to Redis).
MAX_CONNECTIONS: Final = 32
#: Seconds to wait for Redis to accept a connection or answer.  Admission is
#: on the call-setup path: better a quick failure than a hung INVITE.
SOCKET_TIMEOUT: Final = 5.0

# Lua: milliseconds of Redis server time.  TIME answers {seconds, micros}.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Keep a profile's set alive at least as long as its newest lease, so a
# profile nobody touches any more disappears on its own.
_KEEP_SET = """
local function keep(key, lease)
  if redis.call('PTTL', key) < lease then redis.call('PEXPIRE', key, lease) end
end
"""

# KEYS: profile set, call key, profiles set.
# ARGV: call_id, limit, lease_ms, profile_id.
# Returns {status, in_use}: status 1 admitted, 0 channel limit, 2 call id
# held by another profile.
_ACQUIRE = (
    _NOW
    + _KEEP_SET
    + """
local zset, callkey, profiles = KEYS[1], KEYS[2], KEYS[3]
local call_id, limit, lease, pid = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
redis.call('ZREMRANGEBYSCORE', zset, '-inf', now)
local holder = redis.call('GET', callkey)
if holder and holder ~= pid then
  return {2, redis.call('ZCARD', zset)}
end
local expiry = now + lease
if redis.call('ZSCORE', zset, call_id) then
  -- A retransmission: the call keeps its channel, its lease starts again.
  redis.call('ZADD', zset, expiry, call_id)
  redis.call('SET', callkey, pid, 'PX', lease)
  keep(zset, lease)
  return {1, redis.call('ZCARD', zset)}
end
local used = redis.call('ZCARD', zset)
if used >= limit then
  return {0, used}
end
redis.call('ZADD', zset, expiry, call_id)
redis.call('SET', callkey, pid, 'PX', lease)
redis.call('SADD', profiles, pid)
keep(zset, lease)
return {1, used + 1}
"""
)

# KEYS: call key, profiles set.  ARGV: profile-set key prefix, call_id.
# Returns 1 if a live channel was freed, else 0.
_RELEASE = (
    _NOW
    + """
local pid = redis.call('GET', KEYS[1])
if not pid then return 0 end
redis.call('DEL', KEYS[1])
local zset = ARGV[1] .. pid
local score = redis.call('ZSCORE', zset, ARGV[2])
redis.call('ZREM', zset, ARGV[2])
redis.call('ZREMRANGEBYSCORE', zset, '-inf', now)
if redis.call('ZCARD', zset) == 0 then redis.call('SREM', KEYS[2], pid) end
if score and tonumber(score) > now then return 1 end
return 0
"""
)

# KEYS: profile set.  Returns the live count.
_IN_USE = (
    _NOW
    + """
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""
)

# KEYS: profiles set, then one profile set per profile.  ARGV: the profile ids
# in the same order.  Returns the live count of each; empty profiles are
# dropped from the profiles set.
_COUNTS = (
    _NOW
    + """
local out = {}
for i = 2, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  local n = redis.call('ZCARD', KEYS[i])
  if n == 0 then redis.call('SREM', KEYS[1], ARGV[i - 1]) end
  out[i - 1] = n
end
return out
"""
)

# KEYS: (profile set, call key) per call.  ARGV: lease_ms, then (call_id,
# profile_id) per call.  Extends only leases still live: a lease that lapsed
# (this node stalled past it) or a call another node released is not brought
# back, since its channel may already belong to someone else.  Returns the
# 1-based positions of the calls whose lease was lost.
_RENEW = (
    _NOW
    + _KEEP_SET
    + """
local lease = tonumber(ARGV[1])
local expiry = now + lease
local lost = {}
for i = 1, #KEYS / 2 do
  local zset, callkey = KEYS[2 * i - 1], KEYS[2 * i]
  local call_id, pid = ARGV[2 * i], ARGV[2 * i + 1]
  local score = redis.call('ZSCORE', zset, call_id)
  if score and tonumber(score) > now then
    if tonumber(score) < expiry then redis.call('ZADD', zset, expiry, call_id) end
    redis.call('SET', callkey, pid, 'PX', lease)
    keep(zset, lease)
  else
    lost[#lost + 1] = i
  end
end
return lost
"""
)


class RedisAdmission:
    """Channel counts in a Redis shared by every node (an :class:`AdmissionController`).

    Create one per node (per process) and share it between coroutines of
    one event loop.  The lease-renewal task starts on the first ``acquire``
    or on :meth:`start`; :meth:`close` stops it and closes the connections.

    ``close`` does not release the calls this node holds: their leases lapse
    within ``lease_seconds``, as after a crash.  A node shutting down cleanly
    while its calls go on elsewhere should release them itself.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "sipgw:",
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        if not 0 < lease_seconds <= MAX_LEASE_SECONDS:
            raise ValueError(f"lease_seconds must be within (0, {MAX_LEASE_SECONDS}]")
        if not prefix:
            raise ValueError("prefix must not be empty")
        self._prefix = prefix
        self._lease_ms = max(1, round(lease_seconds * 1000))
        self._renew_interval = lease_seconds / RENEWALS_PER_LEASE
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=SOCKET_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
            decode_responses=True,
        )
        # from_pool: the client owns the pool, so aclose() closes its sockets.
        self._redis: aioredis.Redis = aioredis.Redis.from_pool(pool)
        # register_script runs EVALSHA and falls back to EVAL (loading the
        # script) when Redis answers NOSCRIPT, e.g. after a restart.
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._release = self._redis.register_script(_RELEASE)
        self._in_use = self._redis.register_script(_IN_USE)
        self._counts = self._redis.register_script(_COUNTS)
        self._renew = self._redis.register_script(_RENEW)
        # call_id -> (profile_id, token): the calls this node admitted and
        # renews.  The token tells a call re-admitted during a renewal round
        # from the one that round found lost.
        self._held: dict[str, tuple[int, int]] = {}
        self._token = 0
        self._renewer: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def prefix(self) -> str:
        """The prefix of every key this controller writes."""
        return self._prefix

    @property
    def lease_seconds(self) -> float:
        """How long a call's channel outlives the last renewal."""
        return self._lease_ms / 1000

    @property
    def held(self) -> int:
        """How many calls this node holds and renews."""
        return len(self._held)

    def start(self) -> None:
        """Start renewing leases (idempotent; needs a running event loop)."""
        self._check_open()
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(
                self._renew_forever(), name=f"admission-renew[{self._prefix}]"
            )

    async def acquire(self, profile_id: int, call_id: str, limit: int) -> AdmissionResult:
        """Take a channel if the profile is under its (clamped) limit, in one script."""
        self._check_open()
        if not call_id:
            raise ValueError("call_id must not be empty")
        self.start()
        limit = clamp_limit(limit)
        status, used = await self._acquire(
            keys=[self._profile_key(profile_id), self._call_key(call_id), self._profiles_key()],
            args=[call_id, limit, self._lease_ms, profile_id],
        )
        if status == 1:
            self._token += 1
            self._held[call_id] = (profile_id, self._token)
            return Admitted(profile_id=profile_id, call_id=call_id, in_use=int(used))
        reason = RejectReason.CHANNEL_LIMIT if status == 0 else RejectReason.CALL_ID_IN_USE
        return Rejected(reason=reason, in_use=int(used), limit=limit)

    async def release(self, call_id: str) -> bool:
        """Free the channel ``call_id`` holds, whichever node admitted it.

        ``False`` if it holds none: released already, never admitted, or its
        lease lapsed.
        """
        self._check_open()
        self._held.pop(call_id, None)
        freed = await self._release(
            keys=[self._call_key(call_id), self._profiles_key()],
            args=[self._prefix + "p:", call_id],
        )
        return bool(freed)

    async def in_use(self, profile_id: int) -> int:
        """Live channels of ``profile_id`` across every node."""
        self._check_open()
        return int(await self._in_use(keys=[self._profile_key(profile_id)]))

    async def counts(self) -> dict[int, int]:
        """Live channels per profile across every node, for profiles holding any.

        Reads the profiles set, then counts ``COUNT_BATCH`` profiles per
        script; the work is bounded by the number of profiles in use.
        """
        self._check_open()
        members = await self._redis.smembers(self._profiles_key())
        profile_ids = sorted(int(m) for m in members)
        result: dict[int, int] = {}
        for start in range(0, len(profile_ids), COUNT_BATCH):
            batch = profile_ids[start : start + COUNT_BATCH]
            live = await self._counts(
                keys=[self._profiles_key(), *(self._profile_key(p) for p in batch)],
                args=batch,
            )
            result.update((p, int(n)) for p, n in zip(batch, live, strict=True) if int(n))
        return result

    async def renew(self) -> int:
        """Renew the leases of every call this node holds, now; returns the
        number of leases found lost (which this node then stops renewing).

        The background task calls this every ``lease_seconds / 3``.
        """
        self._check_open()
        snapshot = list(self._held.items())
        lost = 0
        for start in range(0, len(snapshot), RENEW_BATCH):
            batch = snapshot[start : start + RENEW_BATCH]
            keys: list[str] = []
            args: list[Any] = [self._lease_ms]
            for call_id, (profile_id, _token) in batch:
                keys += [self._profile_key(profile_id), self._call_key(call_id)]
                args += [call_id, profile_id]
            positions: Sequence[int] = await self._renew(keys=keys, args=args)
            for position in positions:
                call_id, held = batch[int(position) - 1]
                if self._held.get(call_id) == held:
                    del self._held[call_id]
                    lost += 1
                    log.warning("admission lease lost for call %s (profile %d)", call_id, held[0])
        return lost

    async def close(self) -> None:
        """Stop renewing and close the connections; held leases lapse on their own."""
        if self._closed:
            return
        self._closed = True
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        self._held.clear()
        await self._redis.aclose()

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._renew_interval)
            try:
                await self.renew()
            except Exception:
                # Redis down, a timeout, anything: try again next round (a
                # lease survives two missed rounds) rather than let the task
                # die and every call this node holds lapse with it.
                log.exception("admission lease renewal failed")

    def _profile_key(self, profile_id: int) -> str:
        return f"{self._prefix}p:{profile_id}"

    def _call_key(self, call_id: str) -> str:
        return f"{self._prefix}c:{call_id}"

    def _profiles_key(self) -> str:
        return f"{self._prefix}profiles"

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("admission controller is closed")
