"""Gateway settings: typed, frozen, loaded from TOML (``config/gateway.toml``).

One object built at start-up and injected everywhere (DESIGN.md: no
module-level mutable state).  Every value is checked here, so that a typo in
the file is a one-line :class:`ConfigError` naming the key, not a traceback
from deep inside the SIP stack.  Unknown keys are errors too: a misspelt
``tcp_idle_timout`` silently ignored would be worse than a refusal to start.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from sip.errors import ParseError
from sip.headers import MAX_DELTA_SECONDS
from sip.overload import OverloadSettings
from sip.session_timer import MIN_SE_FLOOR
from sip.settings import SIPSettings
from sip.transport import MAX_TCP_CONNECTIONS
from sip.uri import URI, host_port, parse_uri

__all__ = [
    "ADMISSION_BACKENDS",
    "CARRIER_TRANSPORTS",
    "DATABASE_DRIVERS",
    "DEFAULT_DATABASE",
    "DEFAULT_HTTP_LISTEN",
    "DEFAULT_REALM",
    "DEFAULT_SECRET_KEY_FILE",
    "DEFAULT_SIP_LISTEN",
    "LOG_LEVELS",
    "SECRET_KEY_ENV",
    "SMTP_SECURITY",
    "WILDCARD_HOSTS",
    "AdmissionSettings",
    "AdvertisedAddress",
    "CallSettings",
    "CarrierSettings",
    "CarrierSource",
    "ConfigError",
    "GatewaySettings",
    "HTTPSettings",
    "HostPort",
    "LogSettings",
    "RegistrarSettings",
    "SIPServerSettings",
    "SMTPSettings",
    "StoreSettings",
    "canonical_ip",
    "load_settings",
    "parse_advertise",
    "parse_carrier_uri",
    "parse_database_url",
    "parse_host_port",
    "settings_from_mapping",
]

DEFAULT_SIP_LISTEN = "0.0.0.0:5060"
DEFAULT_HTTP_LISTEN = "127.0.0.1:8080"
DEFAULT_REALM = "sipgw"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

#: The embedded default: one SQLite file beside the working directory, so
#: ``sipgw serve`` and the ``sipgw`` management commands run from the same
#: place share it without any set-up.
DEFAULT_DATABASE = "sqlite+aiosqlite:///var/sipgw.sqlite3"
DEFAULT_SECRET_KEY_FILE = "var/secret.key"
DEFAULT_RECORD_SPOOL = "var/call-records.spool"
#: Environment variable holding the Fernet key; it wins over the key file, for
#: deployments that inject secrets rather than ship files.
SECRET_KEY_ENV = "SIPGW_SECRET_KEY"
#: The store is async SQLAlchemy: only async drivers can serve it.
DATABASE_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")
#: How calls reach the carrier (TLS comes with a later issue).
CARRIER_TRANSPORTS = ("udp", "tcp")
#: Every inbound request is checked against this list; a carrier has a
#: handful of SBCs, so a long list is a configuration mistake.
MAX_CARRIER_SOURCES = 64
#: Bindings per profile: the 200 OK to a REGISTER lists every one of them
#: (RFC 3261 §10.3 step 8), and a UDP response should stay well under the
#: path MTU (§18.1.1); a hundred contacts is already far past any real PBX.
MAX_BINDINGS_CEILING = 100

_CORE_DEFAULTS = SIPSettings()
_OVERLOAD_DEFAULTS = OverloadSettings()
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?\Z"
)
# RFC 3261 §25.1: hostname = *( domainlabel "." ) toplabel [ "." ], and a
# toplabel starts with a letter, so "192.0.2.300" is neither an IPv4
# address nor a host name.
_TOPLABEL = re.compile(r"(?:\A|\.)[A-Za-z][A-Za-z0-9-]*\.?\Z")
#: Listen addresses that mean "every local address": bound, never given out.
WILDCARD_HOSTS = ("0.0.0.0", "::")
# The realm goes into a quoted-string (RFC 3261 §22.4, RFC 7616 §3.3): no
# quotes, backslashes or control characters, and a length a PBX will accept.
_REALM = re.compile(r"[\x20-\x7e]{1,128}\Z")
_REALM_FORBIDDEN = frozenset('"\\')


class ConfigError(Exception):
    """A configuration value that cannot be used: which key, what is wrong.

    ``str()`` is one line, e.g. ``gateway.toml: sip.t1: must be a positive
    number of seconds, got -1``.
    """

    def __init__(self, key: str, problem: str, *, origin: str | None = None) -> None:
        self.key = key
        self.problem = problem
        self.origin = origin
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.origin}: " if self.origin else ""
        what = f"{self.key}: " if self.key else ""
        return f"{where}{what}{self.problem}"

    def located(self, origin: str) -> ConfigError:
        return ConfigError(self.key, self.problem, origin=origin)


@dataclass(frozen=True, slots=True)
class HostPort:
    """A listen address; ``host`` is kept without IPv6 brackets."""

    host: str
    port: int

    def __str__(self) -> str:
        return host_port(self.host, self.port)


def parse_host_port(text: object, key: str) -> HostPort:
    """``host:port``, ``[v6]:port``; port 0 asks for any free port.

    The host is an IPv4 address, a bracketed IPv6 address or a host name.
    """
    if not isinstance(text, str):
        raise ConfigError(key, f"must be a string like 127.0.0.1:5060, got {_show(text)}")
    host, port_text = _split_host_port(text, key, "expected HOST:PORT", need_port=True)
    if (
        port_text is None
        or not port_text.isdigit()
        or not port_text.isascii()
        or int(port_text) > 65535
    ):
        raise ConfigError(key, f"{text!r}: port must be a number from 0 to 65535")
    return HostPort(host, int(port_text))


def _split_host_port(text: str, key: str, hint: str, *, need_port: bool) -> tuple[str, str | None]:
    """``text`` as (host, port text), the host checked: an IPv4 address, an
    IPv6 address in brackets, or a host name.  The port text is None when
    there is none and ``need_port`` is false."""
    hint += " (IPv6 in brackets, e.g. [::1]:5060)"
    value = text.strip()
    if value.startswith("["):
        close = value.find("]")
        rest = value[close + 1 :] if close >= 0 else ""
        if close < 0 or ((rest or need_port) and not rest.startswith(":")):
            raise ConfigError(key, f"{text!r}: {hint}")
        host = value[1:close]
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError(host)
        except ValueError:
            raise ConfigError(key, f"{text!r}: {host!r} is not an IPv6 address") from None
        return host, rest[1:] if rest else None
    host, sep, port_text = value.rpartition(":")
    if not sep and not need_port:
        return _checked_host(value, text, key), None
    if not sep or not host:
        raise ConfigError(key, f"{text!r}: {hint}")
    return _checked_host(host, text, key), port_text


def _checked_host(host: str, text: str, key: str) -> str:
    if ":" in host:
        raise ConfigError(key, f"{text!r}: put an IPv6 address in brackets, e.g. [::1]:5060")
    if not _is_ipv4(host) and not _HOSTNAME.match(host):
        raise ConfigError(key, f"{text!r}: {host!r} is not an IP address or host name")
    return host


@dataclass(frozen=True, slots=True)
class AdvertisedAddress:
    """``sip.advertise``: where PBXs and carriers reach the gateway (behind
    NAT, or on a host with several addresses).  ``host`` is an IP address
    (IPv6 without brackets) or a host name; ``port`` None means the port of
    the first listener."""

    host: str
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def parse_advertise(text: object, key: str) -> AdvertisedAddress | None:
    """``HOST`` or ``HOST:PORT`` (``[v6]`` or ``[v6]:PORT``); ``""`` is None.

    The host goes into Via sent-by and Record-Route (RFC 3261 §20.42,
    §20.30), so it is an IP literal or a host name by the §25.1 grammar;
    a wildcard address names no host a peer could reach.
    """
    if not isinstance(text, str):
        raise ConfigError(
            key, f"must be a string like 203.0.113.10 or sip.example.net:5060, got {_show(text)}"
        )
    if not text.strip():
        return None
    host, port_text = _split_host_port(text, key, "expected HOST or HOST:PORT", need_port=False)
    if canonical_ip(host) is None and not _TOPLABEL.search(host):
        raise ConfigError(key, f"{text!r}: {host!r} is not an IP address or host name")
    if "%" in host:  # an IPv6 zone: meaningless to a peer, and no SIP URI can carry it
        raise ConfigError(key, f"{text!r}: an IPv6 zone (%...) cannot be advertised")
    if canonical_ip(host) in WILDCARD_HOSTS:
        raise ConfigError(
            key,
            f"{text!r} is a wildcard: give the address (or host name) that PBXs"
            " and the carrier reach this gateway at",
        )
    if port_text is None:
        return AdvertisedAddress(host)
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(key, f"{text!r}: port must be a number from 1 to 65535")
    return AdvertisedAddress(host, int(port_text))


@functools.lru_cache(maxsize=4096)
def canonical_ip(text: str) -> str | None:
    """The normalised text of an IP address, or None.  An IPv4-mapped IPv6
    address (a dual-stack socket's view of an IPv4 peer) becomes the IPv4
    address, so that one peer has one spelling.  Cached: the call path asks
    it for the same few peers on every request (bounded)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _is_ipv4(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 4
    except ValueError:
        return False


def _show(value: object) -> str:
    return repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"


_DEFAULT_SIP_ADDRESS = parse_host_port(DEFAULT_SIP_LISTEN, "sip.listen")
_DEFAULT_HTTP_ADDRESS = parse_host_port(DEFAULT_HTTP_LISTEN, "http.listen")


@dataclass(frozen=True, slots=True, kw_only=True)
class SIPServerSettings:
    """The ``[sip]`` section: where to listen, the digest realm, the SIP
    core's timers and limits (:class:`sip.settings.SIPSettings`) and its
    overload control (:class:`sip.overload.OverloadSettings`)."""

    listen: tuple[HostPort, ...] = (_DEFAULT_SIP_ADDRESS,)
    # None: the first listener with a concrete host (see gateway.config.advertise).
    advertise: AdvertisedAddress | None = None
    realm: str = DEFAULT_REALM
    max_tcp_connections: int = MAX_TCP_CONNECTIONS
    core: SIPSettings = field(default_factory=SIPSettings)
    overload: OverloadSettings = field(default_factory=OverloadSettings)


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPSettings:
    """The ``[http]`` section: the management listener (health, later API)."""

    listen: HostPort = _DEFAULT_HTTP_ADDRESS


@dataclass(frozen=True, slots=True, kw_only=True)
class LogSettings:
    """The ``[log]`` section."""

    level: str = "info"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreSettings:
    """The ``[store]`` section: the database, the key that encrypts the
    retrievable SIP passwords, and how often a running gateway looks for
    changes made by another process (the CLI, another node)."""

    database: str = DEFAULT_DATABASE
    secret_key_file: Path = Path(DEFAULT_SECRET_KEY_FILE)
    directory_poll_interval: float = 1.0
    # Call records not yet written when the gateway stops (the database was
    # away) wait here and are written at the next start.
    record_spool: Path = Path(DEFAULT_RECORD_SPOOL)


class CarrierSource(NamedTuple):
    """An address trusted for inbound calls; ``port`` None trusts every port
    of ``host`` (a carrier's SBC may send from several).  ``host`` is the
    normalised IP address text."""

    host: str
    port: int | None = None

    def __str__(self) -> str:
        if self.port is None:
            return self.host
        return host_port(self.host, self.port)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class CarrierSettings:
    """The ``[carrier]`` section: where outbound calls go (``uri``, None when
    no carrier is configured: outbound calls are then refused) and whose
    requests are trusted as inbound calls (:meth:`trusts`,
    :meth:`trusts_exactly`; the call router asks them per request).

    Equality compares the URI by its text: :class:`sip.uri.URI` compares by
    identity, and two loads of one file must give equal settings.  What the
    call path asks is worked out once, here (the ``_`` fields): a request
    costs a set and a dict lookup, not an address parse.
    """

    uri: URI | None = None
    transport: str = "udp"
    #: (host, port) pairs; kept as :class:`CarrierSource`, whatever is given.
    sources: tuple[tuple[str, int | None], ...] = ()
    # Derived in __post_init__ from the fields above (no part of equality).
    _trusted: tuple[CarrierSource, ...] = field(init=False, repr=False, compare=False)
    _any_port: frozenset[str] = field(init=False, repr=False, compare=False)
    _ports: Mapping[str, frozenset[int]] = field(init=False, repr=False, compare=False)
    _next_hop: tuple[str, str, int] | None = field(init=False, repr=False, compare=False)
    _uri_address: tuple[str, int] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sources = tuple(CarrierSource(host, port) for host, port in self.sources)
        object.__setattr__(self, "sources", sources)
        trusted: tuple[CarrierSource, ...] = sources
        if not sources and self.uri is not None:
            # A host name is never trusted implicitly: what it resolves to
            # can change under us.
            address = canonical_ip(self.uri.host.strip("[]"))
            trusted = () if address is None else (CarrierSource(address),)
        object.__setattr__(self, "_trusted", trusted)
        any_port: set[str] = set()
        ports: dict[str, set[int]] = {}
        for host, port in trusted:
            key = _address_key(host)
            if port is None:
                any_port.add(key)
            else:
                ports.setdefault(key, set()).add(port)
        hop = uri_address = None
        if self.uri is not None:
            host = self.uri.host.strip("[]")
            port = self.uri.port_or_default
            hop = (self.transport.upper(), host, port)
            uri_address = (_address_key(host), port)
        object.__setattr__(self, "_any_port", frozenset(any_port))
        object.__setattr__(self, "_ports", {h: frozenset(p) for h, p in ports.items()})
        object.__setattr__(self, "_next_hop", hop)
        object.__setattr__(self, "_uri_address", uri_address)

    @property
    def trusted_sources(self) -> tuple[CarrierSource, ...]:
        """``sources``, or when it is empty the URI's host if that is an IP
        address (any port)."""
        return self._trusted

    def next_hop(self) -> tuple[str, str, int] | None:
        """Where outbound calls go: (transport in capitals, host, port), the
        port defaulting as RFC 3263 §4.2 does without DNS SRV; None without
        a carrier."""
        return self._next_hop

    def trusts(self, host: str, port: int) -> bool:
        """Whether a request from ``host``:``port`` comes from the carrier:
        a trusted source with that port, or with that host and no port
        (any port of it)."""
        if host in self._any_port:
            return True
        ports = self._ports.get(host)
        if ports is not None:
            return port in ports
        other = _other_spelling(host)
        return other is not None and self.trusts(other, port)

    def trusts_exactly(self, host: str, port: int) -> bool:
        """Whether ``host``:``port`` is one of the carrier's exact addresses:
        a source configured with that port, or the carrier URI's own
        address when its host is trusted (a carrier sends from the address
        it is reached at, as most SBCs do: symmetric signalling, RFC 3581)."""
        ports = self._ports.get(host)
        if ports is not None and port in ports:
            return True
        address = self._uri_address
        if address is not None and address[1] == port and address[0] == host:
            return self.trusts(host, port)
        other = _other_spelling(host)
        return other is not None and self.trusts_exactly(other, port)

    def _key(self) -> tuple[str, str, tuple[tuple[str, int | None], ...]]:
        return ("" if self.uri is None else str(self.uri), self.transport, self.sources)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CarrierSettings):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


def _address_key(host: str) -> str:
    """How an address is kept for :meth:`CarrierSettings.trusts`: an IP
    address's normalised text, anything else in lower case."""
    return canonical_ip(host) or host.lower()


def _other_spelling(host: str) -> str | None:
    """The normalised text of an IPv6 address written otherwise (capitals,
    a ``::ffff:`` IPv4-mapped address), else None.  Only IPv6 text has
    other spellings: an IPv4 address the ``ipaddress`` module accepts is
    already normalised, so the transports' IPv4 sources are never parsed."""
    if ":" not in host:
        return None
    address = canonical_ip(host)
    return None if address is None or address == host else address


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrarSettings:
    """The ``[registrar]`` section (RFC 3261 §10.3): the expiry interval a
    binding may ask for, the one it gets when it asks for none, and how many
    contacts one profile may register."""

    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    max_bindings: int = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class CallSettings:
    """The ``[calls]`` section."""

    max_call_duration: float = 14400.0
    # RFC 4028 §8.1: the shortest session interval we let peers agree on.
    min_session_expires: int = MIN_SE_FLOOR


ADMISSION_BACKENDS = ("memory", "redis")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# A crashed node's channels come back within the lease (issue 4: ≤ 90 s).
MAX_LEASE_SECONDS = 90.0
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionSettings:
    """The ``[admission]`` section: where channel counts live."""

    backend: str = "memory"
    redis_url: str = DEFAULT_REDIS_URL
    key_prefix: str = "sipgw:"
    lease_seconds: float = 60.0


#: How the connection to the mail server is protected: "none" (plain SMTP,
#: RFC 5321), "starttls" (upgraded after EHLO, RFC 3207; submission port
#: 587, RFC 6409) or "tls" (TLS from the first byte, RFC 8314 §3; port 465).
SMTP_SECURITY = ("none", "starttls", "tls")
DEFAULT_SMTP_FROM = "sipgw@localhost"
# A deliberately plain addr-spec (RFC 5322 §3.4.1): an ASCII dot-atom local
# part, "@", and a host name (no dot needed: "sipgw@localhost").  No display
# name, comments or quoted local parts: this goes into headers and the SMTP
# envelope (RFC 5321 §4.1.2) as it is.
_SMTP_FROM = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z"
)
_SMTP_KEYS = ("host", "port", "from_address", "security", "username", "password", "timeout")


@dataclass(frozen=True, slots=True, kw_only=True)
class SMTPSettings:
    """The ``[smtp]`` section: the mail server that e-mails new profiles'
    credentials to their account.  ``host`` empty (the default) means no
    e-mail is sent.  ``username`` and ``password`` are both set (log in,
    RFC 4954) or both empty (no login); logging in needs ``security``
    "starttls" or "tls", so that the password never crosses the network in
    clear.  ``timeout`` bounds one whole send, in seconds."""

    host: str = ""
    port: int = 25
    from_address: str = DEFAULT_SMTP_FROM
    security: str = "none"
    username: str = ""
    password: str = field(default="", repr=False)
    timeout: float = 10.0


def _smtp_section(data: Mapping[str, Any]) -> SMTPSettings:
    section = _section(data, "smtp", _SMTP_KEYS)
    host = section.get("host", "")
    if not isinstance(host, str) or (
        host and canonical_ip(host) is None and not _HOSTNAME.match(host)
    ):
        raise ConfigError(
            "smtp.host",
            "must be an IP address or host name (the port goes in smtp.port),"
            f" or empty for no e-mail, got {_show(host)}",
        )
    port = section.get("port", 25)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError("smtp.port", f"must be a number from 1 to 65535, got {_show(port)}")
    sender = section.get("from_address", DEFAULT_SMTP_FROM)
    if not isinstance(sender, str) or len(sender) > 254 or not _SMTP_FROM.match(sender):
        raise ConfigError(
            "smtp.from_address",
            f"must be an e-mail address like sipgw@example.net, got {_show(sender)}",
        )
    security = section.get("security", "none")
    if security not in SMTP_SECURITY:
        choices = ", ".join(SMTP_SECURITY)
        raise ConfigError("smtp.security", f"must be one of {choices}, got {_show(security)}")
    credentials: dict[str, str] = {}
    for name in ("username", "password"):
        value = section.get(name, "")
        # Control characters would corrupt the AUTH exchange (RFC 4616 §2).
        if not isinstance(value, str) or not value.isprintable():
            raise ConfigError(f"smtp.{name}", "must be a string of printable characters")
        credentials[name] = value
    username, password = credentials["username"], credentials["password"]
    if bool(username) != bool(password):
        missing, given = ("password", "username") if username else ("username", "password")
        raise ConfigError(f"smtp.{missing}", f"must be set when smtp.{given} is (both or neither)")
    if username and security == "none":
        raise ConfigError(
            "smtp.security",
            'must be "starttls" or "tls" when logging in (smtp.username): the password'
            " would cross the network in clear",
        )
    return SMTPSettings(
        host=host,
        port=port,
        from_address=sender,
        security=security,
        username=username,
        password=password,
        timeout=_seconds(section, "timeout", 10.0, "smtp"),
    )


def _admission_section(data: Mapping[str, Any]) -> AdmissionSettings:
    keys = ("backend", "redis_url", "key_prefix", "lease_seconds")
    section = _section(data, "admission", keys)
    backend = section.get("backend", "memory")
    if backend not in ADMISSION_BACKENDS:
        choices = ", ".join(ADMISSION_BACKENDS)
        raise ConfigError("admission.backend", f"must be one of {choices}, got {_show(backend)}")
    redis_url = section.get("redis_url", DEFAULT_REDIS_URL)
    if not isinstance(redis_url, str) or not redis_url.startswith(_REDIS_SCHEMES):
        problem = f"must be a redis://, rediss:// or unix:// URL, got {_show(redis_url)}"
        raise ConfigError("admission.redis_url", problem)
    prefix = section.get("key_prefix", "sipgw:")
    if not isinstance(prefix, str) or not prefix or not prefix.isprintable() or " " in prefix:
        raise ConfigError(
            "admission.key_prefix", f"must be printable, without spaces, got {_show(prefix)}"
        )
    lease = _seconds(section, "lease_seconds", 60.0, "admission")
    if lease > MAX_LEASE_SECONDS:
        raise ConfigError("admission.lease_seconds", f"must be at most {MAX_LEASE_SECONDS:g}")
    return AdmissionSettings(
        backend=backend, redis_url=redis_url, key_prefix=prefix, lease_seconds=lease
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewaySettings:
    """Everything the gateway is configured with."""

    sip: SIPServerSettings = field(default_factory=SIPServerSettings)
    http: HTTPSettings = field(default_factory=HTTPSettings)
    log: LogSettings = field(default_factory=LogSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    carrier: CarrierSettings = field(default_factory=CarrierSettings)
    registrar: RegistrarSettings = field(default_factory=RegistrarSettings)
    calls: CallSettings = field(default_factory=CallSettings)
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    smtp: SMTPSettings = field(default_factory=SMTPSettings)

    def with_overrides(
        self,
        *,
        sip_listen: Iterable[HostPort] | None = None,
        sip_advertise: str | None = None,
        http_listen: HostPort | None = None,
        log_level: str | None = None,
        database: str | None = None,
        carrier: str | None = None,
    ) -> GatewaySettings:
        """A copy with command-line overrides applied (they win over the file).

        ``carrier`` is a ``sip:`` URI (``""`` for none); a ``;transport=``
        parameter in it replaces ``carrier.transport``, and the configured
        ``sources`` stay.  ``sip_advertise`` is ``HOST[:PORT]`` (``""`` for
        none).
        """
        sip, http, log = self.sip, self.http, self.log
        store, carrier_settings = self.store, self.carrier
        if sip_listen is not None:
            sip = dataclasses.replace(sip, listen=_unique_listen(tuple(sip_listen), "--sip-listen"))
        if sip_advertise is not None:
            sip = dataclasses.replace(
                sip, advertise=parse_advertise(sip_advertise, "--sip-advertise")
            )
        if http_listen is not None:
            http = dataclasses.replace(http, listen=http_listen)
        if log_level is not None:
            log = dataclasses.replace(log, level=_log_level(log_level, "--log-level"))
        if database is not None:
            store = dataclasses.replace(store, database=parse_database_url(database, "--database"))
        if carrier is not None:
            uri = parse_carrier_uri(carrier, "--carrier")
            transport = carrier_settings.transport
            if uri is not None and uri.param("transport") is not None:
                transport = _transport(uri.param("transport"), "--carrier")
            carrier_settings = CarrierSettings(
                uri=uri, transport=transport, sources=carrier_settings.sources
            )
        return dataclasses.replace(
            self, sip=sip, http=http, log=log, store=store, carrier=carrier_settings
        )


# ---------------------------------------------------------------------------
# Reading values


def _section(data: Mapping[str, Any], name: str, known: Iterable[str]) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(name, "must be a table ([" + name + "])")
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}", f"unknown key (known: {', '.join(known)})")
    return value


def _seconds(section: Mapping[str, Any], name: str, default: float, prefix: str) -> float:
    key = f"{prefix}.{name}"
    value = section.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"must be a number of seconds, got {_show(value)}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(key, f"must be a positive number of seconds, got {value}")
    return float(value)


def _count(section: Mapping[str, Any], name: str, default: int, prefix: str) -> int:
    key = f"{prefix}.{name}"
    value = section.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer, got {_show(value)}")
    if value <= 0:
        raise ConfigError(key, f"must be positive, got {value}")
    return value


def _unique_listen(addresses: tuple[HostPort, ...], key: str) -> tuple[HostPort, ...]:
    if not addresses:
        raise ConfigError(key, "needs at least one address")
    seen: set[HostPort] = set()
    for address in addresses:
        if address in seen and address.port != 0:
            raise ConfigError(key, f"{address} is listed twice")
        seen.add(address)
    return addresses


def _log_level(value: object, key: str) -> str:
    if not isinstance(value, str) or value.lower() not in LOG_LEVELS:
        raise ConfigError(key, f"must be one of {', '.join(LOG_LEVELS)}, got {_show(value)}")
    return value.lower()


_SIP_KEYS = (
    "listen",
    "advertise",
    "realm",
    "t1",
    "t2",
    "t4",
    "timer_c",
    "tcp_idle_timeout",
    "max_message_size",
    "max_headers",
    "max_line_length",
    "max_tcp_connections",
    "overload_control",
    "overload_target",
    "overload_retry_after",
)


def _flag(section: Mapping[str, Any], name: str, default: bool, prefix: str) -> bool:
    value = section.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{prefix}.{name}", f"must be true or false, got {_show(value)}")
    return value


def _fraction(section: Mapping[str, Any], name: str, default: float, prefix: str) -> float:
    key = f"{prefix}.{name}"
    value = section.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"must be a number, got {_show(value)}")
    if not 0 < value <= 1:
        raise ConfigError(key, f"must be more than 0 and at most 1, got {value}")
    return float(value)


def _sip_section(data: Mapping[str, Any]) -> SIPServerSettings:
    section = _section(data, "sip", _SIP_KEYS)
    raw_listen = section.get("listen", [DEFAULT_SIP_LISTEN])
    if not isinstance(raw_listen, list):
        raise ConfigError("sip.listen", f"must be a list of strings, got {_show(raw_listen)}")
    listen = _unique_listen(
        tuple(parse_host_port(item, f"sip.listen[{i}]") for i, item in enumerate(raw_listen)),
        "sip.listen",
    )
    realm = section.get("realm", DEFAULT_REALM)
    if (
        not isinstance(realm, str)
        or not _REALM.match(realm)
        or _REALM_FORBIDDEN.intersection(realm)
        or realm != realm.strip()
    ):
        raise ConfigError(
            "sip.realm",
            "must be 1-128 printable ASCII characters without quotes, backslashes "
            f"or surrounding spaces, got {_show(realm)}",
        )
    d = _CORE_DEFAULTS
    t1 = _seconds(section, "t1", d.t1, "sip")
    t2 = _seconds(section, "t2", d.t2, "sip")
    if t2 < t1:
        raise ConfigError("sip.t2", f"must not be smaller than sip.t1 ({t1}), got {t2}")
    core = SIPSettings(
        t1=t1,
        t2=t2,
        t4=_seconds(section, "t4", d.t4, "sip"),
        timer_c=_seconds(section, "timer_c", d.timer_c, "sip"),
        tcp_idle_timeout=_seconds(section, "tcp_idle_timeout", d.tcp_idle_timeout, "sip"),
        max_message_size=_count(section, "max_message_size", d.max_message_size, "sip"),
        max_headers=_count(section, "max_headers", d.max_headers, "sip"),
        max_line_length=_count(section, "max_line_length", d.max_line_length, "sip"),
    )
    return SIPServerSettings(
        listen=listen,
        advertise=parse_advertise(section.get("advertise", ""), "sip.advertise"),
        realm=realm,
        max_tcp_connections=_count(section, "max_tcp_connections", MAX_TCP_CONNECTIONS, "sip"),
        core=core,
        overload=OverloadSettings(
            enabled=_flag(section, "overload_control", _OVERLOAD_DEFAULTS.enabled, "sip"),
            target=_fraction(section, "overload_target", _OVERLOAD_DEFAULTS.target, "sip"),
            retry_after=_count(
                section, "overload_retry_after", _OVERLOAD_DEFAULTS.retry_after, "sip"
            ),
        ),
    )


def parse_database_url(text: object, key: str) -> str:
    """A database URL the async store can open: ``sqlite+aiosqlite:///PATH``
    (a relative PATH is relative to the working directory; four slashes for
    an absolute one) or ``postgresql+asyncpg://USER@HOST:PORT/DB``."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(key, f"must be a database URL like {DEFAULT_DATABASE}, got {_show(text)}")
    value = text.strip()
    try:
        url = make_url(value)
    except (ArgumentError, ValueError):
        raise ConfigError(key, f"not a database URL: {value!r}") from None
    if url.drivername not in DATABASE_DRIVERS:
        raise ConfigError(
            key, f"unsupported driver {url.drivername!r} (use {' or '.join(DATABASE_DRIVERS)})"
        )
    database = url.database or ""
    if url.drivername.startswith("sqlite") and database in ("", ":memory:"):
        # The gateway and the CLI are separate processes: they must share a file.
        raise ConfigError(
            key, "SQLite needs a file path, e.g. sqlite+aiosqlite:///var/sipgw.sqlite3"
        )
    if url.drivername.startswith("postgresql") and not database:
        raise ConfigError(key, "PostgreSQL needs a database name, e.g. .../sipgw")
    return value


def parse_carrier_uri(text: object, key: str) -> URI | None:
    """The carrier's ``sip:`` URI (RFC 3261 §19.1), or None for ``""``.

    It must name a host; a port, if given, is 1-65535; ``;transport=`` may
    be udp or tcp.  ``sips:`` is refused until TLS arrives, and URI headers
    (``?...``) make no sense for a next hop.
    """
    if not isinstance(text, str):
        raise ConfigError(
            key, f"must be a SIP URI like sip:carrier.example.net:5060, got {_show(text)}"
        )
    value = text.strip()
    if not value:
        return None
    try:
        uri = parse_uri(value)
    except ParseError as exc:
        raise ConfigError(key, f"{value!r} is not a SIP URI ({exc.reason})") from None
    if uri.scheme == "sips":
        raise ConfigError(key, f"{value!r}: sips: (TLS) is not supported yet, use sip:")
    if uri.scheme != "sip":
        raise ConfigError(key, f"{value!r}: must be a sip: URI like sip:carrier.example.net:5060")
    if uri.headers:
        raise ConfigError(key, f"{value!r}: a carrier URI carries no headers")
    if uri.port == 0:
        raise ConfigError(key, f"{value!r}: port must be a number from 1 to 65535")
    transport = uri.param("transport")
    if transport is not None:
        _transport(transport, key)
    return uri


def _transport(value: object, key: str) -> str:
    if not isinstance(value, str) or value.lower() not in CARRIER_TRANSPORTS:
        raise ConfigError(
            key, f"transport must be one of {', '.join(CARRIER_TRANSPORTS)}, got {_show(value)}"
        )
    return value.lower()


def _carrier_source(text: object, key: str) -> CarrierSource:
    """``"IP"`` (every port) or ``"IP:PORT"`` / ``"[IPv6]:PORT"``."""
    hint = 'expected "IP" or "IP:PORT" (IPv6 as "::1" or "[::1]:5060")'
    if not isinstance(text, str):
        raise ConfigError(key, f"must be a string, {hint}, got {_show(text)}")
    value = text.strip()
    address = canonical_ip(value)
    if address is not None:
        return CarrierSource(address)
    if value.startswith("["):
        close = value.find("]")
        host, sep, port_text = value[1:close], value[close + 1 : close + 2], value[close + 2 :]
        if close < 0 or sep != ":" or ":" not in host:
            raise ConfigError(key, f"{text!r}: {hint}")
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or ":" in host:
            raise ConfigError(key, f"{text!r}: {hint}")
    address = canonical_ip(host)
    if address is None:
        raise ConfigError(key, f"{text!r}: {host!r} is not an IP address (sources are addresses)")
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(key, f"{text!r}: port must be a number from 1 to 65535")
    return CarrierSource(address, int(port_text))


def _store_section(data: Mapping[str, Any]) -> StoreSettings:
    section = _section(
        data,
        "store",
        ("database", "secret_key_file", "directory_poll_interval", "record_spool"),
    )
    spool = section.get("record_spool", DEFAULT_RECORD_SPOOL)
    if not isinstance(spool, str) or not spool.strip():
        raise ConfigError("store.record_spool", f"must be a file path, got {_show(spool)}")
    key_file = section.get("secret_key_file", DEFAULT_SECRET_KEY_FILE)
    if not isinstance(key_file, str) or not key_file.strip() or "\0" in key_file:
        raise ConfigError("store.secret_key_file", f"must be a file path, got {_show(key_file)}")
    return StoreSettings(
        database=parse_database_url(section.get("database", DEFAULT_DATABASE), "store.database"),
        secret_key_file=Path(key_file),
        record_spool=Path(spool),
        directory_poll_interval=_seconds(section, "directory_poll_interval", 1.0, "store"),
    )


def _carrier_section(data: Mapping[str, Any]) -> CarrierSettings:
    section = _section(data, "carrier", ("uri", "transport", "sources"))
    uri = parse_carrier_uri(section.get("uri", ""), "carrier.uri")
    transport = _transport(section.get("transport", "udp"), "carrier.transport")
    uri_transport = None if uri is None else uri.param("transport")
    if uri_transport is not None and uri_transport.lower() != transport:
        if "transport" in section:
            raise ConfigError(
                "carrier.transport",
                f"{transport!r} contradicts ;transport={uri_transport} in carrier.uri",
            )
        transport = uri_transport.lower()
    raw = section.get("sources", [])
    if not isinstance(raw, list):
        raise ConfigError("carrier.sources", f"must be a list of strings, got {_show(raw)}")
    if len(raw) > MAX_CARRIER_SOURCES:
        raise ConfigError("carrier.sources", f"at most {MAX_CARRIER_SOURCES} addresses")
    sources = tuple(_carrier_source(item, f"carrier.sources[{i}]") for i, item in enumerate(raw))
    if len(set(sources)) != len(sources):
        raise ConfigError("carrier.sources", "an address is listed twice")
    return CarrierSettings(uri=uri, transport=transport, sources=sources)


def _registrar_section(data: Mapping[str, Any]) -> RegistrarSettings:
    known = ("min_expires", "max_expires", "default_expires", "max_bindings")
    section = _section(data, "registrar", known)
    d = RegistrarSettings()
    values = {name: _count(section, name, getattr(d, name), "registrar") for name in known}
    for name in ("min_expires", "max_expires", "default_expires"):
        if values[name] > MAX_DELTA_SECONDS:  # RFC 3261 §25.1 delta-seconds
            raise ConfigError(f"registrar.{name}", f"must be at most {MAX_DELTA_SECONDS} seconds")
    if values["max_expires"] < values["min_expires"]:
        raise ConfigError(
            "registrar.max_expires",
            f"must not be smaller than registrar.min_expires ({values['min_expires']})",
        )
    if not values["min_expires"] <= values["default_expires"] <= values["max_expires"]:
        raise ConfigError(
            "registrar.default_expires",
            f"must be between registrar.min_expires ({values['min_expires']}) "
            f"and registrar.max_expires ({values['max_expires']}), got {values['default_expires']}",
        )
    if values["max_bindings"] > MAX_BINDINGS_CEILING:
        raise ConfigError("registrar.max_bindings", f"must be at most {MAX_BINDINGS_CEILING}")
    return RegistrarSettings(**values)


def settings_from_mapping(data: Mapping[str, Any]) -> GatewaySettings:
    """Settings from a parsed TOML document (or any mapping of the same shape)."""
    known = ("sip", "http", "log", "store", "carrier", "registrar", "calls", "admission", "smtp")
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(unknown[0], f"unknown section (known: {', '.join(known)})")
    sip = _sip_section(data)
    http_section = _section(data, "http", ("listen",))
    http = HTTPSettings(
        listen=parse_host_port(http_section.get("listen", DEFAULT_HTTP_LISTEN), "http.listen")
    )
    log_section = _section(data, "log", ("level",))
    log = LogSettings(level=_log_level(log_section.get("level", "info"), "log.level"))
    calls_section = _section(data, "calls", ("max_call_duration", "min_session_expires"))
    calls = CallSettings(
        max_call_duration=_seconds(calls_section, "max_call_duration", 14400.0, "calls"),
        min_session_expires=_count(calls_section, "min_session_expires", MIN_SE_FLOOR, "calls"),
    )
    return GatewaySettings(
        sip=sip,
        http=http,
        log=log,
        store=_store_section(data),
        carrier=_carrier_section(data),
        registrar=_registrar_section(data),
        calls=calls,
        admission=_admission_section(data),
        smtp=_smtp_section(data),
    )


def load_settings(path: Path | str) -> GatewaySettings:
    """Read a TOML file; every problem is a :class:`ConfigError` naming the file."""
    origin = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError("", f"cannot read: {exc.strerror or exc}", origin=origin) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"not valid TOML: {exc}", origin=origin) from None
    try:
        return settings_from_mapping(data)
    except ConfigError as exc:
        raise exc.located(origin) from None
