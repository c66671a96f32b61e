"""The SIP protocol core: messages, URIs, headers, digest authentication,
transactions (sans-I/O) and the asyncio transports that feed them.

Nothing here knows about profiles, accounts or calls; see ``gateway``.
"""

from sip.auth import Challenge, Credentials, parse_challenge, parse_credentials
from sip.digest import DigestRealm, Refused, Verified, authorize, ha1
from sip.errors import ParseError, SIPError
from sip.headers import Address, CSeq, Headers, Via
from sip.message import Message, Request, Response, build_response
from sip.parser import StreamParser, parse_datagram
from sip.settings import SIPSettings
from sip.transaction import (
    ClientTransaction,
    ServerTransaction,
    TransactionError,
    TransactionLayer,
    client_key,
    server_key,
)
from sip.uri import URI, equivalent, parse_uri

__all__ = [
    "URI",
    "Address",
    "CSeq",
    "Challenge",
    "ClientTransaction",
    "Credentials",
    "DigestRealm",
    "Headers",
    "Message",
    "ParseError",
    "Refused",
    "Request",
    "Response",
    "SIPError",
    "SIPSettings",
    "ServerTransaction",
    "StreamParser",
    "TransactionError",
    "TransactionLayer",
    "Verified",
    "Via",
    "authorize",
    "build_response",
    "client_key",
    "equivalent",
    "ha1",
    "parse_challenge",
    "parse_credentials",
    "parse_datagram",
    "parse_uri",
    "server_key",
]
