"""Gateway settings: typed, frozen, loaded from TOML (``config/gateway.toml``).

One object built at start-up and injected everywhere (DESIGN.md: no
module-level mutable state).  Every value is checked here, so that a typo in
the file is a one-line :class:`ConfigError` naming the key, not a traceback
from deep inside the SIP stack.  Unknown keys are errors too: a misspelt
``tcp_idle_timout`` silently ignored would be worse than a refusal to start.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sip.settings import SIPSettings
from sip.transport import MAX_TCP_CONNECTIONS

__all__ = [
    "DEFAULT_HTTP_LISTEN",
    "DEFAULT_SIP_LISTEN",
    "LOG_LEVELS",
    "ConfigError",
    "GatewaySettings",
    "HTTPSettings",
    "HostPort",
    "LogSettings",
    "SIPServerSettings",
    "load_settings",
    "parse_host_port",
    "settings_from_mapping",
]

DEFAULT_SIP_LISTEN = "0.0.0.0:5060"
DEFAULT_HTTP_LISTEN = "127.0.0.1:8080"
DEFAULT_REALM = "sipgw"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

_CORE_DEFAULTS = SIPSettings()
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?\Z"
)
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
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(text: object, key: str) -> HostPort:
    """``host:port``, ``[v6]:port``; port 0 asks for any free port.

    The host is an IPv4 address, a bracketed IPv6 address or a host name.
    """
    if not isinstance(text, str):
        raise ConfigError(key, f"must be a string like 127.0.0.1:5060, got {_show(text)}")
    hint = "expected HOST:PORT (IPv6 in brackets, e.g. [::1]:5060)"
    value = text.strip()
    if value.startswith("["):
        close = value.find("]")
        if close < 0 or value[close + 1 : close + 2] != ":":
            raise ConfigError(key, f"{text!r}: {hint}")
        host, port_text = value[1:close], value[close + 2 :]
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError(host)
        except ValueError:
            raise ConfigError(key, f"{text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise ConfigError(key, f"{text!r}: {hint}")
        if ":" in host:
            raise ConfigError(key, f"{text!r}: put an IPv6 address in brackets, e.g. [::1]:5060")
        if not _is_ipv4(host) and not _HOSTNAME.match(host):
            raise ConfigError(key, f"{text!r}: {host!r} is not an IP address or host name")
    if not port_text.isdigit() or not port_text.isascii() or int(port_text) > 65535:
        raise ConfigError(key, f"{text!r}: port must be a number from 0 to 65535")
    return HostPort(host, int(port_text))


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
    """The ``[sip]`` section: where to listen, the digest realm, and the
    SIP core's timers and limits (:class:`sip.settings.SIPSettings`)."""

    listen: tuple[HostPort, ...] = (_DEFAULT_SIP_ADDRESS,)
    realm: str = DEFAULT_REALM
    max_tcp_connections: int = MAX_TCP_CONNECTIONS
    core: SIPSettings = field(default_factory=SIPSettings)


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPSettings:
    """The ``[http]`` section: the management listener (health, later API)."""

    listen: HostPort = _DEFAULT_HTTP_ADDRESS


@dataclass(frozen=True, slots=True, kw_only=True)
class LogSettings:
    """The ``[log]`` section."""

    level: str = "info"


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewaySettings:
    """Everything the gateway is configured with."""

    sip: SIPServerSettings = field(default_factory=SIPServerSettings)
    http: HTTPSettings = field(default_factory=HTTPSettings)
    log: LogSettings = field(default_factory=LogSettings)

    def with_overrides(
        self,
        *,
        sip_listen: Iterable[HostPort] | None = None,
        http_listen: HostPort | None = None,
        log_level: str | None = None,
    ) -> GatewaySettings:
        """A copy with command-line overrides applied (they win over the file)."""
        sip, http, log = self.sip, self.http, self.log
        if sip_listen is not None:
            sip = dataclasses.replace(sip, listen=_unique_listen(tuple(sip_listen), "--sip-listen"))
        if http_listen is not None:
            http = dataclasses.replace(http, listen=http_listen)
        if log_level is not None:
            log = dataclasses.replace(log, level=_log_level(log_level, "--log-level"))
        return GatewaySettings(sip=sip, http=http, log=log)


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
)


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
        realm=realm,
        max_tcp_connections=_count(section, "max_tcp_connections", MAX_TCP_CONNECTIONS, "sip"),
        core=core,
    )


def settings_from_mapping(data: Mapping[str, Any]) -> GatewaySettings:
    """Settings from a parsed TOML document (or any mapping of the same shape)."""
    unknown = sorted(set(data) - {"sip", "http", "log"})
    if unknown:
        raise ConfigError(unknown[0], "unknown section (known: sip, http, log)")
    sip = _sip_section(data)
    http_section = _section(data, "http", ("listen",))
    http = HTTPSettings(
        listen=parse_host_port(http_section.get("listen", DEFAULT_HTTP_LISTEN), "http.listen")
    )
    log_section = _section(data, "log", ("level",))
    log = LogSettings(level=_log_level(log_section.get("level", "info"), "log.level"))
    return GatewaySettings(sip=sip, http=http, log=log)


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
