"""Calls through the real gateway (issue 3), SIPp playing the PBXs and the carrier.

One ``sipgw serve`` serves the module, on the embedded default (a SQLite
file, in-memory channel counting), with a temporary secret key.  Its
profiles and numbers are made beforehand with the management commands
against the same database, as an operator would.  Every actor has its own
loopback address, so trust by source address is tested as in the field::

    .10  the gateway          --carrier sip:.30:PORT, [carrier] sources = [.30]
    .20  registration PBXs    digest; each test its own profile and port
    .21  the "ip-pbx" PBX     IP authentication: exactly .21:PORT
    .22  the "ip-load" PBX    IP authentication, the default 300 channels
    .30  the carrier

Outcomes are asserted through SIPp's statistics and message traces and
through the gateway's ``GET /healthz``: ``"channels"`` (in use, per profile
name) and ``"calls"`` must be back to 0 after every test, as must every
``sipgw_channels_in_use`` in ``GET /metrics``, and ``"registrations"``
counts the bindings.  The scenarios themselves are proven SIPp against SIPp in
``tests/e2e/test_sipp_scenarios.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.harness import (
    GatewayHome,
    LoopbackBlock,
    ServedGateway,
    free_port,
    random_loopback_block,
)
from tests.support.peers import ACCOUNT
from tests.support.sipp import Sipp, SippLauncher, SippResult, TracedMessage, sipp_binary

pytestmark = pytest.mark.sipp

#: Inbound numbers (E.164, Ofcom's drama range), and a number called out.
REGISTERED_PBX_NUMBER = "+441134960000"
IP_PBX_NUMBER = "+441134960001"
OUTBOUND_NUMBER = "+441134960999"
#: A call's length once answered: long enough to see its channel in use.
CALL_MS = 500
#: SIPp's own deadline for a single-call run.
CALL_TIMEOUT = 20.0
#: The channel-limit test: 400 calls offered within one second to a profile
#: with the default limit, each lasting long enough for all to overlap.
DEFAULT_CHANNEL_LIMIT = 300
OFFERED_CALLS = 400
LOAD_CALL_MS = 5000
LOAD_TIMEOUT = 60.0
#: How long the gateway may take to release a channel once a call is over
#: (the admission release runs as a task) or to record a registration.
SETTLE_TIMEOUT = 5.0
POLL_INTERVAL = 0.05


@dataclass
class Trunk:
    """The served gateway, its profiles and the addresses of its peers."""

    home: GatewayHome
    gateway: ServedGateway
    net: LoopbackBlock
    carrier_port: int
    profiles: dict[str, dict[str, Any]]
    ip_pbx: tuple[str, int]
    load_pbx: tuple[str, int]

    @property
    def gateway_uri_host(self) -> str:
        host, port = self.gateway.sip
        return f"{host}:{port}"

    @property
    def record_route(self) -> str:
        """What the gateway puts in Record-Route (and PBXs echo in Route)."""
        return f"<sip:{self.gateway_uri_host};lr>"

    def health(self) -> dict[str, Any]:
        self.gateway.assert_alive()
        return self.gateway.healthz()

    def channels(self) -> dict[str, int]:
        channels: dict[str, int] = self.health()["channels"][ACCOUNT]
        return channels

    def registrations(self) -> int:
        return int(self.health()["registrations"])

    def assert_no_channels_in_use(self) -> None:
        """Every profile's channels back to 0 and no call live (within
        SETTLE_TIMEOUT), as the admission controller reports them in
        /healthz and as /metrics reports them (``sipgw_channels_in_use``)."""
        self.gateway.assert_alive()
        self.gateway.assert_idle(SETTLE_TIMEOUT)
        assert set(self.channels()) >= set(self.profiles), self.channels()

    def carrier(self, scenario: str, **options: Any) -> Sipp:
        """The carrier waiting for calls at the gateway's carrier URI."""
        options.setdefault("trace_messages", True)
        return Sipp(
            scenario=scenario, local_ip=self.net.carrier, local_port=self.carrier_port, **options
        )

    def peer(self, scenario: str, local: tuple[str, int | None], **options: Any) -> Sipp:
        """A PBX or the carrier sending to the gateway from ``local``."""
        options.setdefault("timeout", CALL_TIMEOUT)
        options.setdefault("trace_messages", True)
        return Sipp(
            scenario=scenario,
            local_ip=local[0],
            local_port=local[1],
            remote=self.gateway.sip,
            **options,
        )

    def credentials(self, profile: str) -> dict[str, Any]:
        """The SIPp options of a registration profile's PBX."""
        created = self.profiles[profile]
        username = created["sip_username"]
        return {"service": username, "auth_user": username, "auth_password": created["password"]}


def wait_for(condition: Callable[[], bool], failure: str, timeout: float = SETTLE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(failure)
        time.sleep(POLL_INTERVAL)


@pytest.fixture(scope="module")
def trunk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trunk]:
    sipp_binary()  # skip (or fail under CI) before any set-up
    net = random_loopback_block()
    ip_pbx = (net.pbx(1), free_port(net.pbx(1)))
    load_pbx = (net.pbx(2), free_port(net.pbx(2)))
    carrier_port = free_port(net.carrier)
    home = GatewayHome(tmp_path_factory.mktemp("trunk"))
    try:
        # All made before `serve`: the gateway loads them at start, and no
        # test waits for it to notice a change.
        home.cli(
            "account", "create", "--name", ACCOUNT, "--email", "ops@acme.example",
            "--balance", "10000",
        )  # fmt: skip
        profiles: dict[str, dict[str, Any]] = {}
        for name in ("reg-register", "reg-caller", "reg-inbound"):
            profiles[name] = home.cli_json(
                "profile", "create", "--account", ACCOUNT, "--name", name,
                "--auth", "registration",
            )  # fmt: skip
        for name, (ip, port) in (("ip-pbx", ip_pbx), ("ip-load", load_pbx)):
            profiles[name] = home.cli_json(
                "profile", "create", "--account", ACCOUNT, "--name", name,
                "--auth", "ip", "--ip", ip, "--port", str(port),
            )  # fmt: skip
        assert profiles["ip-load"]["channel_limit"] == DEFAULT_CHANNEL_LIMIT
        home.cli("number", "add", "--account", ACCOUNT, REGISTERED_PBX_NUMBER, IP_PBX_NUMBER)
        home.cli("number", "assign", REGISTERED_PBX_NUMBER, "--profile", "reg-inbound")
        home.cli("number", "assign", IP_PBX_NUMBER, "--profile", "ip-pbx")
        home.open_for_calls(ACCOUNT, ["reg-caller", "ip-pbx", "ip-load"])
        gateway = home.serve(
            host=net.gateway,
            carrier=(net.carrier, carrier_port),
            carrier_sources=[net.carrier],
            log_level="debug",  # the log explains a failure
        )
        trunk = Trunk(home, gateway, net, carrier_port, profiles, ip_pbx, load_pbx)
        assert trunk.channels() == dict.fromkeys(profiles, 0)
        yield trunk
    finally:
        home.stop()


def assert_ok(result: SippResult, calls: int = 1) -> None:
    assert result.ok, result.explain()
    assert (result.successful, result.failed) == (calls, 0), result.explain()


def first(messages: list[TracedMessage], direction: str, start: str) -> TracedMessage:
    for message in messages:
        if message.direction == direction and message.first_line.startswith(start):
            return message
    raise AssertionError(f"no {direction} message starting {start!r}")


# ---------------------------------------------------------------------------
# Registration


def test_digest_registration(trunk: Trunk, sipp: SippLauncher) -> None:
    before = trunk.registrations()
    pbx = sipp.run(
        trunk.peer(
            "pbx_register.xml",
            (trunk.net.pbx(0), None),
            calls=1,
            **trunk.credentials("reg-register"),
        )
    )
    assert_ok(pbx)
    assert pbx.counter("registered") == 1
    challenge = first(pbx.messages(), "received", "SIP/2.0 401").header("WWW-Authenticate")
    assert f'realm="{trunk.profiles["reg-register"]["realm"]}"' in (challenge or "")
    ok = first(pbx.messages(), "received", "SIP/2.0 200")
    host, port = pbx_address(pbx)
    assert any(f"@{host}:{port}" in contact for contact in ok.headers("Contact")), ok.text
    wait_for(lambda: trunk.registrations() == before + 1, "the binding was not counted")
    trunk.assert_no_channels_in_use()


def pbx_address(result: SippResult) -> tuple[str, int]:
    command = result.command
    return command[command.index("-i") + 1], int(command[command.index("-p") + 1])


# ---------------------------------------------------------------------------
# Outbound calls


def test_ip_authenticated_outbound_call(trunk: Trunk, sipp: SippLauncher) -> None:
    carrier = sipp.start(trunk.carrier("carrier_uas.xml", calls=1))
    pbx = sipp.start(
        trunk.peer(
            "pbx_uac.xml",
            trunk.ip_pbx,
            service=OUTBOUND_NUMBER,
            calls=1,
            duration_ms=1500,
        ),
        wait_bound=False,
    )
    wait_for(
        lambda: trunk.channels()["ip-pbx"] == 1,
        f"the answered call holds no channel: {trunk.channels()}",
    )
    placed = pbx.wait()
    assert_ok(placed)
    assert (placed.counter("answered"), placed.counter("refused")) == (1, 0)
    answered = carrier.wait()
    assert_ok(answered)

    # The carrier got the number at its own URI, with the gateway's Record-Route.
    invite = first(answered.messages(), "received", "INVITE ")
    carrier_host, carrier_port = trunk.net.carrier, trunk.carrier_port
    target = f"sip:{OUTBOUND_NUMBER}@{carrier_host}:{carrier_port}"
    assert invite.first_line == f"INVITE {target} SIP/2.0"
    assert invite.headers("Record-Route") == [trunk.record_route]
    # The PBX's ACK and BYE follow the route set to the carrier's Contact.
    sent = placed.messages()
    contact = f"sip:carrier@{carrier_host}:{carrier_port};transport=UDP"
    for method in ("ACK", "BYE"):
        request = first(sent, "sent", f"{method} ")
        assert request.first_line == f"{method} {contact} SIP/2.0"
        assert request.headers("Route") == [trunk.record_route]
    assert first(answered.messages(), "received", "BYE ").header("Route") is None  # popped
    trunk.assert_no_channels_in_use()


def test_ip_pbx_from_another_port_is_challenged(trunk: Trunk, sipp: SippLauncher) -> None:
    """IP authentication is by source IP *and* port: the right IP from
    another port is a stranger, asked for credentials, and its call goes
    nowhere (no carrier listens: a forwarded INVITE would time out)."""
    host, port = trunk.ip_pbx
    other_port = free_port(host)
    assert other_port != port
    pbx = sipp.run(trunk.peer("pbx_uac.xml", (host, other_port), service=OUTBOUND_NUMBER, calls=1))
    assert (pbx.returncode, pbx.successful, pbx.failed) == (1, 0, 1), pbx.explain()
    challenge = first(pbx.messages(), "received", "SIP/2.0 407")
    assert challenge.header("Proxy-Authenticate"), challenge.text
    trunk.assert_no_channels_in_use()


def test_digest_authenticated_outbound_call(trunk: Trunk, sipp: SippLauncher) -> None:
    carrier = sipp.start(trunk.carrier("carrier_uas.xml", calls=1))
    number_at_gateway = f"{OUTBOUND_NUMBER}@{trunk.gateway_uri_host}"
    pbx = sipp.run(
        trunk.peer(
            "pbx_uac_auth.xml",
            (trunk.net.pbx(0), None),
            calls=1,
            duration_ms=CALL_MS,
            **{**trunk.credentials("reg-caller"), "service": OUTBOUND_NUMBER},
            auth_uri=number_at_gateway,  # the digest uri is the Request-URI
        )
    )
    assert_ok(pbx)
    assert (pbx.counter("challenged"), pbx.counter("answered")) == (1, 1)
    assert_ok(carrier.wait())
    # In-dialog requests are not challenged again: the BYE got its 200.
    sent = pbx.messages()
    assert first(sent, "sent", "BYE ").header("Proxy-Authorization") is None
    assert [m.status for m in sent if m.cseq_method == "BYE" and m.direction == "received"] == [200]
    trunk.assert_no_channels_in_use()


def test_carrier_hangs_up_an_outbound_call(trunk: Trunk, sipp: SippLauncher) -> None:
    carrier = sipp.start(trunk.carrier("carrier_uas_hangup.xml", calls=1, duration_ms=CALL_MS))
    pbx = sipp.run(
        trunk.peer(
            "pbx_uac_carrier_hangup.xml",
            trunk.ip_pbx,
            service=OUTBOUND_NUMBER,
            calls=1,
        )
    )
    assert_ok(pbx)
    assert pbx.counter("hung_up_by_carrier") == 1
    assert_ok(carrier.wait())
    bye = first(pbx.messages(), "received", "BYE ")
    host, port = trunk.ip_pbx
    assert bye.first_line == f"BYE sip:pbx@{host}:{port};transport=UDP SIP/2.0"
    assert len(bye.headers("Via")) == 2  # the gateway's above the carrier's
    trunk.assert_no_channels_in_use()


def test_cancel_while_ringing(trunk: Trunk, sipp: SippLauncher) -> None:
    carrier = sipp.start(trunk.carrier("carrier_uas_ringing.xml", calls=1))
    pbx = sipp.run(
        trunk.peer(
            "pbx_uac_cancel.xml",
            trunk.ip_pbx,
            service=OUTBOUND_NUMBER,
            calls=1,
            duration_ms=300,  # rings 300 ms, then the PBX cancels
        )
    )
    assert_ok(pbx)
    assert pbx.counter("cancelled") == 1
    cancelled = carrier.wait()
    assert_ok(cancelled)
    assert cancelled.counter("cancelled") == 1
    trunk.assert_no_channels_in_use()


def test_busy_carrier_frees_the_channel(trunk: Trunk, sipp: SippLauncher) -> None:
    carrier = sipp.start(trunk.carrier("carrier_uas_busy.xml", calls=1))
    pbx = sipp.run(trunk.peer("pbx_uac_busy.xml", trunk.ip_pbx, service=OUTBOUND_NUMBER, calls=1))
    assert_ok(pbx)
    assert pbx.counter("busy") == 1
    assert_ok(carrier.wait())
    trunk.assert_no_channels_in_use()


# ---------------------------------------------------------------------------
# Inbound calls


def test_inbound_call_reaches_the_registered_pbx(trunk: Trunk, sipp: SippLauncher) -> None:
    before = trunk.registrations()
    pbx = sipp.start(
        trunk.peer(
            "pbx_register_and_answer.xml",
            (trunk.net.pbx(0), None),
            out_of_call_scenario="pbx_uas.xml",
            calls=1,
            **trunk.credentials("reg-inbound"),
        )
    )
    wait_for(lambda: trunk.registrations() > before, "the PBX did not register")
    carrier = sipp.run(
        trunk.peer(
            "carrier_uac.xml",
            (trunk.net.carrier, None),
            service=REGISTERED_PBX_NUMBER,
            calls=1,
            duration_ms=CALL_MS,
        )
    )
    assert_ok(carrier)
    assert carrier.counter("answered") == 1
    answered = pbx.wait()
    assert_ok(answered)
    assert answered.counter("inbound_answered") == 1

    # Delivered to the registered contact, on the socket that registered.
    invite = first(answered.messages(), "received", "INVITE ")
    host, port = pbx.local
    username = trunk.profiles["reg-inbound"]["sip_username"]
    assert invite.first_line == f"INVITE sip:{username}@{host}:{port};transport=UDP SIP/2.0"
    assert trunk.record_route in invite.headers("Record-Route")
    trunk.assert_no_channels_in_use()


def test_inbound_call_reaches_the_ip_pbx(trunk: Trunk, sipp: SippLauncher) -> None:
    pbx = sipp.start(
        Sipp(
            scenario="pbx_uas.xml",
            local_ip=trunk.ip_pbx[0],
            local_port=trunk.ip_pbx[1],
            calls=1,
            trace_messages=True,
        )
    )
    carrier = sipp.run(
        trunk.peer(
            "carrier_uac.xml",
            (trunk.net.carrier, None),
            service=IP_PBX_NUMBER,
            calls=1,
            duration_ms=CALL_MS,
        )
    )
    assert_ok(carrier)
    assert carrier.counter("answered") == 1
    answered = pbx.wait()
    assert_ok(answered)
    invite = first(answered.messages(), "received", "INVITE ")
    host, port = trunk.ip_pbx
    assert invite.first_line == f"INVITE sip:{IP_PBX_NUMBER}@{host}:{port} SIP/2.0"
    assert trunk.record_route in invite.headers("Record-Route")
    trunk.assert_no_channels_in_use()


# ---------------------------------------------------------------------------
# The channel limit


def test_channel_limit_refuses_the_301st_concurrent_call(trunk: Trunk, sipp: SippLauncher) -> None:
    """400 long calls offered at once to a profile with the default limit:
    exactly 300 are answered, 100 refused with 503 (and ACKed), the channels
    in use never pass 300, and all are free again afterwards."""
    carrier = sipp.start(trunk.carrier("carrier_uas.xml", trace_messages=False))  # stopped below
    pbx = sipp.start(
        trunk.peer(
            "pbx_uac.xml",
            trunk.load_pbx,
            service=OUTBOUND_NUMBER,
            calls=OFFERED_CALLS,
            rate=OFFERED_CALLS,
            rate_period_ms=1000,
            limit=OFFERED_CALLS,
            duration_ms=LOAD_CALL_MS,
            timeout=LOAD_TIMEOUT,
            trace_messages=False,
        ),
        wait_bound=False,
    )
    peak = 0
    deadline = time.monotonic() + LOAD_TIMEOUT
    while pbx.running() and time.monotonic() < deadline:
        peak = max(peak, trunk.channels()["ip-load"])
        time.sleep(POLL_INTERVAL)
    offered = pbx.wait()
    assert_ok(offered, OFFERED_CALLS)
    refused = OFFERED_CALLS - DEFAULT_CHANNEL_LIMIT
    assert (offered.counter("answered"), offered.counter("refused")) == (
        DEFAULT_CHANNEL_LIMIT,
        refused,
    ), offered.explain()
    assert peak == DEFAULT_CHANNEL_LIMIT
    answered = carrier.stop()
    assert_ok(answered, DEFAULT_CHANNEL_LIMIT)
    assert answered.stat("IncomingCall") == DEFAULT_CHANNEL_LIMIT
    trunk.assert_no_channels_in_use()
