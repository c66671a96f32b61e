"""Sample messages shared by the unit tests."""

from __future__ import annotations

INVITE = (
    b"INVITE sip:+14155550123@trunk.example.net SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: <sip:+14155550123@trunk.example.net>\r\n"
    b'From: "Alice" <sip:alice@trunk.example.net>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@203.0.113.10:5060>\r\n"
    b"Route: <sip:proxy1.example.net;lr>, <sip:proxy2.example.net;lr>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)

RESPONSE = (
    b"SIP/2.0 180 Ringing\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKproxy1, "
    b"SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK776asdhds;rport=5060;received=203.0.113.10\r\n"
    b"To: <sip:+14155550123@trunk.example.net>;tag=a6c85cf\r\n"
    b'From: "Alice" <sip:alice@trunk.example.net>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
