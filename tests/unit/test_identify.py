"""Who is calling (gateway.proxy.identify): the typed outcomes, the most
specific address first, and the digest refusal that carries its answer.
(Served end to end: tests/e2e/test_identify_e2e.py.)"""

from __future__ import annotations

from decimal import Decimal

from gateway.config.settings import CarrierSettings
from gateway.proxy.directory import Directory, ProfileEntry
from gateway.proxy.identify import (
    FROM_CARRIER,
    FromProfile,
    Refused,
    by_address,
    by_digest,
)
from sip.auth import Challenge, Credentials
from sip.digest import DigestRealm, authorize, ha1
from sip.message import Request
from sip.parser import parse_datagram
from sip.uri import parse_uri

REALM = "sip.example.net"
CARRIER_HOST = "203.0.113.20"


def profile(profile_id: int, *, ip: str | None = None, port: int | None = None) -> ProfileEntry:
    registration = ip is None
    return ProfileEntry(
        id=profile_id,
        account_id=1,
        name=f"p{profile_id}",
        auth_mode="registration" if registration else "ip",
        sip_username=f"user{profile_id}",
        ha1={"MD5": ha1(f"user{profile_id}", REALM, "secret", "MD5")} if registration else {},
        ip=ip,
        port=port,
        channel_limit=300,
        account="acme",
        credit=Decimal(0),
    )


ON_CARRIER_HOST = profile(1, ip=CARRIER_HOST, port=5070)  # a PBX on the carrier's host
ELSEWHERE = profile(2, ip="198.51.100.7", port=5070)
REGISTERED = profile(3)
DIRECTORY = Directory([ON_CARRIER_HOST, ELSEWHERE, REGISTERED], {}, version=1)
#: Trusted from any port of its host; its URI's own address is exact.
CARRIER = CarrierSettings(
    uri=parse_uri(f"sip:{CARRIER_HOST}:5060"), sources=((CARRIER_HOST, None),)
)


def test_the_most_specific_address_wins() -> None:
    # 1. The carrier URI's own address outranks anything else.
    assert by_address(CARRIER, DIRECTORY, ("UDP", CARRIER_HOST, 5060)) is FROM_CARRIER
    # 2. An IP profile's exact UDP address outranks the carrier's host.
    assert by_address(CARRIER, DIRECTORY, ("UDP", CARRIER_HOST, 5070)) == FromProfile(
        ON_CARRIER_HOST
    )
    # 3. Any other port of the carrier's host is the carrier's.
    assert by_address(CARRIER, DIRECTORY, ("UDP", CARRIER_HOST, 41000)) is FROM_CARRIER
    # 4. Over TCP an IP profile is matched by its IP alone, after the carrier.
    assert by_address(CARRIER, DIRECTORY, ("TCP", "198.51.100.7", 50123)) == FromProfile(ELSEWHERE)
    assert by_address(CARRIER, DIRECTORY, ("TCP", CARRIER_HOST, 50123)) is FROM_CARRIER
    # Nobody known: the caller must authenticate.
    assert by_address(CARRIER, DIRECTORY, ("UDP", "198.51.100.7", 5999)) is None


def _invite(authorization: str = "") -> Request:
    text = (
        "INVITE sip:+442079460000@192.0.2.1 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bKid1\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:user3@198.51.100.9>;tag=a\r\n"
        "To: <sip:+442079460000@192.0.2.1>\r\n"
        "Call-ID: identify-1\r\n"
        "CSeq: 2 INVITE\r\n"
        f"{authorization}"
        "Content-Length: 0\r\n\r\n"
    )
    request = parse_datagram(text.encode())
    assert isinstance(request, Request)
    return request


def _answer(challenge: Challenge, password: str) -> Credentials:
    return authorize(
        challenge,
        username="user3",
        password=password,
        method="INVITE",
        uri="sip:+442079460000@192.0.2.1",
        cnonce="c0ffee",
    )


def test_digest_gives_the_profile_or_a_challenge_to_answer_with() -> None:
    digest = DigestRealm(REALM, b"k" * 32, algorithms=("MD5",))
    refused = by_digest(digest, DIRECTORY, _invite(), now=0.0)
    assert isinstance(refused, Refused)
    assert refused.status == 407 and not refused.bad_credentials
    ((header, challenge),) = refused.headers
    assert header == "Proxy-Authenticate" and challenge.startswith("Digest ")

    (offered,) = digest.challenge(0.0)
    good = _answer(offered, "secret")
    assert by_digest(
        digest, DIRECTORY, _invite(f"Proxy-Authorization: {good}\r\n"), now=1.0
    ) == FromProfile(REGISTERED)

    bad = _answer(offered, "wrong")
    refused = by_digest(digest, DIRECTORY, _invite(f"Proxy-Authorization: {bad}\r\n"), now=1.0)
    assert isinstance(refused, Refused) and refused.status == 407 and refused.bad_credentials
