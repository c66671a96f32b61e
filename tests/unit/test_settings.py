"""Gateway settings: TOML loading, defaults, overrides and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.advertise import advertised_address, gateway_addresses, needs_advertise
from gateway.config.settings import (
    AdvertisedAddress,
    CallSettings,
    CarrierSettings,
    CarrierSource,
    ConfigError,
    GatewaySettings,
    HostPort,
    RegistrarSettings,
    SIPServerSettings,
    SMTPSettings,
    StoreSettings,
    load_settings,
    parse_advertise,
    parse_host_port,
    settings_from_mapping,
)
from sip.overload import OverloadSettings
from sip.settings import SIPSettings
from sip.transport import MAX_TCP_CONNECTIONS
from sip.uri import parse_uri

REPO_ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    settings = GatewaySettings()
    assert settings.sip.listen == (HostPort("0.0.0.0", 5060),)
    assert settings.sip.advertise is None
    assert settings.http.listen == HostPort("127.0.0.1", 8080)
    assert settings.sip.realm == "sipgw"
    assert settings.sip.core == SIPSettings()
    assert settings.sip.max_tcp_connections == MAX_TCP_CONNECTIONS
    assert settings.sip.overload == OverloadSettings()
    assert settings.log.level == "info"
    assert settings.store == StoreSettings(
        database="sqlite+aiosqlite:///var/sipgw.sqlite3",
        secret_key_file=Path("var/secret.key"),
        directory_poll_interval=1.0,
    )
    assert settings.carrier.uri is None
    assert settings.carrier.transport == "udp"
    assert settings.carrier.sources == ()
    assert settings.carrier.trusted_sources == ()
    assert settings.registrar == RegistrarSettings(
        min_expires=60, max_expires=3600, default_expires=3600, max_bindings=10
    )
    assert settings.calls == CallSettings(max_call_duration=14400.0)
    assert settings.smtp == SMTPSettings(
        host="",
        port=25,
        from_address="sipgw@localhost",
        security="none",
        username="",
        password="",
        timeout=10.0,
    )


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "")) == GatewaySettings()


def test_shipped_config_states_the_defaults() -> None:
    """config/gateway.toml documents every key with its built-in default."""
    assert load_settings(REPO_ROOT / "config" / "gateway.toml") == GatewaySettings()


def test_shipped_config_names_every_key() -> None:
    import tomllib

    data = tomllib.loads((REPO_ROOT / "config" / "gateway.toml").read_text())
    assert set(data["sip"]) == {
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
        "overload_control",
        "overload_target",
        "overload_retry_after",
    }
    assert set(data["http"]) == {"listen"}
    assert set(data["log"]) == {"level"}
    assert set(data["store"]) == {
        "database",
        "secret_key_file",
        "directory_poll_interval",
        "record_spool",
    }
    assert set(data["carrier"]) == {"uri", "transport", "sources"}
    assert set(data["registrar"]) == {
        "min_expires",
        "max_expires",
        "default_expires",
        "max_bindings",
    }
    assert set(data["calls"]) == {"max_call_duration", "min_session_expires"}
    assert set(data["smtp"]) == {
        "host",
        "port",
        "from_address",
        "security",
        "username",
        "password",
        "timeout",
    }


def test_full_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[sip]
listen = ["127.0.0.1:5070", "[::1]:5071", "sip.example.net:0"]
advertise = "gw.example.net:5080"
realm = "pbx.example.net"
t1 = 1
t2 = 8.5
t4 = 6
timer_c = 200
tcp_idle_timeout = 30
max_message_size = 4096
max_headers = 64
max_line_length = 1024
max_tcp_connections = 10
overload_control = false
overload_target = 0.75
overload_retry_after = 12

[http]
listen = "[::1]:9090"

[log]
level = "DEBUG"
""",
    )
    settings = load_settings(path)
    assert settings.sip.listen == (
        HostPort("127.0.0.1", 5070),
        HostPort("::1", 5071),
        HostPort("sip.example.net", 0),
    )
    assert settings.sip.advertise == AdvertisedAddress("gw.example.net", 5080)
    assert settings.sip.realm == "pbx.example.net"
    core = settings.sip.core
    assert (core.t1, core.t2, core.t4, core.timer_c, core.tcp_idle_timeout) == (
        1.0,
        8.5,
        6.0,
        200.0,
        30.0,
    )
    assert (core.max_message_size, core.max_headers, core.max_line_length) == (4096, 64, 1024)
    assert core.timer_b == 64.0  # derived timers follow T1
    assert settings.sip.max_tcp_connections == 10
    overload = settings.sip.overload
    assert (overload.enabled, overload.target, overload.retry_after) == (False, 0.75, 12)
    assert settings.http.listen == HostPort("::1", 9090)
    assert settings.log.level == "debug"


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[sip]\nlisten = ["127.0.0.1:5070"]\nt1 = 1\n'))
    changed = settings.with_overrides(
        sip_listen=[HostPort("127.0.0.2", 5080), HostPort("::1", 5081)],
        http_listen=HostPort("127.0.0.2", 8081),
        log_level="WARNING",
    )
    assert changed.sip.listen == (HostPort("127.0.0.2", 5080), HostPort("::1", 5081))
    assert changed.http.listen == HostPort("127.0.0.2", 8081)
    assert changed.log.level == "warning"
    assert changed.sip.core.t1 == 1.0  # the rest of the file stays
    assert settings.with_overrides() == settings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5060", HostPort("127.0.0.1", 5060)),
        ("0.0.0.0:0", HostPort("0.0.0.0", 0)),
        ("[::1]:5060", HostPort("::1", 5060)),
        ("[::]:5061", HostPort("::", 5061)),
        ("[2001:db8::1]:65535", HostPort("2001:db8::1", 65535)),
        ("localhost:5060", HostPort("localhost", 5060)),
        ("sip.example.net:5060", HostPort("sip.example.net", 5060)),
    ],
)
def test_host_port(text: str, expected: HostPort) -> None:
    parsed = parse_host_port(text, "k")
    assert parsed == expected
    assert parse_host_port(str(parsed), "k") == parsed  # str() round-trips


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("127.0.0.1", "expected HOST:PORT"),
        ("127.0.0.1:", "port must be a number"),
        ("127.0.0.1:65536", "port must be a number"),
        ("127.0.0.1:-1", "port must be a number"),
        ("127.0.0.1:50x", "port must be a number"),
        (":5060", "expected HOST:PORT"),
        ("::1:5060", "put an IPv6 address in brackets"),
        ("[::1]5060", "expected HOST:PORT"),
        ("[::1", "expected HOST:PORT"),
        ("[127.0.0.1]:5060", "is not an IPv6 address"),
        ("bad host:5060", "is not an IP address or host name"),
        ("-x.example:5060", "is not an IP address or host name"),
    ],
)
def test_bad_host_port(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_host_port(text, "sip.listen[0]")
    assert info.value.key == "sip.listen[0]"
    assert problem in str(info.value)


@pytest.mark.parametrize(
    ("toml", "key", "problem"),
    [
        ('[sip]\nlisten = "127.0.0.1:5060"\n', "sip.listen", "must be a list"),
        ("[sip]\nlisten = []\n", "sip.listen", "at least one address"),
        ('[sip]\nlisten = ["1.2.3.4:1", "1.2.3.4:1"]\n', "sip.listen", "listed twice"),
        ('[sip]\nlisten = ["127.0.0.1:5060", 5061]\n', "sip.listen[1]", "must be a string"),
        ('[sip]\nlisten = ["127.0.0.1:99999"]\n', "sip.listen[0]", "port must be"),
        ('[sip]\nadvertise = "0.0.0.0"\n', "sip.advertise", "'0.0.0.0' is a wildcard"),
        ('[sip]\nadvertise = "[::]:5060"\n', "sip.advertise", "is a wildcard"),
        ('[sip]\nadvertise = "[0:0::0]"\n', "sip.advertise", "is a wildcard"),
        ('[sip]\nadvertise = "192.0.2.300"\n', "sip.advertise", "not an IP address or host"),
        ('[sip]\nadvertise = "gw_1.example.net"\n', "sip.advertise", "not an IP address or"),
        ('[sip]\nadvertise = "gw.example.net:0"\n', "sip.advertise", "from 1 to 65535"),
        ('[sip]\nadvertise = "gw.example.net:65536"\n', "sip.advertise", "from 1 to 65535"),
        ('[sip]\nadvertise = "192.0.2.1:"\n', "sip.advertise", "from 1 to 65535"),
        ('[sip]\nadvertise = "2001:db8::1"\n', "sip.advertise", "in brackets"),
        ('[sip]\nadvertise = "[2001:db8::1]5060"\n', "sip.advertise", "HOST or HOST:PORT"),
        ('[sip]\nadvertise = "[192.0.2.1]"\n', "sip.advertise", "not an IPv6 address"),
        ('[sip]\nadvertise = "[fe80::1%eth0]"\n', "sip.advertise", "IPv6 zone"),
        ('[sip]\nadvertise = ["192.0.2.1"]\n', "sip.advertise", "must be a string"),
        ("[sip]\nt1 = -1\n", "sip.t1", "positive"),
        ("[sip]\nt1 = 0\n", "sip.t1", "positive"),
        ('[sip]\nt1 = "fast"\n', "sip.t1", "number of seconds"),
        ("[sip]\nt1 = true\n", "sip.t1", "number of seconds"),
        ("[sip]\nt1 = nan\n", "sip.t1", "positive"),
        ("[sip]\nt1 = 5\nt2 = 4\n", "sip.t2", "smaller than sip.t1"),
        ("[sip]\nmax_headers = 1.5\n", "sip.max_headers", "integer"),
        ("[sip]\nmax_message_size = 0\n", "sip.max_message_size", "positive"),
        ("[sip]\nmax_tcp_connections = -3\n", "sip.max_tcp_connections", "positive"),
        ("[sip]\noverload_target = 0\n", "sip.overload_target", "more than 0"),
        ("[sip]\noverload_target = 1.5\n", "sip.overload_target", "at most 1"),
        ('[sip]\noverload_target = "high"\n', "sip.overload_target", "a number"),
        ("[sip]\noverload_retry_after = 0\n", "sip.overload_retry_after", "positive"),
        ('[sip]\noverload_control = "yes"\n', "sip.overload_control", "true or false"),
        ('[sip]\nrealm = ""\n', "sip.realm", "printable ASCII"),
        ('[sip]\nrealm = "a\\"b"\n', "sip.realm", "quotes"),
        ("[sip]\nrealm = 5\n", "sip.realm", "printable ASCII"),
        ("[sip]\ntcp_idle_timout = 5\n", "sip.tcp_idle_timout", "unknown key"),
        ("[http]\nlisten = 8080\n", "http.listen", "must be a string"),
        ('[http]\nport = "x"\n', "http.port", "unknown key"),
        ('[log]\nlevel = "loud"\n', "log.level", "must be one of"),
        ("sip = 1\n", "sip", "must be a table"),
        ("[database]\nurl = 'x'\n", "database", "unknown section"),
        ('[store]\ndatabase = "mysql://x/y"\n', "store.database", "unsupported driver"),
        ('[store]\ndatabase = "sqlite:///x.db"\n', "store.database", "unsupported driver"),
        ('[store]\ndatabase = "not a url"\n', "store.database", "not a database URL"),
        ('[store]\ndatabase = "sqlite+aiosqlite://"\n', "store.database", "file path"),
        (
            '[store]\ndatabase = "sqlite+aiosqlite:///:memory:"\n',
            "store.database",
            "file path",
        ),
        (
            '[store]\ndatabase = "postgresql+asyncpg://h"\n',
            "store.database",
            "database name",
        ),
        ("[store]\ndatabase = 5\n", "store.database", "database URL"),
        ('[store]\nsecret_key_file = ""\n', "store.secret_key_file", "file path"),
        ("[store]\ndirectory_poll_interval = 0\n", "store.directory_poll_interval", "positive"),
        ('[store]\nurl = "x"\n', "store.url", "unknown key"),
        ('[carrier]\nuri = "carrier.example.net"\n', "carrier.uri", "not a SIP URI"),
        ('[carrier]\nuri = "carrier.example.net:5060"\n', "carrier.uri", "must be a sip: URI"),
        ('[carrier]\nuri = "sips:carrier.example.net"\n', "carrier.uri", "TLS"),
        ('[carrier]\nuri = "tel:+441134960000"\n', "carrier.uri", "sip: URI"),
        ('[carrier]\nuri = "sip:c.example.net:0"\n', "carrier.uri", "port"),
        ('[carrier]\nuri = "sip:c.example.net?subject=x"\n', "carrier.uri", "no headers"),
        ('[carrier]\nuri = "sip:c.example.net;transport=sctp"\n', "carrier.uri", "transport"),
        ("[carrier]\nuri = 5\n", "carrier.uri", "SIP URI"),
        ('[carrier]\ntransport = "tls"\n', "carrier.transport", "udp, tcp"),
        (
            '[carrier]\nuri = "sip:c.example.net;transport=tcp"\ntransport = "udp"\n',
            "carrier.transport",
            "contradicts",
        ),
        ('[carrier]\nsources = "192.0.2.1"\n', "carrier.sources", "must be a list"),
        ('[carrier]\nsources = ["carrier.example.net"]\n', "carrier.sources[0]", "IP"),
        ('[carrier]\nsources = ["192.0.2.1:0"]\n', "carrier.sources[0]", "port"),
        ('[carrier]\nsources = ["192.0.2.1:x"]\n', "carrier.sources[0]", "port"),
        ('[carrier]\nsources = ["[192.0.2.1]:5060"]\n', "carrier.sources[0]", "expected"),
        ('[carrier]\nsources = ["2001:db8::1:5060:1:1:1:1"]\n', "carrier.sources[0]", "IP"),
        ("[carrier]\nsources = [1]\n", "carrier.sources[0]", "must be a string"),
        (
            '[carrier]\nsources = ["192.0.2.1", "192.0.2.1"]\n',
            "carrier.sources",
            "listed twice",
        ),
        ("[registrar]\nmin_expires = 0\n", "registrar.min_expires", "positive"),
        ("[registrar]\nmax_expires = 30\n", "registrar.max_expires", "smaller than"),
        ("[registrar]\ndefault_expires = 30\n", "registrar.default_expires", "between"),
        ("[registrar]\ndefault_expires = 7200\n", "registrar.default_expires", "between"),
        ("[registrar]\nmax_expires = 4294967296\n", "registrar.max_expires", "at most"),
        ("[registrar]\nmax_bindings = 0\n", "registrar.max_bindings", "positive"),
        ("[registrar]\nmax_bindings = 101\n", "registrar.max_bindings", "at most 100"),
        ("[registrar]\nmax_bindings = 2.5\n", "registrar.max_bindings", "integer"),
        ("[registrar]\nmax_contacts = 2\n", "registrar.max_contacts", "unknown key"),
        ("[calls]\nmax_call_duration = 0\n", "calls.max_call_duration", "positive"),
        ("[calls]\nmax_call_duration = -1.5\n", "calls.max_call_duration", "positive"),
        ('[calls]\nmax_call_duration = "4h"\n', "calls.max_call_duration", "seconds"),
        ("[calls]\nmin_session_expires = 0\n", "calls.min_session_expires", "positive"),
        ("[calls]\nmin_session_expires = 90.5\n", "calls.min_session_expires", "integer"),
        ('[smtp]\nhost = "smtp.example.net:587"\n', "smtp.host", "port goes in smtp.port"),
        ('[smtp]\nhost = "bad host"\n', "smtp.host", "IP address or host name"),
        ("[smtp]\nhost = 25\n", "smtp.host", "IP address or host name"),
        ("[smtp]\nport = 0\n", "smtp.port", "1 to 65535"),
        ("[smtp]\nport = 65536\n", "smtp.port", "1 to 65535"),
        ('[smtp]\nport = "587"\n', "smtp.port", "1 to 65535"),
        ("[smtp]\nport = true\n", "smtp.port", "1 to 65535"),
        ('[smtp]\nfrom_address = "sipgw"\n', "smtp.from_address", "e-mail address"),
        ('[smtp]\nfrom_address = "a b@example.net"\n', "smtp.from_address", "e-mail address"),
        (
            '[smtp]\nfrom_address = "SIP gateway <gw@example.net>"\n',
            "smtp.from_address",
            "e-mail address",
        ),
        (
            '[smtp]\nfrom_address = "gw@example.net\\r\\nBcc: x@example.net"\n',
            "smtp.from_address",
            "e-mail address",
        ),
        ('[smtp]\nsecurity = "ssl"\n', "smtp.security", "none, starttls, tls"),
        ("[smtp]\nsecurity = true\n", "smtp.security", "none, starttls, tls"),
        ('[smtp]\nusername = "u"\nsecurity = "tls"\n', "smtp.password", "both or neither"),
        ('[smtp]\npassword = "p"\nsecurity = "tls"\n', "smtp.username", "both or neither"),
        ('[smtp]\nusername = "u"\npassword = "p"\n', "smtp.security", "in clear"),
        ("[smtp]\ntimeout = 0\n", "smtp.timeout", "positive"),
        ('[smtp]\ntimeout = "10s"\n', "smtp.timeout", "seconds"),
        ('[smtp]\nserver = "x"\n', "smtp.server", "unknown key"),
        ('smtp = "smtp.example.net"\n', "smtp", "must be a table"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, toml: str, key: str, problem: str) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    error = info.value
    assert error.key == key
    assert problem in error.problem
    message = str(error)
    assert message.startswith(f"{path}: {key}: ")
    assert "\n" not in message


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[sip\nlisten = [\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value).startswith(f"{path}: not valid TOML")
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value) == f"{path}: cannot read: No such file or directory"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.10", AdvertisedAddress("203.0.113.10")),
        ("203.0.113.10:5070", AdvertisedAddress("203.0.113.10", 5070)),
        ("[2001:db8::10]", AdvertisedAddress("2001:db8::10")),
        ("[2001:db8::10]:65535", AdvertisedAddress("2001:db8::10", 65535)),
        ("sip.example.net", AdvertisedAddress("sip.example.net")),
        ("Sip-1.Example.NET.:1", AdvertisedAddress("Sip-1.Example.NET.", 1)),
        ("localhost", AdvertisedAddress("localhost")),
        (" 192.0.2.1 ", AdvertisedAddress("192.0.2.1")),
    ],
)
def test_advertise(text: str, expected: AdvertisedAddress) -> None:
    parsed = parse_advertise(text, "sip.advertise")
    assert parsed == expected
    assert parse_advertise(str(parsed), "sip.advertise") == parsed  # str() round-trips
    assert settings_from_mapping({"sip": {"advertise": text}}).sip.advertise == expected


def test_empty_advertise_is_the_default() -> None:
    assert parse_advertise("", "sip.advertise") is None
    assert settings_from_mapping({"sip": {"advertise": ""}}) == GatewaySettings()


def test_advertise_override(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[sip]\nadvertise = "sip.example.net"\n'))
    changed = settings.with_overrides(sip_advertise="[2001:db8::10]:5070")
    assert changed.sip.advertise == AdvertisedAddress("2001:db8::10", 5070)
    assert changed.sip.listen == settings.sip.listen
    assert settings.with_overrides(sip_advertise="").sip.advertise is None
    assert settings.with_overrides() == settings
    with pytest.raises(ConfigError) as info:
        settings.with_overrides(sip_advertise="::")
    assert info.value.key == "--sip-advertise"
    assert "put an IPv6 address in brackets" in info.value.problem
    with pytest.raises(ConfigError) as info:
        settings.with_overrides(sip_advertise="0.0.0.0:5060")
    assert str(info.value).startswith("--sip-advertise: '0.0.0.0:5060' is a wildcard")


def _sip(listen: list[str], advertise: str = "") -> SIPServerSettings:
    return settings_from_mapping({"sip": {"listen": listen, "advertise": advertise}}).sip


def _this_host() -> str:
    return "192.0.2.99"  # what this host's name resolves to, in these tests


@pytest.mark.parametrize(
    ("listen", "advertise", "via", "documents"),
    [
        # Concrete listeners: as today, the first one, and each as it is.
        (["192.0.2.1:5060", "[2001:db8::1]:5070"], "", "192.0.2.1:5060",
         ["192.0.2.1:5060", "[2001:db8::1]:5070"]),
        # A wildcard before a concrete one: Via names the concrete one; the
        # documents name this host for the wildcard.
        (["0.0.0.0:5060", "192.0.2.1:5070"], "", "192.0.2.1:5070",
         ["192.0.2.99:5060", "192.0.2.1:5070"]),
        # Only wildcards: this host, once per port.
        (["0.0.0.0:5060", "[::]:5060", "0.0.0.0:5070"], "", "192.0.2.99:5060",
         ["192.0.2.99:5060", "192.0.2.99:5070"]),
        # Advertised host: every listener's port at it.
        (["0.0.0.0:5060", "[::]:5060", "10.0.0.5:5070"], "203.0.113.10", "203.0.113.10:5060",
         ["203.0.113.10:5060", "203.0.113.10:5070"]),
        # Advertised port: a forward to the first listener's port.
        (["10.0.0.5:5080", "10.0.1.5:5080", "10.0.0.5:5090"], "sip.example.net:5060",
         "sip.example.net:5060", ["sip.example.net:5060", "sip.example.net:5090"]),
        (["10.0.0.5:5060"], "[2001:db8::10]", "[2001:db8::10]:5060", ["[2001:db8::10]:5060"]),
    ],
)  # fmt: skip
def test_the_address_given_out(
    listen: list[str], advertise: str, via: str, documents: list[str]
) -> None:
    """gateway.config.advertise: the one address of Via and Record-Route, and the
    addresses of the profile documents, agree."""
    sip = _sip(listen, advertise)
    assert str(advertised_address(sip, sip.listen, _this_host)) == via
    assert gateway_addresses(sip, sip.listen, _this_host) == documents
    assert needs_advertise(sip, sip.listen) == (
        not advertise and all(address.startswith(("0.0.0.0", "[::]")) for address in listen)
    )


def test_this_host_is_asked_only_for_a_wildcard() -> None:
    asked: list[str] = []

    def this_host() -> str:
        asked.append("asked")
        return "192.0.2.99"

    for sip in (_sip(["192.0.2.1:5060"]), _sip(["0.0.0.0:5060"], "sip.example.net")):
        advertised_address(sip, sip.listen, this_host)
        gateway_addresses(sip, sip.listen, this_host)
    assert asked == []
    sip = _sip(["0.0.0.0:5060", "0.0.0.0:5070"])
    assert gateway_addresses(sip, sip.listen, this_host) == ["192.0.2.99:5060", "192.0.2.99:5070"]
    assert asked == ["asked"]  # once for all the wildcards


def test_overrides_are_checked() -> None:
    with pytest.raises(ConfigError) as info:
        GatewaySettings().with_overrides(log_level="chatty")
    assert info.value.key == "--log-level"
    with pytest.raises(ConfigError):
        GatewaySettings().with_overrides(sip_listen=[])


def test_mapping_loader_accepts_plain_dicts() -> None:
    settings = settings_from_mapping({"sip": {"listen": ["127.0.0.1:0"], "t1": 0.25}})
    assert settings.sip.listen == (HostPort("127.0.0.1", 0),)
    assert settings.sip.core.t1 == 0.25


def test_settings_are_frozen() -> None:
    settings = GatewaySettings()
    with pytest.raises(AttributeError):
        settings.sip = settings.sip  # type: ignore[misc]


def test_store_carrier_registrar_and_calls_sections(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[store]
database = "postgresql+asyncpg://sipgw:secret@db.example.net:5432/sipgw"
secret_key_file = "/etc/sipgw/secret.key"
directory_poll_interval = 0.25

[carrier]
uri = "sip:carrier.example.net:5080;transport=TCP"
sources = ["192.0.2.1", "192.0.2.2:5060", "2001:db8::7", "[2001:DB8::8]:5062", "::ffff:192.0.2.9"]

[registrar]
min_expires = 30
max_expires = 7200
default_expires = 600
max_bindings = 3

[calls]
max_call_duration = 600
min_session_expires = 120
""",
    )
    settings = load_settings(path)
    assert settings.store == StoreSettings(
        database="postgresql+asyncpg://sipgw:secret@db.example.net:5432/sipgw",
        secret_key_file=Path("/etc/sipgw/secret.key"),
        directory_poll_interval=0.25,
    )
    carrier = settings.carrier
    assert carrier.uri is not None
    assert (carrier.uri.host, carrier.uri.port) == ("carrier.example.net", 5080)
    assert carrier.transport == "tcp"  # from the URI's transport parameter
    assert carrier.sources == (
        CarrierSource("192.0.2.1"),
        CarrierSource("192.0.2.2", 5060),
        CarrierSource("2001:db8::7"),
        CarrierSource("2001:db8::8", 5062),
        CarrierSource("192.0.2.9"),
    )
    assert [str(s) for s in carrier.sources] == [
        "192.0.2.1",
        "192.0.2.2:5060",
        "2001:db8::7",
        "[2001:db8::8]:5062",
        "192.0.2.9",
    ]
    assert carrier.trusts("192.0.2.1", 1)  # any port
    assert carrier.trusts("192.0.2.2", 5060)
    assert not carrier.trusts("192.0.2.2", 5061)
    assert carrier.trusts("2001:DB8::8", 5062)
    assert carrier.trusts("::ffff:192.0.2.1", 5060)
    assert not carrier.trusts("192.0.2.3", 5060)
    assert not carrier.trusts("carrier.example.net", 5080)  # a name is never trusted
    assert settings.registrar == RegistrarSettings(
        min_expires=30, max_expires=7200, default_expires=600, max_bindings=3
    )
    assert settings.calls == CallSettings(max_call_duration=600.0, min_session_expires=120)
    assert load_settings(path) == settings  # equal although URIs compare by identity


def test_carrier_host_is_trusted_only_when_it_is_an_address() -> None:
    by_ip = settings_from_mapping({"carrier": {"uri": "sip:192.0.2.30:5060"}}).carrier
    assert by_ip.trusted_sources == (CarrierSource("192.0.2.30"),)
    assert by_ip.trusts("192.0.2.30", 41000)
    v6 = settings_from_mapping({"carrier": {"uri": "sip:[2001:db8::30]"}}).carrier
    assert v6.trusted_sources == (CarrierSource("2001:db8::30"),)
    by_name = settings_from_mapping({"carrier": {"uri": "sip:carrier.example.net"}}).carrier
    assert by_name.trusted_sources == ()
    listed = settings_from_mapping(
        {"carrier": {"uri": "sip:192.0.2.30", "sources": ["192.0.2.31"]}}
    ).carrier
    assert listed.trusted_sources == (CarrierSource("192.0.2.31"),)  # the list replaces the host
    assert not listed.trusts("192.0.2.30", 5060)
    assert not CarrierSettings().trusts("192.0.2.30", 5060)


def test_the_carriers_exact_addresses_and_next_hop() -> None:
    """What the call router asks per request (gateway.proxy.identify):
    the exact addresses (a source with a port, the URI's own address when
    its host is trusted) outrank an IP profile; any port of a trusted host
    does not."""
    carrier = settings_from_mapping(
        {"carrier": {"uri": "sip:192.0.2.30:5070", "sources": ["192.0.2.30", "192.0.2.31:5080"]}}
    ).carrier
    assert carrier.next_hop() == ("UDP", "192.0.2.30", 5070)
    assert carrier.trusts_exactly("192.0.2.30", 5070)  # the URI's own address
    assert not carrier.trusts_exactly("192.0.2.30", 5071)  # trusted, but not exactly
    assert carrier.trusts("192.0.2.30", 5071)
    assert carrier.trusts_exactly("192.0.2.31", 5080)
    assert not carrier.trusts("192.0.2.31", 5081)
    named = settings_from_mapping({"carrier": {"uri": "sip:carrier.example.net"}}).carrier
    assert named.next_hop() == ("UDP", "carrier.example.net", 5060)
    assert not named.trusts_exactly("carrier.example.net", 5060)  # a name is never trusted
    assert CarrierSettings().next_hop() is None
    v6 = settings_from_mapping({"carrier": {"uri": "sip:[2001:db8::30]:5070;transport=tcp"}})
    assert v6.carrier.next_hop() == ("TCP", "2001:db8::30", 5070)
    assert v6.carrier.trusts_exactly("2001:DB8::30", 5070)


def test_carrier_sources_may_be_given_as_plain_pairs() -> None:
    """Built in code (tests of the call path), sources are (host, port)
    pairs; they are kept as CarrierSource and compare equal to a load."""
    built = CarrierSettings(uri=parse_uri("sip:192.0.2.30"), sources=(("192.0.2.31", None),))
    assert built.sources == (CarrierSource("192.0.2.31"),)
    assert str(built.sources[0]) == "192.0.2.31"
    assert built.trusts("192.0.2.31", 1) and not built.trusts("192.0.2.30", 5060)
    loaded = settings_from_mapping(
        {"carrier": {"uri": "sip:192.0.2.30", "sources": ["192.0.2.31"]}}
    ).carrier
    assert built == loaded and hash(built) == hash(loaded)


def test_database_and_carrier_overrides(tmp_path: Path) -> None:
    settings = load_settings(
        write(
            tmp_path,
            '[carrier]\nuri = "sip:old.example.net"\ntransport = "tcp"\nsources = ["192.0.2.1"]\n',
        )
    )
    changed = settings.with_overrides(
        database="sqlite+aiosqlite:////srv/gw.sqlite3", carrier="sip:127.0.0.30:5999"
    )
    assert changed.store.database == "sqlite+aiosqlite:////srv/gw.sqlite3"
    assert changed.store.secret_key_file == settings.store.secret_key_file
    assert changed.carrier.uri is not None
    assert (changed.carrier.uri.host, changed.carrier.uri.port) == ("127.0.0.30", 5999)
    assert changed.carrier.transport == "tcp"  # the file's, the URI names none
    assert changed.carrier.sources == (CarrierSource("192.0.2.1"),)  # sources stay
    udp = settings.with_overrides(carrier="sip:127.0.0.30;transport=udp")
    assert udp.carrier.transport == "udp"
    assert settings.with_overrides(carrier="").carrier.uri is None
    assert changed.sip == settings.sip and changed.registrar == settings.registrar
    with pytest.raises(ConfigError) as info:
        settings.with_overrides(carrier="carrier.example.net:5060")
    assert info.value.key == "--carrier"
    with pytest.raises(ConfigError) as info:
        settings.with_overrides(database="mysql://x/y")
    assert info.value.key == "--database"
    assert "unsupported driver" in str(info.value)


def test_admission_section_defaults_and_values() -> None:
    from gateway.config.settings import AdmissionSettings

    assert settings_from_mapping({}).admission == AdmissionSettings()
    chosen = settings_from_mapping(
        {"admission": {"backend": "redis", "redis_url": "redis://10.0.0.5:6380/2",
                       "key_prefix": "east:", "lease_seconds": 30}}
    ).admission  # fmt: skip
    assert (chosen.backend, chosen.redis_url, chosen.key_prefix, chosen.lease_seconds) == (
        "redis",
        "redis://10.0.0.5:6380/2",
        "east:",
        30.0,
    )


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"backend": "etcd"}, "admission.backend"),
        ({"redis_url": "http://x"}, "admission.redis_url"),
        ({"key_prefix": "has space"}, "admission.key_prefix"),
        ({"lease_seconds": 91}, "admission.lease_seconds"),
        ({"lease_seconds": 0}, "admission.lease_seconds"),
        ({"leases": 1}, "admission.leases"),
    ],
)
def test_admission_section_errors(section: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"admission": section})
    assert info.value.key == key


def test_smtp_section(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[smtp]
host = "smtp.example.net"
port = 587
from_address = "no-reply@gw.example.net"
security = "starttls"
username = "gateway"
password = "relay secret"
timeout = 2.5
""",
    )
    smtp = load_settings(path).smtp
    assert smtp == SMTPSettings(
        host="smtp.example.net",
        port=587,
        from_address="no-reply@gw.example.net",
        security="starttls",
        username="gateway",
        password="relay secret",
        timeout=2.5,
    )
    assert "relay secret" not in repr(smtp)  # settings get logged; the password does not
    for host in ("192.0.2.25", "2001:db8::25", "localhost"):
        assert settings_from_mapping({"smtp": {"host": host}}).smtp.host == host
    implicit = settings_from_mapping({"smtp": {"host": "mx", "port": 465, "security": "tls"}})
    assert (implicit.smtp.port, implicit.smtp.security) == (465, "tls")
