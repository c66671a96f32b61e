"""Lexical building blocks of the SIP grammar (RFC 3261 §25.1).

Shared by the URI, header and authentication parsers so that a token,
a quoted string or a parameter list means the same thing everywhere.  All
functions work on ``str`` values that were decoded with ``surrogateescape``
(so arbitrary octets survive a round trip) and already unfolded (line folding
is removed when a header field is read).
"""

from __future__ import annotations

import re

from sip.errors import ParseError

__all__ = [
    "TOKEN_CHARS",
    "is_token",
    "parse_params",
    "quote",
    "serialise_params",
    "split_list",
    "unquote",
]

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
TOKEN = re.compile(f"[{TOKEN_CHARS}]+")
_TOKEN_FULL = re.compile(f"[{TOKEN_CHARS}]+\\Z")

# quoted-string = SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE; quoted-pair may
# escape any octet but CR and LF (RFC 3261 §25.1).
QUOTED = r'"(?:[^"\\\r\n]|\\[^\r\n])*"'

# generic-param = token [ EQUAL gen-value ]; gen-value = token / host / quoted-string.
# A host may be an IPv6 reference; tokens cover names and IPv4.  The value
# class also admits ':' and '[]' so that URI-ish values (e.g. maddr with
# IPv6, or lenient peers) survive; ';' and ',' always end a value.
_PARAM = re.compile(
    f"[ \\t]*;[ \\t]*([{TOKEN_CHARS}]+)"
    f"(?:[ \\t]*=[ \\t]*({QUOTED}|\\[[0-9A-Fa-f:.]+\\]|[{TOKEN_CHARS}:\\[\\]/]+))?[ \\t]*"
)

_UNQUOTE = re.compile(r"\\(.)")


def is_token(text: str) -> bool:
    """True if ``text`` is a non-empty RFC 3261 token."""
    return _TOKEN_FULL.match(text) is not None


def unquote(text: str) -> str:
    """Return the content of a quoted-string (or ``text`` itself if unquoted)."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        inner = text[1:-1]
        return _UNQUOTE.sub(r"\1", inner) if "\\" in inner else inner
    return text


def quote(text: str) -> str:
    """Return ``text`` as a quoted-string, escaping ``"`` and ``\\``."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_params(text: str, what: str) -> dict[str, str | None]:
    """Parse ``*( SEMI generic-param )`` into an ordered dict.

    Names are lower-cased (parameter names are case-insensitive, RFC 3261
    §7.3.1); values keep their spelling (quoted strings keep their quotes, so
    that serialising gives back what was received).  A parameter without a
    value maps to ``None``.  ``what`` names the header for error messages.
    Raises :class:`ParseError` unless the whole of ``text`` is consumed.
    """
    params: dict[str, str | None] = {}
    pos = 0
    end = len(text)
    match = _PARAM.match
    while pos < end:
        m = match(text, pos)
        if m is None:
            if text[pos:].strip(" \t") == "":
                break
            raise ParseError(f"Bad {what} parameters")
        name = m.group(1).lower()
        if name in params:
            # RFC 3261 §20: a parameter name may not appear twice in a header value.
            raise ParseError(f"Duplicate {what} parameter {name}")
        params[name] = m.group(2)
        pos = m.end()
    return params


def serialise_params(params: dict[str, str | None]) -> str:
    """The inverse of :func:`parse_params`: ``;name=value;flag``."""
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value (RFC 3261 §7.3.1).

    Commas inside quoted strings and inside ``<...>`` do not separate values.
    Empty elements are an error: ``a,,b`` is not a valid list in any header
    whose grammar allows commas (RFC 4475 §3.1.2.1, badinv01).
    """
    if "," not in value:
        return [value.strip()]
    items: list[str] = []
    start = 0
    in_quote = False
    in_angle = False
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if in_quote:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quote = False
        elif c == '"':
            in_quote = True
        elif c == "<":
            in_angle = True
        elif c == ">":
            in_angle = False
        elif c == "," and not in_angle:
            items.append(value[start:i].strip())
            start = i + 1
        i += 1
    if in_quote:
        raise ParseError("Unterminated quoted string")
    items.append(value[start:].strip())
    if any(not item for item in items):
        raise ParseError("Empty element in header list")
    return items
