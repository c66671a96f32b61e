"""Turning bytes into messages: datagrams and byte streams (RFC 3261 §7, §18.3).

Framing is strict where the RFC is: a datagram's body is cut at
Content-Length and anything after it is discarded (RFC 3261 §18.3; RFC 4475
§3.1.1.8), a Content-Length larger than what arrived is an error; over a
stream Content-Length is mandatory.  Sizes are bounded by
:class:`sip.settings.SIPSettings`.  Nothing but :class:`ParseError` leaves
this module.
"""

from __future__ import annotations

import re

from sip.errors import ParseError
from sip.grammar import TOKEN_CHARS
from sip.headers import KNOWN_NAMES, Field, Headers, header_key_of
from sip.message import Message, Request, Response
from sip.settings import SIPSettings

__all__ = ["FramingError", "StreamParser", "parse_datagram", "parse_message", "salvage_request"]

_DEFAULT = SIPSettings()
_VERSION = re.compile(r"SIP/([0-9]+)\.([0-9]+)\Z", re.IGNORECASE)
_METHOD = re.compile(f"[{TOKEN_CHARS}]+\\Z")
_CRLF = b"\r\n"
_END_OF_HEADERS = b"\r\n\r\n"


def _split_fields(head_lines: list[str], folded: bool, settings: SIPSettings) -> list[Field]:
    """Header lines to fields; continuation lines (folding) join the field above.

    This is the hottest loop of the gateway: each distinct spelling of a
    header name is validated once and remembered (:func:`header_key_of`), so a
    line usually costs one ``find``, one slice and one dict lookup.
    """
    fields: list[Field] = []
    append = fields.append
    known = KNOWN_NAMES
    for line in head_lines:
        if folded and line[:1] in (" ", "\t"):
            # RFC 3261 §7.3.1: a line starting with whitespace continues the field.
            if not fields:
                raise ParseError("Continuation line without a header")
            prev = fields[-1]
            prev.raw = f"{prev.raw}\r\n{line}"
            prev._value = None
            continue
        colon = line.find(":")
        key = known.get(line[:colon]) if colon > 0 else None
        if key is None:
            if colon <= 0:
                raise ParseError("Bad header line")
            key = header_key_of(line[:colon])
            if key is None:
                raise ParseError("Bad header name")
        append(Field(key, line, colon))
    if len(fields) > settings.max_headers:
        raise ParseError("Too many headers")
    return fields


def _parse_head(head: str, settings: SIPSettings) -> tuple[Message, int | None]:
    """Start line and header fields.  Returns the message (without its body)
    and its Content-Length, or None if absent."""
    lines = head.split("\r\n")
    if max(map(len, lines)) > settings.max_line_length:
        raise ParseError("Header line too long")
    start = lines[0]
    folded = "\r\n " in head or "\r\n\t" in head
    fields = _split_fields(lines[1:], folded, settings) if len(lines) > 1 else []
    headers = Headers(fields)
    msg: Message
    if start.startswith("SIP/"):
        # Status-Line = SIP-Version SP Status-Code SP Reason-Phrase (RFC 3261 §7.2)
        parts = start.split(" ", 2)
        if len(parts) < 2 or not _VERSION.match(parts[0]):
            raise ParseError("Bad status line")
        if parts[0].upper() != "SIP/2.0":
            raise ParseError("Version Not Supported", status=505)
        code = parts[1]
        if len(code) != 3 or not code.isdigit() or not code.isascii() or code[0] == "0":
            raise ParseError("Bad status code")
        reason = parts[2] if len(parts) == 3 else ""
        msg = Response(int(code), reason, headers, start_raw=start)
    else:
        # Request-Line = Method SP Request-URI SP SIP-Version CRLF (RFC 3261 §7.1):
        # exactly one SP between elements (RFC 4475 §3.1.2.8-10).
        parts = start.split(" ")
        if len(parts) != 3:
            raise ParseError("Bad request line")
        method, uri, version = parts
        if not _METHOD.match(method) or not uri:
            raise ParseError("Bad request line")
        vm = _VERSION.match(version)
        if vm is None:
            raise ParseError("Bad request line")
        if version.upper() != "SIP/2.0":
            raise ParseError("Version Not Supported", status=505)
        msg = Request(method, uri, headers, start_raw=start)
    # Framing needs Content-Length now; two values make it ambiguous (RFC
    # 4475 §3.3.9), which the accessor refuses.
    return msg, msg.content_length


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def parse_datagram(data: bytes, settings: SIPSettings = _DEFAULT) -> Message:
    """Parse one message from a UDP datagram (RFC 3261 §18.3).

    Leading CRLFs are skipped (RFC 3261 §7.5).  Without Content-Length the
    body is the rest of the datagram; with it, octets beyond the body are
    discarded and a shorter datagram is an error.
    """
    if len(data) > settings.max_message_size:
        raise ParseError("Message Too Large", status=513)
    start = 0
    while data.startswith(_CRLF, start):
        start += 2
    end = data.find(_END_OF_HEADERS, start)
    if end < 0:
        raise ParseError("Missing end of headers")
    body_start = end + 4
    msg, length = _parse_head(_decode(data[start:end]), settings)
    if length is None:
        body_end = len(data)
    else:
        body_end = body_start + length
        if body_end > len(data):
            raise ParseError("Content-Length larger than message")
    msg.body = data[body_start:body_end]
    msg._raw = data[start:body_end] if start or body_end != len(data) else data
    return msg


def parse_message(data: bytes, settings: SIPSettings = _DEFAULT) -> Message:
    """Parse one complete message (alias of :func:`parse_datagram`)."""
    return parse_datagram(data, settings)


class FramingError(ParseError):
    """A byte stream that can no longer be framed (RFC 3261 §18.3).

    ``framed`` holds the messages the same ``feed`` completed before the bad
    bytes, so a good message followed by garbage in one TCP segment is still
    delivered; the connection is closed after them.
    """

    def __init__(self, cause: ParseError, framed: tuple[Message, ...]) -> None:
        super().__init__(cause.reason, status=cause.status)
        self.framed = framed


class StreamParser:
    """Frames messages out of a byte stream (TCP; RFC 3261 §18.3).

    ``feed`` returns the messages completed by the new bytes.  Content-Length
    is mandatory; the buffer is bounded by the settings' message size.  A
    :class:`FramingError` means the stream can no longer be framed: the connection
    must be closed (after answering, if the error carries a message).
    ``keepalives`` counts the double-CRLF pings received (RFC 5626 §4.4.1),
    each owed a single-CRLF pong.
    """

    __slots__ = ("_buffer", "_crlfs", "_pending", "_pending_length", "keepalives", "settings")

    def __init__(self, settings: SIPSettings = _DEFAULT) -> None:
        self.settings = settings
        self._buffer = bytearray()
        self._pending: Message | None = None
        self._pending_length = 0
        self._crlfs = 0
        self.keepalives = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def unparsed(self) -> bytes:
        """The bytes received but not yet framed (after a ``FramingError``:
        the head that was refused, for :func:`salvage_request`)."""
        return bytes(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        """Add ``data``; return the messages it completes.

        Raises :class:`FramingError`, carrying in ``framed`` the messages
        completed by ``data`` before the bad bytes.
        """
        out: list[Message] = []
        try:
            self._frame(data, out)
        except ParseError as error:
            raise FramingError(error, tuple(out)) from error
        return out

    def _frame(self, data: bytes, out: list[Message]) -> None:
        buf = self._buffer
        buf += data
        limit = self.settings.max_message_size
        while True:
            pending = self._pending
            if pending is not None:
                length = self._pending_length
                if len(buf) < length:
                    break
                pending.body = bytes(buf[:length])
                if pending._raw is not None:
                    pending._raw += pending.body
                del buf[:length]
                self._pending = None
                out.append(pending)
                continue
            # Skip keep-alive CRLFs between messages; every CRLFCRLF is a
            # ping, even when its halves arrive in separate segments.
            skipped = 0
            while buf[skipped : skipped + 2] == _CRLF:
                skipped += 2
                self._crlfs += 1
                if self._crlfs == 2:
                    self.keepalives += 1
                    self._crlfs = 0
            if skipped:
                del buf[:skipped]
            if not buf:
                break
            end = buf.find(_END_OF_HEADERS)
            if end < 0:
                if len(buf) > limit:
                    raise ParseError("Message Too Large", status=513)
                break
            msg, body_length = _parse_head(_decode(bytes(buf[:end])), self.settings)
            if body_length is None:
                raise ParseError("Missing Content-Length on a stream")
            if end + 4 + body_length > limit:
                raise ParseError("Message Too Large", status=513)
            msg._raw = bytes(buf[: end + 4])
            del buf[: end + 4]
            self._crlfs = 0
            self._pending = msg
            self._pending_length = body_length


def salvage_request(data: bytes, settings: SIPSettings) -> Request | None:
    """Read enough of a message the parser refused to answer it, or None.

    Answerable means (DESIGN.md, RFC 3261 §8.2.6): the start line is a
    request line (a method token, something, a ``SIP/`` version) and the top
    Via parses, so the response has somewhere to go.  Header lines that do
    not parse are skipped; the work is bounded by the same limits as the
    parser's.  A response never qualifies: responses are not answered.
    """
    data = data[: settings.max_message_size]
    start = 0
    while data.startswith(_CRLF, start):
        start += 2
    end = data.find(b"\r\n\r\n", start)
    head = data[start:end] if end >= 0 else data[start:]
    lines = head.decode("utf-8", "surrogateescape").split("\r\n")
    parts = lines[0].split()
    if len(parts) < 3 or parts[0].upper().startswith("SIP/"):
        return None
    method, version = parts[0], parts[-1]
    if not _METHOD.match(method) or not version.upper().startswith("SIP/"):
        return None
    # Group folded lines (RFC 3261 §7.3.1) into logical header lines.
    logical: list[str] = []
    for line in lines[1:]:
        if len(line) > settings.max_line_length:
            continue
        if line[:1] in (" ", "\t") and logical:
            logical[-1] = f"{logical[-1]}\r\n{line}"
        else:
            logical.append(line)
        if len(logical) > settings.max_headers:
            break
    found: list[Field] = []
    for line in logical:
        colon = line.find(":")
        key = header_key_of(line[:colon]) if colon > 0 else None
        if key is not None:
            found.append(Field(key, line, colon))
    request = Request(method, " ".join(parts[1:-1]), Headers(found))
    try:
        request.top_via  # noqa: B018 - the one header we cannot do without
    except ParseError:
        return None
    return request
