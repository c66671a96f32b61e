"""A fake :class:`gateway.proxy.router.CallIO` on a manual clock: the router
driven without sockets, timers or an event loop (DESIGN.md: an explicit
clock, never ``sleep``).

:class:`FakeIO` plays the two things ``gateway.proxy.service.SIPService`` is for
the router, and nothing more:

* the **transport**: :meth:`FakeIO.deliver` takes the bytes a peer sends,
  parses them and stamps the top Via as ``sip.transport`` does, and hands
  the message to the router; what the router sends is kept in
  :attr:`FakeIO.sent` (one :class:`Sent` per datagram, retransmissions
  included and marked);
* the **clock**: :meth:`FakeIO.call_at` keeps ``(when, callback)`` timers,
  and :meth:`FakeIO.advance` moves the clock forward, firing them and the
  transaction layer's own deadline (``next_deadline``, re-armed by
  ``SIPService._rearm`` in production) in time order.

``spawn`` does not run a coroutine at once: like ``loop.create_task`` it
queues it, and the queue is drained after the message or timer that
spawned it has been handled (as the event loop runs a new task once the
current callback returns; after calling the router directly, e.g.
``apply_directory``, call :meth:`FakeIO.run_ready`).  A queued coroutine is
driven with ``send(None)`` until it returns; the in-memory admission
controller never suspends, so that always finishes in one step,
deterministically.  A coroutine that does
suspend (it waits on real I/O) fails the test loudly instead of hanging it.
A send to an address in :attr:`FakeIO.unreachable` is reported back to the
transaction layer as a transport error, again from the queue, as
``SIPService._send`` does from its task.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from sip.message import Message, Request, Response
from sip.parser import parse_datagram
from sip.transaction import Action, ClientTransaction, TransactionLayer
from sip.transport import Source, stamp_top_via

__all__ = ["EPOCH", "FakeIO", "Sent", "Timer", "complete"]

T = TypeVar("T")

#: The wall-clock time at monotonic 0 (call records carry wall-clock times).
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def complete(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends to its end and return its result
    (MemoryAdmission's methods are coroutines that never wait)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError(f"{coro!r} suspended: FakeIO only runs coroutines that never wait")


class Router(Protocol):
    """What the fake I/O calls on the router (as SIPService does)."""

    def on_message(self, message: Message, source: Any, *, reliable: bool) -> None: ...

    def run(self, actions: list[Action]) -> None: ...


@dataclass(eq=False)
class Timer:
    """A handle of :meth:`FakeIO.call_at`: ``cancel()`` as asyncio's."""

    when: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass(frozen=True)
class Sent:
    """One datagram the router sent: a request (to its next hop) or a
    response (to the source of its request)."""

    message: Message
    transport: str
    host: str
    port: int
    at: float
    #: The same message object was sent before (a transaction's retransmission).
    retransmission: bool


@dataclass
class FakeIO:
    """The router's I/O port on a manual clock (see the module docstring)."""

    layer: TransactionLayer
    clock: float = 100.0
    router: Router | None = None
    sent: list[Sent] = field(default_factory=list)
    #: (host, port) pairs a send to fails (the next hop cannot be reached).
    unreachable: set[tuple[str, int]] = field(default_factory=set)
    _timers: list[tuple[float, int, Timer]] = field(default_factory=list)
    _order: itertools.count[int] = field(default_factory=itertools.count)
    _ready: deque[Callable[[], None]] = field(default_factory=deque)
    _seen: dict[int, Message] = field(default_factory=dict)

    # -- CallIO --------------------------------------------------------------
    def now(self) -> float:
        return self.clock

    def wall_clock(self) -> datetime:
        """The wall clock that goes with the manual clock (``wall_clock=``)."""
        return EPOCH + timedelta(seconds=self.clock)

    def send_response(self, response: Response, source: object, data: bytes | None = None) -> None:
        self._record(response, source)

    def send_request(
        self,
        message: Message,
        hop: Any,
        transaction: ClientTransaction | None,
        data: bytes | None = None,
    ) -> None:
        self._record(message, hop)
        if (hop.host, hop.port) in self.unreachable and transaction is not None:
            self._ready.append(lambda: self._transport_error(transaction))

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(when, callback)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._ready.append(lambda: complete(coro))

    # -- the network ---------------------------------------------------------
    def deliver(self, data: str | bytes, source: Source) -> Message:
        """A datagram from ``source``: parsed and stamped as the transport
        does, handed to the router (whose transaction layer validates what is
        new, as under SIPService; a ``ParseError`` propagates); then whatever
        it queued runs, and any timer already due fires."""
        message = parse_datagram(data.encode() if isinstance(data, str) else data)
        message.source = (source.transport, source.host, source.port)
        if isinstance(message, Request):
            stamp_top_via(message, source.host, source.port)
        assert self.router is not None, "set FakeIO.router first"
        self.router.on_message(message, source, reliable=source.transport == "TCP")
        self.advance(0)
        return message

    # -- the clock -------------------------------------------------------------
    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` on, firing every timer due on the way
        in time order, each at its own time (the transaction layer's timers
        as SIPService fires them: ``router.run(layer.timers(now))``)."""
        assert seconds >= 0
        until = self.clock + seconds
        self.run_ready()
        while True:
            self._drop_cancelled()
            due = [t for t in (self._next_timer(), self.layer.next_deadline()) if t is not None]
            when = min(due, default=None)
            if when is None or when > until:
                break
            self.clock = max(self.clock, when)
            deadline = self.layer.next_deadline()
            if deadline is not None and deadline <= self.clock:
                assert self.router is not None
                self.router.run(self.layer.timers(self.clock))
                self.run_ready()
            while self._timers and self._timers[0][0] <= self.clock:
                _, _, timer = heapq.heappop(self._timers)
                if not timer.cancelled:
                    timer.callback()
                    self.run_ready()
        self.clock = until

    def pending_timers(self) -> list[float]:
        """When the router's own live timers fire (not the transactions')."""
        return sorted(timer.when for _, _, timer in self._timers if not timer.cancelled)

    # -- what was sent ---------------------------------------------------------
    def requests(
        self,
        method: str | None = None,
        *,
        to: Any = None,
        call_id: str | None = None,
        retransmissions: bool = False,
    ) -> list[Request]:
        """Requests sent (first transmissions unless asked), oldest first."""
        return [
            sent.message
            for sent in self._select(to, call_id, retransmissions)
            if isinstance(sent.message, Request) and method in (None, sent.message.method)
        ]

    def responses(
        self,
        status: int | None = None,
        *,
        to: Any = None,
        call_id: str | None = None,
        method: str | None = None,
        retransmissions: bool = False,
    ) -> list[Response]:
        """Responses sent (first transmissions unless asked), oldest first."""
        return [
            sent.message
            for sent in self._select(to, call_id, retransmissions)
            if isinstance(sent.message, Response)
            and status in (None, sent.message.status)
            and method in (None, sent.message.cseq.method)
        ]

    def statuses(self, *, to: Any, call_id: str, method: str = "INVITE") -> list[int]:
        """The statuses of the responses sent to ``to`` for ``call_id``."""
        return [r.status for r in self.responses(to=to, call_id=call_id, method=method)]

    def last(self, method: str, *, to: Any, call_id: str) -> Request:
        found = self.requests(method, to=to, call_id=call_id)
        assert found, f"no {method} of {call_id} sent to {to}; sent: {self.summary()}"
        return found[-1]

    def summary(self) -> list[str]:
        """What was sent, one line each (for assertion messages)."""
        return [
            f"{sent.at:.3f} {_first_line(sent.message)} -> {sent.host}:{sent.port}"
            + (" (again)" if sent.retransmission else "")
            for sent in self.sent
        ]

    # -- internals ---------------------------------------------------------------
    def _record(self, message: Message, where: Any) -> None:
        again = id(message) in self._seen
        self._seen[id(message)] = message  # kept alive: ids stay unique
        transport = str(getattr(where, "transport", ""))
        self.sent.append(Sent(message, transport, where.host, where.port, self.clock, again))

    def _select(self, to: Any, call_id: str | None, retransmissions: bool) -> list[Sent]:
        return [
            sent
            for sent in self.sent
            if (retransmissions or not sent.retransmission)
            and (to is None or (sent.host, sent.port) == (to.host, to.port))
            and (call_id is None or sent.message.call_id == call_id)
        ]

    def _transport_error(self, transaction: ClientTransaction) -> None:
        assert self.router is not None
        self.router.run(self.layer.transport_error(transaction, self.clock))

    def run_ready(self) -> None:
        """Run what was spawned (and transport errors to report), oldest
        first, as the event loop does once the current callback returns.
        Call it after calling the router directly (``apply_directory``,
        ``end_all_calls``); :meth:`deliver` and :meth:`advance` do."""
        while self._ready:
            self._ready.popleft()()

    def _next_timer(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def _drop_cancelled(self) -> None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)


def _first_line(message: Message) -> str:
    if isinstance(message, Request):
        return f"{message.method} {message.uri_text}"
    assert isinstance(message, Response)
    return f"{message.status} {message.cseq.method}"
