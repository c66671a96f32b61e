"""The SIP protocol core: messages, URIs, headers, digest authentication,
transactions (sans-I/O) and the asyncio transports that feed them.

Nothing here knows about profiles, accounts or calls; see ``gateway``.
"""

from sip.errors import ParseError, SIPError
from sip.headers import Address, CSeq, Headers, Via
from sip.message import Message, Request, Response, build_response
from sip.parser import StreamParser, parse_datagram
from sip.settings import SIPSettings
from sip.uri import URI, equivalent, parse_uri

__all__ = [
    "URI",
    "Address",
    "CSeq",
    "Headers",
    "Message",
    "ParseError",
    "Request",
    "Response",
    "SIPError",
    "SIPSettings",
    "StreamParser",
    "Via",
    "build_response",
    "equivalent",
    "parse_datagram",
    "parse_uri",
]
