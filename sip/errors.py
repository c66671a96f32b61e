"""The errors the SIP core raises, each carrying the answer it deserves.

Following the h11 habit, a protocol error knows the status a server should
answer with; the conversion to a response happens at one boundary (the
transport layer), never deep inside the parser.
"""

from __future__ import annotations

__all__ = ["ParseError", "SIPError"]


class SIPError(Exception):
    """Base class of every error the SIP core raises on purpose.

    ``status`` and ``reason`` are the response a server sends when the
    offending message was a request that can still be answered (RFC 3261
    §8.2, §16.3).
    """

    status: int = 400

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if status is not None:
            self.status = status


class ParseError(SIPError):
    """Input that is not a well-formed SIP message (RFC 3261 §7, §25).

    The parser raises nothing else.  ``reason`` is fit to be a reason phrase
    (one line, printable ASCII).  Whether the message can be answered is
    decided by the caller: it can if the request line and the top Via are
    readable (RFC 3261 §8.2.6, §18.2.2), which is what
    :func:`sip.parser.salvage_request` finds out.
    """
