"""``sip.advertise``: the address a served gateway gives out (RFC 3261
§16.6 steps 4 and 8) is not the one it listens on.

A real ``sipgw serve`` (tests/support/peers.py :func:`trunk`) listens on one
loopback address and advertises another address, or a DNS name and a
forwarded port, as it would behind NAT.  A call through it carries the
advertised address in its Via and Record-Route, and the in-dialog
requests that come back with that Record-Route as their Route are routed
on (the gateway knows the address as its own).  The profile documents
that the REST API and ``sipgw profile show`` give to a PBX administrator
name the advertised address, not the bound one.  A wildcard advertised
address stops the start with the key named.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.output import NO_GATEWAY
from sip.message import Request, Response
from tests.support.harness import (
    GatewayHome,
    ServedGateway,
    gateway_env,
    random_loopback_block,
    run_in_process,
    start_gateway,
)
from tests.support.peers import ACCOUNT, TIMERS, answer, answers, from_pbx, ip_profile_home, trunk

#: An IPv6 documentation address (RFC 3849): advertised, never reached.
IPV6_DOC = "2001:db8::10"


def _get(served: ServedGateway, secret: str, path: str) -> Any:
    """``GET /api/v1`` ``path`` of ``served`` with a bearer token."""
    request = urllib.request.Request(served.http_url + "/api/v1" + path)
    request.add_header("Authorization", f"Bearer {secret}")
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 200
        return json.load(reply)


@pytest.mark.parametrize("named", [False, True], ids=["address", "name-and-port"])
def test_calls_and_profiles_carry_the_advertised_address(
    gateway_home: GatewayHome, named: bool
) -> None:
    # Another loopback block than the gateway's: nothing listens there, so
    # only the headers can tell where it came from.
    advertised_host = "sip.example.net" if named else random_loopback_block().gateway
    advertise = f"{advertised_host}:5999" if named else advertised_host
    with trunk(gateway_home, f'{TIMERS}\nadvertise = "{advertise}"') as setup:
        listen_host, listen_port = setup.sip
        assert advertised_host != listen_host
        advertised = (advertised_host, 5999 if named else listen_port)
        own = f"{advertised[0]}:{advertised[1]}"
        pbx, carrier = setup.pbx, setup.carrier

        pbx.send(setup.invite("advertise-1"), setup.sip)
        invite = carrier.request("INVITE")
        assert (invite.top_via.host, invite.top_via.port) == advertised
        assert invite.headers.get_all("record-route") == [f"<sip:{own};lr>"]
        carrier.send(answer(invite, 200, contact=carrier.contact), setup.sip)
        ok = pbx.expect(
            lambda m: isinstance(m, Response) and m.call_id == "advertise-1" and m.status == 200
        )
        assert ok.headers.get_all("record-route") == [f"<sip:{own};lr>"]
        assert (ok.top_via.host, ok.top_via.port) == (pbx.host, pbx.port), "ours removed"
        to = ok.headers.get("to")

        # The PBX's route set is the advertised address (RFC 3261 §12.1.2):
        # its requests carry it as Route and reach the listener (as through
        # a NAT); the gateway takes the Route as its own (§16.4) and sends
        # them on to the carrier's Contact.
        reached = dataclasses.replace(setup, sip=advertised)
        pbx.send(from_pbx(reached, "ACK", "advertise-1", to, 1), setup.sip)
        ack = carrier.expect(
            lambda m: isinstance(m, Request) and m.method == "ACK" and m.call_id == "advertise-1"
        )
        assert isinstance(ack, Request)
        assert "route" not in ack.headers
        assert (ack.top_via.host, ack.top_via.port) == advertised
        pbx.send(from_pbx(reached, "BYE", "advertise-1", to, 2), setup.sip)
        bye = carrier.request("BYE")
        assert "route" not in bye.headers
        assert bye.uri_text == f"sip:peer@{carrier.host}:{carrier.port}"
        assert (bye.top_via.host, bye.top_via.port) == advertised
        carrier.send(answer(bye, 200), setup.sip)
        pbx.expect(answers(2))
        setup.wait_channels(0)

        # What a PBX administrator is told: the API of the running gateway
        # and the CLI reading the same configuration file agree.
        token = gateway_home.cli_json("token", "create", "--name", "ops", "--role", "operator")
        for name in ("pbx", "reg"):
            document = _get(setup.gateway, token["secret"], f"/accounts/{ACCOUNT}/profiles/{name}")
            assert document["gateway_addresses"] == [own]
            assert document["transports"] == ["udp", "tcp"]
            shown = gateway_home.cli_json(
                "profile",
                "show",
                name,
                "--account",
                ACCOUNT,
                "--config",
                str(setup.gateway.config_path),
            )
            assert shown["gateway_addresses"] == [own]
        text = gateway_home.cli(
            "profile", "show", "pbx", "--config", str(setup.gateway.config_path)
        ).stdout
        assert f"{own} (udp, tcp)" in text
        assert f"{listen_host}:{listen_port}" not in text
        assert "every SIP listener is a wildcard" not in setup.gateway.log()


def test_the_command_line_wins_over_the_file(gateway_home: GatewayHome) -> None:
    """``sipgw serve --sip-advertise`` replaces ``sip.advertise`` of the
    file; a wildcard there stops the start as it would in the file."""
    net = random_loopback_block()
    ip_profile_home(gateway_home, (net.pbx(1), 5060))
    directory = gateway_home.directory / "flagged"
    directory.mkdir()
    args = ["--database", gateway_home.database_url, "--sip-advertise", f"[{IPV6_DOC}]:5999"]
    served = start_gateway(
        directory,
        host=net.gateway,
        sip_config='advertise = "sip.example.net"',
        args=args,
        env=gateway_home.env(),
    )
    gateway_home.started.append(served)
    token = gateway_home.cli_json("token", "create", "--name", "ops", "--role", "operator")
    document = _get(served, token["secret"], f"/accounts/{ACCOUNT}/profiles/reg")
    assert document["gateway_addresses"] == [f"[{IPV6_DOC}]:5999"]

    refused = run_in_process(
        ["serve", "--config", str(served.config_path), "--sip-advertise", "0.0.0.0"],
        cwd=directory,
        env=gateway_home.env(),
    )
    assert refused.returncode == 2
    assert refused.stderr.startswith("sipgw: --sip-advertise: '0.0.0.0' is a wildcard")
    served.assert_alive()


@pytest.mark.parametrize(
    ("advertise", "problem"),
    [
        ("0.0.0.0", "'0.0.0.0' is a wildcard"),
        ("[::]:5060", "'[::]:5060' is a wildcard"),
        ("192.0.2.300", "is not an IP address or host name"),
        ("sip.example.net:0", "port must be a number from 1 to 65535"),
        ("::1", "put an IPv6 address in brackets"),
    ],
)
def test_a_bad_advertised_address_stops_the_start(
    tmp_path: Path, advertise: str, problem: str
) -> None:
    config = tmp_path / "gateway.toml"
    host = random_loopback_block().gateway
    config.write_text(f'[sip]\nlisten = ["{host}:0"]\nadvertise = "{advertise}"\n')
    result = run_in_process(["serve", "--config", str(config)], cwd=tmp_path, env=gateway_env())
    assert result.returncode == 2
    assert result.stderr.startswith(f"sipgw: {config}: sip.advertise: ")
    assert problem in result.stderr
    assert result.stderr.count("\n") == 1


def test_the_cli_gives_out_what_the_running_gateways_advertise(
    gateway_home: GatewayHome,
) -> None:
    """Issue 10 (1): a gateway started with ``--sip-listen`` on a concrete
    address, and the CLI reading the repository's config file (a wildcard
    listener): the CLI, the API and the e-mail's document name the address
    the running gateways advertise, each node's, and the CLI says when none
    runs instead of guessing from its file."""
    repository_config = str(Path(__file__).resolve().parents[2] / "config" / "gateway.toml")
    net = random_loopback_block()
    ip_profile_home(gateway_home, (net.pbx(1), 5060))
    directory = gateway_home.directory / "flagged"
    directory.mkdir()
    first = start_gateway(
        directory,
        host=net.gateway,
        args=["--database", gateway_home.database_url, "--sip-listen", f"{net.gateway}:0"],
        env=gateway_home.env(),
    )
    gateway_home.started.append(first)
    (bound,) = first.healthz()["sip_listen"]
    assert bound.startswith(f"{net.gateway}:") and bound != f"{net.gateway}:0"

    created = gateway_home.cli(
        "profile", "create", "--account", ACCOUNT, "--name", "sales", "--auth",
        "registration", "--config", repository_config,
    ).stdout  # fmt: skip
    assert f"gateway:       {bound} (udp, tcp)" in created
    shown = gateway_home.cli_json("profile", "show", "sales", "--config", repository_config)
    assert (shown["gateway_addresses"], shown["transports"]) == ([bound], ["udp", "tcp"])
    token = gateway_home.cli_json("token", "create", "--name", "ops", "--role", "operator")
    document = _get(first, token["secret"], f"/accounts/{ACCOUNT}/profiles/sales")
    assert document["gateway_addresses"] == [bound]

    # A second node: every document lists both, oldest first.
    second = gateway_home.serve(host=random_loopback_block().gateway)
    second_address = "{}:{}".format(*second.sip)
    both = [bound, second_address]
    assert gateway_home.cli_json("profile", "show", "sales")["gateway_addresses"] == both
    assert (
        _get(second, token["secret"], f"/accounts/{ACCOUNT}/profiles/sales")["gateway_addresses"]
        == both
    )

    # Stopped nodes are not given out; with none running the CLI says so.
    second.stop()
    assert gateway_home.cli_json("profile", "show", "sales")["gateway_addresses"] == [bound]
    first.stop()
    text = gateway_home.cli("profile", "show", "sales", "--config", repository_config).stdout
    assert f"gateway:       {NO_GATEWAY}" in text and bound not in text
    assert gateway_home.cli_json("profile", "show", "sales")["gateway_addresses"] == []
