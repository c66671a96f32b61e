"""Transactions (RFC 3261 §17, RFC 6026): every timer, matching, the layer.

Everything runs on an explicit clock: the tests step from one
``next_deadline()`` to the next and never sleep.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from sip.errors import ParseError
from sip.message import Request, Response, build_response
from sip.overload import OverloadControl
from sip.parser import parse_datagram
from sip.settings import SIPSettings
from sip.transaction import (
    IGNORE,
    MAX_TRANSACTIONS,
    OVERLOAD_RETRY_AFTER,
    Action,
    DeliverRequest,
    DeliverResponse,
    Input,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Overload,
    State,
    StrayAck,
    StrayResponse,
    Terminated,
    Timeout,
    Transaction,
    TransactionError,
    TransactionLayer,
    Transmit,
    TransportFailure,
    client_key,
    server_key,
)

PBX = ("udp", "198.51.100.7", 5060)  # where requests come from (opaque to the layer)
CARRIER = ("udp", "203.0.113.20", 5060)  # where client transactions send
URI = "sip:+14155550123@gw.example.net"


# -- messages, built from literal bytes ----------------------------------------


def req(
    method: str = "INVITE",
    *,
    branch: str | None = "z9hG4bKpbx1",
    sent_by: str = "pbx.example.com:5060",
    transport: str = "UDP",
    cseq: int = 1,
    cseq_method: str | None = None,
    call_id: str = "call-1@pbx.example.com",
    from_tag: str = "f1",
    to_tag: str | None = None,
    uri: str = URI,
    extra: str = "",
) -> Request:
    via = f"SIP/2.0/{transport} {sent_by}" + (f";branch={branch}" if branch is not None else "")
    to = "<sip:+14155550123@gw.example.net>" + (f";tag={to_tag}" if to_tag else "")
    data = (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: {via}\r\n"
        "Max-Forwards: 70\r\n"
        f"To: {to}\r\n"
        f"From: <sip:alice@pbx.example.com>;tag={from_tag}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {cseq_method or method}\r\n"
        f"{extra}"
        "Content-Length: 0\r\n"
        "\r\n"
    ).encode()
    msg = parse_datagram(data)
    assert isinstance(msg, Request)
    msg.validate()
    return msg


def outgoing(method: str = "INVITE", *, branch: str = "z9hG4bKgw1", cseq: int = 7) -> Request:
    """A request the gateway sends on (two Vias and Route headers, as a proxy
    forwards it)."""
    data = (
        f"{method} sip:+14155550123@carrier.example.net SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP gw.example.net:5060;branch={branch}\r\n"
        "Via: SIP/2.0/UDP pbx.example.com:5060;branch=z9hG4bKpbx1;received=198.51.100.7\r\n"
        "Max-Forwards: 69\r\n"
        "Route: <sip:edge1.carrier.example.net;lr>\r\n"
        "Route: <sip:edge2.carrier.example.net;lr>\r\n"
        "To: <sip:+14155550123@carrier.example.net>\r\n"
        "From: <sip:alice@gw.example.net>;tag=gwf1\r\n"
        "Call-ID: leg-b@gw.example.net\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Contact: <sip:gw@gw.example.net>\r\n"
        "Content-Type: application/sdp\r\n"
        "Content-Length: 4\r\n"
        "\r\n"
        "v=0\n"
    ).encode()
    msg = parse_datagram(data)
    assert isinstance(msg, Request)
    return msg


def resp(
    status: int,
    *,
    branch: str = "z9hG4bKgw1",
    method: str = "INVITE",
    cseq: int = 7,
    to_tag: str | None = "carrier1",
) -> Response:
    to = "<sip:+14155550123@carrier.example.net>" + (f";tag={to_tag}" if to_tag else "")
    data = (
        f"SIP/2.0 {status} Whatever\r\n"
        f"Via: SIP/2.0/UDP gw.example.net:5060;branch={branch}\r\n"
        "Via: SIP/2.0/UDP pbx.example.com:5060;branch=z9hG4bKpbx1;received=198.51.100.7\r\n"
        f"To: {to}\r\n"
        "From: <sip:alice@gw.example.net>;tag=gwf1\r\n"
        "Call-ID: leg-b@gw.example.net\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Content-Length: 0\r\n"
        "\r\n"
    ).encode()
    msg = parse_datagram(data)
    assert isinstance(msg, Response)
    return msg


# -- helpers ----------------------------------------------------------------


def drive(layer: TransactionLayer, until: float) -> list[tuple[float, Action]]:
    """Step the clock from deadline to deadline up to ``until``."""
    events: list[tuple[float, Action]] = []
    while (deadline := layer.next_deadline()) is not None and deadline <= until:
        events.extend((deadline, action) for action in layer.timers(deadline))
    return events


def times(events: Iterable[tuple[float, Action]], kind: type) -> list[float]:
    return [t for t, action in events if isinstance(action, kind)]


def state_of(tx: Transaction) -> State:
    """The state, read through a call so that mypy does not narrow it."""
    return tx.state


def kinds(actions: Iterable[Action]) -> list[str]:
    return [type(action).__name__ for action in actions]


def only(actions: list[Action], kind: type) -> Action:
    found = [a for a in actions if isinstance(a, kind)]
    assert len(found) == 1, actions
    return found[0]


def new_server(
    layer: TransactionLayer, request: Request, now: float = 0.0, *, reliable: bool = False
) -> tuple[InviteServerTransaction | NonInviteServerTransaction, list[Action]]:
    actions = layer.receive(request, PBX, now, reliable=reliable)
    deliver = only(actions, DeliverRequest)
    assert isinstance(deliver, DeliverRequest)
    tx = deliver.transaction
    assert isinstance(tx, InviteServerTransaction | NonInviteServerTransaction)
    return tx, actions


# -- the module itself -------------------------------------------------------


@pytest.mark.parametrize(
    ("machine", "network_inputs"),
    [
        (InviteClientTransaction, (Input.RESP_1XX, Input.RESP_2XX, Input.RESP_300_699)),
        (NonInviteClientTransaction, (Input.RESP_1XX, Input.RESP_2XX, Input.RESP_300_699)),
        (InviteServerTransaction, (Input.REQUEST, Input.ACK)),
        (NonInviteServerTransaction, (Input.REQUEST,)),
    ],
)
def test_tables_are_complete(machine: type[Transaction], network_inputs: tuple[Input, ...]) -> None:
    """Whatever the network can send in any state has a row (a transition or
    an explicit ignore), and every timer a state runs has a row there."""
    for state in (*machine.TIMERS, State.TERMINATED):
        for event in (*network_inputs, Input.TRANSPORT_ERROR):
            assert (state, event) in machine.TRANSITIONS, (machine.__name__, state, event)
    for state, timers in machine.TIMERS.items():
        for timer in timers:
            transition = machine.TRANSITIONS[(state, timer)]
            assert transition is not IGNORE
    # The transitions only lead to states the machine has.
    for transition in machine.TRANSITIONS.values():
        assert transition.target in (None, State.TERMINATED, *machine.TIMERS)


# -- INVITE client (RFC 3261 §17.1.1, RFC 6026 §7.2) ----------------------------


def test_invite_client_timer_a_doubles_then_timer_b_times_out() -> None:
    layer = TransactionLayer()
    tx, actions = layer.send_request(outgoing(), CARRIER, 0.0)
    assert isinstance(tx, InviteClientTransaction) and state_of(tx) is State.CALLING
    first = only(actions, Transmit)
    assert isinstance(first, Transmit)
    assert first.destination == CARRIER and first.data == outgoing().to_bytes()
    events = drive(layer, 100.0)
    # Timer A: T1, then doubling: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 (§17.1.1.2).
    assert times(events, Transmit) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(a is first for _, a in events if isinstance(a, Transmit))  # same bytes, no copy
    # Timer B = 64*T1.
    assert times(events, Timeout) == [32.0]
    assert times(events, Terminated) == [32.0]
    assert state_of(tx) is State.TERMINATED and len(layer) == 0
    assert layer.next_deadline() is None


def test_invite_client_reliable_has_no_timer_a() -> None:
    layer = TransactionLayer()
    _, actions = layer.send_request(outgoing(), CARRIER, 0.0, reliable=True)
    assert kinds(actions) == ["Transmit"]
    assert layer.next_deadline() == 32.0
    events = drive(layer, 100.0)
    assert kinds(a for _, a in events) == ["Timeout", "Terminated"]


def test_invite_client_provisional_stops_timers_a_and_b() -> None:
    layer = TransactionLayer()
    tx, _ = layer.send_request(outgoing(), CARRIER, 0.0)
    drive(layer, 0.5)  # one retransmission
    actions = layer.receive(resp(180), CARRIER, 0.7)
    deliver = only(actions, DeliverResponse)
    assert isinstance(deliver, DeliverResponse) and deliver.response.status == 180
    assert state_of(tx) is State.PROCEEDING
    # In Proceeding nothing is retransmitted and Timer B no longer runs:
    # ending a call that rings forever is the TU's Timer C (§16.8).
    assert layer.next_deadline() is None
    assert kinds(layer.receive(resp(183), CARRIER, 5.0)) == ["DeliverResponse"]


def test_invite_client_abandoned_after_cancel_ends_only_in_proceeding() -> None:
    """RFC 3261 §9.1: no final response 64*T1 after the CANCEL, the TU
    destroys the INVITE client transaction; past Proceeding it is left to
    its own timers."""
    layer = TransactionLayer()
    tx, _ = layer.send_request(outgoing(), CARRIER, 0.0)
    assert isinstance(tx, InviteClientTransaction)
    assert layer.abandon(tx, 0.1) == []  # Calling: Timer B will end it
    assert state_of(tx) is State.CALLING and layer.next_deadline() is not None
    layer.receive(resp(180), CARRIER, 0.2)
    actions = layer.abandon(tx, 40.0)
    assert kinds(actions) == ["Terminated"] and len(layer) == 0
    assert layer.abandon(tx, 41.0) == []  # twice is harmless
    assert kinds(layer.receive(resp(487), CARRIER, 42.0)) == ["StrayResponse"]
    answered, _ = layer.send_request(outgoing(branch="z9hG4bKgw2"), CARRIER, 50.0)
    assert isinstance(answered, InviteClientTransaction)
    layer.receive(resp(200, branch="z9hG4bKgw2"), CARRIER, 50.5)
    assert layer.abandon(answered, 51.0) == []  # Accepted: Timer M ends it
    assert state_of(answered) is State.ACCEPTED


def test_invite_client_acks_non_2xx_and_timer_d() -> None:
    layer = TransactionLayer()
    invite = outgoing()
    tx, _ = layer.send_request(invite, CARRIER, 0.0)
    layer.receive(resp(180), CARRIER, 0.1)
    actions = layer.receive(resp(486), CARRIER, 2.0)
    assert kinds(actions) == ["Transmit", "DeliverResponse"]
    assert state_of(tx) is State.COMPLETED
    send = actions[0]
    assert isinstance(send, Transmit) and send.destination == CARRIER
    # §17.1.1.3: the ACK, re-parsed from the bytes that go on the wire.
    ack = parse_datagram(send.data)
    assert isinstance(ack, Request)
    ack.validate()
    assert ack.method == "ACK" and ack.uri_text == invite.uri_text
    assert ack.call_id == invite.call_id
    assert ack.from_.tag == "gwf1"
    assert ack.to.tag == "carrier1"  # To of the response
    assert (ack.cseq.number, ack.cseq.method) == (7, "ACK")
    assert len(ack.vias) == 1 and str(ack.top_via) == str(invite.top_via)
    assert [r.uri.host for r in ack.routes] == [
        "edge1.carrier.example.net",
        "edge2.carrier.example.net",
    ]
    assert ack.max_forwards == 69 and ack.content_length == 0 and ack.body == b""
    assert "contact" not in ack.headers and "content-type" not in ack.headers
    # A retransmitted 486 gets the same ACK again and is not passed up.
    again = layer.receive(resp(486), CARRIER, 3.0)
    assert again == [send] and again[0] is send
    # Timer D: 32 s over UDP, from entering Completed.
    assert layer.next_deadline() == 34.0
    events = drive(layer, 100.0)
    assert kinds(a for _, a in events) == ["Terminated"] and times(events, Terminated) == [34.0]
    # After the transaction is gone, the 486 is a stray.
    assert kinds(layer.receive(resp(486), CARRIER, 40.0)) == ["StrayResponse"]


def test_invite_client_ack_without_max_forwards_gets_one() -> None:
    data = outgoing().to_bytes().replace(b"Max-Forwards: 69\r\n", b"")
    invite = parse_datagram(data)
    assert isinstance(invite, Request)
    layer = TransactionLayer()
    layer.send_request(invite, CARRIER, 0.0)
    send = layer.receive(resp(603), CARRIER, 1.0)[0]
    assert isinstance(send, Transmit) and isinstance(send.message, Request)
    assert send.message.max_forwards == 70


def test_invite_client_reliable_timer_d_is_zero() -> None:
    layer = TransactionLayer()
    tx, _ = layer.send_request(outgoing(), CARRIER, 0.0, reliable=True)
    actions = layer.receive(resp(404), CARRIER, 1.0)
    assert kinds(actions) == ["Transmit", "DeliverResponse", "Terminated"]
    assert state_of(tx) is State.TERMINATED and len(layer) == 0


def test_invite_client_accepted_passes_every_2xx_until_timer_m() -> None:
    layer = TransactionLayer()
    tx, _ = layer.send_request(outgoing(), CARRIER, 0.0)
    actions = layer.receive(resp(200), CARRIER, 1.0)
    assert kinds(actions) == ["DeliverResponse"]  # no ACK: the TU sends the ACK of a 2xx
    assert state_of(tx) is State.ACCEPTED
    # RFC 6026 §7.2: retransmissions and 2xx from other forks go to the TU.
    assert kinds(layer.receive(resp(200), CARRIER, 1.5)) == ["DeliverResponse"]
    assert kinds(layer.receive(resp(200, to_tag="fork2"), CARRIER, 2.0)) == ["DeliverResponse"]
    assert layer.receive(resp(180), CARRIER, 2.1) == []
    assert layer.receive(resp(500), CARRIER, 2.2) == []
    assert layer.transport_error(tx, 2.3) == []
    # Timer M = 64*T1 from entering Accepted.
    events = drive(layer, 100.0)
    assert times(events, Terminated) == [33.0] and len(events) == 1
    assert kinds(layer.receive(resp(200), CARRIER, 34.0)) == ["StrayResponse"]


def test_invite_client_2xx_after_non_2xx_goes_to_tu() -> None:
    """A forking proxy forwards every 2xx, even after a non-2xx final
    (§16.7 step 5): the TU must see it to ACK it and hang up."""
    layer = TransactionLayer()
    tx, _ = layer.send_request(outgoing(), CARRIER, 0.0)
    layer.receive(resp(486), CARRIER, 1.0)
    assert kinds(layer.receive(resp(200, to_tag="fork2"), CARRIER, 1.1)) == ["DeliverResponse"]
    assert layer.receive(resp(180), CARRIER, 1.2) == []
    assert state_of(tx) is State.COMPLETED


def test_invite_client_transport_errors() -> None:
    layer = TransactionLayer()
    tx, _ = layer.send_request(outgoing(), CARRIER, 0.0)
    assert kinds(layer.transport_error(tx, 0.1)) == ["TransportFailure", "Terminated"]
    assert len(layer) == 0 and layer.next_deadline() is None
    # Failing to send the ACK in Completed ends the transaction too.
    tx, _ = layer.send_request(outgoing(branch="z9hG4bKgw2"), CARRIER, 1.0)
    layer.receive(resp(486, branch="z9hG4bKgw2"), CARRIER, 1.5)
    assert kinds(layer.transport_error(tx, 1.6)) == ["TransportFailure", "Terminated"]
    # In Proceeding nothing is in flight: an error report is ignored.
    tx, _ = layer.send_request(outgoing(branch="z9hG4bKgw3"), CARRIER, 2.0)
    layer.receive(resp(100, branch="z9hG4bKgw3"), CARRIER, 2.1)
    assert layer.transport_error(tx, 2.2) == [] and state_of(tx) is State.PROCEEDING


# -- non-INVITE client (RFC 3261 §17.1.2) ---------------------------------------


def test_non_invite_client_timer_e_caps_at_t2_then_timer_f() -> None:
    layer = TransactionLayer()
    tx, _ = layer.send_request(outgoing("OPTIONS"), CARRIER, 0.0)
    assert isinstance(tx, NonInviteClientTransaction) and state_of(tx) is State.TRYING
    events = drive(layer, 100.0)
    # Timer E: 0.5, then doubling intervals 1, 2, 4 capped at T2 = 4.
    assert times(events, Transmit) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert times(events, Timeout) == [32.0] and times(events, Terminated) == [32.0]
    assert len(layer) == 0


def test_non_invite_client_timer_e_is_t2_in_proceeding() -> None:
    layer = TransactionLayer()
    tx, _ = layer.send_request(outgoing("BYE"), CARRIER, 0.0)
    drive(layer, 0.5)  # first retransmission; next E due at 1.5
    assert kinds(layer.receive(resp(100, method="BYE"), CARRIER, 0.6)) == ["DeliverResponse"]
    assert state_of(tx) is State.PROCEEDING
    events = drive(layer, 100.0)
    # E keeps its running value, then is reset to T2 every time (§17.1.2.2);
    # Timer F still counts from the start.
    assert times(events, Transmit) == [1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5]
    assert times(events, Timeout) == [32.0]


def test_non_invite_client_timer_k_absorbs_retransmitted_finals() -> None:
    layer = TransactionLayer()
    tx, _ = layer.send_request(outgoing("BYE"), CARRIER, 0.0)
    actions = layer.receive(resp(200, method="BYE"), CARRIER, 0.2)
    assert kinds(actions) == ["DeliverResponse"] and state_of(tx) is State.COMPLETED
    assert layer.receive(resp(200, method="BYE"), CARRIER, 1.0) == []
    assert layer.receive(resp(100, method="BYE"), CARRIER, 1.1) == []
    # Timer K = T4 = 5 s; no retransmission any more.
    events = drive(layer, 100.0)
    assert kinds(a for _, a in events) == ["Terminated"] and times(events, Terminated) == [5.2]


def test_non_invite_client_reliable() -> None:
    layer = TransactionLayer()
    tx, _ = layer.send_request(outgoing("OPTIONS"), CARRIER, 0.0, reliable=True)
    assert layer.next_deadline() == 32.0  # only Timer F: no Timer E over TCP
    actions = layer.receive(resp(200, method="OPTIONS"), CARRIER, 0.3)
    assert kinds(actions) == ["DeliverResponse", "Terminated"]  # Timer K = 0
    assert state_of(tx) is State.TERMINATED and len(layer) == 0


def test_non_invite_client_transport_error() -> None:
    layer = TransactionLayer()
    tx, _ = layer.send_request(outgoing("OPTIONS"), CARRIER, 0.0)
    assert kinds(layer.transport_error(tx, 0.0)) == ["TransportFailure", "Terminated"]


# -- INVITE server (RFC 3261 §17.2.1, RFC 6026 §7.1) ----------------------------


def test_invite_server_sends_100_at_once_and_absorbs_retransmissions() -> None:
    layer = TransactionLayer()
    invite = req(extra="Timestamp: 54.2\r\n")
    tx, actions = new_server(layer, invite)
    assert isinstance(tx, InviteServerTransaction) and state_of(tx) is State.PROCEEDING
    assert kinds(actions) == ["Transmit", "DeliverRequest"]
    trying = actions[0]
    assert isinstance(trying, Transmit) and trying.destination == PBX
    assert isinstance(trying.message, Response) and trying.message.status == 100
    assert trying.message.headers.get("timestamp") == "54.2"  # §8.2.6.1
    assert trying.message.to.tag is None
    # A retransmitted INVITE gets the 100 again and is not delivered again.
    assert layer.receive(req(extra="Timestamp: 54.2\r\n"), PBX, 0.5) == [trying]
    ringing = build_response(invite, 180, to_tag="gw1")
    sent = layer.send_response(tx, ringing, 1.0)
    assert kinds(sent) == ["Transmit"] and sent[0].message is ringing  # type: ignore[union-attr]
    assert layer.receive(req(), PBX, 1.5) == sent
    assert tx.last_response is ringing
    assert layer.next_deadline() is None  # no timer in Proceeding


def test_invite_server_timer_g_caps_at_t2_and_timer_h_times_out() -> None:
    layer = TransactionLayer()
    invite = req()
    tx, _ = new_server(layer, invite)
    busy = build_response(invite, 486, to_tag="gw1")
    sent = layer.send_response(tx, busy, 0.0)
    assert state_of(tx) is State.COMPLETED
    events = drive(layer, 100.0)
    # Timer G: T1 doubling up to T2: 0.5, 1.5, 3.5, 7.5, 11.5 ... 31.5.
    assert times(events, Transmit) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all(a is sent[0] for _, a in events if isinstance(a, Transmit))
    # Timer H = 64*T1: no ACK came; the TU is told.
    assert times(events, Timeout) == [32.0] and times(events, Terminated) == [32.0]
    assert len(layer) == 0


def test_invite_server_ack_confirms_and_timer_i() -> None:
    layer = TransactionLayer()
    invite = req()
    tx, _ = new_server(layer, invite)
    layer.send_response(tx, build_response(invite, 486, to_tag="gw1"), 0.0)
    assert times(drive(layer, 0.5), Transmit) == [0.5]  # one Timer G retransmission
    # An INVITE retransmission in Completed gets the final response again.
    assert kinds(layer.receive(req(), PBX, 0.6)) == ["Transmit"]
    ack = req("ACK", to_tag="gw1")
    assert layer.receive(ack, PBX, 0.7) == []  # absorbed
    assert state_of(tx) is State.CONFIRMED
    # Confirmed absorbs ACK and INVITE retransmissions; G and H are cancelled.
    assert layer.receive(req("ACK", to_tag="gw1"), PBX, 1.0) == []
    assert layer.receive(req(), PBX, 1.1) == []
    assert layer.send_response(tx, build_response(invite, 500, to_tag="gw1"), 1.2) == []
    # Timer I = T4 = 5 s from the ACK.
    events = drive(layer, 100.0)
    assert kinds(a for _, a in events) == ["Terminated"] and times(events, Terminated) == [5.7]


def test_invite_server_reliable() -> None:
    layer = TransactionLayer()
    invite = req(transport="TCP")
    tx, _ = new_server(layer, invite, reliable=True)
    layer.send_response(tx, build_response(invite, 486, to_tag="gw1"), 0.0)
    assert layer.next_deadline() == 32.0  # Timer H only, no Timer G
    actions = layer.receive(req("ACK", transport="TCP", to_tag="gw1"), PBX, 0.1, reliable=True)
    assert kinds(actions) == ["Terminated"]  # Timer I = 0
    assert len(layer) == 0


def test_invite_server_accepted_and_timer_l() -> None:
    layer = TransactionLayer()
    invite = req()
    tx, _ = new_server(layer, invite)
    ok = build_response(invite, 200, to_tag="gw1")
    assert kinds(layer.send_response(tx, ok, 1.0)) == ["Transmit"]
    assert state_of(tx) is State.ACCEPTED
    # RFC 6026 §7.1: INVITE retransmissions are absorbed (the TU retransmits
    # the 2xx, through the transaction).
    assert layer.receive(req(), PBX, 1.5) == []
    assert kinds(layer.send_response(tx, ok, 1.5)) == ["Transmit"]
    # The RFC 3261 ACK of a 2xx has a new branch: not part of the transaction.
    stray = layer.receive(req("ACK", branch="z9hG4bKpbx2", to_tag="gw1"), PBX, 1.6)
    assert kinds(stray) == ["StrayAck"]
    assert isinstance(stray[0], StrayAck) and stray[0].source == PBX
    # An ACK that does match goes to the TU, not absorbed.
    matched = layer.receive(req("ACK", to_tag="gw1"), PBX, 1.7)
    assert kinds(matched) == ["DeliverRequest"]
    assert matched[0].transaction is tx  # type: ignore[union-attr]
    # No provisional and no non-2xx final after a 2xx.
    with pytest.raises(TransactionError):
        layer.send_response(tx, build_response(invite, 180, to_tag="gw1"), 1.8)
    with pytest.raises(TransactionError):
        layer.send_response(tx, build_response(invite, 486, to_tag="gw1"), 1.8)
    # A transport error is reported; the transaction keeps absorbing.
    assert kinds(layer.transport_error(tx, 1.9)) == ["TransportFailure"]
    assert state_of(tx) is State.ACCEPTED
    # Timer L = 64*T1.
    events = drive(layer, 100.0)
    assert kinds(a for _, a in events) == ["Terminated"] and times(events, Terminated) == [33.0]
    with pytest.raises(TransactionError):
        layer.send_response(tx, ok, 40.0)  # a proxy forwards it statelessly instead


def test_invite_server_tu_mistakes_raise() -> None:
    layer = TransactionLayer()
    invite = req()
    tx, _ = new_server(layer, invite)
    layer.send_response(tx, build_response(invite, 486, to_tag="gw1"), 0.0)
    with pytest.raises(TransactionError) as info:
        layer.send_response(tx, build_response(invite, 180, to_tag="gw1"), 0.1)
    assert info.value.status == 500
    # A second final response is discarded (as §17.2.2 says for non-INVITE).
    assert layer.send_response(tx, build_response(invite, 500, to_tag="gw1"), 0.2) == []


def test_invite_server_transport_errors() -> None:
    layer = TransactionLayer()
    invite = req()
    tx, _ = new_server(layer, invite)
    assert kinds(layer.transport_error(tx, 0.1)) == ["TransportFailure", "Terminated"]
    tx, _ = new_server(layer, req(branch="z9hG4bKpbx9"))
    layer.send_response(tx, build_response(tx.request, 486, to_tag="gw1"), 0.2)
    assert kinds(layer.transport_error(tx, 0.3)) == ["TransportFailure", "Terminated"]
    assert len(layer) == 0


# -- non-INVITE server (RFC 3261 §17.2.2) ---------------------------------------


def test_non_invite_server_trying_completed_and_timer_j() -> None:
    layer = TransactionLayer()
    bye = req("BYE", to_tag="gw1")
    tx, actions = new_server(layer, bye)
    assert isinstance(tx, NonInviteServerTransaction) and state_of(tx) is State.TRYING
    assert kinds(actions) == ["DeliverRequest"]  # no 100 for non-INVITE
    # Trying: retransmissions are discarded.
    assert layer.receive(req("BYE", to_tag="gw1"), PBX, 0.5) == []
    ok = build_response(bye, 200)
    sent = layer.send_response(tx, ok, 1.0)
    assert state_of(tx) is State.COMPLETED
    assert layer.receive(req("BYE", to_tag="gw1"), PBX, 2.0) == sent
    # "Any other final responses ... MUST be discarded".
    assert layer.send_response(tx, build_response(bye, 500), 2.1) == []
    # Timer J = 64*T1 over UDP; nothing is retransmitted on a timer.
    events = drive(layer, 100.0)
    assert kinds(a for _, a in events) == ["Terminated"] and times(events, Terminated) == [33.0]


def test_non_invite_server_proceeding_resends_provisional() -> None:
    layer = TransactionLayer()
    register = req("REGISTER", uri="sip:gw.example.net")
    tx, _ = new_server(layer, register)
    trying = layer.send_response(tx, build_response(register, 100), 0.1)
    assert state_of(tx) is State.PROCEEDING
    assert layer.receive(req("REGISTER", uri="sip:gw.example.net"), PBX, 0.5) == trying
    layer.send_response(tx, build_response(register, 401, to_tag="gw1"), 0.6)
    assert state_of(tx) is State.COMPLETED
    assert kinds(layer.transport_error(tx, 0.7)) == ["TransportFailure", "Terminated"]


def test_non_invite_server_reliable_timer_j_is_zero() -> None:
    layer = TransactionLayer()
    options = req("OPTIONS", transport="TCP")
    tx, _ = new_server(layer, options, reliable=True)
    actions = layer.send_response(tx, build_response(options, 200, to_tag="gw1"), 0.0)
    assert kinds(actions) == ["Transmit", "Terminated"]
    assert len(layer) == 0


# -- matching (RFC 3261 §17.1.3, §17.2.3) ---------------------------------------


def test_server_key_rfc3261() -> None:
    invite = req()
    assert server_key(req()) == server_key(invite)  # retransmission
    assert server_key(req("ACK", to_tag="x")) == server_key(invite)  # ACK matches INVITE
    assert server_key(req("CANCEL")) != server_key(invite)  # CANCEL is its own
    assert server_key(req(sent_by="other.example.com:5060")) != server_key(invite)
    assert server_key(req(sent_by="pbx.example.com:5070")) != server_key(invite)
    assert server_key(req(sent_by="PBX.Example.COM:5060")) == server_key(invite)  # host case
    assert server_key(req(branch="z9hG4bKpbx2")) != server_key(invite)
    assert server_key(req("OPTIONS")) != server_key(req("REGISTER", cseq_method="REGISTER"))
    # Only branch, sent-by and method count: a differing Call-ID is the same key.
    assert server_key(req(call_id="other")) == server_key(invite)


def test_server_key_includes_the_source_address() -> None:
    """A request reusing another source's branch is its own transaction,
    not a retransmission (RFC 4475 messages share branches; a third party
    must not be able to hijack a transaction by guessing one)."""
    layer = TransactionLayer()
    first = req("REGISTER")
    first.source = ("UDP", "192.0.2.10", 5060)
    second = req("REGISTER")
    second.source = ("UDP", "192.0.2.99", 5060)
    assert server_key(first) != server_key(second)
    new_server(layer, first)
    assert len(layer) == 1
    assert kinds(layer.receive(second, PBX, 0.1)) == ["DeliverRequest"]
    assert len(layer) == 2
    # The same source again: a retransmission, absorbed.
    again = req("REGISTER")
    again.source = ("UDP", "192.0.2.10", 5060)
    assert "DeliverRequest" not in kinds(layer.receive(again, PBX, 0.2))


def test_server_key_bare_cookie_falls_back_to_rfc2543() -> None:
    """RFC 4475 §3.2.1: a branch of exactly ``z9hG4bK`` is not RFC 3261."""
    one = req(branch="z9hG4bK", call_id="a@pbx")
    two = req(branch="z9hG4bK", call_id="b@pbx")
    assert server_key(one) != server_key(two)  # would collide on the branch alone
    assert server_key(one) == server_key(req(branch="z9hG4bK", call_id="a@pbx"))
    layer = TransactionLayer()
    tx1, _ = new_server(layer, one)
    tx2, _ = new_server(layer, two)
    assert tx1 is not tx2 and tx1.rfc2543 and tx2.rfc2543


def test_rfc2543_invite_and_its_ack() -> None:
    layer = TransactionLayer()
    invite = req(branch=None)
    tx, _ = new_server(layer, invite)
    assert tx.rfc2543
    # A retransmission matches on Request-URI, tags, Call-ID, CSeq, top Via.
    assert kinds(layer.receive(req(branch=None), PBX, 0.2)) == ["Transmit"]  # the 100 again
    assert server_key(req(branch=None, cseq=2)) != server_key(invite)
    assert server_key(req(branch=None, from_tag="f2")) != server_key(invite)
    assert server_key(req(branch=None, uri="sip:other@gw.example.net")) != server_key(invite)
    assert server_key(req(branch=None, sent_by="other.example.com")) != server_key(invite)
    # Before a final response no ACK can match.
    assert kinds(layer.receive(req("ACK", branch=None, to_tag="gw1"), PBX, 0.3)) == ["StrayAck"]
    layer.send_response(tx, build_response(invite, 404, to_tag="gw1"), 0.4)
    # An ACK with another To tag is not for this transaction.
    assert kinds(layer.receive(req("ACK", branch=None, to_tag="zz"), PBX, 0.5)) == ["StrayAck"]
    assert state_of(tx) is State.COMPLETED
    # The ACK carrying our To tag confirms it.
    assert layer.receive(req("ACK", branch=None, to_tag="gw1"), PBX, 0.6) == []
    assert state_of(tx) is State.CONFIRMED


def test_rfc2543_non_invite_keys_include_to_tag() -> None:
    assert server_key(req("BYE", branch=None, to_tag="a")) != server_key(
        req("BYE", branch=None, to_tag="b")
    )


def test_client_key_invite_and_cancel_share_a_branch() -> None:
    assert client_key(resp(200)) == client_key(resp(180))
    assert client_key(resp(200, method="CANCEL")) != client_key(resp(200))
    assert client_key(resp(200, branch="z9hG4bKother")) != client_key(resp(200))
    layer = TransactionLayer()
    invite_tx, _ = layer.send_request(outgoing(), CARRIER, 0.0)
    cancel_tx, _ = layer.send_request(outgoing("CANCEL"), CARRIER, 1.0)  # same branch, §9.1
    layer.receive(resp(180), CARRIER, 0.5)
    actions = layer.receive(resp(200, method="CANCEL"), CARRIER, 1.1)
    assert only(actions, DeliverResponse).transaction is cancel_tx  # type: ignore[union-attr]
    assert state_of(invite_tx) is State.PROCEEDING and state_of(cancel_tx) is State.COMPLETED
    actions = layer.receive(resp(487), CARRIER, 1.2)
    assert only(actions, DeliverResponse).transaction is invite_tx  # type: ignore[union-attr]


def test_cancelled_transaction() -> None:
    layer = TransactionLayer()
    tx, _ = new_server(layer, req())
    cancel = req("CANCEL")
    cancel_tx, _ = new_server(layer, cancel)
    assert cancel_tx is not tx
    assert layer.cancelled_transaction(cancel) is tx
    assert layer.cancelled_transaction(req("CANCEL", branch="z9hG4bKnone")) is None
    old, _ = new_server(layer, req(branch=None, call_id="old@pbx"))
    assert layer.cancelled_transaction(req("CANCEL", branch=None, call_id="old@pbx")) is old
    assert layer.server_transaction(req()) is tx


def test_stray_response() -> None:
    layer = TransactionLayer()
    actions = layer.receive(resp(200), CARRIER, 0.0)
    assert isinstance(actions[0], StrayResponse) and actions[0].source == CARRIER


# -- the layer --------------------------------------------------------------


def test_bound_on_live_transactions() -> None:
    assert MAX_TRANSACTIONS > 0 and OVERLOAD_RETRY_AFTER > 0
    control = OverloadControl()
    layer = TransactionLayer(max_transactions=2, overload=control)
    tx, _ = new_server(layer, req("OPTIONS", branch="z9hG4bK1"))
    new_server(layer, req("OPTIONS", branch="z9hG4bK2"))
    actions = layer.receive(req("OPTIONS", branch="z9hG4bK3"), PBX, 0.0)
    assert len(actions) == 1 and isinstance(actions[0], Overload)
    assert actions[0].retry_after == OVERLOAD_RETRY_AFTER and actions[0].source == PBX
    assert control.table_full == 1, "counted for the metrics"
    assert len(layer) == 2
    # Known transactions still work, and a stray ACK is still a stray ACK.
    assert layer.receive(req("OPTIONS", branch="z9hG4bK1"), PBX, 0.1) == []
    assert kinds(layer.receive(req("ACK", branch="z9hG4bK9"), PBX, 0.1)) == ["StrayAck"]
    # When one ends there is room again.
    layer.send_response(tx, build_response(tx.request, 200), 0.2)
    drive(layer, 100.0)
    assert kinds(layer.receive(req("OPTIONS", branch="z9hG4bK3"), PBX, 100.0)) == ["DeliverRequest"]
    with pytest.raises(ValueError):
        TransactionLayer(max_transactions=0)


def test_a_retransmission_is_matched_before_it_is_validated() -> None:
    """DESIGN.md: a retransmission is absorbed on what matching reads; only
    a new request is validated (and refused before a transaction exists)."""
    layer = TransactionLayer()
    tx, _ = new_server(layer, req("INVITE", branch="z9hG4bKfirst"))
    layer.send_response(tx, build_response(tx.request, 100), 0.0)

    first = req("INVITE", branch="z9hG4bKfirst").to_bytes()
    bad = b"Expires: soon\r\nContent-Length"  # validate() refuses it: 400 Bad Expires
    again = parse_datagram(first.replace(b"Content-Length", bad))
    assert isinstance(again, Request)
    actions = layer.receive(again, PBX, 0.1)
    assert kinds(actions) == ["Transmit"], "the retransmission gets the 100 again"
    fresh = parse_datagram(
        first.replace(b"z9hG4bKfirst", b"z9hG4bKnew").replace(b"Content-Length", bad)
    )
    with pytest.raises(ParseError, match="Expires"):
        layer.receive(fresh, PBX, 0.2)
    assert len(layer) == 1, "no transaction for the malformed request"


def test_custom_timer_values() -> None:
    settings = SIPSettings(t1=0.1, t2=0.4, t4=1.0)
    layer = TransactionLayer(settings)
    layer.send_request(outgoing(), CARRIER, 0.0)
    events = drive(layer, 100.0)
    assert times(events, Transmit) == pytest.approx([0.1, 0.3, 0.7, 1.5, 3.1, 6.3])
    assert times(events, Timeout) == pytest.approx([6.4])  # B = 64*T1
    layer.send_request(outgoing("OPTIONS"), CARRIER, 0.0)
    events = drive(layer, 1.5)
    assert times(events, Transmit) == pytest.approx([0.1, 0.3, 0.7, 1.1, 1.5])  # E caps at 0.4
    layer.receive(resp(200, method="OPTIONS"), CARRIER, 2.0)
    assert layer.next_deadline() == pytest.approx(3.0)  # K = T4
    # Server side: G caps at T2, H = 64*T1, I = T4.
    invite = req()
    stx, _ = new_server(layer, invite, 10.0)
    layer.send_response(stx, build_response(invite, 480, to_tag="gw1"), 10.0)
    events = drive(layer, 11.0)
    assert times(events, Transmit) == pytest.approx([10.1, 10.3, 10.7])
    layer.receive(req("ACK", to_tag="gw1"), PBX, 11.0)
    assert layer.next_deadline() == pytest.approx(12.0)


def test_next_deadline_serves_many_transactions() -> None:
    layer = TransactionLayer()
    a, _ = layer.send_request(outgoing("OPTIONS", branch="z9hG4bKa"), CARRIER, 0.0)
    b, _ = layer.send_request(outgoing("OPTIONS", branch="z9hG4bKb"), CARRIER, 0.2)
    assert layer.next_deadline() == 0.5
    # b completes: its Timer K (5.5 from 0.5) replaces its Timer E.
    layer.receive(resp(200, branch="z9hG4bKb", method="OPTIONS"), CARRIER, 0.5)
    assert layer.next_deadline() == 0.5  # a's Timer E
    events = drive(layer, 6.0)
    assert [(t, type(x).__name__, x.transaction) for t, x in events] == [  # type: ignore[union-attr]
        (0.5, "Transmit", a),
        (1.5, "Transmit", a),
        (3.5, "Transmit", a),
        (5.5, "Terminated", b),
    ]
    assert a.next_deadline() == 7.5 and layer.next_deadline() == 7.5


def test_timer_heap_stays_bounded() -> None:
    """Re-armed timers and ended transactions leave stale heap entries
    behind (lazy deletion); they are compacted, never accumulated."""
    layer = TransactionLayer()
    for i in range(5000):
        # Over TCP an answered OPTIONS ends at once (Timer K = 0), leaving
        # its Timer F entry stale.
        layer.send_request(outgoing("OPTIONS", branch=f"z9hG4bKn{i}"), CARRIER, 0.0, True)
        layer.receive(resp(200, branch=f"z9hG4bKn{i}", method="OPTIONS"), CARRIER, 0.0)
    assert len(layer) == 0
    assert len(layer._heap) <= 2 + 1024 + 1
    assert layer.next_deadline() is None and layer._heap == []
    for i in range(3000):
        branch = f"z9hG4bKu{i}"
        layer.send_request(outgoing("OPTIONS", branch=branch), CARRIER, 0.0)
        layer.receive(resp(100, branch=branch, method="OPTIONS"), CARRIER, 0.0)
        layer.receive(resp(200, branch=branch, method="OPTIONS"), CARRIER, 0.0)
    assert layer.client_count == 3000 and layer.server_count == 0
    events = drive(layer, 100.0)
    assert len(times(events, Terminated)) == 3000 and len(layer) == 0


def test_transaction_used_alone() -> None:
    """A machine works without the layer (the layer only adds the table
    and the shared timer)."""
    from sip.transaction import TimerValues

    invite = outgoing()
    tx = InviteClientTransaction("key", invite, CARRIER, TimerValues(SIPSettings(), reliable=False))
    assert tx.next_deadline() is None and not tx.terminated
    assert kinds(tx._start(0.0)) == ["Transmit"]
    assert tx.next_deadline() == 0.5
    assert kinds(tx.timers(0.5)) == ["Transmit"] and tx.next_deadline() == 1.5
    assert kinds(tx.timers(32.0)) == ["Timeout", "Terminated"] and tx.terminated
    assert "InviteClientTransaction INVITE Terminated" in repr(tx)


def test_send_request_rejects_what_is_not_a_transaction() -> None:
    layer = TransactionLayer()
    with pytest.raises(TransactionError):
        layer.send_request(outgoing("ACK"), CARRIER, 0.0)
    with pytest.raises(TransactionError):
        layer.send_request(outgoing(branch="z9hG4bK"), CARRIER, 0.0)  # bare cookie
    layer.send_request(outgoing(), CARRIER, 0.0)
    with pytest.raises(TransactionError):
        layer.send_request(outgoing(), CARRIER, 0.0)  # branch in use


def test_send_response_by_key() -> None:
    layer = TransactionLayer()
    invite = req()
    tx, _ = new_server(layer, invite)
    actions = layer.send_response(server_key(invite), build_response(invite, 180, to_tag="g"), 0.1)
    assert kinds(actions) == ["Transmit"] and tx.last_response is not None
    with pytest.raises(TransactionError):
        layer.send_response(("no", "such"), build_response(invite, 180), 0.1)


def test_actions_are_frozen_keyword_only() -> None:
    layer = TransactionLayer()
    tx, actions = layer.send_request(outgoing(), CARRIER, 0.0)
    send = actions[0]
    assert isinstance(send, Transmit)
    with pytest.raises(AttributeError):
        send.destination = PBX  # type: ignore[misc]
    with pytest.raises(TypeError):
        Timeout(tx)  # type: ignore[call-arg]
    assert isinstance(TransportFailure(transaction=tx), TransportFailure)
