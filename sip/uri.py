"""SIP, SIPS and TEL URIs (RFC 3261 §19.1, §25.1; RFC 3966), and any other
absolute URI kept opaque.

A parsed :class:`URI` remembers the text it came from and serialises to it
unchanged; a URI built or modified with :meth:`URI.replace` serialises in
canonical form.  User parts and parameter values are kept as written
(escaped); :meth:`URI.user_unescaped` and :func:`equivalent` unescape, as
RFC 3261 §19.1.4 compares URIs after unescaping.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

from sip.errors import ParseError
from sip.grammar import serialise_params

__all__ = ["URI", "equivalent", "host_port", "parse_uri"]

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+\-.]*):")
# user = 1*( unreserved / escaped / user-unreserved ); password adds ":" is not allowed
_USER = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+\Z")
_PASSWORD = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,]|%[0-9A-Fa-f]{2})*\Z")
# host = hostname / IPv4address / IPv6reference.  The hostname rule is
# relaxed to "labels of alphanumerics and hyphens", which admits IPv4 too.
_HOSTPORT = re.compile(
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9.])?)(?::([0-9]{1,5}))?\Z"
)
# paramchar = param-unreserved / unreserved / escaped
_PARAMCHARS = r"(?:[A-Za-z0-9\-_.!~*'()\[\]/:&+$]|%[0-9A-Fa-f]{2})"
_URI_PARAM = re.compile(f"({_PARAMCHARS}+)(?:=({_PARAMCHARS}+))?\\Z")
# hname/hvalue chars: hnv-unreserved / unreserved / escaped
_HCHARS = r"(?:[A-Za-z0-9\-_.!~*'()\[\]/?:+$]|%[0-9A-Fa-f]{2})"
_URI_HEADER = re.compile(f"({_HCHARS}+)=({_HCHARS}*)\\Z")
# RFC 3966 §3: global numbers start with "+"; local numbers are hex digits,
# "*" and "#"; both admit visual separators.
_TEL_NUMBER = re.compile(
    r"(?:\+[0-9\-.()]*[0-9][0-9\-.()]*|[0-9A-Fa-f*#\-.()]*[0-9A-Fa-f*#][0-9A-Fa-f*#\-.()]*)\Z"
)
_OPAQUE = re.compile(r"[!-~\x80-\U0010ffff]+\Z")  # any visible characters, no whitespace

MAX_PORT = 65535


def host_port(host: str, port: object) -> str:
    """``host:port`` as written in URIs, Vias and messages: an IPv6
    address in brackets (RFC 3261 §19.1.1, RFC 3986 §3.2.2)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True, eq=False)
class URI:
    """A parsed URI.  For ``sip``/``sips`` all fields apply; for ``tel``,
    ``user`` holds the number and ``host`` is empty; for other schemes only
    ``opaque`` is set."""

    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    opaque: str | None = None
    text: str | None = field(default=None, repr=False)

    @property
    def is_sip(self) -> bool:
        """True for ``sip:`` and ``sips:`` URIs."""
        return self.scheme in ("sip", "sips")

    @property
    def port_or_default(self) -> int:
        """The port, or the scheme's default: 5061 for ``sips``, else 5060
        (RFC 3261 §19.1.2)."""
        return self.port or (5061 if self.scheme == "sips" else 5060)

    @property
    def host_key(self) -> str:
        """The host for comparisons: case-insensitive (RFC 3261 §19.1.4)."""
        return self.host.lower()

    def user_unescaped(self) -> str | None:
        """The user part with %-escapes decoded (bytes beyond UTF-8 kept)."""
        if self.user is None:
            return None
        return _unescape(self.user)

    def param(self, name: str) -> str | None:
        """Value of a URI parameter (names are case-insensitive)."""
        return self.params.get(name.lower())

    def has_param(self, name: str) -> bool:
        return name.lower() in self.params

    def replace(self, **changes: Any) -> URI:
        """A copy with ``changes`` applied, serialised canonically."""
        return dataclasses.replace(self, text=None, **changes)

    def __str__(self) -> str:
        if self.text is not None:
            return self.text
        return self.canonical()

    def canonical(self) -> str:
        """The URI rebuilt from its fields."""
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        if self.scheme == "tel":
            return f"tel:{self.user}{serialise_params(self.params)}"
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts.append(":" + self.password)
            parts.append("@")
        parts.append(self.host)
        if self.port is not None:
            parts.append(f":{self.port}")
        parts.append(serialise_params(self.params))
        if self.headers:
            parts.append("?" + "&".join(f"{k}={v}" for k, v in self.headers.items()))
        return "".join(parts)


def _unescape(text: str) -> str:
    if "%" not in text:
        return text
    return unquote_to_bytes(text).decode("utf-8", "surrogateescape")


def parse_uri(text: str) -> URI:
    """Parse a URI as it appears in a Request-URI or inside ``<...>``.

    Raises :class:`ParseError` (status 400) if ``text`` is not a URI; an
    unknown scheme is not an error here (the caller answers 416, RFC 3261
    §8.2.2.1).
    """
    m = _SCHEME.match(text)
    if m is None:
        raise ParseError("Bad URI")
    scheme = m.group(1).lower()
    rest = text[m.end() :]
    if scheme in ("sip", "sips"):
        return _parse_sip(scheme, rest, text)
    if scheme == "tel":
        return _parse_tel(rest, text)
    if not _OPAQUE.match(rest):
        raise ParseError("Bad URI")
    return URI(scheme=scheme, opaque=rest, text=text)


def _parse_sip(scheme: str, rest: str, text: str) -> URI:
    user: str | None = None
    password: str | None = None
    at = rest.find("@")
    if at >= 0:
        userinfo = rest[:at]
        rest = rest[at + 1 :]
        colon = userinfo.find(":")
        if colon >= 0:
            user, password = userinfo[:colon], userinfo[colon + 1 :]
            if not _PASSWORD.match(password):
                raise ParseError("Bad URI password")
        else:
            user = userinfo
        if not _USER.match(user):
            raise ParseError("Bad URI user part")
    headers: dict[str, str] = {}
    qmark = rest.find("?")
    if qmark >= 0:
        for item in rest[qmark + 1 :].split("&"):
            hm = _URI_HEADER.match(item)
            if hm is None:
                raise ParseError("Bad URI header")
            headers[hm.group(1)] = hm.group(2)
        rest = rest[:qmark]
    params: dict[str, str | None] = {}
    semi = rest.find(";")
    if semi >= 0:
        for item in rest[semi + 1 :].split(";"):
            pm = _URI_PARAM.match(item)
            if pm is None:
                raise ParseError("Bad URI parameter")
            name = pm.group(1).lower()
            if name in params:
                raise ParseError("Duplicate URI parameter")
            params[name] = pm.group(2)
        rest = rest[:semi]
    hm2 = _HOSTPORT.match(rest)
    if hm2 is None:
        raise ParseError("Bad URI host")
    port_text = hm2.group(2)
    port = None
    if port_text is not None:
        port = int(port_text)
        if port > MAX_PORT:
            raise ParseError("Bad URI port")
    return URI(
        scheme=scheme,
        user=user,
        password=password,
        host=hm2.group(1),
        port=port,
        params=params,
        headers=headers,
        text=text,
    )


def _parse_tel(rest: str, text: str) -> URI:
    number, _, param_text = rest.partition(";")
    if not _TEL_NUMBER.match(number):
        raise ParseError("Bad tel URI")
    params: dict[str, str | None] = {}
    if param_text:
        for item in param_text.split(";"):
            pm = _URI_PARAM.match(item)
            if pm is None:
                raise ParseError("Bad tel URI parameter")
            params[pm.group(1).lower()] = pm.group(2)
    return URI(scheme="tel", user=number, params=params, text=text)


# Parameters that must match if present in either URI (RFC 3261 §19.1.4).
_SIGNIFICANT_PARAMS = ("user", "ttl", "method", "maddr", "transport")


def equivalent(a: URI, b: URI) -> bool:
    """URI comparison of RFC 3261 §19.1.4 (sip/sips) and RFC 3966 §4 (tel).

    User and password compare case-sensitively after unescaping, host
    case-insensitively; a parameter present in both must match
    (case-insensitively after unescaping); ``user``, ``ttl``, ``method``,
    ``maddr`` and ``transport`` must match even if present in only one;
    headers must all match.
    """
    if a.scheme != b.scheme:
        return False
    if a.opaque is not None or b.opaque is not None:
        return a.opaque == b.opaque
    if a.scheme == "tel":
        strip = str.maketrans("", "", "-.()")
        return (a.user or "").translate(strip).lower() == (b.user or "").translate(
            strip
        ).lower() and _params_key(a.params) == _params_key(b.params)
    if a.user_unescaped() != b.user_unescaped() or a.password != b.password:
        return False
    if a.host_key != b.host_key or a.port != b.port:
        return False
    pa, pb = _params_key(a.params), _params_key(b.params)
    for name in _SIGNIFICANT_PARAMS:
        if pa.get(name, "") != pb.get(name, ""):
            return False
    for name in pa.keys() & pb.keys():
        if pa[name] != pb[name]:
            return False
    ha = {_unescape(k).lower(): _unescape(v) for k, v in a.headers.items()}
    hb = {_unescape(k).lower(): _unescape(v) for k, v in b.headers.items()}
    return ha == hb


def _params_key(params: dict[str, str | None]) -> dict[str, str]:
    return {_unescape(k).lower(): _unescape(v or "").lower() for k, v in params.items()}
