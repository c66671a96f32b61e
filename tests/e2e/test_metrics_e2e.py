"""A profile's counters survive its renames (issue 10, point 4), as an
operator sees them: a served gateway, one SIPp call through it, the profile
renamed ``pbx`` → ``pbx2`` → ``pbx`` with the CLI, ``GET /metrics``
scraped over HTTP after each step.

``sipgw_admissions_total`` and ``sipgw_channel_releases_total`` keep their
values under the profile's current name (docs/metrics.md), the name it no
longer has is not reported, and deleting the profile removes its series.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.harness import GatewayHome
from tests.support.peers import ACCOUNT, NUMBER, Setup, scrape, trunk
from tests.support.sipp import Sipp, SippLauncher, sipp_binary

pytestmark = pytest.mark.sipp

COUNTERS = ("sipgw_admissions_total", "sipgw_channel_releases_total")
#: The answered call's length.
CALL_MS = 300


@pytest.fixture
def setup(gateway_home: GatewayHome) -> Iterator[Setup]:
    sipp_binary()  # skip (or fail under CI) before any set-up
    with trunk(gateway_home) as built:
        yield built


def counters(setup: Setup) -> dict[tuple[str, str, str], float]:
    """The per-profile counters of account ``acme`` in ``GET /metrics``, as
    {(sample, profile, result or reason): value}."""
    found: dict[tuple[str, str, str], float] = {}
    for (name, labels), value in scrape(setup).items():
        label = dict(labels)
        if name in COUNTERS and label["account"] == ACCOUNT:
            value_label = "result" if name == "sipgw_admissions_total" else "reason"
            assert set(label) == {"account", "profile", value_label}, label
            found[(name, label["profile"], label[value_label])] = value
    return found


def under(profile: str) -> dict[tuple[str, str, str], float]:
    """The counts of one answered call that the PBX hung up, under ``profile``."""
    return {
        ("sipgw_admissions_total", profile, "admitted"): 1.0,
        ("sipgw_channel_releases_total", profile, "bye"): 1.0,
    }


def test_counters_follow_renames_and_go_with_the_profile(
    gateway_home: GatewayHome, setup: Setup, sipp: SippLauncher
) -> None:
    # SIPp plays the IP PBX "pbx" and the carrier, on the peers' addresses.
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
        )
    )
    pbx = sipp.run(
        Sipp(
            scenario="pbx_uac.xml",
            local_ip=pbx_address[0],
            local_port=pbx_address[1],
            remote=setup.sip,
            service=NUMBER,
            calls=1,
            duration_ms=CALL_MS,
            timeout=30.0,
        )
    )
    assert pbx.ok and (pbx.successful, pbx.counter("answered")) == (1, 1), pbx.explain()
    assert carrier.wait().ok
    setup.gateway.assert_idle()  # the BYE is through: the channel was given back
    assert counters(setup) == under("pbx")

    # GatewayHome.cli returns once the gateway has applied the change.
    gateway_home.cli("profile", "rename", "pbx", "pbx2", "--account", ACCOUNT)
    assert counters(setup) == under("pbx2")
    gateway_home.cli("profile", "rename", "pbx2", "pbx", "--account", ACCOUNT)
    assert counters(setup) == under("pbx")

    # Deleted, the profile takes its series with it.
    gateway_home.cli("profile", "delete", "pbx", "--confirm", "pbx", "--account", ACCOUNT)
    assert counters(setup) == {}
