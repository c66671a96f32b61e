"""Digest authentication as SIP uses it (RFC 3261 §22, RFC 8760, RFC 7616, RFC 2617).

Sans-I/O: nothing here reads a clock, a socket or the event loop.  Every
entry point that needs the time takes ``now`` in seconds from the caller's
clock (a monotonic one is best), so tests drive it with plain numbers.

The server side is ``DigestRealm``: it issues challenges and verifies
credentials against stored HA1 values (never passwords), returning a typed
``Verified`` or ``Refused``.  Nonces are stateless, an issue time and a
counter sealed with an HMAC, so issuing one costs no memory; only nonces that
have been *successfully* used are remembered, to refuse a replayed
nonce-count, so a client without the password cannot fill that table.

The client side is ``authorize``: what the gateway sends when a carrier
challenges it.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias

from sip.auth import DIGEST, Challenge, Credentials
from sip.errors import SIPError

__all__ = [
    "DEFAULT_ALGORITHMS",
    "DEFAULT_MAX_TRACKED_NONCES",
    "DEFAULT_NONCE_LIFETIME",
    "MIN_SECRET_BYTES",
    "SUPPORTED_ALGORITHMS",
    "DigestRealm",
    "Refusal",
    "Refused",
    "UnsupportedChallengeError",
    "Verdict",
    "Verified",
    "authorize",
    "canonical_algorithm",
    "choose_challenge",
    "digest_response",
    "ha1",
    "ha1_algorithm",
]

# RFC 7616 §3.2 / RFC 8760 §2.1: the algorithms and the hash behind each.
# SHA-512-256 is left out: hashlib offers it only when OpenSSL does, and no
# SIP peer we interoperate with sends it.
_HASHES = {"MD5": "md5", "SHA-256": "sha256"}
_SESSION = "-sess"
SUPPORTED_ALGORITHMS = ("SHA-256", "MD5", "SHA-256-sess", "MD5-sess")
_CANONICAL = {name.lower(): name for name in SUPPORTED_ALGORITHMS}
# RFC 8760 §2.4: a server may offer several challenges, most preferred first;
# SHA-256 for modern peers, then MD5 because old PBXs know nothing else.
DEFAULT_ALGORITHMS = ("SHA-256", "MD5")

# RFC 7616 §5.5 leaves the nonce lifetime to the server.  Five minutes covers a
# slow PBX answering a challenge and a burst of requests reusing the nonce,
# and bounds how long a captured request without qop can be replayed.
DEFAULT_NONCE_LIFETIME = 300.0
# Nonces whose highest nonce-count is remembered.  Only successfully used
# nonces are tracked: about one per REGISTER refresh or challenged call per
# nonce lifetime, so 65,536 covers e.g. 100 challenged calls per second plus
# thousands of PBXs.  At ~170 bytes an entry that is ~11 MiB, the memory bound;
# beyond it the earliest nonces are forgotten and answered stale, which costs
# their clients one more round trip, never a failure.
DEFAULT_MAX_TRACKED_NONCES = 65_536
# The HMAC key must be at least as strong as the 128-bit tag it produces.
MIN_SECRET_BYTES = 16

# Nonce layout (RFC 7616 §3.3 leaves it to the server): instance tag, issue
# time in milliseconds, counter, truncated HMAC-SHA-256 of all that and the
# realm.  The tag is random per DigestRealm, so a nonce is accepted only by the
# instance that issued it and remembers its nonce-counts; a restarted process
# or another node answers stale and the client retries transparently.
_TAG_BYTES = 6
_TIME_BYTES = 6  # 2**48 ms is nearly 9,000 years of clock
_COUNTER_BYTES = 4  # unique nonces for 4 billion challenges within one millisecond
_MAC_BYTES = 16  # 128 bits: forging takes 2**128 tries
_PAYLOAD_BYTES = _TAG_BYTES + _TIME_BYTES + _COUNTER_BYTES
_NONCE_BYTES = _PAYLOAD_BYTES + _MAC_BYTES
_NONCE_CHARS = (_NONCE_BYTES * 8 + 5) // 6  # unpadded base64
_NONCE_RE = re.compile(f"[A-Za-z0-9_-]{{{_NONCE_CHARS}}}")
_NONCE_MAC_CONTEXT = b"sipgw digest nonce v1\x00"

# RFC 7616 §3.4: nc-value is 8LHEX.
_MAX_NC = 0xFFFFFFFF


class UnsupportedChallengeError(SIPError):
    """A challenge this client cannot answer (unknown scheme, algorithm or qop).

    Status 502: the gateway, acting for a PBX, could not get past the next
    hop's authentication (RFC 3261 §21.5.3).
    """

    status = 502


class Refusal(StrEnum):
    """Why credentials were refused; the value is a phrase fit for logs."""

    WRONG_SCHEME = "not Digest credentials"
    MISSING_FIELD = "digest credentials incomplete"
    UNSUPPORTED_ALGORITHM = "digest algorithm not supported"
    UNSUPPORTED_QOP = "only qop=auth is supported"
    QOP_REQUIRED = "qop=auth required"
    REALM_MISMATCH = "realm mismatch"
    URI_MISMATCH = "digest uri does not match the Request-URI"
    FORGED_NONCE = "nonce not issued by this server"
    NONCE_EXPIRED = "nonce expired"
    NONCE_FORGOTTEN = "nonce no longer known"
    # Wrong password and unknown username alike, on purpose.
    BAD_RESPONSE = "wrong digest response"
    REPLAYED_NC = "nonce count replayed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Verified:
    """The credentials prove knowledge of ``username``'s password."""

    username: str
    algorithm: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Refused:
    """The credentials prove nothing.

    ``stale`` is true when the digest itself was right but the nonce can no
    longer be used: the answer is a fresh challenge with ``stale=true``, and
    the client retries without asking its user (RFC 7616 §3.3).  Every other
    refusal is answered with a fresh challenge and ``stale`` absent.
    """

    reason: Refusal
    stale: bool = False


Verdict: TypeAlias = Verified | Refused


# --- the hash functions ----------------------------------------------------------


def canonical_algorithm(name: str | None) -> str | None:
    """The RFC spelling of a supported algorithm, or None if unsupported.

    Absent means MD5 (RFC 7616 §3.3, RFC 2617 §3.2.1).  Peers vary the case
    (``md5``, ``sha-256``), so the match is case-insensitive.
    """
    if name is None:
        return "MD5"
    return _CANONICAL.get(name.lower())


def _require_algorithm(name: str | None) -> str:
    algorithm = canonical_algorithm(name)
    if algorithm is None:
        raise ValueError("unsupported digest algorithm")
    return algorithm


def _hash(algorithm: str, text: str) -> str:
    # RFC 7616 §3.4.1 with charset=UTF-8 hashes UTF-8; RFC 3261 text is UTF-8.
    # surrogatepass: a str the caller decoded with surrogates never makes us raise.
    data = text.encode("utf-8", "surrogatepass")
    return hashlib.new(_HASHES[algorithm.removesuffix(_SESSION)], data).hexdigest()


def ha1(username: str, realm: str, password: str, algorithm: str) -> str:
    """H(username ":" realm ":" password), what the store keeps instead of the password.

    RFC 7616 §3.4.2.  For a ``-sess`` algorithm this is the stored part; the
    per-session HA1 is derived from it with the nonce and cnonce at
    verification.  Raises ValueError for an unsupported algorithm.
    """
    return _hash(_require_algorithm(algorithm), f"{username}:{realm}:{password}")


def digest_response(
    *,
    algorithm: str | None,
    ha1: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """The request-digest (RFC 7616 §3.4.1; RFC 2617 §3.2.2.1 without qop).

    With ``qop=auth``: H(HA1:nonce:nc:cnonce:qop:HA2); without qop (RFC 2069
    style, old PBXs): H(HA1:nonce:HA2); HA2 = H(method:uri).  ``nc`` is the
    eight hex digits as sent.  Raises ValueError when the fields do not
    allow a response (auth-int, or qop/-sess without cnonce).
    """
    canonical = _require_algorithm(algorithm)
    ha1 = ha1.lower()
    if canonical.endswith(_SESSION):
        # RFC 7616 §3.4.2: a -sess HA1 binds the stored HA1 to nonce and cnonce.
        if cnonce is None:
            raise ValueError("a -sess algorithm needs a cnonce")
        ha1 = _hash(canonical, f"{ha1}:{nonce}:{cnonce}")
    # RFC 7616 §3.4.3, qop=auth: A2 = Method ":" request-uri.
    ha2 = _hash(canonical, f"{method}:{uri}")
    if qop is None:
        return _hash(canonical, f"{ha1}:{nonce}:{ha2}")
    if qop.lower() != "auth":
        raise ValueError("only qop=auth is supported")
    if nc is None or cnonce is None:
        raise ValueError("qop=auth needs nc and cnonce")
    return _hash(canonical, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def ha1_algorithm(credentials: Credentials) -> str | None:
    """The algorithm whose stored HA1 verifies these credentials, or None.

    The caller looks up HA1 by it before ``DigestRealm.verify``: ``MD5`` for
    MD5 and MD5-sess, ``SHA-256`` for SHA-256 and SHA-256-sess.
    """
    if credentials.scheme != DIGEST:
        return None
    algorithm = canonical_algorithm(credentials.algorithm)
    return None if algorithm is None else algorithm.removesuffix(_SESSION)


# --- the server side -------------------------------------------------------------


class _NonceCounts:
    """The highest nonce-count accepted per nonce (RFC 7616 §3.4.5), bounded.

    When full, the entry of the earliest issued nonce is evicted.  Every
    removal raises a watermark: a nonce issued at or before it whose state is
    missing may have been used already, so it is answered stale rather than
    accepted with whatever count it carries.
    """

    __slots__ = ("_by_issue", "_capacity", "_forgotten_up_to", "_highest")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._highest: dict[bytes, int] = {}
        self._by_issue: list[tuple[int, bytes]] = []  # heap: (issue time in ms, nonce)
        self._forgotten_up_to = -1

    def __len__(self) -> int:
        return len(self._highest)

    def _pop_earliest(self) -> None:
        issued_ms, key = heapq.heappop(self._by_issue)
        del self._highest[key]
        self._forgotten_up_to = max(self._forgotten_up_to, issued_ms)

    def purge(self, expired_before_ms: int) -> None:
        """Forget nonces issued before ``expired_before_ms``: they are refused as expired."""
        while self._by_issue and self._by_issue[0][0] < expired_before_ms:
            self._pop_earliest()

    def accept(self, key: bytes, issued_ms: int, nc: int) -> Refusal | None:
        """Record ``nc`` for the nonce if it is new and higher; else say why not."""
        highest = self._highest.get(key)
        if highest is None:
            if issued_ms <= self._forgotten_up_to:
                return Refusal.NONCE_FORGOTTEN
            if len(self._highest) >= self._capacity:
                self._pop_earliest()
            heapq.heappush(self._by_issue, (issued_ms, key))
        elif nc <= highest:
            return Refusal.REPLAYED_NC
        self._highest[key] = nc
        return None


def _encode_nonce(raw: bytes) -> str:
    # base64url without padding: every character is a token character, so even
    # a peer that forgets the quotes sends it back intact.
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class DigestRealm:
    """One protection space: issues Digest challenges and verifies credentials.

    ``secret`` keys the nonce HMAC; every node of a cluster may share it, but
    a nonce is only accepted by the instance that issued it (see the nonce
    layout above), because only that instance knows its nonce-counts.

    Without qop (RFC 2069 style, old PBXs) there is no nonce-count, so such
    credentials are accepted any number of times within the nonce lifetime;
    set ``accept_without_qop=False`` to refuse them.
    """

    __slots__ = (
        "_accept_without_qop",
        "_algorithms",
        "_counter",
        "_counts",
        "_dummy_ha1",
        "_lifetime",
        "_lifetime_ms",
        "_mac_prefix",
        "_realm",
        "_secret",
        "_tag",
    )

    def __init__(
        self,
        realm: str,
        secret: bytes,
        *,
        nonce_lifetime: float = DEFAULT_NONCE_LIFETIME,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        max_tracked_nonces: int = DEFAULT_MAX_TRACKED_NONCES,
        accept_without_qop: bool = True,
    ) -> None:
        if any(ord(char) < 0x20 or ord(char) == 0x7F for char in realm):
            raise ValueError("realm contains a control character")
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"secret must be at least {MIN_SECRET_BYTES} bytes")
        if not 0 < nonce_lifetime < float("inf"):
            raise ValueError("nonce_lifetime must be positive and finite")
        if max_tracked_nonces < 1:
            raise ValueError("max_tracked_nonces must be positive")
        canonical: list[str] = []
        for name in algorithms:
            algorithm = _require_algorithm(name)
            if algorithm in canonical:
                raise ValueError(f"algorithm {algorithm} listed twice")
            canonical.append(algorithm)
        if not canonical:
            raise ValueError("at least one algorithm is needed")
        self._realm = realm
        self._secret = secret
        self._lifetime = float(nonce_lifetime)
        self._lifetime_ms = int(nonce_lifetime * 1000)
        self._algorithms = tuple(canonical)
        self._accept_without_qop = accept_without_qop
        self._counts = _NonceCounts(max_tracked_nonces)
        self._counter = 0
        self._tag = secrets.token_bytes(_TAG_BYTES)
        self._mac_prefix = _NONCE_MAC_CONTEXT + realm.encode("utf-8") + b"\x00"
        # What an unknown username is checked against, so that it costs the
        # same hashes as a known one.  Random, so that no response matches it
        # by design; it is refused even if one did.
        self._dummy_ha1 = {
            name: secrets.token_hex(hashlib.new(hash_name).digest_size)
            for name, hash_name in _HASHES.items()
        }

    @property
    def realm(self) -> str:
        return self._realm

    @property
    def algorithms(self) -> tuple[str, ...]:
        """Offered algorithms, most preferred first."""
        return self._algorithms

    @property
    def nonce_lifetime(self) -> float:
        return self._lifetime

    @property
    def tracked_nonces(self) -> int:
        """How many nonce-counts are remembered now (for metrics)."""
        return len(self._counts)

    # -- nonces --

    def _mac(self, payload: bytes) -> bytes:
        return hmac.digest(self._secret, self._mac_prefix + payload, "sha256")[:_MAC_BYTES]

    def _issue(self, now: float) -> str:
        now_ms = int(now * 1000)
        if not 0 <= now_ms < 1 << (8 * _TIME_BYTES):
            raise ValueError("now is outside the nonce clock range")
        self._counter = (self._counter + 1) % (1 << (8 * _COUNTER_BYTES))
        payload = (
            self._tag
            + now_ms.to_bytes(_TIME_BYTES, "big")
            + self._counter.to_bytes(_COUNTER_BYTES, "big")
        )
        return _encode_nonce(payload + self._mac(payload))

    def _open(self, nonce: str) -> tuple[bytes, int] | None:
        """(payload, issue time in ms) of a nonce this realm's secret sealed, else None."""
        if not _NONCE_RE.fullmatch(nonce):
            return None
        raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        # Several strings decode to the same bytes (the spare low bits of the
        # last character); only the one we issued is ours.
        if _encode_nonce(raw) != nonce:
            return None
        payload, mac = raw[:_PAYLOAD_BYTES], raw[_PAYLOAD_BYTES:]
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        issued_ms = int.from_bytes(payload[_TAG_BYTES : _TAG_BYTES + _TIME_BYTES], "big")
        return payload, issued_ms

    # -- the two entry points --

    def challenge(self, now: float, *, stale: bool = False) -> list[Challenge]:
        """Fresh challenges, one per algorithm, most preferred first (RFC 8760 §2.4).

        They share one nonce: the client answers only one of them.  Send each
        as its own WWW-Authenticate (or Proxy-Authenticate) header field.
        """
        nonce = self._issue(now)
        return [
            Challenge(
                realm=self._realm,
                nonce=nonce,
                algorithm=algorithm,
                qop_options=("auth",),
                stale=stale,
            )
            for algorithm in self._algorithms
        ]

    def verify(
        self,
        credentials: Credentials,
        *,
        method: str,
        ha1: str | None,
        now: float,
        request_uri: str | None = None,
    ) -> Verdict:
        """Check credentials for a request with ``method``.

        ``ha1`` is the stored HA1 for the user and ``ha1_algorithm(credentials)``,
        or None when the username is unknown: that case does the same work and
        gives the same ``Refused`` as a wrong password, so answers never reveal
        which usernames exist.  ``request_uri``, when given, must equal the
        credentials' ``uri`` exactly (RFC 7616 §3.4.6, RFC 3261 §22.4); a
        caller with a URI-equivalence rule compares before calling instead.
        """
        if credentials.scheme != DIGEST:
            return Refused(reason=Refusal.WRONG_SCHEME)
        username, realm, nonce = credentials.username, credentials.realm, credentials.nonce
        uri, response = credentials.uri, credentials.response
        # RFC 3261 §25.1 / RFC 7616 §3.4: these five are always required.
        if username is None or realm is None or nonce is None or uri is None or response is None:
            return Refused(reason=Refusal.MISSING_FIELD)
        algorithm = canonical_algorithm(credentials.algorithm)
        if algorithm is None or algorithm not in self._algorithms:
            return Refused(reason=Refusal.UNSUPPORTED_ALGORITHM)
        qop, nc, cnonce = credentials.qop, credentials.nc, credentials.cnonce
        if qop is None:
            if not self._accept_without_qop:
                return Refused(reason=Refusal.QOP_REQUIRED)
        elif qop.lower() != "auth":
            # auth-int would need the body hashed; we never offer it.
            return Refused(reason=Refusal.UNSUPPORTED_QOP)
        elif nc is None or cnonce is None:
            # RFC 7616 §3.4: with qop, cnonce and nc must be present.
            return Refused(reason=Refusal.MISSING_FIELD)
        if cnonce is None and algorithm.endswith(_SESSION):
            return Refused(reason=Refusal.MISSING_FIELD)
        if realm != self._realm:
            return Refused(reason=Refusal.REALM_MISMATCH)
        if request_uri is not None and uri != request_uri:
            return Refused(reason=Refusal.URI_MISMATCH)
        opened = self._open(nonce)
        if opened is None:
            return Refused(reason=Refusal.FORGED_NONCE)
        payload, issued_ms = opened

        # The same hashes and the same comparison whether or not the user exists.
        stored = ha1 if ha1 is not None else self._dummy_ha1[algorithm.removesuffix(_SESSION)]
        expected = digest_response(
            algorithm=algorithm,
            ha1=stored,
            nonce=nonce,
            method=method,
            uri=uri,
            qop=qop,
            nc=nc,
            cnonce=cnonce,
        )
        matches = hmac.compare_digest(
            expected.encode("ascii"), response.lower().encode("utf-8", "surrogatepass")
        )
        if not matches or ha1 is None:
            return Refused(reason=Refusal.BAD_RESPONSE)

        # The digest is right, so whatever is wrong with the nonce now is
        # answered stale: the client knows the password and retries with a
        # fresh nonce without asking its user (RFC 7616 §3.3).
        now_ms = int(now * 1000)
        age_ms = now_ms - issued_ms
        if not 0 <= age_ms <= self._lifetime_ms:
            return Refused(reason=Refusal.NONCE_EXPIRED, stale=True)
        if payload[:_TAG_BYTES] != self._tag:
            # Issued by another instance (a restart, another node): its
            # nonce-counts are unknown here.
            return Refused(reason=Refusal.NONCE_FORGOTTEN, stale=True)
        if nc is not None:
            # RFC 7616 §3.4.5: a nonce-count not above the highest seen is a
            # replay.  Answered stale: an honest client whose requests were
            # reordered recovers with a fresh nonce, a replayer cannot.
            self._counts.purge(now_ms - self._lifetime_ms)
            refusal = self._counts.accept(payload, issued_ms, int(nc, 16))
            if refusal is not None:
                return Refused(reason=refusal, stale=True)
        return Verified(username=username, algorithm=algorithm)


# --- the client side -------------------------------------------------------------


def _answerable(challenge: Challenge) -> bool:
    if challenge.scheme != DIGEST or canonical_algorithm(challenge.algorithm) is None:
        return False
    return not challenge.qop_options or any(q.lower() == "auth" for q in challenge.qop_options)


def choose_challenge(challenges: Iterable[Challenge]) -> Challenge | None:
    """The topmost challenge this client can answer (RFC 8760 §2.4), if any."""
    return next((challenge for challenge in challenges if _answerable(challenge)), None)


def authorize(
    challenge: Challenge,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    cnonce: str,
    nc: int = 1,
) -> Credentials:
    """Credentials answering ``challenge`` for a request ``method uri``.

    Uses qop=auth when offered (RFC 7616 §3.4), the RFC 2069 form when the
    challenge offers no qop.  ``cnonce`` should be fresh and random per nonce;
    ``nc`` counts the requests sent with this nonce, starting at 1.  Raises
    ``UnsupportedChallengeError`` for a challenge ``choose_challenge`` would skip.
    """
    if challenge.scheme != DIGEST:
        raise UnsupportedChallengeError("authentication scheme not supported")
    if challenge.realm is None or challenge.nonce is None:  # Challenge ensures it; be explicit
        raise UnsupportedChallengeError("challenge lacks realm or nonce")
    algorithm = canonical_algorithm(challenge.algorithm)
    if algorithm is None:
        raise UnsupportedChallengeError("digest algorithm not supported")
    if challenge.qop_options and not _answerable(challenge):
        raise UnsupportedChallengeError("only qop=auth is supported")
    if not 0 < nc <= _MAX_NC:
        raise ValueError("nc must be between 1 and 0xffffffff")
    qop = "auth" if challenge.qop_options else None
    nc_text = f"{nc:08x}" if qop else None
    # RFC 7616 §3.4: cnonce goes with qop; a -sess HA1 needs it regardless.
    send_cnonce = cnonce if qop or algorithm.endswith(_SESSION) else None
    response = digest_response(
        algorithm=algorithm,
        ha1=ha1(username, challenge.realm, password, algorithm),
        nonce=challenge.nonce,
        method=method,
        uri=uri,
        qop=qop,
        nc=nc_text,
        cnonce=send_cnonce,
    )
    return Credentials(
        username=username,
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response=response,
        # RFC 7616 §3.4: echo the algorithm the challenge named, if it named one.
        algorithm=challenge.algorithm,
        cnonce=send_cnonce,
        opaque=challenge.opaque,
        qop=qop,
        nc=nc_text,
    )
