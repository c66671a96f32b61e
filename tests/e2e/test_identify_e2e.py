"""Who is calling, most specific first (issue 10, point 9).

The carrier and an IP-authenticated PBX share one IP address and differ by
port, and the carrier is trusted by its host alone (``[carrier] sources =
[".30"]``: an SBC may send from any port).  A request from the PBX's exact
address and UDP port is the PBX's, not the carrier's; anything else from
that host is still the carrier's, and so is the carrier's own address even
when a profile was given it by mistake::

    .10          the gateway   --carrier sip:.30:CARRIER, [carrier] sources = [".30"]
    .30:PBX      IP profile "pbx" (number +441134960002)
    .30:CARRIER  the carrier; also the address of IP profile "shadow" (a
                 mistake: the carrier's own address stays the carrier's)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from gateway.manage import profiles
from gateway.store.database import Store
from sip.message import Request
from tests.e2e.test_calls_e2e import CALL_MS, CALL_TIMEOUT, OUTBOUND_NUMBER, assert_ok, first
from tests.support.harness import (
    GatewayHome,
    LoopbackBlock,
    ServedGateway,
    free_port,
    random_loopback_block,
)
from tests.support.peers import (
    ACCOUNT,
    UNASSIGNED_NUMBER,
    Peer,
    Setup,
    answer,
    answers,
    carrier_invite,
    ip_profile_home,
)
from tests.support.sipp import Sipp, SippLauncher, sipp_binary

pytestmark = pytest.mark.sipp

PBX_NUMBER = UNASSIGNED_NUMBER  # assigned to "pbx" here


@dataclass
class SharedHost:
    """The gateway, and the one host the carrier and the PBX share."""

    gateway: ServedGateway
    net: LoopbackBlock
    pbx_port: int
    carrier_port: int

    @property
    def host(self) -> str:
        return self.net.carrier

    def peers(self) -> Setup:
        """Hand-written peers on the PBX's and the carrier's addresses."""
        pbx = Peer(self.host, self.pbx_port)
        try:
            carrier = Peer(self.host, self.carrier_port)
        except BaseException:
            pbx.close()
            raise
        return Setup(self.gateway, self.gateway.sip, pbx, carrier)


@pytest.fixture
def shared(gateway_home: GatewayHome) -> Iterator[SharedHost]:
    net = random_loopback_block()
    pbx_port = free_port(net.carrier)
    carrier_port = free_port(net.carrier)
    while carrier_port == pbx_port:
        carrier_port = free_port(net.carrier)
    ip_profile_home(gateway_home, (net.carrier, pbx_port))

    async def more(store: Store) -> None:
        await profiles.assign_number(store, PBX_NUMBER, profile="pbx")
        await profiles.create_profile(
            store, account=ACCOUNT, name="shadow", auth="ip", ip=net.carrier, port=carrier_port
        )

    gateway_home.with_store(more)
    gateway = gateway_home.serve(
        host=net.gateway,
        carrier=(net.carrier, carrier_port),
        carrier_sources=[net.carrier],  # the host, any port
    )
    yield SharedHost(gateway, net, pbx_port, carrier_port)


def test_outbound_call_from_a_pbx_on_the_carriers_host(
    shared: SharedHost, sipp: SippLauncher
) -> None:
    """The PBX's exact IP and UDP port win over the carrier's host-only
    trust: its INVITE is an outbound call (not an inbound one, which found
    no profile for the number and got 404), answered by the carrier."""
    sipp_binary()
    carrier = sipp.start(
        Sipp(
            scenario="carrier_uas.xml",
            local_ip=shared.host,
            local_port=shared.carrier_port,
            calls=1,
            trace_messages=True,
        )
    )
    placed = sipp.run(
        Sipp(
            scenario="pbx_uac.xml",
            local_ip=shared.host,
            local_port=shared.pbx_port,
            remote=shared.gateway.sip,
            service=OUTBOUND_NUMBER,
            calls=1,
            duration_ms=CALL_MS,
            timeout=CALL_TIMEOUT,
            trace_messages=True,
        )
    )
    assert_ok(placed)
    assert placed.counter("answered") == 1
    answered = carrier.wait()
    assert_ok(answered)
    invite = first(answered.messages(), "received", "INVITE ")
    target = f"sip:{OUTBOUND_NUMBER}@{shared.host}:{shared.carrier_port}"
    assert invite.first_line == f"INVITE {target} SIP/2.0"
    # The PBX's BYE went to the carrier (not back to the PBX) and was answered.
    assert first(answered.messages(), "received", "BYE ")
    shared.gateway.assert_idle()


def test_inbound_call_from_the_carriers_own_address(shared: SharedHost, sipp: SippLauncher) -> None:
    """The carrier calls from its URI's address, which profile "shadow"
    also claims: the carrier's own address stays the carrier's, and the
    call reaches the number's PBX on the same host."""
    sipp_binary()
    pbx = sipp.start(
        Sipp(
            scenario="pbx_uas.xml",
            local_ip=shared.host,
            local_port=shared.pbx_port,
            calls=1,
            trace_messages=True,
        )
    )
    caller = sipp.run(
        Sipp(
            scenario="carrier_uac.xml",
            local_ip=shared.host,
            local_port=shared.carrier_port,
            remote=shared.gateway.sip,
            service=PBX_NUMBER,
            calls=1,
            duration_ms=CALL_MS,
            timeout=CALL_TIMEOUT,
            trace_messages=True,
        )
    )
    assert_ok(caller)
    assert caller.counter("answered") == 1
    answered = pbx.wait()
    assert_ok(answered)
    invite = first(answered.messages(), "received", "INVITE ")
    assert invite.first_line == f"INVITE sip:{PBX_NUMBER}@{shared.host}:{shared.pbx_port} SIP/2.0"
    shared.gateway.assert_idle()


def in_dialog(
    setup: Setup, sender: Peer, target: Peer, method: str, call_id: str, *, from_: str, to: str
) -> str:
    """An in-dialog request of ``sender`` to ``target``'s Contact along the
    gateway's Record-Route (RFC 3261 §12.2.1.1), CSeq 1 of its side."""
    host, port = setup.sip
    return (
        f"{method} sip:peer@{target.host}:{target.port} SIP/2.0\r\n"
        f"Via: {sender.via}\r\n"
        f"Route: <sip:{host}:{port};lr>\r\n"
        "Max-Forwards: 70\r\n"
        f"From: {from_}\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 {method}\r\n"
        f"Contact: {sender.contact}\r\n"
        "Content-Length: 0\r\n\r\n"
    )


def test_the_pbx_on_the_carriers_host_hangs_up_an_inbound_call(shared: SharedHost) -> None:
    """Within a call the PBX's exact address is the PBX's too: its BYE is
    sent on to the carrier, not back to itself."""
    setup = shared.peers()
    pbx, carrier = setup.pbx, setup.carrier
    try:
        carrier.send(carrier_invite(setup, PBX_NUMBER, "same-host-in"), setup.sip)
        invite = pbx.request("INVITE")
        pbx.send(answer(invite, 200, contact=pbx.contact), setup.sip)
        ok = carrier.response(200, "INVITE")
        caller, callee = invite.headers.get("from") or "", ok.headers.get("to") or ""
        carrier.send(
            in_dialog(setup, carrier, pbx, "ACK", "same-host-in", from_=caller, to=callee),
            setup.sip,
        )
        pbx.request("ACK")
        pbx.send(
            in_dialog(setup, pbx, carrier, "BYE", "same-host-in", from_=callee, to=caller),
            setup.sip,
        )
        bye = carrier.request("BYE")
        assert isinstance(bye, Request) and bye.call_id == "same-host-in"
        carrier.send(answer(bye, 200), setup.sip)
        pbx.expect(answers(1))
        shared.gateway.assert_idle()
    finally:
        pbx.close()
        carrier.close()
