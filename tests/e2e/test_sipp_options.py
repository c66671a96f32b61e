"""SIPp as a real peer: OPTIONS over UDP to the served gateway, all answered 200.

SIPp (Debian package sip-tester) plays a PBX probing its trunk.  The
scenario also checks what RFC 3261 §11.2 and §8.2.6.2 require of the answer
(Allow lists OPTIONS, the To header carries a tag); a failed check fails the
call, and SIPp's exit status and statistics say so.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.harness import ServedGateway
from tests.support.sipp import Sipp, SippLauncher

pytestmark = pytest.mark.sipp

CALLS = 20
RATE = 50  # calls per second
SIPP_TIMEOUT = 30  # seconds, SIPp's own global timeout (-timeout)

# The scenario the README shows to users: one file, used as shipped.
SCENARIO = "options.xml"


def test_sipp_options_all_answered_200(
    sipp: SippLauncher, serve_gateway: Callable[..., ServedGateway]
) -> None:
    gateway = serve_gateway()
    result = sipp.run(
        Sipp(
            scenario=SCENARIO,
            local_ip=gateway.sip[0],
            remote=gateway.sip,
            calls=CALLS,
            rate=RATE,
            timeout=SIPP_TIMEOUT,
        )
    )
    assert result.ok, result.explain()
    assert result.successful == CALLS, result.explain()
    assert result.failed == 0
    assert result.stat("OutgoingCall") == CALLS
    assert result.stat("Retransmissions") == 0  # every OPTIONS answered at once
    assert result.count("OPTIONS", "Sent") == CALLS
    assert result.count("200", "Recv") == CALLS
    gateway.assert_alive()
