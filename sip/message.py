"""SIP requests and responses (RFC 3261 §7), with structured header access.

Messages come from :mod:`sip.parser` or are built here.  Structured values
(Via, From, To, CSeq, Contact, ...) are parsed on first access and cached on
the header field, so the cost of a message is the cost of what is read.  A
message that was not changed serialises to the exact bytes it was parsed
from.
"""

from __future__ import annotations

import re
from typing import Any

from sip.auth import Challenge, Credentials, parse_challenge, parse_credentials
from sip.errors import ParseError
from sip.grammar import is_token, split_list
from sip.headers import (
    Address,
    CSeq,
    Field,
    Headers,
    Via,
    parse_address,
    parse_cseq,
    parse_delta_seconds,
    parse_via,
)
from sip.uri import URI, parse_uri

__all__ = [
    "REASON_PHRASES",
    "Message",
    "Request",
    "Response",
    "build_response",
]

SIP_VERSION = "SIP/2.0"

# RFC 3261 §21 and the extensions a trunk meets.
REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",  # RFC 4028 §6
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}

_REASON_SAFE = re.compile(r"[^\x20-\x7e]")
_RFC1123_DATE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} "
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-9]{2}:[0-9]{2}:[0-9]{2} GMT\Z"
)


class Message:
    """What requests and responses share: headers, body, structured access."""

    __slots__ = ("_raw", "_start_raw", "body", "headers", "source")

    def __init__(self, headers: Headers, body: bytes = b"", *, raw: bytes | None = None) -> None:
        self.headers = headers
        self.body = body
        # The exact bytes this message was parsed from; dropped on change.
        self._raw = raw
        self._start_raw: str | None = None
        # Where it came from, set by the transport: (transport, host, port).
        self.source: tuple[str, str, int] | None = None

    # -- structured access (RFC 3261 §20) ------------------------------------
    # Each header has one parse method, which checks it, caches what it
    # parses on the field and returns it; the properties read through them
    # and :meth:`validate` calls them in the order errors are reported.
    def _single(self, key: str, what: str) -> Field:
        fields = self.headers.fields(key)
        if not fields:
            raise ParseError(f"Missing {what}")
        if len(fields) > 1:
            raise ParseError(f"Duplicate {what}")
        return fields[0]

    def _optional_single(self, key: str, what: str) -> Field | None:
        fields = self.headers.fields(key)
        if len(fields) > 1:
            raise ParseError(f"Duplicate {what}")
        return fields[0] if fields else None

    def _parse_call_id(self) -> str:
        value = self._single("call-id", "Call-ID").value
        if not value or " " in value or "\t" in value:
            raise ParseError("Bad Call-ID")
        return value

    def _parse_cseq(self) -> CSeq:
        f = self._single("cseq", "CSeq")
        parsed = f.parsed
        if parsed is None:
            parsed = f.parsed = parse_cseq(f.value)
        return parsed  # type: ignore[no-any-return]

    def _parse_address(self, key: str, what: str) -> Address:
        f = self._single(key, what)
        parsed = f.parsed
        if parsed is None:
            parsed = f.parsed = parse_address(f.value, what)
        return parsed  # type: ignore[no-any-return]

    def _via_values(self, f: Field) -> list[Via]:
        parsed = f.parsed
        if parsed is None:
            parsed = f.parsed = [parse_via(v) for v in split_list(f.value)]
        return parsed  # type: ignore[no-any-return]

    def _parse_vias(self) -> list[Via]:
        out: list[Via] = []
        for f in self.headers.fields("via"):
            out.extend(self._via_values(f))
        if not out:
            raise ParseError("Missing Via")
        return out

    def _parse_contacts(self) -> list[Address]:
        contacts = self._address_list("contact", "Contact")
        # RFC 3261 §10.2.2: "*" only alone (the length test first: one
        # Contact is the common case and cannot mix).
        if len(contacts) > 1 and any(c.star for c in contacts):
            raise ParseError("Contact * mixed with other contacts")
        return contacts

    def _parse_max_forwards(self) -> int | None:
        f = self._optional_single("max-forwards", "Max-Forwards")
        if f is None:
            return None
        value = f.value
        # Max-Forwards = 1*DIGIT, 0..255 (RFC 3261 §20.22); leading zeros are
        # legal (RFC 4475 §3.1.1.1), the length bound keeps int() cheap.
        if not value.isdigit() or not value.isascii() or len(value) > 10 or int(value) > 255:
            raise ParseError("Bad Max-Forwards")
        return int(value)

    def _parse_content_length(self) -> int | None:
        f = self._optional_single("content-length", "Content-Length")
        if f is None:
            return None
        value = f.value
        if not value.isdigit() or not value.isascii() or len(value) > 10:
            raise ParseError("Bad Content-Length")
        return int(value)

    def _parse_delta_seconds(self, key: str, what: str) -> int | None:
        f = self._optional_single(key, what)
        return None if f is None else parse_delta_seconds(f.value, what)

    @property
    def call_id(self) -> str:
        return self._parse_call_id()

    @property
    def cseq(self) -> CSeq:
        return self._parse_cseq()

    @property
    def from_(self) -> Address:
        return self._parse_address("from", "From")

    @property
    def to(self) -> Address:
        return self._parse_address("to", "To")

    @property
    def top_via(self) -> Via:
        """The topmost Via value (the only one most code needs)."""
        f = self.headers.first("via")
        if f is None:
            raise ParseError("Missing Via")
        return self._via_values(f)[0]

    @property
    def vias(self) -> list[Via]:
        return self._parse_vias()

    def push_via(self, via: Via) -> None:
        """Put ``via`` on top (RFC 3261 §16.6 step 8)."""
        f = Field.new("via", str(via))
        f.parsed = [via]
        self.headers.insert_field(0, f)

    def pop_via(self) -> Via:
        """Remove and return the topmost Via value (RFC 3261 §16.7 step 3)."""
        f = self.headers.first("via")
        if f is None:
            raise ParseError("Missing Via")
        values = self._via_values(f)
        top = values[0]
        if len(values) == 1:
            self.headers.remove_field(f)
        else:
            rest = values[1:]
            self.headers.replace_field(f, ", ".join(str(v) for v in rest), rest)
        return top

    def replace_top_via(self, via: Via) -> None:
        """Rewrite the topmost Via value (e.g. to add ``received``/``rport``)."""
        f = self.headers.first("via")
        if f is None:
            raise ParseError("Missing Via")
        values = [via, *self._via_values(f)[1:]]
        self.headers.replace_field(f, ", ".join(str(v) for v in values), values)

    @staticmethod
    def address_values(f: Field, what: str) -> list[Address]:
        """The addresses of one list field (Contact, Route, Record-Route), cached."""
        parsed = f.parsed
        if parsed is None:
            parsed = f.parsed = [parse_address(v, what) for v in split_list(f.value)]
        return parsed  # type: ignore[no-any-return]

    def _address_list(self, key: str, what: str) -> list[Address]:
        out: list[Address] = []
        for f in self.headers.fields(key):
            out.extend(self.address_values(f, what))
        return out

    @property
    def contacts(self) -> list[Address]:
        """Contact values; ``[Address(star=True)]`` for ``Contact: *``."""
        return self._parse_contacts()

    @property
    def routes(self) -> list[Address]:
        return self._address_list("route", "Route")

    @property
    def record_routes(self) -> list[Address]:
        return self._address_list("record-route", "Record-Route")

    @property
    def max_forwards(self) -> int | None:
        return self._parse_max_forwards()

    @property
    def content_length(self) -> int | None:
        return self._parse_content_length()

    @property
    def content_type(self) -> str | None:
        """The media type, lower-cased, without parameters."""
        f = self._optional_single("content-type", "Content-Type")
        if f is None:
            return None
        media = f.value.split(";", 1)[0].strip(" \t").lower().replace(" ", "")
        if media.count("/") != 1 or not all(is_token(p) for p in media.split("/")):
            raise ParseError("Bad Content-Type")
        return media

    @property
    def expires(self) -> int | None:
        return self._parse_delta_seconds("expires", "Expires")

    @property
    def min_expires(self) -> int | None:
        return self._parse_delta_seconds("min-expires", "Min-Expires")

    def _credentials(self, key: str) -> list[Credentials]:
        out: list[Credentials] = []
        for f in self.headers.fields(key):
            if f.parsed is None:
                f.parsed = parse_credentials(f.value)
            out.append(f.parsed)
        return out

    def _challenges(self, key: str) -> list[Challenge]:
        out: list[Challenge] = []
        for f in self.headers.fields(key):
            if f.parsed is None:
                f.parsed = parse_challenge(f.value)
            out.append(f.parsed)
        return out

    @property
    def authorization(self) -> list[Credentials]:
        return self._credentials("authorization")

    @property
    def proxy_authorization(self) -> list[Credentials]:
        return self._credentials("proxy-authorization")

    @property
    def www_authenticate(self) -> list[Challenge]:
        return self._challenges("www-authenticate")

    @property
    def proxy_authenticate(self) -> list[Challenge]:
        return self._challenges("proxy-authenticate")

    def option_tags(self, name: str) -> list[str]:
        """Option tags of Require / Proxy-Require / Supported (RFC 3261 §20.32)."""
        return [v.lower() for v in self.headers.values(name)]

    # -- serialising ------------------------------------------------------
    def start_line(self) -> str:
        raise NotImplementedError

    def validate(self) -> None:
        """Parse the headers this element relies on; raise :class:`ParseError`.

        What is parsed stays cached on the fields, so the reads that follow
        (router, transactions) cost nothing more.
        """
        raise NotImplementedError

    def _parse_mandatory(self) -> CSeq:
        """The headers every message carries (RFC 3261 §8.1.1, §8.2.6.2): at
        least one Via, and From, To, Call-ID and CSeq once each; returns the
        CSeq, which a request's method must match."""
        self._parse_vias()
        self._parse_address("from", "From")
        self._parse_address("to", "To")
        self._parse_call_id()
        return self._parse_cseq()

    def set_body(self, body: bytes, content_type: str | None = None) -> None:
        """Replace the body and keep Content-Length (and Content-Type) right."""
        self.body = body
        self.headers.set("content-length", str(len(body)))
        if content_type is not None:
            self.headers.set("content-type", content_type)
        self._raw = None

    def to_bytes(self) -> bytes:
        """The wire form: the received bytes if untouched, else canonical."""
        raw = self._raw
        if raw is not None and not self.headers.modified:
            return raw
        start = self._start_raw if self._start_raw is not None else self.start_line()
        head = f"{start}\r\n{self.headers.serialise()}\r\n"
        return head.encode("utf-8", "surrogateescape") + self.body

    __bytes__ = to_bytes

    def copy(self) -> Any:
        raise NotImplementedError

    def _copy_wire_state(self, other: Message) -> None:
        """Give a copy the received bytes (while still valid) and the source."""
        other._raw = self._raw if not self.headers.modified else None
        other._start_raw = self._start_raw
        other.source = self.source


class Request(Message):
    """A SIP request.  ``uri`` is parsed on first access."""

    __slots__ = ("_uri", "_uri_text", "method")

    def __init__(
        self,
        method: str,
        uri: URI | str,
        headers: Headers | None = None,
        body: bytes = b"",
        *,
        raw: bytes | None = None,
        start_raw: str | None = None,
    ) -> None:
        super().__init__(headers if headers is not None else Headers(), body, raw=raw)
        self.method = method
        if isinstance(uri, URI):
            self._uri: URI | None = uri
            self._uri_text = str(uri)
        else:
            self._uri = None
            self._uri_text = uri
        self._start_raw = start_raw

    @property
    def uri(self) -> URI:
        uri = self._uri
        if uri is None:
            uri = self._uri = parse_uri(self._uri_text)
        return uri

    @uri.setter
    def uri(self, value: URI) -> None:
        self._uri = value
        self._uri_text = str(value)
        self._start_raw = None
        self._raw = None

    @property
    def uri_text(self) -> str:
        return self._uri_text

    def start_line(self) -> str:
        return f"{self.method} {self._uri_text} {SIP_VERSION}"

    def copy(self) -> Request:
        """An independent copy for forwarding (RFC 3261 §16.6 step 1)."""
        req = Request(
            self.method, self._uri if self._uri else self._uri_text, self.headers.copy(), self.body
        )
        self._copy_wire_state(req)
        return req

    def __repr__(self) -> str:
        return f"<Request {self.method} {self._uri_text}>"

    # -- validation (RFC 3261 §8.2, §16.3) ---------------------------------
    def validate(self) -> None:
        """Check what a server or proxy relies on; raise :class:`ParseError`.

        Mandatory headers present once (Call-ID, CSeq, From, To) and
        parseable, at least one Via, CSeq method equal to the request method,
        Request-URI well formed without headers (RFC 3261 §19.1.1 Table 1),
        numeric headers in range, Contact and Route parseable, Date an
        RFC 1123 date.  Max-Forwards may be missing (RFC 2543 peers, RFC 4475
        §3.4.1).  The checks run in this order, which decides the reason
        given for a message with several faults.
        """
        uri = self.uri
        if uri.is_sip and uri.headers:
            raise ParseError("Headers not allowed in Request-URI")
        if self._parse_mandatory().method != self.method:
            raise ParseError("CSeq method does not match request method")
        self._parse_max_forwards()
        self._parse_content_length()
        self._parse_delta_seconds("expires", "Expires")
        for contact in self._parse_contacts():
            if not contact.star:
                _parse_contact(contact)
        self._address_list("route", "Route")
        date = self.headers.get("date")
        if date is not None and not _RFC1123_DATE.match(date):
            # RFC 3261 §20.17: SIP-date is rfc1123-date, always in GMT.
            raise ParseError("Bad Date")


class Response(Message):
    """A SIP response."""

    __slots__ = ("reason", "status")

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Headers | None = None,
        body: bytes = b"",
        *,
        raw: bytes | None = None,
        start_raw: str | None = None,
    ) -> None:
        super().__init__(headers if headers is not None else Headers(), body, raw=raw)
        if not 100 <= status <= 699:
            raise ValueError(f"status {status} out of range")
        self.status = status
        self.reason = reason if reason is not None else REASON_PHRASES.get(status, "")
        self._start_raw = start_raw

    def start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"

    @property
    def is_provisional(self) -> bool:
        return self.status < 200

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    def copy(self) -> Response:
        resp = Response(self.status, self.reason, self.headers.copy(), self.body)
        self._copy_wire_state(resp)
        return resp

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"

    def validate(self) -> None:
        """Check what a client transaction or proxy relies on."""
        self._parse_mandatory()
        self._parse_content_length()


def _parse_contact(contact: Address) -> tuple[URI, int | None]:
    """What a registrar or proxy takes from one Contact: its URI (cached on
    the address) and its ``expires`` parameter (RFC 3261 §10.2.1, §20.10)."""
    return contact.uri, contact.expires


def safe_reason(text: str) -> str:
    """A reason phrase fit for the wire: printable ASCII, one line."""
    return _REASON_SAFE.sub("?", text)[:120]


def build_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    extra: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    content_type: str | None = None,
) -> Response:
    """A response to ``request`` (RFC 3261 §8.2.6).

    Via, From, Call-ID and CSeq are copied as received (Via values keep their
    order; RFC 3261 §8.2.6.2).  To is copied and, if ``to_tag`` is given and
    the request's To has no tag, the tag is added.  Headers that cannot be
    read are copied verbatim, which lets a server answer ``400`` to a request
    whose To or From is malformed.
    """
    fields: list[Field] = []
    for f in request.headers:
        if f.key in ("via", "from", "call-id", "cseq"):
            fields.append(f)
        elif f.key == "to":
            if to_tag is not None and status != 100:
                try:
                    to = request.to
                except ParseError:
                    fields.append(f)
                    continue
                if to.tag is None:
                    g = Field.new("to", str(to.with_params(tag=to_tag)))
                    fields.append(g)
                    continue
            fields.append(f)
    headers = Headers(fields)
    if extra:
        for name, value in extra:
            headers.add(name, value)
    if content_type is not None:
        headers.add("content-type", content_type)
    headers.add("content-length", str(len(body)))
    return Response(status, safe_reason(reason) if reason is not None else None, headers, body)
