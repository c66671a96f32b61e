"""Parsing and serialising of WWW-Authenticate / Authorization values (sip.auth)."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sip.auth import (
    MAX_AUTH_PARAMS,
    Challenge,
    Credentials,
    parse_challenge,
    parse_credentials,
)
from sip.errors import ParseError, SIPError

# RFC 2617 §3.5, folded over several lines as the RFC prints it.
RFC2617_AUTHORIZATION = (
    'Digest username="Mufasa",\r\n'
    '     realm="testrealm@host.com",\r\n'
    '     nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",\r\n'
    '     uri="/dir/index.html",\r\n'
    "     qop=auth,\r\n"
    "     nc=00000001,\r\n"
    '     cnonce="0a4f113b",\r\n'
    '     response="6629fae49393a05397450978507c4ef1",\r\n'
    '     opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)

# RFC 3261 §20.44 (the example there, on one line).
RFC3261_WWW_AUTHENTICATE = (
    'Digest realm="atlanta.com", domain="sip:boxesbybob.com", qop="auth", '
    'nonce="f84f1cec41e6cbe5aea9c8e88d359", opaque="", stale=FALSE, algorithm=MD5'
)

# RFC 7616 §3.9.1.
RFC7616_WWW_AUTHENTICATE = (
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)

VALID_CHALLENGES = [
    RFC3261_WWW_AUTHENTICATE,
    RFC7616_WWW_AUTHENTICATE,
    'Digest realm="asterisk",nonce="1a2b3c4d"',
    'Digest realm="gw", nonce="abc", stale=true, algorithm=MD5-sess, qop="auth"',
    "NoOneKnowsThisScheme opaque-data=here",
    'Basic realm="x"',
]
VALID_CREDENTIALS = [
    RFC2617_AUTHORIZATION,
    'Digest username="Alice", realm="atlanta.com", nonce="84a4cc6f3082121f32b42a2187831a9e", '
    'response="7587245234b3434cc3412213e5f113a5432"',
    'Digest username="bob\\"s", realm="x", nonce="n", uri="sip:x", response="r", '
    'algorithm="SHA-256", qop="auth", nc=0000000A, cnonce="c", userhash=false',
    "NoOneKnowsThisScheme opaque-data=here",
    "Basic dXNlcjpwYXNzd29yZA==",
]


# --- challenges ---------------------------------------------------------------------


def test_rfc3261_challenge_parses():
    challenge = parse_challenge(RFC3261_WWW_AUTHENTICATE)
    assert challenge == Challenge(
        realm="atlanta.com",
        nonce="f84f1cec41e6cbe5aea9c8e88d359",
        opaque="",
        algorithm="MD5",
        qop_options=("auth",),
        stale=False,
        params=(("domain", "sip:boxesbybob.com"),),
    )


def test_rfc7616_challenge_parses_qop_list_with_spaces():
    challenge = parse_challenge(RFC7616_WWW_AUTHENTICATE)
    assert challenge.realm == "http-auth@example.org"
    assert challenge.qop_options == ("auth", "auth-int")
    assert challenge.algorithm == "SHA-256"
    assert challenge.nonce == "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
    assert challenge.opaque == "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


def test_challenge_serialises_canonically():
    challenge = Challenge(
        realm="gw.example.com", nonce="abc", algorithm="MD5", qop_options=("auth",)
    )
    expected = 'Digest realm="gw.example.com", nonce="abc", algorithm=MD5, qop="auth"'
    assert challenge.serialise() == expected
    assert str(challenge) == expected


def test_challenge_serialisation_quotes_domain_and_writes_stale():
    challenge = parse_challenge(RFC3261_WWW_AUTHENTICATE.replace("FALSE", "TRUE"))
    assert challenge.serialise() == (
        'Digest realm="atlanta.com", nonce="f84f1cec41e6cbe5aea9c8e88d359", opaque="", '
        'algorithm=MD5, qop="auth", stale=true, domain="sip:boxesbybob.com"'
    )


@pytest.mark.parametrize(
    ("text", "stale"),
    [("true", True), ("TRUE", True), ('"true"', True), ("false", False), ("maybe", False)],
)
def test_stale_is_true_only_for_true(text, stale):
    # RFC 7616 §3.3: anything other than TRUE means false.
    assert parse_challenge(f'Digest realm="r", nonce="n", stale={text}').stale is stale


def test_scheme_and_names_are_case_insensitive():
    challenge = parse_challenge('DIGEST REALM="r", Nonce="n", QOP="auth", Algorithm=sha-256')
    assert challenge == Challenge(realm="r", nonce="n", qop_options=("auth",), algorithm="sha-256")
    assert challenge.scheme == "Digest"


def test_unquoted_values_are_accepted():
    # Some PBXs forget the quotes around realm and nonce.
    challenge = parse_challenge("Digest realm=asterisk, nonce=7ypf/xlj9XXw+fDP=, qop=auth")
    assert challenge.realm == "asterisk"
    assert challenge.nonce == "7ypf/xlj9XXw+fDP="
    assert challenge.qop_options == ("auth",)


def test_whitespace_around_equals_and_commas():
    challenge = parse_challenge('Digest  realm = "r" ,\tnonce\t=\t"n"  ,  algorithm = MD5 ')
    assert (challenge.realm, challenge.nonce, challenge.algorithm) == ("r", "n", "MD5")


def test_empty_list_elements_are_tolerated():
    challenge = parse_challenge('Digest , realm="r",, nonce="n",')
    assert (challenge.realm, challenge.nonce) == ("r", "n")


def test_digest_challenge_needs_realm_and_nonce():
    with pytest.raises(ParseError):
        parse_challenge('Digest nonce="n"')
    with pytest.raises(ParseError):
        parse_challenge('Digest realm="r"')
    with pytest.raises(ValueError):
        Challenge(realm="r")


def test_unknown_challenge_scheme_keeps_params():
    challenge = parse_challenge('Bearer realm="example", error=invalid_token')
    assert challenge.scheme == "Bearer"
    assert challenge.realm is None
    assert challenge.params == (("realm", "example"), ("error", "invalid_token"))
    assert challenge.serialise() == "Bearer realm=example, error=invalid_token"


# --- credentials --------------------------------------------------------------------


def test_rfc2617_credentials_parse_across_folded_lines():
    credentials = parse_credentials(RFC2617_AUTHORIZATION)
    assert credentials == Credentials(
        username="Mufasa",
        realm="testrealm@host.com",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        uri="/dir/index.html",
        qop="auth",
        nc="00000001",
        cnonce="0a4f113b",
        response="6629fae49393a05397450978507c4ef1",
        opaque="5ccc069c403ebaf9f0171e9517f40e41",
    )


def test_credentials_serialise_canonically():
    credentials = parse_credentials(RFC2617_AUTHORIZATION)
    assert credentials.serialise() == (
        'Digest username="Mufasa", realm="testrealm@host.com", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", '
        'response="6629fae49393a05397450978507c4ef1", cnonce="0a4f113b", '
        'opaque="5ccc069c403ebaf9f0171e9517f40e41", qop=auth, nc=00000001'
    )
    assert str(credentials) == credentials.serialise()


def test_rfc3261_credentials_without_qop():
    credentials = parse_credentials(VALID_CREDENTIALS[1])
    assert credentials.username == "Alice"
    assert credentials.uri is None  # missing fields are for sip.digest to refuse
    assert credentials.qop is None
    assert credentials.nc is None


def test_quoted_tokens_and_extensions():
    credentials = parse_credentials(VALID_CREDENTIALS[2])
    assert credentials.username == 'bob"s'
    assert credentials.algorithm == "SHA-256"
    assert credentials.qop == "auth"
    assert credentials.nc == "0000000A"
    assert credentials.params == (("userhash", "false"),)
    assert 'username="bob\\"s"' in credentials.serialise()
    assert 'algorithm=SHA-256, cnonce="c", qop=auth, nc=0000000A, userhash=false' in str(
        credentials
    )


def test_escapes_round_trip():
    credentials = parse_credentials(r'Digest username="a\"b\\c\d", realm="r"')
    assert credentials.username == 'a"b\\cd'
    assert credentials.serialise() == r'Digest username="a\"b\\cd", realm="r"'
    assert parse_credentials(credentials.serialise()) == credentials


def test_non_ascii_in_quoted_strings():
    credentials = parse_credentials('Digest username="björk", realm="réseau"')
    assert credentials.username == "björk"
    assert parse_credentials(str(credentials)) == credentials


def test_unknown_scheme_rfc4475():
    # RFC 4475 §3.3.7: the registrar must be able to read this to answer 401.
    credentials = parse_credentials("NoOneKnowsThisScheme opaque-data=here")
    assert credentials.scheme == "NoOneKnowsThisScheme"
    assert credentials.params == (("opaque-data", "here"),)
    assert credentials.username is None
    assert str(credentials) == "NoOneKnowsThisScheme opaque-data=here"


def test_token68_credentials():
    credentials = parse_credentials("Basic dXNlcjpwYXNzd29yZA==")
    assert credentials.scheme == "Basic"
    assert credentials.token68 == "dXNlcjpwYXNzd29yZA=="
    assert str(credentials) == "Basic dXNlcjpwYXNzd29yZA=="
    with pytest.raises(ParseError):
        parse_credentials("Digest dXNlcjpwYXNzd29yZA")


def test_bare_scheme_parses():
    assert parse_credentials("Digest") == Credentials()
    assert parse_credentials("Negotiate").scheme == "Negotiate"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        '"Digest" realm="r"',
        'Digest,realm="r"',
        'Digest realm="r" nonce="n"',
        'Digest realm="r", nonce',
        'Digest realm="r", nonce=',
        'Digest realm="r", nonce="n',
        'Digest realm="r", =n',
        'Digest realm="r", realm="s", nonce="n"',
        'Digest realm="r", REALM="s", nonce="n"',
        'Digest realm="a\r\nVia: evil", nonce="n"',
        'Digest realm="a\x00", nonce="n"',
        'Digest realm="a\\\x01", nonce="n"',
        'Digest realm="r", nonce="n", algorithm="MD 5"',
        'Digest realm="r", nonce="n", qop=""',
        'Digest realm="r", nonce="n", qop="auth,auth int"',
        "Digest realm=r\u00e9, nonce=n",
        'Digest realm="r"\r\nnonce="n"',
    ],
)
def test_malformed_challenges(value):
    with pytest.raises(ParseError) as info:
        parse_challenge(value)
    assert info.value.status == 400
    assert info.value.reason.isprintable()
    assert info.value.reason.isascii()


@pytest.mark.parametrize(
    "value",
    [
        'Digest username="u", nc=1',
        'Digest username="u", nc=000000001',
        'Digest username="u", nc=0000000g',
        'Digest username="u", qop="auth,auth-int"',
        'Digest username="u", username="v"',
        "Digest username",
        "Basic a=b=c d",
    ],
)
def test_malformed_credentials(value):
    with pytest.raises(ParseError):
        parse_credentials(value)


def test_too_many_params():
    params = ", ".join(f"p{i}=v" for i in range(MAX_AUTH_PARAMS + 1))
    with pytest.raises(ParseError):
        parse_credentials(f"Digest {params}")
    parse_credentials("Digest " + ", ".join(f"p{i}=v" for i in range(MAX_AUTH_PARAMS)))


def test_too_long():
    with pytest.raises(ParseError):
        parse_credentials('Digest username="' + "a" * 10_000 + '"')


def test_construction_refuses_header_injection():
    with pytest.raises(ValueError):
        Credentials(username="alice\r\nVia: x")
    with pytest.raises(ValueError):
        Credentials(nc="1")
    with pytest.raises(ValueError):
        Credentials(scheme="Basic", username="x")
    with pytest.raises(ValueError):
        Credentials(params=(("realm", "x"),))  # a named field hiding in params
    with pytest.raises(ValueError):
        Challenge(realm="r", nonce="n", algorithm="MD5, qop=auth-int")


# --- properties ---------------------------------------------------------------------

# Characters that matter to the grammar, to make random input interesting.
_GRAMMAR_CHARS = 'Digest Basic realm nonce qop=auth,"\\ \t\r\n=,;:/@%~`\x00\x7fé\u2028'
_interesting_text = st.text(alphabet=st.sampled_from(_GRAMMAR_CHARS), max_size=80)


def _only_parse_error(value: str) -> None:
    for parse in (parse_challenge, parse_credentials):
        try:
            parsed = parse(value)
        except ParseError:
            continue
        # Whatever parses serialises to something that parses back the same.
        assert parse(str(parsed)) == parsed


@given(st.text(max_size=200))
@example('Digest realm="\\')
@example('Digest a="\\"')
@example("Basic =")
def test_random_text_raises_only_parse_error(value):
    _only_parse_error(value)


@given(_interesting_text)
def test_grammar_soup_raises_only_parse_error(value):
    _only_parse_error(value)


@st.composite
def _mutations(draw: st.DrawFn) -> str:
    value = draw(st.sampled_from(VALID_CHALLENGES + VALID_CREDENTIALS))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        position = draw(st.integers(min_value=0, max_value=len(value)))
        operation = draw(st.sampled_from(["insert", "delete", "replace", "cut"]))
        char = draw(st.sampled_from(_GRAMMAR_CHARS))
        if operation == "insert":
            value = value[:position] + char + value[position:]
        elif operation == "delete":
            value = value[:position] + value[position + 1 :]
        elif operation == "replace":
            value = value[:position] + char + value[position + 1 :]
        else:
            value = value[:position]
    return value


@given(_mutations())
def test_mutated_valid_values_raise_only_parse_error(value):
    _only_parse_error(value)


_safe_text = st.text(
    st.characters(blacklist_categories=["Cc", "Cs"], blacklist_characters="\x7f"), max_size=20
)
_tokens = st.from_regex(r"[A-Za-z0-9\-.!%*_+`'~]{1,12}", fullmatch=True)
_lower_names = st.from_regex(r"x-[a-z0-9]{1,6}", fullmatch=True)
_extra_params = st.lists(st.tuples(_lower_names, _safe_text), max_size=3, unique_by=lambda p: p[0])


_credentials = st.builds(
    Credentials,
    username=st.none() | _safe_text,
    realm=st.none() | _safe_text,
    nonce=st.none() | _safe_text,
    uri=st.none() | _safe_text,
    response=st.none() | _safe_text,
    algorithm=st.none() | _tokens,
    cnonce=st.none() | _safe_text,
    opaque=st.none() | _safe_text,
    qop=st.none() | _tokens,
    nc=st.none() | st.from_regex(r"[0-9a-fA-F]{8}", fullmatch=True),
    params=_extra_params.map(tuple),
)
_challenges = st.builds(
    Challenge,
    realm=_safe_text,
    nonce=_safe_text,
    opaque=st.none() | _safe_text,
    algorithm=st.none() | _tokens,
    qop_options=st.lists(_tokens, max_size=3).map(tuple),
    stale=st.booleans(),
    params=_extra_params.map(tuple),
)


@given(_credentials)
def test_credentials_round_trip(credentials):
    assert parse_credentials(credentials.serialise()) == credentials


@given(_challenges)
def test_challenge_round_trip(challenge):
    assert parse_challenge(challenge.serialise()) == challenge


def test_parse_error_is_a_sip_error():
    with pytest.raises(SIPError):
        parse_credentials("")
