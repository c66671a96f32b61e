"""Header fields: names, the ordered container, and structured values.

A message keeps its header fields in arrival order as :class:`Field`
objects holding the exact text received.  Nothing is parsed until somebody
asks: the first read of ``Via`` parses the Via values and caches them on the
field, and a header that nobody reads costs one string split.  A field that
was never modified serialises to exactly the text it came from (a proxy
must not mangle what it does not touch, RFC 3261 §16.6); a new or changed
field serialises canonically.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sip.errors import ParseError
from sip.grammar import (
    QUOTED,
    TOKEN_CHARS,
    is_token,
    parse_params,
    quote,
    serialise_params,
    split_list,
    unquote,
)
from sip.uri import URI, parse_uri

__all__ = [
    "Address",
    "CSeq",
    "Field",
    "Headers",
    "Via",
    "canonical_name",
    "header_key",
    "header_key_of",
    "parse_address",
    "parse_cseq",
    "parse_via",
]

# Compact forms (RFC 3261 §7.3.3 and the extensions that registered one).
COMPACT_FORMS: dict[str, str] = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}

# Spellings that title-casing does not produce.
_SPECIAL_NAMES: dict[str, str] = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
    "min-se": "Min-SE",  # RFC 4028 §5
    "rack": "RAck",
    "rseq": "RSeq",
    "sip-etag": "SIP-ETag",
    "sip-if-match": "SIP-If-Match",
}

# Headers whose grammar is a comma-separated list (RFC 3261 §7.3.1, §20).
# WWW-Authenticate and friends are not: their parameters contain commas.
LIST_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "alert-info",
        "allow",
        "allow-events",
        "call-info",
        "contact",
        "content-encoding",
        "content-language",
        "error-info",
        "in-reply-to",
        "p-asserted-identity",
        "path",
        "proxy-require",
        "reason",
        "record-route",
        "require",
        "route",
        "service-route",
        "supported",
        "unsupported",
        "via",
        "warning",
    }
)

_HEADER_NAME = re.compile(f"([{TOKEN_CHARS}]+)[ \\t]*\\Z")

# Header-name spellings already validated, as they appear before the colon
# (trailing whitespace included) -> key.  Bounded: past the bound, a new
# spelling is validated every time it is seen, which is correct, just slower.
KNOWN_NAMES: dict[str, str] = {}
_KNOWN_NAMES_MAX = 4096


def header_key_of(spelling: str) -> str | None:
    """The key of a header name as it appears before the colon, or None if it
    is not a token (RFC 3261 §7.3.1: ``field-name HCOLON``)."""
    key = KNOWN_NAMES.get(spelling)
    if key is None:
        m = _HEADER_NAME.match(spelling)
        if m is None:
            return None
        lowered = m.group(1).lower()
        key = COMPACT_FORMS.get(lowered, lowered)
        if len(KNOWN_NAMES) < _KNOWN_NAMES_MAX:
            KNOWN_NAMES[spelling] = key
    return key


def header_key(name: str) -> str:
    """The lookup key of a header name: lower-case long form."""
    key = KNOWN_NAMES.get(name)
    if key is None:
        lowered = name.strip(" \t").lower()
        key = COMPACT_FORMS.get(lowered, lowered)
    return key


@functools.lru_cache(maxsize=1024)
def canonical_name(key: str) -> str:
    """The spelling we use when we write a header: ``Call-ID``, ``Via``.

    Cached: it runs for every header we write, from a small set of names."""
    special = _SPECIAL_NAMES.get(key)
    if special is not None:
        return special
    return "-".join(part[:1].upper() + part[1:] for part in key.split("-"))


_FOLD = re.compile(r"\r\n[ \t]+")


class Field:
    """One header field line as received (or as we built it).

    ``raw`` is the exact text of the line(s) including the name, without the
    final CRLF; it is ``None`` for a field we created or changed, which then
    serialises as ``Name: value``.
    """

    __slots__ = ("_value", "colon", "key", "parsed", "raw")

    def __init__(self, key: str, raw: str | None, colon: int, value: str | None = None) -> None:
        self.key = key
        self.raw = raw
        self.colon = colon
        self._value = value
        self.parsed: Any = None

    @classmethod
    def new(cls, key: str, value: str) -> Field:
        """A field we write: canonical name, given value."""
        return cls(key, None, -1, value)

    @property
    def name(self) -> str:
        """The name as written (or canonical, for a field we wrote)."""
        if self.raw is None:
            return canonical_name(self.key)
        return self.raw[: self.colon].rstrip(" \t")

    @property
    def value(self) -> str:
        """The field value, line folding replaced by one space (RFC 3261 §7.3.1)."""
        value = self._value
        if value is None:
            raw = self.raw
            assert raw is not None
            value = raw[self.colon + 1 :]
            if "\r\n" in value:
                value = _FOLD.sub(" ", value)
            value = value.strip(" \t")
            self._value = value
        return value

    def text(self) -> str:
        """The serialised line, without CRLF."""
        if self.raw is not None:
            return self.raw
        return f"{canonical_name(self.key)}: {self._value}"

    def __repr__(self) -> str:
        return f"Field({self.text()!r})"


class Headers:
    """The header fields of a message, in order, indexed by key.

    ``modified`` becomes true on any change, which tells the message it can
    no longer reuse the bytes it was parsed from.
    """

    __slots__ = ("_fields", "_index", "modified")

    def __init__(self, fields: list[Field] | None = None) -> None:
        self._fields: list[Field] = fields if fields is not None else []
        self._index: dict[str, list[Field]] | None = None
        self.modified = False

    # -- reading -----------------------------------------------------------
    def _idx(self) -> dict[str, list[Field]]:
        index = self._index
        if index is None:
            index = {}
            for f in self._fields:
                bucket = index.get(f.key)
                if bucket is None:
                    index[f.key] = [f]
                else:
                    bucket.append(f)
            self._index = index
        return index

    def fields(self, name: str) -> list[Field]:
        """All fields with this name (compact or long, any case), in order."""
        return self._idx().get(header_key(name), [])

    def first(self, name: str) -> Field | None:
        bucket = self._idx().get(header_key(name))
        return bucket[0] if bucket else None

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value of the first field with this name."""
        f = self.first(name)
        return f.value if f is not None else default

    def get_all(self, name: str) -> list[str]:
        """The values of every field with this name (not comma-split)."""
        return [f.value for f in self.fields(name)]

    def values(self, name: str) -> list[str]:
        """The values of a list header, comma-split across all its fields."""
        key = header_key(name)
        out: list[str] = []
        for f in self._idx().get(key, ()):
            out.extend(split_list(f.value) if key in LIST_HEADERS else [f.value])
        return out

    def count(self, name: str) -> int:
        return len(self.fields(name))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self.fields(name))

    def __iter__(self) -> Iterator[Field]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def items(self) -> list[tuple[str, str]]:
        """(name as written, value) pairs in order."""
        return [(f.name, f.value) for f in self._fields]

    # -- changing ----------------------------------------------------------
    def _changed(self) -> None:
        self.modified = True
        self._index = None

    def add(self, name: str, value: str, *, first: bool = False) -> Field:
        """Append a field (or put it before all others with ``first``)."""
        f = Field.new(header_key(name), value)
        if first:
            self._fields.insert(0, f)
        else:
            self._fields.append(f)
        self._changed()
        return f

    def insert_field(self, position: int, f: Field) -> None:
        self._fields.insert(position, f)
        self._changed()

    def remove(self, name: str) -> int:
        """Remove every field with this name; return how many went."""
        key = header_key(name)
        before = len(self._fields)
        self._fields = [f for f in self._fields if f.key != key]
        removed = before - len(self._fields)
        if removed:
            self._changed()
        return removed

    def remove_field(self, f: Field) -> None:
        self._fields.remove(f)
        self._changed()

    def set(self, name: str, value: str) -> Field:
        """Replace all fields of this name by one, at the place of the first."""
        key = header_key(name)
        new = Field.new(key, value)
        for i, f in enumerate(self._fields):
            if f.key == key:
                self._fields[i] = new
                self._fields = [g for g in self._fields if g.key != key or g is new]
                break
        else:
            self._fields.append(new)
        self._changed()
        return new

    def replace_field(self, old: Field, value: str, parsed: Any = None) -> Field:
        """Give one field a new value, keeping its place."""
        new = Field.new(old.key, value)
        new.parsed = parsed
        self._fields[self._fields.index(old)] = new
        self._changed()
        return new

    def copy(self) -> Headers:
        """A copy sharing the (immutable) unchanged field objects."""
        return Headers(list(self._fields))

    def serialise(self) -> str:
        """Every field followed by CRLF."""
        if not self._fields:
            return ""
        return (
            "\r\n".join([f.raw if f.raw is not None else f.text() for f in self._fields]) + "\r\n"
        )


# ---------------------------------------------------------------------------
# Via (RFC 3261 §20.42, §18.2.1; RFC 3581)

_VIA = re.compile(
    f"([{TOKEN_CHARS}]+)[ \\t]*/[ \\t]*([{TOKEN_CHARS}]+)[ \\t]*/[ \\t]*([{TOKEN_CHARS}]+)"
    r"[ \t]+(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9.])?)"
    r"(?:[ \t]*:[ \t]*([0-9]{1,5}))?"
)

MAGIC_COOKIE = "z9hG4bK"  # RFC 3261 §8.1.1.7


@dataclass(frozen=True, slots=True, eq=False)
class Via:
    """One via-parm.  Parameter names are lower-cased; values kept as written."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    protocol: str = "SIP/2.0"
    text: str | None = field(default=None, repr=False)

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def has_rport(self) -> bool:
        """The client asked for symmetric response routing (RFC 3581 §3)."""
        return "rport" in self.params

    @property
    def rport(self) -> int | None:
        value = self.params.get("rport")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return self.host, self.port

    @property
    def rfc3261_branch(self) -> bool:
        """True if the branch carries the RFC 3261 magic cookie and an id
        (RFC 3261 §17.2.3; a bare cookie falls back to RFC 2543 matching,
        RFC 4475 §3.2.1)."""
        b = self.branch
        return b is not None and b.startswith(MAGIC_COOKIE) and len(b) > len(MAGIC_COOKIE)

    def with_params(self, **params: str | None) -> Via:
        """A copy with parameters set (``None`` value means a flag)."""
        merged = dict(self.params)
        merged.update(params)
        return Via(self.transport, self.host, self.port, merged, self.protocol)

    def __str__(self) -> str:
        if self.text is not None:
            return self.text
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.protocol}/{self.transport} {self.host}{port}{serialise_params(self.params)}"


def parse_via(text: str) -> Via:
    """Parse one via-parm (one comma-separated element of a Via field)."""
    m = _VIA.match(text)
    if m is None:
        raise ParseError("Bad Via")
    name, version, transport, host, port_text = m.groups()
    if name.upper() != "SIP":
        raise ParseError("Bad Via protocol")
    if version != "2.0":
        raise ParseError("Version Not Supported", status=505)
    port = int(port_text) if port_text is not None else None
    if port is not None and port > 65535:
        raise ParseError("Bad Via port")
    rest = text[m.end() :]
    params = parse_params(rest, "Via") if rest else {}
    branch = params.get("branch", "")
    if branch is None:
        raise ParseError("Bad Via branch")
    protocol = "SIP/2.0" if name == "SIP" else f"{name}/{version}"
    return Via(transport.upper(), host, port, params, protocol, text)


# ---------------------------------------------------------------------------
# name-addr / addr-spec: From, To, Contact, Route, Record-Route (RFC 3261 §20.10)

_DISPLAY_TOKENS = re.compile(f"[{TOKEN_CHARS}]+(?:[ \\t]+[{TOKEN_CHARS}]+)*\\Z")
_QUOTED_AT = re.compile(QUOTED)
_NO_SPACE = re.compile(r"[^ \t]+\Z")


@dataclass(frozen=True, slots=True, eq=False)
class Address:
    """A name-addr or addr-spec with its header parameters.

    ``display`` is the display name as written (quoted strings keep their
    quotes); :attr:`display_name` is the unquoted text.  ``uri`` parses the
    URI on first use.  ``star`` is the ``Contact: *`` of a REGISTER that
    removes all bindings (RFC 3261 §10.2.2).
    """

    uri_text: str
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    star: bool = False
    text: str | None = field(default=None, repr=False)
    _uri: list[URI] = field(default_factory=list, repr=False)

    @classmethod
    def build(
        cls, uri: URI | str, *, display_name: str | None = None, **params: str | None
    ) -> Address:
        """A new address; ``display_name`` is quoted for you."""
        uri_text = str(uri)
        display = quote(display_name) if display_name is not None else None
        return cls(uri_text, display, dict(params))

    @property
    def uri(self) -> URI:
        cached = self._uri
        if not cached:
            cached.append(parse_uri(self.uri_text))
        return cached[0]

    @property
    def display_name(self) -> str | None:
        return None if self.display is None else unquote(self.display)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    @property
    def expires(self) -> int | None:
        """The ``expires`` contact parameter (RFC 3261 §20.10), if valid."""
        value = self.params.get("expires")
        return _delta_seconds(value, "Contact expires") if value is not None else None

    @property
    def q(self) -> float | None:
        value = self.params.get("q")
        if value is None:
            return None
        try:
            q = float(value)
        except ValueError:
            raise ParseError("Bad q value") from None
        if not 0.0 <= q <= 1.0:
            raise ParseError("Bad q value")
        return q

    def with_params(self, **params: str | None) -> Address:
        merged = dict(self.params)
        merged.update(params)
        return Address(self.uri_text, self.display, merged, self.star)

    def __str__(self) -> str:
        if self.text is not None:
            return self.text
        if self.star:
            return "*"
        name = f"{self.display} " if self.display else ""
        return f"{name}<{self.uri_text}>{serialise_params(self.params)}"


def parse_address(text: str, what: str = "address") -> Address:
    """Parse ``( name-addr / addr-spec ) *( SEMI param )``."""
    s = text
    display: str | None = None
    if s.startswith('"'):
        m = _QUOTED_AT.match(s)
        if m is None:
            raise ParseError(f"Unterminated quoted string in {what}")
        display = m.group(0)
        s = s[m.end() :].lstrip(" \t")
        if not s.startswith("<"):
            raise ParseError(f"Bad {what}")
    lt = s.find("<")
    if lt >= 0:
        if display is None and lt > 0:
            name = s[:lt].rstrip(" \t")
            if not _DISPLAY_TOKENS.match(name):
                raise ParseError(f"Bad display name in {what}")
            display = name
        gt = s.find(">", lt)
        if gt < 0:
            raise ParseError(f"Unterminated <> in {what}")
        uri_text = s[lt + 1 : gt]
        # RFC 3261 §25.1: LAQUOT/RAQUOT absorb whitespace only outside the
        # addr-spec; spaces inside it are an error (RFC 4475 §3.1.2.14).
        if not _NO_SPACE.match(uri_text):
            raise ParseError(f"Bad URI in {what}")
        rest = s[gt + 1 :]
    else:
        if s == "*":
            return Address("*", star=True, text=text)
        # addr-spec form: the URI ends at the first ';' and may carry neither
        # parameters nor headers of its own (RFC 3261 §20.10).
        semi = s.find(";")
        uri_text = (s if semi < 0 else s[:semi]).rstrip(" \t")
        rest = "" if semi < 0 else s[semi:]
        if not uri_text or not _NO_SPACE.match(uri_text) or "?" in uri_text:
            raise ParseError(f"Bad {what}")
        if ":" not in uri_text:
            raise ParseError(f"Bad {what}")
    params = parse_params(rest, what) if rest else {}
    return Address(uri_text, display, params, False, text)


# ---------------------------------------------------------------------------
# CSeq (RFC 3261 §20.16), numbers

MAX_CSEQ = 2**31 - 1  # RFC 3261 §8.1.1.5: the sequence number is below 2**31
MAX_DELTA_SECONDS = 2**32 - 1  # RFC 3261 §25.1 delta-seconds; larger is not an integer we accept
_CSEQ = re.compile(f"([0-9]{{1,10}})[ \\t]+([{TOKEN_CHARS}]+)\\Z")


@dataclass(frozen=True, slots=True)
class CSeq:
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(text: str) -> CSeq:
    m = _CSEQ.match(text)
    if m is None:
        raise ParseError("Bad CSeq")
    number = int(m.group(1))
    if number > MAX_CSEQ:
        raise ParseError("CSeq number too large")
    return CSeq(number, m.group(2))


def _delta_seconds(text: str, what: str) -> int:
    if not text.isdigit() or not text.isascii() or len(text) > 10:
        raise ParseError(f"Bad {what}")
    value = int(text)
    if value > MAX_DELTA_SECONDS:
        raise ParseError(f"Bad {what}")
    return value


def parse_delta_seconds(text: str, what: str) -> int:
    """A delta-seconds value (Expires, Min-Expires): 0 .. 2**32-1."""
    return _delta_seconds(text, what)


def check_token(text: str, what: str) -> str:
    if not is_token(text):
        raise ParseError(f"Bad {what}")
    return text
