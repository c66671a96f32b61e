"""The registrar's location service (RFC 3261 §10.3), driven with REGISTER
requests parsed from bytes and an explicit clock — no sockets, no sleeping."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import gateway.proxy.registrar as registrar_module
from gateway.proxy.registrar import (
    DEFAULT_Q,
    MAX_CONTACT_LENGTH,
    Binding,
    LocationService,
    RegisterOutcome,
    RegistrarPolicy,
    build_register_response,
)
from gateway.proxy.service import RegistrationExpiry
from sip.message import Request, Response
from sip.parser import parse_datagram
from tests.support.corpus import load_cases, require_corpus
from tests.unit.test_sans_io import IO_MODULES, imported_modules

SALES = 1  # profile ids: the registrar knows profiles only by id
SUPPORT = 2
# The PBX sits behind NAT: its contacts name 192.168.1.20, its REGISTERs
# arrive from the router's public address.
NAT = ("udp", "203.0.113.7", 40123)
T0 = 1000.0  # an arbitrary monotonic clock reading


def register_bytes(
    *contacts: str,
    call_id: str = "reg-1@192.168.1.20",
    cseq: int = 1,
    expires: str | None = None,
) -> bytes:
    lines = [
        "REGISTER sip:gw.example.net SIP/2.0",
        f"Via: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK{cseq}x{len(contacts)};rport",
        "Max-Forwards: 70",
        "From: <sip:sales@gw.example.net>;tag=pbx1",
        "To: <sip:sales@gw.example.net>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        *(f"Contact: {c}" for c in contacts),
        *([f"Expires: {expires}"] if expires is not None else []),
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def parse_register(data: bytes, *, validate: bool = True) -> Request:
    msg = parse_datagram(data)
    assert isinstance(msg, Request)
    if validate:
        msg.validate()
    return msg


def REGISTER(
    *contacts: str, call_id: str = "reg-1@192.168.1.20", cseq: int = 1, expires: str | None = None
) -> Request:
    """A valid REGISTER, parsed from bytes."""
    return parse_register(register_bytes(*contacts, call_id=call_id, cseq=cseq, expires=expires))


def contact_uris(bindings: list[Binding] | tuple[Binding, ...]) -> list[str]:
    return [str(b.uri) for b in bindings]


def response_contacts(response: Response) -> list[tuple[str, int | None]]:
    """(URI, expires) of each Contact of a response, after a wire round trip."""
    again = parse_datagram(response.to_bytes())
    assert isinstance(again, Response)
    assert again.headers.count("contact") == len(again.contacts)  # one header per binding
    return [(c.uri_text, c.expires) for c in again.contacts]


@pytest.fixture
def service() -> LocationService:
    return LocationService()


# -- registering -----------------------------------------------------------------------


def test_a_single_contact_is_bound_with_the_default_interval(service: LocationService) -> None:
    request = parse_register(
        b"REGISTER sip:gw.example.net SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bKreg1;rport\r\n"
        b"Max-Forwards: 70\r\n"
        b"From: <sip:sales@gw.example.net>;tag=pbx1\r\n"
        b"To: <sip:sales@gw.example.net>\r\n"
        b"Call-ID: 843817637684230@192.168.1.20\r\n"
        b"CSeq: 1826 REGISTER\r\n"
        b"Contact: <sip:sales@192.168.1.20:5060;transport=udp>\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )
    outcome = service.register(SALES, request, NAT, T0)
    assert outcome.ok
    assert outcome.status == 200
    (binding,) = outcome.bindings
    assert binding.profile_id == SALES
    assert str(binding.uri) == "sip:sales@192.168.1.20:5060;transport=udp"
    assert binding.expires_at == T0 + 3600
    assert binding.q == DEFAULT_Q
    assert binding.call_id == "843817637684230@192.168.1.20"
    assert binding.cseq == 1826
    assert binding.source == NAT
    assert binding.updated_at == T0
    assert service.targets(SALES, T0) == [binding]
    assert service.count(SALES, T0) == 1
    assert len(service) == 1

    response = build_register_response(request, outcome, "gw-tag")
    assert response.status == 200
    assert response.to.tag == "gw-tag"
    assert response.call_id == request.call_id
    assert response.cseq == request.cseq
    assert response.top_via.branch == "z9hG4bKreg1"
    assert response_contacts(response) == [("sip:sales@192.168.1.20:5060;transport=udp", 3600)]


def test_several_contacts_in_one_header_and_in_several(service: LocationService) -> None:
    request = REGISTER(
        "<sip:sales@192.168.1.20:5060>, <sip:sales@192.168.1.20:5062;transport=tcp>",
        "<sip:sales@192.168.1.21:5060>;expires=600",
    )
    outcome = service.register(SALES, request, NAT, T0)
    assert outcome.ok
    assert service.count(SALES, T0) == 3
    expires = dict(response_contacts(build_register_response(request, outcome, "t")))
    assert expires == {
        "sip:sales@192.168.1.20:5060": 3600,
        "sip:sales@192.168.1.20:5062;transport=tcp": 3600,
        "sip:sales@192.168.1.21:5060": 600,
    }


def test_the_expires_header_applies_to_contacts_without_their_own(
    service: LocationService,
) -> None:
    request = REGISTER("<sip:a@192.168.1.20>", "<sip:b@192.168.1.20>;expires=900", expires="300")
    service.register(SALES, request, NAT, T0)
    assert {str(b.uri): b.expires_at - T0 for b in service.targets(SALES, T0)} == {
        "sip:a@192.168.1.20": 300,
        "sip:b@192.168.1.20": 900,
    }


def test_a_refresh_extends_the_binding(service: LocationService) -> None:
    service.register(SALES, REGISTER("<sip:sales@192.168.1.20>", expires="600"), NAT, T0)
    refresh = REGISTER("<sip:sales@192.168.1.20>", cseq=2, expires="600")
    outcome = service.register(SALES, refresh, NAT, T0 + 500)
    assert outcome.ok
    (binding,) = service.targets(SALES, T0 + 500)
    assert binding.expires_at == T0 + 1100
    assert binding.cseq == 2
    assert response_contacts(build_register_response(refresh, outcome, "t")) == [
        ("sip:sales@192.168.1.20", 600)
    ]
    # The first registration's expiry passes without taking the refreshed binding.
    assert service.expire(T0 + 700) == []
    assert service.next_expiry() == T0 + 1100
    assert service.count(SALES, T0 + 700) == 1


def test_an_equivalent_uri_is_the_same_binding(service: LocationService) -> None:
    """§10.3 step 7 compares contacts with the §19.1.4 URI rules: host case
    and a parameter present on one side only do not make a new binding."""
    service.register(SALES, REGISTER("<sip:sales@PBX.example.com;ob>"), NAT, T0)
    service.register(SALES, REGISTER("<sip:sales@pbx.example.com>", cseq=2), NAT, T0 + 1)
    (binding,) = service.targets(SALES, T0 + 1)
    assert str(binding.uri) == "sip:sales@pbx.example.com"  # the latest spelling
    assert binding.cseq == 2


def test_the_200_ok_keeps_contact_parameters_and_sets_expires(service: LocationService) -> None:
    request = REGISTER(
        '"Sales PBX" <sip:sales@192.168.1.20>;q=0.7;expires=1200;+sip.instance="<urn:uuid:1>"'
    )
    outcome = service.register(SALES, request, NAT, T0)
    response = build_register_response(request, outcome, "t")
    (contact,) = response.contacts
    assert contact.display_name == "Sales PBX"
    assert contact.params == {"q": "0.7", "expires": "1200", "+sip.instance": '"<urn:uuid:1>"'}
    assert outcome.bindings[0].q == 0.7


# -- removing --------------------------------------------------------------------------


def test_expires_zero_removes_that_contact_only(service: LocationService) -> None:
    service.register(SALES, REGISTER("<sip:a@192.168.1.20>", "<sip:b@192.168.1.20>"), NAT, T0)
    request = REGISTER("<sip:a@192.168.1.20>;expires=0", cseq=2)
    outcome = service.register(SALES, request, NAT, T0 + 10)
    assert outcome.ok
    assert contact_uris(service.targets(SALES, T0 + 10)) == ["sip:b@192.168.1.20"]
    assert [u for u, _ in response_contacts(build_register_response(request, outcome, "t"))] == [
        "sip:b@192.168.1.20"
    ]


def test_expires_header_zero_removes_the_listed_contacts(service: LocationService) -> None:
    service.register(SALES, REGISTER("<sip:a@192.168.1.20>", "<sip:b@192.168.1.20>"), NAT, T0)
    outcome = service.register(
        SALES,
        REGISTER("<sip:a@192.168.1.20>", "<sip:b@192.168.1.20>", cseq=2, expires="0"),
        NAT,
        T0,
    )
    assert outcome.ok
    assert outcome.bindings == ()
    assert service.counts(T0) == {}
    assert len(service) == 0
    assert service.next_expiry() is None


def test_removing_an_unknown_contact_changes_nothing(service: LocationService) -> None:
    service.register(SALES, REGISTER("<sip:a@192.168.1.20>"), NAT, T0)
    outcome = service.register(SALES, REGISTER("<sip:zz@192.168.1.20>;expires=0", cseq=2), NAT, T0)
    assert outcome.ok
    assert contact_uris(outcome.bindings) == ["sip:a@192.168.1.20"]


def test_contact_star_with_expires_zero_removes_every_binding(service: LocationService) -> None:
    service.register(SALES, REGISTER("<sip:a@192.168.1.20>", "<sip:b@192.168.1.20>"), NAT, T0)
    service.register(SUPPORT, REGISTER("<sip:s@192.168.9.9>"), NAT, T0)
    request = REGISTER("*", cseq=2, expires="0")
    outcome = service.register(SALES, request, NAT, T0 + 5)
    assert outcome.ok
    assert service.targets(SALES, T0 + 5) == []
    assert service.counts(T0 + 5) == {SUPPORT: 1}  # other profiles untouched
    response = build_register_response(request, outcome, "t")
    assert response.status == 200
    assert "contact" not in response.headers


def test_contact_star_from_another_call_id_removes_regardless_of_cseq(
    service: LocationService,
) -> None:
    service.register(SALES, REGISTER("<sip:a@192.168.1.20>", cseq=50), NAT, T0)
    outcome = service.register(
        SALES, REGISTER("*", call_id="reboot@pbx", cseq=1, expires="0"), NAT, T0
    )
    assert outcome.ok
    assert service.count(SALES, T0) == 0


@pytest.mark.parametrize(
    ("contacts", "expires"),
    [
        (("*",), None),  # no Expires: the default interval is not zero
        (("*",), "3600"),
        (("*", "<sip:a@192.168.1.20>"), "0"),
        (("*, <sip:a@192.168.1.20>",), "0"),
    ],
)
def test_contact_star_otherwise_is_a_bad_request(
    service: LocationService, contacts: tuple[str, ...], expires: str | None
) -> None:
    service.register(SALES, REGISTER("<sip:a@192.168.1.20>"), NAT, T0)
    request = parse_register(register_bytes(*contacts, cseq=2, expires=expires), validate=False)
    outcome = service.register(SALES, request, NAT, T0)
    assert outcome.status == 400
    assert outcome.reason is not None
    assert "*" in outcome.reason
    assert service.count(SALES, T0) == 1
    assert build_register_response(request, outcome, "t").status == 400


def test_contact_star_out_of_order_fails_and_removes_nothing(service: LocationService) -> None:
    service.register(SALES, REGISTER("<sip:a@192.168.1.20>", cseq=7), NAT, T0)
    outcome = service.register(SALES, REGISTER("*", cseq=7, expires="0"), NAT, T0)
    assert outcome.status == 500
    assert service.count(SALES, T0) == 1


# -- intervals -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("contact", "expires"),
    [
        ("<sip:a@192.168.1.20>;expires=30", None),
        ("<sip:a@192.168.1.20>", "59"),
        ("<sip:a@192.168.1.20>;expires=1", "3600"),  # the parameter wins over the header
    ],
)
def test_too_brief_an_interval_gets_423_with_min_expires(
    service: LocationService, contact: str, expires: str | None
) -> None:
    service.register(SALES, REGISTER("<sip:kept@192.168.1.20>"), NAT, T0)
    request = REGISTER("<sip:new@192.168.1.20>", contact, cseq=2, expires=expires)
    outcome = service.register(SALES, request, NAT, T0)
    assert outcome.status == 423
    assert outcome.headers == (("Min-Expires", "60"),)
    assert outcome.bindings == ()
    # Nothing applied, not even the request's acceptable contact.
    assert contact_uris(service.targets(SALES, T0)) == ["sip:kept@192.168.1.20"]
    response = build_register_response(request, outcome, "t")
    assert (response.status, response.reason) == (423, "Interval Too Brief")
    assert response.min_expires == 60
    assert "contact" not in response.headers


def test_the_minimum_itself_is_accepted(service: LocationService) -> None:
    outcome = service.register(SALES, REGISTER("<sip:a@192.168.1.20>", expires="60"), NAT, T0)
    assert outcome.ok
    assert outcome.bindings[0].expires_at == T0 + 60


@pytest.mark.parametrize("asked", ["3601", "7200", "4294967295"])
def test_a_long_interval_is_clamped_to_the_maximum(service: LocationService, asked: str) -> None:
    request = REGISTER(f"<sip:a@192.168.1.20>;expires={asked}")
    outcome = service.register(SALES, request, NAT, T0)
    assert outcome.bindings[0].expires_at == T0 + 3600
    assert response_contacts(build_register_response(request, outcome, "t")) == [
        ("sip:a@192.168.1.20", 3600)
    ]


def test_a_policy_changes_every_interval() -> None:
    policy = RegistrarPolicy(min_expires=120, max_expires=900, default_expires=300)
    service = LocationService(policy)
    assert service.policy is policy
    assert service.register(SALES, REGISTER("<sip:a@192.168.1.20>"), NAT, T0).bindings[
        0
    ].expires_at == (T0 + 300)
    too_brief = service.register(SALES, REGISTER("<sip:b@x.example>", expires="119"), NAT, T0)
    assert too_brief.headers == (("Min-Expires", "120"),)
    clamped = service.register(SALES, REGISTER("<sip:c@x.example>;expires=3600"), NAT, T0)
    assert max(b.expires_at for b in clamped.bindings) == T0 + 900


# -- Call-ID and CSeq ordering (§10.3 step 7) ------------------------------------------


@pytest.mark.parametrize("cseq", [5, 4, 1])
def test_the_same_call_id_without_a_higher_cseq_aborts(service: LocationService, cseq: int) -> None:
    first = service.register(SALES, REGISTER("<sip:a@192.168.1.20>", cseq=5), NAT, T0)
    (before,) = first.bindings
    late = REGISTER("<sip:a@192.168.1.20>;expires=900", "<sip:new@192.168.1.20>", cseq=cseq)
    outcome = service.register(SALES, late, NAT, T0 + 30)
    assert outcome.status == 500
    assert outcome.reason is not None
    assert "CSeq" in outcome.reason
    # Aborted as a whole: the old binding as it was, the new contact not added.
    assert service.targets(SALES, T0 + 30) == [before]
    assert build_register_response(late, outcome, "t").status == 500


def test_a_removal_out_of_order_is_aborted_too(service: LocationService) -> None:
    service.register(SALES, REGISTER("<sip:a@192.168.1.20>", cseq=5), NAT, T0)
    outcome = service.register(SALES, REGISTER("<sip:a@192.168.1.20>;expires=0", cseq=3), NAT, T0)
    assert outcome.status == 500
    assert service.count(SALES, T0) == 1


def test_a_higher_cseq_updates(service: LocationService) -> None:
    service.register(SALES, REGISTER("<sip:a@192.168.1.20>", cseq=5), NAT, T0)
    outcome = service.register(SALES, REGISTER("<sip:a@192.168.1.20>", cseq=6), NAT, T0 + 30)
    assert outcome.ok
    assert outcome.bindings[0].cseq == 6


def test_a_new_call_id_replaces_whatever_its_cseq(service: LocationService) -> None:
    """A rebooted PBX starts a new Call-ID with a low CSeq; it must win."""
    service.register(SALES, REGISTER("<sip:a@192.168.1.20>", cseq=900), NAT, T0)
    outcome = service.register(
        SALES, REGISTER("<sip:a@192.168.1.20>", call_id="after-reboot@pbx", cseq=1), NAT, T0 + 30
    )
    assert outcome.ok
    (binding,) = service.targets(SALES, T0 + 30)
    assert (binding.call_id, binding.cseq) == ("after-reboot@pbx", 1)


def test_a_contact_twice_in_one_register_is_a_bad_request(service: LocationService) -> None:
    outcome = service.register(
        SALES, REGISTER("<sip:a@192.168.1.20>", "<sip:a@192.168.1.20>;expires=0"), NAT, T0
    )
    assert (outcome.status, outcome.reason) == (400, "Duplicate Contact")
    assert service.count(SALES, T0) == 0


# -- bounds ----------------------------------------------------------------------------


def test_more_bindings_than_allowed_is_refused_atomically() -> None:
    service = LocationService(RegistrarPolicy(max_bindings=3))
    first = service.register(SALES, REGISTER("<sip:a@pbx>", "<sip:b@pbx>"), NAT, T0)
    outcome = service.register(SALES, REGISTER("<sip:c@pbx>", "<sip:d@pbx>", cseq=2), NAT, T0)
    assert outcome.status == 403
    assert outcome.reason == "Too many contacts: at most 3 per profile"
    assert outcome.bindings == ()
    assert set(service.targets(SALES, T0)) == set(first.bindings)  # the very same records
    # Up to the limit is fine, and a request that frees room first counts its removals.
    assert service.register(SALES, REGISTER("<sip:c@pbx>", cseq=3), NAT, T0).ok
    swap = service.register(
        SALES, REGISTER("<sip:a@pbx>;expires=0", "<sip:d@pbx>", cseq=4), NAT, T0
    )
    assert swap.ok
    assert sorted(contact_uris(swap.bindings)) == ["sip:b@pbx", "sip:c@pbx", "sip:d@pbx"]
    # Other profiles have their own allowance.
    assert service.register(SUPPORT, REGISTER("<sip:a@pbx>", "<sip:b@pbx>"), NAT, T0).ok


def test_more_contacts_in_one_request_than_allowed_is_refused() -> None:
    service = LocationService(RegistrarPolicy(max_bindings=2))
    outcome = service.register(SALES, REGISTER("<sip:a@pbx>, <sip:b@pbx>, <sip:c@pbx>"), NAT, T0)
    assert outcome.status == 403
    assert len(service) == 0


def test_expired_bindings_do_not_count_against_the_limit() -> None:
    service = LocationService(RegistrarPolicy(max_bindings=1))
    service.register(SALES, REGISTER("<sip:a@pbx>", expires="60"), NAT, T0)
    assert service.register(SALES, REGISTER("<sip:b@pbx>", cseq=2), NAT, T0 + 30).status == 403
    # Not yet collected by expire(), but no longer a binding (§10.3).
    assert service.register(SALES, REGISTER("<sip:b@pbx>", cseq=3), NAT, T0 + 60).ok
    assert contact_uris(service.targets(SALES, T0 + 60)) == ["sip:b@pbx"]
    assert len(service) == 1


def test_a_very_long_contact_is_refused(service: LocationService) -> None:
    long_user = "u" * MAX_CONTACT_LENGTH
    outcome = service.register(SALES, REGISTER(f"<sip:{long_user}@pbx>"), NAT, T0)
    assert (outcome.status, outcome.reason) == (400, "Contact too long")


def test_refreshes_do_not_grow_the_expiry_heap(service: LocationService) -> None:
    for n in range(1, 2001):  # bounded: 2,000 refreshes of one binding
        assert service.register(SALES, REGISTER("<sip:a@pbx>", cseq=n), NAT, T0 + n).ok
    assert len(service) == 1
    assert len(service._heap) <= 2 * len(service) + 64 + 1
    assert service.next_expiry() == T0 + 2000 + 3600


# -- queries, expiry, counts -----------------------------------------------------------


def test_a_register_without_contact_lists_the_bindings(service: LocationService) -> None:
    service.register(
        SALES, REGISTER("<sip:a@192.168.1.20>", "<sip:b@192.168.1.20>;expires=600"), NAT, T0
    )
    query = REGISTER(cseq=2)
    outcome = service.register(SALES, query, NAT, T0 + 100)
    assert outcome.ok
    assert sorted(response_contacts(build_register_response(query, outcome, "t"))) == [
        ("sip:a@192.168.1.20", 3500),
        ("sip:b@192.168.1.20", 500),
    ]
    # A query changes nothing, not even the stored CSeq.
    assert {b.cseq for b in service.targets(SALES, T0 + 100)} == {1}
    assert service.register(SUPPORT, query, NAT, T0).bindings == ()


def test_remaining_seconds_round_up(service: LocationService) -> None:
    request = REGISTER("<sip:a@pbx>", expires="600")
    service.register(SALES, request, NAT, T0)
    query = REGISTER(cseq=2)
    outcome = service.register(SALES, query, NAT, T0 + 0.25)
    assert response_contacts(build_register_response(query, outcome, "t")) == [("sip:a@pbx", 600)]
    (binding,) = outcome.bindings
    assert binding.remaining(T0 + 599.5) == 1
    assert binding.remaining(T0 + 700) == 0


def test_bindings_expire_on_time(service: LocationService) -> None:
    service.register(SALES, REGISTER("<sip:short@pbx>", expires="60"), NAT, T0)
    service.register(SUPPORT, REGISTER("<sip:long@pbx>", expires="120"), NAT, T0)
    assert service.next_expiry() == T0 + 60
    assert service.expire(T0 + 59.9) == []
    assert service.counts(T0 + 59.9) == {SALES: 1, SUPPORT: 1}
    # Dead at its expiry even before expire() collects it.
    assert service.targets(SALES, T0 + 60) == []
    assert service.count(SALES, T0 + 60) == 0
    assert service.counts(T0 + 60) == {SUPPORT: 1}
    (gone,) = service.expire(T0 + 60)
    assert str(gone.uri) == "sip:short@pbx"
    assert service.next_expiry() == T0 + 120
    assert contact_uris(service.expire(T0 + 10_000)) == ["sip:long@pbx"]
    assert service.next_expiry() is None
    assert service.expire(T0 + 20_000) == []
    assert len(service) == 0


def test_a_removed_binding_never_expires_later(service: LocationService) -> None:
    service.register(SALES, REGISTER("<sip:a@pbx>", expires="60"), NAT, T0)
    service.register(SALES, REGISTER("<sip:a@pbx>", cseq=2, expires="0"), NAT, T0 + 1)
    assert service.next_expiry() is None
    assert service.expire(T0 + 100) == []


def test_next_expiry_is_the_earliest_stored_binding(service: LocationService) -> None:
    assert service.next_expiry() is None
    service.register(SALES, REGISTER("<sip:a@pbx>", expires="600"), NAT, T0)
    service.register(SUPPORT, REGISTER("<sip:s@pbx>", expires="300"), NAT, T0)
    assert service.next_expiry() == T0 + 300  # across profiles
    # A refresh moves the binding's expiry: the earliest is now the other one.
    service.register(SUPPORT, REGISTER("<sip:s@pbx>", cseq=2, expires="900"), NAT, T0 + 10)
    assert service.next_expiry() == T0 + 600
    # A binding removed (Contact: *) expires never.
    star = REGISTER("*", cseq=2, expires="0")
    assert service.register(SALES, star, NAT, T0 + 20).ok
    assert service.next_expiry() == T0 + 910
    service.remove_profile(SUPPORT)
    assert service.next_expiry() is None


class ManualTimers:
    """The event loop's part for :class:`RegistrationExpiry`: a clock moved
    by hand and the timers armed on it."""

    def __init__(self, now: float) -> None:
        self.clock = now
        self.timers: list[ManualTimer] = []

    def now(self) -> float:
        return self.clock

    def call_at(self, when: float, callback: Callable[[], None]) -> ManualTimer:
        timer = ManualTimer(when, callback)
        self.timers.append(timer)
        return timer

    def armed(self) -> list[float]:
        return [t.when for t in self.timers if not t.cancelled]

    def advance(self, to: float) -> None:
        """Move the clock to ``to``, firing what comes due in time order."""
        self.clock = to
        while due := [t for t in self.timers if not t.cancelled and t.when <= to]:
            timer = min(due, key=lambda t: t.when)
            self.timers.remove(timer)
            timer.callback()


@dataclass(eq=False)
class ManualTimer:
    when: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


def test_a_binding_disappears_at_its_expiry_on_the_timer(service: LocationService) -> None:
    """RFC 3261 §10.3: a binding lapses at its expiry.  The timer stands at
    the earliest expiry, one at a time, and moves when a REGISTER brings it
    forward (the service re-arms it after each REGISTER)."""
    timers = ManualTimers(T0)
    expiry = RegistrationExpiry(service, timers)
    service.register(SALES, REGISTER("<sip:short@pbx>", expires="60"), NAT, T0)
    expiry.rearm()
    service.register(SUPPORT, REGISTER("<sip:long@pbx>", expires="3600"), NAT, T0)
    expiry.rearm()
    assert timers.armed() == [T0 + 60] and expiry.armed_at == T0 + 60

    timers.advance(T0 + 59.9)
    assert len(service) == 2
    timers.advance(T0 + 60)
    assert service.profile_ids() == [SUPPORT] and len(service) == 1
    assert timers.armed() == [T0 + 3600]

    # A REGISTER brings the earliest expiry forward: the timer follows.
    service.register(
        SALES, REGISTER("<sip:again@pbx>", call_id="reg-2", expires="60"), NAT, T0 + 100
    )
    expiry.rearm()
    assert timers.armed() == [T0 + 160]
    timers.advance(T0 + 160)
    assert service.profile_ids() == [SUPPORT]
    assert timers.armed() == [T0 + 3600]

    # The last binding removed: nothing left to arm for.
    star = REGISTER("*", call_id="reg-3", expires="0")
    assert service.register(SUPPORT, star, NAT, T0 + 200).ok
    expiry.rearm()
    assert timers.armed() == [] and expiry.armed_at is None
    expiry.close()


def test_counts_per_profile(service: LocationService) -> None:
    service.register(SALES, REGISTER("<sip:a@pbx>", "<sip:b@pbx>"), NAT, T0)
    service.register(SUPPORT, REGISTER("<sip:a@pbx>"), NAT, T0)  # the same URI, another profile
    assert service.counts(T0) == {SALES: 2, SUPPORT: 1}
    assert service.count(3, T0) == 0
    assert service.targets(3, T0) == []


def test_remove_profile_forgets_its_bindings(service: LocationService) -> None:
    service.register(SALES, REGISTER("<sip:a@pbx>", "<sip:b@pbx>"), NAT, T0)
    service.register(SUPPORT, REGISTER("<sip:s@pbx>", expires="600"), NAT, T0)
    removed = service.remove_profile(SALES)
    assert sorted(contact_uris(removed)) == ["sip:a@pbx", "sip:b@pbx"]
    assert service.counts(T0) == {SUPPORT: 1}
    assert service.next_expiry() == T0 + 600
    assert service.remove_profile(SALES) == []
    assert len(service) == 1


# -- targets: NAT and preference -------------------------------------------------------


def test_the_nat_source_is_kept_and_follows_the_pbx(service: LocationService) -> None:
    outcome = service.register(SALES, REGISTER("<sip:sales@192.168.1.20:5060>"), NAT, T0)
    (binding,) = outcome.bindings
    assert binding.uri.host == "192.168.1.20"  # unreachable from here
    assert binding.source == ("udp", "203.0.113.7", 40123)  # reachable
    # The NAT mapping changed (router reboot): the refresh carries the new one.
    moved = ("udp", "203.0.113.7", 51000)
    service.register(SALES, REGISTER("<sip:sales@192.168.1.20:5060>", cseq=2), moved, T0 + 60)
    assert [b.source for b in service.targets(SALES, T0 + 60)] == [moved]


def test_targets_order_by_q_then_most_recent(service: LocationService) -> None:
    service.register(
        SALES,
        REGISTER(
            "<sip:low@pbx>;q=0.1",
            "<sip:mid@pbx>;q=0.5",
            "<sip:unmarked@pbx>",
            "<sip:top@pbx>;q=1.0",
        ),
        NAT,
        T0,
    )
    service.register(SALES, REGISTER("<sip:mid2@pbx>;q=0.5", cseq=2), NAT, T0 + 10)
    order = contact_uris(service.targets(SALES, T0 + 10))
    # "unmarked" and "top" tie at q=1.0 and were registered together.
    assert set(order[:2]) == {"sip:unmarked@pbx", "sip:top@pbx"}
    assert order[2:] == ["sip:mid2@pbx", "sip:mid@pbx", "sip:low@pbx"]
    # A refresh makes a contact the most recent of its q.
    service.register(SALES, REGISTER("<sip:mid@pbx>;q=0.5", cseq=3), NAT, T0 + 20)
    assert contact_uris(service.targets(SALES, T0 + 20))[2:4] == ["sip:mid@pbx", "sip:mid2@pbx"]


def test_the_200_ok_lists_bindings_in_target_order(service: LocationService) -> None:
    request = REGISTER("<sip:b@pbx>;q=0.2", "<sip:a@pbx>;q=0.9")
    outcome = service.register(SALES, request, NAT, T0)
    assert [u for u, _ in response_contacts(build_register_response(request, outcome, "t"))] == [
        "sip:a@pbx",
        "sip:b@pbx",
    ]


def test_target_uri_drops_what_a_request_uri_may_not_carry(service: LocationService) -> None:
    outcome = service.register(
        SALES, REGISTER("<sip:a@pbx;method=INVITE;transport=tcp?Subject=hi>"), NAT, T0
    )
    (binding,) = outcome.bindings
    assert binding.uri.headers == {"Subject": "hi"}
    assert str(binding.target_uri) == "sip:a@pbx;transport=tcp"
    plain = service.register(SUPPORT, REGISTER("<sip:b@pbx>"), NAT, T0).bindings[0]
    assert plain.target_uri is plain.uri


# -- malformed and refused contacts ----------------------------------------------------


@pytest.mark.parametrize(
    ("contacts", "expires", "reason"),
    [
        (("<sip:a@pbx>;expires=soon",), None, "Bad Contact expires"),
        (("<sip:a@pbx>;q=2",), None, "Bad q value"),
        (("<sip:a@pbx>",), "never", "Bad Expires"),
        (("<tel:+14155550123>",), None, "Contact must be a SIP or SIPS URI"),
        (("<mailto:sales@example.com>",), None, "Contact must be a SIP or SIPS URI"),
        (("<sip:a@pbx",), None, "Unterminated <> in Contact"),
    ],
)
def test_a_malformed_register_is_a_bad_request_and_changes_nothing(
    service: LocationService, contacts: tuple[str, ...], expires: str | None, reason: str
) -> None:
    service.register(SALES, REGISTER("<sip:kept@pbx>"), NAT, T0)
    request = parse_register(register_bytes(*contacts, cseq=2, expires=expires), validate=False)
    outcome = service.register(SALES, request, NAT, T0)
    assert (outcome.status, outcome.reason) == (400, reason)
    assert contact_uris(service.targets(SALES, T0)) == ["sip:kept@pbx"]
    assert build_register_response(request, outcome, "t").reason == reason


def test_only_register_requests_belong_here(service: LocationService) -> None:
    options = parse_datagram(register_bytes().replace(b"REGISTER", b"OPTIONS"))
    assert isinstance(options, Request)
    with pytest.raises(ValueError, match="not a REGISTER"):
        service.register(SALES, options, NAT, T0)


# -- RFC 4475 contacts -----------------------------------------------------------------


def torture(name: str) -> Request:
    require_corpus()
    (case,) = [c for c in load_cases() if c.name == name]
    return parse_register(case.data)


def test_rfc4475_cparam01_unknownparam_is_a_contact_parameter(service: LocationService) -> None:
    """§3.3.12: without <>, ;unknownparam belongs to the Contact, not the URI."""
    request = torture("cparam01")
    outcome = service.register(SALES, request, NAT, T0)
    assert outcome.ok
    (binding,) = outcome.bindings
    assert str(binding.uri) == "sip:+19725552222@gw1.example.net"
    assert binding.uri.params == {}
    assert binding.contact.params == {"unknownparam": None}
    (contact,) = build_register_response(request, outcome, "t").contacts
    assert contact.uri_text == "sip:+19725552222@gw1.example.net"
    assert contact.params == {"unknownparam": None, "expires": "3600"}


def test_rfc4475_cparam02_unknownparam_is_a_uri_parameter(service: LocationService) -> None:
    """§3.3.13: inside <>, unknownparam is part of the bound URI."""
    request = torture("cparam02")
    outcome = service.register(SALES, request, NAT, T0)
    assert outcome.ok
    (binding,) = outcome.bindings
    assert binding.uri.params == {"unknownparam": None}
    assert binding.contact.params == {}
    (contact,) = build_register_response(request, outcome, "t").contacts
    assert contact.uri_text == "sip:+19725552222@gw1.example.net;unknownparam"
    assert contact.params == {"expires": "3600"}


def test_rfc4475_cparam01_then_02_is_one_binding(service: LocationService) -> None:
    """The two URIs differ only by a parameter on one side, so §19.1.4 calls
    them equivalent: the second REGISTER (another Call-ID) replaces the first."""
    service.register(SALES, torture("cparam01"), NAT, T0)
    service.register(SALES, torture("cparam02"), NAT, T0 + 1)
    (binding,) = service.targets(SALES, T0 + 1)
    assert binding.uri.params == {"unknownparam": None}
    assert binding.call_id == "cparam02.70710@saturn.example.com"


def test_rfc4475_regescrt_escaped_route_is_stored_never_acted_on(
    service: LocationService,
) -> None:
    """§3.3.14: the registration succeeds and keeps the escaped Route header in
    the contact; nothing turns it into a Route of any message."""
    request = torture("regescrt")
    outcome = service.register(SALES, request, NAT, T0)
    assert outcome.ok
    (binding,) = outcome.bindings
    assert binding.uri.headers == {"Route": "%3Csip:sip.example.com%3E"}
    assert str(binding.uri) == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"
    assert str(binding.target_uri) == "sip:user@example.com"
    response = build_register_response(request, outcome, "t")
    assert response_contacts(response) == [
        ("sip:user@example.com?Route=%3Csip:sip.example.com%3E", 3600)
    ]
    assert "route" not in response.headers


def test_rfc4475_escnull_two_distinct_contacts(service: LocationService) -> None:
    """§3.1.1.4: %00 and %00%00 are different users, so two bindings."""
    outcome = service.register(SALES, torture("escnull"), NAT, T0)
    assert outcome.ok
    assert sorted(b.uri.user_unescaped() or "" for b in outcome.bindings) == ["\x00", "\x00\x00"]


# -- invariants under a random walk ----------------------------------------------------


def test_random_registers_keep_the_table_consistent() -> None:
    """Random REGISTERs, queries, removals and expiry on a moving clock: the
    per-profile bound holds, ``len`` matches what is stored, ``next_expiry`` is
    the earliest stored expiry, and refused requests change nothing."""
    policy = RegistrarPolicy(max_bindings=4)
    service = LocationService(policy)
    rng = random.Random(3261)
    cseq = dict.fromkeys(range(1, 4), 0)
    now = T0
    for _ in range(3000):  # bounded walk
        now += rng.choice([0.0, 0.5, 7.0, 90.0])
        profile = rng.randrange(1, 4)
        action = rng.random()
        if action < 0.05:
            service.expire(now)
        elif action < 0.07:
            service.remove_profile(profile)
        else:
            contacts = [
                f"<sip:u{rng.randrange(7)}@pbx>;expires={rng.choice([0, 30, 60, 300, 5000])}"
                for _ in range(rng.randrange(0, 4))
            ]
            cseq[profile] += rng.choice([1, 1, 1, 0, -1])
            call_id = rng.choice(["a@pbx", "b@pbx"])
            before = service.targets(profile, now)
            request = parse_register(
                register_bytes(*contacts, call_id=call_id, cseq=max(cseq[profile], 0)),
                validate=False,
            )
            outcome = service.register(profile, request, NAT, now)
            if not outcome.ok:
                assert service.targets(profile, now) == before
        stored = [b for p in range(1, 4) for b in service.targets(p, float("-inf"))]
        assert len(service) == len(stored)
        assert all(service.count(p, now) <= policy.max_bindings for p in range(1, 4))
        assert service.next_expiry() == min((b.expires_at for b in stored), default=None)


# -- construction and contract ---------------------------------------------------------


def test_policy_defaults() -> None:
    policy = RegistrarPolicy()
    assert (policy.min_expires, policy.max_expires, policy.default_expires) == (60, 3600, 3600)
    assert policy.max_bindings == 10


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_expires": 0},
        {"min_expires": 3601, "default_expires": 7200, "max_expires": 7200},
        {"min_expires": 600, "default_expires": 300},
        {"default_expires": 7200},
        {"max_bindings": 0},
    ],
)
def test_policy_refuses_inconsistent_limits(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        RegistrarPolicy(**kwargs)


def test_outcome_validates_on_construction() -> None:
    with pytest.raises(ValueError):
        RegisterOutcome(status=100, now=T0)
    binding = LocationService().register(SALES, REGISTER("<sip:a@pbx>"), NAT, T0).bindings[0]
    with pytest.raises(ValueError):
        RegisterOutcome(status=403, bindings=(binding,), now=T0)


def test_the_response_may_carry_a_date(service: LocationService) -> None:
    request = REGISTER("<sip:a@pbx>")
    outcome = service.register(SALES, request, NAT, T0)
    date = "Sat, 13 Nov 2010 23:29:00 GMT"
    assert build_register_response(request, outcome, "t", date=date).headers.get("date") == date
    assert "date" not in build_register_response(request, outcome, "t").headers


def test_the_registrar_is_sans_io() -> None:
    path = Path(registrar_module.__file__)
    assert not imported_modules(path) & IO_MODULES
