"""Digest computation, challenges and verification (sip.digest), with an explicit clock."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.auth import Challenge, Credentials, parse_challenge, parse_credentials
from sip.digest import (
    DEFAULT_NONCE_LIFETIME,
    DigestRealm,
    Refusal,
    Refused,
    UnsupportedChallengeError,
    Verified,
    authorize,
    canonical_algorithm,
    choose_challenge,
    digest_response,
    ha1,
    ha1_algorithm,
)

SECRET = b"0123456789abcdef0123456789abcdef"
REALM = "gw.example.com"
REQUEST_URI = "sip:gw.example.com"
USERS = {"alice": "correct horse", "bob": "battery staple"}
T0 = 1_000.0


def stored_ha1(username: str, algorithm: str) -> str | None:
    """The store: HA1 per (user, algorithm), never the password."""
    password = USERS.get(username)
    return None if password is None else ha1(username, REALM, password, algorithm)


def login(
    realm: DigestRealm,
    *,
    now: float,
    username: str = "alice",
    password: str = "correct horse",
    challenge_index: int = 0,
    nc: int = 1,
    challenge: Challenge | None = None,
) -> Credentials:
    """What a PBX sends after a 401: the challenge goes over the wire and back."""
    if challenge is None:
        issued = realm.challenge(now)
        challenge = parse_challenge(str(issued[challenge_index]))
    credentials = authorize(
        challenge,
        username=username,
        password=password,
        method="REGISTER",
        uri=REQUEST_URI,
        cnonce="0a4f113b",
        nc=nc,
    )
    return parse_credentials(str(credentials))


def check(realm: DigestRealm, credentials: Credentials, now: float) -> Verified | Refused:
    """What the registrar does with them."""
    algorithm = ha1_algorithm(credentials)
    assert algorithm is not None
    assert credentials.username is not None
    return realm.verify(
        credentials,
        method="REGISTER",
        ha1=stored_ha1(credentials.username, algorithm),
        now=now,
        request_uri=REQUEST_URI,
    )


def new_realm(**kwargs: Any) -> DigestRealm:
    return DigestRealm(REALM, SECRET, **kwargs)


# --- RFC test vectors ---------------------------------------------------------------


def test_rfc2617_worked_example():
    # RFC 2617 §3.5.
    response = digest_response(
        algorithm="MD5",
        ha1=ha1("Mufasa", "testrealm@host.com", "Circle Of Life", "MD5"),
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        method="GET",
        uri="/dir/index.html",
        qop="auth",
        nc="00000001",
        cnonce="0a4f113b",
    )
    assert response == "6629fae49393a05397450978507c4ef1"


RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ],
)
def test_rfc7616_examples(algorithm, expected):
    # RFC 7616 §3.9.1.
    response = digest_response(
        algorithm=algorithm,
        ha1=ha1("Mufasa", "http-auth@example.org", "Circle of Life", algorithm),
        nonce=RFC7616_NONCE,
        method="GET",
        uri="/dir/index.html",
        qop="auth",
        nc="00000001",
        cnonce=RFC7616_CNONCE,
    )
    assert response == expected


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ],
)
def test_authorize_reproduces_rfc7616_example(algorithm, expected):
    challenge = parse_challenge(
        f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
        f'nonce="{RFC7616_NONCE}", opaque="{RFC7616_OPAQUE}"'
    )
    credentials = authorize(
        challenge,
        username="Mufasa",
        password="Circle of Life",
        method="GET",
        uri="/dir/index.html",
        cnonce=RFC7616_CNONCE,
    )
    assert credentials == Credentials(
        username="Mufasa",
        realm="http-auth@example.org",
        nonce=RFC7616_NONCE,
        uri="/dir/index.html",
        response=expected,
        algorithm=algorithm,
        cnonce=RFC7616_CNONCE,
        opaque=RFC7616_OPAQUE,
        qop="auth",
        nc="00000001",
    )


def test_rfc2069_response_without_qop():
    # RFC 2617 §3.2.2.1: without qop, response = H(HA1:nonce:HA2).
    import hashlib

    h1 = ha1("Mufasa", "testrealm@host.com", "Circle Of Life", "MD5")
    h2 = hashlib.md5(b"GET:/dir/index.html").hexdigest()
    expected = hashlib.md5(f"{h1}:abc:{h2}".encode()).hexdigest()
    assert (
        digest_response(algorithm=None, ha1=h1, nonce="abc", method="GET", uri="/dir/index.html")
        == expected
    )


def test_sess_ha1_binds_nonce_and_cnonce():
    import hashlib

    h1 = ha1("u", "r", "p", "MD5-sess")
    assert h1 == ha1("u", "r", "p", "MD5")
    session = hashlib.md5(f"{h1}:n:c".encode()).hexdigest()
    h2 = hashlib.md5(b"INVITE:sip:x").hexdigest()
    expected = hashlib.md5(f"{session}:n:00000001:c:auth:{h2}".encode()).hexdigest()
    response = digest_response(
        algorithm="md5-sess", ha1=h1, nonce="n", method="INVITE", uri="sip:x", qop="auth",
        nc="00000001", cnonce="c",
    )  # fmt: skip
    assert response == expected


def test_algorithm_names():
    assert canonical_algorithm(None) == "MD5"  # RFC 7616 §3.3: absent means MD5
    assert canonical_algorithm("sha-256") == "SHA-256"
    assert canonical_algorithm("Md5-Sess") == "MD5-sess"
    assert canonical_algorithm("SHA-512-256") is None
    assert ha1("u", "r", "p", "sha-256") == ha1("u", "r", "p", "SHA-256")
    with pytest.raises(ValueError):
        ha1("u", "r", "p", "SHA-512-256")


def test_digest_response_refuses_what_it_cannot_compute():
    base = {"algorithm": "MD5", "ha1": "0" * 32, "nonce": "n", "method": "M", "uri": "u"}
    with pytest.raises(ValueError):
        digest_response(**base, qop="auth-int", nc="00000001", cnonce="c")
    with pytest.raises(ValueError):
        digest_response(**base, qop="auth")
    with pytest.raises(ValueError):
        digest_response(**{**base, "algorithm": "MD5-sess"})


# --- challenges ---------------------------------------------------------------------


def test_challenges_offer_sha256_then_md5():
    challenges = new_realm().challenge(T0)
    assert [c.algorithm for c in challenges] == ["SHA-256", "MD5"]
    for challenge in challenges:
        assert challenge.realm == REALM
        assert challenge.qop_options == ("auth",)
        assert challenge.stale is False
        assert challenge.nonce == challenges[0].nonce
    assert str(challenges[1]) == (
        f'Digest realm="{REALM}", nonce="{challenges[1].nonce}", algorithm=MD5, qop="auth"'
    )


def test_stale_challenges():
    assert all(c.stale for c in new_realm().challenge(T0, stale=True))
    assert "stale=true" in str(new_realm().challenge(T0, stale=True)[0])


def test_nonces_are_unique_at_the_same_instant():
    realm = new_realm()
    nonces = {realm.challenge(T0)[0].nonce for _ in range(100)}
    assert len(nonces) == 100


def test_configured_algorithms():
    realm = new_realm(algorithms=["md5", "SHA-256-sess"])
    assert realm.algorithms == ("MD5", "SHA-256-sess")
    assert [c.algorithm for c in realm.challenge(T0)] == ["MD5", "SHA-256-sess"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"secret": b"short"},
        {"nonce_lifetime": 0},
        {"nonce_lifetime": -1.0},
        {"nonce_lifetime": float("inf")},
        {"algorithms": []},
        {"algorithms": ["SHA-512-256"]},
        {"algorithms": ["MD5", "md5"]},
        {"max_tracked_nonces": 0},
        {"realm": "bad\r\nrealm"},
    ],
)
def test_realm_configuration_is_validated(kwargs):
    settings = {"realm": REALM, "secret": SECRET, **kwargs}
    with pytest.raises(ValueError):
        DigestRealm(settings.pop("realm"), settings.pop("secret"), **settings)


def test_challenge_needs_a_clock_in_range():
    with pytest.raises(ValueError):
        new_realm().challenge(-1.0)


# --- verification -------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 1])
def test_sip_round_trip(index):
    realm = new_realm()
    credentials = login(realm, now=T0, challenge_index=index)
    expected_algorithm = ["SHA-256", "MD5"][index]
    assert credentials.algorithm == expected_algorithm
    assert check(realm, credentials, T0 + 1) == Verified(
        username="alice", algorithm=expected_algorithm
    )
    assert realm.tracked_nonces == 1


@pytest.mark.parametrize("algorithm", ["MD5-sess", "SHA-256-sess"])
def test_sess_round_trip(algorithm):
    realm = new_realm(algorithms=[algorithm])
    credentials = login(realm, now=T0)
    assert check(realm, credentials, T0) == Verified(username="alice", algorithm=algorithm)


def test_nonce_reused_with_increasing_nc():
    realm = new_realm()
    challenge = realm.challenge(T0)[0]
    for nc in (1, 2, 5, 6):
        credentials = login(realm, now=T0 + nc, challenge=challenge, nc=nc)
        assert isinstance(check(realm, credentials, T0 + nc), Verified)


def test_wrong_password():
    realm = new_realm()
    credentials = login(realm, now=T0, password="wrong")
    assert check(realm, credentials, T0) == Refused(reason=Refusal.BAD_RESPONSE, stale=False)


def test_unknown_user_looks_like_wrong_password():
    realm = new_realm()
    nonce_challenge = realm.challenge(T0)[0]
    unknown = login(realm, now=T0, username="mallory", password="x", challenge=nonce_challenge)
    wrong = login(realm, now=T0, username="alice", password="x", challenge=nonce_challenge)
    unknown_result = check(realm, unknown, T0)
    wrong_result = check(realm, wrong, T0)
    assert unknown_result == wrong_result == Refused(reason=Refusal.BAD_RESPONSE)
    # Also after the nonce expired: neither reveals more than the other.
    late = T0 + DEFAULT_NONCE_LIFETIME + 1
    assert check(realm, unknown, late) == check(realm, wrong, late)


def test_unknown_user_is_refused_even_with_the_dummy_ha1():
    # Whatever HA1 is used internally for unknown users, ha1=None never verifies.
    realm = new_realm()
    credentials = login(realm, now=T0)
    result = realm.verify(credentials, method="REGISTER", ha1=None, now=T0)
    assert result == Refused(reason=Refusal.BAD_RESPONSE)


def test_expired_nonce_is_stale():
    realm = new_realm()
    credentials = login(realm, now=T0)
    result = check(realm, credentials, T0 + DEFAULT_NONCE_LIFETIME + 0.001)
    assert result == Refused(reason=Refusal.NONCE_EXPIRED, stale=True)
    # The client retries transparently with a fresh nonce and the same password.
    retry = login(realm, now=T0 + DEFAULT_NONCE_LIFETIME + 1)
    assert isinstance(check(realm, retry, T0 + DEFAULT_NONCE_LIFETIME + 1), Verified)


def test_nonce_valid_until_end_of_lifetime():
    realm = new_realm(nonce_lifetime=30)
    credentials = login(realm, now=T0)
    assert isinstance(check(realm, credentials, T0 + 30), Verified)


def test_expired_nonce_with_wrong_password_is_not_stale():
    # RFC 7616 §3.3: stale only when the digest itself was right.
    realm = new_realm()
    credentials = login(realm, now=T0, password="wrong")
    result = check(realm, credentials, T0 + DEFAULT_NONCE_LIFETIME + 1)
    assert result == Refused(reason=Refusal.BAD_RESPONSE, stale=False)


def test_nonce_from_the_future_is_stale():
    realm = new_realm()
    credentials = login(realm, now=T0)
    assert check(realm, credentials, T0 - 1) == Refused(reason=Refusal.NONCE_EXPIRED, stale=True)


def _with_nonce(challenge: Challenge, nonce: str) -> Challenge:
    return dataclasses.replace(challenge, nonce=nonce)


def _flip(text: str, index: int) -> str:
    replacement = "B" if text[index] == "A" else "A"
    return text[:index] + replacement + text[index + 1 :]


_BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _respell(nonce: str) -> str:
    # 32 bytes take 43 characters; the last one has two spare low bits that
    # decoders ignore.  Setting one gives another string for the same bytes.
    last = _BASE64URL.index(nonce[-1])
    return nonce[:-1] + _BASE64URL[last ^ 1]


@pytest.mark.parametrize(
    "forge",
    [
        lambda nonce: _flip(nonce, 0),  # the instance tag
        lambda nonce: _flip(nonce, 10),  # the issue time: extending its life
        lambda nonce: _flip(nonce, 20),  # the counter
        lambda nonce: _flip(nonce, 40),  # the MAC
        lambda nonce: nonce[:-1],
        lambda nonce: nonce + "A",
        _respell,  # the same bytes, spelt differently
        lambda nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        lambda nonce: "",
        lambda nonce: "é" * 43,
        lambda nonce: "=" * 43,
    ],
)
def test_forged_nonce(forge):
    realm = new_realm()
    challenge = realm.challenge(T0)[0]
    assert challenge.nonce is not None
    forged = _with_nonce(challenge, forge(challenge.nonce))
    credentials = login(realm, now=T0, challenge=forged)
    assert check(realm, credentials, T0) == Refused(reason=Refusal.FORGED_NONCE)


def test_nonce_sealed_with_another_secret_or_realm_is_forged():
    other_secret = DigestRealm(REALM, b"another secret of 32 bytes......")
    other_realm = DigestRealm("other.example.com", SECRET)
    realm = new_realm()
    for issuer in (other_secret, other_realm):
        nonce = issuer.challenge(T0)[0].nonce
        assert nonce is not None
        credentials = login(realm, now=T0, challenge=_with_nonce(realm.challenge(T0)[0], nonce))
        assert check(realm, credentials, T0) == Refused(reason=Refusal.FORGED_NONCE)


def test_nonce_from_another_instance_is_stale():
    # Same secret (a restarted process, another node): the MAC holds, but its
    # nonce-counts are unknown here, so the client is sent for a fresh nonce.
    before_restart = new_realm()
    after_restart = new_realm()
    credentials = login(before_restart, now=T0)
    result = check(after_restart, credentials, T0 + 1)
    assert result == Refused(reason=Refusal.NONCE_FORGOTTEN, stale=True)
    assert isinstance(check(before_restart, credentials, T0 + 1), Verified)


def test_nc_replay():
    realm = new_realm()
    challenge = realm.challenge(T0)[0]
    first = login(realm, now=T0, challenge=challenge, nc=1)
    second = login(realm, now=T0, challenge=challenge, nc=2)
    replayed = Refused(reason=Refusal.REPLAYED_NC, stale=True)
    assert isinstance(check(realm, first, T0), Verified)
    assert check(realm, first, T0 + 1) == replayed
    assert isinstance(check(realm, second, T0 + 2), Verified)
    assert check(realm, second, T0 + 3) == replayed
    assert check(realm, first, T0 + 4) == replayed


def test_failed_attempts_do_not_advance_nc():
    # A guesser must not be able to push the count up and lock out the owner.
    realm = new_realm()
    challenge = realm.challenge(T0)[0]
    guess = login(realm, now=T0, challenge=challenge, password="guess", nc=9)
    assert check(realm, guess, T0) == Refused(reason=Refusal.BAD_RESPONSE)
    assert realm.tracked_nonces == 0
    assert isinstance(check(realm, login(realm, now=T0, challenge=challenge), T0), Verified)


def test_nonce_state_is_bounded_and_evicted_nonces_are_stale():
    realm = new_realm(max_tracked_nonces=2)
    challenges = [realm.challenge(T0 + i)[0] for i in range(3)]
    for i, challenge in enumerate(challenges):
        assert isinstance(
            check(realm, login(realm, now=T0, challenge=challenge), T0 + 3 + i), Verified
        )
        assert realm.tracked_nonces == min(i + 1, 2)
    # The earliest nonce's count was evicted: never accepted blindly again.
    again = login(realm, now=T0, challenge=challenges[0], nc=2)
    assert check(realm, again, T0 + 10) == Refused(reason=Refusal.NONCE_FORGOTTEN, stale=True)
    # The two newest are still tracked and keep refusing replays.
    replay = login(realm, now=T0, challenge=challenges[2], nc=1)
    assert check(realm, replay, T0 + 10) == Refused(reason=Refusal.REPLAYED_NC, stale=True)
    # A nonce issued after the eviction is fine.
    fresh = login(realm, now=T0 + 11)
    assert isinstance(check(realm, fresh, T0 + 11), Verified)
    assert realm.tracked_nonces == 2


def test_expired_nonce_state_is_purged():
    realm = new_realm(nonce_lifetime=10)
    for i in range(5):
        assert isinstance(check(realm, login(realm, now=T0 + i), T0 + i), Verified)
    assert realm.tracked_nonces == 5
    assert isinstance(check(realm, login(realm, now=T0 + 100), T0 + 100), Verified)
    assert realm.tracked_nonces == 1


def test_nonce_issued_at_the_same_time_as_an_evicted_one_is_stale():
    realm = new_realm(max_tracked_nonces=1)
    a, b, c = (realm.challenge(T0)[0] for _ in range(3))
    assert isinstance(check(realm, login(realm, now=T0, challenge=a), T0), Verified)
    assert isinstance(check(realm, login(realm, now=T0, challenge=b), T0), Verified)
    # c was issued in the same millisecond as a, whose state was evicted: be safe.
    result = check(realm, login(realm, now=T0, challenge=c), T0)
    assert result == Refused(reason=Refusal.NONCE_FORGOTTEN, stale=True)


def test_realm_mismatch():
    realm = new_realm()
    challenge = dataclasses.replace(realm.challenge(T0)[0], realm="other.example.com")
    credentials = login(realm, now=T0, challenge=challenge)
    assert check(realm, credentials, T0) == Refused(reason=Refusal.REALM_MISMATCH)


def test_uri_mismatch():
    realm = new_realm()
    credentials = login(realm, now=T0)
    result = realm.verify(
        credentials,
        method="REGISTER",
        ha1=stored_ha1("alice", "SHA-256"),
        now=T0,
        request_uri="sip:elsewhere.example.com",
    )
    assert result == Refused(reason=Refusal.URI_MISMATCH)


def test_method_is_part_of_the_digest():
    realm = new_realm()
    credentials = login(realm, now=T0)  # computed for REGISTER
    result = realm.verify(credentials, method="INVITE", ha1=stored_ha1("alice", "SHA-256"), now=T0)
    assert result == Refused(reason=Refusal.BAD_RESPONSE)


@pytest.mark.parametrize(
    "missing", ["username", "realm", "nonce", "uri", "response", "nc", "cnonce"]
)
def test_missing_fields(missing):
    realm = new_realm()
    removed: dict[str, Any] = {missing: None}
    credentials = dataclasses.replace(login(realm, now=T0), **removed)
    result = realm.verify(
        credentials, method="REGISTER", ha1=stored_ha1("alice", "SHA-256"), now=T0
    )
    assert result == Refused(reason=Refusal.MISSING_FIELD)


def test_sess_without_cnonce_is_incomplete():
    realm = new_realm(algorithms=["MD5-sess"])
    credentials = dataclasses.replace(login(realm, now=T0), qop=None, nc=None, cnonce=None)
    result = realm.verify(credentials, method="REGISTER", ha1=stored_ha1("alice", "MD5"), now=T0)
    assert result == Refused(reason=Refusal.MISSING_FIELD)


def test_wrong_scheme():
    realm = new_realm()
    result = realm.verify(
        parse_credentials("NoOneKnowsThisScheme opaque-data=here"),
        method="REGISTER",
        ha1=None,
        now=T0,
    )
    assert result == Refused(reason=Refusal.WRONG_SCHEME)
    assert ha1_algorithm(parse_credentials("Basic abc=")) is None


@pytest.mark.parametrize("algorithm", ["SHA-512-256", "MD5-sess", "bogus"])
def test_unsupported_or_disallowed_algorithm(algorithm):
    realm = new_realm()  # SHA-256 and MD5 only
    credentials = dataclasses.replace(login(realm, now=T0), algorithm=algorithm)
    result = realm.verify(credentials, method="REGISTER", ha1=None, now=T0)
    assert result == Refused(reason=Refusal.UNSUPPORTED_ALGORITHM)


def test_md5_can_be_switched_off():
    realm = new_realm(algorithms=["SHA-256"])
    md5 = login(new_realm(), now=T0, challenge_index=1)
    md5 = dataclasses.replace(md5, nonce=realm.challenge(T0)[0].nonce)
    assert check(realm, md5, T0) == Refused(reason=Refusal.UNSUPPORTED_ALGORITHM)


def test_auth_int_is_refused_clearly():
    realm = new_realm()
    credentials = dataclasses.replace(login(realm, now=T0), qop="auth-int")
    result = realm.verify(
        credentials, method="REGISTER", ha1=stored_ha1("alice", "SHA-256"), now=T0
    )
    assert result == Refused(reason=Refusal.UNSUPPORTED_QOP)


def test_rfc2069_credentials_without_qop():
    # Old PBXs ignore qop: accepted within the nonce lifetime, repeatedly, as
    # there is no nonce-count to detect a replay with.
    realm = new_realm()
    challenge = dataclasses.replace(realm.challenge(T0)[1], qop_options=())
    credentials = login(realm, now=T0, challenge=challenge)
    assert (credentials.qop, credentials.nc, credentials.cnonce) == (None, None, None)
    assert credentials.algorithm == "MD5"
    assert check(realm, credentials, T0) == Verified(username="alice", algorithm="MD5")
    assert check(realm, credentials, T0 + 1) == Verified(username="alice", algorithm="MD5")
    assert realm.tracked_nonces == 0
    late = T0 + DEFAULT_NONCE_LIFETIME + 1
    assert check(realm, credentials, late) == Refused(reason=Refusal.NONCE_EXPIRED, stale=True)
    strict = new_realm(accept_without_qop=False)
    assert check(strict, credentials, T0) == Refused(reason=Refusal.QOP_REQUIRED)


def test_rfc2069_credentials_without_algorithm_mean_md5():
    realm = new_realm()
    challenge = dataclasses.replace(realm.challenge(T0)[1], qop_options=(), algorithm=None)
    credentials = login(realm, now=T0, challenge=challenge)
    assert credentials.algorithm is None
    assert ha1_algorithm(credentials) == "MD5"
    assert check(realm, credentials, T0) == Verified(username="alice", algorithm="MD5")


def test_response_case_is_ignored():
    realm = new_realm()
    credentials = login(realm, now=T0)
    assert credentials.response is not None
    shouting = dataclasses.replace(credentials, response=credentials.response.upper())
    assert isinstance(check(realm, shouting, T0), Verified)


def test_refusal_reasons_are_phrases():
    for refusal in Refusal:
        assert refusal.value.isascii()
        assert refusal.value.isprintable()


# --- the client side ----------------------------------------------------------------


def test_choose_challenge_takes_the_topmost_supported():
    challenges = [
        parse_challenge("Bearer realm=x"),
        parse_challenge('Digest realm="r", nonce="n", algorithm=SHA-512-256'),
        parse_challenge('Digest realm="r", nonce="n", qop="auth-int"'),
        parse_challenge('Digest realm="r", nonce="n", algorithm=SHA-256, qop="auth-int,auth"'),
        parse_challenge('Digest realm="r", nonce="n", algorithm=MD5'),
    ]
    assert choose_challenge(challenges) is challenges[3]
    assert choose_challenge(challenges[:3]) is None


@pytest.mark.parametrize(
    "value",
    [
        "Bearer realm=x",
        'Digest realm="r", nonce="n", algorithm=SHA-512-256',
        'Digest realm="r", nonce="n", qop="auth-int"',
    ],
)
def test_authorize_refuses_unanswerable_challenges(value):
    with pytest.raises(UnsupportedChallengeError) as info:
        authorize(
            parse_challenge(value),
            username="u",
            password="p",
            method="INVITE",
            uri="sip:x",
            cnonce="c",
        )
    assert info.value.status == 502


def test_authorize_formats_nc_and_checks_its_range():
    challenge = new_realm().challenge(T0)[0]
    kwargs = {"username": "u", "password": "p", "method": "INVITE", "uri": "sip:x", "cnonce": "c"}
    assert authorize(challenge, **kwargs, nc=255).nc == "000000ff"
    for bad in (0, 2**32):
        with pytest.raises(ValueError):
            authorize(challenge, **kwargs, nc=bad)


# --- properties and hygiene ---------------------------------------------------------

_text = st.text(
    st.characters(blacklist_categories=["Cc", "Cs"], blacklist_characters="\x7f"), max_size=40
)


_garbage = st.builds(
    Credentials,
    username=st.none() | _text,
    realm=st.none() | st.just(REALM) | _text,
    nonce=st.none() | _text | st.from_regex(r"[A-Za-z0-9_-]{43}", fullmatch=True),
    uri=st.none() | _text,
    response=st.none() | _text | st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
    algorithm=st.none() | st.sampled_from(["MD5", "SHA-256", "md5-sess", "SHA-256-sess", "x"]),
    cnonce=st.none() | _text,
    qop=st.none() | st.sampled_from(["auth", "AUTH", "auth-int", "x"]),
    nc=st.none() | st.from_regex(r"[0-9a-fA-F]{8}", fullmatch=True),
)


@given(_garbage, st.booleans(), st.floats(min_value=0, max_value=1e9))
def test_verify_never_raises_and_never_accepts_garbage(credentials, known, now):
    realm = new_realm(algorithms=["SHA-256", "MD5", "MD5-sess", "SHA-256-sess"])
    realm.challenge(T0)
    result = realm.verify(
        credentials,
        method="REGISTER",
        ha1=stored_ha1("alice", "MD5") if known else None,
        now=now,
    )
    assert isinstance(result, Refused)
