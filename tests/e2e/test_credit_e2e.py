"""Credit is real (issue 5, point 3), against a served gateway.

* An outbound call needs a rate for its destination (else 403) and credit
  (else 402, counted as ``no_credit``); a credit change made with the CLI
  applies to the next call without a restart.
* Every call leaves a record; an answered outbound call's cost is debited
  from the profile when its record is written.
* The credit runs out during a live SIPp call: the gateway ends it with a
  BYE to both sides, the record costs exactly the credit there was, and
  the profile is left with 0.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from sip.message import Response
from tests.support.harness import GatewayHome
from tests.support.peers import (
    ACCOUNT,
    NUMBER,
    Setup,
    answer,
    answers,
    from_pbx,
    scrape,
    trunk,
)
from tests.support.sipp import Sipp, SippLauncher, sipp_binary

PROFILE = (("account", ACCOUNT), ("profile", "pbx"))
#: Seconds the call records may take to be written.  (A change made with
#: ``gateway_home.cli`` needs no waiting: it returns once the gateway has
#: applied it.)
WAIT = 10.0


@pytest.fixture
def setup(gateway_home: GatewayHome) -> Iterator[Setup]:
    with trunk(gateway_home) as built:
        yield built


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def credit_metric(setup: Setup) -> float:
    return scrape(setup)[("sipgw_profile_credit", PROFILE)]


def profile_credit(home: GatewayHome) -> Decimal:
    return Decimal(home.cli_json("profile", "show", "pbx", "--account", ACCOUNT)["credit"])


def records(home: GatewayHome) -> list[dict[str, Any]]:
    page = home.cli_json("history", "pbx", "--account", ACCOUNT)
    items: list[dict[str, Any]] = page["items"]
    return items


def admissions(setup: Setup) -> dict[str, float]:
    return {
        dict(labels)["result"]: value
        for (name, labels), value in scrape(setup).items()
        if name == "sipgw_admissions_total" and dict(labels).get("profile") == "pbx"
    }


def test_outbound_calls_need_a_rate_and_credit(gateway_home: GatewayHome, setup: Setup) -> None:
    pbx, carrier = setup.pbx, setup.carrier
    # No rate for the destination: 403, nothing reaches the carrier.
    gateway_home.cli("rate", "delete", "")
    gateway_home.cli("rate", "set", "1999", "0.5000")  # another destination only
    attempt = 0

    def refused_with(status: int) -> bool:
        nonlocal attempt
        attempt += 1
        pbx.send(setup.invite(f"money-{attempt}"), setup.sip)
        final = pbx.expect(lambda m: isinstance(m, Response) and m.status >= 200)
        return isinstance(final, Response) and final.status == status

    assert refused_with(403), "403 for a destination without a rate"
    # A rate again, and all the credit moved back to the account: 402.
    gateway_home.cli("rate", "set", "", "0.6000")
    gateway_home.cli("profile", "credit", "pbx", "--account", ACCOUNT, "--withdraw", "1000")
    assert credit_metric(setup) == 0
    pbx.send(setup.invite("money-402"), setup.sip)
    refused = pbx.response(402, "INVITE")
    assert 'No credit left"' in (refused.headers.get("warning") or "")
    counts = admissions(setup)
    assert counts.get("no_credit") == 1
    assert counts.get("no_rate", 0) >= 1
    assert "admitted" not in counts
    # Credit back: the very next call goes through (no restart).
    gateway_home.cli("profile", "credit", "pbx", "--account", ACCOUNT, "--add", "5")
    assert credit_metric(setup) == 5
    pbx.send(setup.invite("money-ok"), setup.sip)
    invite = carrier.request("INVITE")
    carrier.send(answer(invite, 486), setup.sip)
    pbx.response(486, "INVITE")
    setup.wait_channels(0)
    assert admissions(setup).get("admitted") == 1
    # Every one of those calls left a record; none cost anything.
    wait_until(lambda: len(records(gateway_home)) == attempt + 2, "a record per call")
    history = records(gateway_home)
    assert {r["final_status"] for r in history} == {402, 403, 486}
    assert {r["cost"] for r in history} == {"0.0000"}
    assert profile_credit(gateway_home) == Decimal(5)


def test_an_answered_call_is_charged_when_it_ends(gateway_home: GatewayHome, setup: Setup) -> None:
    """1.5 s of talk at 0.60 per minute: two started seconds, 0.0200."""
    pbx, carrier = setup.pbx, setup.carrier
    gateway_home.cli("rate", "set", "", "0.6000")
    pbx.send(setup.invite("charged-1"), setup.sip)
    invite = carrier.request("INVITE")
    carrier.send(answer(invite, 200, contact=carrier.contact), setup.sip)
    ok = pbx.response(200, "INVITE")
    to = ok.headers.get("to")
    pbx.send(from_pbx(setup, "ACK", "charged-1", to, 1), setup.sip)
    carrier.request("ACK")
    time.sleep(1.5)  # the talk
    pbx.send(from_pbx(setup, "BYE", "charged-1", to, 2), setup.sip)
    carrier.send(answer(carrier.request("BYE"), 200), setup.sip)
    pbx.expect(answers(2))
    wait_until(lambda: len(records(gateway_home)) == 1, "the call's record")
    (record,) = records(gateway_home)
    assert record["call_id"] == "charged-1"
    assert record["direction"] == "outbound"
    assert record["callee"] == NUMBER
    assert record["final_status"] == 200
    seconds = Decimal(record["duration_seconds"])
    assert Decimal("1.4") < seconds < Decimal("5")
    billed = math.ceil(seconds)  # every started second
    assert Decimal(record["cost"]) == billed * Decimal("0.0100")
    # Debited in the same transaction as the record: exactly the cost.
    assert profile_credit(gateway_home) == Decimal(1000) - Decimal(record["cost"])


def test_credit_exhaustion_ends_a_live_sipp_call(
    gateway_home: GatewayHome, setup: Setup, sipp: SippLauncher
) -> None:
    """3 s of credit at 0.60 per minute: the gateway sends BYE to both SIPp
    peers after about 3 s, and the profile ends at exactly 0."""
    sipp_binary()
    gateway_home.cli("rate", "set", "", "0.6000")
    gateway_home.cli("profile", "credit", "pbx", "--account", ACCOUNT, "--withdraw", "999.97")
    assert abs(credit_metric(setup) - 0.03) < 1e-9
    # SIPp plays the PBX and the carrier on their addresses.
    pbx_address = (setup.pbx.host, setup.pbx.port)
    carrier_address = (setup.carrier.host, setup.carrier.port)
    setup.pbx.close()
    setup.carrier.close()
    carrier = sipp.start(
        Sipp(
            scenario="carrier_uas.xml",
            local_ip=carrier_address[0],
            local_port=carrier_address[1],
            calls=1,
            trace_messages=True,
        )
    )
    started = time.monotonic()
    pbx = sipp.run(
        Sipp(
            scenario="pbx_uac_carrier_hangup.xml",
            local_ip=pbx_address[0],
            local_port=pbx_address[1],
            remote=setup.sip,
            service=NUMBER,
            calls=1,
            timeout=30.0,
            trace_messages=True,
        )
    )
    elapsed = time.monotonic() - started
    assert pbx.ok, pbx.explain()
    assert pbx.counter("hung_up_by_carrier") == 1
    carrier_result = carrier.wait()
    assert carrier_result.ok, carrier_result.explain()
    byes = [
        m for m in pbx.messages() if m.direction == "received" and m.first_line.startswith("BYE")
    ]
    assert len(byes) == 1
    assert "Credit exhausted" in " ".join(byes[0].headers("Reason"))
    assert 2.0 < elapsed < 20.0
    setup.wait_channels(0)
    releases = {
        dict(labels)["reason"]: value
        for (name, labels), value in scrape(setup).items()
        if name == "sipgw_channel_releases_total" and dict(labels).get("profile") == "pbx"
    }
    assert releases == {"credit_exhausted": 1}
    wait_until(lambda: len(records(gateway_home)) == 1, "the call's record")
    (record,) = records(gateway_home)
    assert record["cost"] == "0.0300"
    assert profile_credit(gateway_home) == Decimal(0)  # the CLI waits for the gateway too
    assert credit_metric(setup) == 0
