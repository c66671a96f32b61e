"""The proxy layer's asyncio adapter, in the aioquic style.

:class:`SIPService` is the thin layer between the transports and the
sans-I/O core: a message comes in, goes through validation, the transaction
layer and the call router, the resulting actions go out, and the one timer
that serves every transaction is re-armed with ``call_at``.  It is also the
router's :class:`gateway.proxy.router.CallIO`.

:class:`RegistrationExpiry` is the registrar's timer: a binding lapses at
its expiry (RFC 3261 §10.3), so one ``call_at`` is armed at
:meth:`LocationService.next_expiry` rather than polling the table.

Built and closed by :func:`gateway.web.app.create_app`'s resources.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from gateway.proxy.registrar import LocationService
from gateway.proxy.router import CallRouter, Hop
from sip.errors import ParseError
from sip.message import Message, Request, Response, build_response
from sip.overload import OverloadControl
from sip.transaction import ClientTransaction, TransactionLayer
from sip.transport import Source, TransportLayer, stateless_tag

__all__ = [
    "Cancellable",
    "LoadSampler",
    "RegistrationExpiry",
    "SIPService",
    "Timers",
    "TrafficObserver",
]

logger = logging.getLogger(__name__)


class TrafficObserver(Protocol):
    """What the service reports per message (``gateway.web.metrics.Metrics``)."""

    def request_received(self, method: str) -> None: ...

    def response_sent(self, status: int) -> None: ...


class Cancellable(Protocol):
    """A timer handle (``asyncio.TimerHandle``)."""

    def cancel(self) -> None: ...


class Timers(Protocol):
    """A clock and its timers: :class:`SIPService` in production, a manual
    clock in tests."""

    def now(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Cancellable: ...


class SIPService:
    """The transport's message handler and the router's I/O port."""

    def __init__(
        self,
        transport: TransportLayer,
        layer: TransactionLayer,
        metrics: TrafficObserver | None = None,
    ) -> None:
        self.transport = transport
        self.layer = layer
        self.metrics = metrics
        self.router: CallRouter | None = None
        #: Told after each REGISTER, which may bring the earliest expiry forward.
        self.registrations: RegistrationExpiry | None = None
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: The overload control's measurement, once :meth:`start_overload_control`.
        self.load: LoadSampler | None = None

    def start_overload_control(self) -> None:
        """Measure the loop's occupancy for the layer's overload control
        from now on (called when the calls start: what start-up does on
        the loop is not load)."""
        control = self.layer.overload
        if control is not None and self.load is None:
            self.load = LoadSampler(self.transport, control, self._loop)

    # -- from the transport -----------------------------------------------
    def on_message(self, message: Message, source: Source) -> None:
        router = self.router
        if router is None:
            return
        try:
            # Matched first, validated only when new (TransactionLayer.receive).
            actions = self.layer.receive(
                message, source, self._loop.time(), reliable=source.transport == "TCP"
            )
        except ParseError as error:
            # RFC 3261 §8.2 / h11 habit: the error carries its answer.  A
            # response or an ACK is never answered (RFC 3261 §17).
            if isinstance(message, Request) and message.method != "ACK":
                response = build_response(
                    message, error.status, error.reason, to_tag=stateless_tag(message)
                )
                self.send_response(response, source)
            return
        method = message.method if isinstance(message, Request) else None
        if method is not None and self.metrics is not None:
            self.metrics.request_received(method)
        router.run(actions)
        self._rearm()
        if method == "REGISTER" and self.registrations is not None:
            self.registrations.rearm()

    # -- CallIO -----------------------------------------------------------------
    def now(self) -> float:
        return self._loop.time()

    def send_response(self, response: Response, source: object, data: bytes | None = None) -> None:
        if self.metrics is not None:
            self.metrics.response_sent(response.status)
        self.transport.send_response(
            response, source if isinstance(source, Source) else None, data=data
        )

    def send_request(
        self,
        message: Message,
        hop: Hop,
        transaction: ClientTransaction | None,
        data: bytes | None = None,
    ) -> None:
        """UDP to an address goes out at once (DESIGN.md: no task per
        datagram); a name to resolve or a TCP connection waits in a task.
        The bytes are serialised once, here if the caller had none."""
        if data is None:
            data = message.to_bytes()
        if hop.transport == "UDP":
            sent = self.transport.send_datagram_now(data, hop.host, hop.port)
            if sent is not None:
                if not sent and transaction is not None:
                    # Reported from the loop, not from inside the router's
                    # own run that is sending (as the task did).
                    self._loop.call_soon(self._transport_error, transaction)
                return
        self.spawn(self._send(message, hop, transaction, data))

    def _transport_error(self, transaction: ClientTransaction) -> None:
        if self.router is not None:
            self.router.run(self.layer.transport_error(transaction, self.now()))
        self._rearm()

    async def _send(
        self, message: Message, hop: Hop, transaction: ClientTransaction | None, data: bytes
    ) -> None:
        try:
            await self.transport.send(message, hop.transport, hop.host, hop.port, data=data)
        except OSError as error:
            logger.debug("cannot send to %s: %s", hop, error)
            if transaction is not None:
                self._transport_error(transaction)

    def call_at(self, when: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        def fire() -> None:
            try:
                callback()
            except Exception:
                logger.exception("timer callback failed")
            self._rearm()

        return self._loop.call_at(when, fire)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("SIP task failed", exc_info=task.exception())
        self._rearm()

    # -- the transaction timer --------------------------------------------
    def _rearm(self) -> None:
        deadline = self.layer.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = None if deadline is None else self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.router is not None:
            self.router.run(self.layer.timers(self.now()))
        self._rearm()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.load is not None:
            self.load.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


class LoadSampler:
    """The overload control's measurement (:mod:`sip.overload`): once per
    period, the occupancy of the event loop's thread, the larger of

    * the CPU time the thread used (``time.thread_time``: everything the
      loop runs, timers and tasks included), and
    * the wall time spent handling received data
      (:attr:`TransportLayer.busy`), which also counts the time the thread
      was ready but not running (the other processes on its cores, the GIL
      held by a worker thread): work it could not do meanwhile all the same,

    each over the period's wall time; and the queueing delay of what it
    read last (:meth:`TransportLayer.queue_delay`): the backlog.  One timer.
    """

    __slots__ = ("_at", "_busy", "_control", "_cpu", "_handle", "_loop", "_transport")

    def __init__(
        self,
        transport: TransportLayer,
        control: OverloadControl,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._transport = transport
        self._control = control
        self._loop = loop
        self._at = time.time()
        self._cpu = time.thread_time()
        self._busy = transport.busy
        self._handle: asyncio.TimerHandle | None = loop.call_later(
            control.settings.period, self._sample
        )

    def _sample(self) -> None:
        transport = self._transport
        at, cpu, busy = time.time(), time.thread_time(), transport.busy
        elapsed = at - self._at
        if elapsed > 0:
            self._control.measure(
                max(cpu - self._cpu, busy - self._busy) / elapsed,
                transport.queue_delay(since=self._at),
            )
        self._at, self._cpu, self._busy = at, cpu, busy
        self._handle = self._loop.call_later(self._control.settings.period, self._sample)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class RegistrationExpiry:
    """Bindings removed at their expiry (RFC 3261 §10.3), on one timer.

    The timer is armed at :meth:`LocationService.next_expiry` and re-armed
    after each firing and after each REGISTER (:meth:`rearm`): only a
    REGISTER can bring the earliest expiry forward.  Bindings that go
    otherwise (``Contact: *``, a deleted profile) only move it later, and
    the timer then fires once for nothing and re-arms.  A binding is
    already dead for calls at its expiry (:meth:`Binding.is_live`); the
    timer gives its memory back.
    """

    __slots__ = ("_at", "_handle", "_registrar", "_timers")

    def __init__(self, registrar: LocationService, timers: Timers) -> None:
        self._registrar = registrar
        self._timers = timers
        self._handle: Cancellable | None = None
        self._at: float | None = None

    @property
    def armed_at(self) -> float | None:
        """When the timer fires next (None: no binding to expire)."""
        return self._at

    def rearm(self) -> None:
        when = self._registrar.next_expiry()
        if when == self._at:
            return
        if self._handle is not None:
            self._handle.cancel()
        self._at = when
        self._handle = None if when is None else self._timers.call_at(when, self._fire)

    def _fire(self) -> None:
        due = self._at
        self._handle = None
        self._at = None
        now = self._timers.now()
        # A loop timer may run a hair before its time (clock resolution); the
        # bindings it was armed for are due all the same.
        self._registrar.expire(now if due is None else max(now, due))
        self.rearm()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._at = None
