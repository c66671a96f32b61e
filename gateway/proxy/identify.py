"""Who is calling: a profile's PBX, the carrier, or nobody the gateway
trusts (refused, with the SIP answer that says so).

Trust by network address is local policy (RFC 3261 §26.2: SIP's own means
are digest and TLS), so the policy is stated here: the most specific
address wins (:func:`by_address`).  Everyone else answers a digest
challenge (RFC 3261 §22.2, §22.3: ``401`` for REGISTER, ``407`` for other
requests; :func:`by_digest`), and an unknown username gets the same answer
as a wrong password.

The outcomes are typed (:data:`Caller`): :class:`FromProfile`,
:class:`FromCarrier` (one object, :data:`FROM_CARRIER`) or
:class:`Refused`, which carries its answer for the router to send.  Both
functions take what they read (carrier settings, the directory of the
moment, the digest realm, the time) and send nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.settings import CarrierSettings
from gateway.proxy.directory import Directory, ProfileEntry
from sip.digest import DigestRealm, Verified, ha1_algorithm
from sip.message import Request

__all__ = [
    "FROM_CARRIER",
    "Caller",
    "FromCarrier",
    "FromProfile",
    "Refused",
    "by_address",
    "by_digest",
]


@dataclass(frozen=True, slots=True)
class FromProfile:
    """The request comes from ``profile``'s PBX: by its address (an IP
    profile) or by its digest credentials (a registration profile)."""

    profile: ProfileEntry


@dataclass(frozen=True, slots=True)
class FromCarrier:
    """The request comes from the carrier (one of its trusted addresses)."""


#: The one :class:`FromCarrier`.
FROM_CARRIER = FromCarrier()


@dataclass(frozen=True, slots=True)
class Refused:
    """The request is not trusted: answered with ``status`` (``reason``:
    the reason phrase, None for the standard one) and ``headers``.
    ``bad_credentials``: credentials for our realm were offered and did not
    verify (counted as an authentication failure)."""

    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    bad_credentials: bool = False


Caller = FromProfile | FromCarrier | Refused


def by_address(
    carrier: CarrierSettings, directory: Directory, source: tuple[str, str, int]
) -> FromProfile | FromCarrier | None:
    """The caller a request's ``source`` (transport, host, port) alone
    identifies, or None (it must then authenticate), most specific first:

    1. The carrier's exact addresses (:meth:`CarrierSettings.trusts_exactly`):
       the operator's configuration outranks a profile given the same
       address (by mistake, or to take the carrier's traffic: every
       inbound call would become an outbound call billed to it).
    2. An IP profile's UDP source IP *and* port: a PBX sends from the
       port it is configured with (symmetric signalling, RFC 3581).  It
       wins over a carrier trusted by its host alone, which only says
       "any port of this host": a PBX may share the carrier's address
       (one box, one NAT address) and its calls are then outbound ones,
       not inbound calls to the number it dials (``404``).
    3. The carrier's host, any port.
    4. Over TCP, the IP alone of the one IP profile that has it (source
       ports are ephemeral, RFC 3261 §18.1.1): the least specific.

    In-dialog requests are told apart the same way (the router's
    ``_from_pbx``).
    """
    transport, host, port = source
    if carrier.trusts_exactly(host, port):
        return FROM_CARRIER
    entry = directory.by_source(transport, host, port)
    if entry is not None and transport.upper() == "UDP":
        return FromProfile(entry)  # UDP matches IP and port (Directory.by_source)
    if carrier.trusts(host, port):
        return FROM_CARRIER
    return None if entry is None else FromProfile(entry)


def by_digest(
    digest: DigestRealm, directory: Directory, request: Request, now: float
) -> FromProfile | Refused:
    """Digest authentication (RFC 3261 §22.2, §22.3): the registration
    profile whose credentials verify, else the challenge to answer with
    (``stale`` when only the nonce was too old, RFC 7616 §3.3)."""
    register = request.method == "REGISTER"
    credentials = request.authorization if register else request.proxy_authorization
    stale = failed = False
    for cred in credentials:
        if cred.scheme.lower() != "digest" or cred.realm != digest.realm:
            continue
        entry = directory.by_username(cred.username or "")
        if entry is not None and entry.auth_mode != "registration":
            entry = None
        algorithm = ha1_algorithm(cred)
        stored = entry.ha1.get(algorithm) if entry is not None and algorithm else None
        verdict = digest.verify(
            cred, method=request.method, ha1=stored, now=now, request_uri=request.uri_text
        )
        if isinstance(verdict, Verified) and entry is not None:
            return FromProfile(entry)
        stale = not isinstance(verdict, Verified) and verdict.stale
        failed = True
        break
    header = "WWW-Authenticate" if register else "Proxy-Authenticate"
    challenges = digest.challenge(now, stale=stale)
    return Refused(
        401 if register else 407,
        headers=tuple((header, str(c)) for c in challenges),
        bad_credentials=failed,
    )
