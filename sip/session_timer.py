"""Session timers (RFC 4028) as a proxy sees them.

A session timer lets the user agents refresh a call with a re-INVITE or an
UPDATE every so often; the 2xx answering each refresh states the session
interval in ``Session-Expires`` (compact form ``x``, RFC 4028 §4).  A proxy
that keeps call state reads it there (§8.2) and, when the interval passes
with no new refresh, may drop the call's state and free its resources, but
must not send a BYE itself (§8.3): the user agents do that (§10).

This module parses the two header fields and applies the proxy's own
minimum to a session refresh request (§8.1).  No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from sip.errors import ParseError
from sip.grammar import parse_params
from sip.headers import parse_delta_seconds
from sip.message import Message, Request

__all__ = [
    "MIN_SE_FLOOR",
    "SESSION_REFRESH_METHODS",
    "SessionExpires",
    "TooSmall",
    "apply_minimum",
    "min_se",
    "session_expires",
]

#: The smallest session interval RFC 4028 allows (§4, §5: 90 seconds).
MIN_SE_FLOOR = 90
#: Requests that refresh a session (RFC 4028 §1, §7.4).
SESSION_REFRESH_METHODS = frozenset({"INVITE", "UPDATE"})


@dataclass(frozen=True, slots=True)
class SessionExpires:
    """``Session-Expires: interval[;refresher=uac|uas]`` (RFC 4028 §4)."""

    interval: int
    refresher: str | None = None  # "uac", "uas", or None when not stated

    def __str__(self) -> str:
        if self.refresher is None:
            return str(self.interval)
        return f"{self.interval};refresher={self.refresher}"


@dataclass(frozen=True, slots=True)
class TooSmall:
    """A refresh request below the proxy's minimum, from a UAC that supports
    session timers: answer ``422`` with ``Min-SE`` (RFC 4028 §8.1)."""

    min_se: int


def _single(message: Message, name: str, what: str) -> str | None:
    values = message.headers.get_all(name)
    if not values:
        return None
    if len(values) > 1:
        raise ParseError(f"more than one {what}")
    return values[0]


def session_expires(message: Message) -> SessionExpires | None:
    """The message's ``Session-Expires``, None without one; a malformed
    value raises :class:`ParseError`."""
    value = _single(message, "session-expires", "Session-Expires")
    if value is None:
        return None
    head, _, rest = value.partition(";")
    interval = parse_delta_seconds(head.strip(" \t"), "Session-Expires")
    if interval == 0:
        raise ParseError("Session-Expires: zero interval")
    refresher: str | None = None
    if rest:
        params = parse_params(";" + rest, "Session-Expires")
        if "refresher" in params:
            param = params["refresher"]
            if param is None or param.lower() not in ("uac", "uas"):
                raise ParseError(f"Session-Expires: bad refresher {param!r}")
            refresher = param.lower()
    return SessionExpires(interval, refresher)


def min_se(message: Message) -> int | None:
    """The message's ``Min-SE`` (RFC 4028 §5), None without one."""
    value = _single(message, "min-se", "Min-SE")
    if value is None:
        return None
    return parse_delta_seconds(value.partition(";")[0].strip(" \t"), "Min-SE")


def apply_minimum(request: Request, minimum: int) -> TooSmall | None:
    """A proxy's handling of a session refresh request (RFC 4028 §8.1).

    When ``Session-Expires`` is below ``minimum``: a UAC that supports
    session timers (``Supported: timer``) is told to ask again
    (:class:`TooSmall`, to be answered 422); otherwise the request is raised
    to the minimum in place, ``Session-Expires`` and ``Min-SE`` both, since
    a UAC that does not know the extension cannot retry.  A request without
    ``Session-Expires`` is left alone: the proxy does not ask for timers.
    Raises :class:`ParseError` on a malformed header.
    """
    expires = session_expires(request)
    if expires is None or expires.interval >= minimum:
        return None
    if "timer" in request.option_tags("supported"):
        return TooSmall(minimum)
    raised = SessionExpires(minimum, expires.refresher)
    request.headers.set("session-expires", str(raised))
    current = min_se(request)
    if current is None or current < minimum:
        request.headers.set("min-se", str(minimum))
    return None
