"""Overload control over real sockets (issue 12, point 3): a flood far past
the gateway's capacity is shed with 503 and Retry-After, and the calls
already up are not touched.

One ``sipgw serve`` with its default overload control, two IP profiles and
a SIPp carrier that answers every call (``carrier_uas_flood.xml``: SIPp
itself may miss an ACK on a machine this busy).  First 30 calls of the "office"
PBX are set up and held; while they are up, the "flood" PBX offers 1,500
calls per second for four seconds (several times what the gateway can set
up on this machine) and the held calls hang up in the middle of it.

Checked: the flood was shed (refused calls, ``sipgw_overload_shed_total``)
and every shed call was told when to come back (the scenario fails a 503
without ``Retry-After`` and the gateway's ``Warning``); no call of the
flood failed or timed out, every call taken was answered; every held call
ended with its BYE answered; the gateway stops shedding once the flood is
over; and no channel is left in use.  What is asserted is behaviour, not
speed: how many calls the flood got through depends on the machine.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.test_burst_e2e import scrape
from tests.support.harness import GatewayHome, free_port, random_loopback_block
from tests.support.sipp import Sipp, SippLauncher, sipp_binary

pytestmark = pytest.mark.sipp

ACCOUNT = "acme"
NUMBER = "+441134960999"  # called out through the carrier
HELD = 30
HELD_MS = 3_000  # the held calls hang up about halfway through the flood
FLOOD_RATE = 1_500  # calls per second
FLOOD_CALLS = 6_000  # four seconds of it
TIMEOUT = 60.0
SETTLE = 10.0  # seconds for the gateway to stop shedding after the flood


def test_a_flood_is_shed_with_retry_after_and_the_calls_up_are_kept(
    gateway_home: GatewayHome, sipp: SippLauncher
) -> None:
    sipp_binary()  # skip (or fail under CI) before any set-up
    net = random_loopback_block()
    office = (net.pbx(1), free_port(net.pbx(1)))
    flood_pbx = (net.pbx(2), free_port(net.pbx(2)))
    carrier_port = free_port(net.carrier)
    gateway_home.cli(
        "account", "create", "--name", ACCOUNT, "--email", "ops@acme.example",
        "--balance", "2000",
    )  # fmt: skip
    for name, (host, port) in (("office", office), ("flood", flood_pbx)):
        gateway_home.cli(
            "profile", "create", "--account", ACCOUNT, "--name", name,
            "--auth", "ip", "--ip", host, "--port", str(port),
        )  # fmt: skip
    gateway_home.open_for_calls(ACCOUNT, ["office", "flood"])
    gateway = gateway_home.serve(
        host=net.gateway, carrier=(net.carrier, carrier_port), carrier_sources=[net.carrier]
    )
    assert scrape(gateway, "sipgw_overload_accept_ratio") == 1.0
    carrier = sipp.start(
        Sipp(
            scenario="carrier_uas_flood.xml",
            local_ip=net.carrier,
            local_port=carrier_port,
            timeout=TIMEOUT,
        )
    )
    held = sipp.start(
        Sipp(
            scenario="pbx_uac.xml",
            local_ip=office[0],
            local_port=office[1],
            remote=gateway.sip,
            service=NUMBER,
            calls=HELD,
            rate=HELD,
            duration_ms=HELD_MS,
            timeout=TIMEOUT,
        ),
        wait_bound=False,
    )
    deadline = time.monotonic() + TIMEOUT
    while int(gateway.healthz()["channels"][ACCOUNT]["office"]) < HELD:
        assert held.running() and time.monotonic() < deadline, "the held calls never came up"
        time.sleep(0.05)

    flood = sipp.run(
        Sipp(
            scenario="pbx_uac_flood.xml",
            local_ip=flood_pbx[0],
            local_port=flood_pbx[1],
            remote=gateway.sip,
            service=NUMBER,
            calls=FLOOD_CALLS,
            rate=FLOOD_RATE,
            duration_ms=0,
            timeout=TIMEOUT,
        )
    )
    kept = held.wait()

    # Every held call was answered and ended by its BYE, in the flood.
    assert kept.ok, kept.explain()
    assert (kept.successful, kept.failed, kept.counter("answered")) == (HELD, 0, HELD), (
        kept.explain()
    )
    # The flood: no call failed or timed out (the scenario fails a 503
    # without Retry-After); each was either taken and answered or shed.
    assert flood.ok, flood.explain()
    assert (flood.successful, flood.failed) == (FLOOD_CALLS, 0), flood.explain()
    refused, answered = flood.counter("refused"), flood.counter("answered")
    assert refused + answered == FLOOD_CALLS, flood.explain()
    assert refused > 0, f"nothing was shed: {flood.explain()}"
    assert answered > 0, "the gateway took no call at all while shedding"
    # Shed before admission: only the calls taken were ever decided, and
    # the gateway counted a shed INVITE for each refused call (and for each
    # retransmission of one it shed again).
    flood_admissions = scrape(gateway, "sipgw_admissions_total", profile="flood")
    assert flood_admissions == answered
    assert scrape(gateway, "sipgw_overload_shed_total", **{"class": "invite"}) >= refused
    assert scrape(gateway, "sipgw_overload_shed_total", **{"class": "register"}) == 0

    # The flood over, the gateway takes every call again.
    deadline = time.monotonic() + SETTLE
    while scrape(gateway, "sipgw_overload_accept_ratio") < 1.0:
        assert time.monotonic() < deadline, "still shedding after the flood"
        time.sleep(0.1)
    answered_by_carrier = carrier.stop()
    assert answered_by_carrier.ok, answered_by_carrier.explain()
    assert answered_by_carrier.counter("hungup") == HELD + answered
    gateway.assert_idle()
    gateway_home.stop()
