"""In-dialog routing: which side of a call a request comes from, where it
goes next (RFC 3261 §12.2, §16.4, §16.12), and the BYEs the gateway sends
itself to end an answered call (§15.1.1).

Pure functions of a :class:`~gateway.proxy.call.Call`, the carrier's trust
and the gateway's own addresses; the router sends what they build.
"""

from __future__ import annotations

from gateway.config.settings import CarrierSettings
from gateway.proxy.call import Call, Hop
from gateway.proxy.own import OwnAddress
from sip.message import Request

__all__ = ["byes_of", "from_caller", "from_pbx", "next_hop"]


def from_pbx(request: Request, call: Call, carrier: CarrierSettings) -> bool:
    """Whether an in-dialog request comes from the profile's PBX (else from
    the carrier side).  Most specific first, as in
    :func:`gateway.proxy.identify.by_address`: the PBX's own flow (where its
    INVITE came from, or where we sent the INVITE to it) is the PBX's, even
    on the carrier's host.  Else, on an outbound call, the request is the
    carrier's (its next hop may send from another address than the one we
    sent to); on an inbound call, a trusted carrier address is the carrier's
    and anything else the PBX's (a registered PBX may send from another port
    than the one it registered from)."""
    source = request.source
    assert source is not None
    host, port = source[1].lower(), source[2]
    if (host, port) == (call.pbx.host.lower(), call.pbx.port):
        return True
    if call.direction == "outbound":
        return False
    return not carrier.trusts(host, port)


def from_caller(request: Request, call: Call, carrier: CarrierSettings) -> bool:
    """Whether an in-dialog request comes from the side that placed the call."""
    return from_pbx(request, call, carrier) == (call.direction == "outbound")


def next_hop(request: Request, call: Call, carrier: CarrierSettings, own: OwnAddress) -> Hop:
    """Where an in-dialog request goes.  Towards the PBX: the flow we know
    (RFC 3581, NAT).  Towards the carrier: the next Route, else the
    Request-URI; a peer that ignored our Record-Route and addressed the
    gateway itself gets the carrier side of the call (its Request-URI set
    to the carrier's remote target, §12.2.1.1)."""
    if not from_pbx(request, call, carrier):
        return call.pbx
    routes = request.routes
    uri = routes[0].uri if routes else request.uri
    if own.is_own_uri(uri) and call.carrier_side is not None:
        if not routes and call.carrier_contact is not None:
            request.uri = call.carrier_contact
        return call.carrier_side
    transport = (uri.param("transport") or "udp").upper()
    return Hop(transport, uri.host.strip("[]"), uri.port_or_default)


def byes_of(call: Call, why: str, own: OwnAddress) -> list[tuple[Request, Hop]]:
    """The BYE to each side of an answered call that the gateway ends
    itself (§15.1.1: in each side's dialog, at its remote target, with the
    next CSeq; with a Reason, RFC 3326), and where each goes.  A side whose
    remote target or flow is unknown gets none."""
    caller_hop = call.pbx if call.direction == "outbound" else call.carrier_side
    legs = (
        (call.callee_contact, call.caller_from, call.callee_to, call.caller_cseq, call.invite_hop),
        (call.caller_contact, call.callee_to, call.caller_from, call.callee_cseq, caller_hop),
    )
    byes = []
    for target, from_, to, cseq, hop in legs:
        if target is None or hop is None:
            continue
        bye = Request("BYE", target)
        for name, value in (
            ("From", from_),
            ("To", to),
            ("Call-ID", call.call_id),
            ("CSeq", f"{cseq + 1} BYE"),
            ("Max-Forwards", "70"),
            ("Reason", f'SIP;cause=200;text="{why}"'),
            ("Content-Length", "0"),
        ):
            bye.headers.add(name, value)
        bye.push_via(own.via(bye, hop.transport))
        byes.append((bye, hop))
    return byes
