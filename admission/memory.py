"""In-process admission: the embedded default for a single node.

Atomicity comes from asyncio itself: coroutines on one event loop only
interleave at an ``await``, and :meth:`MemoryAdmission.acquire` has none
between reading a profile's count and taking the channel.  That is the
in-memory form of the compare-and-increment DESIGN.md asks for; the Redis
backend (issue 4) gets the same guarantee from one Lua script.

The state is two dictionaries: which profile each call holds a channel of
(so ``release`` needs only the Call-ID, as the router knows it when a call
ends) and how many channels each profile holds.  Memory is bounded by the
channels actually held, at most ``MAX_CHANNELS`` per profile: a profile that
holds nothing has no entry at all.

Not thread-safe, and not shared between processes: use it from one event
loop.  Several workers or nodes need the Redis backend.
"""

from __future__ import annotations

from admission.types import (
    AdmissionResult,
    Admitted,
    Rejected,
    RejectReason,
    clamp_limit,
)

__all__ = ["MemoryAdmission"]


class MemoryAdmission:
    """Channel counts in this process's memory (an :class:`AdmissionController`
    that is also an :class:`ImmediateAdmission`)."""

    __slots__ = ("_closed", "_holders", "_in_use")

    def __init__(self) -> None:
        # call_id -> the profile it holds a channel of.  A call's membership
        # belongs to the call and dies with it (Kamailio dialog profiles).
        self._holders: dict[str, int] = {}
        # profile_id -> channels held; only profiles holding at least one.
        self._in_use: dict[int, int] = {}
        self._closed = False

    async def acquire(self, profile_id: int, call_id: str, limit: int) -> AdmissionResult:
        """Take a channel if the profile is under its (clamped) limit."""
        return self.acquire_now(profile_id, call_id, limit)

    async def release(self, call_id: str) -> bool:
        """Free the channel ``call_id`` holds; ``False`` if it holds none."""
        return self.release_now(call_id)

    def acquire_now(self, profile_id: int, call_id: str, limit: int) -> AdmissionResult:
        """:meth:`acquire` as a plain call (:class:`ImmediateAdmission`).

        Everything from the first read to the last write below runs without
        an ``await``, so no other coroutine can observe or change the counts
        in between: the check and the increment are one step.
        """
        self._check_open()
        if not call_id:
            raise ValueError("call_id must not be empty")
        limit = clamp_limit(limit)
        used = self._in_use.get(profile_id, 0)
        holder = self._holders.get(call_id)
        if holder is not None:
            if holder == profile_id:
                # A retransmitted INVITE, or a second INVITE with the same
                # Call-ID: the call already has its channel.
                return Admitted(profile_id=profile_id, call_id=call_id, in_use=used)
            return Rejected(reason=RejectReason.CALL_ID_IN_USE, in_use=used, limit=limit)
        if used >= limit:
            return Rejected(reason=RejectReason.CHANNEL_LIMIT, in_use=used, limit=limit)
        self._holders[call_id] = profile_id
        self._in_use[profile_id] = used + 1
        return Admitted(profile_id=profile_id, call_id=call_id, in_use=used + 1)

    def release_now(self, call_id: str) -> bool:
        """:meth:`release` as a plain call.  Idempotent, so every path that
        ends a call (BYE, CANCEL, failure response, timeout) may release
        without knowing whether another did."""
        profile_id = self._holders.pop(call_id, None)
        if profile_id is None:
            return False
        remaining = self._in_use[profile_id] - 1
        if remaining:
            self._in_use[profile_id] = remaining
        else:
            del self._in_use[profile_id]
        return True

    async def in_use(self, profile_id: int) -> int:
        """Channels ``profile_id`` holds now (0 for a profile never seen)."""
        return self._in_use.get(profile_id, 0)

    async def counts(self) -> dict[int, int]:
        """A copy of the per-profile counts, so a scrape never sees later changes."""
        return dict(self._in_use)

    async def close(self) -> None:
        """Forget every channel; later acquires fail loudly rather than count
        into a controller that the application has shut down."""
        self._holders.clear()
        self._in_use.clear()
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("admission controller is closed")
