"""Credit shared across the nodes of a cluster, through Redis.

Every node meters its own calls (:mod:`gateway.billing.credit`).  With several
nodes that is not enough: two nodes each running a call of one profile
would each believe the whole credit theirs, and spend it twice.  So every
``interval`` each node tells the others what its calls spend, per profile
(a :class:`~gateway.billing.credit.CreditShare`: live charged calls summed, ended
calls' costs not yet in the database), and hands the sum of theirs to its
router, which subtracts it (:meth:`CreditMeter.set_remote
<gateway.billing.credit.CreditMeter.set_remote>`).  The INVITE path never waits on
Redis for credit: it reads what the last round learnt.

Used with the Redis admission backend only, in the same Redis and under the
same key prefix (``sipgw:`` by default).  Two kinds of key:

- ``<prefix>credit:node:<node id>`` — a hash, profile id → that node's share
  as text (``"calls price price_answered pending"``).  Only its node writes
  it; its time to live (:data:`TTL_ROUNDS` intervals) is renewed every
  round, so a crashed node's shares vanish on their own.
- ``<prefix>credit:nodes`` — the ids of nodes that may hold shares; readers
  drop ids whose hash is gone.

The clock the answer times travel on is Redis server time (``TIME``), as in
the admission scripts, so the nodes' clocks never matter: each node keeps
the offset of its loop clock to it, measured every round.

How stale: a node hears of another node's new call at its first round after
that node's first round after the answer, within two intervals (one on
average), and then counts the call from its answer on.  Until then it may
let its own calls spend what the new call spends in that window: the
profile can be overspent by at most two intervals of the new calls' price.
A node that loses Redis keeps counting what it last heard for one time to
live, then meters its own calls only (and says so in its log); its admission
fails meanwhile anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Final, Protocol
from uuid import uuid4

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.billing.credit import CreditShare

__all__ = [
    "DEFAULT_INTERVAL",
    "TTL_ROUNDS",
    "CreditExchange",
    "CreditParticipant",
    "decode_share",
    "encode_share",
]

logger = logging.getLogger(__name__)

#: Seconds between two rounds.  A new call goes unseen by the other nodes
#: for at most two rounds, so this bounds the overspending; four rounds a
#: second cost a node two round trips to Redis each.
DEFAULT_INTERVAL: Final = 0.25
#: A node's shares outlive its last round by this many intervals: long
#: enough that a node stalled by a busy machine for a moment is not taken
#: for dead (its calls would go uncounted), short enough that a dead node's
#: calls stop being charged to the profile within seconds (until then the
#: other nodes end calls early, never late).
TTL_ROUNDS: Final = 8
#: The loop clock's offset to Redis time is measured every round but only
#: adopted when it moved more than this (seconds): a new offset changes
#: every published answer time.  The other nodes' bound of a call's cost
#: has a second of slack for clock error, so 10 ms cost nothing.
CLOCK_TOLERANCE: Final = 0.01
#: Seconds to wait for Redis to connect or answer: a round that hangs
#: delays the next one, it never blocks a call.
SOCKET_TIMEOUT: Final = 2.0


class CreditParticipant(Protocol):
    """The node's side of the exchange (:class:`gateway.proxy.router.CallRouter`)."""

    def credit_shares(self, clock_offset: float) -> dict[int, CreditShare]:
        """This node's shares, per profile that spends anything."""
        ...

    def apply_remote_credit(
        self, profile_id: int, share: CreditShare | None, clock_offset: float
    ) -> None:
        """The other nodes' shares of a profile, summed (None: nothing)."""
        ...


def encode_share(share: CreditShare) -> str:
    """A share as stored in Redis: four numbers, space-separated."""
    return " ".join(
        (
            str(share.calls),
            format(share.price, "f"),
            format(share.price_answered, "f"),
            format(share.pending, "f"),
        )
    )


def decode_share(text: str) -> CreditShare:
    """The inverse of :func:`encode_share`; :class:`ValueError` for
    anything a node would not have written."""
    parts = text.split(" ")
    if len(parts) != 4:
        raise ValueError(f"not a credit share: {text!r}")
    try:
        numbers = [Decimal(part) for part in parts[1:]]
    except InvalidOperation:
        raise ValueError(f"not a credit share: {text!r}") from None
    if not all(number.is_finite() for number in numbers):
        raise ValueError(f"not a credit share: {text!r}")
    price, price_answered, pending = numbers
    return CreditShare(
        calls=int(parts[0]), price=price, price_answered=price_answered, pending=pending
    )


class CreditExchange:
    """One node's end of the exchange: :meth:`exchange` runs one round
    (publish this node's shares, read the others'), :meth:`start` runs
    rounds every ``interval`` in the background, :meth:`close` stops and
    removes this node's shares.

    ``clock`` is the participant's clock (the event loop's by default):
    the offsets handed to the participant are Redis time minus it.
    """

    def __init__(
        self,
        url: str,
        participant: CreditParticipant,
        *,
        prefix: str = "sipgw:",
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] | None = None,
        node_id: str | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        if not prefix:
            raise ValueError("prefix must not be empty")
        self.participant = participant
        self.interval = interval
        self.node_id = node_id or uuid4().hex
        self._prefix = prefix
        self._ttl_ms = max(1, round(interval * TTL_ROUNDS * 1000))
        self._clock = clock
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
        )
        self._clock_offset: float | None = None
        # profile id -> text this node last wrote into its hash; None while
        # unknown (a round failed), so that the next round rewrites it.
        self._published: dict[int, str] | None = {}
        # profile id -> the other nodes' shares, summed, as last applied.
        self._applied: dict[int, CreditShare] = {}
        self._last_heard: float | None = None  # clock time of the last good round
        self._outage = False
        self._task: asyncio.Task[None] | None = None

    @property
    def ttl(self) -> float:
        """Seconds this node's shares outlive its last round."""
        return self._ttl_ms / 1000

    @property
    def clock_offset(self) -> float | None:
        """Redis time minus the participant's clock, once measured."""
        return self._clock_offset

    def _now(self) -> float:
        if self._clock is None:
            self._clock = asyncio.get_running_loop().time
        return self._clock()

    def _node_key(self, node_id: str) -> str:
        return f"{self._prefix}credit:node:{node_id}"

    def _nodes_key(self) -> str:
        return f"{self._prefix}credit:nodes"

    # -- one round ----------------------------------------------------------------
    async def exchange(self) -> None:
        """Publish what changed in this node's shares (and renew their time
        to live), then read every other node's and hand the sums that
        changed to the participant.  Raises what Redis raises."""
        if self._clock_offset is None:
            before = self._now()
            seconds, micros = await self._redis.time()
            self._adopt_clock(before, seconds + micros / 1e6, self._now())
        offset = self._clock_offset
        assert offset is not None
        await self._publish(offset)
        await self._read()
        self._last_heard = self._now()

    async def _publish(self, offset: float) -> None:
        shares = {
            profile_id: encode_share(share)
            for profile_id, share in self.participant.credit_shares(offset).items()
            if share.spends
        }
        published = self._published
        if not shares and published == {}:
            return  # nothing to tell, nothing told
        self._published = None  # until the transaction answers
        own = self._node_key(self.node_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.exists(own)
        if published is None:
            # What the hash holds is unknown (a failed round): rewrite it.
            pipe.delete(own)
            published = {}
        changed = {p: text for p, text in shares.items() if published.get(p) != text}
        gone = [p for p in published if p not in shares]
        if changed:
            pipe.hset(own, mapping={str(p): text for p, text in changed.items()})
        if gone:
            pipe.hdel(own, *(str(p) for p in gone))
        if shares:
            pipe.pexpire(own, self._ttl_ms)
            pipe.sadd(self._nodes_key(), self.node_id)
            pipe.pexpire(self._nodes_key(), self._ttl_ms)
        else:
            pipe.srem(self._nodes_key(), self.node_id)
        existed, *_ = await pipe.execute()
        if published and not existed:
            # The hash expired (this node stalled past its time to live) or
            # Redis lost it: rewrite it whole next round.
            logger.warning("credit sharing: this node's shares were lost in Redis; rewriting them")
            return
        self._published = shares

    async def _read(self) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.time()
        pipe.smembers(self._nodes_key())
        before = self._now()
        (seconds, micros), members = await pipe.execute()
        offset_moved = self._adopt_clock(before, seconds + micros / 1e6, self._now())
        others = sorted(m for m in members if m != self.node_id)
        pipe = self._redis.pipeline(transaction=False)
        for node_id in others:
            pipe.hgetall(self._node_key(node_id))
        hashes: list[dict[str, str]] = await pipe.execute() if others else []
        remote: dict[int, CreditShare] = {}
        gone: list[str] = []
        for node_id, fields in zip(others, hashes, strict=True):
            if not fields:
                gone.append(node_id)  # expired, or it had nothing left
                continue
            for field, text in fields.items():
                try:
                    profile_id, share = int(field), decode_share(text)
                except ValueError:
                    logger.debug("credit sharing: node %s: bad share %r", node_id, text)
                    continue
                held = remote.get(profile_id)
                remote[profile_id] = share if held is None else held + share
        if gone:
            # A node that comes back adds itself again at its next round.
            await self._redis.srem(self._nodes_key(), *gone)
        self._apply(remote, force=offset_moved)

    def _adopt_clock(self, before: float, redis_time: float, after: float) -> bool:
        """Measure the offset from one ``TIME`` read between ``before`` and
        ``after``; True when a new offset was adopted."""
        measured = redis_time - (before + after) / 2
        held = self._clock_offset
        if held is not None and abs(measured - held) <= CLOCK_TOLERANCE:
            return False
        self._clock_offset = measured
        return held is not None

    def _apply(self, remote: dict[int, CreditShare], *, force: bool = False) -> None:
        offset = self._clock_offset
        assert offset is not None
        for profile_id in self._applied.keys() - remote.keys():
            self.participant.apply_remote_credit(profile_id, None, offset)
        for profile_id, share in remote.items():
            if force or self._applied.get(profile_id) != share:
                self.participant.apply_remote_credit(profile_id, share, offset)
        self._applied = remote

    # -- in the background ----------------------------------------------------------
    def start(self) -> None:
        """Run a round every ``interval`` (idempotent; needs a running loop)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"credit-share[{self._prefix}]"
            )

    async def _run(self) -> None:
        while True:
            try:
                await self.exchange()
            except (RedisError, OSError) as error:
                self._unreachable(error)
            except Exception:
                # A bug must not stop the exchange for the node's lifetime.
                logger.exception("credit sharing: round failed")
            else:
                if self._outage:
                    self._outage = False
                    logger.info("credit sharing: Redis is back; other nodes' calls count again")
            await asyncio.sleep(self.interval)

    def _unreachable(self, error: Exception) -> None:
        """Redis failed a round: say so once per outage; once what was heard
        is older than a time to live, forget it (this node then meters its
        own calls only)."""
        if not self._outage:
            self._outage = True
            logger.warning(
                "credit sharing: Redis unreachable (%s); other nodes' calls are counted "
                "as last heard for %.1f s, then this node meters its own calls only",
                error,
                self.ttl,
            )
        heard = self._last_heard
        if self._applied and (heard is None or self._now() - heard > self.ttl):
            logger.warning("credit sharing: metering this node's calls only until Redis is back")
            self._apply({})

    async def close(self) -> None:
        """Stop the rounds and remove this node's shares (its calls have
        ended; what they cost is in the database or on its way)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.delete(self._node_key(self.node_id))
            pipe.srem(self._nodes_key(), self.node_id)
            await pipe.execute()
        except (RedisError, OSError) as error:
            logger.warning("credit sharing: could not remove this node's shares: %s", error)
        finally:
            await self._redis.aclose()
