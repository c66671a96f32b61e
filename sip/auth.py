"""Authentication header values: WWW-/Proxy-Authenticate and (Proxy-)Authorization.

Pure parsing and serialising, no cryptography and no I/O; the digest
machinery that gives the values meaning lives in ``sip.digest``.

The grammar is RFC 3261 §25.1 (``challenge``, ``credentials``), which is the
RFC 2617 digest grammar; RFC 7616 §3.3/§3.4 say which parameters are quoted
strings and which are tokens, and RFC 7235 §2.1 says that a recipient treats
a token and a quoted-string as the same value.  Real peers disagree about
quoting (``algorithm="MD5"``, ``qop="auth"``, ``realm=asterisk``), so the
parser accepts either form for every parameter and the serialiser always
writes the canonical one.

Any scheme parses, not only Digest: RFC 4475 §3.3.7 sends
``Authorization: NoOneKnowsThisScheme opaque-data=here`` and expects the
registrar to answer 401 with a scheme it understands, which it can only do if
the header did not make the whole message unparseable.

Malformed input raises ``ParseError`` and nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeAlias

from sip.errors import ParseError
from sip.settings import MAX_LINE_LENGTH

__all__ = [
    "DIGEST",
    "MAX_AUTH_PARAMS",
    "Challenge",
    "Credentials",
    "parse_challenge",
    "parse_credentials",
]

#: The canonical spelling of the one scheme SIP defines (RFC 3261 §22.4).
DIGEST = "Digest"

# A Digest header has at most a dozen parameters (RFC 7616 §3.3 and §3.4 define
# ten and eleven); 32 leaves room for extensions and bounds the work a hostile
# header can make us do.
MAX_AUTH_PARAMS = 32

# RFC 3261 §25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN_RE = re.compile(_TOKEN)
# RFC 7235 §2.1: token68, the only other form a credential may take.
_TOKEN68_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_WS_RE = re.compile(r"[ \t]*")
# RFC 3261 §25.1 quoted-string: qdtext / quoted-pair, unambiguous so matching is linear.
_QUOTED_RE = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)
# An unquoted value as real peers send them: a token in the RFC, but unquoted
# nonces (base64, with "/" and "="), URIs (":", "@", ";") are common, so any
# visible ASCII except the characters that delimit values: DQUOTE "," "\".
_BARE_VALUE_RE = re.compile(r"[\x21\x23-\x2b\x2d-\x5b\x5d-\x7e]+")
# RFC 3261 §7.3.1: a folded line (CRLF followed by whitespace) is one SP.
_FOLD_RE = re.compile(r"\r\n[ \t]+")
# What no value may contain once unquoted: control characters other than HTAB
# (CR and LF would let a value inject header lines when serialised) and lone
# surrogates (a value must be encodable as UTF-8, RFC 3261 §25.1 UTF8-NONASCII).
_FORBIDDEN_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")
# RFC 7616 §3.4: nc-value = 8LHEX (upper case accepted: it is still hex).
_NC_RE = re.compile(r"[0-9A-Fa-f]{8}")

# Parameters RFC 7616 §3.3 always quotes in a challenge even when they are not
# among the named fields (``domain``); anything else unknown is quoted only
# when it is not a token.
_QUOTED_CHALLENGE_PARAMS = frozenset({"domain"})

_CHALLENGE_FIELDS = ("realm", "nonce", "opaque", "algorithm", "qop", "stale")
_CREDENTIALS_FIELDS = (
    "username",
    "realm",
    "nonce",
    "uri",
    "response",
    "algorithm",
    "cnonce",
    "opaque",
    "qop",
    "nc",
)

# (name, value) pairs in the order received, names in lower case.
Params: TypeAlias = tuple[tuple[str, str], ...]


# --- validation shared by construction and parsing -------------------------------


def _check_text(name: str, value: str) -> None:
    if _FORBIDDEN_RE.search(value):
        raise ValueError(f"{name} contains a control character")


def _check_token(name: str, value: str) -> None:
    if not _TOKEN_RE.fullmatch(value):
        raise ValueError(f"{name} is not a token")


def _normalise_scheme(scheme: str) -> str:
    _check_token("scheme", scheme)
    # RFC 7235 §2.1: the scheme is case-insensitive; Digest gets its RFC spelling.
    return DIGEST if scheme.lower() == "digest" else scheme


def _normalise_params(params: Params, reserved: tuple[str, ...]) -> Params:
    seen: set[str] = set()
    normalised = []
    for name, value in params:
        _check_token("parameter name", name)
        lowered = name.lower()
        if lowered in seen or lowered in reserved:
            raise ValueError(f"parameter {lowered} repeated or reserved")
        seen.add(lowered)
        _check_text(lowered, value)
        normalised.append((lowered, value))
    return tuple(normalised)


def _check_token68(token68: str | None, scheme: str, has_params: bool) -> None:
    if token68 is None:
        return
    if scheme == DIGEST:
        raise ValueError("Digest takes parameters, not a token68")
    if has_params:
        raise ValueError("token68 and parameters are exclusive")
    if not _TOKEN68_RE.fullmatch(token68):
        raise ValueError("token68 is malformed")


# --- serialising -----------------------------------------------------------------


def _quote(value: str) -> str:
    """RFC 3261 §25.1 quoted-string, escaping only what must be escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _token_or_quoted(value: str) -> str:
    return value if _TOKEN_RE.fullmatch(value) else _quote(value)


def _join(scheme: str, parts: list[str], token68: str | None) -> str:
    if token68 is not None:
        return f"{scheme} {token68}"
    if not parts:
        return scheme
    return f"{scheme} {', '.join(parts)}"


# --- the values ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    """One WWW-Authenticate or Proxy-Authenticate value (RFC 3261 §20.27, §20.44).

    The named fields are filled for the Digest scheme only; a challenge of any
    other scheme keeps all its parameters in ``params`` (or its ``token68``),
    since their meaning is unknown to us.  ``params`` holds the remaining
    parameters in the order received, names in lower case.  ``stale`` is true
    only for ``stale=true`` (RFC 7616 §3.3: any other value means false).
    ``qop_options`` is empty when the server offers no qop (RFC 2069 style).
    """

    scheme: str = DIGEST
    realm: str | None = None
    nonce: str | None = None
    opaque: str | None = None
    algorithm: str | None = None
    qop_options: tuple[str, ...] = ()
    stale: bool = False
    params: Params = ()
    token68: str | None = None

    def __post_init__(self) -> None:
        scheme = _normalise_scheme(self.scheme)
        object.__setattr__(self, "scheme", scheme)
        reserved = _CHALLENGE_FIELDS if scheme == DIGEST else ()
        object.__setattr__(self, "params", _normalise_params(self.params, reserved))
        _check_token68(self.token68, scheme, bool(self.params))
        if scheme != DIGEST:
            if (self.realm, self.nonce, self.opaque, self.algorithm) != (None,) * 4 or (
                self.qop_options or self.stale
            ):
                raise ValueError("digest fields belong to the Digest scheme only")
            return
        # RFC 7616 §3.3: realm and nonce are required; a challenge without
        # them cannot be answered.
        if self.realm is None:
            raise ValueError("Digest challenge without realm")
        if self.nonce is None:
            raise ValueError("Digest challenge without nonce")
        for name in ("realm", "nonce", "opaque"):
            value = getattr(self, name)
            if value is not None:
                _check_text(name, value)
        if self.algorithm is not None:
            _check_token("algorithm", self.algorithm)
        for option in self.qop_options:
            _check_token("qop", option)

    def serialise(self) -> str:
        """The canonical header value: RFC 7616 §3.3 quoting, named fields first."""
        parts: list[str] = []
        if self.realm is not None:
            parts.append(f"realm={_quote(self.realm)}")
        if self.nonce is not None:
            parts.append(f"nonce={_quote(self.nonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.algorithm is not None:
            parts.append(f"algorithm={self.algorithm}")
        if self.qop_options:
            parts.append(f"qop={_quote(','.join(self.qop_options))}")
        if self.stale:
            parts.append("stale=true")
        for name, value in self.params:
            quote_always = self.scheme == DIGEST and name in _QUOTED_CHALLENGE_PARAMS
            parts.append(f"{name}={_quote(value) if quote_always else _token_or_quoted(value)}")
        return _join(self.scheme, parts, self.token68)

    def __str__(self) -> str:
        return self.serialise()


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """One Authorization or Proxy-Authorization value (RFC 3261 §20.7, §20.28).

    Every Digest field is optional here: a header that lacks, say, the
    response is still well-formed, and it is ``sip.digest`` that refuses it,
    so that the registrar can answer 401 with a fresh challenge rather than
    400.  As in ``Challenge``, other schemes keep everything in ``params`` or
    ``token68``.  ``nc`` keeps the eight hex digits as sent, because the
    response is computed over that exact text (RFC 7616 §3.4.1).
    """

    scheme: str = DIGEST
    username: str | None = None
    realm: str | None = None
    nonce: str | None = None
    uri: str | None = None
    response: str | None = None
    algorithm: str | None = None
    cnonce: str | None = None
    opaque: str | None = None
    qop: str | None = None
    nc: str | None = None
    params: Params = ()
    token68: str | None = None

    def __post_init__(self) -> None:
        scheme = _normalise_scheme(self.scheme)
        object.__setattr__(self, "scheme", scheme)
        reserved = _CREDENTIALS_FIELDS if scheme == DIGEST else ()
        object.__setattr__(self, "params", _normalise_params(self.params, reserved))
        _check_token68(self.token68, scheme, bool(self.params))
        values = [getattr(self, name) for name in _CREDENTIALS_FIELDS]
        if scheme != DIGEST:
            if any(value is not None for value in values):
                raise ValueError("digest fields belong to the Digest scheme only")
            return
        for name, value in zip(_CREDENTIALS_FIELDS, values, strict=True):
            if value is not None:
                _check_text(name, value)
        # RFC 7616 §3.4: algorithm and qop are tokens, nc is 8LHEX.
        if self.algorithm is not None:
            _check_token("algorithm", self.algorithm)
        if self.qop is not None:
            _check_token("qop", self.qop)
        if self.nc is not None and not _NC_RE.fullmatch(self.nc):
            raise ValueError("nc is not eight hex digits")

    def serialise(self) -> str:
        """The canonical header value: RFC 7616 §3.4 quoting, named fields first."""
        parts: list[str] = []
        for name in ("username", "realm", "nonce", "uri", "response"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={_quote(value)}")
        if self.algorithm is not None:
            parts.append(f"algorithm={self.algorithm}")
        if self.cnonce is not None:
            parts.append(f"cnonce={_quote(self.cnonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.qop is not None:
            parts.append(f"qop={self.qop}")
        if self.nc is not None:
            parts.append(f"nc={self.nc}")
        parts.extend(f"{name}={_token_or_quoted(value)}" for name, value in self.params)
        return _join(self.scheme, parts, self.token68)

    def __str__(self) -> str:
        return self.serialise()


# --- parsing ---------------------------------------------------------------------


def _split(value: str) -> tuple[str, list[tuple[str, str]], str | None]:
    """Split a header value into scheme, (name, value) pairs and token68.

    RFC 7235 §2.1 / RFC 3261 §25.1: ``scheme 1*SP ( token68 / #auth-param )``
    with LWS allowed around ``=`` and ``,`` and empty list elements tolerated
    (RFC 7230 §7).  Names come back in lower case, values unquoted.
    """
    if len(value) > MAX_LINE_LENGTH:
        raise ParseError("authentication header too long")
    text = _FOLD_RE.sub(" ", value).strip(" \t")
    scheme_match = _TOKEN_RE.match(text)
    if scheme_match is None:
        raise ParseError("missing authentication scheme")
    scheme = scheme_match.group()
    pos, end = scheme_match.end(), len(text)
    if pos == end:
        return scheme, [], None
    if text[pos] not in " \t":
        raise ParseError("malformed authentication scheme")
    pos = _skip_ws(text, pos)
    if scheme.lower() != "digest" and _TOKEN68_RE.fullmatch(text, pos):
        return scheme, [], text[pos:]

    params: list[tuple[str, str]] = []
    while pos < end:
        if text[pos] == ",":  # an empty list element
            pos = _skip_ws(text, pos + 1)
            continue
        if len(params) == MAX_AUTH_PARAMS:
            raise ParseError("too many authentication parameters")
        name_match = _TOKEN_RE.match(text, pos)
        if name_match is None:
            raise ParseError("expected an authentication parameter name")
        pos = _skip_ws(text, name_match.end())
        if pos == end or text[pos] != "=":
            raise ParseError("expected '=' after an authentication parameter name")
        pos = _skip_ws(text, pos + 1)
        if pos < end and text[pos] == '"':
            quoted = _QUOTED_RE.match(text, pos)
            if quoted is None:
                raise ParseError("unterminated quoted string")
            param_value = _QUOTED_PAIR_RE.sub(r"\1", quoted.group(1))
            pos = quoted.end()
        else:
            bare = _BARE_VALUE_RE.match(text, pos)
            if bare is None:
                raise ParseError("missing authentication parameter value")
            param_value = bare.group()
            pos = bare.end()
        params.append((name_match.group().lower(), param_value))
        pos = _skip_ws(text, pos)
        if pos < end:
            if text[pos] != ",":
                raise ParseError("expected ',' between authentication parameters")
            pos = _skip_ws(text, pos + 1)
    return scheme, params, None


def _skip_ws(text: str, pos: int) -> int:
    match = _WS_RE.match(text, pos)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _take_fields(
    params: list[tuple[str, str]], fields: tuple[str, ...]
) -> tuple[dict[str, str], Params]:
    """Separate the named Digest fields from the rest, refusing duplicates.

    RFC 7235 §2.1: each parameter name occurs only once per challenge.
    """
    named: dict[str, str] = {}
    others: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, value in params:
        if name in seen:
            raise ParseError(f"duplicate authentication parameter {name}")
        seen.add(name)
        if name in fields:
            named[name] = value
        else:
            others.append((name, value))
    return named, tuple(others)


def parse_challenge(value: str) -> Challenge:
    """Parse a WWW-Authenticate or Proxy-Authenticate header value.

    Raises ``ParseError`` (status 400) and nothing else on malformed input,
    including a Digest challenge without realm or nonce, or with a qop option
    or algorithm that is not a token.
    """
    scheme, params, token68 = _split(value)
    try:
        if scheme.lower() != "digest":
            return Challenge(scheme=scheme, params=tuple(params), token68=token68)
        named, others = _take_fields(params, _CHALLENGE_FIELDS)
        qop_options: tuple[str, ...] = ()
        if "qop" in named:
            # RFC 3261 §25.1 qop-options: a quoted, comma-separated list; peers
            # add spaces ("auth, auth-int") and some send a bare token.
            qop_options = tuple(
                option.strip(" \t") for option in named["qop"].split(",") if option.strip(" \t")
            )
            if not qop_options:
                raise ParseError("empty qop in challenge")
        return Challenge(
            scheme=scheme,
            realm=named.get("realm"),
            nonce=named.get("nonce"),
            opaque=named.get("opaque"),
            algorithm=named.get("algorithm"),
            qop_options=qop_options,
            stale=named.get("stale", "").lower() == "true",
            params=others,
        )
    except ValueError as exc:
        raise ParseError(f"malformed challenge: {exc}") from None


def parse_credentials(value: str) -> Credentials:
    """Parse an Authorization or Proxy-Authorization header value.

    Raises ``ParseError`` (status 400) and nothing else on malformed input.
    Missing Digest fields are not malformed here; ``sip.digest`` refuses them.
    """
    scheme, params, token68 = _split(value)
    try:
        if scheme.lower() != "digest":
            return Credentials(scheme=scheme, params=tuple(params), token68=token68)
        named, others = _take_fields(params, _CREDENTIALS_FIELDS)
        return Credentials(
            scheme=scheme,
            username=named.get("username"),
            realm=named.get("realm"),
            nonce=named.get("nonce"),
            uri=named.get("uri"),
            response=named.get("response"),
            algorithm=named.get("algorithm"),
            cnonce=named.get("cnonce"),
            opaque=named.get("opaque"),
            qop=named.get("qop"),
            nc=named.get("nc"),
            params=others,
        )
    except ValueError as exc:
        raise ParseError(f"malformed credentials: {exc}") from None
