"""The REST API of a served gateway, with real SIP peers (issue 5, point 5).

A real ``sipgw serve`` (tests/support/peers.py :func:`trunk`: an IP PBX "pbx", a
registration profile "reg", a carrier) on SQLite and on PostgreSQL; the API
token is made with the CLI (``sipgw token create``), as an operator would.
Through ``/api/v1`` of that gateway:

* a credit move, a rename and a channel limit apply to the very next call,
  with the directory poll set to an hour: the API wakes the gateway's
  directory watcher and answers once the change is applied;
* deleting a profile gives its credit back, puts its numbers back in the
  pool (an inbound call to one is refused at once), erases its call
  records (one written by the gateway for a real call) and removes its
  PBX's registration (``/healthz`` and ``/metrics``); with a call up the
  deletion is refused unless ``end_calls=true``, which ends it (BYE both
  sides).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from gateway.store.database import Store
from sip.digest import authorize
from sip.message import Response
from tests.e2e.test_cluster_e2e import ClusterHome
from tests.support.harness import GatewayHome, free_port
from tests.support.peers import (
    ACCOUNT,
    REGISTERED_NUMBER,
    TIMERS,
    Peer,
    Setup,
    answer,
    answered_call,
    carrier_invite,
    gateway_ends_call,
    pbx_hangs_up,
    scrape,
    trunk,
)
from tests.unit import test_store as shared

postgres_url = shared.postgres_url

#: The directory poll of the served gateways: an hour, so that whatever
#: applies at once was applied because the API woke the watcher.
NO_POLL = "\n[store]\ndirectory_poll_interval = 3600.0\n"
HISTORY_TIMEOUT = 10.0  # seconds for the call record writer (flushes every 0.5 s)


async def _empty(url: str) -> None:
    """The session's PostgreSQL database is shared by this module's tests."""
    opened = await Store.open(url)
    try:
        async with opened.engine.begin() as connection:
            await connection.execute(text(f"TRUNCATE {shared.ALL_TABLES} RESTART IDENTITY"))
    finally:
        await opened.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def home(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GatewayHome]:
    """A gateway home on a fresh SQLite file or on the emptied PostgreSQL
    database; its gateways must be idle at teardown."""
    made: GatewayHome
    if request.param == "sqlite":
        made = GatewayHome(tmp_path / "home")
    else:
        url: str = request.getfixturevalue("postgres_url")
        asyncio.run(_empty(url))
        made = ClusterHome(tmp_path / "home", url=url)
    made.directory.mkdir()
    try:
        yield made
    finally:
        made.stop()


@dataclass
class Client:
    """JSON over HTTP to a served gateway's ``/api/v1``, with one token."""

    base: str
    secret: str

    def call(
        self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        url = self.base + "/api/v1" + urllib.parse.quote(path)
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.secret}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return reply.status, json.load(reply)
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.load(error)

    def ok(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        status, document = self.call(method, path, body, **kwargs)
        assert status in (200, 201), (method, path, status, document)
        return document


def operator(home: GatewayHome, setup: Setup) -> Client:
    """An operator token made with the CLI, for the served gateway's API."""
    token = home.cli_json("token", "create", "--name", "ops", "--role", "operator")
    assert token["secret"].startswith("sgw_")
    return Client(setup.gateway.http_url, token["secret"])


def admissions(setup: Setup, profile: str) -> dict[str, float]:
    """sipgw_admissions_total of ``profile``, as {result: count}."""
    return {
        dict(labels)["result"]: value
        for (sample, labels), value in scrape(setup).items()
        if sample == "sipgw_admissions_total" and dict(labels).get("profile") == profile
    }


def outbound_refused(setup: Setup, call_id: str, status: int) -> None:
    setup.pbx.send(setup.invite(call_id), setup.sip)
    final = setup.pbx.expect(
        lambda m: isinstance(m, Response) and m.call_id == call_id and m.status >= 200
    )
    assert isinstance(final, Response)
    assert final.status == status, f"{final.status} {final.reason}"


def test_changes_apply_to_the_next_call_without_a_restart(home: GatewayHome) -> None:
    with trunk(home, sip_config=TIMERS + NO_POLL) as setup:
        api = operator(home, setup)
        profile = f"/accounts/{ACCOUNT}/profiles/pbx"
        # All of "pbx"'s credit back to the account: the next call gets 402 (issue 5).
        credit = api.ok("GET", profile)["credit"]
        emptied = api.ok("POST", profile + "/credit", {"amount": f"-{credit}"})
        assert emptied["profile"]["credit"] == "0.0000"
        outbound_refused(setup, "api-no-credit", 402)
        assert admissions(setup, "pbx") == {"no_credit": 1}

        # Credit and a new name, then the next call: admitted, under the new
        # name, which carries the profile's earlier counts (docs/metrics.md).
        moved = api.ok("POST", profile + "/credit", {"amount": "5"})
        assert moved["profile"]["credit"] == "5.0000"
        renamed = api.ok("PATCH", profile, {"name": "main"})
        assert renamed["name"] == "main"
        assert admissions(setup, "main") == {"no_credit": 1}
        assert admissions(setup, "pbx") == {}
        to = answered_call(setup, "api-renamed")
        assert admissions(setup, "main") == {"no_credit": 1, "admitted": 1}
        assert setup.gateway.healthz()["channels"][ACCOUNT]["main"] == 1

        # A channel limit of 1, with that call up: the next call is refused at once.
        limited = api.ok("PATCH", f"/accounts/{ACCOUNT}/profiles/main", {"channel_limit": 1})
        assert limited["channel_limit"] == 1
        labels = (("account", ACCOUNT), ("profile", "main"))
        assert scrape(setup)[("sipgw_channel_limit", labels)] == 1
        outbound_refused(setup, "api-over-limit", 503)
        assert admissions(setup, "main") == {"no_credit": 1, "admitted": 1, "channel_limit": 1}
        pbx_hangs_up(setup, "api-renamed", to)

        # Raised again: the next call gets through.
        api.ok("PATCH", f"/accounts/{ACCOUNT}/profiles/main", {"channel_limit": 2})
        to = answered_call(setup, "api-raised")
        pbx_hangs_up(setup, "api-raised", to)
        assert admissions(setup, "main")["admitted"] == 2
        setup.gateway.assert_idle()


def register(setup: Setup, peer: Peer) -> None:
    """The registration profile's PBX registers (RFC 3261 §10.2), answering
    the digest challenge with the credentials the CLI printed."""
    host, port = setup.sip
    uri = f"sip:{host}:{port}"
    username, password = setup.reg["sip_username"], setup.reg["password"]

    def request(cseq: int, authorization: str = "") -> str:
        return (
            f"REGISTER {uri} SIP/2.0\r\n"
            f"Via: {peer.via}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:{username}@{host}>;tag=reg\r\n"
            f"To: <sip:{username}@{host}>\r\n"
            "Call-ID: api-register\r\n"
            f"CSeq: {cseq} REGISTER\r\n"
            f"Contact: {peer.contact}\r\n"
            "Expires: 600\r\n"
            f"{authorization}"
            "Content-Length: 0\r\n\r\n"
        )

    peer.send(request(1), setup.sip)
    challenge = peer.response(401, "REGISTER").www_authenticate[0]
    credentials = authorize(
        challenge,
        username=username,
        password=password,
        method="REGISTER",
        uri=uri,
        cnonce=uuid.uuid4().hex[:8],
    )
    peer.send(request(2, f"Authorization: {credentials}\r\n"), setup.sip)
    peer.response(200, "REGISTER")


def registrations(setup: Setup) -> dict[str, float]:
    return {
        dict(labels)["profile"]: value
        for (sample, labels), value in scrape(setup).items()
        if sample == "sipgw_registrations"
    }


def test_delete_through_the_api_gives_everything_back(home: GatewayHome) -> None:
    with trunk(home, sip_config=TIMERS + NO_POLL) as setup:
        api = operator(home, setup)
        reg_pbx = Peer(setup.pbx.host, free_port(setup.pbx.host))
        try:
            register(setup, reg_pbx)
            assert setup.gateway.healthz()["registrations"] == 1
            assert registrations(setup)["reg"] == 1

            # A real inbound call to the registered PBX, declined: one call record.
            setup.carrier.send(carrier_invite(setup, REGISTERED_NUMBER, "api-in"), setup.sip)
            invite = reg_pbx.request("INVITE")
            reg_pbx.send(answer(invite, 486), setup.sip)
            setup.carrier.response(486, "INVITE")
            deadline = time.monotonic() + HISTORY_TIMEOUT
            while api.ok("GET", f"/accounts/{ACCOUNT}/profiles/reg/history")["total"] < 1:
                assert time.monotonic() < deadline, "the call record never arrived"
                time.sleep(0.1)
            (record,) = api.ok("GET", f"/accounts/{ACCOUNT}/profiles/reg/history")["items"]
            assert (record["direction"], record["final_status"]) == ("inbound", 486)

            credit = api.ok("GET", f"/accounts/{ACCOUNT}/profiles/reg")["credit"]
            balance = api.ok("GET", f"/accounts/{ACCOUNT}")["balance"]
            assert Decimal(credit) > 0
            report = api.ok(
                "DELETE", f"/accounts/{ACCOUNT}/profiles/reg", params={"confirm": "reg"}
            )
            after = str(Decimal(balance) + Decimal(credit))
            assert report == {
                "name": "reg",
                "account": ACCOUNT,
                "charged": "0.0000",
                "credit_returned": credit,
                "numbers_released": [REGISTERED_NUMBER],
                "records_erased": 1,
                "calls_up": 0,
                "balance": after,
            }
            # Applied by the gateway before the API answered: the binding is
            # gone, the number is back in the pool.
            assert setup.gateway.healthz()["registrations"] == 0
            assert "reg" not in registrations(setup)
            numbers = api.ok("GET", f"/accounts/{ACCOUNT}/numbers")["items"]
            assert {"number": REGISTERED_NUMBER, "account": ACCOUNT, "profile": None} in numbers
            setup.carrier.send(carrier_invite(setup, REGISTERED_NUMBER, "api-in-2"), setup.sip)
            refused = setup.carrier.expect(
                lambda m: isinstance(m, Response) and m.call_id == "api-in-2" and m.status >= 200
            )
            assert isinstance(refused, Response) and refused.status == 404
            status, error = api.call("GET", f"/accounts/{ACCOUNT}/profiles/reg/history")
            assert status == 404 and "no profile named 'reg'" in error["error"]["message"]
            assert api.ok("GET", f"/accounts/{ACCOUNT}")["balance"] == after
        finally:
            reg_pbx.close()

        # With a call up, the deletion is refused, unless told to end it.
        answered_call(setup, "api-up")
        status, error = api.call(
            "DELETE", f"/accounts/{ACCOUNT}/profiles/pbx", params={"confirm": "pbx"}
        )
        assert status == 409, error
        assert "has 1 call up: set end_calls" in error["error"]["message"]
        assert setup.channels() == 1
        report = api.ok(
            "DELETE",
            f"/accounts/{ACCOUNT}/profiles/pbx",
            params={"confirm": "pbx", "end_calls": "true"},
        )
        assert report["calls_up"] == 1 and report["name"] == "pbx"
        gateway_ends_call(setup, "api-up")  # BYE to both sides
        assert api.ok("GET", f"/accounts/{ACCOUNT}/profiles")["total"] == 0
        setup.gateway.assert_idle()


def test_deleting_a_profile_with_a_call_up_charges_the_call_first(home: GatewayHome) -> None:
    """Issue 10 (2): the gateway ends the call and charges it to the
    profile, and only then is the credit left given back; the answer says
    what was charged, and no call record is thrown away."""
    with trunk(home, sip_config=TIMERS + NO_POLL) as setup:
        api = operator(home, setup)
        api.ok("PUT", "/rates/default", {"price_per_minute": "60.0000"})  # 1.0000 a second
        path = f"/accounts/{ACCOUNT}/profiles/pbx"
        credit = Decimal(api.ok("GET", path)["credit"])
        balance = Decimal(api.ok("GET", f"/accounts/{ACCOUNT}")["balance"])
        answered_call(setup, "doomed")
        time.sleep(1.2)  # the call runs into its second started second
        report = api.ok("DELETE", path, params={"confirm": "pbx", "end_calls": "true"})
        gateway_ends_call(setup, "doomed")  # BYE to both sides
        charged = Decimal(report["charged"])
        assert Decimal(2) <= charged < credit, report  # every started second, at 1.0000
        assert report["calls_up"] == 1
        assert Decimal(report["credit_returned"]) == credit - charged
        assert Decimal(report["balance"]) == balance + credit - charged
        assert (
            Decimal(api.ok("GET", f"/accounts/{ACCOUNT}")["balance"]) == balance + credit - charged
        )
        assert "discarded" not in setup.gateway.log()
        setup.gateway.assert_idle()
